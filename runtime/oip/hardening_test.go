package oip_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
)

// rawConn sends a request's headers and the first part of its body over a
// plain TCP connection, leaving the rest unsent.
func rawConn(t *testing.T, addr, method, path string, declared int, sent []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n", method, path, declared)
	if _, err := c.Write(sent); err != nil {
		t.Fatal(err)
	}
	return c
}

// gaugeValue reads a gauge from the fixture's registry.
func gaugeValue(t *testing.T, f *fixture, name string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func heapAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestDeclaredBodySizesAreNotReserved: connections that declare a large
// Content-Length and send a few bytes hold a first chunk each, not their
// declared size (they held 8 MiB each: 60 such connections at 64 MiB
// killed a 3 GiB daemon).
func TestDeclaredBodySizesAreNotReserved(t *testing.T) {
	const conns, declared = 10, 8 << 20
	f := newFixture(t, oip.Options{Access: oip.Access{Loopback: true}, MaxBodyBytes: declared}, oip.HostViews{})
	var entered atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		f.handler.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close) // after the connections close (cleanups run last first)
	runtime.GC()
	before := heapAlloc()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for range conns {
		rawConn(t, addr, "POST", "/v2/models/double/infer", declared, []byte(`{"inputs":[`))
	}
	waitFor(t, "the handlers to start", func() bool { return entered.Load() == conns })
	// The old reader allocated each declared size right after entering; give
	// it a moment to show before measuring.
	time.Sleep(200 * time.Millisecond)
	if grew := int64(heapAlloc()) - int64(before); grew > conns*declared/4 {
		t.Fatalf("heap grew by %d bytes for %d connections that sent 11 bytes each: declared sizes were reserved", grew, conns)
	}
	waitFor(t, "the handlers to hold their first chunks", func() bool { return gaugeValue(t, f, "kasmina_http_body_bytes_held") > 0 })
	if held := gaugeValue(t, f, "kasmina_http_body_bytes_held"); held > conns*64<<10 {
		t.Fatalf("%v body bytes held for %d connections that sent 11 bytes each, want at most a 64 KiB first chunk each", held, conns)
	}
}

