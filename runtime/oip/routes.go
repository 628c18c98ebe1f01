package oip

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
)

// extensions reported by GET /v2.
func (s *server) extensions() []string {
	ext := []string{"binary_tensor_data", "model_repository", "statistics"}
	if s.opts.SharedMemory != nil {
		ext = append(ext, "system_shared_memory")
	}
	return ext
}

func (s *server) live(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, map[string]bool{"live": true})
}

func (s *server) ready(w http.ResponseWriter, r *http.Request) error {
	if ok, reason := s.backend.Ready(); !ok {
		if reason == "" {
			reason = "the server is not ready"
		}
		return failure.Errorf(failure.Unavailable, "%s", reason)
	}
	return writeJSON(w, map[string]bool{"ready": true})
}

type serverMetadata struct {
	Name       string   `json:"name"`
	Version    string   `json:"version"`
	Extensions []string `json:"extensions"`
}

func (s *server) serverMetadata(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, serverMetadata{Name: s.opts.ServerName, Version: s.opts.Version, Extensions: s.extensions()})
}

type tensorMetadata struct {
	Name     string `json:"name"`
	Datatype string `json:"datatype"`
	Shape    []int  `json:"shape"`
	// Optional marks a layer's inputs that a request may leave out.
	Optional bool `json:"optional,omitempty"`
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
		return m, failure.Errorf(failure.NotFound, "no model named %q", name)
	}
	if v := r.PathValue("version"); v != "" && v != versionOf(m) {
		return m, failure.Errorf(failure.NotFound, "model %q has no version %q (it has %q)", name, v, versionOf(m))
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
	if m.Layer {
		md.Platform = "kasmina-layer"
		md.Inputs, md.Outputs = nil, nil
		for _, t := range LayerTensors(m) {
			tm := tensorMetadata{Name: t.Name, Datatype: "FP32", Shape: shapeOrUnknown(t.Shape), Optional: t.Optional}
			if t.Output {
				md.Outputs = append(md.Outputs, tm)
			} else {
				md.Inputs = append(md.Inputs, tm)
			}
		}
	}
	return writeJSON(w, md)
}

// LayerTensor is one tensor of a layer model, as its metadata lists it.
type LayerTensor struct {
	Name string
	// Shape is the per-sample shape (nil while no seed holds a kernel).
	Shape []int
	// Output says it is an output; Optional that a request may leave the
	// input out.
	Output, Optional bool
}

// LayerTensors lists a layer model's inputs (input; default and
// grad_output, optional) and outputs (output, grad_input, grad_default),
// for both front ends' model metadata.
func LayerTensors(m ModelInfo) []LayerTensor {
	return []LayerTensor{
		{Name: InputName, Shape: m.InputShape},
		{Name: DefaultName, Shape: m.OutputShape, Optional: true},
		{Name: GradOutputName, Shape: m.OutputShape, Optional: true},
		{Name: OutputName, Shape: m.OutputShape, Output: true},
		{Name: GradInputName, Shape: m.InputShape, Output: true},
		{Name: GradDefaultName, Shape: m.OutputShape, Output: true},
	}
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
		return failure.Errorf(failure.Unavailable, "model %q is %s: %s", m.Name, m.State, reason)
	}
	return writeJSON(w, map[string]any{"name": m.Name, "ready": true})
}

func (s *server) modelStats(w http.ResponseWriter, r *http.Request) error {
	sb, ok := s.backend.(StatsBackend)
	if !ok {
		return failure.Errorf(failure.Unsupported, "model statistics are not available on this host")
	}
	m, err := s.lookup(r)
	if err != nil {
		return err
	}
	st, ok := sb.ModelStats(m.Name)
	if !ok {
		return failure.Errorf(failure.NotFound, "no statistics for model %q", m.Name)
	}
	return writeJSON(w, st)
}

