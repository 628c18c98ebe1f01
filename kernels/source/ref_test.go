package source

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRefAccepts(t *testing.T) {
	tests := []struct {
		in   string
		want Ref
	}{
		{"model.safetensors", Ref{Scheme: "file", Path: "model.safetensors", bare: true}},
		{"sub/dir/k.safetensors", Ref{Scheme: "file", Path: "sub/dir/k.safetensors", bare: true}},
		{"/var/lib/kernels/k", Ref{Scheme: "file", Path: "/var/lib/kernels/k", bare: true}},
		{"file:///var/lib/kernels/k", Ref{Scheme: "file", Path: "/var/lib/kernels/k"}},
		{"file://localhost/k%20x", Ref{Scheme: "file", Path: "/k x"}},
		{"FILE:///k", Ref{Scheme: "file", Path: "/k"}},
		{"https://Artifacts.Example.com/kernels/k1", Ref{Scheme: "https", Host: "artifacts.example.com", Path: "/kernels/k1"}},
		{"http://10.0.0.5:9000/b/k?X-Amz-Signature=ab", Ref{Scheme: "http", Host: "10.0.0.5:9000", Path: "/b/k", Query: "X-Amz-Signature=ab"}},
		{"http://[::1]:8080/k", Ref{Scheme: "http", Host: "[::1]:8080", Path: "/k"}},
		{"https://h", Ref{Scheme: "https", Host: "h", Path: "/"}},
		{"s3://esper-artifacts/kernels/k-1/compiled.safetensors", Ref{Scheme: "s3", Host: "esper-artifacts", Path: "kernels/k-1/compiled.safetensors"}},
		{"s3://bkt/a%20b", Ref{Scheme: "s3", Host: "bkt", Path: "a%20b"}},
	}
	for _, tt := range tests {
		got, err := ParseRef(tt.in)
		if err != nil {
			t.Errorf("ParseRef(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseRef(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		again, err := ParseRef(got.String())
		if err != nil || again != got {
			t.Errorf("ParseRef(%q).String() = %q does not parse back: %+v, %v", tt.in, got.String(), again, err)
		}
	}
}

func TestParseRefRefuses(t *testing.T) {
	tests := []struct {
		in      string
		wantErr error
		mention string
	}{
		{"", ErrInvalidRef, "empty"},
		{"k\x00x", ErrInvalidRef, "control character"},
		{"k\nx", ErrInvalidRef, "control character"},
		{"\xff", ErrInvalidRef, "UTF-8"},
		{strings.Repeat("a", maxRefLen+1), ErrInvalidRef, "at most"},
		{"ftp://host/k", ErrUnsupportedScheme, `"ftp"`},
		{"gopher:x", ErrUnsupportedScheme, `"gopher"`},
		{"https://user:pw@host/k", ErrInvalidRef, "credentials"},
		{"https://host/k#frag", ErrInvalidRef, "fragment"},
		{"https:///k", ErrInvalidRef, "host"},
		{"https://host:99999/k", ErrInvalidRef, "port"},
		{"https://host:/k", ErrInvalidRef, "port"},
		{"https://host/kernels/../secret", ErrInvalidRef, `".."`},
		{"https://host/kernels/%2e%2e/secret", ErrInvalidRef, `".."`},
		{"https://host/./k", ErrInvalidRef, `"."`},
		{"file://otherhost/k", ErrInvalidRef, "otherhost"},
		{"file:relative", ErrInvalidRef, "file:///"},
		{"file:///k?x=1", ErrInvalidRef, "query"},
		{"s3://bucket", ErrInvalidRef, "object key"},
		{"s3://bucket/", ErrInvalidRef, "object key"},
		{"s3:bucket/key", ErrInvalidRef, "s3://bucket/key"},
		{"s3://Bucket/k", ErrInvalidRef, `'B'`},
		{"s3://ab/k", ErrInvalidRef, "3 to 63"},
		{"s3://-abc/k", ErrInvalidRef, "start and end"},
		{"s3://a..b/k", ErrInvalidRef, "consecutive dots"},
		{"s3://10.0.0.1/k", ErrInvalidRef, "IP address"},
		{"s3://bkt/kernels/../other", ErrInvalidRef, `".."`},
		{"s3://bkt/k?versionId=3", ErrInvalidRef, "'?'"},
		{"s3://bkt/" + strings.Repeat("k", 1025), ErrInvalidRef, "1024"},
	}
	for _, tt := range tests {
		_, err := ParseRef(tt.in)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("ParseRef(%q) = %v, want %v", tt.in, err, tt.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("ParseRef(%q) error %q does not mention %s", tt.in, err, tt.mention)
		}
	}
}

func TestAllowList(t *testing.T) {
	allow, err := NewAllowList(
		"file",
		"https://artifacts.example.com/kernels",
		"https://*.cdn.example.net/",
		"http://minio:9000/esper-artifacts/",
		"s3://esper-artifacts/kernels/",
		"s3://scratch",
	)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ref   string
		allow bool
	}{
		{"k.safetensors", true},
		{"file:///anywhere/k", true}, // confinement is File's job
		{"https://artifacts.example.com/kernels/k1", true},
		{"https://artifacts.example.com/kernels", true},
		{"https://artifacts.example.com:443/kernels/k1", true},
		{"https://artifacts.example.com/kernels2/k1", false},
		{"https://artifacts.example.com/other", false},
		{"https://artifacts.example.com:8443/kernels/k1", false},
		{"http://artifacts.example.com/kernels/k1", false},
		{"https://artifacts.example.com.evil.com/kernels/k1", false},
		{"https://eu.cdn.example.net/x", true},
		{"https://cdn.example.net/x", false},
		{"https://evilcdn.example.net/x", false},
		{"http://minio:9000/esper-artifacts/kernels/k", true},
		{"http://minio/esper-artifacts/kernels/k", false},
		{"s3://esper-artifacts/kernels/k1/compiled.safetensors", true},
		{"s3://esper-artifacts/blueprints/b1", false},
		{"s3://esper-artifacts-evil/kernels/k1", false},
		{"s3://scratch/anything", true},
	}
	for _, tt := range tests {
		ref, err := ParseRef(tt.ref)
		if err != nil {
			t.Fatalf("ParseRef(%q): %v", tt.ref, err)
		}
		err = allow.Check(ref)
		if got := err == nil; got != tt.allow {
			t.Errorf("Check(%q) = %v, want allowed=%v", tt.ref, err, tt.allow)
		}
		if err != nil && !errors.Is(err, ErrNotAllowed) {
			t.Errorf("Check(%q) = %v, want ErrNotAllowed", tt.ref, err)
		}
	}
}

func TestAllowListRefusesBadPatterns(t *testing.T) {
	for _, p := range []string{"", "ftp://x", "https://", "https://a*b.com", "https://*.*.com", "s3://AB", "https://h/a/../b", "example.com"} {
		if _, err := NewAllowList(p); err == nil {
			t.Errorf("NewAllowList(%q) succeeded", p)
		}
	}
	var empty AllowList
	ref, _ := ParseRef("k")
	if err := empty.Check(ref); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("empty allow list allowed %v", ref)
	}
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{
		"k.safetensors", "/abs/k", "file:///a/b", "file://localhost/a%20b",
		"https://h/k?x=1", "http://[::1]:80/k", "s3://esper-artifacts/kernels/k/compiled.pt",
		"s3://b/../k", "https://u@h/k", "ftp://h", "a:b", "%", "file://", "s3:///k",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidRef) && !errors.Is(err, ErrUnsupportedScheme) {
				t.Fatalf("ParseRef(%q) error %v wraps neither sentinel", s, err)
			}
			return
		}
		switch r.Scheme {
		case SchemeFile, SchemeHTTP, SchemeHTTPS, SchemeS3:
		default:
			t.Fatalf("ParseRef(%q) scheme %q", s, r.Scheme)
		}
		again, err := ParseRef(r.String())
		if err != nil {
			t.Fatalf("ParseRef(%q).String() = %q does not parse: %v", s, r.String(), err)
		}
		if again != r {
			t.Fatalf("round trip of %q: %+v then %+v", s, r, again)
		}
		if r.Scheme != SchemeFile {
			for seg := range strings.SplitSeq(r.Path, "/") {
				if seg == ".." {
					t.Fatalf("ParseRef(%q) kept a .. segment: %+v", s, r)
				}
			}
		}
	})
}

