package oip

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/shm"
)

// Defaults for Options fields left at their zero value.
const (
	DefaultMaxBodyBytes = 64 << 20 // Triton's --http-max-input-size default
	// DefaultBodyBudgetBytes bounds the request bodies held at once across
	// all connections. The DaemonSet gives the host 2 GiB: 1 GiB for the
	// parsed-kernel cache (--cache-bytes), 256 MiB for bodies (four of the
	// largest at once), 256 MiB for inference working sets (GOMAXPROCS 4 ×
	// 64 MiB of output and activations), and the rest for decoded tensors,
	// answers, the bus buffer and the Go runtime.
	DefaultBodyBudgetBytes = 256 << 20
	DefaultBodyReadTimeout = 30 * time.Second // a whole body, from its first read
	DefaultLoadTimeout     = WriteTimeout - 15*time.Second
	DefaultMaxElements     = 1 << 26 // elements in one input tensor
	DefaultMaxJSONDepth    = 32      // nesting of the whole request document
	DefaultRetryAfter      = time.Second
	DefaultServerName      = "kasmina-host"
)

// Access is who may call a front end, the same for HTTP and gRPC (package
// oipgrpc embeds it too). The zero value asks for no token and checks no
// Host.
type Access struct {
	// Token, when set, is the bearer token required by inference and by
	// every route (or RPC) that changes state. A token that CheckToken
	// refuses (blank, whitespace) is never matched: every guarded call is
	// refused as unauthenticated.
	Token string
	// TokenForReads also requires the token on read-only calls (model
	// metadata, the repository index, the /v1 views, the shared memory
	// status); the health probes and /metrics stay open.
	TokenForReads bool
	// Loopback says the listener is a loopback address: the Host header (and
	// Origin, when present; :authority over gRPC) must then name a loopback
	// host, which stops DNS rebinding from reaching the API through a
	// browser.
	Loopback bool
	// AllowedHosts are host names (without port) accepted in Host, Origin
	// and :authority besides the loopback names. When non-empty the check is
	// on even if Loopback is false.
	AllowedHosts []string
}

// Options configures the handler. The zero value serves without a token and
// without a Host check, with the default limits.
type Options struct {
	// ServerName and Version are reported by GET /v2.
	ServerName, Version string
	// Access is who may call: the bearer token and the Host check.
	Access
	// MaxBodyBytes caps a request body; larger bodies get 413. Routes
	// that take a JSON document rather than tensors cap theirs at 1 MiB.
	MaxBodyBytes int64
	// BodyBudgetBytes bounds the bytes of request bodies held at once
	// across all connections: a body that does not fit now gets 503 with
	// Retry-After, one larger than the whole budget 413. Bodies are held
	// as their bytes arrive, never sized by a declared Content-Length.
	BodyBudgetBytes int64
	// BodyReadTimeout bounds the reading of one request body, from its
	// first read; a body that has not arrived by then gets 408 and the
	// connection is closed.
	BodyReadTimeout time.Duration
	// LoadTimeout bounds a load over HTTP (POST /v1/kernels, the repository
	// load); past it the load is cancelled, nothing is loaded, and the
	// answer is 504. It should stay below the server's WriteTimeout so
	// that the answer can still be written.
	LoadTimeout time.Duration
	// MaxElements caps the element count of one input tensor.
	MaxElements int64
	// MaxJSONDepth caps the nesting depth of a request's JSON document.
	MaxJSONDepth int
	// RetryAfter is sent in the Retry-After header of 503 answers (whole
	// seconds, at least one).
	RetryAfter time.Duration
	// Metrics, when set, records the request count and latency per route.
	Metrics *Metrics
	// MetricsHandler, when set, is served open at GET /metrics (for example
	// promhttp.HandlerFor on the daemon's registry).
	MetricsHandler http.Handler
	// SharedMemory, when set, serves Triton's system shared memory
	// extension on this registry (shared with the gRPC front end): its
	// routes under /v2/systemsharedmemory and tensors named by
	// shared_memory_region. When nil those answer 501.
	SharedMemory *shm.Registry
}

