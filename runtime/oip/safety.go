package oip

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// authError is a refusal by the guard: 401 (no or wrong token) or 403
// (a Host, Origin or cross-site request that is not allowed).
type authError struct {
	code int
	msg  string
}

func (e *authError) Error() string { return e.msg }

// guard enforces the bearer token and the Host/Origin allow-list.
type guard struct {
	bearer        Bearer
	tokenForReads bool
	hosts         HostCheck
}

func newGuard(o Options) guard {
	return guard{bearer: NewBearer(o.Token), tokenForReads: o.TokenForReads, hosts: NewHostCheck(o.Loopback, o.AllowedHosts)}
}

// check returns nil when r may reach a route of access class a. A
// request that came over a Unix socket (ListenUnix) passes: the socket's
// file mode is its permission.
func (g *guard) check(r *http.Request, a access) error {
	if a == accessOpen || onUnixSocket(r.Context()) {
		return nil
	}
	if g.hosts.On() {
		if !g.hosts.Allows(r.Host) {
			return &authError{http.StatusForbidden, fmt.Sprintf("Host %q is not allowed on this listener (loopback names and the configured allow-list only)", r.Host)}
		}
		if origin := r.Header.Get("Origin"); origin != "" {
			u, err := url.Parse(origin)
			if origin == "null" || err != nil || u.Host == "" || !g.hosts.Allows(u.Host) {
				return &authError{http.StatusForbidden, fmt.Sprintf("Origin %q is not allowed on this listener", origin)}
			}
		}
	}
	if a == accessScrape {
		return nil
	}
	if a == accessWrite && r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return &authError{http.StatusForbidden, "cross-site requests may not change state or run inference"}
	}
	if g.bearer.Set() && (a == accessWrite || g.tokenForReads) {
		switch err := g.bearer.Verify(r.Header.Get("Authorization")); {
		case errors.Is(err, ErrNoBearer):
			return &authError{http.StatusUnauthorized, "this route needs an Authorization: Bearer token"}
		case err != nil:
			return &authError{http.StatusUnauthorized, err.Error()}
		}
	}
	return nil
}

// Errors of Bearer.Verify; each front end answers them with its own
// status (HTTP 401, gRPC UNAUTHENTICATED).
var (
	ErrNoBearer    = errors.New("no bearer token")
	ErrWrongBearer = errors.New("the bearer token is not valid")
)

// Bearer is the bearer-token rule of both front ends (HTTP's Authorization
// header, gRPC's authorization metadata): one place that compares tokens.
type Bearer struct {
	sum      [sha256.Size]byte
	set      bool
	unusable bool // a blank token was configured: nothing matches
}

// NewBearer returns the rule for token; an empty token requires nothing.
// A token CheckToken refuses (blank, whitespace) is still a token: it
// matches no request.
func NewBearer(token string) Bearer {
	b := Bearer{set: token != ""}
	if b.set {
		b.sum = sha256.Sum256([]byte(token))
		b.unusable = CheckToken(token) != nil
	}
	return b
}

// Set reports whether a token is configured.
func (b Bearer) Set() bool { return b.set }

// Verify checks an Authorization value ("Bearer <token>", the scheme in
// any case): nil when it carries the token, ErrNoBearer when it is not a
// bearer credential, ErrWrongBearer otherwise.
func (b Bearer) Verify(authorization string) error {
	scheme, tok, ok := strings.Cut(authorization, " ")
	if authorization == "" || !ok || !strings.EqualFold(scheme, "Bearer") {
		return ErrNoBearer
	}
	// Comparing fixed-size digests keeps the comparison constant-time
	// whatever the length of the offered token.
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(sum[:], b.sum[:]) != 1 || b.unusable {
		return ErrWrongBearer
	}
	return nil
}

// HostCheck is the DNS-rebinding rule of both front ends: on a loopback
// listener, or with an allow-list, the host a request names (HTTP's Host
// and Origin, gRPC's :authority) must be a loopback name or allowed.
type HostCheck struct {
	on      bool
	allowed map[string]bool
}