// TestBodyBudgetIsShared: bodies held by every connection share one
// budget; a body that does not fit now is answered 503 with Retry-After,
// one larger than the whole budget 413, and the budget comes back when a
// connection goes away. Every route that reads a body goes through it.
func TestBodyBudgetIsShared(t *testing.T) {
	const budget = 1 << 20
	views := oip.HostViews{
		LoadKernel: func(context.Context, []byte) (any, bool, error) { return map[string]string{}, true, nil },
		PlanPlacement: func(context.Context, []byte) (any, error) {
			return map[string]string{}, nil
		},
	}
	f := newFixture(t, oip.Options{Access: oip.Access{Loopback: true}, MaxBodyBytes: 4 << 20, BodyBudgetBytes: budget}, views)
	srv := httptest.NewServer(f.handler)
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")

	// A slow client holds 256 KiB of the budget: 300 KiB declared, 200 KiB
	// sent.
	slow := rawConn(t, addr, "POST", "/v2/models/double/infer", 300<<10, bytes.Repeat([]byte(" "), 200<<10))
	waitFor(t, "the slow body to be held", func() bool { return gaugeValue(t, f, "kasmina_http_body_bytes_held") >= 200<<10 })

	post := func(path string, body []byte) (*http.Response, string) {
		t.Helper()
		resp, err := srv.Client().Post(srv.URL+path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	// A small request still fits.
	if resp, b := post("/v2/models/double/infer", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]")); resp.StatusCode != 200 {
		t.Fatalf("small request beside the slow one: %d %s", resp.StatusCode, b)
	}
	// 900 KiB does not fit beside the slow body's 256 KiB: 503 + Retry-After.
	big := jsonInfer("FP32", []int{1, 4}, "[1,2,3,4"+strings.Repeat(" ", 900<<10)+"]")
	resp, b := post("/v2/models/double/infer", big)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(b, "request bodies") {
		t.Fatalf("body over the remaining budget: %d (Retry-After %q) %s; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	// Larger than the whole budget: 413, whatever is held.
	if resp, b := post("/v2/models/double/infer", bytes.Repeat([]byte(" "), budget+1)); resp.StatusCode != 413 {
		t.Fatalf("body over the whole budget: %d %s, want 413", resp.StatusCode, b)
	}
	// The slow client goes away: its bytes come back and the big body fits.
	slow.Close()
	waitFor(t, "the slow body's bytes to come back", func() bool { return gaugeValue(t, f, "kasmina_http_body_bytes_held") == 0 })
	if resp, b := post("/v2/models/double/infer", big); resp.StatusCode != 200 {
		t.Fatalf("the big body once the budget is free: %d %s", resp.StatusCode, b)
	}

	// Every route that reads a body goes through the budget.
	hold := rawConn(t, addr, "POST", "/v2/models/double/infer", budget, bytes.Repeat([]byte(" "), budget-(64<<10)))
	defer hold.Close()
	waitFor(t, "the budget to be spent", func() bool { return gaugeValue(t, f, "kasmina_http_body_bytes_held") >= budget-(64<<10) })
	doc := []byte(`{"ready":false,"pad":"` + strings.Repeat("x", 300<<10) + `"}`)
	for _, path := range []string{
		"/v2/models/double/infer", "/v2/repository/index", "/v2/repository/models/double/load",
		"/v2/repository/models/double/unload", "/v1/kernels", "/v1/placement/plan",
	} {
		if resp, b := post(path, doc); resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Errorf("POST %s with the budget spent: %d %s, want 503 with Retry-After", path, resp.StatusCode, b)
		}
	}
}

// TestStalledBodyIsGivenUp: a body that stops arriving is answered 408
// after BodyReadTimeout, whatever its Content-Length said.
func TestStalledBodyIsGivenUp(t *testing.T) {
	f := newFixture(t, oip.Options{Access: oip.Access{Loopback: true}, BodyReadTimeout: 200 * time.Millisecond}, oip.HostViews{})
	srv := httptest.NewServer(f.handler)
	t.Cleanup(srv.Close)
	c := rawConn(t, strings.TrimPrefix(srv.URL, "http://"), "POST", "/v2/models/double/infer", 1000, []byte(`{"inputs":`))
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "did not arrive within 200ms") {
		t.Fatalf("stalled body: %d %s, want 408", resp.StatusCode, b)
	}
	if held := gaugeValue(t, f, "kasmina_http_body_bytes_held"); held != 0 {
		t.Fatalf("%v bytes still held after the stalled body was given up", held)
	}
}

// TestLoadsAnswerBeforeTheWriteTimeout: a load that outlasts LoadTimeout
// is cancelled and answered 504 with the reason, on both load routes.
func TestLoadsAnswerBeforeTheWriteTimeout(t *testing.T) {
	var sawDeadline atomic.Int32
	block := func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); ok {
			sawDeadline.Add(1)
		}
		<-ctx.Done()
		return fmt.Errorf("fetching the artifact: %w", ctx.Err())
	}
	views := oip.HostViews{LoadKernel: func(ctx context.Context, _ []byte) (any, bool, error) { return nil, false, block(ctx) }}
	b := oiptest.New()
	b.Add(oip.ModelInfo{Name: "slow", InputShape: []int{1}}, oiptest.Scale(1))
	b.SetLoadFunc(func(ctx context.Context, _ string) error { return block(ctx) })
	h := oip.NewHandler(b, views, oip.Options{LoadTimeout: 100 * time.Millisecond}, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	client := &http.Client{Timeout: 20 * time.Second}
	for _, c := range []struct{ path, body, what string }{
		{"/v1/kernels", `{"kernel_id":"slow"}`, "loading the kernel"},
		{"/v2/repository/models/slow/load", ``, `loading model "slow"`},
	} {
		resp, err := client.Post(srv.URL+c.path, "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatalf("POST %s: %v (no answer before the client gave up)", c.path, err)
		}
		var msg struct{ Error string }
		err = json.NewDecoder(resp.Body).Decode(&msg)
		resp.Body.Close()
		want := c.what + " took longer than 100ms and was cancelled; nothing was loaded: fetching the artifact: context deadline exceeded"
		if err != nil || resp.StatusCode != 504 || msg.Error != want {
			t.Errorf("POST %s past the load deadline: %d %q (%v)\nwant 504 with %q", c.path, resp.StatusCode, msg.Error, err, want)
		}
	}
	if sawDeadline.Load() != 2 {
		t.Errorf("%d of 2 loads had a deadline", sawDeadline.Load())
	}
}

