package oip

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// Extensions reported by GET /v2.
var extensions = []string{"binary_tensor_data", "model_repository", "statistics"}

func (s *server) live(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, map[string]bool{"live": true})
}

func (s *server) ready(w http.ResponseWriter, r *http.Request) error {
	if ok, reason := s.backend.Ready(); !ok {
		if reason == "" {
			reason = "the server is not ready"
		}
		return fmt.Errorf("%w: %s", ErrNotReady, reason)
	}
	return writeJSON(w, map[string]bool{"ready": true})
}

type serverMetadata struct {
	Name       string   `json:"name"`
	Version    string   `json:"version"`
	Extensions []string `json:"extensions"`
}

func (s *server) serverMetadata(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, serverMetadata{Name: s.opts.ServerName, Version: s.opts.Version, Extensions: extensions})
}

type tensorMetadata struct {
	Name     string `json:"name"`
	Datatype string `json:"datatype"`
	Shape    []int  `json:"shape"`
}

type modelMetadata struct {
	Name       string           `json:"name"`
	Versions   []string         `json:"versions"`
	Platform   string           `json:"platform"`
	Inputs     []tensorMetadata `json:"inputs"`
	Outputs    []tensorMetadata `json:"outputs"`
	Parameters modelParameters  `json:"parameters"`
}

type modelParameters struct {
	State          string `json:"state"`
	Reason         string `json:"reason,omitempty"`
	Placement      string `json:"placement"`
	Executor       string `json:"executor"`
	Degraded       bool   `json:"degraded"`
	DegradedReason string `json:"degraded_reason,omitempty"`
	MaxBatch       int    `json:"max_batch,omitempty"`
}

// lookup finds the model named in the path and checks the version, if the
// path has one.
func (s *server) lookup(r *http.Request) (ModelInfo, error) {
	name := r.PathValue("name")
	m, ok := s.backend.Model(name)
	if !ok {
		return m, fmt.Errorf("%w: no model named %q", ErrModelNotFound, name)
	}
	if v := r.PathValue("version"); v != "" && v != versionOf(m) {
		return m, fmt.Errorf("%w: model %q has no version %q (it has %q)", ErrModelNotFound, name, v, versionOf(m))
	}
	return m, nil
}

func versionOf(m ModelInfo) string {
	if m.Version == "" {
		return "1"
	}
	return m.Version
}

func (s *server) modelMetadata(w http.ResponseWriter, r *http.Request) error {
	m, err := s.lookup(r)
	if err != nil {
		return err
	}
	md := modelMetadata{
		Name:     m.Name,
		Versions: []string{versionOf(m)},
		Platform: "kasmina",
		Inputs:   []tensorMetadata{{Name: InputName, Datatype: "FP32", Shape: shapeOrUnknown(m.InputShape)}},
		Outputs:  []tensorMetadata{{Name: OutputName, Datatype: "FP32", Shape: shapeOrUnknown(m.OutputShape)}},
		Parameters: modelParameters{
			State: m.State, Reason: m.Reason, Placement: m.Placement, Executor: m.Executor,
			Degraded: m.Degraded, DegradedReason: m.DegradedReason, MaxBatch: m.MaxBatch,
		},
	}
	return writeJSON(w, md)
}

// shapeOrUnknown prefixes the batch dimension; an unknown per-sample shape
// is reported as [-1, -1].
func shapeOrUnknown(s []int) []int {
	if s == nil {
		return []int{-1, -1}
	}
	return withBatch(s)
}

func (s *server) modelReady(w http.ResponseWriter, r *http.Request) error {
	m, err := s.lookup(r)
	if err != nil {
		return err
	}
	if m.State != StateReady {
		reason := m.Reason
		if reason == "" {
			reason = "state " + m.State
		}
		return fmt.Errorf("%w: model %q is %s: %s", ErrNotReady, m.Name, m.State, reason)
	}
	return writeJSON(w, map[string]any{"name": m.Name, "ready": true})
}

func (s *server) modelStats(w http.ResponseWriter, r *http.Request) error {
	sb, ok := s.backend.(StatsBackend)
	if !ok {
		return fmt.Errorf("%w: model statistics are not available on this host", ErrUnsupported)
	}
	m, err := s.lookup(r)
	if err != nil {
		return err
	}
	st, ok := sb.ModelStats(m.Name)
	if !ok {
		return fmt.Errorf("%w: no statistics for model %q", ErrModelNotFound, m.Name)
	}
	return writeJSON(w, st)
}

