// Command asmgen generates gemm_amd64.s and stub_amd64.go, the assembly
// micro-kernels of package gemm, with avo. Run it through go generate in
// kernels/gemm:
//
//	go generate ./kernels/gemm/   (runs: go run ./internal/asmgen -pkg gemm -out gemm_amd64.s -stubs stub_amd64.go)
//
// Every kernel computes nt micro-tiles of rows×cols dot products between
// rows of A (m×k, row-major) and rows of Bᵀ (n×k, row-major). The
// accumulators for a tile live in vector registers (one per output), the
// k loop is vectorised along k, and at the end of the k block each row's
// (up to) four accumulators are reduced horizontally into one 4-lane XMM
// register, to which alpha, beta·C, the bias and ReLU are applied before the
// store. k elements beyond the last full vector are done one at a time after
// the reduction, so no load reaches past the end of a row.
package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

const signature = "func(a *float32, lda int, b *float32, ldb int, c *float32, ldc int, k int, nt int, alpha float32, beta float32, bias *float32, flags int)"

// Flag bits, as in driver.go.
const (
	flagLoadC = 1
	flagBias  = 2
	flagReLU  = 4
)

// isa describes one vector instruction set.
type isa struct {
	name  string
	lanes int                     // float32 lanes per vector
	mr    int                     // max rows per tile
	vec   func(i int) VecPhysical // vector register i at full width
	ymm   func(i int) VecPhysical
	xmm   func(i int) VecPhysical
	// extractHigh128 moves the upper 128 bits of a ymm into an xmm.
	extractHigh128 func(y, x Op)
}

func main() {
	avx2 := isa{
		name: "AVX2", lanes: 8, mr: 3,
		vec: ymmReg, ymm: ymmReg, xmm: xmmReg,
		extractHigh128: func(y, x Op) { VEXTRACTF128(Imm(1), y, x) },
	}
	avx512 := isa{
		name: "AVX512", lanes: 16, mr: 6,
		vec: zmmReg, ymm: ymmReg, xmm: xmmReg,
		extractHigh128: func(y, x Op) { VEXTRACTF32X4(Imm(1), y, x) },
	}
	for _, s := range []isa{avx2, avx512} {
		for rows := 1; rows <= s.mr; rows++ {
			for cols := 1; cols <= 4; cols++ {
				kernel(s, rows, cols)
			}
		}
	}
	packedAVX2()
	fmaPeak("fmaPeakAVX2", 12, ymmReg)
	fmaPeak("fmaPeakAVX512", 24, zmmReg)
	reluAVX2()
	Generate()
}

var (
	ymms = []VecPhysical{Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15, Y16, Y17, Y18, Y19, Y20, Y21, Y22, Y23, Y24, Y25, Y26, Y27, Y28, Y29, Y30, Y31}
	xmms = []VecPhysical{X0, X1, X2, X3, X4, X5, X6, X7, X8, X9, X10, X11, X12, X13, X14, X15, X16, X17, X18, X19, X20, X21, X22, X23, X24, X25, X26, X27, X28, X29, X30, X31}
	zmms = []VecPhysical{Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15, Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31}
)

func ymmReg(i int) VecPhysical { return ymms[i] }
func xmmReg(i int) VecPhysical { return xmms[i] }
func zmmReg(i int) VecPhysical { return zmms[i] }

func param(name string) Mem {
	b, err := Param(name).Resolve()
	if err != nil {
		panic(err)
	}
	return b.Addr
}

// rowAddr addresses row r of a matrix whose row 0 is at base and row 3 at
// base3, with a byte stride in ld, plus a byte displacement.
func rowAddr(base, base3, ld Register, r, disp int) Mem {
	b := base
	if r >= 3 {
		b, r = base3, r-3
	}
	m := Mem{Base: b, Disp: disp}
	if r > 0 {
		m.Index, m.Scale = ld, uint8(r)
	}
	return m
}

