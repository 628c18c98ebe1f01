// Package health turns what a kernel really outputs into Esper
// HealthSignals.
//
// A Window aggregates every execution of one seed between two emissions.
// Its fields are defined as follows (units are the output elements of one
// sample, prod(output_shape); samples are rows of the batch):
//
//   - activation_variance: the population variance of every finite output
//     value seen in the window.
//   - dead_neuron_ratio: the fraction of units whose value stayed at or
//     below zero for every sample in the window (a ReLU unit that never
//     fires). With no samples it is 0.
//   - avg_correlation: the mean Pearson correlation between consecutive
//     samples' output vectors (across batch rows and across calls). Values
//     near 1 mean the kernel maps different inputs to nearly the same output
//     (collapse); near 0, outputs that vary independently of each other.
//     Pairs where either vector is constant are skipped. Always in [-1, 1];
//     0 with fewer than two samples.
//   - execution_latency: the mean latency of one call in the window, in
//     milliseconds.
//   - error_count: calls that failed in the window.
//   - health_score: 1 − 0.5·error_rate − 0.3·nonfinite_rate −
//     0.1·dead_neuron_ratio − 0.1·latency_penalty, clamped to [0, 1], where
//     error_rate = failed calls / calls, nonfinite_rate = NaN or Inf output
//     values / output values, and latency_penalty = min(1, mean latency /
//     expected latency − 1) when the kernel's performance_profile declares
//     an expected latency (key "latency_ms" or "execution_latency_ms"),
//     else 0.
//   - is_ready_for_transition: the seed is training or grafting, the window
//     saw at least MinSamples samples and no error, and health_score ≥ 0.8.
//
// # Sampled rows
//
// The statistics above are computed over the rows a window observes. A
// call whose output holds at most ObserveBudget values is observed whole.
// A larger batch is sampled: rows evenly spaced across it, as many as fit
// in the budget (at least one), starting at a row that moves with every
// call so that successive calls observe different rows. The cost of a
// signal per call is then bounded (a 256×1024 output would otherwise cost
// a float64 pass over a megabyte, more than the inference itself), and
// the statistics are estimates from a sample of each large call. Non-finite
// values are counted in the observed rows; consecutive samples are
// consecutive observed rows.
package health

import (
	"math"
	"sync"
	"time"

	"github.com/esper/kasmina-host/contracts"
)

// MinSamples is the number of samples a window needs before a seed can be
// declared ready for a transition.
const MinSamples = 8

// ObserveBudget is the most output values one call to Observe reads (more
// when a single row is larger): see "Sampled rows" in the package
// documentation.
const ObserveBudget = 4096

// Window aggregates executions of one seed. It is safe for concurrent use.
type Window struct {
	mu sync.Mutex

	units    int       // output elements per sample
	firing   []uint8   // firing[u] is 1 when unit u was > 0 for some sample
	prev     []float32 // last sample seen, for the consecutive correlation
	havePrev bool
	// moments of prev, and whether it was all finite
	prevSum, prevSumSq float64
	prevFinite         bool

	calls, errors, samples int
	values, nonFinite      int64
	sum, sumSq             float64 // over finite values
	corrSum                float64
	corrN                  int
	latency                time.Duration
	phase                  int // advances with every sampled call
}

// NewWindow returns a window for a kernel whose samples have units output
// elements each.
func NewWindow(units int) *Window {
	return &Window{units: units, firing: make([]uint8, units), prev: make([]float32, units)}
}

// Observe records one successful call: out holds batch samples of
// w.units elements each. Of a call over ObserveBudget values it reads a
// sample of rows (see the package documentation).
func (w *Window) Observe(out []float32, batch int, latency time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	w.latency += latency
	u := w.units
	if u == 0 || batch < 1 || len(out) < batch*u {
		return
	}
	rows, first, step := batch, 0, 1
	if most := max(ObserveBudget/u, 1); batch > most {
		rows, step = most, batch/most // step ≥ 1: rows rows step apart fit in the batch
		first = w.phase % step
		w.phase++
	}
	for n, s := 0, first; n < rows; n, s = n+1, s+step {
		w.observeRow(out[s*u : (s+1)*u])
	}
}

