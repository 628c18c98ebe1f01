package source

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	neturl "net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// HTTPConfig configures an HTTP source. Zero values take the defaults named
// on each field.
type HTTPConfig struct {
	// MaxBytes caps the body (default DefaultMaxBytes).
	MaxBytes int64
	// ConnectTimeout bounds one TCP connect (default 5s).
	ConnectTimeout time.Duration
	// AttemptTimeout bounds one request, headers and body (default 60s);
	// an attempt that runs out is retried.
	AttemptTimeout time.Duration
	// Timeout bounds the whole fetch, retries and waits included (default 3m).
	Timeout time.Duration
	// MaxAttempts is the number of requests made at most (default 4).
	MaxAttempts int
	// BaseBackoff is the first wait between attempts (default 200ms); it
	// doubles on each retry up to MaxBackoff (default 10s), with jitter.
	BaseBackoff, MaxBackoff time.Duration
	// MaxRetryAfter caps how long a server's Retry-After may make us wait
	// (default 30s).
	MaxRetryAfter time.Duration
	// MaxRedirects is the number of redirects followed (default 3; negative
	// follows none). A redirect never changes scheme.
	MaxRedirects int
	// Redirects, when set, must allow every redirect target; when nil a
	// redirect must stay on the same host and port.
	Redirects *AllowList

	// AllowLoopback permits connecting to 127.0.0.0/8 and ::1.
	AllowLoopback bool
	// AllowLinkLocal permits 169.254.0.0/16 and fe80::/10 (metadata
	// addresses excepted, see AllowMetadata).
	AllowLinkLocal bool
	// AllowMetadata permits the cloud metadata endpoints (169.254.169.254,
	// 169.254.170.2, fd00:ec2::254, 100.100.100.200).
	AllowMetadata bool
	// DenyPrivate refuses the private ranges (10/8, 172.16/12, 192.168/16,
	// 100.64/10, fc00::/7), which are allowed by default because Esper's
	// artifact stores usually live on the cluster network.
	DenyPrivate bool

	// TLSClientConfig is used for https (nil: system roots).
	TLSClientConfig *tls.Config
	// UserAgent is sent with every request (default "kasmina-host").
	UserAgent string
	// Logger receives one line per retry (nil: discarded).
	Logger *slog.Logger
	// Sleep waits between attempts; nil waits on a timer. Tests record the
	// waits instead of spending them.
	Sleep func(ctx context.Context, d time.Duration) error
}

