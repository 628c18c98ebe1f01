package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/esper/kasmina-host/device"
	"github.com/esper/kasmina-host/internal/regularfile"
	"github.com/esper/kasmina-host/kernels/examples"
	"github.com/esper/kasmina-host/kernels/gemm"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime"
	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oipgrpc"
	"github.com/esper/kasmina-host/runtime/oona"
	"github.com/esper/kasmina-host/runtime/statedir"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where serve listens by default: loopback, on a port clear
// of Esper's services (Urza 8000, Tamiyo 8001, Tolaria 8080).
const DefaultAddr = "127.0.0.1:8470"

// defaultAllowRefs is --allow-refs's default: local files, Esper's artifact
// bucket, and http(s). `run` uses it too.
const defaultAllowRefs = "file,s3://esper-artifacts/,http://*,https://*"

// serveConfig is everything `serve` reads from flags and KASMINA_*
// environment variables.
type serveConfig struct {
	addr              string
	listenUnix        string
	grpcAddr          string
	noSharedMemory    bool
	kernelsDir        string
	noExamples        bool
	stateDir          string
	stateMoveAside    bool
	commandTimeout    time.Duration
	oonaURL           string
	busFile           string
	hostID            string
	urzaURL           string
	kernelRoot        string
	allowRefs         string
	allowLoopbackRefs bool
	tokenFile         string
	token             string
	authRead          bool
	insecure          bool
	allowedHosts      string
	maxBodyBytes      int64
	bodyBudgetBytes   int64
	bodyReadTimeout   time.Duration
	maxOutputBytes    int64
	maxElements       int64
	concurrency       int
	queueDepth        int
	requestTimeout    time.Duration
	shutdownTimeout   time.Duration
	signalInterval    time.Duration
	refresh           time.Duration
	cacheBytes        int64
	keptForwards      int
	keptForwardBytes  int64
	keptForwardTTL    time.Duration
	logFormat         string
	logLevel          string
	layersFile        string
	layers            []runtime.DeclareLayer // read from layersFile by check
	acceptAllLayers   bool
	requireChecksum   bool
	devices           deviceFlags
	placement         placementFlags
}