// bufPool recycles request and response buffers of the inference route.
var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// maxPooled keeps very large buffers out of the pool.
const maxPooled = 4 << 20

func (s *server) infer(w http.ResponseWriter, r *http.Request) error {
	m, err := s.lookup(r)
	if err != nil {
		return err
	}
	headerLen := int64(-1)
	if h := r.Header.Get("Inference-Header-Content-Length"); h != "" {
		v, perr := strconv.ParseInt(strings.TrimSpace(h), 10, 64)
		if perr != nil || v < 0 {
			return fmt.Errorf("%w: Inference-Header-Content-Length %q is not a byte count", ErrBadInput, h)
		}
		headerLen = v
	}
	bp := bufPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooled {
			*bp = (*bp)[:0]
			bufPool.Put(bp)
		}
	}()
	body, err := s.readBody(w, r, (*bp)[:0])
	*bp = body
	if err != nil {
		return err
	}
	req, err := decodeInferRequest(body, headerLen, m, limits{maxElements: s.opts.MaxElements, maxJSONDepth: s.opts.MaxJSONDepth})
	if err != nil {
		return err
	}
	out, exec, err := s.backend.Infer(r.Context(), m.Name, req.Input)
	if err != nil {
		return fmt.Errorf("model %q: %w", m.Name, err)
	}
	resp := inferResponse{ModelName: m.Name, ModelVersion: versionOf(m), ID: req.ID, Exec: exec, Output: out, Binary: req.BinaryOutput}
	// The request body is no longer needed: its buffer takes the answer.
	b, headerSize, err := encodeInferResponse(body[:0], &resp)
	*bp = b
	if err != nil {
		return fmt.Errorf("model %q: %w", m.Name, err)
	}
	h := w.Header()
	if headerSize >= 0 {
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Inference-Header-Content-Length", strconv.Itoa(headerSize))
	} else {
		h.Set("Content-Type", "application/json")
	}
	h.Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
	return nil
}

// readBody reads the whole request body into buf, capped at MaxBodyBytes
// (a larger body is a *http.MaxBytesError, answered with 413).
func (s *server) readBody(w http.ResponseWriter, r *http.Request, buf []byte) ([]byte, error) {
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return buf, fmt.Errorf("%w: Content-Encoding %q; send the body uncompressed", ErrUnsupported, ce)
	}
	limit := s.opts.MaxBodyBytes
	if r.ContentLength > limit {
		return buf, &http.MaxBytesError{Limit: limit}
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	if cl := r.ContentLength; cl > 0 {
		// net/http never yields more than Content-Length bytes, so one
		// exact read is the whole body.
		if int64(cap(buf)) < cl {
			buf = make([]byte, cl)
		}
		buf = buf[:cl]
		if _, err := io.ReadFull(body, buf); err != nil {
			return buf[:0], fmt.Errorf("%w: reading the request body: %v", ErrBadInput, err)
		}
		return buf, nil
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return buf, err
			}
			return buf, fmt.Errorf("%w: reading the request body: %v", ErrBadInput, err)
		}
	}
}

type indexRequest struct {
	Ready bool `json:"ready"`
}

type indexEntry struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	State   string `json:"state"`
	Reason  string `json:"reason"`
}

func (s *server) repositoryIndex(w http.ResponseWriter, r *http.Request) error {
	var req indexRequest
	if err := s.readJSONBody(w, r, &req); err != nil {
		return err
	}
	models := s.backend.Models()
	entries := make([]indexEntry, 0, len(models))
	for _, m := range models {
		if req.Ready && m.State != StateReady {
			continue
		}
		entries = append(entries, indexEntry{Name: m.Name, Version: versionOf(m), State: m.State, Reason: m.Reason})
	}
	return writeJSON(w, entries)
}

// repositoryRequest is the body of load and unload; Triton's client sends
// parameters that this host does not use, except the two that would
// replace the model's files, which are refused.
type repositoryRequest struct {
	Parameters map[string]json.RawMessage `json:"parameters"`
}