func TestRedact(t *testing.T) {
	cases := []struct{ in, want string }{
		{"kernels/a.safetensors", "kernels/a.safetensors"},
		{"file:///srv/k/a.safetensors", "file:///srv/k/a.safetensors"},
		{"s3://esper-artifacts/k/a.safetensors", "s3://esper-artifacts/k/a.safetensors"},
		{"https://h.example/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101&X-Amz-Date=20240101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=deadbeef",
			"https://h.example/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Date=20240101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=REDACTED"},
		{"https://user:pa55@h.example:8443/k", "https://REDACTED@h.example:8443/k"},
		{"http://u:p@w@h.example?sig=abc&flag#tok=1", "http://REDACTED@h.example?sig=REDACTED&flag#REDACTED"},
		{"https://h.example/k?token=abc&x-amz-date=1", "https://h.example/k?token=REDACTED&x-amz-date=1"},
		{"weird://a@b", "weird://REDACTED@b"},
	}
	for _, c := range cases {
		if got := Redact(c.in); got != c.want {
			t.Errorf("Redact(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
	}
	r, err := ParseRef("https://h.example/k?X-Amz-Signature=deadbeef")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Redacted(); strings.Contains(got, "deadbeef") || !strings.Contains(got, "X-Amz-Signature=REDACTED") {
		t.Errorf("Ref.Redacted() = %q", got)
	}
}

// TestParseRefErrorsNeverShowCredentials: a refused reference is named in
// its error without the password or signature it carried.
func TestParseRefErrorsNeverShowCredentials(t *testing.T) {
	for _, ref := range []string{
		"https://user:hunter2@h.example/k",
		"http://user:hunter2@h.example:99999/k",
		"https://h.example/k?X-Amz-Signature=hunter2#frag",
		"s3://user:hunter2@bucket/key",
		"file://user:hunter2@localhost/k",
		"ftp://user:hunter2@h.example/k",
		"https://h.example/k?X-Amz-Signature=hunter2&x=\x01",
		"https://h.example/../k?X-Amz-Signature=hunter2",
	} {
		_, err := ParseRef(ref)
		if err == nil {
			t.Errorf("ParseRef(%q) accepted it", ref)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("ParseRef(%q): the error shows the secret: %v", ref, err)
		}
	}
	allow, _ := NewAllowList("https://other.example")
	r, _ := ParseRef("https://h.example/k?X-Amz-Signature=hunter2")
	if err := allow.Check(r); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("allow-list refusal: %v", err)
	}
}