// kernel emits dot<ISA>_<rows>x<cols>.
func kernel(s isa, rows, cols int) {
	name := fmt.Sprintf("dot%s_%dx%d", s.name, rows, cols)
	TEXT(name, NOSPLIT, signature)
	Doc(fmt.Sprintf("%s computes nt tiles of %d×%d dot products (see kernFn).", name, rows, cols))
	vbytes := 4 * s.lanes

	// Register plan: accumulator (i, j) is register 4i+j; the A vectors of
	// the current k step are registers 4·mr+i; the Bᵀ vector is 4·mr+mr.
	acc := func(i, j int) int { return 4*i + j }
	areg := func(i int) int { return 4*s.mr + i }
	wreg := 4*s.mr + s.mr
	// After the k loop the A and W registers are free: two temporaries and
	// a zero for ReLU. With AVX2 (mr 3) they are A rows 0 and 1 and W
	// (12, 13, 15); with AVX-512 the top three of its 32 registers.
	t1, t2, zero := areg(0), areg(1), wreg
	if s.mr != 3 {
		t1, t2, zero = 29, 30, 31
	}

	lda, ldb := GP64(), GP64()
	Load(Param("lda"), lda)
	SHLQ(Imm(2), lda)
	Load(Param("ldb"), ldb)
	SHLQ(Imm(2), ldb)
	bt, ct, biast, ntl := GP64(), GP64(), GP64(), GP64()
	Load(Param("b"), bt)
	Load(Param("c"), ct)
	Load(Param("bias"), biast)
	Load(Param("nt"), ntl)
	pa, pa3, pb, pb3, cnt := GP64(), GP64(), GP64(), GP64(), GP64()

	Label(name + "_tile")
	Load(Param("a"), pa)
	if rows > 3 {
		LEAQ(Mem{Base: pa, Index: lda, Scale: 2}, pa3)
		ADDQ(lda, pa3)
	}
	MOVQ(bt, pb)
	if cols > 3 {
		LEAQ(Mem{Base: pb, Index: ldb, Scale: 2}, pb3)
		ADDQ(ldb, pb3)
	}
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			r := s.vec(acc(i, j))
			VXORPS(r, r, r)
		}
	}
	advance := func(n int) {
		ADDQ(Imm(uint64(n)), pa)
		if rows > 3 {
			ADDQ(Imm(uint64(n)), pa3)
		}
		ADDQ(Imm(uint64(n)), pb)
		if cols > 3 {
			ADDQ(Imm(uint64(n)), pb3)
		}
	}
	step := func(disp int) {
		for i := 0; i < rows; i++ {
			VMOVUPS(rowAddr(pa, pa3, lda, i, disp), s.vec(areg(i)))
		}
		for j := 0; j < cols; j++ {
			VMOVUPS(rowAddr(pb, pb3, ldb, j, disp), s.vec(wreg))
			for i := 0; i < rows; i++ {
				VFMADD231PS(s.vec(wreg), s.vec(areg(i)), s.vec(acc(i, j)))
			}
		}
	}

	// Main loop, unrolled twice, then one more vector if k/lanes is odd.
	Load(Param("k"), cnt)
	SHRQ(Imm(uint64(log2(2*s.lanes))), cnt)
	JZ(LabelRef(name + "_one"))
	Label(name + "_loop2")
	step(0)
	step(vbytes)
	advance(2 * vbytes)
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop2"))
	Label(name + "_one")
	Load(Param("k"), cnt)
	TESTQ(U32(s.lanes), cnt)
	JZ(LabelRef(name + "_reduce"))
	step(0)
	advance(vbytes)

	// Reduce each row's accumulators into the low XMM of acc(i, 0):
	// lane j = sum over the lanes of accumulator j.
	Label(name + "_reduce")
	VXORPS(s.vec(zero), s.vec(zero), s.vec(zero))
	for i := 0; i < rows; i++ {
		a := func(j int) VecPhysical {
			if j < cols {
				return s.vec(acc(i, j))
			}
			return s.vec(zero)
		}
		r := s.vec(acc(i, 0))
		T1, T2 := s.vec(t1), s.vec(t2)
		// s01 = [a0₀+a0₂, a1₀+a1₂, a0₁+a0₃, a1₁+a1₃] per 128-bit lane
		VUNPCKHPS(a(1), a(0), T1)
		VUNPCKLPS(a(1), a(0), r)
		VADDPS(T1, r, r)
		s23 := s.vec(zero)
		if cols > 2 {
			VUNPCKHPS(a(3), a(2), T1)
			VUNPCKLPS(a(3), a(2), T2)
			VADDPS(T1, T2, T2)
			s23 = T2
		}
		VSHUFPS(Imm(0xEE), s23, r, T1)
		VSHUFPS(Imm(0x44), s23, r, r)
		VADDPS(T1, r, r)
		if s.lanes == 16 {
			VEXTRACTF64X4(Imm(1), r, s.ymm(t1))
			VADDPS(s.ymm(t1), s.ymm(acc(i, 0)), s.ymm(acc(i, 0)))
		}
		s.extractHigh128(s.ymm(acc(i, 0)), s.xmm(t1))
		VADDPS(s.xmm(t1), s.xmm(acc(i, 0)), s.xmm(acc(i, 0)))
	}

	// The k tail, one element at a time: gather Bᵀ[0:cols][p] into an XMM
	// and broadcast A[i][p].
	Load(Param("k"), cnt)
	ANDQ(Imm(uint64(s.lanes-1)), cnt)
	JZ(LabelRef(name + "_epilogue"))
	Label(name + "_tail")
	w, av := s.xmm(t1), s.xmm(t2)
	VMOVSS(rowAddr(pb, pb3, ldb, 0, 0), w)
	for j := 1; j < cols; j++ {
		VINSERTPS(Imm(uint64(j<<4)), rowAddr(pb, pb3, ldb, j, 0), w, w)
	}
	for i := 0; i < rows; i++ {
		VBROADCASTSS(rowAddr(pa, pa3, lda, i, 0), av)
		VFMADD231PS(w, av, s.xmm(acc(i, 0)))
	}
	advance(4)
	DECQ(cnt)
	JNZ(LabelRef(name + "_tail"))

	// Epilogue: alpha, beta·C, bias, ReLU, store.
	Label(name + "_epilogue")
	ldc, flags := pb, cnt
	Load(Param("ldc"), ldc)
	SHLQ(Imm(2), ldc)
	Load(Param("flags"), flags)
	alpha, tmp, zx := s.xmm(t1), s.xmm(t2), s.xmm(zero)
	VBROADCASTSS(param("alpha"), alpha)
	for i := 0; i < rows; i++ {
		VMULPS(alpha, s.xmm(acc(i, 0)), s.xmm(acc(i, 0)))
	}
	if rows > 3 {
		LEAQ(Mem{Base: ct, Index: ldc, Scale: 2}, pa3)
		ADDQ(ldc, pa3)
	}
	TESTQ(U32(flagLoadC), flags)
	JZ(LabelRef(name + "_nobeta"))
	VBROADCASTSS(param("beta"), alpha)
	for i := 0; i < rows; i++ {
		loadPartial(rowAddr(ct, pa3, ldc, i, 0), cols, tmp)
		VFMADD231PS(tmp, alpha, s.xmm(acc(i, 0)))
	}
	Label(name + "_nobeta")
	TESTQ(U32(flagBias), flags)
	JZ(LabelRef(name + "_nobias"))
	loadPartial(Mem{Base: biast}, cols, tmp)
	for i := 0; i < rows; i++ {
		VADDPS(tmp, s.xmm(acc(i, 0)), s.xmm(acc(i, 0)))
	}
	Label(name + "_nobias")
	TESTQ(U32(flagReLU), flags)
	JZ(LabelRef(name + "_store"))
	VXORPS(zx, zx, zx)
	for i := 0; i < rows; i++ {
		// max(0, x) with x second so that NaN passes through.
		VMAXPS(s.xmm(acc(i, 0)), zx, s.xmm(acc(i, 0)))
	}
	Label(name + "_store")
	for i := 0; i < rows; i++ {
		storePartial(s.xmm(acc(i, 0)), cols, rowAddr(ct, pa3, ldc, i, 0))
	}

	// Next tile: nr=4 rows of Bᵀ and 4 columns of C and bias further.
	ADDQ(Imm(16), ct)
	ADDQ(Imm(16), biast)
	LEAQ(Mem{Base: bt, Index: ldb, Scale: 4}, bt)
	DECQ(ntl)
	JNZ(LabelRef(name + "_tile"))
	VZEROUPPER()
	RET()
}

