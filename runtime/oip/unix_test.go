package oip_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/oip"
)

// shortTempDir is a temporary directory with a short path: a socket path
// must fit in 107 bytes, and t.TempDir's can be long.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "khs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// unixClient is an HTTP client that dials the socket at path whatever the
// URL's host.
func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// The same server on loopback TCP and on a Unix socket: the socket is mode
// 0660, needs no token and checks no Host, gives the same answers as TCP
// (with the token), and goes when the server shuts down. TCP keeps its
// token and Host checks.
func TestUnixSocketServesWithoutToken(t *testing.T) {
	f := newHostFixture(t)
	ctx := context.Background()
	if _, err := f.host.Load(ctx, runtime.LoadRequest{Data: linearKernel(t, "k")}); err != nil {
		t.Fatal(err)
	}
	const token = "s3cret-token"
	h := oip.NewHandler(f.backend, f.views, oip.Options{Access: oip.Access{Token: token, TokenForReads: true, Loopback: true}}, nil)
	srv := oip.NewServer("127.0.0.1:0", h, nil)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(shortTempDir(t), "host.sock")
	unix, err := oip.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(tcp)
	go srv.Serve(unix)
	defer srv.Close()

	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}

	do := func(c *http.Client, base, method, path, host, tok string, body []byte, hdr map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tcpBase, unixBase := "http://"+tcp.Addr().String(), "http://kasmina"
	uc := unixClient(path)
	infer := []byte(`{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","data":[1,2,3,-4,0,0,0,0]}]}`)
	for _, c := range []struct {
		method, path string
		body         []byte
	}{
		{"POST", "/v2/models/k/infer", infer},
		{"GET", "/v2/models/k", nil},
		{"GET", "/v1/kernels/k", nil},
		{"POST", "/v2/models/nope/infer", infer},
	} {
		tcpCode, tcpBody := do(http.DefaultClient, tcpBase, c.method, c.path, "", token, c.body, nil)
		// No token, a Host no loopback listener accepts, a cross-site
		// fetch header: none of it matters on the socket.
		unixCode, unixBody := do(uc, unixBase, c.method, c.path, "evil.example", "", c.body, map[string]string{"Sec-Fetch-Site": "cross-site"})
		if unixCode != tcpCode || !sameAnswer(unixBody, tcpBody) {
			t.Errorf("%s %s: unix %d %s\ntcp %d %s", c.method, c.path, unixCode, unixBody, tcpCode, tcpBody)
		}
	}
	if code, body := do(uc, unixBase, "POST", "/v2/models/k/infer", "", "", infer, nil); code != 200 || !strings.Contains(body, `"data":[3,7.5,0,0,0.5,0]`) {
		t.Errorf("unix infer: %d %s", code, body)
	}
	if code, _ := do(http.DefaultClient, tcpBase, "POST", "/v2/models/k/infer", "", "", infer, nil); code != http.StatusUnauthorized {
		t.Errorf("tcp without a token: %d, want 401", code)
	}
	if code, _ := do(http.DefaultClient, tcpBase, "GET", "/v2/models/k", "evil.example", token, nil, nil); code != http.StatusForbidden {
		t.Errorf("tcp with a foreign Host: %d, want 403", code)
	}

	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after shutdown: %v", err)
	}
}

// sameAnswer compares two JSON answers but for their timings, which differ
// from one request to the next.
func sameAnswer(a, b string) bool {
	strip := func(s string) string {
		for _, key := range []string{`"queue_ns":`, `"compute_ns":`} {
			for i := strings.Index(s, key); i >= 0; i = strings.Index(s, key) {
				end := i + len(key)
				for end < len(s) && s[end] != ',' && s[end] != '}' {
					end++
				}
				s = s[:i] + s[end:]
			}
		}
		return s
	}
	return strip(a) == strip(b)
}

// What is at the path decides: a file that is not a socket is refused and
// left alone; a socket someone listens on is refused; a stale socket is
// replaced.
func TestListenUnixPathChecks(t *testing.T) {
	dir := shortTempDir(t)

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := oip.ListenUnix(file); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "precious" {
		t.Fatal("the file was touched")
	}
	if _, err := oip.ListenUnix(dir); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("over a directory: %v", err)
	}

	live := filepath.Join(dir, "live.sock")
	ln, err := oip.ListenUnix(live)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oip.ListenUnix(live); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("over a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(live); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("closed listener left its socket: %v", err)
	}

	stale := filepath.Join(dir, "stale.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close() // a process that died: its socket stays
	ln, err = oip.ListenUnix(stale)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", stale)
	if err != nil {
		t.Fatalf("the new socket does not answer: %v", err)
	}
	c.Close()
	entries, _ := os.ReadDir(dir)
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "file stale.sock" {
		t.Fatalf("directory holds %v, want file and stale.sock: a private bind directory was left behind", names)
	}
	if _, err := oip.ListenUnix(filepath.Join(dir, strings.Repeat("x", 120))); err == nil || !strings.Contains(err.Error(), "over the 107") {
		t.Fatalf("a path too long: %v", err)
	}
}
