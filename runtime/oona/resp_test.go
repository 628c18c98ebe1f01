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
)

// respReader returns a respConn reading the given server bytes.
func respReader(s string) *respConn {
	return &respConn{br: bufio.NewReaderSize(strings.NewReader(s), 128)}
}

func TestRESPRepliesOfXADD(t *testing.T) {
	tests := []struct {
		name, in string
		reply    bool   // a replyError (the server's word about one command)
		proto    bool   // errProtocol: the connection is unusable
		text     string // part of the error text
	}{
		{"entry id", "$15\r\n1700000000000-0\r\n", false, false, ""},
		{"error reply", "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", true, false, "WRONGTYPE"},
		{"nil", "$-1\r\n", true, false, "no entry ID"},
		{"empty id", "$0\r\n\r\n", true, false, "no entry ID"},
		{"simple string", "+OK\r\n", false, false, ""},
		{"integer", ":1\r\n", false, true, "unexpected reply type ':'"},
		{"array", "*1\r\n$1\r\na\r\n", false, true, "unexpected reply type '*'"},
		{"bad length", "$x1\r\nab\r\n", false, true, `bulk length "x1"`},
		{"huge length", "$999999999999\r\n", false, true, "bulk length"},
		{"no CRLF after bulk", "$2\r\nabXY", false, true, "not terminated by CRLF"},
		{"bare LF", "$2\nab\r\n", false, true, "not terminated by CRLF"},
		{"line too long", "-" + strings.Repeat("E", 300) + "\r\n", false, true, "longer than"},
		{"truncated", "$10\r\nabc", false, false, "EOF"},
		{"empty", "", false, false, "EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := respReader(tc.in).skipBulk()
			var re replyError
			if got := errors.As(err, &re); got != tc.reply {
				t.Errorf("skipBulk(%q) = %v: reply error %v, want %v", tc.in, err, got, tc.reply)
			}
			if got := errors.Is(err, errProtocol); got != tc.proto {
				t.Errorf("skipBulk(%q) = %v: protocol error %v, want %v", tc.in, err, got, tc.proto)
			}
			if tc.text == "" && err != nil || tc.text != "" && (err == nil || !strings.Contains(err.Error(), tc.text)) {
				t.Errorf("skipBulk(%q) = %v, want an error containing %q", tc.in, err, tc.text)
			}
		})
	}
}

func TestRESPReplyClassification(t *testing.T) {
	s := &redisSink{}
	for _, tc := range []struct {
		err       error
		permanent bool
	}{
		{replyError("WRONGTYPE Operation against a key holding the wrong kind of value"), true},
		{replyError("ERR wrong number of arguments for 'xadd' command"), true},
		{replyError("OOM command not allowed when used memory > 'maxmemory'."), false},
		{replyError("LOADING Redis is loading the dataset in memory"), false},
		{replyError("NOAUTH Authentication required."), false},
		{replyError("READONLY You can't write against a read only replica."), false},
		{replyError("ERRANT not an ERR code"), false},
		{errors.New("oona: reading from Redis: EOF"), false},
		{context.DeadlineExceeded, false},
	} {
		if got := s.permanent(tc.err); got != tc.permanent {
			t.Errorf("permanent(%v) = %v, want %v", tc.err, got, tc.permanent)
		}
	}
}

// FuzzRESPReply: no server reply makes the reader panic, read past what it
// was given, or call a malformed reply anything but an error.
func FuzzRESPReply(f *testing.F) {
	for _, s := range []string{"$15\r\n1700000000000-0\r\n", "-ERR x\r\n", "$-1\r\n", "+OK\r\n", ":12\r\n", "$3\r\nab", "$\r\n", "*-1\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if err := respReader(in).skipBulk(); err == nil {
			// Accepted: a non-empty bulk or simple string, fully framed.
			if !(strings.HasPrefix(in, "$") || strings.HasPrefix(in, "+")) || !strings.Contains(in, "\r\n") {
				t.Fatalf("skipBulk accepted %q", in)
			}
		}
		text, err := respReader(in).readReply()
		if err == nil && !strings.Contains(in, text) {
			t.Fatalf("readReply(%q) = %q, which it was not given", in, text)
		}
	})
}

