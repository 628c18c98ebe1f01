package wiretensor

import (
	"encoding/binary"
	"math"
	"runtime"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/failure"
)

func TestParseDatatype(t *testing.T) {
	cases := []struct {
		name  string
		want  Datatype
		class failure.Class
		ok    bool
	}{
		{"FP32", FP32, 0, true},
		{"FP16", FP16, 0, true},
		{"BF16", BF16, 0, true},
		{"FP64", FP64, 0, true},
		{"INT8", 0, failure.Unsupported, false},
		{"BYTES", 0, failure.Unsupported, false},
		{"fp32", 0, failure.BadInput, false},
		{"", 0, failure.BadInput, false},
	}
	for _, c := range cases {
		got, err := ParseDatatype("inputs[0].datatype", c.name)
		if c.ok {
			if err != nil || got != c.want || got.String() != c.name {
				t.Errorf("%q: got %v, %v", c.name, got, err)
			}
			continue
		}
		if failure.ClassOf(err) != c.class || !strings.HasPrefix(err.Error(), "inputs[0].datatype: ") {
			t.Errorf("%q: error %v (class %v), want class %v naming the field", c.name, err, failure.ClassOf(err), c.class)
		}
	}
}

func TestCount(t *testing.T) {
	cases := []struct {
		shape []int64
		max   int64
		want  int64
		err   string
	}{
		{[]int64{2, 3}, 100, 6, ""},
		{[]int64{0, 64}, 100, 0, ""},
		{[]int64{10, 10}, 100, 100, ""},
		{[]int64{10, 11}, 100, 0, "more than the limit of 100 elements"},
		{[]int64{101}, 100, 0, "more than the limit of 100 elements"},
		{nil, 100, 0, "shape: missing"},
		{[]int64{1, 1, 1, 1, 1, 1, 1, 1, 1}, 100, 0, "9 dimensions"},
		{[]int64{4, -1}, 100, 0, "shape[1]: negative dimension -1"},
		// The product overflows int64 if computed naively.
		{[]int64{1 << 40, 1 << 40, 0}, 100, 0, "more than the limit of 100 elements"},
		{[]int64{math.MaxInt64, 2}, math.MaxInt64, 0, "more than the limit"},
	}
	for _, c := range cases {
		got, err := Count("shape", c.shape, c.max)
		if c.err == "" {
			if err != nil || got != c.want {
				t.Errorf("%v: got %d, %v; want %d", c.shape, got, err, c.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) || !failure.Is(err, failure.BadInput) {
			t.Errorf("%v: error %v, want BadInput containing %q", c.shape, err, c.err)
		}
	}
}

func TestDecodeEveryDatatype(t *testing.T) {
	want := []float32{0, -1.5, 2, float32(math.Inf(1))}
	le := func(size int, put func(b []byte, v float32)) []byte {
		b := make([]byte, size*len(want))
		for i, v := range want {
			put(b[size*i:], v)
		}
		return b
	}
	cases := map[Datatype][]byte{
		FP32: le(4, func(b []byte, v float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(v)) }),
		FP64: le(8, func(b []byte, v float32) { binary.LittleEndian.PutUint64(b, math.Float64bits(float64(v))) }),
		BF16: le(2, func(b []byte, v float32) { binary.LittleEndian.PutUint16(b, uint16(math.Float32bits(v)>>16)) }),
		// 0, -1.5, 2, +Inf in binary16.
		FP16: {0x00, 0x00, 0x00, 0xbe, 0x00, 0x40, 0x00, 0x7c},
	}
	for d, b := range cases {
		got := make([]float32, len(want))
		if err := Decode("x", got, b, d); err != nil {
			t.Fatalf("%v: %v", d, err)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%v[%d] = %v, want %v", d, i, got[i], want[i])
			}
		}
		if err := Decode("x", got, b[:len(b)-1], d); !failure.Is(err, failure.BadInput) {
			t.Errorf("%v with a byte missing: %v", d, err)
		}
	}
	big := make([]byte, 8)
	binary.LittleEndian.PutUint64(big, math.Float64bits(1e39))
	if err := Decode("x", make([]float32, 1), big, FP64); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("FP64 1e39: %v", err)
	}
	if err := NarrowFP64("x", make([]float32, 2), []float64{1, -1e39}); err == nil || !strings.Contains(err.Error(), "element 1") {
		t.Errorf("NarrowFP64 -1e39: %v", err)
	}
}

