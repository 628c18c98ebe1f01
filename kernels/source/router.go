package source

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Router is a Source that checks a reference against its AllowList and hands
// it to the source registered for its scheme. Bare paths have scheme file.
type Router struct {
	allow   *AllowList
	sources map[string]Source
	log     *slog.Logger
}

// NewRouter returns a router. routes maps schemes (file, http, https, s3) to
// sources; a scheme without a route is refused even when allowed. allow must
// not be nil: refusing everything by accident is better than fetching
// anything. logger may be nil.
func NewRouter(allow *AllowList, routes map[string]Source, logger *slog.Logger) (*Router, error) {
	if allow == nil {
		return nil, fmt.Errorf("kernel source router: no allow list")
	}
	sources := make(map[string]Source, len(routes))
	for scheme, src := range routes {
		switch scheme {
		case SchemeFile, SchemeHTTP, SchemeHTTPS, SchemeS3:
		default:
			return nil, fmt.Errorf("kernel source router: %w %q", ErrUnsupportedScheme, scheme)
		}
		if src == nil {
			return nil, fmt.Errorf("kernel source router: nil source for %q", scheme)
		}
		sources[scheme] = src
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Router{allow: allow, sources: sources, log: logger}, nil
}

// Fetch parses ref, checks it against the allow list, and fetches it from the
// source for its scheme.
func (r *Router) Fetch(ctx context.Context, ref string) (Blob, error) {
	parsed, err := ParseRef(ref)
	if err != nil {
		return Blob{}, err
	}
	if err := r.allow.Check(parsed); err != nil {
		r.log.LogAttrs(ctx, slog.LevelWarn, "kernel reference refused",
			slog.String("ref", parsed.Redacted()), slog.String("reason", err.Error()))
		return Blob{}, err
	}
	src, ok := r.sources[parsed.Scheme]
	if !ok {
		return Blob{}, fmt.Errorf("%w: no %s source is configured for %s", ErrUnsupportedScheme, parsed.Scheme, parsed)
	}
	start := time.Now()
	b, err := src.Fetch(ctx, parsed.String())
	if err != nil {
		return Blob{}, err
	}
	r.log.LogAttrs(ctx, slog.LevelDebug, "kernel fetched",
		slog.String("ref", parsed.Redacted()), slog.String("origin", b.Origin),
		slog.Int64("bytes", b.Size), slog.String("sha256", b.SHA256),
		slog.Duration("took", time.Since(start)))
	return b, nil
}
