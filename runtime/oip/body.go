package oip

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esper/kasmina-host/runtime/failure"
)

// Request bodies are read as their bytes arrive, into pooled buffers that
// grow with what really came: a declared Content-Length only picks the
// first buffer, and only up to firstChunk, so headers promising 64 MiB
// followed by a trickle of bytes hold a few KiB, not 64 MiB. Every buffer
// is charged to one budget shared by all connections before it is
// allocated; past it a request is answered 503 with Retry-After (or 413
// when its body alone could never fit), so a flood of large or slow bodies
// cannot exhaust memory. A body that does not arrive within
// BodyReadTimeout is given up with 408, whatever its headers said.

// bufClasses are the pooled buffer sizes, each four times the one before;
// larger buffers grow by doubling and are not pooled.
var bufClasses = [...]int{4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20}

// firstChunk caps the first buffer of a body whose length is declared.
const firstChunk = 64 << 10

// maxDocumentBody caps the bodies of routes that take a JSON document
// rather than tensors (the repository routes, /v1/kernels, the placement
// plan): such documents are a few KiB.
const maxDocumentBody = 1 << 20

var bufPools [len(bufClasses)]sync.Pool

// classOf returns the index of the smallest class of at least n bytes, or
// -1 when n is larger than every class.
func classOf(n int) int {
	for i, c := range bufClasses {
		if n <= c {
			return i
		}
	}
	return -1
}

// getBuf returns an empty buffer of n bytes' capacity and the pool's
// handle for it: a pooled one when n is a class size, else a new one (nil
// handle).
func getBuf(n int) ([]byte, *[]byte) {
	i := classOf(n)
	if i < 0 || bufClasses[i] != n {
		return make([]byte, 0, n), nil
	}
	if p, ok := bufPools[i].Get().(*[]byte); ok {
		return (*p)[:0], p
	}
	return make([]byte, 0, n), new([]byte)
}

// putBuf pools b under its handle when its capacity is still the class
// size it came with (a buffer that an append grew is left to the GC).
func putBuf(b []byte, p *[]byte) {
	if p == nil {
		return
	}
	if i := classOf(cap(b)); i >= 0 && cap(b) == bufClasses[i] {
		*p = b[:0]
		bufPools[i].Put(p)
	}
}

// bodyBudget bounds the bytes of request-body buffers held at once across
// every connection.
type bodyBudget struct {
	limit int64
	held  atomic.Int64
	gauge func(delta float64) // the held-bytes metric; may be nil
}

// take charges n bytes, or reports false when they do not fit now.
func (b *bodyBudget) take(n int64) bool {
	for {
		cur := b.held.Load()
		if cur+n > b.limit {
			return false
		}
		if b.held.CompareAndSwap(cur, cur+n) {
			if b.gauge != nil {
				b.gauge(float64(n))
			}
			return true
		}
	}
}

// give returns n charged bytes.
func (b *bodyBudget) give(n int64) {
	if n == 0 {
		return
	}
	b.held.Add(-n)
	if b.gauge != nil {
		b.gauge(-float64(n))
	}
}

// body is a request body held in a pooled buffer charged to the budget.
// The handler that read it calls release when it no longer needs buf (or
// what it wrote into buf after the body: the inference route encodes its
// answer there).
type body struct {
	buf     []byte
	pooled  *[]byte // the pool's handle for buf (nil: not pooled)
	charged int64
	budget  *bodyBudget
}

// release gives the buffer back to its pool and its charge to the budget.
func (b *body) release() {
	if b == nil || b.budget == nil {
		return
	}
	putBuf(b.buf, b.pooled)
	b.buf, b.pooled = nil, nil
	b.budget.give(b.charged)
	b.charged = 0
	b.budget = nil
}

// grow replaces b.buf with a buffer of n bytes holding the same data,
// charging the difference to the budget before allocating. (The old
// buffer is returned to its pool right after the copy.)
func (b *body) grow(n int) error {
	if !b.budget.take(int64(n) - b.charged) {
		return errBudget(b.budget)
	}
	nb, p := getBuf(n)
	nb = append(nb, b.buf...)
	putBuf(b.buf, b.pooled)
	b.buf, b.pooled, b.charged = nb, p, int64(n)
	return nil
}