func (c *HTTPConfig) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	c.MaxBytes = capOrDefault(c.MaxBytes)
	def(&c.ConnectTimeout, 5*time.Second)
	def(&c.AttemptTimeout, 60*time.Second)
	def(&c.Timeout, 3*time.Minute)
	def(&c.BaseBackoff, 200*time.Millisecond)
	def(&c.MaxBackoff, 10*time.Second)
	def(&c.MaxRetryAfter, 30*time.Second)
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 4
	}
	if c.MaxRedirects == 0 {
		c.MaxRedirects = 3
	}
	if c.UserAgent == "" {
		c.UserAgent = "kasmina-host"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Sleep == nil {
		c.Sleep = sleepCtx
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// HTTP fetches kernels over http:// and https://, with timeouts, a size cap,
// and retries with exponential backoff and jitter on network errors, 429 and
// 5xx. It checks every address it dials, after DNS resolution, so a host name
// that resolves to a refused address (loopback, link-local, metadata) is
// refused too. It never uses a proxy, since a proxy would dial on our behalf
// past those checks.
type HTTP struct {
	cfg    HTTPConfig
	client *http.Client
}

// NewHTTP returns an HTTP source.
func NewHTTP(cfg HTTPConfig) *HTTP {
	cfg.setDefaults()
	policy := addrPolicy{
		loopback:  cfg.AllowLoopback,
		linkLocal: cfg.AllowLinkLocal,
		metadata:  cfg.AllowMetadata,
		private:   !cfg.DenyPrivate,
	}
	dialer := &net.Dialer{
		Timeout:   cfg.ConnectTimeout,
		KeepAlive: 30 * time.Second,
		Control:   policy.control,
	}
	transport := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       cfg.TLSClientConfig,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		ResponseHeaderTimeout: cfg.AttemptTimeout,
		DisableCompression:    true, // hash the stored bytes, and no decompression bombs
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
	}
	h := &HTTP{cfg: cfg}
	h.client = &http.Client{Transport: transport, CheckRedirect: h.checkRedirect}
	return h
}

// CloseIdleConnections closes kept-alive connections.
func (h *HTTP) CloseIdleConnections() { h.client.CloseIdleConnections() }

func (h *HTTP) checkRedirect(req *http.Request, via []*http.Request) error {
	first := via[0].URL
	if h.cfg.MaxRedirects < 0 || len(via) > h.cfg.MaxRedirects {
		return fmt.Errorf("%w: more than %d redirects from %s", ErrNotAllowed, max(h.cfg.MaxRedirects, 0), Redact(first.String()))
	}
	if !strings.EqualFold(req.URL.Scheme, first.Scheme) {
		return fmt.Errorf("%w: redirect from %s to another scheme: %s", ErrNotAllowed, Redact(first.String()), Redact(req.URL.String()))
	}
	ref, err := ParseRef(req.URL.String())
	if err != nil {
		return fmt.Errorf("%w: redirect target: %w", ErrNotAllowed, err)
	}
	if h.cfg.Redirects != nil {
		return h.cfg.Redirects.Check(ref)
	}
	if !strings.EqualFold(req.URL.Host, first.Host) {
		return fmt.Errorf("%w: redirect from %s to another host: %s", ErrNotAllowed, Redact(first.String()), Redact(req.URL.String()))
	}
	return nil
}

// Fetch downloads ref.
func (h *HTTP) Fetch(ctx context.Context, ref string) (Blob, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return Blob{}, err
	}
	if r.Scheme != SchemeHTTP && r.Scheme != SchemeHTTPS {
		return Blob{}, fmt.Errorf("%w: http source cannot fetch %s", ErrUnsupportedScheme, r.Redacted())
	}
	url, shown := r.String(), r.Redacted()
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()

	var lastErr error
	for attempt := 1; ; attempt++ {
		blob, retryAfter, err := h.attempt(ctx, url)
		if err == nil {
			return blob, nil
		}
		var rerr *retryableError
		if !errors.As(err, &rerr) {
			return Blob{}, err
		}
		lastErr = rerr.err
		if ctx.Err() != nil {
			return Blob{}, fmt.Errorf("fetching %s: %w (last attempt: %w)", shown, ctx.Err(), lastErr)
		}
		if attempt >= h.cfg.MaxAttempts {
			return Blob{}, fmt.Errorf("fetching %s: giving up after %d attempts: %w", shown, attempt, lastErr)
		}
		wait := h.backoff(attempt, retryAfter)
		h.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "kernel fetch failed, retrying",
			slog.String("url", shown), slog.Int("attempt", attempt),
			slog.Duration("wait", wait), slog.String("error", lastErr.Error()))
		if err := h.cfg.Sleep(ctx, wait); err != nil {
			return Blob{}, fmt.Errorf("fetching %s: %w (last attempt: %w)", shown, err, lastErr)
		}
	}
}

// retryableError marks an attempt's failure as worth another attempt.
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

