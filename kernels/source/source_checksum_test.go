package source

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// An expected checksum that is not a SHA-256 is the document's fault: the
// error says so, names the reference, and is never taken for a fetch
// failure (it used to be a plain error, retried on the bus and answered
// 503 over HTTP).
func TestFetchVerifiedRefusesAChecksumThatIsNotASHA256(t *testing.T) {
	fetched := false
	src := sourceFunc(func(context.Context, string) (Blob, error) { fetched = true; return Blob{}, nil })
	_, err := FetchVerified(context.Background(), src, "s3://esper-artifacts/k.safetensors?X-Amz-Signature=secret", "not-a-sha256")
	if !errors.Is(err, ErrInvalidChecksum) {
		t.Fatalf("error %v does not wrap ErrInvalidChecksum", err)
	}
	for _, want := range []string{"s3://esper-artifacts/k.safetensors", `"not-a-sha256"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("error %q shows the presigned signature", err)
	}
	if fetched {
		t.Error("the artifact was fetched although its expected checksum is malformed")
	}
}

type sourceFunc func(context.Context, string) (Blob, error)

func (f sourceFunc) Fetch(ctx context.Context, ref string) (Blob, error) { return f(ctx, ref) }