// errBudget is the answer when the budget is spent: 503 with Retry-After.
func errBudget(b *bodyBudget) error {
	return failure.Errorf(failure.Unavailable, "the server holds %d bytes of request bodies, its limit of %d; retry later", b.held.Load(), b.limit)
}

// bodyTimeoutError is a body that did not arrive in time (408).
type bodyTimeoutError struct {
	after time.Duration
	got   int
}

func (e *bodyTimeoutError) Error() string {
	return fmt.Sprintf("the request body did not arrive within %s (%d bytes came); the connection is closed", e.after, e.got)
}

// readBody reads the whole request body, capped at limit bytes (larger:
// 413), as described at the top of this file. The caller must release
// the result, also when err is not nil. (A value, not a pointer: one
// allocation less per request.)
func (s *server) readBody(w http.ResponseWriter, r *http.Request, limit int64) (b body, err error) {
	b = body{budget: s.budget}
	declared := r.ContentLength // -1 when unknown
	if declared == 0 || r.Body == nil || r.Body == http.NoBody {
		return b, nil
	}
	timeout := s.opts.BodyReadTimeout
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(timeout)) == nil {
		defer func() {
			if err == nil {
				// The handler reads nothing more; net/http sets the next
				// request's deadlines itself.
				_ = rc.SetReadDeadline(time.Time{})
				return
			}
			// What is left of a refused body is not worth waiting for:
			// net/http would try to drain it after the answer.
			w.Header().Set("Connection", "close")
			_ = rc.SetReadDeadline(time.Now())
		}()
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return b, failure.Errorf(failure.Unsupported, "Content-Encoding %q; send the body uncompressed", ce)
	}
	if declared > limit {
		return b, tooLarge(limit)
	}
	if declared > s.budget.limit {
		return b, failure.Errorf(failure.TooLarge, "request body too large: %d bytes is more than the server holds for all requests at once (%d)", declared, s.budget.limit)
	}
	for {
		if len(b.buf) == cap(b.buf) {
			if declared >= 0 && int64(len(b.buf)) == declared && len(b.buf) > 0 {
				return b, nil // net/http never yields more than Content-Length
			}
			next := nextSize(len(b.buf), declared)
			next = int(min(int64(next), limit+1, s.budget.limit)) // one byte past the limit tells it is over
			if next <= len(b.buf) {
				return b, failure.Errorf(failure.TooLarge, "request body too large: more than the server holds for all requests at once (%d bytes)", s.budget.limit)
			}
			if err := b.grow(next); err != nil {
				return b, err
			}
		}
		n, err := r.Body.Read(b.buf[len(b.buf):cap(b.buf)])
		b.buf = b.buf[:len(b.buf)+n]
		if int64(len(b.buf)) > limit {
			return b, tooLarge(limit)
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return b, nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			return b, &bodyTimeoutError{after: timeout, got: len(b.buf)}
		default:
			return b, failure.Errorf(failure.BadInput, "reading the request body: %v", err)
		}
	}
}

// nextSize is the size of the buffer that follows a full one of n bytes:
// the first is a class size up to firstChunk (the smallest class when the
// length is unknown); then the next class, so that buffers come from the
// pools and hold at most four times what arrived; past the classes, twice
// as much, but never more than a declared length.
func nextSize(n int, declared int64) int {
	switch {
	case n == 0 && declared > 0:
		return bufClasses[classOf(int(min(declared, firstChunk)))]
	case n == 0:
		return bufClasses[0]
	}
	if i := classOf(n + 1); i >= 0 {
		return bufClasses[i]
	}
	next := 2 * n
	if declared > 0 {
		next = int(min(int64(next), declared))
	}
	return next
}

func tooLarge(limit int64) error {
	return failure.Errorf(failure.TooLarge, "request body too large: more than the %d bytes allowed", limit)
}
