package source

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Schemes a reference may use.
const (
	SchemeFile  = "file"
	SchemeHTTP  = "http"
	SchemeHTTPS = "https"
	SchemeS3    = "s3"
)

// Ref is a parsed kernel reference.
type Ref struct {
	// Scheme is one of file, http, https, s3. A bare path has scheme file.
	Scheme string
	// Host is the lowercased host[:port] for http(s), the bucket for s3, and
	// empty for file.
	Host string
	// Path is, for file, the path as written (absolute or relative to the
	// kernel root, slash-separated); for http(s), the escaped URL path; for
	// s3, the object key, without a leading slash.
	Path string
	// Query is the raw query of an http(s) URL (presigned URLs carry their
	// signature there); empty otherwise.
	Query string
	// bare records a reference written as a plain path, so that String
	// gives back what was parsed.
	bare bool
}

// String formats the reference so that ParseRef gives it back.
func (r Ref) String() string {
	switch r.Scheme {
	case SchemeFile:
		if r.bare {
			return r.Path
		}
		return (&url.URL{Scheme: SchemeFile, Path: r.Path, OmitHost: false}).String()
	case SchemeS3:
		return "s3://" + r.Host + "/" + r.Path
	default:
		s := r.Scheme + "://" + r.Host + r.Path
		if r.Query != "" {
			s += "?" + r.Query
		}
		return s
	}
}

// Redacted is the reference as Redact shows it.
func (r Ref) Redacted() string { return Redact(r.String()) }

// RedactedText replaces the credentials of a reference with this text.
const RedactedText = "REDACTED"

// queryKeysShown are query parameters of presigned URLs that carry no
// secret and help an operator read a failure (which algorithm, when it was
// signed, how long it is valid); every other value is redacted.
var queryKeysShown = map[string]bool{
	"x-amz-algorithm": true, "x-amz-date": true, "x-amz-expires": true, "x-amz-signedheaders": true,
}

// Redact returns a reference as it may be shown in a view, a log line or
// an error message, whatever the reference's form and whether or not it
// parses: in a scheme://authority URL the userinfo before '@' becomes
// REDACTED, every query value except a presigned URL's algorithm, date,
// expiry and signed headers becomes REDACTED (X-Amz-Credential,
// X-Amz-Signature, X-Amz-Security-Token, a SAS sig, a token=...), and a
// fragment is dropped. A path or any other string without "://" is
// returned unchanged. Every message this package builds names references
// through it.
func Redact(ref string) string {
	i := strings.Index(ref, "://")
	if i < 0 {
		return ref
	}
	var b strings.Builder
	b.Grow(len(ref))
	b.WriteString(ref[:i+3])
	rest := ref[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority := rest[:end]
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		b.WriteString(RedactedText)
		authority = authority[at:]
	}
	b.WriteString(authority)
	rest = rest[end:]
	hasFragment := false
	if h := strings.IndexByte(rest, '#'); h >= 0 {
		rest, hasFragment = rest[:h], true
	}
	path, query, hasQuery := strings.Cut(rest, "?")
	b.WriteString(path)
	if hasQuery {
		b.WriteByte('?')
		for j, kv := range strings.Split(query, "&") {
			if j > 0 {
				b.WriteByte('&')
			}
			k, _, hasValue := strings.Cut(kv, "=")
			b.WriteString(k)
			if !hasValue {
				continue
			}
			b.WriteByte('=')
			if key, err := url.QueryUnescape(k); err == nil && queryKeysShown[strings.ToLower(key)] {
				b.WriteString(kv[len(k)+1:])
			} else {
				b.WriteString(RedactedText)
			}
		}
	}
	if hasFragment {
		b.WriteString("#" + RedactedText)
	}
	return b.String()
}

const maxRefLen = 8 << 10

// ParseRef parses a kernel reference: a path (relative to the kernel root, or
// absolute), file:///abs/path, http(s)://host[:port]/path[?query], or
// s3://bucket/key. It refuses control characters, credentials in URLs,
// fragments, "." and ".." segments in URL paths and keys, and malformed
// bucket names; every error wraps ErrInvalidRef or ErrUnsupportedScheme.
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, fmt.Errorf("%w: empty reference", ErrInvalidRef)
	}
	if len(s) > maxRefLen {
		return Ref{}, fmt.Errorf("%w: reference is %d bytes, at most %d allowed", ErrInvalidRef, len(s), maxRefLen)
	}
	shown := Redact(s) // every message names the reference without its credentials
	if !utf8.ValidString(s) {
		return Ref{}, fmt.Errorf("%w: reference %q is not valid UTF-8", ErrInvalidRef, shown)
	}
	for i, c := range s {
		if c < 0x20 || c == 0x7f {
			return Ref{}, fmt.Errorf("%w: reference %q has control character %#x at byte %d", ErrInvalidRef, shown, c, i)
		}
	}
	scheme, rest, ok := splitScheme(s)
	if !ok {
		return Ref{Scheme: SchemeFile, Path: s, bare: true}, nil
	}
	switch scheme {
	case SchemeS3:
		return parseS3(s, shown, rest)
	case SchemeFile:
		return parseFileURL(s, shown)
	case SchemeHTTP, SchemeHTTPS:
		return parseHTTP(s, shown, scheme)
	default:
		return Ref{}, fmt.Errorf("%w: %q in %q (accepted: file, http, https, s3)", ErrUnsupportedScheme, scheme, shown)
	}
}