func TestAppendXADDIsWhatRedisParses(t *testing.T) {
	s := newRedisSink(nil, "", 1000)
	e := entry{stream: "telemetry.seed.health", vals: [numFields]string{"id", "sender", "ts", "", "telemetry.seed.health", "{\"a\":\"b\r\n\"}"}} // raw CR LF: bulk strings are length-framed
	got := string(s.appendXADD(nil, &e))
	want := "*18\r\n$4\r\nXADD\r\n$21\r\ntelemetry.seed.health\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$4\r\n1000\r\n$1\r\n*\r\n" +
		"$8\r\nevent_id\r\n$2\r\nid\r\n$9\r\nsender_id\r\n$6\r\nsender\r\n$9\r\ntimestamp\r\n$2\r\nts\r\n" +
		"$8\r\ntrace_id\r\n$0\r\n\r\n$5\r\ntopic\r\n$21\r\ntelemetry.seed.health\r\n$7\r\npayload\r\n$11\r\n{\"a\":\"b\r\n\"}\r\n"
	if got != want {
		t.Fatalf("XADD encoded as\n%q\nwant\n%q", got, want)
	}
	e.stream = "control.kasmina.commands" // never trimmed
	if got := string(s.appendXADD(nil, &e)); strings.Contains(got, "MAXLEN") || !strings.HasPrefix(got, "*15\r\n") {
		t.Fatalf("control stream XADD = %q", got)
	}
}

// TestPublisherConnectionTLSDatabaseAndName: the publisher's own RESP
// connection does TLS (rediss://), selects the URL's database and names
// itself in CLIENT LIST, against a real redis-server with a TLS port.
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
	if err := bad.probe(ctx); err == nil || !strings.Contains(err.Error(), "TLS handshake") {
		t.Fatalf("probe with an untrusted certificate = %v, want a TLS handshake error", err)
	}
}

// writeTestCerts writes a CA and a server certificate for localhost and
// 127.0.0.1 into dir (ca.pem, server.pem, server.key) and returns a pool
// trusting the CA.
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

// fakeRedis is a RESP server for the publisher's connection: it records the
// event_id of every XADD it reads, per connection, and answers them until
// the first connection carrying XADDs has answered hangUpAfter of them,
// when it closes that connection without answering the rest it read.
// That connection sends no XADD reply before it has read a 257th XADD.
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
		// The first connection holds its replies until it has read into
		// the second batch: a publisher that waited for the first batch's
		// replies before sending the second would time out here.
		if br.Buffered() == 0 && !(f.isFirst(idx) && answered <= 256) {
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

// TestPipelinedPublisherResendsInOrderAfterConnectionLoss: with two
// batches on the wire, a connection lost in the middle of the second
// batch's replies voids what was not acknowledged; after the reconnect the
// publisher resends it, and everything after, in publish order. Every
// message is delivered; the duplicates are the commands the server read
// but the publisher got no reply for.
func TestPipelinedPublisherResendsInOrderAfterConnectionLoss(t *testing.T) {
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
	if len(fake.conns) < 2 {
		t.Fatalf("%d connections: the hang-up did not happen", len(fake.conns))
	}
	first := fake.conns[fake.first]
	if len(first) <= hangUp {
		t.Fatalf("first connection read %d commands, want more than %d (two batches on the wire)", len(first), hangUp)
	}
	// The order the server saw, each id at its first arrival, is the
	// publish order, and the resend starts at the first unanswered one.
	// The resend starts at the first entry whose reply the publisher did
	// not read: at most the first unanswered one, and within the batch
	// that holds it, so no more than a batch (256) before it. (Closing a
	// socket with unread input resets it, so replies the server wrote can
	// be lost in transit; and the first batch can be short when the
	// flusher took it before everything was published.)
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
// through its socket, for the publisher's own connection and for the
// consumer's go-redis client alike.
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
