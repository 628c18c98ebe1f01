package gemm

import "unsafe"

// portableEngine runs the blocked driver over micro-kernels written in Go.
var portableEngine = newPortable()

const portableMR = 2

func newPortable() *native {
	e := &native{nm: "portable", mr: portableMR, kc: 1024, nc: 64, mc: 32}
	e.kern = make([][nr]kernFn, portableMR)
	for r := 1; r <= portableMR; r++ {
		for c := 1; c <= nr; c++ {
			e.kern[r-1][c-1] = portableKernel(r, c)
		}
	}
	return e
}

// portableKernel returns a Go micro-kernel for rows×cols tiles.
func portableKernel(rows, cols int) kernFn {
	return func(a *float32, lda int, b *float32, ldb int, c *float32, ldc int, k, nt int, alpha, beta float32, bias *float32, flags int) {
		as := unsafe.Slice(a, (rows-1)*lda+k)
		for t := range nt {
			bs := unsafe.Slice((*float32)(unsafe.Add(unsafe.Pointer(b), t*nr*ldb*4)), (cols-1)*ldb+k)
			cs := unsafe.Slice((*float32)(unsafe.Add(unsafe.Pointer(c), t*nr*4)), (rows-1)*ldc+cols)
			var bias4 []float32
			if flags&flagBias != 0 {
				bias4 = unsafe.Slice((*float32)(unsafe.Add(unsafe.Pointer(bias), t*nr*4)), cols)
			}
			var acc [portableMR][nr]float32
			if rows == 2 && cols == 4 {
				acc[0], acc[1] = dot2x4(as[:k], as[lda:lda+k], bs[:k], bs[ldb:ldb+k], bs[2*ldb:2*ldb+k], bs[3*ldb:3*ldb+k])
			} else {
				for r := range rows {
					ar := as[r*lda : r*lda+k]
					for q := range cols {
						br := bs[q*ldb : q*ldb+k]
						var s float32
						for p, v := range ar {
							s += v * br[p]
						}
						acc[r][q] = s
					}
				}
			}
			for r := range rows {
				for q := range cols {
					v := alpha * acc[r][q]
					if flags&flagLoadC != 0 {
						v += beta * cs[r*ldc+q]
					}
					if flags&flagBias != 0 {
						v += bias4[q]
					}
					if flags&flagReLU != 0 && v < 0 {
						v = 0
					}
					cs[r*ldc+q] = v
				}
			}
		}
	}
}

// dot2x4 returns the eight dot products of a0, a1 with b0..b3 (all of equal
// length).
func dot2x4(a0, a1, b0, b1, b2, b3 []float32) (r0, r1 [nr]float32) {
	n := len(a0)
	a1, b0, b1, b2, b3 = a1[:n], b0[:n], b1[:n], b2[:n], b3[:n]
	var s00, s01, s02, s03, s10, s11, s12, s13 float32
	for p := range n {
		x0, x1 := a0[p], a1[p]
		y0, y1, y2, y3 := b0[p], b1[p], b2[p], b3[p]
		s00 += x0 * y0
		s01 += x0 * y1
		s02 += x0 * y2
		s03 += x0 * y3
		s10 += x1 * y0
		s11 += x1 * y1
		s12 += x1 * y2
		s13 += x1 * y3
	}
	return [nr]float32{s00, s01, s02, s03}, [nr]float32{s10, s11, s12, s13}
}