func TestFP32RoundTrip(t *testing.T) {
	src := []float32{1, float32(math.NaN()), float32(math.Copysign(0, -1)), math.MaxFloat32, math.SmallestNonzeroFloat32}
	b := AppendFP32([]byte("head"), src)
	if string(b[:4]) != "head" || len(b) != 4+4*len(src) {
		t.Fatalf("AppendFP32 wrote %d bytes", len(b))
	}
	for i, v := range src {
		if got := binary.LittleEndian.Uint32(b[4+4*i:]); got != math.Float32bits(v) {
			t.Errorf("element %d: %#x, want %#x", i, got, math.Float32bits(v))
		}
	}
	back := make([]float32, len(src))
	if err := Decode("x", back, b[4:], FP32); err != nil {
		t.Fatal(err)
	}
	for i := range src {
		if math.Float32bits(back[i]) != math.Float32bits(src[i]) {
			t.Errorf("element %d changed: %v", i, back[i])
		}
	}
}

func TestFP32ViewAndBytes(t *testing.T) {
	src := []float32{1, -2, 3.5}
	b := FP32Bytes(src)
	if len(b) != 12 || binary.LittleEndian.Uint32(b[4:]) != math.Float32bits(-2) {
		t.Fatalf("FP32Bytes = %v", b)
	}
	buf := make([]byte, 16) // 16 bytes and more are 8-aligned; smaller may be packed
	copy(buf, b)
	v, ok := FP32View(buf[:12])
	if ok && (len(v) != 3 || v[2] != 3.5) {
		t.Fatalf("FP32View = %v", v)
	}
	if !littleEndian {
		return
	}
	if !ok {
		t.Fatal("an aligned view was refused")
	}
	if _, ok := FP32View(buf[1:13]); ok {
		t.Fatal("a misaligned view was given")
	}
	if _, ok := FP32View(buf[:11]); ok {
		t.Fatal("a view of 11 bytes was given")
	}
	if v, ok := FP32View(nil); !ok || len(v) != 0 {
		t.Fatal("the empty view")
	}
}

func TestCheckShape(t *testing.T) {
	cases := []struct {
		shape    []int64
		per      []int
		maxBatch int
		class    failure.Class
		ok       bool
	}{
		{[]int64{3, 4}, []int{4}, 8, 0, true},
		{[]int64{3, 5}, []int{4}, 8, failure.BadInput, false},
		{[]int64{3, 4, 1}, []int{4}, 8, failure.BadInput, false},
		{[]int64{9, 4}, []int{4}, 8, failure.TooLarge, false},
		{[]int64{9, 4}, []int{4}, 0, 0, true},
		{[]int64{1, 4, 7}, nil, 1, 0, true},
		{[]int64{1 << 40, 0}, nil, 8, failure.TooLarge, false},
	}
	for _, c := range cases {
		err := CheckShape("inputs[0].shape", c.shape, "m", c.per, c.maxBatch)
		if c.ok != (err == nil) || (!c.ok && failure.ClassOf(err) != c.class) {
			t.Errorf("%v against %v (max %d): %v", c.shape, c.per, c.maxBatch, err)
		}
	}
}

func TestHalfToFloat32IsExactForEveryValue(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		got := halfToFloat32(uint16(h))
		exp := (h >> 10) & 0x1f
		mant := h & 0x3ff
		var want float64
		switch {
		case exp == 0x1f && mant == 0:
			want = math.Inf(1)
		case exp == 0x1f:
			if got == got {
				t.Fatalf("%#04x: got %v, want NaN", h, got)
			}
			continue
		case exp == 0:
			want = math.Ldexp(float64(mant), -24)
		default:
			want = math.Ldexp(float64(mant|0x400), exp-25)
		}
		if h&0x8000 != 0 {
			want = -want
		}
		if float64(got) != want || math.Signbit(float64(got)) != (h&0x8000 != 0) {
			t.Fatalf("%#04x: got %v, want %v", h, got, want)
		}
	}
}

