package kernels

// Matrix products of the executor. Until kernels/gemm lands these are plain
// loops; they are the only place matrix products happen.

// linearForward computes c[m, n] = act(a[m, k] · w[n, k]ᵀ + bias).
func linearForward(m, n, k int, a, w, bias []float32, act activation, c []float32) {
	for i := 0; i < m; i++ {
		x := a[i*k : (i+1)*k]
		y := c[i*n : (i+1)*n]
		for j := 0; j < n; j++ {
			wr := w[j*k : (j+1)*k]
			var s float32
			for t, v := range x {
				s += v * wr[t]
			}
			if bias != nil {
				s += bias[j]
			}
			y[j] = s
		}
	}
	if act != actNone {
		applyActivation(act, c[:m*n], c)
	}
}

// matmulNN computes c[m, n] = a[m, k] · b[k, n].
func matmulNN(m, n, k int, a, b, c []float32) {
	for i := 0; i < m; i++ {
		y := c[i*n : (i+1)*n]
		clear(y)
		for t := 0; t < k; t++ {
			av := a[i*k+t]
			br := b[t*n : (t+1)*n]
			for j, v := range br {
				y[j] += av * v
			}
		}
	}
}
