package source

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRouterDispatchesAllowedRefsBySchemeAndRefusesTheRest(t *testing.T) {
	_, root := kernelRoot(t)
	file, err := NewFile(root, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	web := newServer(t, body("from http"))
	s3srv := newFakeS3(t, "esper-artifacts", map[string][]byte{"kernels/k1": []byte("from s3"), "private/x": []byte("no")})
	s3, err := NewS3(S3Config{Endpoint: s3srv.URL, AccessKeyID: "a", SecretAccessKey: "b"})
	if err != nil {
		t.Fatal(err)
	}
	httpSrc := testHTTP(&sleeps{})
	allow, err := NewAllowList("file", web.URL+"/kernels/", "s3://esper-artifacts/kernels/", "https://*")
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRouter(allow, map[string]Source{"file": file, "http": httpSrc, "s3": s3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{
		"k.safetensors":                   "kernel-k",
		web.URL + "/kernels/k":            "from http",
		"s3://esper-artifacts/kernels/k1": "from s3",
	} {
		b, err := r.Fetch(context.Background(), ref)
		if err != nil || string(b.Data) != want {
			t.Errorf("Fetch(%q) = %q, %v; want %q", ref, b.Data, err, want)
		}
	}
	webBefore, s3Before := web.hits.Load(), s3srv.requests.Load()
	refused := map[string]error{
		web.URL + "/other/k":             ErrNotAllowed,
		"s3://esper-artifacts/private/x": ErrNotAllowed,
		"s3://other-bucket/kernels/k1":   ErrNotAllowed,
		"https://example.com/k":          ErrUnsupportedScheme, // allowed, but no https route
		"ftp://example.com/k":            ErrUnsupportedScheme,
		"../secret":                      ErrNotAllowed, // allowed scheme; File refuses the escape
		"https://u:p@example.com/k":      ErrInvalidRef,
	}
	for ref, wantErr := range refused {
		if _, err := r.Fetch(context.Background(), ref); !errors.Is(err, wantErr) {
			t.Errorf("Fetch(%q) = %v, want %v", ref, err, wantErr)
		}
	}
	if web.hits.Load() != webBefore || s3srv.requests.Load() != s3Before {
		t.Fatal("a refused reference reached a server")
	}
	b, err := FetchVerified(context.Background(), r, "s3://esper-artifacts/kernels/k1", sha([]byte("from s3")))
	if err != nil || string(b.Data) != "from s3" {
		t.Fatalf("FetchVerified through the router: %q, %v", b.Data, err)
	}
}

func TestNewRouterValidates(t *testing.T) {
	allow, _ := NewAllowList("file")
	if _, err := NewRouter(nil, nil, nil); err == nil || !strings.Contains(err.Error(), "allow list") {
		t.Errorf("nil allow list: %v", err)
	}
	if _, err := NewRouter(allow, map[string]Source{"ftp": NewHTTP(HTTPConfig{})}, nil); !errors.Is(err, ErrUnsupportedScheme) {
		t.Errorf("ftp route: %v", err)
	}
	if _, err := NewRouter(allow, map[string]Source{"http": nil}, nil); err == nil {
		t.Error("nil source accepted")
	}
}