// TestErrorMessagesSayItOnce: the HTTP layer adds no prefix to a
// classified error, and its own errors carry no class phrase.
func TestErrorMessagesSayItOnce(t *testing.T) {
	views := oip.HostViews{
		LoadKernel: func(context.Context, []byte) (any, bool, error) {
			return nil, false, failure.Errorf(failure.BadInput, `kernel name "a/b": no control characters, '/', '?' or '#'`)
		},
		UnloadKernel: func(_ context.Context, id string) error {
			return failure.Errorf(failure.NotFound, "no kernel %q is loaded", id)
		},
	}
	f := newFixture(t, oip.Options{}, views)
	f.backend.SetInferError("double", failure.Errorf(failure.Unavailable, `kernel "double" is being unloaded`))
	cases := []struct {
		method, path, body string
		code               int
		msg                string
	}{
		{"GET", "/v2/models/nope", "", 404, `no model named "nope"`},
		{"POST", "/v2/models/nope/infer", "", 404, `no model named "nope"`},
		{"POST", "/v2/models/double/infer", string(jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]")), 503, `kernel "double" is being unloaded`},
		{"POST", "/v2/models/double/infer", `{"inputs":[`, 400, "malformed inference request JSON: unexpected end of JSON input"},
		{"POST", "/v1/kernels", `{"name":"a/b"}`, 400, `kernel name "a/b": no control characters, '/', '?' or '#'`},
		{"DELETE", "/v1/kernels/nope", "", 404, `no kernel "nope" is loaded`},
		{"POST", "/v2/repository/models/nope/unload", "", 404, `no model "nope" in the repository`},
		{"POST", "/v2/repository/models/nope/load", "", 404, `no model "nope" in the repository`},
		{"GET", "/v2/models/loading/ready", "", 503, `model "loading" is LOADING: state LOADING`},
	}
	for _, c := range cases {
		w := f.call(c.method, c.path, []byte(c.body), nil)
		if w.Code != c.code {
			t.Errorf("%s %s: %d, want %d: %s", c.method, c.path, w.Code, c.code, w.Body)
			continue
		}
		if got := errorMessage(t, w); got != c.msg {
			t.Errorf("%s %s:\n got %q\nwant %q", c.method, c.path, got, c.msg)
		}
	}
}

// TestBlankTokensAreRefused: CheckToken and CheckListen refuse a token
// that is blank or holds whitespace; a handler given one anyway lets no
// request through.
func TestBlankTokensAreRefused(t *testing.T) {
	for _, tok := range []string{" ", "\t\n", "two words", "tab\there", "nul\x00"} {
		if err := oip.CheckToken(tok); err == nil {
			t.Errorf("CheckToken(%q) accepted it", tok)
		}
		if err := oip.CheckListen("0.0.0.0:8470", tok, false); err == nil {
			t.Errorf("CheckListen beyond loopback with token %q accepted it", tok)
		}
	}
	if err := oip.CheckToken("s3cret-Token_1.x~+/="); err != nil {
		t.Errorf("a good token refused: %v", err)
	}
	f := newFixture(t, oip.Options{Access: oip.Access{Token: " "}}, oip.HostViews{})
	for _, auth := range []string{"", "Bearer  ", "Bearer"} {
		if w := f.call("POST", "/v2/models/double/infer", jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]"), map[string]string{"Authorization": auth}); w.Code != 401 {
			t.Errorf("blank configured token, Authorization %q: %d, want 401", auth, w.Code)
		}
	}
}