func (o Options) withDefaults() Options {
	if o.ServerName == "" {
		o.ServerName = DefaultServerName
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.BodyBudgetBytes <= 0 {
		o.BodyBudgetBytes = DefaultBodyBudgetBytes
	}
	if o.BodyReadTimeout <= 0 {
		o.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = DefaultLoadTimeout
	}
	if o.MaxElements <= 0 {
		o.MaxElements = DefaultMaxElements
	}
	if o.MaxJSONDepth <= 0 {
		o.MaxJSONDepth = DefaultMaxJSONDepth
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = DefaultRetryAfter
	}
	return o
}

// access says which guards a route passes through.
type access int

const (
	accessOpen   access = iota // health probes: no guard at all
	accessScrape               // metrics: Host/Origin check, never a token
	accessRead                 // Host/Origin check; token only with TokenForReads
	accessWrite                // Host/Origin check, cross-site refusal, token
)

// server holds the handler's dependencies; its methods are the routes.
type server struct {
	backend Backend
	host    HostViews
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	guard   guard
	budget  *bodyBudget
}

// NewHandler returns the HTTP API: the Open Inference Protocol routes under
// /v2, the host's JSON views under /v1 and, when opts.MetricsHandler is set,
// /metrics. backend must not be nil; a nil logger discards logs.
func NewHandler(backend Backend, host HostViews, opts Options, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts = opts.withDefaults()
	s := &server{
		backend: backend,
		host:    host,
		opts:    opts,
		log:     logger,
		mux:     http.NewServeMux(),
		guard:   newGuard(opts),
		budget:  &bodyBudget{limit: opts.BodyBudgetBytes},
	}
	if opts.Metrics != nil {
		s.budget.gauge = opts.Metrics.bodyHeld.Add
	}
	s.routes()
	return s
}

func (s *server) routes() {
	// Health: open for probes. Metrics: no token for scrapers, but the
	// Host check (a DNS-rebinding page must not read them).
	s.handle("GET /v2/health/live", accessOpen, s.live)
	s.handle("GET /v2/health/ready", accessOpen, s.ready)
	if s.opts.MetricsHandler != nil {
		mh := s.opts.MetricsHandler
		s.handle("GET /metrics", accessScrape, func(w http.ResponseWriter, r *http.Request) error {
			mh.ServeHTTP(w, r)
			return nil
		})
	}

	// Metadata.
	s.handle("GET /v2", accessRead, s.serverMetadata)
	s.handle("GET /v2/models/{name}", accessRead, s.modelMetadata)
	s.handle("GET /v2/models/{name}/versions/{version}", accessRead, s.modelMetadata)
	s.handle("GET /v2/models/{name}/ready", accessRead, s.modelReady)
	s.handle("GET /v2/models/{name}/versions/{version}/ready", accessRead, s.modelReady)
	s.handle("GET /v2/models/{name}/stats", accessRead, s.modelStats)
	s.handle("GET /v2/models/{name}/versions/{version}/stats", accessRead, s.modelStats)

	// Inference.
	s.handle("POST /v2/models/{name}/infer", accessWrite, s.infer)
	s.handle("POST /v2/models/{name}/versions/{version}/infer", accessWrite, s.infer)

	// System shared memory extension.
	s.handle("GET /v2/systemsharedmemory/status", accessRead, s.shmStatus)
	s.handle("GET /v2/systemsharedmemory/region/{region}/status", accessRead, s.shmStatus)
	s.handle("POST /v2/systemsharedmemory/region/{region}/register", accessWrite, s.shmRegister)
	s.handle("POST /v2/systemsharedmemory/region/{region}/unregister", accessWrite, s.shmUnregister)
	s.handle("POST /v2/systemsharedmemory/unregister", accessWrite, s.shmUnregister)

	// Model repository extension.
	s.handle("POST /v2/repository/index", accessRead, s.repositoryIndex)
	s.handle("POST /v2/repository/models/{name}/load", accessWrite, s.loadModel)
	s.handle("POST /v2/repository/models/{name}/unload", accessWrite, s.unloadModel)

	// Host views.
	s.handle("GET /v1/devices", accessRead, s.view(s.host.Devices))
	s.handle("GET /v1/kernels", accessRead, s.view(s.host.Kernels))
	s.handle("POST /v1/kernels", accessWrite, s.loadKernel)
	s.handle("GET /v1/kernels/{id}", accessRead, s.kernel)
	s.handle("DELETE /v1/kernels/{id}", accessWrite, s.unloadKernel)
	s.handle("POST /v1/placement/plan", accessWrite, s.planPlacement)
	s.handle("GET /v1/seeds", accessRead, s.view(s.host.Seeds))
	s.handle("GET /v1/health/signals", accessRead, s.view(s.host.HealthSignals))
	s.handle("GET /v1/layers", accessRead, s.view(s.host.Layers))
	s.handle("GET /v1/layers/{layer_name}", accessRead, s.layer)
	s.handle("PUT /v1/layers/{layer_name}", accessWrite, s.declareLayer)
	s.handle("DELETE /v1/layers/{layer_name}", accessWrite, s.retireLayer)
	s.handle("POST /v1/layers/{layer_name}/seeds/{seed_idx}/kernel", accessWrite, s.seedControl(SeedLoad))
	s.handle("DELETE /v1/layers/{layer_name}/seeds/{seed_idx}/kernel", accessWrite, s.seedControl(SeedUnload))
	s.handle("PUT /v1/layers/{layer_name}/seeds/{seed_idx}/state", accessWrite, s.seedControl(SeedSetState))
	s.handle("PUT /v1/layers/{layer_name}/seeds/{seed_idx}/alpha", accessWrite, s.seedControl(SeedSetAlpha))
}

// handlerFunc is a route: it writes a successful answer itself and returns
// an error for everything else, which handle turns into status and body.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle registers a route behind its guards, metrics and panic recovery.
func (s *server) handle(pattern string, a access, fn handlerFunc) {
	m := s.opts.Metrics
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("panic in HTTP handler", slog.String("route", pattern), slog.Any("panic", p))
				if m != nil {
					m.panics.Inc()
				}
				if rec.code == 0 {
					s.writeError(rec, r, fmt.Errorf("internal error while serving %s", pattern))
				}
			}
			if m != nil {
				m.observe(pattern, rec.status(), time.Since(start))
			}
		}()
		if err := s.guard.check(r, a); err != nil {
			s.writeError(rec, r, err)
			return
		}
		if err := fn(rec, r); err != nil {
			s.writeError(rec, r, err)
		}
	})
}

