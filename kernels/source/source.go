// Package source fetches the bytes of kernel artifacts from where a
// CompiledKernel's binary_ref points: a path or file:// URL under a
// configured kernel root, an http(s):// URL, or an s3://bucket/key object.
//
// Fetching is the host's real attack surface (an attacker who can write a
// command chooses the reference), so every source caps the bytes it reads,
// hashes them while streaming, and refuses what it was not configured to
// accept: a [Router] checks each reference against an [AllowList] of schemes,
// hosts, buckets and prefixes; [File] stays inside its root through
// os.OpenRoot; [HTTP] checks the address it actually dials, after DNS, and
// refuses loopback, link-local and cloud metadata addresses unless told
// otherwise. Nothing here builds a local path from a remote name.
package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/esper/kasmina-host/kernels"
)

// DefaultMaxBytes is the size cap used when a source's MaxBytes is zero.
// Kernels for the CPU path are small; a larger one is almost certainly not a
// kernel.
const DefaultMaxBytes = 256 << 20

// Sentinel errors callers branch on. Errors returned by this package wrap one
// of them where one applies, with the reference and the detail in the message.
var (
	// ErrInvalidRef: the reference cannot be parsed or is malformed.
	ErrInvalidRef = errors.New("invalid kernel reference")
	// ErrUnsupportedScheme: the reference's scheme has no source.
	ErrUnsupportedScheme = errors.New("unsupported kernel reference scheme")
	// ErrNotAllowed: the reference, or the address it resolves to, is refused by policy.
	ErrNotAllowed = errors.New("kernel reference not allowed")
	// ErrNotFound: the artifact does not exist at the reference.
	ErrNotFound = errors.New("kernel artifact not found")
	// ErrTooLarge: the artifact is larger than the configured cap.
	ErrTooLarge = errors.New("kernel artifact too large")
	// ErrInvalidChecksum: the expected checksum given with a reference is
	// not a SHA-256 (the document naming the artifact is wrong, not the
	// artifact).
	ErrInvalidChecksum = errors.New("invalid expected checksum")
)

// A fetched artifact whose SHA-256 differs from the expected one is
// refused with kernels.ErrChecksumMismatch, the loader's own: one error
// for one cause, wherever the checksum is compared.

// Blob is a fetched artifact.
type Blob struct {
	// Data holds the artifact's bytes, at most the source's cap.
	Data []byte
	// SHA256 is the lowercase hex SHA-256 of Data, computed while reading.
	SHA256 string
	// Size is len(Data).
	Size int64
	// Origin says where the bytes came from, for messages: the file's path
	// inside the root as a file:// URL, the final URL after redirects (its
	// credentials redacted, see Redact), or s3://bucket/key.
	Origin string
}

// Source fetches the artifact a reference names.
type Source interface {
	Fetch(ctx context.Context, ref string) (Blob, error)
}

// FetchVerified fetches ref from src and, when wantSHA256 is not empty,
// checks the bytes against it (lowercase or uppercase hex). A difference is
// an error wrapping kernels.ErrChecksumMismatch that names both hashes; the bytes are
// not returned.
func FetchVerified(ctx context.Context, src Source, ref, wantSHA256 string) (Blob, error) {
	want, err := normalizeSHA256(wantSHA256)
	if err != nil {
		return Blob{}, fmt.Errorf("%w: %s: %w", ErrInvalidChecksum, Redact(ref), err)
	}
	b, err := src.Fetch(ctx, ref)
	if err != nil {
		return Blob{}, err
	}
	if want != "" && b.SHA256 != want {
		return Blob{}, fmt.Errorf("%w: %s: expected sha256 %s, got %s (%d bytes from %s)",
			kernels.ErrChecksumMismatch, Redact(ref), want, b.SHA256, b.Size, Redact(b.Origin))
	}
	return b, nil
}

func normalizeSHA256(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("expected checksum %q is not a SHA-256 (64 hex digits)", s)
	}
	return hex.EncodeToString(b), nil
}

// readCapped reads r to the end, hashing as it goes. declared is the size the
// transport announced (-1 if unknown); it is checked against max before
// reading anything, and then the stream itself is held to max so that a lying
// or absent length cannot make us read more. Exceeding max is an error,
// never a silent truncation.
func readCapped(r io.Reader, declared, max int64, what string) ([]byte, string, error) {
	if declared > max {
		return nil, "", fmt.Errorf("%w: %s is %d bytes, the cap is %d", ErrTooLarge, what, declared, max)
	}
	var buf bytes.Buffer
	if declared > 0 {
		buf.Grow(int(declared))
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(&buf, h), io.LimitReader(r, max+1))
	if err != nil {
		return nil, "", fmt.Errorf("reading %s: %w", what, err)
	}
	if n > max {
		return nil, "", fmt.Errorf("%w: %s is more than %d bytes, the cap", ErrTooLarge, what, max)
	}
	if declared >= 0 && n != declared {
		return nil, "", fmt.Errorf("reading %s: got %d bytes, %d were announced", what, n, declared)
	}
	return buf.Bytes(), hex.EncodeToString(h.Sum(nil)), nil
}

func capOrDefault(n int64) int64 {
	if n <= 0 {
		return DefaultMaxBytes
	}
	return n
}