// NewHostCheck returns the rule for a listener: on when loopback is true
// or allowedHosts is not empty.
func NewHostCheck(loopback bool, allowedHosts []string) HostCheck {
	c := HostCheck{on: loopback || len(allowedHosts) > 0, allowed: map[string]bool{}}
	for _, h := range allowedHosts {
		c.allowed[normalizeHost(h)] = true
	}
	return c
}

// On reports whether the rule applies to this listener.
func (c HostCheck) On() bool { return c.on }

// Allows reports whether hostport (with or without a port) names
// localhost, 127.0.0.0/8, ::1 or an allowed host.
func (c HostCheck) Allows(hostport string) bool {
	host := hostOnly(hostport)
	if host == "" {
		return false
	}
	return isLoopbackName(host) || c.allowed[host]
}

// hostOnly strips the port from a Host header or URL host and normalizes
// the name.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return normalizeHost(h)
	}
	return normalizeHost(hostport)
}

func normalizeHost(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = strings.TrimSuffix(h, ".")
	h = strings.TrimPrefix(h, "[")
	h = strings.TrimSuffix(h, "]")
	return h
}

// isLoopbackName reports whether host (without port or brackets) names the
// loopback interface: localhost, 127.0.0.0/8 or ::1.
func isLoopbackName(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Server timeouts and limits applied by NewServer. They bound slow clients
// (ReadHeaderTimeout against slowloris) and idle connections.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 60 * time.Second
	WriteTimeout      = 60 * time.Second
	IdleTimeout       = 120 * time.Second
	MaxHeaderBytes    = 64 << 10
)

// NewServer returns an http.Server for h on addr with every timeout set and
// the header size capped. The server's own error log (TLS handshakes,
// malformed requests) goes to logger at WARN; a nil logger discards it.
// The same server may also Serve a ListenUnix listener: the requests that
// arrive on it are marked, and pass the handler's token and Host checks.
func NewServer(addr string, h http.Handler, logger *slog.Logger) *http.Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// IsLoopbackAddr reports whether a listen address ("127.0.0.1:8090",
// "localhost:8090", "[::1]:8090") binds only the loopback interface, so the
// daemon can set Options.Loopback and decide whether a token is required.
// An empty host ("":8090, "0.0.0.0") binds every interface and is not
// loopback.
func IsLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return isLoopbackName(normalizeHost(host))
}

// CheckToken refuses a bearer token that cannot protect anything: empty,
// only whitespace, or holding whitespace or control characters (an
// Authorization header cannot carry them intact; a token read from a file
// has its surrounding whitespace trimmed first). It names no token bytes.
func CheckToken(token string) error {
	if strings.TrimSpace(token) == "" {
		return errors.New("the bearer token is blank")
	}
	for i, r := range token {
		if r <= ' ' || r == 0x7f || unicode.IsSpace(r) {
			return fmt.Errorf("the bearer token has whitespace or a control character at byte %d", i)
		}
	}
	return nil
}

// ErrInsecureListen is returned by CheckListen for a listener that is not
// loopback-only and has neither a token nor an explicit insecure opt-out.
var ErrInsecureListen = errors.New("listening beyond loopback needs a bearer token")

// CheckListen enforces the exposure rule for a listen address: a loopback
// address may run without a token; any other address needs one that
// CheckToken accepts, unless insecureNoAuth says the operator chose
// otherwise (the daemon should then log a warning on every start).
func CheckListen(addr, token string, insecureNoAuth bool) error {
	if token != "" {
		if err := CheckToken(token); err != nil {
			return err
		}
	}
	if IsLoopbackAddr(addr) || token != "" || insecureNoAuth {
		return nil
	}
	return fmt.Errorf("%w: %q is not a loopback address; set a token (--auth-token-file) or pass --insecure-no-auth", ErrInsecureListen, addr)
}