func (c *serveConfig) register(fs *flag.FlagSet, e *envFlags) {
	e.String(&c.addr, "addr", "KASMINA_ADDR", DefaultAddr, "HTTP listen address; beyond loopback a token is required")
	e.String(&c.listenUnix, "listen-unix", "KASMINA_LISTEN_UNIX", "", "also serve the HTTP API on a Unix socket at this path, mode 0660, for a training process on this node: the file mode is the permission (no token, no Host check on it); a stale socket is replaced, any other file refused")
	e.String(&c.grpcAddr, "grpc-addr", "KASMINA_GRPC_ADDR", oipgrpc.DefaultAddr, "gRPC listen address (the Open Inference Protocol's inference.GRPCInferenceService and grpc.health.v1); empty disables; beyond loopback a token is required")
	e.Bool(&c.noSharedMemory, "no-shared-memory", "KASMINA_NO_SHARED_MEMORY", false, "turn off Triton's system shared memory extension (on by default: a client that may run inference may then have the host read and write POSIX shared memory objects it can open)")
	e.String(&c.kernelsDir, "kernels", "KASMINA_KERNELS", "", "directory of esper-kernel/v1 files to serve (recursively); empty serves the embedded examples")
	e.Bool(&c.noExamples, "no-examples", "KASMINA_NO_EXAMPLES", false, "with no --kernels, start with no kernels instead of the embedded examples")
	e.String(&c.stateDir, "state-dir", "KASMINA_STATE_DIR", "", "directory where loaded kernels, seeds and placements are saved and restored from (empty: no state kept)")
	e.Bool(&c.stateMoveAside, "state-move-aside", "KASMINA_STATE_MOVE_ASIDE", false, "when --state-dir holds a state file this build cannot read (newer version, corrupt), rename it to state.json.unreadable-<time> and start fresh instead of refusing to start")
	e.Duration(&c.commandTimeout, "command-timeout", "KASMINA_COMMAND_TIMEOUT", oona.DefaultCommandTimeout, "deadline of one control.kasmina.commands command (a load past it is cancelled and retried)")
	e.String(&c.oonaURL, "oona", "REDIS_URL", "", "Oona bus Redis URL (redis://, rediss://, user:password@ allowed); empty uses the embedded bus")
	e.String(&c.busFile, "bus-file", "KASMINA_BUS_FILE", "-", "where the embedded bus writes published messages as JSON lines (- for stdout)")
	e.String(&c.hostID, "host-id", "KASMINA_HOST_ID", defaultHostID(), "this host's name in sender ids and its consumer group")
	e.String(&c.urzaURL, "urza", "URZA_URL", runtime.DefaultUrzaURL, "Urza's address, for resolving kernel ids in load_kernel commands")
	e.String(&c.kernelRoot, "kernel-root", "KASMINA_KERNEL_ROOT", "", "directory file:// and path references must stay inside (default: --kernels; with neither, file references are refused)")
	e.String(&c.allowRefs, "allow-refs", "KASMINA_ALLOW_REFS", defaultAllowRefs, "comma-separated artifact reference patterns that may be fetched")
	e.Bool(&c.allowLoopbackRefs, "allow-loopback-refs", "KASMINA_ALLOW_LOOPBACK_REFS", false, "let http(s) artifact references reach loopback addresses (refused by default: a command names the URL)")
	e.String(&c.tokenFile, "auth-token-file", "KASMINA_AUTH_TOKEN_FILE", "", "file holding the bearer token required for inference and state changes")
	e.String(&c.token, "auth-token", "KASMINA_AUTH_TOKEN", "", "bearer token (prefer --auth-token-file: flags show in ps)")
	e.Bool(&c.authRead, "auth-read", "KASMINA_AUTH_READ", false, "require the token on read routes too (model metadata, the repository index, /v1 views); probes and /metrics stay open")
	e.Bool(&c.insecure, "insecure-no-auth", "KASMINA_INSECURE_NO_AUTH", false, "allow listening beyond loopback without a token (logged as a warning on every start)")
	e.String(&c.allowedHosts, "allowed-hosts", "KASMINA_ALLOWED_HOSTS", "", "comma-separated host names accepted in Host/Origin besides loopback names")
	e.Int64(&c.maxBodyBytes, "max-body-bytes", "KASMINA_MAX_BODY_BYTES", oip.DefaultMaxBodyBytes, "largest request body accepted (413 beyond)")
	e.Int64(&c.bodyBudgetBytes, "body-budget-bytes", "KASMINA_BODY_BUDGET_BYTES", oip.DefaultBodyBudgetBytes,
		"request-body bytes held at once across all connections (503 + Retry-After beyond); the default fits the DaemonSet's 2 GiB limit beside the 1 GiB kernel cache and four 64 MiB inference working sets")
	e.Duration(&c.bodyReadTimeout, "body-read-timeout", "KASMINA_BODY_READ_TIMEOUT", oip.DefaultBodyReadTimeout, "longest a request body may take to arrive (408 beyond)")
	e.Int64(&c.maxOutputBytes, "max-output-bytes", "KASMINA_MAX_OUTPUT_BYTES", runtime.DefaultMaxOutputBytes,
		"largest output plus intermediate activations one inference may need, from the kernel's module graph for its batch (413 beyond; each model's max_batch follows from it)")
	e.Int64(&c.maxElements, "max-elements", "KASMINA_MAX_ELEMENTS", 1<<26, "largest input tensor accepted, in elements")
	e.Int(&c.concurrency, "concurrency", "KASMINA_CONCURRENCY", 0, "requests executing at once on the CPU (0: GOMAXPROCS)")
	e.Int(&c.queueDepth, "queue-depth", "KASMINA_QUEUE_DEPTH", 256, "requests that may wait for the executor; beyond it requests get 503 at once")
	e.Duration(&c.requestTimeout, "request-timeout", "KASMINA_REQUEST_TIMEOUT", 30*time.Second, "longest a request may wait for the executor")
	e.Duration(&c.shutdownTimeout, "exit-timeout", "KASMINA_EXIT_TIMEOUT", 30*time.Second, "how long shutdown waits for in-flight requests and the bus to drain")
	e.Duration(&c.signalInterval, "signal-interval", "KASMINA_SIGNAL_INTERVAL", time.Second, "health signal cadence")
	e.Duration(&c.refresh, "device-refresh", "KASMINA_DEVICE_REFRESH", device.DefaultRefreshInterval, "how often every device is re-read")
	e.Int64(&c.cacheBytes, "cache-bytes", "KASMINA_CACHE_BYTES", 1<<30, "bytes of parsed kernels kept in memory")
	e.Int(&c.keptForwards, "kept-forwards", "KASMINA_KEPT_FORWARDS", runtime.DefaultKeptForwards, "layer forwards kept for a later backward (keep_forward) at most; the oldest are evicted beyond")
	e.Int64(&c.keptForwardBytes, "kept-forward-bytes", "KASMINA_KEPT_FORWARD_BYTES", runtime.DefaultKeptForwardBytes, "bytes the kept layer forwards (their seeds' tapes) may hold; the oldest are evicted beyond")
	e.Duration(&c.keptForwardTTL, "kept-forward-ttl", "KASMINA_KEPT_FORWARD_TTL", runtime.DefaultKeptForwardTTL, "how long a kept layer forward waits for its backward")
	e.String(&c.layersFile, "layers", "KASMINA_LAYERS", "",
		`JSON file declaring the layers this host serves, {"layers": [{"layer_name", "num_seeds", "layer_id", "input_shape", "output_shape"}]}, applied at every start`)
	e.Bool(&c.acceptAllLayers, "accept-all-layers", "KASMINA_ACCEPT_ALL_LAYERS", false,
		"a command for a layer nobody declared declares it (4 seeds) instead of being skipped: for a single host on the bus (runtime/oona/COMMANDS.md)")
	e.Bool(&c.requireChecksum, "require-checksum", "KASMINA_REQUIRE_CHECKSUM", false,
		"refuse a kernel id whose Urza record carries no SHA-256 (default: trust the first bytes loaded for the id and refuse different ones)")
	e.String(&c.logFormat, "log-format", "KASMINA_LOG_FORMAT", "text", "text or json")
	e.String(&c.logLevel, "log-level", "KASMINA_LOG_LEVEL", "info", "debug, info, warn or error")
	c.devices.register(fs)
	c.placement.register(fs, e)
}