func (s *server) infer(w http.ResponseWriter, r *http.Request) error {
	m, err := s.lookup(r)
	if err != nil {
		return err
	}
	headerLen := int64(-1)
	if h := r.Header.Get("Inference-Header-Content-Length"); h != "" {
		v, perr := strconv.ParseInt(strings.TrimSpace(h), 10, 64)
		if perr != nil || v < 0 {
			return failure.Errorf(failure.BadInput, "Inference-Header-Content-Length %q is not a byte count", h)
		}
		headerLen = v
	}
	body, err := s.readBody(w, r, s.opts.MaxBodyBytes)
	defer body.release()
	if err != nil {
		return err
	}
	req, err := decodeInferRequest(body.buf, headerLen, m, limits{maxElements: s.opts.MaxElements, maxJSONDepth: s.opts.MaxJSONDepth})
	defer req.release() // decode and holdTensors may give inputs pooled buffers
	if err != nil {
		return err
	}
	var tensors SharedTensors
	defer tensors.Release()
	if err := s.holdTensors(&tensors, &req, m); err != nil {
		return err
	}
	var b []byte
	var headerSize int
	if m.Layer {
		b, headerSize, err = s.inferLayer(r.Context(), m, &req, &tensors, body.buf[:0])
		body.buf = b
		if err != nil {
			return err
		}
	} else {
		// The output is computed where the model declares its size: in its
		// region, or a pooled buffer copied into the answer or the region
		// before this returns.
		outBuf, err := tensors.OutputBuffer(roleOutput, outputElements(m, req.input().Tensor.Shape))
		if err != nil {
			return err
		}
		// The runtime's errors name the model; they are answered as they are.
		out, exec, err := tensors.Infer(r.Context(), s.backend, m, KernelRequest{Input: req.input().Tensor, Out: outBuf})
		if err != nil {
			return err
		}
		if err := tensors.WriteOutput(roleOutput, out.Data); err != nil {
			return err
		}
		resp := inferResponse{ModelName: m.Name, ModelVersion: versionOf(m), ID: req.ID, Exec: exec, Output: out,
			Binary: req.BinaryOutput[roleOutput], InSharedMemory: tensors.HasOutput(roleOutput)}
		// The request body is no longer needed: its buffer takes the answer
		// (released, and pooled when its size allows, with the body).
		b, headerSize, err = encodeInferResponse(body.buf[:0], &resp)
		body.buf = b
		if err != nil {
			return fmt.Errorf("model %q: encoding the answer: %w", m.Name, err)
		}
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

// inferLayer runs a decoded request on layer m, puts the outputs bound
// for shared memory in their regions (held in t), and appends its answer
// to dst (see encodeLayerResponse).
func (s *server) inferLayer(ctx context.Context, m ModelInfo, req *decodedRequest, t *SharedTensors, dst []byte) ([]byte, int, error) {
	lb, ok := s.backend.(LayerBackend)
	if !ok {
		return dst, 0, failure.Errorf(failure.Unsupported, "model %q is a layer, and this host does not serve layers", m.Name)
	}
	lr, want, err := req.layerRequest()
	if err != nil {
		return dst, 0, err
	}
	// A forward's output is computed into a pooled buffer when the layer
	// declares its size; the answer is encoded into dst before this
	// returns.
	if lr.Input.Data != nil {
		outBuf := wiretensor.GetFP32(outputElements(m, lr.Input.Shape))
		defer outBuf.Release()
		lr.Out = outBuf.Data
	}
	res, exec, err := lb.InferLayer(ctx, m, lr)
	if err != nil {
		return dst, 0, err
	}
	resp := layerResponse{ModelName: m.Name, ModelVersion: versionOf(m), ID: req.ID, Exec: exec, Result: &res,
		Want: want, Binary: req.BinaryOutput}
	for role, out := range res.tensors() {
		if !t.HasOutput(role) {
			continue
		}
		if out.Data == nil {
			continue // grad_default of a forward without default: absent, as in the body
		}
		if err := t.WriteOutput(role, out.Data); err != nil {
			return dst, 0, err
		}
		resp.InSharedMemory[role] = true
	}
	b, headerSize, err := encodeLayerResponse(dst, &resp)
	if err != nil {
		return b, 0, fmt.Errorf("layer %q: encoding the answer: %w", m.Name, err)
	}
	return b, headerSize, nil
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
			return failure.Errorf(failure.Unsupported, "parameters.%s: loading a model from a supplied configuration or files; use POST /v1/kernels with a CompiledKernel document", k)
		}
	}
	return nil
}

func (s *server) loadModel(w http.ResponseWriter, r *http.Request) error {
	if err := s.repositoryParams(w, r); err != nil {
		return err
	}
	name := r.PathValue("name")
	err := s.withLoadDeadline(r, "loading model "+strconv.Quote(name), func(ctx context.Context) error {
		return s.backend.LoadModel(ctx, name)
	})
	if err != nil {
		return err
	}
	return writeJSON(w, map[string]string{"name": name, "state": StateReady})
}

func (s *server) unloadModel(w http.ResponseWriter, r *http.Request) error {
	if err := s.repositoryParams(w, r); err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := s.backend.UnloadModel(r.Context(), name); err != nil {
		return err
	}
	return writeJSON(w, map[string]string{"name": name, "state": StateUnavailable})
}