// observeRow adds one sample to the window. w.mu is held.
func (w *Window) observeRow(row []float32) {
	// One pass: moments of this row, its cross term with the previous
	// row, and which units fired, with no branch on the values (a ReLU's
	// output is zero at random, which a branch mispredicts half the
	// time). A non-finite value makes a moment non-finite: only then is
	// the row summed again, leaving those values out.
	// Two elements a step, each into its own accumulators: the sums are
	// chains of dependent additions, and two chains keep the adder busy
	// where one waited on each addition's latency (four spilled to the
	// stack, and were slower). The order of the additions changes; the
	// moments differ in their last bits at most.
	prev := w.prev[:len(row)]
	firing := w.firing[:len(row)]
	var s0, s1, q0, q1, c0, c1 float64
	n := len(row) &^ 1
	for i := 0; i < n; i += 2 {
		r, p, fi := row[i:i+2:i+2], prev[i:i+2:i+2], firing[i:i+2:i+2]
		a, b := float64(r[0]), float64(r[1])
		s0, s1 = s0+a, s1+b
		q0, q1 = q0+a*a, q1+b*b
		c0, c1 = c0+a*float64(p[0]), c1+b*float64(p[1])
		fi[0] |= fired(r[0])
		fi[1] |= fired(r[1])
	}
	if n < len(row) {
		f := float64(row[n])
		s0 += f
		q0 += f * f
		c0 += f * float64(prev[n])
		firing[n] |= fired(row[n])
	}
	sum, sumSq, cross := s0+s1, q0+q1, c0+c1
	nf := 0
	if t := sum + sumSq; t-t != 0 {
		sum, sumSq, cross = 0, 0, 0
		for i, v := range row {
			f := float64(v)
			if f-f != 0 { // NaN or ±Inf
				nf++
				continue
			}
			sum += f
			sumSq += f * f
			cross += f * float64(prev[i])
		}
	}
	u := len(row)
	w.sum += sum
	w.sumSq += sumSq
	w.values += int64(u)
	w.nonFinite += int64(nf)
	if w.havePrev && nf == 0 && w.prevFinite {
		if c, ok := correlation(float64(u), w.prevSum, w.prevSumSq, sum, sumSq, cross); ok {
			w.corrSum += c
			w.corrN++
		}
	}
	copy(w.prev, row)
	w.prevSum, w.prevSumSq, w.prevFinite = sum, sumSq, nf == 0
	w.havePrev = true
	w.samples++
}

// fired is 1 when v is positive and finite, else 0, computed without a
// branch: v's bits as an int32, minus one, are below those of
// math.MaxFloat32 (0x7f7fffff) exactly for positive finite v (zero, the
// negatives, +Inf and NaN land at or above it once the difference is
// taken in 64 bits), and the borrow of that comparison is the answer.
func fired(v float32) uint8 {
	x := uint64(uint32(int32(math.Float32bits(v)) - 1))
	return uint8((x - 0x7f7fffff) >> 63)
}

// ObserveError records one failed call.
func (w *Window) ObserveError(latency time.Duration) {
	w.mu.Lock()
	w.calls++
	w.errors++
	w.latency += latency
	w.mu.Unlock()
}

// correlation is Pearson's r from the moments of two vectors of n
// elements; ok is false when either is constant.
func correlation(n, sa, saa, sb, sbb, sab float64) (float64, bool) {
	va := saa - sa*sa/n
	vb := sbb - sb*sb/n
	if !(va > 1e-12) || !(vb > 1e-12) || math.IsInf(va, 0) || math.IsInf(vb, 0) {
		return 0, false
	}
	c := (sab - sa*sb/n) / math.Sqrt(va*vb)
	if math.IsNaN(c) {
		return 0, false
	}
	return math.Max(-1, math.Min(1, c)), true
}

