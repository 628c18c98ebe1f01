package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sleeps records the waits between attempts instead of spending them.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleeps) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.d...)
}

// server answers with handlers[i] on request i (the last one repeats) and
// counts requests.
type server struct {
	*httptest.Server
	hits atomic.Int32
}

func newServer(t *testing.T, handlers ...http.HandlerFunc) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(s.hits.Add(1)) - 1
		handlers[min(i, len(handlers)-1)](w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func body(b string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(b)) }
}

func status(code int, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(code)
	}
}

// hang blocks until the client goes away, signalling started first.
func hang(started chan<- struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if started != nil {
			started <- struct{}{}
		}
		<-r.Context().Done()
	}
}

func testHTTP(s *sleeps, mod ...func(*HTTPConfig)) *HTTP {
	cfg := HTTPConfig{AllowLoopback: true, MaxBytes: 64, MaxAttempts: 3, Sleep: s.sleep}
	for _, m := range mod {
		m(&cfg)
	}
	return NewHTTP(cfg)
}

func TestHTTPFetchesBody(t *testing.T) {
	srv := newServer(t, body("kernel bytes"))
	h := testHTTP(&sleeps{})
	b, err := h.Fetch(context.Background(), srv.URL+"/kernels/k1")
	if err != nil {
		t.Fatal(err)
	}
	if string(b.Data) != "kernel bytes" || b.SHA256 != sha([]byte("kernel bytes")) || b.Size != 12 {
		t.Fatalf("got %q %s %d", b.Data, b.SHA256, b.Size)
	}
	if b.Origin != srv.URL+"/kernels/k1" {
		t.Fatalf("origin %q", b.Origin)
	}
}

func TestHTTPSFetchesBody(t *testing.T) {
	srv := httptest.NewTLSServer(body("tls kernel"))
	defer srv.Close()
	tlsCfg := srv.Client().Transport.(*http.Transport).TLSClientConfig
	h := testHTTP(&sleeps{}, func(c *HTTPConfig) { c.TLSClientConfig = tlsCfg })
	b, err := h.Fetch(context.Background(), srv.URL+"/k")
	if err != nil || string(b.Data) != "tls kernel" {
		t.Fatalf("got %q, %v", b.Data, err)
	}
}

func TestHTTPRetriesServerErrorsWithBackoff(t *testing.T) {
	srv := newServer(t, status(503), status(500), body("ok"))
	s := &sleeps{}
	h := testHTTP(s, func(c *HTTPConfig) { c.BaseBackoff = 100 * time.Millisecond; c.MaxBackoff = time.Second })
	b, err := h.Fetch(context.Background(), srv.URL+"/k")
	if err != nil || string(b.Data) != "ok" {
		t.Fatalf("got %q, %v", b.Data, err)
	}
	if n := srv.hits.Load(); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
	waits := s.get()
	if len(waits) != 2 {
		t.Fatalf("waits %v, want 2", waits)
	}
	// Exponential with jitter in [d/2, d]: 100ms then 200ms.
	for i, lim := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
		if waits[i] < lim/2 || waits[i] > lim {
			t.Errorf("wait %d = %v, want within [%v, %v]", i, waits[i], lim/2, lim)
		}
	}
}

func TestHTTPHonoursRetryAfter(t *testing.T) {
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	srv := newServer(t, status(429, "Retry-After", "7"), status(503, "Retry-After", date), body("ok"))
	s := &sleeps{}
	h := testHTTP(s, func(c *HTTPConfig) { c.MaxRetryAfter = 20 * time.Second })
	if _, err := h.Fetch(context.Background(), srv.URL+"/k"); err != nil {
		t.Fatal(err)
	}
	waits := s.get()
	if len(waits) != 2 || waits[0] != 7*time.Second || waits[1] != 20*time.Second {
		t.Fatalf("waits %v, want [7s 20s] (the HTTP date capped by MaxRetryAfter)", waits)
	}
}