func (s *server) repositoryParams(w http.ResponseWriter, r *http.Request) error {
	var req repositoryRequest
	if err := s.readJSONBody(w, r, &req); err != nil {
		return err
	}
	for k := range req.Parameters {
		if k == "config" || strings.HasPrefix(k, "file:") {
			return fmt.Errorf("%w: parameters.%s: loading a model from a supplied configuration or files; use POST /v1/kernels with a CompiledKernel document", ErrUnsupported, k)
		}
	}
	return nil
}

func (s *server) loadModel(w http.ResponseWriter, r *http.Request) error {
	if err := s.repositoryParams(w, r); err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := s.backend.LoadModel(r.Context(), name); err != nil {
		return fmt.Errorf("loading model %q: %w", name, err)
	}
	return writeJSON(w, map[string]string{"name": name, "state": StateReady})
}

func (s *server) unloadModel(w http.ResponseWriter, r *http.Request) error {
	if err := s.repositoryParams(w, r); err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := s.backend.UnloadModel(r.Context(), name); err != nil {
		return fmt.Errorf("unloading model %q: %w", name, err)
	}
	return writeJSON(w, map[string]string{"name": name, "state": StateUnavailable})
}

// readJSONBody decodes an optional JSON body into v; an empty body leaves v
// as it is.
func (s *server) readJSONBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := s.readRawJSON(w, r)
	if err != nil || body == nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: malformed JSON body: %v", ErrBadInput, err)
	}
	return nil
}

// readRawJSON reads a body that must be JSON (nil when empty), checking
// its size, depth and syntax.
func (s *server) readRawJSON(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := s.readBody(w, r, nil)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	if err := checkJSONDepth(body, s.opts.MaxJSONDepth); err != nil {
		return nil, err
	}
	if !json.Valid(body) {
		var probe any
		err := json.Unmarshal(body, &probe)
		return nil, fmt.Errorf("%w: malformed JSON body: %v", ErrBadInput, err)
	}
	return body, nil
}

// view adapts a HostViews function to a route; nil answers 501.
func (s *server) view(fn func(ctx context.Context) (any, error)) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if fn == nil {
			return errNoView(r)
		}
		v, err := fn(r.Context())
		if err != nil {
			return err
		}
		return writeJSON(w, v)
	}
}

func errNoView(r *http.Request) error {
	return fmt.Errorf("%w: %s %s is not available on this host", ErrUnsupported, r.Method, r.URL.Path)
}

func (s *server) loadKernel(w http.ResponseWriter, r *http.Request) error {
	if s.host.LoadKernel == nil {
		return errNoView(r)
	}
	doc, err := s.readRawJSON(w, r)
	if err != nil {
		return err
	}
	if doc == nil {
		return fmt.Errorf("%w: the body must be a CompiledKernel JSON document", ErrBadInput)
	}
	v, err := s.host.LoadKernel(r.Context(), doc)
	if err != nil {
		return fmt.Errorf("loading kernel: %w", err)
	}
	writeJSONStatus(w, http.StatusCreated, v)
	return nil
}

func (s *server) kernel(w http.ResponseWriter, r *http.Request) error {
	if s.host.Kernel == nil {
		return errNoView(r)
	}
	v, err := s.host.Kernel(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, v)
}

func (s *server) unloadKernel(w http.ResponseWriter, r *http.Request) error {
	if s.host.UnloadKernel == nil {
		return errNoView(r)
	}
	id := r.PathValue("id")
	if err := s.host.UnloadKernel(r.Context(), id); err != nil {
		return fmt.Errorf("unloading kernel %q: %w", id, err)
	}
	return writeJSON(w, map[string]string{"kernel_id": id, "state": "unloaded"})
}

func (s *server) planPlacement(w http.ResponseWriter, r *http.Request) error {
	if s.host.PlanPlacement == nil {
		return errNoView(r)
	}
	req, err := s.readRawJSON(w, r)
	if err != nil {
		return err
	}
	if req == nil {
		req = []byte("{}")
	}
	v, err := s.host.PlanPlacement(r.Context(), req)
	if err != nil {
		return fmt.Errorf("planning placement: %w", err)
	}
	return writeJSON(w, v)
}
