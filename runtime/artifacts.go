package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime/failure"
)

// Fetcher fetches an artifact from a reference (a path, file://,
// http(s):// or s3:// URL), verifying its SHA-256 when one is given. The
// Blob's SHA256 is the digest of its bytes, computed while they are read:
// the host uses it for the checksum, the cache of parsed kernels and the
// state store, and hashes the bytes itself only when it is empty.
type Fetcher interface {
	Fetch(ctx context.Context, ref, sha256 string) (source.Blob, error)
}

// Resolver turns a kernel id into the CompiledKernel document that points
// at its artifact (Urza's GET /api/v1/kernels/{id}).
type Resolver interface {
	Resolve(ctx context.Context, id string) (Resolved, error)
}

// Resolved is what a Resolver knows of a kernel id.
type Resolved struct {
	// Compiled points at the artifact (binary_ref).
	Compiled *contracts.CompiledKernel
	// MetadataFrom says whether Compiled's metadata describes the kernel
	// (a CompiledKernel record) or only carries its ids and checksum, the
	// artifact's embedded metadata describing it (Urza's flat record).
	MetadataFrom MetadataSource
	// Status is the library's status of the kernel ("" when it gives
	// none), for example Urza's "validated".
	Status string
}

// redactRef names an artifact reference without its credentials, for
// views, logs and messages.
func redactRef(ref string) string { return source.Redact(ref) }

// isReference reports whether ref names an artifact directly (a URL or a
// path) rather than a kernel id to resolve.
func isReference(ref string) bool {
	if strings.Contains(ref, "://") || strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, "./") ||
		strings.HasSuffix(ref, ".safetensors") {
		return true
	}
	return false
}

// errUrzaNotFound is wrapped when Urza does not know the kernel id.
var errUrzaNotFound = errors.New("kernel not found in Urza")

// Resolve's errors carry a failure class: NotFound for an id Urza does not
// know (404), BadInput for one it refuses (another 4xx), Malformed for a
// record that cannot be read, Unavailable for a network error or a 5xx
// (after the retries), Timeout or Canceled when ctx ends.

// Urza resolves kernel ids through Urza's HTTP API.
type Urza struct {
	// BaseURL is Urza's address (URZA_URL, default http://localhost:8000).
	BaseURL string
	Client  *http.Client
	// Retries is how many times a failed request (network error or 5xx)
	// is retried, with exponential backoff from 100 ms.
	Retries int
}

// DefaultUrzaURL is where Esper's Urza listens by default.
const DefaultUrzaURL = "http://localhost:8000"

// urzaRecord covers both shapes the Python services return: a document
// with metadata and binary_ref, and Urza's flat kernel record.
type urzaRecord struct {
	// CompiledKernel shape.
	KernelID  string          `json:"kernel_id"`
	BinaryRef string          `json:"binary_ref"`
	Metadata  json.RawMessage `json:"metadata"`
	// Urza's flat record.
	ID              string `json:"id"`
	BlueprintID     string `json:"blueprint_id"`
	Status          string `json:"status"`
	KernelBinaryRef string `json:"kernel_binary_ref"`
	Checksum        string `json:"checksum"`
	// ValidationReport is free-form; a SHA-256 in it is verified
	// (reportChecksum).
	ValidationReport json.RawMessage `json:"validation_report"`
}

// Resolve fetches the kernel's record and returns its CompiledKernel.
// Urza's flat record carries no KernelMetadata: the document then holds
// only the ids, the checksum and the binary reference, and MetadataFrom is
// FromArtifact: the artifact's embedded metadata describes the kernel.
func (u *Urza) Resolve(ctx context.Context, id string) (Resolved, error) {
	base := u.BaseURL
	if base == "" {
		base = DefaultUrzaURL
	}
	client := u.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	endpoint := strings.TrimRight(base, "/") + "/api/v1/kernels/" + url.PathEscape(id)
	var body []byte
	var err error
	for attempt := 0; ; attempt++ {
		body, err = u.get(ctx, client, endpoint)
		if err == nil || failure.ClassOf(err).Permanent() || attempt >= u.Retries {
			break
		}
		select {
		case <-ctx.Done():
			return Resolved{}, classify(fmt.Errorf("resolving kernel id %q through Urza: %w", id, ctx.Err()), failure.Canceled)
		case <-time.After(time.Duration(100<<attempt) * time.Millisecond):
		}
	}
	if err != nil {
		return Resolved{}, err
	}
	return parseUrzaRecord(id, body)
}

func (u *Urza) get(ctx context.Context, client *http.Client, endpoint string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil, failure.Errorf(failure.BadInput, "Urza request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, classify(fmt.Errorf("asking Urza: %w", err), failure.Unavailable)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, classify(fmt.Errorf("reading Urza's answer to GET %s: %w", endpoint, err), failure.Unavailable)
	}
	switch code := resp.StatusCode; {
	case code == http.StatusNotFound:
		return nil, failure.Errorf(failure.NotFound, "%w: GET %s: 404", errUrzaNotFound, endpoint)
	case code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
		return nil, failure.Errorf(failure.BadInput, "Urza refused GET %s: %s", endpoint, resp.Status)
	case code != http.StatusOK:
		return nil, failure.Errorf(failure.Unavailable, "Urza answered GET %s: %s", endpoint, resp.Status)
	}
	return body, nil
}

func parseUrzaRecord(id string, body []byte) (Resolved, error) {
	var rec urzaRecord
	if err := json.Unmarshal(body, &rec); err != nil {
		return Resolved{}, failure.Errorf(failure.Malformed, "Urza's record of kernel %q is not JSON: %w", id, err)
	}
	if len(rec.Metadata) > 0 && string(rec.Metadata) != "null" {
		ck, err := contracts.DecodeCompiledKernel(body)
		if err != nil {
			return Resolved{}, failure.Errorf(failure.Malformed, "Urza's record of kernel %q: %w", id, err)
		}
		if ck.Metadata.Checksum == nil {
			if c := reportChecksum(rec.ValidationReport); c != "" {
				ck.Metadata.Checksum = &c
			}
		}
		return Resolved{Compiled: &ck, Status: rec.Status}, nil
	}
	ref := rec.KernelBinaryRef
	if ref == "" {
		ref = rec.BinaryRef
	}
	if ref == "" {
		return Resolved{}, failure.Errorf(failure.Malformed, "Urza's record of kernel %q has neither binary_ref nor kernel_binary_ref", id)
	}
	kid := rec.ID
	if kid == "" {
		kid = id
	}
	md := contracts.NewKernelMetadata(kid, rec.BlueprintID, kid)
	if c := rec.Checksum; c != "" {
		md.Checksum = &c
	} else if c := reportChecksum(rec.ValidationReport); c != "" {
		md.Checksum = &c
	}
	ck := contracts.NewCompiledKernel(rec.BlueprintID, ref, md)
	ck.KernelID = kid
	// The flat record has no metadata: the artifact's embedded metadata
	// describes the kernel.
	return Resolved{Compiled: &ck, MetadataFrom: FromArtifact, Status: rec.Status}, nil
}