func TestHTTPGivesUpAfterMaxAttempts(t *testing.T) {
	srv := newServer(t, status(502))
	h := testHTTP(&sleeps{})
	_, err := h.Fetch(context.Background(), srv.URL+"/k")
	if err == nil || !strings.Contains(err.Error(), "after 3 attempts") || !strings.Contains(err.Error(), "502") {
		t.Fatalf("err = %v", err)
	}
	if n := srv.hits.Load(); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
}

func TestHTTPDoesNotRetryClientErrors(t *testing.T) {
	tests := []struct {
		code    int
		wantErr error
	}{
		{404, ErrNotFound},
		{410, ErrNotFound},
		{403, nil},
		{400, nil},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.code), func(t *testing.T) {
			srv := newServer(t, status(tt.code))
			s := &sleeps{}
			_, err := testHTTP(s).Fetch(context.Background(), srv.URL+"/k")
			if err == nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), strconv.Itoa(tt.code)) {
				t.Fatalf("err = %v, want %v naming the status", err, tt.wantErr)
			}
			if n := srv.hits.Load(); n != 1 || len(s.get()) != 0 {
				t.Fatalf("%d requests, %d waits: a %d was retried", n, len(s.get()), tt.code)
			}
		})
	}
}

func TestHTTPRefusesOversizedBodies(t *testing.T) {
	declared := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		_, _ = w.Write(make([]byte, 100))
	}
	chunked := func(w http.ResponseWriter, r *http.Request) {
		// No Content-Length: the cap must hold while streaming.
		for range 10 {
			_, _ = w.Write(make([]byte, 10))
			w.(http.Flusher).Flush()
		}
	}
	exact := func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(make([]byte, 64)) }
	for name, hf := range map[string]http.HandlerFunc{"content-length": declared, "chunked": chunked} {
		t.Run(name, func(t *testing.T) {
			srv := newServer(t, hf)
			b, err := testHTTP(&sleeps{}).Fetch(context.Background(), srv.URL+"/k")
			if !errors.Is(err, ErrTooLarge) || b.Data != nil {
				t.Fatalf("got %d bytes, %v; want ErrTooLarge", len(b.Data), err)
			}
			if n := srv.hits.Load(); n != 1 {
				t.Fatalf("oversized body retried (%d requests)", n)
			}
		})
	}
	srv := newServer(t, exact)
	if b, err := testHTTP(&sleeps{}).Fetch(context.Background(), srv.URL+"/k"); err != nil || b.Size != 64 {
		t.Fatalf("body of exactly the cap: %d bytes, %v", b.Size, err)
	}
}

func TestHTTPRetriesAnAttemptThatTimesOut(t *testing.T) {
	srv := newServer(t, hang(nil), body("second time"))
	h := testHTTP(&sleeps{}, func(c *HTTPConfig) { c.AttemptTimeout = 50 * time.Millisecond })
	b, err := h.Fetch(context.Background(), srv.URL+"/k")
	if err != nil || string(b.Data) != "second time" {
		t.Fatalf("got %q, %v", b.Data, err)
	}
	if n := srv.hits.Load(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}

func TestHTTPTotalTimeoutStopsRetries(t *testing.T) {
	srv := newServer(t, hang(nil))
	h := testHTTP(&sleeps{}, func(c *HTTPConfig) { c.Timeout = 50 * time.Millisecond })
	_, err := h.Fetch(context.Background(), srv.URL+"/k")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("%d requests after the total timeout, want 1", n)
	}
}

func TestHTTPCancellationStopsAtOnce(t *testing.T) {
	started := make(chan struct{}, 1)
	srv := newServer(t, hang(started))
	h := testHTTP(&sleeps{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := h.Fetch(ctx, srv.URL+"/k")
		done <- err
	}()
	<-started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("%d requests after cancellation, want 1", n)
	}
}