// splitScheme recognises an RFC 3986 scheme prefix ("name:"). A reference
// without one is a path.
func splitScheme(s string) (scheme, rest string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 {
		return "", "", false
	}
	for j := 0; j < i; j++ {
		c := s[j]
		isAlpha := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if j == 0 && !isAlpha || !isAlpha && !(c >= '0' && c <= '9') && c != '+' && c != '-' && c != '.' {
			return "", "", false
		}
	}
	return strings.ToLower(s[:i]), s[i+1:], true
}

func parseS3(s, shown, rest string) (Ref, error) {
	if !strings.HasPrefix(rest, "//") {
		return Ref{}, fmt.Errorf("%w: %q: want s3://bucket/key", ErrInvalidRef, shown)
	}
	bucket, key, ok := strings.Cut(rest[2:], "/")
	if !ok || key == "" {
		return Ref{}, fmt.Errorf("%w: %q: missing object key (want s3://bucket/key)", ErrInvalidRef, shown)
	}
	if strings.Contains(bucket, "@") {
		return Ref{}, fmt.Errorf("%w: %q: credentials in the reference are refused", ErrInvalidRef, shown)
	}
	if err := checkBucket(bucket); err != nil {
		return Ref{}, fmt.Errorf("%w: %q: %v", ErrInvalidRef, shown, err)
	}
	if len(key) > 1024 {
		return Ref{}, fmt.Errorf("%w: %q: object key is %d bytes, S3 allows 1024", ErrInvalidRef, shown, len(key))
	}
	if i := strings.IndexAny(key, "?#"); i >= 0 {
		return Ref{}, fmt.Errorf("%w: %q: %q in the object key is refused (no versions or fragments)", ErrInvalidRef, shown, key[i])
	}
	if err := checkSegments(key); err != nil {
		return Ref{}, fmt.Errorf("%w: %q: %v", ErrInvalidRef, shown, err)
	}
	return Ref{Scheme: SchemeS3, Host: bucket, Path: key}, nil
}

// checkBucket applies S3's bucket naming rules, which also keep the bucket
// safe to use as a DNS label in virtual-hosted requests.
func checkBucket(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket name %q must be 3 to 63 characters", b)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return fmt.Errorf("bucket name %q has %q at byte %d (lowercase letters, digits, '.', '-' only)", b, c, i)
		}
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
	if !alnum(b[0]) || !alnum(b[len(b)-1]) {
		return fmt.Errorf("bucket name %q must start and end with a letter or digit", b)
	}
	if strings.Contains(b, "..") {
		return fmt.Errorf("bucket name %q has consecutive dots", b)
	}
	if net.ParseIP(b) != nil {
		return fmt.Errorf("bucket name %q is an IP address", b)
	}
	return nil
}

// checkSegments refuses "." and ".." segments: servers and proxies may
// normalise them away, so a prefix check on the raw path would not hold.
func checkSegments(p string) error {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("path %q has a %q segment", p, seg)
		}
	}
	return nil
}

func parseFileURL(s, shown string) (Ref, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Ref{}, fmt.Errorf("%w: %q: %v", ErrInvalidRef, shown, urlErrorCause(err))
	}
	if u.Opaque != "" {
		return Ref{}, fmt.Errorf("%w: %q: want file:///absolute/path", ErrInvalidRef, shown)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#") {
		return Ref{}, fmt.Errorf("%w: %q: file URLs take no user, query or fragment", ErrInvalidRef, shown)
	}
	if u.Host != "" && !strings.EqualFold(u.Host, "localhost") {
		return Ref{}, fmt.Errorf("%w: %q: file URL names host %q; only local files are read", ErrInvalidRef, shown, u.Host)
	}
	if !strings.HasPrefix(u.Path, "/") {
		return Ref{}, fmt.Errorf("%w: %q: file URL has no absolute path", ErrInvalidRef, shown)
	}
	return Ref{Scheme: SchemeFile, Path: u.Path}, nil
}

func parseHTTP(s, shown, scheme string) (Ref, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Ref{}, fmt.Errorf("%w: %q: %v", ErrInvalidRef, shown, urlErrorCause(err))
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return Ref{}, fmt.Errorf("%w: %q: want %s://host/path", ErrInvalidRef, shown, scheme)
	}
	if u.User != nil {
		return Ref{}, fmt.Errorf("%w: %q: credentials in the URL are refused", ErrInvalidRef, shown)
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return Ref{}, fmt.Errorf("%w: %q: fragments are refused", ErrInvalidRef, shown)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return Ref{}, fmt.Errorf("%w: %q: port %q out of range", ErrInvalidRef, shown, p)
		}
	}
	if strings.HasSuffix(u.Host, ":") {
		return Ref{}, fmt.Errorf("%w: %q: empty port", ErrInvalidRef, shown)
	}
	if err := checkSegments(u.Path); err != nil {
		return Ref{}, fmt.Errorf("%w: %q: %v", ErrInvalidRef, shown, err)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.ForceQuery && u.RawQuery == "" {
		return Ref{}, fmt.Errorf("%w: %q: empty query", ErrInvalidRef, shown)
	}
	return Ref{Scheme: scheme, Host: strings.ToLower(u.Host), Path: path, Query: u.RawQuery}, nil
}