// withLoadDeadline runs a load under Options.LoadTimeout, shorter than the
// server's write timeout so that the client always gets an answer: past
// it the load's context is cancelled (the runtime commits nothing after
// its context ends) and the answer is 504 with the reason.
func (s *server) withLoadDeadline(r *http.Request, what string, load func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.LoadTimeout)
	defer cancel()
	err := load(ctx)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && r.Context().Err() == nil {
		return failure.Errorf(failure.Timeout, "%s took longer than %s and was cancelled; nothing was loaded: %w", what, s.opts.LoadTimeout, err)
	}
	return err
}

// readJSONBody decodes an optional JSON body into v; an empty body leaves v
// as it is.
func (s *server) readJSONBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := s.readJSONDocument(w, r)
	defer body.release()
	if err != nil || len(body.buf) == 0 {
		return err
	}
	if err := json.Unmarshal(body.buf, v); err != nil {
		return failure.Errorf(failure.BadInput, "malformed JSON body: %v", err)
	}
	return nil
}

// readJSONDocument reads a body that must be a JSON document (empty
// buf when the body is blank), checking its size, depth and syntax. The
// caller releases it.
func (s *server) readJSONDocument(w http.ResponseWriter, r *http.Request) (body, error) {
	body, err := s.readBody(w, r, min(s.opts.MaxBodyBytes, maxDocumentBody))
	if err != nil {
		return body, err
	}
	if len(bytes.TrimSpace(body.buf)) == 0 {
		body.buf = body.buf[:0]
		return body, nil
	}
	if err := checkJSONDepth(body.buf, s.opts.MaxJSONDepth); err != nil {
		return body, err
	}
	if !json.Valid(body.buf) {
		var probe any
		err := json.Unmarshal(body.buf, &probe)
		return body, failure.Errorf(failure.BadInput, "malformed JSON body: %v", err)
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
	return failure.Errorf(failure.Unsupported, "%s %s is not available on this host", r.Method, r.URL.Path)
}

func (s *server) loadKernel(w http.ResponseWriter, r *http.Request) error {
	if s.host.LoadKernel == nil {
		return errNoView(r)
	}
	doc, err := s.readJSONDocument(w, r)
	defer doc.release()
	if err != nil {
		return err
	}
	if len(doc.buf) == 0 {
		return failure.Errorf(failure.BadInput, "the body must be a CompiledKernel JSON document")
	}
	var v any
	var created bool
	err = s.withLoadDeadline(r, "loading the kernel", func(ctx context.Context) error {
		var err error
		v, created, err = s.host.LoadKernel(ctx, doc.buf)
		return err
	})
	if err != nil {
		return err
	}
	code := http.StatusOK // the same kernel was loaded already: nothing changed
	if created {
		code = http.StatusCreated
	}
	writeJSONStatus(w, code, v)
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
		return err
	}
	return writeJSON(w, map[string]string{"kernel_id": id, "state": "unloaded"})
}

func (s *server) planPlacement(w http.ResponseWriter, r *http.Request) error {
	if s.host.PlanPlacement == nil {
		return errNoView(r)
	}
	req, err := s.readJSONDocument(w, r)
	defer req.release()
	if err != nil {
		return err
	}
	doc := req.buf
	if len(doc) == 0 {
		doc = []byte("{}")
	}
	v, err := s.host.PlanPlacement(r.Context(), doc)
	if err != nil {
		return err
	}
	return writeJSON(w, v)
}

// outputElements is the output's element count for a batch of shape's
// first dimension when the model declares its per-sample output shape and
// the count is one wiretensor pools, else 0 (the backend then allocates,
// after its own limits have judged the batch).
func outputElements(m ModelInfo, shape []int) int {
	if m.OutputShape == nil || len(shape) == 0 || shape[0] < 0 {
		return 0
	}
	n := shape[0]
	for _, d := range m.OutputShape {
		if d < 0 || (d > 0 && n > wiretensor.MaxPooledFP32/d) {
			return 0
		}
		n *= d
	}
	return n
}

func (s *server) layer(w http.ResponseWriter, r *http.Request) error {
	if s.host.Layer == nil {
		return errNoView(r)
	}
	v, err := s.host.Layer(r.Context(), r.PathValue("layer_name"))
	if err != nil {
		return err
	}
	return writeJSON(w, v)
}