func TestHTTPRefusesAddressesAtDialTime(t *testing.T) {
	srv := newServer(t, body("should not be read"))
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	tests := []struct {
		name string
		url  string
		cfg  func(*HTTPConfig)
		want string
	}{
		{"loopback IP", srv.URL + "/k", nil, "loopback"},
		// A name is resolved and the address checked where it is dialed,
		// so a name pointing at a refused address is refused too.
		{"name resolving to loopback", "http://localhost:" + port + "/k", nil, "loopback"},
		{"IPv6 loopback", "http://[::1]:" + port + "/k", nil, "loopback"},
		{"metadata", "http://169.254.169.254/latest/meta-data/", nil, "metadata"},
		{"metadata despite link-local allowed", "http://169.254.169.254/latest/", func(c *HTTPConfig) { c.AllowLinkLocal = true }, "metadata"},
		{"ECS credentials endpoint", "http://169.254.170.2/v2/credentials", nil, "metadata"},
		{"link-local", "http://169.254.10.10/k", nil, "link-local"},
		{"unspecified", "http://0.0.0.0:" + port + "/k", func(c *HTTPConfig) { c.AllowLoopback = true }, "unspecified"},
		{"private when denied", "http://10.1.2.3/k", func(c *HTTPConfig) { c.DenyPrivate = true }, "private"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := HTTPConfig{MaxAttempts: 3, Sleep: (&sleeps{}).sleep}
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			_, err := NewHTTP(cfg).Fetch(context.Background(), tt.url)
			if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrNotAllowed mentioning %s", err, tt.want)
			}
		})
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("server saw %d requests", n)
	}
}

func TestAddrPolicy(t *testing.T) {
	strict := addrPolicy{private: true}
	open := addrPolicy{loopback: true, linkLocal: true, metadata: true, private: true}
	tests := []struct {
		addr         string
		strict, open bool // allowed?
	}{
		{"93.184.216.34", true, true},
		{"2606:2800:220:1:248:1893:25c8:1946", true, true},
		{"10.0.0.5", true, true},
		{"127.0.0.1", false, true},
		{"127.8.9.10", false, true},
		{"::1", false, true},
		{"::ffff:127.0.0.1", false, true},
		{"169.254.169.254", false, true},
		{"::ffff:169.254.169.254", false, true},
		{"fd00:ec2::254", false, true},
		{"100.100.100.200", false, true},
		{"169.254.1.1", false, true},
		{"fe80::1", false, true},
		{"0.0.0.0", false, false},
		{"::", false, false},
		{"224.0.0.1", false, false},
		{"255.255.255.255", false, false},
	}
	for _, tt := range tests {
		a := netip.MustParseAddr(tt.addr)
		if got := strict.check(a) == nil; got != tt.strict {
			t.Errorf("strict policy on %s: allowed=%v, want %v", tt.addr, got, tt.strict)
		}
		if got := open.check(a) == nil; got != tt.open {
			t.Errorf("permissive policy on %s: allowed=%v, want %v", tt.addr, got, tt.open)
		}
	}
	if (addrPolicy{}).check(netip.MustParseAddr("192.168.1.1")) == nil {
		t.Error("private address allowed with private=false")
	}
}

func TestHTTPRedirects(t *testing.T) {
	other := newServer(t, body("elsewhere"))
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/moved":
			http.Redirect(w, r, "/k", http.StatusFound)
		case "/away":
			http.Redirect(w, r, other.URL+"/k", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case "/to-ftp":
			http.Redirect(w, r, "ftp://example.com/k", http.StatusFound)
		default:
			_, _ = w.Write([]byte("here"))
		}
	})
	h := testHTTP(&sleeps{})
	b, err := h.Fetch(context.Background(), srv.URL+"/moved")
	if err != nil || string(b.Data) != "here" || b.Origin != srv.URL+"/k" {
		t.Fatalf("same-host redirect: %q from %q, %v", b.Data, b.Origin, err)
	}
	for _, path := range []string{"/away", "/loop", "/to-ftp"} {
		if _, err := h.Fetch(context.Background(), srv.URL+path); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s: err = %v, want ErrNotAllowed", path, err)
		}
	}
	if n := other.hits.Load(); n != 0 {
		t.Fatalf("followed a redirect to another host (%d requests)", n)
	}
	allow, err := NewAllowList(other.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	h = testHTTP(&sleeps{}, func(c *HTTPConfig) { c.Redirects = allow })
	if b, err := h.Fetch(context.Background(), srv.URL+"/away"); err != nil || string(b.Data) != "elsewhere" {
		t.Fatalf("allowed cross-host redirect: %q, %v", b.Data, err)
	}
	h = testHTTP(&sleeps{}, func(c *HTTPConfig) { c.MaxRedirects = -1 })
	if _, err := h.Fetch(context.Background(), srv.URL+"/moved"); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("redirect followed with MaxRedirects < 0: %v", err)
	}
}

func TestRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"12", 12 * time.Second},
		{"-3", 0},
		{"soon", 0},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second},
		{now.Add(-30 * time.Second).Format(http.TimeFormat), 0},
		{"99999999999", 24 * time.Hour},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.in, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	h := NewHTTP(HTTPConfig{BaseBackoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	for attempt, lim := range map[int]time.Duration{1: 100, 2: 200, 3: 400, 4: 500, 10: 500, 60: 500} {
		lim *= time.Millisecond
		for range 20 {
			if d := h.backoff(attempt, 0); d < lim/2 || d > lim {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, d, lim/2, lim)
			}
		}
	}
	if d := h.backoff(1, time.Hour); d != 30*time.Second {
		t.Fatalf("Retry-After of an hour waited %v, want the 30s default cap", d)
	}
}

func TestHTTPRefusesOtherSchemes(t *testing.T) {
	for _, ref := range []string{"s3://bkt/k", "k.safetensors"} {
		if _, err := NewHTTP(HTTPConfig{}).Fetch(context.Background(), ref); !errors.Is(err, ErrUnsupportedScheme) {
			t.Errorf("Fetch(%q) = %v", ref, err)
		}
	}
}

func ExampleNewAllowList() {
	allow, _ := NewAllowList("file", "s3://esper-artifacts/kernels/")
	for _, ref := range []string{"s3://esper-artifacts/kernels/k1/kernel.safetensors", "https://example.com/k"} {
		r, _ := ParseRef(ref)
		fmt.Println(ref, allow.Check(r) == nil)
	}
	// Output:
	// s3://esper-artifacts/kernels/k1/kernel.safetensors true
	// https://example.com/k false
}

// TestHTTPErrorsNeverShowSignatures: every way a presigned URL's fetch
// can fail (404, 5xx until giving up, a redirect refused, a checksum
// mismatch, a connection refused) names the URL without its signature,
// and so does the log line of a retry.
func TestHTTPErrorsNeverShowSignatures(t *testing.T) {
	const q = "?X-Amz-Credential=AKIASECRET&X-Amz-Signature=hunter2"
	notFound := newServer(t, status(404))
	flaky := newServer(t, status(503))
	redirect := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://elsewhere.example/x"+q, http.StatusFound)
	})
	ok := newServer(t, body("kernel bytes"))
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	var logs strings.Builder
	h := testHTTP(&sleeps{}, func(c *HTTPConfig) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	cases := []struct{ name, url, sha string }{
		{"not found", notFound.URL + "/k" + q, ""},
		{"server error", flaky.URL + "/k" + q, ""},
		{"redirect", redirect.URL + "/k" + q, ""},
		{"checksum", ok.URL + "/k" + q, strings.Repeat("0", 64)},
		{"connection refused", closedURL + "/k" + q, ""},
	}
	for _, c := range cases {
		_, err := FetchVerified(context.Background(), h, c.url, c.sha)
		if err == nil {
			t.Errorf("%s: fetched", c.name)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "AKIASECRET") {
			t.Errorf("%s: the error shows the credentials: %v", c.name, err)
		}
		if !strings.Contains(err.Error(), "X-Amz-Signature=REDACTED") && c.name != "redirect" {
			t.Errorf("%s: the error does not name the URL (redacted): %v", c.name, err)
		}
	}
	if strings.Contains(logs.String(), "hunter2") || !strings.Contains(logs.String(), "REDACTED") {
		t.Errorf("retry log lines show the signature or no URL:\n%s", logs.String())
	}
	b, err := h.Fetch(context.Background(), ok.URL+"/k"+q)
	if err != nil || strings.Contains(b.Origin, "hunter2") {
		t.Errorf("Blob.Origin %q, %v", b.Origin, err)
	}
}