// FuzzDecode: whatever the declared shape, datatype and bytes, Decode and
// Count either accept consistently or refuse with a classified error.
func FuzzDecode(f *testing.F) {
	f.Add("FP32", int64(2), int64(2), make([]byte, 16))
	f.Add("FP16", int64(1), int64(4), []byte{0, 0x3c, 0, 0xc0, 1, 0, 0, 0x7c})
	f.Add("FP64", int64(1), int64(1), []byte{0, 0, 0, 0, 0, 0, 0xf0, 0x7f})
	f.Add("INT8", int64(1), int64(1), []byte{1})
	f.Add("FP32", int64(-1), int64(4), make([]byte, 16))
	f.Add("BF16", int64(1<<40), int64(1<<40), make([]byte, 2))
	f.Fuzz(func(t *testing.T, name string, d0, d1 int64, b []byte) {
		d, err := ParseDatatype("dt", name)
		if err != nil {
			if c := failure.ClassOf(err); c != failure.BadInput && c != failure.Unsupported {
				t.Fatalf("datatype %q: class %v", name, c)
			}
			return
		}
		n, err := Count("shape", []int64{d0, d1}, 1<<16)
		if err != nil {
			if !failure.Is(err, failure.BadInput) {
				t.Fatalf("shape: class %v", failure.ClassOf(err))
			}
			return
		}
		if n != d0*d1 || n > 1<<16 {
			t.Fatalf("Count(%d×%d) = %d", d0, d1, n)
		}
		dst := make([]float32, n)
		err = Decode("x", dst, b, d)
		if (int64(len(b)) == ByteSize(n, d)) != (err == nil) && !strings.Contains(errString(err), "out of range") {
			t.Fatalf("%d bytes for %d %v elements: %v", len(b), n, d, err)
		}
		if err != nil && !failure.Is(err, failure.BadInput) {
			t.Fatalf("class %v", failure.ClassOf(err))
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestGetFP32(t *testing.T) {
	tests := []struct {
		n, wantCap int
		pooled     bool
	}{
		{n: 0, wantCap: 0},
		{n: 64, wantCap: 64},                   // small: allocated as asked
		{n: 4096, wantCap: 4096, pooled: true}, // the smallest class
		{n: 4097, wantCap: 8192, pooled: true},
		{n: 256 * 1024, wantCap: 256 * 1024, pooled: true},
		{n: MaxPooledFP32, wantCap: MaxPooledFP32, pooled: true},
		{n: MaxPooledFP32 + 1, wantCap: MaxPooledFP32 + 1}, // too large to keep
	}
	for _, tt := range tests {
		b := GetFP32(tt.n)
		if len(b.Data) != tt.n || cap(b.Data) != tt.wantCap || (b.class != 0) != tt.pooled {
			t.Errorf("GetFP32(%d): len %d cap %d pooled %v, want len %d cap %d pooled %v",
				tt.n, len(b.Data), cap(b.Data), b.class != 0, tt.n, tt.wantCap, tt.pooled)
		}
		b.Release()
	}
	// A buffer given back serves a later request of its class, at the
	// length asked, even after garbage collections (which empty a
	// sync.Pool).
	b := GetFP32(5000)
	first := &b.Data[:1][0]
	b.Release()
	runtime.GC()
	runtime.GC()
	c := GetFP32(6000)
	if len(c.Data) != 6000 || cap(c.Data) != 8192 || &c.Data[0] != first {
		t.Errorf("after a release and two collections: len %d cap %d, reused %v", len(c.Data), cap(c.Data), &c.Data[0] == first)
	}
	c.Release()
	// The free lists keep at most maxPooledBytes.
	var held []FP32Buffer
	for range 2 * maxPooledBytes / (4 << 20) {
		held = append(held, GetFP32(1<<20)) // 4 MiB each
	}
	for _, h := range held {
		h.Release()
	}
	if n := pooledBytes.Load(); n > maxPooledBytes || n < maxPooledBytes/2 {
		t.Errorf("free lists hold %d bytes; the bound is %d", n, maxPooledBytes)
	}
	FP32Buffer{}.Release() // the zero buffer: nothing to give back
}
