package wiretensor

import (
	"math/bits"
	"sync"
)

// Large tensors are decoded into, and computed into, pooled buffers: a
// megabyte allocated per request costs more than the request's own work
// (zeroing, and the page faults of memory the Go runtime handed back to
// the kernel since the last one), and leaves garbage for the collector.
// Buffers come in power-of-two classes of element counts; smaller tensors
// are allocated as usual, larger ones are not kept.
const (
	minPooledLog = 12 // 4096 elements, 16 KiB
	maxPooledLog = 24 // 16 Mi elements, 64 MiB
)

// MaxPooledFP32 is the largest buffer GetFP32 pools, in elements.
const MaxPooledFP32 = 1 << maxPooledLog

var fp32Pools [maxPooledLog - minPooledLog + 1]sync.Pool

// FP32Buffer is a []float32 of a requested length, from a pool when its
// size is pooled. Its contents are unspecified: the caller writes every
// element before reading any. Release gives it back; Data must not be used
// after, nor kept by anything that outlives the request.
type FP32Buffer struct {
	// Data holds the requested elements.
	Data []float32
	pool *sync.Pool // nil: not pooled
}

// GetFP32 returns a buffer of n elements (n ≥ 0).
func GetFP32(n int) FP32Buffer {
	if n < 1<<minPooledLog || n > MaxPooledFP32 {
		return FP32Buffer{Data: make([]float32, n)}
	}
	class := bits.Len(uint(n - 1)) // smallest c with n ≤ 1<<c
	p := &fp32Pools[class-minPooledLog]
	if s, ok := p.Get().(*[]float32); ok {
		return FP32Buffer{Data: (*s)[:n], pool: p}
	}
	return FP32Buffer{Data: make([]float32, n, 1<<class), pool: p}
}

// Release returns the buffer to its pool. A zero FP32Buffer's Release
// does nothing; Release must be called at most once.
func (b FP32Buffer) Release() {
	if b.pool == nil {
		return
	}
	s := b.Data[:0]
	b.pool.Put(&s)
}
