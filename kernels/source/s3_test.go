package source

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// fakeS3 serves the S3 HTTP API in-process on loopback, holding one bucket
// with the given objects, and counts requests and the credentials they were
// signed with.
type fakeS3 struct {
	*httptest.Server
	requests atomic.Int32
	lastAuth atomic.Value // string
}

func newFakeS3(t *testing.T, bucket string, objects map[string][]byte) *fakeS3 {
	t.Helper()
	f := &fakeS3{}
	api := gofakes3.New(s3mem.New()).Server()
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		f.lastAuth.Store(r.Header.Get("Authorization"))
		api.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	// Seed through the S3 API itself, as Tezzeret would upload.
	u, _ := url.Parse(f.URL)
	up, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4("seed", "seed", ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := up.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	for key, data := range objects {
		if _, err := up.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestS3FetchesObjectFromEnvConfiguredEndpoint(t *testing.T) {
	kernel := []byte("esper-kernel/v1 bytes")
	srv := newFakeS3(t, "esper-artifacts", map[string][]byte{"kernels/k1/kernel.safetensors": kernel})
	// Esper's own variable names the endpoint; the credentials are the AWS ones.
	cfg := S3ConfigFromEnv(env(map[string]string{
		"S3_ENDPOINT_URL":       srv.URL,
		"AWS_ACCESS_KEY_ID":     "AKIDTEST",
		"AWS_SECRET_ACCESS_KEY": "secret",
		"AWS_REGION":            "eu-west-1",
	}))
	s, err := NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Fetch(context.Background(), "s3://esper-artifacts/kernels/k1/kernel.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Data, kernel) || b.SHA256 != sha(kernel) || b.Origin != "s3://esper-artifacts/kernels/k1/kernel.safetensors" {
		t.Fatalf("got %q %s from %s", b.Data, b.SHA256, b.Origin)
	}
	auth, _ := srv.lastAuth.Load().(string)
	if !strings.Contains(auth, "Credential=AKIDTEST/") || !strings.Contains(auth, "/eu-west-1/s3/") {
		t.Fatalf("request not signed with the env credentials and region: %q", auth)
	}
}

func TestS3Errors(t *testing.T) {
	srv := newFakeS3(t, "esper-artifacts", map[string][]byte{
		"kernels/big": make([]byte, 100),
		"kernels/ok":  []byte("ok"),
	})
	s, err := NewS3(S3Config{Endpoint: srv.URL, AccessKeyID: "a", SecretAccessKey: "b", MaxBytes: 64, MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ref     string
		wantErr error
	}{
		{"s3://esper-artifacts/kernels/missing", ErrNotFound},
		{"s3://no-such-bucket/kernels/ok", ErrNotFound},
		{"s3://esper-artifacts/kernels/big", ErrTooLarge},
		{"s3://esper-artifacts/kernels/../ok", ErrInvalidRef},
		{"https://h/k", ErrUnsupportedScheme},
	}
	for _, tt := range tests {
		b, err := s.Fetch(context.Background(), tt.ref)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("Fetch(%q) = %d bytes, %v; want %v", tt.ref, len(b.Data), err, tt.wantErr)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Fetch(ctx, "s3://esper-artifacts/kernels/ok"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled fetch: %v", err)
	}
}

func TestS3ConfigFromEnvPrecedence(t *testing.T) {
	tests := []struct {
		name         string
		vars         map[string]string
		endpoint     string
		region       string
		token        string
		wantHost     string
		wantSecure   bool
		wantCustom   bool
		wantParseErr bool
	}{
		{name: "nothing set is Amazon S3", wantHost: "s3.amazonaws.com", wantSecure: true},
		{name: "service-specific AWS endpoint wins",
			vars:     map[string]string{"AWS_ENDPOINT_URL_S3": "https://s3.internal:8443", "AWS_ENDPOINT_URL": "http://x:1", "S3_ENDPOINT_URL": "http://minio:9000"},
			wantHost: "s3.internal:8443", wantSecure: true, wantCustom: true},
		{name: "global AWS endpoint before Esper's",
			vars:     map[string]string{"AWS_ENDPOINT_URL": "http://x:1", "S3_ENDPOINT_URL": "http://minio:9000"},
			wantHost: "x:1", wantCustom: true},
		{name: "Esper's S3_ENDPOINT_URL, plain http",
			vars:   map[string]string{"S3_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "us-west-2", "AWS_SESSION_TOKEN": "tok"},
			region: "us-west-2", token: "tok", wantHost: "minio:9000", wantCustom: true},
		{name: "AWS_REGION before AWS_DEFAULT_REGION",
			vars:   map[string]string{"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "us-west-2"},
			region: "eu-central-1", wantHost: "s3.amazonaws.com", wantSecure: true},
		{name: "endpoint with a path is refused",
			vars:         map[string]string{"S3_ENDPOINT_URL": "http://minio:9000/bucket"},
			wantParseErr: true},
		{name: "endpoint with another scheme is refused",
			vars:         map[string]string{"S3_ENDPOINT_URL": "ftp://minio"},
			wantParseErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := S3ConfigFromEnv(env(tt.vars))
			if cfg.Region != tt.region || cfg.SessionToken != tt.token {
				t.Errorf("region %q token %q, want %q %q", cfg.Region, cfg.SessionToken, tt.region, tt.token)
			}
			host, secure, custom, err := parseEndpoint(cfg.Endpoint)
			if tt.wantParseErr {
				if err == nil {
					t.Fatalf("endpoint %q accepted", cfg.Endpoint)
				}
				if _, err := NewS3(cfg); err == nil {
					t.Fatal("NewS3 accepted the bad endpoint")
				}
				return
			}
			if err != nil || host != tt.wantHost || secure != tt.wantSecure || custom != tt.wantCustom {
				t.Fatalf("parseEndpoint(%q) = %q secure=%v custom=%v %v; want %q %v %v",
					cfg.Endpoint, host, secure, custom, err, tt.wantHost, tt.wantSecure, tt.wantCustom)
			}
		})
	}
}

func TestNewS3RefusesKeyWithoutSecret(t *testing.T) {
	if _, err := NewS3(S3Config{AccessKeyID: "a"}); err == nil || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Fatalf("err = %v", err)
	}
}

// Credentials: the AWS_* pair, else the S3_ACCESS_KEY/S3_SECRET_KEY pair
// Esper's compose files pass; the AWS_* pair wins; CredentialsFrom names
// the variables read.
func TestS3ConfigFromEnvCredentials(t *testing.T) {
	for _, c := range []struct {
		name             string
		vars             map[string]string
		id, secret, from string
	}{
		{"none", nil, "", "", ""},
		{"AWS", map[string]string{"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "AS"}, "AK", "AS", "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"},
		{"Esper's", map[string]string{"S3_ACCESS_KEY": "esper", "S3_SECRET_KEY": "esper-secret"}, "esper", "esper-secret", "S3_ACCESS_KEY/S3_SECRET_KEY"},
		{"both: AWS wins", map[string]string{"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "AS", "S3_ACCESS_KEY": "esper", "S3_SECRET_KEY": "x"},
			"AK", "AS", "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"},
		{"pairs are not mixed", map[string]string{"AWS_ACCESS_KEY_ID": "AK", "S3_SECRET_KEY": "x"}, "AK", "", "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"},
	} {
		cfg := S3ConfigFromEnv(env(c.vars))
		if cfg.AccessKeyID != c.id || cfg.SecretAccessKey != c.secret || cfg.CredentialsFrom != c.from {
			t.Errorf("%s: %q %q from %q, want %q %q from %q", c.name, cfg.AccessKeyID, cfg.SecretAccessKey, cfg.CredentialsFrom, c.id, c.secret, c.from)
		}
	}
	_, err := NewS3(S3ConfigFromEnv(env(map[string]string{"S3_ACCESS_KEY": "esper"})))
	if err == nil || err.Error() != "s3: S3_ACCESS_KEY is set but S3_SECRET_KEY is not" {
		t.Errorf("Esper's key without its secret: %v", err)
	}
}

// With only Esper's compose variables (S3_ENDPOINT_URL, S3_ACCESS_KEY,
// S3_SECRET_KEY) the requests are signed with them, not anonymous.
func TestS3SignsWithEspersVariables(t *testing.T) {
	srv := newFakeS3(t, "esper-artifacts", map[string][]byte{"kernels/k1/kernel.safetensors": []byte("k")})
	s, err := NewS3(S3ConfigFromEnv(env(map[string]string{"S3_ENDPOINT_URL": srv.URL, "S3_ACCESS_KEY": "esper", "S3_SECRET_KEY": "esper-secret"})))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(context.Background(), "s3://esper-artifacts/kernels/k1/kernel.safetensors"); err != nil {
		t.Fatal(err)
	}
	if auth, _ := srv.lastAuth.Load().(string); !strings.Contains(auth, "Credential=esper/") {
		t.Fatalf("request not signed with S3_ACCESS_KEY: %q", auth)
	}
}