func defaultHostID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "kasmina"
	}
	return h
}

// check validates the settings that flag parsing cannot, naming the flag.
func (c *serveConfig) check() error {
	if _, _, err := net.SplitHostPort(c.addr); err != nil {
		return fmt.Errorf("--addr %q: %w", c.addr, err)
	}
	if c.grpcAddr != "" {
		if _, _, err := net.SplitHostPort(c.grpcAddr); err != nil {
			return fmt.Errorf("--grpc-addr %q: %w", c.grpcAddr, err)
		}
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return fmt.Errorf("--log-format %q: want text or json", c.logFormat)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	for _, v := range []struct {
		name string
		ok   bool
	}{
		{"--max-body-bytes must be > 0", c.maxBodyBytes > 0},
		{"--body-budget-bytes must be ≥ --max-body-bytes", c.bodyBudgetBytes >= c.maxBodyBytes},
		{"--body-read-timeout must be > 0", c.bodyReadTimeout > 0},
		{"--max-output-bytes must be > 0", c.maxOutputBytes > 0},
		{"--max-elements must be > 0", c.maxElements > 0},
		{"--concurrency must be ≥ 0", c.concurrency >= 0},
		{"--queue-depth must be ≥ 0", c.queueDepth >= 0},
		{"--request-timeout must be > 0", c.requestTimeout > 0},
		{"--exit-timeout must be > 0", c.shutdownTimeout > 0},
		{"--command-timeout must be > 0", c.commandTimeout > 0},
		{"--signal-interval must be ≥ 10ms", c.signalInterval >= 10*time.Millisecond},
		{"--device-refresh must be ≥ 100ms", c.refresh >= 100*time.Millisecond},
		{"--cache-bytes must be > 0", c.cacheBytes > 0},
		{"--kept-forwards must be > 0", c.keptForwards > 0},
		{"--kept-forward-bytes must be > 0", c.keptForwardBytes > 0},
		{"--kept-forward-ttl must be > 0", c.keptForwardTTL > 0},
	} {
		if !v.ok {
			return errors.New(v.name)
		}
	}
	if c.kernelsDir != "" {
		st, err := os.Stat(c.kernelsDir)
		if err != nil {
			return fmt.Errorf("--kernels: %w", err)
		}
		if !st.IsDir() {
			return fmt.Errorf("--kernels %q is not a directory", c.kernelsDir)
		}
	}
	if _, _, err := c.placement.parse(); err != nil {
		return err
	}
	if c.layersFile != "" {
		b, err := regularfile.ReadFile(c.layersFile, maxLayersFileBytes)
		if err != nil {
			return fmt.Errorf("--layers: %w", err)
		}
		if c.layers, err = runtime.DecodeLayersFile(b); err != nil {
			return fmt.Errorf("--layers %s: %w", c.layersFile, err)
		}
	}
	if c.token != "" {
		// Set but blank, or with whitespace inside: refused rather than
		// taken for "no token".
		if err := oip.CheckToken(c.token); err != nil {
			return fmt.Errorf("--auth-token (or KASMINA_AUTH_TOKEN): %w", err)
		}
	}
	if c.tokenFile != "" {
		b, err := regularfile.ReadFile(c.tokenFile, maxSecretFileBytes)
		if err != nil {
			return fmt.Errorf("--auth-token-file: %w", err)
		}
		c.token = strings.TrimSpace(string(b))
		if c.token == "" {
			return fmt.Errorf("--auth-token-file %s is empty", c.tokenFile)
		}
		if err := oip.CheckToken(c.token); err != nil {
			return fmt.Errorf("--auth-token-file %s: %w", c.tokenFile, err)
		}
	}
	if c.authRead && c.token == "" {
		return errors.New("--auth-read needs a token (--auth-token-file)")
	}
	if err := oip.CheckListen(c.addr, c.token, c.insecure); err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	if c.grpcAddr != "" {
		if err := oip.CheckListen(c.grpcAddr, c.token, c.insecure); err != nil {
			return fmt.Errorf("--grpc-addr: %w", err)
		}
	}
	return nil
}

func (c *serveConfig) logger(w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.logLevel)) // check() refused a bad one already
	opts := &slog.HandlerOptions{Level: lvl}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runServe implements `kasmina-host serve`: the daemon.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kasmina-host serve [flags]")
		fmt.Fprintln(stderr, "\nRuns the host: inventories devices, serves kernels over the Open Inference Protocol,")
		fmt.Fprintln(stderr, "publishes health signals on the Oona bus and follows control.kasmina.commands.")
		fmt.Fprintln(stderr, "Every flag has an environment variable (shown in brackets); a flag wins over it.")
		fs.PrintDefaults()
	}
	var cfg serveConfig
	e := &envFlags{fs: fs}
	cfg.register(fs, e)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kasmina-host serve: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if err := errors.Join(e.err(), gemm.EnvError(), cfg.devices.validate(), cfg.check()); err != nil {
		fmt.Fprintf(stderr, "kasmina-host serve: %v\n", err)
		return exitUsage
	}
	log := cfg.logger(stderr)
	if err := serve(ctx, &cfg, log, stdout); err != nil {
		var unreadable *statedir.UnreadableError
		if errors.As(err, &unreadable) {
			fmt.Fprintf(stderr, "kasmina-host serve: %v\nkasmina-host serve: refusing to start so as not to overwrite it; "+
				"--state-move-aside (KASMINA_STATE_MOVE_ASIDE=1) renames it and starts fresh\n", err)
			return exitStateRefused
		}
		log.Error("kasmina-host stopped", slog.Any("err", err))
		return exitFatal
	}
	return exitOK
}