// loadPartial loads n (1..4) consecutive floats into the low lanes of x,
// zeroing the others.
func loadPartial(m Mem, n int, x VecPhysical) {
	switch n {
	case 1:
		VMOVSS(m, x)
	case 2:
		VMOVSD(m, x)
	case 3:
		VMOVSD(m, x)
		VINSERTPS(Imm(0x20), m.Offset(8), x, x)
	default:
		VMOVUPS(m, x)
	}
}

// storePartial stores the low n (1..4) lanes of x.
func storePartial(x VecPhysical, n int, m Mem) {
	switch n {
	case 1:
		VMOVSS(x, m)
	case 2:
		VMOVSD(x, m)
	case 3:
		VMOVSD(x, m)
		VEXTRACTPS(Imm(2), x, m.Offset(8))
	default:
		VMOVUPS(x, m)
	}
}

// packedAVX2 emits packAVX2_6x16, the outer-product micro-kernel of the
// packed path for large products: C[0:6][0:16] (stride ldc) from a packed
// A panel (k steps of 6 floats: a column of six rows) and a packed B panel
// (k steps of 16 floats: a row of sixteen columns). Twelve accumulators
// hold the tile; each k step loads two B vectors, broadcasts the six A
// values and issues twelve FMAs. The epilogue applies alpha and, with
// flagLoadC, adds beta·C before the store.
func packedAVX2() {
	const name = "packAVX2_6x16"
	TEXT(name, NOSPLIT, "func(a *float32, b *float32, c *float32, ldc int, k int, alpha float32, beta float32, flags int)")
	Doc(name + " computes one 6×16 tile of the packed path (see packKernFn).")
	Pragma("noescape")
	acc := func(i, j int) VecPhysical { return ymms[2*i+j] }
	b0, b1 := Y12, Y13
	pa, pb, cnt := GP64(), GP64(), GP64()
	ct, ldc := GP64(), GP64()
	Load(Param("a"), pa)
	Load(Param("b"), pb)
	Load(Param("c"), ct)
	Load(Param("ldc"), ldc)
	SHLQ(Imm(2), ldc)
	// Prefetch the C tile (six rows, each up to two cache lines): its rows
	// are a row stride apart, which the hardware prefetcher does not
	// follow, and the k loop hides the misses.
	cp := cnt
	MOVQ(ct, cp)
	for i := 0; i < 6; i++ {
		PREFETCHT0(Mem{Base: cp})
		PREFETCHT0(Mem{Base: cp, Disp: 60})
		if i < 5 {
			ADDQ(ldc, cp)
		}
	}
	for i := 0; i < 12; i++ {
		VXORPS(ymms[i], ymms[i], ymms[i])
	}
	step := func(kk int) {
		VMOVUPS(Mem{Base: pb, Disp: 64 * kk}, b0)
		VMOVUPS(Mem{Base: pb, Disp: 64*kk + 32}, b1)
		for i := 0; i < 6; i++ {
			av := []VecPhysical{Y14, Y15}[i%2] // two, so broadcasts run ahead
			VBROADCASTSS(Mem{Base: pa, Disp: 24*kk + 4*i}, av)
			VFMADD231PS(b0, av, acc(i, 0))
			VFMADD231PS(b1, av, acc(i, 1))
		}
	}
	// k steps four at a time, then one at a time.
	Load(Param("k"), cnt)
	SHRQ(Imm(2), cnt)
	JZ(LabelRef(name + "_one"))
	Label(name + "_loop4")
	for kk := 0; kk < 4; kk++ {
		step(kk)
	}
	ADDQ(U32(4*24), pa)
	ADDQ(U32(4*64), pb)
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop4"))
	Label(name + "_one")
	Load(Param("k"), cnt)
	ANDQ(Imm(3), cnt)
	JZ(LabelRef(name + "_epilogue"))
	Label(name + "_loop1")
	step(0)
	ADDQ(Imm(24), pa)
	ADDQ(Imm(64), pb)
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop1"))

	Label(name + "_epilogue")
	flags := cnt
	Load(Param("flags"), flags)
	alpha, tmp := Y12, Y13
	VBROADCASTSS(param("alpha"), alpha)
	for i := 0; i < 12; i++ {
		VMULPS(alpha, ymms[i], ymms[i])
	}
	TESTQ(U32(flagLoadC), flags)
	JZ(LabelRef(name + "_store"))
	VBROADCASTSS(param("beta"), alpha)
	MOVQ(ct, pa)
	for i := 0; i < 6; i++ {
		for j := 0; j < 2; j++ {
			VMOVUPS(Mem{Base: pa, Disp: 32 * j}, tmp)
			VFMADD231PS(tmp, alpha, acc(i, j))
		}
		if i < 5 {
			ADDQ(ldc, pa)
		}
	}
	Label(name + "_store")
	for i := 0; i < 6; i++ {
		for j := 0; j < 2; j++ {
			VMOVUPS(acc(i, j), Mem{Base: ct, Disp: 32 * j})
		}
		if i < 5 {
			ADDQ(ldc, ct)
		}
	}
	VZEROUPPER()
	RET()
}