// ServeHTTP answers unmatched paths and methods with a JSON error body
// (the mux's own answers are plain text) and hands the rest to the mux.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := s.mux.Handler(r); pattern != "" {
		s.mux.ServeHTTP(w, r)
		return
	}
	// Let the mux decide between 404 and 405 (it also sets Allow), then
	// answer in our format.
	probe := &probeWriter{header: http.Header{}}
	s.mux.ServeHTTP(probe, r)
	if allow := probe.header.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	code := probe.status()
	if code < 400 {
		// Redirects (a cleaned path) are passed through as they are.
		for k, v := range probe.header {
			w.Header()[k] = v
		}
		w.WriteHeader(code)
		_, _ = w.Write(probe.body)
		return
	}
	msg := fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)
	if code == http.StatusMethodNotAllowed {
		msg = fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path)
	}
	writeJSONStatus(w, code, errorBody{Error: msg})
	if s.opts.Metrics != nil {
		s.opts.Metrics.observe("unmatched", code, 0)
	}
}

// probeWriter captures the mux's own answer to an unmatched request.
type probeWriter struct {
	header http.Header
	code   int
	body   []byte
}

func (p *probeWriter) Header() http.Header { return p.header }

func (p *probeWriter) WriteHeader(code int) {
	if p.code == 0 {
		p.code = code
	}
}

func (p *probeWriter) Write(b []byte) (int, error) {
	if p.code == 0 {
		p.code = http.StatusOK
	}
	p.body = append(p.body, b...)
	return len(b), nil
}

func (p *probeWriter) status() int {
	if p.code == 0 {
		return http.StatusOK
	}
	return p.code
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// errorBody is the only shape of an error answer.
type errorBody struct {
	Error string `json:"error"`
}

// statusOf maps an error to its HTTP status; retry reports whether the
// answer carries Retry-After. This is the one table from the host's error
// classes (package failure) to HTTP.
func statusOf(err error) (code int, retry bool) {
	var authErr *authError
	var stalled *bodyTimeoutError
	switch {
	case errors.As(err, &authErr):
		return authErr.code, false
	case errors.As(err, &stalled):
		return http.StatusRequestTimeout, false
	}
	switch failure.ClassOf(err) {
	case failure.NotFound:
		return http.StatusNotFound, false
	case failure.BadInput:
		return http.StatusBadRequest, false
	case failure.Malformed, failure.Refused:
		return http.StatusUnprocessableEntity, false
	case failure.Conflict:
		return http.StatusConflict, false
	case failure.TooLarge:
		return http.StatusRequestEntityTooLarge, false
	case failure.Unsupported:
		return http.StatusNotImplemented, false
	case failure.Unavailable, failure.QueueFull:
		return http.StatusServiceUnavailable, true
	case failure.Timeout:
		return http.StatusGatewayTimeout, false
	case failure.Canceled:
		// The client has gone; the status is for the logs and metrics.
		return 499, false
	}
	return http.StatusInternalServerError, false
}

// writeError answers err with its status and {"error": "..."}.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code, retry := statusOf(err)
	if retry {
		secs := int64((s.opts.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	}
	var authErr *authError
	if errors.As(err, &authErr) && authErr.code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="kasmina-host"`)
	}
	level := slog.LevelDebug
	if code >= 500 && code != http.StatusServiceUnavailable {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "request failed",
		slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", code), slog.String("error", err.Error()))
	writeJSONStatus(w, code, errorBody{Error: err.Error()})
}

// writeJSONStatus encodes v as the whole answer.
func writeJSONStatus(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: "encoding the answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding the answer: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
	return nil
}