// Inputs are what a Window needs from outside to produce a signal.
type Inputs struct {
	LayerID, SeedIdx, ChunkID, Epoch int
	ActiveSeeds, TotalSeeds          int
	// State is the seed's lifecycle state.
	State contracts.SeedState
	// ExpectedLatency is the kernel's declared latency, zero if unknown.
	ExpectedLatency time.Duration
	Now             time.Time
}

// Summary is the window's aggregate, besides the signal.
type Summary struct {
	Calls, Errors, Samples int
	NonFinite              int64
}

// Signal computes the HealthSignal for the window so far and resets it.
// ok is false when the window saw no call: there is nothing to report.
func (w *Window) Signal(in Inputs) (sig contracts.HealthSignal, sum Summary, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.calls == 0 {
		return sig, sum, false
	}
	sum = Summary{Calls: w.calls, Errors: w.errors, Samples: w.samples, NonFinite: w.nonFinite}

	sig = contracts.NewHealthSignal()
	sig.LayerID, sig.SeedID, sig.ChunkID, sig.Epoch = in.LayerID, in.SeedIdx, in.ChunkID, in.Epoch
	sig.ActiveSeeds, sig.TotalSeeds = max(in.ActiveSeeds, 0), max(in.TotalSeeds, 1)
	sig.Timestamp = float64(in.Now.UnixNano()) / 1e9

	finite := w.values - w.nonFinite
	if finite > 0 {
		mean := w.sum / float64(finite)
		v := w.sumSq/float64(finite) - mean*mean
		if v < 0 || math.IsNaN(v) {
			v = 0
		}
		if math.IsInf(v, 0) {
			v = math.MaxFloat64
		}
		sig.ActivationVariance = v
	}
	if w.samples > 0 && w.units > 0 {
		dead := 0
		for _, f := range w.firing {
			if f == 0 {
				dead++
			}
		}
		sig.DeadNeuronRatio = float64(dead) / float64(w.units)
	}
	if w.corrN > 0 {
		sig.AvgCorrelation = math.Max(-1, math.Min(1, w.corrSum/float64(w.corrN)))
	}
	meanLatency := w.latency / time.Duration(w.calls)
	sig.ExecutionLatency = float64(meanLatency) / float64(time.Millisecond)
	sig.ErrorCount = w.errors

	errorRate := float64(w.errors) / float64(w.calls)
	var nonFiniteRate float64
	if w.values > 0 {
		nonFiniteRate = float64(w.nonFinite) / float64(w.values)
	}
	var latencyPenalty float64
	if in.ExpectedLatency > 0 {
		latencyPenalty = math.Max(0, math.Min(1, float64(meanLatency)/float64(in.ExpectedLatency)-1))
	}
	score := 1 - 0.5*errorRate - 0.3*nonFiniteRate - 0.1*sig.DeadNeuronRatio - 0.1*latencyPenalty
	sig.HealthScore = math.Max(0, math.Min(1, score))
	sig.IsReadyForTransition = (in.State == contracts.SeedTraining || in.State == contracts.SeedGrafting) &&
		w.samples >= MinSamples && w.errors == 0 && sig.HealthScore >= 0.8

	w.reset()
	return sig, sum, true
}

func (w *Window) reset() {
	clear(w.firing)
	w.havePrev = false
	w.calls, w.errors, w.samples = 0, 0, 0
	w.values, w.nonFinite = 0, 0
	w.sum, w.sumSq, w.corrSum = 0, 0, 0
	w.corrN = 0
	w.latency = 0
}

// ExpectedLatency reads the kernel's declared latency from its
// performance_profile: "latency_ms" or "execution_latency_ms" in
// milliseconds, or "latency_us" in microseconds. Zero when none is declared.
func ExpectedLatency(profile contracts.Metrics) time.Duration {
	for _, k := range []string{"latency_ms", "execution_latency_ms"} {
		if v, ok := profile.Get(k); ok && v > 0 {
			return time.Duration(v * float64(time.Millisecond))
		}
	}
	if v, ok := profile.Get("latency_us"); ok && v > 0 {
		return time.Duration(v * float64(time.Microsecond))
	}
	return 0
}
