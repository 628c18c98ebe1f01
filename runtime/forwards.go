package runtime

import (
	"container/list"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync"
	"time"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the kept-forward bounds (Config.KeptForwards,
// KeptForwardBytes, KeptForwardTTL).
const (
	DefaultKeptForwards     = 1024
	DefaultKeptForwardBytes = 256 << 20
	DefaultKeptForwardTTL   = time.Minute
)

// keptForward is a layer forward kept for a later backward (keep_forward):
// the kernels, executors and applied alphas the forward used, with each
// seed's tape, so that a swap, an unload or an alpha change in between
// does not change the backward.
type keptForward struct {
	id, layer string
	batch     int
	// inShape and outShape are the per-sample shapes; inSize and outSize
	// their element counts.
	inShape, outShape []int
	inSize, outSize   int
	seeds             []keptSeed
	blend             Blend
	hasDefault        bool
	bytes             int64
	expires           time.Time

	// mu makes one backward at a time on the tapes (a tape serves one
	// call at a time); consumed is set, under mu, by the backward that
	// used the forward up.
	mu       sync.Mutex
	consumed bool

	elem *list.Element // its place in the store's order; nil once dropped
}

// keptSeed is one contributing seed of a kept forward.
type keptSeed struct {
	idx   int
	l     *loaded
	exec  Executor
	alpha float32
	tape  Tape // nil when the seed's alpha is 0: it adds nothing to a gradient
}

// keptOverhead is what a kept forward costs besides its tapes, counted
// against the byte bound so that many forwards with empty tapes (linear
// kernels record nothing) still fill it.
const keptOverhead = 512

// forwardStore keeps layer forwards for their backward, bounded by count
// and bytes (the oldest go first) and by age. It remembers why the most
// recent ids it dropped went, so that a late backward is told.
type forwardStore struct {
	mu       sync.Mutex
	maxCount int
	maxBytes int64
	ttl      time.Duration
	byID     map[string]*keptForward
	order    *list.List // of *keptForward, oldest first
	bytes    int64

	gone      map[string]string // id → why it is no longer kept
	goneOrder []string
	evicted   int64 // forwards dropped for room, for the metric
	expired   int64 // forwards dropped for age
}

// maxGone bounds the dropped ids a store remembers.
const maxGone = 4096

func newForwardStore(maxCount int, maxBytes int64, ttl time.Duration) *forwardStore {
	return &forwardStore{maxCount: maxCount, maxBytes: maxBytes, ttl: ttl,
		byID: make(map[string]*keptForward), order: list.New(), gone: make(map[string]string)}
}

// newForwardID returns an unguessable id: a forward is reachable by
// whoever holds its id.
func newForwardID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// fits reports whether a forward of n bytes can ever be kept.
func (s *forwardStore) fits(n int64) error {
	if n > s.maxBytes {
		return failure.Errorf(failure.TooLarge, "keeping this forward for a backward needs %s, over the host's bound of %s for kept forwards (--kept-forward-bytes); send input and grad_output in one request instead",
			byteSize(n), byteSize(s.maxBytes))
	}
	return nil
}

// put keeps f, giving it an id and an expiry, after dropping expired
// forwards and then the oldest until it fits.
func (s *forwardStore) put(f *keptForward, now time.Time) (string, error) {
	f.bytes += keptOverhead
	if err := s.fits(f.bytes); err != nil {
		return "", err
	}
	f.id = newForwardID()
	f.expires = now.Add(s.ttl)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	for s.order.Len() > 0 && (s.order.Len() >= s.maxCount || s.bytes+f.bytes > s.maxBytes) {
		old := s.order.Front().Value.(*keptForward)
		s.dropLocked(old, "it was evicted to make room for newer forwards (the host keeps at most "+strconv.Itoa(s.maxCount)+" forwards and "+byteSize(s.maxBytes)+": --kept-forwards, --kept-forward-bytes)")
		s.evicted++
	}
	f.elem = s.order.PushBack(f)
	s.byID[f.id] = f
	s.bytes += f.bytes
	return f.id, nil
}

// get returns layer's kept forward id, or an error of class NotFound
// naming it and, when the store remembers, why it is gone.
func (s *forwardStore) get(layer, id string, now time.Time) (*keptForward, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.byID[id]
	if ok && !now.Before(f.expires) {
		s.dropLocked(f, "it expired ("+s.ttl.String()+" after its forward: --kept-forward-ttl)")
		s.expired++
		ok = false
	}
	if !ok {
		if why, known := s.gone[id]; known {
			return nil, failure.Errorf(failure.NotFound, "forward_id %q is not kept: %s", id, why)
		}
		return nil, failure.Errorf(failure.NotFound, "forward_id %q is not kept: unknown, or dropped long ago", id)
	}
	if f.layer != layer {
		return nil, failure.Errorf(failure.BadInput, "forward_id %q is a forward of layer %q, not of %q", id, f.layer, layer)
	}
	return f, nil
}

// consume drops f after the backward that used it up.
func (s *forwardStore) consume(f *keptForward) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(f, "a backward used it already (send retain_forward: true to keep a forward for several backwards)")
}

// sweep drops the expired forwards.
func (s *forwardStore) sweep(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
}

// sweepLocked drops the expired forwards: every forward lives as long, so
// they are the oldest.
func (s *forwardStore) sweepLocked(now time.Time) {
	for s.order.Len() > 0 {
		f := s.order.Front().Value.(*keptForward)
		if now.Before(f.expires) {
			return
		}
		s.dropLocked(f, "it expired ("+s.ttl.String()+" after its forward: --kept-forward-ttl)")
		s.expired++
	}
}

// dropLocked forgets f, remembering why.
func (s *forwardStore) dropLocked(f *keptForward, why string) {
	if f.elem == nil {
		return
	}
	s.order.Remove(f.elem)
	f.elem = nil
	delete(s.byID, f.id)
	s.bytes -= f.bytes
	s.gone[f.id] = why
	s.goneOrder = append(s.goneOrder, f.id)
	if len(s.goneOrder) > maxGone {
		delete(s.gone, s.goneOrder[0])
		s.goneOrder = s.goneOrder[1:]
	}
}

// keptStats are the store's numbers, for the metrics.
type keptStats struct {
	count            int
	bytes            int64
	evicted, expired int64
}

func (s *forwardStore) stats() keptStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return keptStats{count: s.order.Len(), bytes: s.bytes, evicted: s.evicted, expired: s.expired}
}