// access is who may call a front end listening on addr: the token and
// its scope, and the Host (or :authority) check that a loopback address
// turns on.
func (c *serveConfig) access(addr string) oip.Access {
	return oip.Access{
		Token: c.token, TokenForReads: c.authRead,
		Loopback: oip.IsLoopbackAddr(addr), AllowedHosts: splitList(c.allowedHosts),
	}
}

// maxSecretFileBytes caps a token or password file.
const maxSecretFileBytes = 64 << 10

// maxLayersFileBytes caps the --layers file.
const maxLayersFileBytes = 4 << 20

// serve wires the packages together and runs until ctx ends.
func serve(ctx context.Context, cfg *serveConfig, log *slog.Logger, stdout io.Writer) error {
	bi := readBuildInfo()
	log.Info("kasmina-host starting", slog.String("version", bi.Version), slog.String("commit", bi.Commit),
		slog.String("addr", cfg.addr), slog.String("host_id", cfg.hostID))
	for _, addr := range []string{cfg.addr, cfg.grpcAddr} {
		if addr != "" && !oip.IsLoopbackAddr(addr) && cfg.token == "" {
			log.Warn("SERVING WITHOUT AUTHENTICATION beyond loopback (--insecure-no-auth): anyone who reaches this address can run inference and load, unload and replace kernels; set --auth-token-file",
				slog.String("addr", addr))
		}
	}

	// Devices.
	devOpts := cfg.devices.options(log.With(slog.String("component", "device")))
	devOpts.RefreshInterval = cfg.refresh
	inv, err := device.Open(ctx, devOpts)
	if err != nil {
		return fmt.Errorf("opening the device inventory: %w", err)
	}
	defer inv.Close()

	// Metrics.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(reg, bi, inv.Snapshot().Source)
	reg.MustRegister(device.NewCollector(inv))

	// Bus.
	busCfg := oona.ConfigFromEnv(os.Getenv)
	busCfg.URL = cfg.oonaURL
	busCfg.HostID = cfg.hostID
	busCfg.EmbeddedPath = cfg.busFile
	busCfg.Consumer.CommandTimeout = cfg.commandTimeout
	bus, err := oona.Open(ctx, busCfg, log.With(slog.String("component", "oona")))
	if err != nil {
		return fmt.Errorf("opening the Oona bus: %w", err)
	}
	if err := oona.RegisterMetrics(reg, bus); err != nil {
		return fmt.Errorf("registering bus metrics: %w", err)
	}

	// State: a state file this build cannot use stops the start before
	// anything could overwrite it.
	deps := runtime.Deps{Inventory: inv, Bus: bus, Resolver: &runtime.Urza{BaseURL: cfg.urzaURL, Retries: 2}, Registerer: reg}
	var saved runtime.State
	var haveState bool
	if cfg.stateDir != "" {
		var store *statedir.Store
		if store, saved, haveState, err = openState(cfg, log, reg); err != nil {
			return err
		}
		deps.Store = store
	}

	// Runtime.
	if deps.Fetcher, err = newFetcher(cfg, log); err != nil {
		return err
	}
	if cfg.kernelsDir != "" {
		repo, err := runtime.OpenRepository(cfg.kernelsDir)
		if err != nil {
			return fmt.Errorf("--kernels: %w", err)
		}
		deps.Repository = &repo
	} else if !cfg.noExamples {
		deps.Repository = &runtime.Repository{FS: examples.FS, Where: "examples (embedded)"}
	}
	popts, fb, _ := cfg.placement.parse() // check() refused a bad one already
	host, err := runtime.New(runtime.Config{
		HostID: cfg.hostID, Placement: popts, Fallback: fb, PlacementBatch: cfg.placement.batch,
		Concurrency: cfg.concurrency, QueueDepth: cfg.queueDepth, RequestTimeout: cfg.requestTimeout,
		SignalInterval: cfg.signalInterval, CacheBytes: cfg.cacheBytes, MaxOutputBytes: cfg.maxOutputBytes,
		KeptForwards: cfg.keptForwards, KeptForwardBytes: cfg.keptForwardBytes, KeptForwardTTL: cfg.keptForwardTTL,
		AcceptAllLayers: cfg.acceptAllLayers, RequireChecksum: cfg.requireChecksum, Layers: cfg.layers,
		Logger: log.With(slog.String("component", "runtime")),
	}, deps)
	if err != nil {
		return err
	}

	// HTTP.
	httpMetrics, err := oip.NewMetrics(reg)
	if err != nil {
		return err
	}
	shmRegistry := sharedMemory(cfg)
	if shmRegistry != nil {
		// After both front ends have drained: no request holds a region.
		defer shmRegistry.Close()
	}
	be := oip.HostBackend(host) // the gRPC front end serves it too
	opts := oip.Options{
		ServerName: "kasmina-host", Version: bi.Version, Access: cfg.access(cfg.addr),
		MaxBodyBytes: cfg.maxBodyBytes, BodyBudgetBytes: cfg.bodyBudgetBytes, BodyReadTimeout: cfg.bodyReadTimeout,
		MaxElements: cfg.maxElements, Metrics: httpMetrics, SharedMemory: shmRegistry,
		MetricsHandler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
	}
	handler := oip.NewHandler(be, oip.HostViewsFor(host, inv), opts, log.With(slog.String("component", "http")))
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("--addr %s: %w", cfg.addr, err)
	}
	srv := oip.NewServer(cfg.addr, handler, log.With(slog.String("component", "http")))
	var unixLn net.Listener
	if cfg.listenUnix != "" {
		if unixLn, err = oip.ListenUnix(cfg.listenUnix); err != nil {
			ln.Close()
			return fmt.Errorf("--listen-unix: %w", err)
		}
	}
	grpcSrv, err := startGRPC(cfg, be, bi.Version, shmRegistry, reg, log.With(slog.String("component", "grpc")))
	if err != nil {
		ln.Close()
		if unixLn != nil {
			unixLn.Close()
		}
		return err
	}

	// Everything below runs until ctx ends; the loops (the device watch
	// and the host) stop once the HTTP server has drained.
	loops, stopLoops := context.WithCancel(context.Background())
	defer stopLoops()
	serveErr := make(chan error, 3) // one per listener
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	}()
	grpcSrv.serve(serveErr)
	log.Info("listening", slog.String("addr", ln.Addr().String()), slog.Bool("token_required", cfg.token != ""),
		slog.Bool("token_required_for_reads", cfg.authRead))
	if unixLn != nil {
		go func() {
			if err := srv.Serve(unixLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- err
			}
		}()
		log.Info("listening", slog.String("unix", cfg.listenUnix), slog.String("mode", oip.UnixSocketMode.String()),
			slog.Bool("token_required", false))
	}
	if grpcSrv != nil {
		log.Info("listening for gRPC", slog.String("grpc_addr", grpcSrv.addr), slog.Bool("shared_memory", shmRegistry != nil))
	}

	devicesDone := make(chan struct{})
	go func() {
		defer close(devicesDone)
		if err := inv.Run(loops); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("loop stopped", slog.String("loop", "devices"), slog.Any("err", err))
		}
	}()

	// The host starts beside the signal wait, so that SIGTERM ends the
	// process within --exit-timeout even while kernels are loading. State
	// first, then the host's own start-up (the repository scan): kernels
	// restored from the state directory come back first, the repository
	// fills in the rest.
	hostDone := make(chan struct{})
	go func() {
		defer close(hostDone)
		if haveState {
			restoreState(ctx, log, host, saved)
		}
		if ctx.Err() != nil {
			return
		}
		if err := host.Run(loops); err != nil {
			log.Error("loop stopped", slog.String("loop", "runtime"), slog.Any("err", err))
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining requests", slog.Duration("exit_timeout", cfg.shutdownTimeout))
	case runErr = <-serveErr:
		log.Error("server failed", slog.Any("err", runErr))
	}
	drain, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	grpcDrained := make(chan error, 1)
	go func() { grpcDrained <- grpcSrv.shutdown(drain) }()
	if err := srv.Shutdown(drain); err != nil {
		log.Warn("HTTP drain incomplete", slog.Any("err", err))
	}
	if err := <-grpcDrained; err != nil {
		log.Warn("gRPC drain incomplete", slog.Any("err", err))
	}
	stopLoops() // the host emits the last health signals and saves its state as it stops
	select {
	case <-hostDone:
	case <-drain.Done():
		// A load that ignores cancellation (a file system that hangs)
		// cannot hold the process: it goes on exiting.
		log.Warn("the host did not stop within the exit timeout (a load ignoring cancellation); exiting without it")
	}
	<-devicesDone
	if err := bus.Close(drain); err != nil {
		log.Warn("bus did not flush everything", slog.Any("err", err))
	}
	st := bus.Stats()
	log.Info("stopped", slog.Uint64("bus_published", st.Published), slog.Uint64("bus_delivered", st.Delivered),
		slog.Uint64("bus_dropped", st.Dropped))
	return runErr
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// newFetcher builds the artifact sources: files under the kernel root,
// http(s) and s3, behind the allow-list.
func newFetcher(cfg *serveConfig, log *slog.Logger) (runtime.Fetcher, error) {
	allow, err := source.NewAllowList(splitList(cfg.allowRefs)...)
	if err != nil {
		return nil, fmt.Errorf("--allow-refs: %w", err)
	}
	// File references resolve inside the kernel root only; with none
	// configured they are refused (the working directory is no root: it
	// may be /).
	var file source.Source = source.NoRoot{Hint: "start with --kernel-root DIR or --kernels DIR"}
	root := cfg.kernelRoot
	if root == "" {
		root = cfg.kernelsDir
	}
	if root != "" {
		f, err := source.NewFile(root, 0)
		if err != nil {
			return nil, fmt.Errorf("--kernel-root: %w", err)
		}
		file = f
	} else {
		log.Info("no kernel root: file:// and path references are refused (set --kernel-root or --kernels)")
	}
	web := source.NewHTTP(source.HTTPConfig{Logger: log, AllowLoopback: cfg.allowLoopbackRefs})
	routes := map[string]source.Source{source.SchemeFile: file, "http": web, "https": web}
	s3cfg := source.S3ConfigFromEnv(os.Getenv)
	if s3, err := source.NewS3(s3cfg); err == nil {
		routes["s3"] = s3
		creds := s3cfg.CredentialsFrom
		if creds == "" {
			creds = "none set: the shared credentials file, else unsigned requests"
		}
		// The variables' names, never their values.
		log.Info("s3:// artifact references", slog.String("endpoint", s3.Endpoint()), slog.String("credentials_from", creds))
	} else {
		log.Info("s3:// artifact references disabled", slog.Any("err", err))
	}
	router, err := source.NewRouter(allow, routes, log)
	if err != nil {
		return nil, err
	}
	return fetcher{router}, nil
}

// fetcher adapts a source.Source to the runtime's Fetcher.
type fetcher struct{ src source.Source }

func (f fetcher) Fetch(ctx context.Context, ref, sha string) (source.Blob, error) {
	return source.FetchVerified(ctx, f.src, ref, sha)
}

var _ fs.FS = examples.FS