// urlErrorCause is what url.Parse found wrong, without the URL its
// *url.Error quotes (which would show credentials).
func urlErrorCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// AllowList says which references may be fetched. It is deny-by-default: a
// reference must match one of its patterns.
type AllowList struct {
	rules []allowRule
}

type allowRule struct {
	scheme string
	host   string // "" for file; "*" any host; "*.example.com" any subdomain
	prefix string // path or key prefix; "" matches everything
}

// NewAllowList parses allow patterns:
//
//	file                              local paths and file:// URLs (confined to the kernel root by File)
//	https://artifacts.example.com     any path on that host (and port, if one is given)
//	https://*.example.com/kernels/    subdomains of example.com, paths under /kernels/
//	http://*                          plain HTTP to any host (the dial-time address checks still apply)
//	s3://esper-artifacts/kernels/     objects in that bucket whose key starts with kernels/
//
// A path prefix matches whole segments: /kernels matches /kernels and
// /kernels/x but not /kernels2.
func NewAllowList(patterns ...string) (*AllowList, error) {
	a := &AllowList{}
	for _, p := range patterns {
		r, err := parseAllowRule(p)
		if err != nil {
			return nil, err
		}
		a.rules = append(a.rules, r)
	}
	return a, nil
}

func parseAllowRule(p string) (allowRule, error) {
	bad := func(why string) (allowRule, error) {
		return allowRule{}, fmt.Errorf("allow pattern %q: %s", p, why)
	}
	if p == SchemeFile || p == "file://" {
		return allowRule{scheme: SchemeFile}, nil
	}
	scheme, rest, ok := strings.Cut(p, "://")
	if !ok {
		return bad("want file, scheme://host[/prefix] or s3://bucket[/prefix]")
	}
	scheme = strings.ToLower(scheme)
	host, prefix, _ := strings.Cut(rest, "/")
	switch scheme {
	case SchemeHTTP, SchemeHTTPS:
		host = strings.ToLower(host)
		if host == "" {
			return bad("no host (use * for any host)")
		}
		if strings.Contains(host, "*") && host != "*" && (!strings.HasPrefix(host, "*.") || strings.Count(host, "*") != 1) {
			return bad("a wildcard must be the whole host or a leading *.")
		}
		if strings.ContainsAny(host, "@?#") {
			return bad("host has '@', '?' or '#'")
		}
		if prefix != "" {
			prefix = "/" + prefix
		}
	case SchemeS3:
		if err := checkBucket(host); err != nil {
			return bad(err.Error())
		}
	default:
		return bad("scheme must be file, http, https or s3")
	}
	if err := checkSegments(prefix); err != nil {
		return bad(err.Error())
	}
	return allowRule{scheme: scheme, host: host, prefix: prefix}, nil
}

// Check returns nil when ref matches a pattern, and an error wrapping
// ErrNotAllowed otherwise.
func (a *AllowList) Check(ref Ref) error {
	if a != nil {
		for _, r := range a.rules {
			if r.matches(ref) {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: %s matches no allowed scheme, host or prefix", ErrNotAllowed, ref.Redacted())
}

func (r allowRule) matches(ref Ref) bool {
	if r.scheme != ref.Scheme {
		return false
	}
	if r.scheme == SchemeFile {
		return true
	}
	if !r.hostMatches(ref.Host) {
		return false
	}
	return prefixMatches(r.prefix, ref.Path)
}

func (r allowRule) hostMatches(host string) bool {
	switch {
	case r.host == "*":
		return true
	case r.scheme == SchemeS3:
		return r.host == host
	}
	h, port := splitHostPort(host)
	rh, rport := splitHostPort(r.host)
	if rport == "" {
		rport = defaultPort(r.scheme)
	}
	if port == "" {
		port = defaultPort(r.scheme)
	}
	if rport != port {
		return false
	}
	if suffix, ok := strings.CutPrefix(rh, "*"); ok {
		return strings.HasSuffix(h, suffix) && len(h) > len(suffix)
	}
	return h == rh
}

func splitHostPort(hp string) (host, port string) {
	if h, p, err := net.SplitHostPort(hp); err == nil {
		return strings.Trim(h, "[]"), p
	}
	return strings.Trim(hp, "[]"), ""
}

func defaultPort(scheme string) string {
	if scheme == SchemeHTTPS {
		return "443"
	}
	return "80"
}

func prefixMatches(prefix, p string) bool {
	if prefix == "" || prefix == "/" {
		return true
	}
	if !strings.HasPrefix(p, prefix) {
		return false
	}
	return strings.HasSuffix(prefix, "/") || len(p) == len(prefix) || p[len(prefix)] == '/'
}