var (
	keptCountDesc = prometheus.NewDesc("kasmina_kept_forwards",
		"Layer forwards kept for a later backward (keep_forward).", nil, nil)
	keptBytesDesc = prometheus.NewDesc("kasmina_kept_forward_bytes",
		"Bytes held by the kept layer forwards (their seeds' tapes and bookkeeping).", nil, nil)
	keptDroppedDesc = prometheus.NewDesc("kasmina_kept_forwards_dropped_total",
		"Kept layer forwards dropped before a backward used them, by reason (evicted for room, expired).", []string{"reason"}, nil)
)

// Describe and Collect make the store a Prometheus collector, read at
// scrape time.
func (s *forwardStore) Describe(ch chan<- *prometheus.Desc) {
	ch <- keptCountDesc
	ch <- keptBytesDesc
	ch <- keptDroppedDesc
}

func (s *forwardStore) Collect(ch chan<- prometheus.Metric) {
	st := s.stats()
	ch <- prometheus.MustNewConstMetric(keptCountDesc, prometheus.GaugeValue, float64(st.count))
	ch <- prometheus.MustNewConstMetric(keptBytesDesc, prometheus.GaugeValue, float64(st.bytes))
	ch <- prometheus.MustNewConstMetric(keptDroppedDesc, prometheus.CounterValue, float64(st.evicted), "evicted")
	ch <- prometheus.MustNewConstMetric(keptDroppedDesc, prometheus.CounterValue, float64(st.expired), "expired")
}
