package wiretensor

import (
	"math/bits"
	"sync/atomic"
)

// Large tensors are decoded into, and computed into, pooled buffers: a
// megabyte allocated per request costs more than the request's own work
// (zeroing, and the page faults of memory the Go runtime handed back to
// the kernel since the last one), and leaves garbage for the collector.
// Buffers come in power-of-two classes of element counts; smaller tensors
// are allocated as usual, larger ones are not kept.
//
// The pool is a free list per class rather than a sync.Pool: a sync.Pool
// is emptied by every other garbage collection, and a host answering
// other large requests (gRPC answers carry their own output buffers)
// collects often enough that its buffers would rarely survive from one
// request to the next. What the free lists keep is bounded by
// maxPooledBytes; a buffer released past it is left to the collector.
const (
	minPooledLog   = 12       // 4096 elements, 16 KiB
	maxPooledLog   = 24       // 16 Mi elements, 64 MiB
	maxPooledBytes = 64 << 20 // kept in the free lists at most, all classes together
	perClass       = 64       // free list slots per class (bounded by maxPooledBytes first)
)

// MaxPooledFP32 is the largest buffer GetFP32 pools, in elements.
const MaxPooledFP32 = 1 << maxPooledLog

var (
	freeLists   [maxPooledLog - minPooledLog + 1]chan []float32
	pooledBytes atomic.Int64 // in the free lists now
)

func init() {
	for i := range freeLists {
		freeLists[i] = make(chan []float32, perClass)
	}
}

// FP32Buffer is a []float32 of a requested length, from a pool when its
// size is pooled. Its contents are unspecified: the caller writes every
// element before reading any. Release gives it back; Data must not be used
// after, nor kept by anything that outlives the request.
type FP32Buffer struct {
	// Data holds the requested elements.
	Data  []float32
	class int // 1 + its free list's index; 0: not pooled
}

// GetFP32 returns a buffer of n elements (n ≥ 0).
func GetFP32(n int) FP32Buffer {
	if n < 1<<minPooledLog || n > MaxPooledFP32 {
		return FP32Buffer{Data: make([]float32, n)}
	}
	c := bits.Len(uint(n-1)) - minPooledLog // smallest class holding n
	select {
	case s := <-freeLists[c]:
		pooledBytes.Add(-4 * int64(cap(s)))
		return FP32Buffer{Data: s[:n], class: c + 1}
	default:
		return FP32Buffer{Data: make([]float32, n, 1<<(c+minPooledLog)), class: c + 1}
	}
}

// Release returns the buffer to its free list, when the lists' bound
// allows. A zero FP32Buffer's Release does nothing; Release must be called
// at most once.
func (b FP32Buffer) Release() {
	if b.class == 0 {
		return
	}
	size := 4 * int64(cap(b.Data))
	if pooledBytes.Add(size) > maxPooledBytes {
		pooledBytes.Add(-size)
		return
	}
	select {
	case freeLists[b.class-1] <- b.Data[:0]:
	default:
		pooledBytes.Add(-size)
	}
}