func (s *server) declareLayer(w http.ResponseWriter, r *http.Request) error {
	if s.host.DeclareLayer == nil {
		return errNoView(r)
	}
	body, err := s.readJSONDocument(w, r)
	defer body.release()
	if err != nil {
		return err
	}
	doc := body.buf
	if len(doc) == 0 {
		doc = []byte("{}")
	}
	v, created, err := s.host.DeclareLayer(r.Context(), r.PathValue("layer_name"), doc)
	if err != nil {
		return err
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	writeJSONStatus(w, code, v)
	return nil
}

func (s *server) retireLayer(w http.ResponseWriter, r *http.Request) error {
	if s.host.RetireLayer == nil {
		return errNoView(r)
	}
	v, err := s.host.RetireLayer(r.Context(), r.PathValue("layer_name"))
	if err != nil {
		return err
	}
	return writeJSON(w, v)
}

// maxTraceID bounds the X-Trace-Id header.
const maxTraceID = 256

// seedBody is every member a seed-control body may have; each route
// takes one and refuses the others.
type seedBody struct {
	ArtifactID *string          `json:"artifact_id"`
	State      *string          `json:"state"`
	Alpha      *json.RawMessage `json:"alpha"`
}

// seedControl serves one seed-control route: the seed from the path, the
// member its action takes from the body, the trace id from X-Trace-Id.
func (s *server) seedControl(action SeedAction) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if s.host.SeedControl == nil {
			return errNoView(r)
		}
		req := SeedRequest{Action: action, Layer: r.PathValue("layer_name")}
		idx, err := strconv.Atoi(r.PathValue("seed_idx"))
		if err != nil || idx < 0 {
			return failure.Errorf(failure.BadInput, "seed_idx %q in the path is not a seed index (an integer ≥ 0)", r.PathValue("seed_idx"))
		}
		req.SeedIdx = idx
		if t := r.Header.Get("X-Trace-Id"); t != "" {
			if len(t) > maxTraceID || !utf8.ValidString(t) || strings.ContainsFunc(t, unicode.IsControl) {
				return failure.Errorf(failure.BadInput, "X-Trace-Id: want at most %d bytes of text without control characters", maxTraceID)
			}
			req.TraceID = t
		}
		body, err := s.readJSONDocument(w, r)
		defer body.release()
		if err != nil {
			return err
		}
		if err := decodeSeedBody(body.buf, &req); err != nil {
			return err
		}
		var v any
		run := func(ctx context.Context) error {
			var err error
			v, err = s.host.SeedControl(ctx, req)
			return err
		}
		if action == SeedLoad {
			err = s.withLoadDeadline(r, "loading "+strconv.Quote(req.ArtifactID)+" into seed "+strconv.Itoa(idx), run)
		} else {
			err = run(r.Context())
		}
		if err != nil {
			return err
		}
		return writeJSON(w, v)
	}
}

// decodeSeedBody reads the member req's action takes, naming what is
// missing or wrong.
func decodeSeedBody(doc []byte, req *SeedRequest) error {
	var b seedBody
	if len(doc) > 0 {
		dec := json.NewDecoder(bytes.NewReader(doc))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			return failure.Errorf(failure.BadInput, "body: %v", err)
		}
	}
	want := map[SeedAction]string{SeedLoad: "artifact_id", SeedSetState: "state", SeedSetAlpha: "alpha"}[req.Action]
	for _, m := range []struct {
		member string
		given  bool
	}{{"artifact_id", b.ArtifactID != nil}, {"state", b.State != nil}, {"alpha", b.Alpha != nil}} {
		if member := m.member; m.given && member != want {
			if want == "" {
				return failure.Errorf(failure.BadInput, "body: %s is not taken here (the route takes no body)", member)
			}
			return failure.Errorf(failure.BadInput, "body: %s is not taken here (the route takes %s)", member, want)
		}
	}
	switch req.Action {
	case SeedLoad:
		if b.ArtifactID == nil || strings.TrimSpace(*b.ArtifactID) == "" {
			return failure.Errorf(failure.BadInput, "body: artifact_id is required (a kernel id, a URL, or a path under the kernel root)")
		}
		req.ArtifactID = *b.ArtifactID
	case SeedSetState:
		if b.State == nil {
			return failure.Errorf(failure.BadInput, "body: state is required")
		}
		req.State = *b.State
	case SeedSetAlpha:
		if b.Alpha == nil {
			return failure.Errorf(failure.BadInput, "body: alpha is required (a number; outside [0, 1] it is clamped)")
		}
		if err := json.Unmarshal(*b.Alpha, &req.Alpha); err != nil || math.IsNaN(req.Alpha) || math.IsInf(req.Alpha, 0) {
			return failure.Errorf(failure.BadInput, "body: alpha %s is not a number", *b.Alpha)
		}
	}
	return nil
}