func (h *HTTP) attempt(ctx context.Context, url string) (Blob, time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, h.cfg.AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodGet, url, nil)
	if err != nil {
		return Blob{}, 0, fmt.Errorf("%w: %q: %v", ErrInvalidRef, Redact(url), urlErrorCause(err))
	}
	req.Header.Set("User-Agent", h.cfg.UserAgent)
	resp, err := h.client.Do(req)
	if err != nil {
		return Blob{}, 0, classify(ctx, err)
	}
	defer resp.Body.Close()
	origin := Redact(resp.Request.URL.String()) // for messages and Blob.Origin: never the signature

	switch code := resp.StatusCode; {
	case code == http.StatusOK:
	case code == http.StatusNotFound || code == http.StatusGone:
		return Blob{}, 0, fmt.Errorf("%w: %s: HTTP %s", ErrNotFound, origin, resp.Status)
	case code == http.StatusTooManyRequests || code >= 500:
		drain(resp.Body)
		return Blob{}, retryAfter(resp.Header.Get("Retry-After"), time.Now()),
			&retryableError{fmt.Errorf("%s: HTTP %s", origin, resp.Status)}
	default:
		return Blob{}, 0, fmt.Errorf("fetching %s: HTTP %s", origin, resp.Status)
	}
	data, sum, err := readCapped(resp.Body, resp.ContentLength, h.cfg.MaxBytes, origin)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return Blob{}, 0, err
		}
		return Blob{}, 0, classify(ctx, err)
	}
	return Blob{Data: data, SHA256: sum, Size: int64(len(data)), Origin: origin}, 0, nil
}

// classify decides whether a transport error is worth retrying: network
// failures and a timed-out attempt are; a refused address, a refused
// redirect, and the caller's own cancellation are not.
func classify(ctx context.Context, err error) error {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		ue.URL = Redact(ue.URL) // the client quotes the whole URL, presigned query included
	}
	switch {
	case errors.Is(err, ErrNotAllowed), errors.Is(err, ErrInvalidRef):
		return err
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return &retryableError{err}
}

func drain(r io.Reader) { _, _ = io.Copy(io.Discard, io.LimitReader(r, 64<<10)) }

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(min(n, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// backoff is the wait after the given failed attempt (1-based): the server's
// Retry-After when it sent one (capped), else exponential with jitter in
// [d/2, d].
func (h *HTTP) backoff(attempt int, serverWait time.Duration) time.Duration {
	if serverWait > 0 {
		return min(serverWait, h.cfg.MaxRetryAfter)
	}
	d := h.cfg.BaseBackoff
	for i := 1; i < attempt && d < h.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, h.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// addrPolicy decides which addresses may be dialed. It runs in the dialer's
// Control hook, on the address actually being connected to, after DNS.
type addrPolicy struct {
	loopback, linkLocal, metadata, private bool
}

// Cloud metadata endpoints: AWS/GCP/Azure/OpenStack IMDS, the ECS task
// credentials endpoint, AWS's IPv6 IMDS, and Alibaba Cloud's.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("169.254.170.2"),
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("100.100.100.200"),
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func (p addrPolicy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse dial address %q", ErrNotAllowed, address)
	}
	return p.check(ap.Addr())
}

func (p addrPolicy) check(a netip.Addr) error {
	a = a.Unmap().WithZone("")
	refuse := func(what, flag string) error {
		if flag == "" {
			return fmt.Errorf("%w: address %s is %s", ErrNotAllowed, a, what)
		}
		return fmt.Errorf("%w: address %s is %s (allow with %s)", ErrNotAllowed, a, what, flag)
	}
	for _, m := range metadataAddrs {
		if a == m {
			if p.metadata {
				return nil
			}
			return refuse("a cloud metadata endpoint", "AllowMetadata")
		}
	}
	switch {
	case !a.IsValid(), a.IsUnspecified():
		return refuse("unspecified", "")
	case a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return refuse("multicast or broadcast", "")
	case a.IsLoopback():
		if !p.loopback {
			return refuse("loopback", "AllowLoopback")
		}
	case a.IsLinkLocalUnicast():
		if !p.linkLocal {
			return refuse("link-local", "AllowLinkLocal")
		}
	case a.IsPrivate(), cgnat.Contains(a):
		if !p.private {
			return refuse("private", "DenyPrivate=false")
		}
	}
	return nil
}
