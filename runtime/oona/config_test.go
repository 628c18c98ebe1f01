package oona

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseURLFillsPythonDefaults(t *testing.T) {
	cases := []struct {
		url, addr, user, pass string
		db                    int
		tls                   bool
	}{
		{"redis://", "localhost:6379", "", "", 0, false},
		{"redis://redis-host", "redis-host:6379", "", "", 0, false},
		{"redis://:7000/2", "localhost:7000", "", "", 2, false},
		{"redis-host:6380", "redis-host:6380", "", "", 0, false},
		{"rediss://kasmina:s3cret@bus.example:6380/1", "bus.example:6380", "kasmina", "s3cret", 1, true},
		{"redis://:onlypass@10.0.0.5", "10.0.0.5:6379", "", "onlypass", 0, false},
		{DefaultRedisURL, "localhost:6379", "", "", 0, false},
	}
	for _, c := range cases {
		o, err := ParseURL(c.url)
		if err != nil {
			t.Fatalf("%s: %v", c.url, err)
		}
		if o.Addr != c.addr || o.Username != c.user || o.Password != c.pass || o.DB != c.db || (o.TLSConfig != nil) != c.tls {
			t.Errorf("%s: addr %s user %q pass %q db %d tls %v", c.url, o.Addr, o.Username, o.Password, o.DB, o.TLSConfig != nil)
		}
	}
}

func TestParseURLNamesWhatIsWrong(t *testing.T) {
	for url, want := range map[string]string{
		"":                        "empty",
		"http://localhost:6379":   `scheme "http"`,
		"redis://localhost:99999": `port "99999"`,
		"redis://localhost/abc":   `database "abc"`,
		"redis://localhost/-1":    `database "-1"`,
	} {
		_, err := ParseURL(url)
		if !errors.Is(err, ErrBadURL) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseURL(%q) = %v, want ErrBadURL mentioning %s", url, err, want)
		}
	}
	if _, err := ParseURL("redis://user:hunter2@host:x"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("bad URL error leaks or misses: %v", err)
	}
}

func TestConfigFromEnvAndPasswordFile(t *testing.T) {
	env := map[string]string{EnvRedisURL: " redis://kasmina@bus:6379/0 ", EnvPasswordFile: filepath.Join(t.TempDir(), "pw")}
	cfg := ConfigFromEnv(func(k string) string { return env[k] })
	if cfg.URL != "redis://kasmina@bus:6379/0" || cfg.PasswordFile != env[EnvPasswordFile] {
		t.Fatalf("cfg = %+v", cfg)
	}
	if _, err := cfg.redisOptions(); err == nil || !strings.Contains(err.Error(), EnvPasswordFile) {
		t.Fatalf("missing password file: %v", err)
	}
	if err := os.WriteFile(cfg.PasswordFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := cfg.redisOptions()
	if err != nil || o.Password != "from-file" || o.Username != "kasmina" {
		t.Fatalf("options = %+v, %v", o, err)
	}
	cfg.URL = "redis://kasmina:inurl@bus/0" // the URL's password wins
	if o, _ := cfg.redisOptions(); o.Password != "inurl" {
		t.Fatalf("password = %q, want the URL's", o.Password)
	}
}

func TestRedisBusAuthenticatesAsACLUserWithPasswordFile(t *testing.T) {
	srv := startRedis(t, "--user", "kasmina", "on", ">s3cret", "~*", "&*", "+@all", "--user", "default", "off")
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := srv.testConfig("acl-node")
	cfg.URL = "redis://kasmina@" + srv.addr() + "/0"
	cfg.PasswordFile = pw
	publishOne(t, cfg)

	cfg.PasswordFile = ""
	cfg.URL = "redis://kasmina:wrong@" + srv.addr() + "/0"
	wrong, err := NewRedisBus(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Nothing can be delivered: Close must give up at its deadline
		// and count the message as dropped at shutdown.
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := wrong.Close(ctx); !errors.Is(err, ErrFlushTimeout) {
			t.Errorf("Close = %v, want ErrFlushTimeout", err)
		}
		if s := wrong.Stats(); s.DroppedByReason[DropShutdown] != 1 {
			t.Errorf("stats after close = %+v, want 1 dropped at shutdown", s)
		}
	}()
	_ = wrong.Publish(healthMessage(t, 2))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := wrong.Flush(ctx); !errors.Is(err, ErrFlushTimeout) {
		t.Fatalf("Flush with a wrong password = %v, want the message kept buffered (stats %+v)", err, wrong.Stats())
	}
	if s := wrong.Stats(); s.Buffered != 1 || s.Dropped != 0 {
		t.Fatalf("stats with a wrong password = %+v, want it buffered, not dropped", s)
	}
}

func TestOpenWithoutURLUsesEmbeddedBusWritingJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus.jsonl")
	bus, err := Open(context.Background(), Config{HostID: "solo", EmbeddedPath: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := bus.(*EmbeddedBus); !ok {
		t.Fatalf("Open without URL returned %T", bus)
	}
	msg := healthMessage(t, 5)
	if err := bus.Publish(msg); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `"event_id":"`+msg.EventID+`"`) || !strings.HasPrefix(lines[0], `{"event_id"`) {
		t.Fatalf("file holds %q", b)
	}
	if _, err := Open(context.Background(), Config{URL: "ftp://x"}, nil); !errors.Is(err, ErrBadURL) {
		t.Fatalf("Open with a bad URL = %v", err)
	}
}

// TestRedisClientsDialOncePerAttempt: the publisher's backoff, not
// go-redis's dial retries (5 dials 100 ms apart per command), paces
// reconnects, so every attempt is one dial.
func TestRedisClientsDialOncePerAttempt(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close() // a Redis that hangs up at once
		}
	}()
	defer ln.Close()
	opts, err := ParseURL("redis://" + ln.Addr().String() + "/0")
	if err != nil {
		t.Fatal(err)
	}
	s := newRedisSink(opts, "dial", 0)
	defer s.close()
	for i := 0; i < 3; i++ {
		if err := s.probe(context.Background()); err == nil {
			t.Fatal("probe of a server that hangs up succeeded")
		}
	}
	if errs := s.write(context.Background(), []entry{{stream: "s"}}); errs[0] == nil {
		t.Fatal("write to a server that hangs up succeeded")
	}
	waitFor(t, "4 connections accepted", func() bool { return accepted.Load() >= 4 })
	// Nothing dials behind the attempts' backs either.
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 4 {
		t.Errorf("%d connections for 4 attempts", n)
	}
	bus, err := NewRedisBus(context.Background(), Config{URL: "redis://127.0.0.1:1/0", HostID: "dial"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	if cons := bus.consumerClient.Options(); cons.DialerRetries != 1 || cons.MaxRetries > 0 {
		t.Fatalf("consumer client: DialerRetries %d, MaxRetries %d; want 1 and none", cons.DialerRetries, cons.MaxRetries)
	}
}
