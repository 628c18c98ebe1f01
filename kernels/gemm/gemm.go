package gemm

import (
	"errors"
	"fmt"
)

// ErrBadArgument is wrapped by every error Validate and ValidateLinear return;
// Sgemm and Linear panic with such an error (a programming error, as a slice
// index out of range is) when their arguments are inconsistent.
var ErrBadArgument = errors.New("gemm: bad argument")

// Activation selects the elementwise function Linear applies to its output.
type Activation uint8

// Activations Linear can fuse. ActReLU is applied inside the assembly
// micro-kernels; the others run over each finished row block while it is in
// cache.
const (
	ActNone     Activation = iota // identity
	ActReLU                       // max(x, 0)
	ActSigmoid                    // 1/(1+exp(-x))
	ActTanh                       // tanh(x)
	ActGELU                       // x·Φ(x), exact (erf) form, PyTorch approximate="none"
	ActGELUTanh                   // PyTorch approximate="tanh"
)

// String names the activation as the kernel format does.
func (a Activation) String() string {
	switch a {
	case ActNone:
		return "identity"
	case ActReLU:
		return "relu"
	case ActSigmoid:
		return "sigmoid"
	case ActTanh:
		return "tanh"
	case ActGELU:
		return "gelu"
	case ActGELUTanh:
		return "gelu_tanh"
	}
	return fmt.Sprintf("Activation(%d)", uint8(a))
}

// Epilogue is what Linear applies to a·wᵀ before storing it: an optional bias
// (length ≥ n, added to every row) and an activation.
type Epilogue struct {
	Bias []float32
	Act  Activation
}

// Sgemm computes C = alpha*op(A)*op(B) + beta*C for row-major matrices.
// op(A) is m×k, op(B) is k×n, C is m×n. lda/ldb/ldc are row strides: with
// transA false A is stored m×k (lda ≥ k), with transA true it is stored k×m
// (lda ≥ m); likewise B is stored k×n (ldb ≥ n) or, transposed, n×k
// (ldb ≥ k). When beta is 0, C is not read (NaNs in it do not propagate);
// when alpha is 0 or k is 0, A and B are not read.
//
// It panics with an error wrapping ErrBadArgument when the arguments are
// inconsistent (see Validate). It allocates nothing once its internal
// buffers have grown to the shapes in use.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if err := Validate(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc); err != nil {
		panic(err)
	}
	if m == 0 || n == 0 {
		return
	}
	current().sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// Linear computes c = act(a·wᵀ + bias) for a linear layer: a is the m×k
// input (row stride lda), w the n×k weight in PyTorch's [out, in] layout (row
// stride ldw), c the m×n output (row stride ldc, not read). ep.Bias may be
// nil; otherwise it needs at least n elements.
//
// It panics with an error wrapping ErrBadArgument when the arguments are
// inconsistent (see ValidateLinear).
func Linear(m, n, k int, a []float32, lda int, w []float32, ldw int, c []float32, ldc int, ep Epilogue) {
	if err := ValidateLinear(m, n, k, len(a), lda, len(w), ldw, len(c), ldc, ep); err != nil {
		panic(err)
	}
	if m == 0 || n == 0 {
		return
	}
	current().linear(m, n, k, a, lda, w, ldw, c, ldc, ep)
}

// Validate checks Sgemm's arguments against the slice lengths la, lb, lc and
// returns an error wrapping ErrBadArgument that names the first bad field.
func Validate(transA, transB bool, m, n, k, la, lda, lb, ldb, lc, ldc int) error {
	if m < 0 {
		return fmt.Errorf("%w: m = %d is negative", ErrBadArgument, m)
	}
	if n < 0 {
		return fmt.Errorf("%w: n = %d is negative", ErrBadArgument, n)
	}
	if k < 0 {
		return fmt.Errorf("%w: k = %d is negative", ErrBadArgument, k)
	}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	if err := checkMatrix("a", "lda", ar, ac, la, lda); err != nil {
		return err
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	if err := checkMatrix("b", "ldb", br, bc, lb, ldb); err != nil {
		return err
	}
	return checkMatrix("c", "ldc", m, n, lc, ldc)
}

// ValidateLinear checks Linear's arguments against the slice lengths la, lw,
// lc and returns an error wrapping ErrBadArgument that names the first bad
// field.
func ValidateLinear(m, n, k, la, lda, lw, ldw, lc, ldc int, ep Epilogue) error {
	if err := Validate(false, true, m, n, k, la, lda, lw, ldw, lc, ldc); err != nil {
		return err
	}
	if ep.Bias != nil && len(ep.Bias) < n {
		return fmt.Errorf("%w: len(bias) = %d, need n = %d", ErrBadArgument, len(ep.Bias), n)
	}
	if ep.Act > ActGELUTanh {
		return fmt.Errorf("%w: unknown activation %d", ErrBadArgument, uint8(ep.Act))
	}
	return nil
}

// checkMatrix checks a rows×cols row-major matrix with stride ld stored in a
// slice of length l.
func checkMatrix(name, ldName string, rows, cols, l, ld int) error {
	if ld < max(cols, 1) {
		return fmt.Errorf("%w: %s = %d, need ≥ %d (columns of %s)", ErrBadArgument, ldName, ld, max(cols, 1), name)
	}
	if rows == 0 || cols == 0 {
		return nil
	}
	if rows-1 > (int(^uint(0)>>1)-cols)/ld {
		return fmt.Errorf("%w: %s is %d×%d with %s = %d: size overflows int", ErrBadArgument, name, rows, cols, ldName, ld)
	}
	if need := (rows-1)*ld + cols; l < need {
		return fmt.Errorf("%w: len(%s) = %d, need ≥ %d for %d×%d with %s = %d", ErrBadArgument, name, l, need, rows, cols, ldName, ld)
	}
	return nil
}