// fmaPeak emits a loop of n independent FMA chains, run iters times, for
// measuring the machine's float32 peak: 2·lanes·n flops per iteration.
func fmaPeak(name string, n int, vec func(int) VecPhysical) {
	TEXT(name, NOSPLIT, "func(iters int)")
	Doc(fmt.Sprintf("%s runs iters iterations of %d independent vector FMAs.", name, n))
	cnt := GP64()
	Load(Param("iters"), cnt)
	for i := 0; i < n+2; i++ {
		VXORPS(vec(i), vec(i), vec(i))
	}
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	for i := 0; i < n; i++ {
		VFMADD231PS(vec(n), vec(n+1), vec(i))
	}
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// reluAVX2 emits the ReLU of n float32 values, n a multiple of 8, four
// vectors at a time and then one. VMAXPS with the value as its second
// source returns that source when either is NaN or both are zero, so -0
// and NaNs pass through as from the comparison (see gemm.Activation.Apply).
func reluAVX2() {
	TEXT("reluAVX2", NOSPLIT, "func(dst *float32, src *float32, n int)")
	Doc("reluAVX2 computes dst[i] = src[i] < 0 ? +0 : src[i] for i < n, n a multiple of 8 (see relu).")
	dst, src, n := GP64(), GP64(), GP64()
	Load(Param("dst"), dst)
	Load(Param("src"), src)
	Load(Param("n"), n)
	zero := Y15
	VXORPS(zero, zero, zero)
	Label("relu_4")
	CMPQ(n, Imm(32))
	JL(LabelRef("relu_1"))
	for i := 0; i < 4; i++ {
		VMOVUPS(Mem{Base: src, Disp: 32 * i}, ymmReg(i))
	}
	for i := 0; i < 4; i++ {
		VMAXPS(ymmReg(i), zero, ymmReg(i))
	}
	for i := 0; i < 4; i++ {
		VMOVUPS(ymmReg(i), Mem{Base: dst, Disp: 32 * i})
	}
	ADDQ(Imm(128), src)
	ADDQ(Imm(128), dst)
	SUBQ(Imm(32), n)
	JMP(LabelRef("relu_4"))
	Label("relu_1")
	CMPQ(n, Imm(8))
	JL(LabelRef("relu_done"))
	VMOVUPS(Mem{Base: src}, Y0)
	VMAXPS(Y0, zero, Y0)
	VMOVUPS(Y0, Mem{Base: dst})
	ADDQ(Imm(32), src)
	ADDQ(Imm(32), dst)
	SUBQ(Imm(8), n)
	JMP(LabelRef("relu_1"))
	Label("relu_done")
	VZEROUPPER()
	RET()
}

func log2(n int) int {
	r := 0
	for n > 1 {
		n >>= 1
		r++
	}
	return r
}
