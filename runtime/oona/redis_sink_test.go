package oona

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/contracts"
)

func TestAppendXADDArguments(t *testing.T) {
	// args are the strings go-redis writes: a string or what a *string
	// points to.
	args := func(a []any) []string {
		var out []string
		for _, v := range a {
			switch v := v.(type) {
			case string:
				out = append(out, v)
			case *string:
				out = append(out, *v)
			default:
				t.Fatalf("argument %#v is neither a string nor a *string", v)
			}
		}
		return out
	}
	s := &redisSink{maxLen: "1000"}
	e := entry{stream: "telemetry.seed.health", vals: [numFields]string{"id", "sender", "ts", "", "telemetry.seed.health", "{\"a\":\"b\r\n\"}"}}
	want := []string{"xadd", "telemetry.seed.health", "maxlen", "~", "1000", "*",
		"event_id", "id", "sender_id", "sender", "timestamp", "ts", "trace_id", "", "topic", "telemetry.seed.health", "payload", "{\"a\":\"b\r\n\"}"}
	if got := args(s.appendXADD(nil, &e)); fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) || len(got) != xaddLen {
		t.Fatalf("XADD arguments\n%q\nwant\n%q", got, want)
	}
	e.stream = "control.kasmina.commands" // never trimmed
	if got := args(s.appendXADD(nil, &e)); len(got) != xaddLen-3 || got[1] != e.stream || got[2] != "*" {
		t.Fatalf("control stream XADD = %q", got)
	}
	s.maxLen = nil // MaxLen < 0: nothing is trimmed
	e.stream = "telemetry.seed.health"
	if got := args(s.appendXADD(nil, &e)); len(got) != xaddLen-3 || got[2] != "*" {
		t.Fatalf("XADD without MAXLEN = %q", got)
	}
}

// replyErr is an error reply as go-redis returns it (a redis.Error).
type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}

func TestReplyClassification(t *testing.T) {
	s := &redisSink{}
	for _, tc := range []struct {
		err       error
		permanent bool
	}{
		{replyErr("WRONGTYPE Operation against a key holding the wrong kind of value"), true},
		{replyErr("ERR wrong number of arguments for 'xadd' command"), true},
		{fmt.Errorf("XADD: %w", replyErr("WRONGTYPE Operation against a key holding the wrong kind of value")), true},
		{replyErr("OOM command not allowed when used memory > 'maxmemory'."), false},
		{replyErr("LOADING Redis is loading the dataset in memory"), false},
		{replyErr("NOAUTH Authentication required."), false},
		{replyErr("WRONGPASS invalid username-password pair or user is disabled."), false},
		{replyErr("READONLY You can't write against a read only replica."), false},
		{replyErr("ERRANT not an ERR code"), false},
		{errors.New("ERR looks like a reply but is not one"), false},
		{io.EOF, false},
		{redis.ErrClosed, false},
		{context.DeadlineExceeded, false},
	} {
		if got := s.permanent(tc.err); got != tc.permanent {
			t.Errorf("permanent(%v) = %v, want %v", tc.err, got, tc.permanent)
		}
	}
}

// TestRedisBusDropsWhatRedisRefusesForGood: an XADD on a key of another
// type (WRONGTYPE) is dropped with reason permanent_error, and the entries
// around it in the same pipeline are delivered, in order.
func TestRedisBusDropsWhatRedisRefusesForGood(t *testing.T) {
	srv := startRedis(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer rc.Close()
	ctx := testCtx(t)
	if err := rc.Set(ctx, string(contracts.TopicSystemEventsEpoch), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	bus, err := NewRedisBus(ctx, srv.testConfig("wrongtype-node"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	var want []string
	for i := range 6 {
		msg := healthMessage(t, i)
		if i%3 == 0 { // the first of the pipeline among them
			msg = contracts.NewOonaMessage("s", "t", contracts.TopicSystemEventsEpoch, map[string]any{"epoch": i})
		} else {
			want = append(want, msg.EventID)
		}
		if err := bus.Publish(msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := bus.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st := bus.Stats()
	if st.DroppedByReason[DropPermanent] != 2 || st.Delivered != 4 || st.Buffered != 0 || st.Retries != 0 {
		t.Fatalf("stats %+v, want 2 dropped (permanent_error), 4 delivered, no retry", st)
	}
	if got := st.Topics[string(contracts.TopicSystemEventsEpoch)].DroppedByReason[DropPermanent]; got != 2 {
		t.Fatalf("system.events.epoch dropped %d for good, want 2", got)
	}
	entries, err := rc.XRange(ctx, string(contracts.TopicTelemetrySeedHealth), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Values[FieldEventID].(string))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("stream holds %v, want %v", got, want)
	}
}

// TestPublisherConnectionTLSDatabaseAndName: the publisher's client does
// TLS (rediss://), selects the URL's database and names itself in CLIENT
// LIST, against a real redis-server with a TLS port.
func TestPublisherConnectionTLSDatabaseAndName(t *testing.T) {
	srv := startRedis(t) // plain port, to look at what the TLS client wrote
	dir := t.TempDir()
	pool := writeTestCerts(t, dir)
	tlsPort := freePort(t)
	// A second server process would not share data; instead the same
	// server gets a TLS port through CONFIG SET.
	admin := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer admin.Close()
	ctx := testCtx(t)
	for _, kv := range [][2]string{
		{"tls-cert-file", filepath.Join(dir, "server.pem")}, {"tls-key-file", filepath.Join(dir, "server.key")},
		{"tls-ca-cert-file", filepath.Join(dir, "ca.pem")}, {"tls-auth-clients", "no"}, {"tls-port", strconv.Itoa(tlsPort)},
	} {
		if err := admin.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			if strings.Contains(err.Error(), "tls") && kv[0] == "tls-cert-file" {
				t.Fatalf("this redis-server has no TLS support: %v", err)
			}
			t.Fatalf("CONFIG SET %s: %v", kv[0], err)
		}
	}
	opts, err := ParseURL("rediss://localhost:" + strconv.Itoa(tlsPort) + "/3")
	if err != nil {
		t.Fatal(err)
	}
	if opts.TLSConfig == nil || opts.DB != 3 {
		t.Fatalf("rediss URL parsed to TLS %v, DB %d", opts.TLSConfig != nil, opts.DB)
	}
	opts.TLSConfig.RootCAs = pool // in production: the system pool or SSL_CERT_FILE
	s := newRedisSink(opts, "kasmina-pub-tls-test", 0)
	defer s.close()
	if err := s.probe(ctx); err != nil {
		t.Fatalf("probe over TLS: %v", err)
	}
	batch := []entry{{stream: "tls.test", vals: [numFields]string{"e1", "s", "t", "tr", "tls.test", "{}"}}}
	if errs := s.write(ctx, batch); errs[0] != nil {
		t.Fatalf("XADD over TLS: %v", errs[0])
	}
	db3 := redis.NewClient(&redis.Options{Addr: srv.addr(), DB: 3})
	defer db3.Close()
	if n, err := db3.XLen(ctx, "tls.test").Result(); err != nil || n != 1 {
		t.Fatalf("XLEN tls.test in database 3 = %d, %v", n, err)
	}
	if n, err := admin.XLen(ctx, "tls.test").Result(); err != nil || n != 0 {
		t.Fatalf("XLEN tls.test in database 0 = %d, %v; want 0", n, err)
	}
	if list, err := admin.ClientList(ctx).Result(); err != nil || !strings.Contains(list, "name=kasmina-pub-tls-test") {
		t.Fatalf("CLIENT LIST lacks the publisher's name: %v\n%s", err, list)
	}

	// A server certificate the client does not trust is refused.
	opts.TLSConfig.RootCAs = x509.NewCertPool()
	bad := newRedisSink(opts, "", 0)
	defer bad.close()
	if err := bad.probe(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("probe with an untrusted certificate = %v, want a certificate error", err)
	}
}
func writeTestCerts(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kasmina test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"ca.pem": {Type: "CERTIFICATE", Bytes: caDER}, "server.pem": {Type: "CERTIFICATE", Bytes: der},
		"server.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}

// fakeRedis is a RESP2 server for the publisher's client: it records the
// event_id of every XADD it reads, per connection, and answers them until
// the first connection carrying XADDs has answered hangUpAfter of them,
// when it closes that connection without answering the rest it read.
type fakeRedis struct {
	ln          net.Listener
	hangUpAfter int
	mu          sync.Mutex
	conns       [][]string // event ids read, per connection
	first       int        // the first connection to carry an XADD, or -1
}

func (f *fakeRedis) isFirst(idx int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.first == idx
}

func startFakeRedis(t *testing.T, addr string, hangUpAfter int) *fakeRedis {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRedis{ln: ln, hangUpAfter: hangUpAfter, first: -1}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns = append(f.conns, nil)
			idx := len(f.conns) - 1
			f.mu.Unlock()
			go f.serve(c, idx)
		}
	}()
	return f
}

func (f *fakeRedis) serve(c net.Conn, idx int) {
	defer c.Close()
	br := bufio.NewReader(c)
	bw := bufio.NewWriter(c)
	answered := 0
	for {
		args, err := readCommand(br)
		if err != nil {
			return
		}
		switch strings.ToUpper(args[0]) {
		case "HELLO": // a RESP2-only server: go-redis falls back
			bw.WriteString("-ERR unknown command 'HELLO'\r\n")
		case "PING":
			bw.WriteString("+PONG\r\n")
		case "XADD":
			for i := 0; i+1 < len(args); i++ {
				if args[i] == FieldEventID {
					f.mu.Lock()
					f.conns[idx] = append(f.conns[idx], args[i+1])
					if f.first < 0 {
						f.first = idx
					}
					f.mu.Unlock()
					break
				}
			}
			if f.isFirst(idx) && answered == f.hangUpAfter {
				bw.Flush()
				return // the replies of everything after are lost
			}
			bw.WriteString("$3\r\n1-1\r\n")
			answered++
		default:
			bw.WriteString("+OK\r\n")
		}
		if br.Buffered() == 0 {
			bw.Flush()
		}
	}
}

// readCommand reads one RESP array of bulk strings.
func readCommand(br *bufio.Reader) ([]string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") {
		return nil, errors.New("not an array: " + line)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
	args := make([]string, n)
	for i := range args {
		if line, err = br.ReadString('\n'); err != nil {
			return nil, err
		}
		l, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		b := make([]byte, l+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:l])
	}
	return args, nil
}

// TestPublisherResendsInOrderAfterConnectionLoss: a connection lost in the
// middle of a batch's replies voids what was not acknowledged; the batch
// already handed over behind it is not sent on a new connection ahead of
// it; after the reconnect the publisher resends what was not acknowledged,
// and everything after, in publish order, and not what was acknowledged.
// Every message is delivered; the duplicates are the commands the server
// read but the publisher got no reply for.
func TestPublisherResendsInOrderAfterConnectionLoss(t *testing.T) {
	const n, hangUp = 2000, 300 // 300: past the first batch (at most 256)
	// Everything is published while nothing listens, so that the
	// batches are full once the server is there.
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cfg := Config{URL: "redis://" + addr + "/0", HostID: "pipe", Publisher: PublisherOptions{
		Backoff: Backoff{Base: time.Millisecond, Max: 5 * time.Millisecond},
	}}
	bus, err := NewRedisBus(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	var want []string
	for i := range n {
		msg := healthMessage(t, i)
		if err := bus.Publish(msg); err != nil {
			t.Fatal(err)
		}
		want = append(want, msg.EventID)
	}
	fake := startFakeRedis(t, addr, hangUp)
	if err := bus.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	s := bus.Stats()
	if s.Delivered != n || s.Dropped != 0 || s.Reconnects < 2 {
		t.Fatalf("stats %+v, want %d delivered after two reconnects", s, n)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.conns) < 2 || fake.first < 0 || fake.first+1 >= len(fake.conns) {
		t.Fatalf("%d connections: the hang-up did not happen", len(fake.conns))
	}
	first := fake.conns[fake.first]
	if len(first) <= hangUp {
		t.Fatalf("first connection read %d commands, want more than %d", len(first), hangUp)
	}
	// The order the server saw, each id at its first arrival, is the
	// publish order, and the resend starts at the first entry whose reply
	// the publisher did not read: the first unanswered one, or an earlier
	// one of the same batch, so no more than a batch (256) before it.
	// (Closing a socket with unread input resets it, so replies the server
	// wrote can be lost in transit; and the first batch can be short when
	// the flusher took it before everything was published.)
	index := make(map[string]int, n)
	for i, id := range want {
		index[id] = i
	}
	resent := fake.conns[fake.first+1]
	if k := index[resent[0]]; k < hangUp-255 || k > hangUp {
		t.Errorf("resend starts at entry %d, want one in %d..%d", k, hangUp-255, hangUp)
	}
	var got []string
	seen := map[string]bool{}
	dups := 0
	for _, ids := range fake.conns[fake.first:] {
		for _, id := range ids {
			if seen[id] {
				dups++
				continue
			}
			seen[id] = true
			got = append(got, id)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("server saw %d distinct ids, not in publish order", len(got))
	}
	if k := index[resent[0]]; dups != len(first)-k {
		t.Errorf("%d duplicates, want the %d read but not acknowledged", dups, len(first)-k)
	}
	t.Logf("first connection read %d, answered %d; the resend starts at entry %d: %d duplicates", len(first), hangUp, index[resent[0]], dups)
}

// TestRedisBusOverUnixSocket: a unix:// URL with a database reaches Redis
// through its socket, for the publisher's client and the consumer's alike.
func TestRedisBusOverUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	srv := startRedis(t, "--unixsocket", sock, "--unixsocketperm", "700")
	cfg := srv.testConfig("unix-node")
	cfg.URL = "unix://" + sock + "?db=2"
	bus := publishOne(t, cfg)
	ctx := testCtx(t)
	db2 := redis.NewClient(&redis.Options{Addr: srv.addr(), DB: 2})
	defer db2.Close()
	if n, err := db2.XLen(ctx, "telemetry.seed.health").Result(); err != nil || n != 1 {
		t.Fatalf("XLEN in database 2 = %d, %v", n, err)
	}
	if err := bus.consumerClient.Ping(ctx).Err(); err != nil {
		t.Fatalf("consumer client over the unix socket: %v", err)
	}
}

// TestRedisBusKeepsWhatItCannotSendForAConfigurationError: a connection
// Redis refuses to set up with an ERR reply (here SELECT of a database it
// does not have) says nothing about the messages: they stay buffered and
// are retried, not dropped as refused for good.
func TestRedisBusKeepsWhatItCannotSendForAConfigurationError(t *testing.T) {
	srv := startRedis(t)
	cfg := srv.testConfig("db99-node")
	cfg.URL = "redis://" + srv.addr() + "/99"
	cfg.Publisher.Backoff = Backoff{Base: time.Millisecond, Max: 5 * time.Millisecond}
	bus, err := NewRedisBus(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_ = bus.Close(ctx)
	}()
	if err := bus.Publish(healthMessage(t, 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a few retries", func() bool { return bus.Stats().Retries >= 3 })
	if s := bus.Stats(); s.Buffered != 1 || s.Dropped != 0 || s.Delivered != 0 {
		t.Fatalf("stats %+v, want the message kept buffered", s)
	}
}

// TestCloseDoesNotWaitForARedisThatDoesNotAnswer: Close gives up at its
// deadline even while the flusher waits on a server that accepted the
// connection and never answers (the read timeout here is an hour).
func TestCloseDoesNotWaitForARedisThatDoesNotAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c) // reads everything, answers nothing
		}
	}()
	cfg := Config{URL: "redis://" + ln.Addr().String() + "/0?read_timeout=1h&write_timeout=1h", HostID: "mute"}
	bus, err := NewRedisBus(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(healthMessage(t, 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server to have a connection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(conns) > 0
	})
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		closed <- bus.Close(ctx)
	}()
	if err := recv(t, closed, "Close to return"); !errors.Is(err, ErrFlushTimeout) {
		t.Fatalf("Close = %v, want ErrFlushTimeout", err)
	}
	if s := bus.Stats(); s.DroppedByReason[DropShutdown] != 1 {
		t.Fatalf("stats %+v, want the message dropped at shutdown", s)
	}
}
