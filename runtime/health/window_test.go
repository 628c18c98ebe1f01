package health

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/esper/kasmina-host/contracts"
)

var now = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func in(state contracts.SeedState) Inputs {
	return Inputs{LayerID: 3, SeedIdx: 1, Epoch: 7, ActiveSeeds: 1, TotalSeeds: 2, State: state, Now: now}
}

func TestWindowEmptyReportsNothing(t *testing.T) {
	if _, _, ok := NewWindow(4).Signal(in(contracts.SeedTraining)); ok {
		t.Fatal("an empty window produced a signal")
	}
}

func TestWindowStatistics(t *testing.T) {
	tests := []struct {
		name      string
		units     int
		calls     [][]float32 // each call: batch rows of units
		errors    int
		wantVar   float64
		wantDead  float64
		wantCorr  float64
		wantScore float64
		ready     bool
	}{
		{name: "one unit never fires", units: 3,
			calls:   [][]float32{{1, 0, 2, 3, -1, 4}},
			wantVar: variance(1, 0, 2, 3, -1, 4), wantDead: 1.0 / 3, wantCorr: 5 / math.Sqrt(28),
			wantScore: 1 - 0.1/3},
		{name: "all dead", units: 2, calls: [][]float32{{0, -1}, {-2, 0}},
			wantVar: variance(0, -1, -2, 0), wantDead: 1, wantCorr: -1, wantScore: 0.9},
		{name: "identical rows correlate fully", units: 4,
			calls:   [][]float32{{1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}},
			wantVar: 1.25, wantCorr: 1, wantScore: 1, ready: true},
		{name: "errors lower the score and block readiness", units: 4, errors: 1,
			calls:   [][]float32{{1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}},
			wantVar: 1.25, wantCorr: 1, wantScore: 1 - 0.5*0.5},
		{name: "non-finite values counted, excluded from variance", units: 2,
			calls:   [][]float32{{float32(math.NaN()), 1, float32(math.Inf(1)), 3}},
			wantVar: 1, wantDead: 0.5, wantScore: 1 - 0.3*0.5 - 0.1*0.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWindow(tt.units)
			for _, c := range tt.calls {
				w.Observe(c, len(c)/tt.units, 2*time.Millisecond)
			}
			for i := 0; i < tt.errors; i++ {
				w.ObserveError(2 * time.Millisecond)
			}
			sig, sum, ok := w.Signal(in(contracts.SeedTraining))
			if !ok {
				t.Fatal("no signal")
			}
			if err := sig.Validate(); err != nil {
				t.Fatalf("signal fails the contract: %v", err)
			}
			near := func(name string, got, want float64) {
				if math.Abs(got-want) > 1e-9 {
					t.Errorf("%s = %v, want %v", name, got, want)
				}
			}
			near("activation_variance", sig.ActivationVariance, tt.wantVar)
			near("dead_neuron_ratio", sig.DeadNeuronRatio, tt.wantDead)
			near("avg_correlation", sig.AvgCorrelation, tt.wantCorr)
			near("health_score", sig.HealthScore, tt.wantScore)
			near("execution_latency", sig.ExecutionLatency, 2)
			if sig.ErrorCount != tt.errors || sum.Errors != tt.errors {
				t.Errorf("error_count = %d, want %d", sig.ErrorCount, tt.errors)
			}
			if sig.IsReadyForTransition != tt.ready {
				t.Errorf("ready = %v, want %v", sig.IsReadyForTransition, tt.ready)
			}
			if sig.LayerID != 3 || sig.SeedID != 1 || sig.Epoch != 7 || sig.TotalSeeds != 2 {
				t.Errorf("identity fields wrong: %+v", sig)
			}
			if _, _, ok := w.Signal(in(contracts.SeedTraining)); ok {
				t.Error("window not reset after a signal")
			}
		})
	}
}

func TestWindowReadinessNeedsActiveState(t *testing.T) {
	w := NewWindow(1)
	for i := 0; i < 2*MinSamples; i++ {
		w.Observe([]float32{float32(i)}, 1, time.Millisecond)
	}
	sig, _, _ := w.Signal(in(contracts.SeedDormant))
	if sig.IsReadyForTransition {
		t.Fatal("a dormant seed was declared ready")
	}
}

func TestLatencyPenalty(t *testing.T) {
	w := NewWindow(1)
	w.Observe([]float32{1}, 1, 30*time.Millisecond)
	i := in(contracts.SeedTraining)
	var p contracts.Metrics
	p.Set("latency_ms", 10)
	i.ExpectedLatency = ExpectedLatency(p)
	sig, _, _ := w.Signal(i)
	if want := 0.9; math.Abs(sig.HealthScore-want) > 1e-9 {
		t.Fatalf("health_score = %v, want %v (3x slower than declared caps the penalty at 1)", sig.HealthScore, want)
	}
}

// A call over ObserveBudget values is sampled: evenly spaced rows, as many
// as the budget holds, starting at a row that moves with each call, so
// that successive calls cover the whole batch.
func TestObserveSamplesLargeCalls(t *testing.T) {
	const units = 1024
	const per = ObserveBudget / units // rows observed per call
	const batch = 4 * per             // so a call observes rows 4 apart
	out := make([]float32, units*batch)
	for r := range batch {
		for u := range units {
			out[r*units+u] = -1
		}
		out[r*units+r] = float32(r + 1) // row r fires unit r only
	}
	tests := []struct {
		calls, wantSamples, wantFired int
	}{
		{calls: 1, wantSamples: per, wantFired: per},
		{calls: 2, wantSamples: 2 * per, wantFired: 2 * per},
		{calls: 4, wantSamples: batch, wantFired: batch},
		{calls: 8, wantSamples: 2 * batch, wantFired: batch}, // the phase wraps: every row seen, none twice per 4 calls
	}
	for _, tt := range tests {
		w := NewWindow(units)
		for range tt.calls {
			w.Observe(out, batch, time.Millisecond)
		}
		sig, sum, _ := w.Signal(in(contracts.SeedTraining))
		if sum.Samples != tt.wantSamples {
			t.Errorf("%d calls: %d samples, want %d", tt.calls, sum.Samples, tt.wantSamples)
		}
		if want := 1 - float64(tt.wantFired)/units; math.Abs(sig.DeadNeuronRatio-want) > 1e-12 {
			t.Errorf("%d calls: dead_neuron_ratio %v, want %v (%d units seen firing)", tt.calls, sig.DeadNeuronRatio, want, tt.wantFired)
		}
	}
	// A single row over the budget is still observed, whole.
	w := NewWindow(2 * ObserveBudget)
	w.Observe(make([]float32, 4*ObserveBudget), 2, time.Millisecond)
	if _, sum, _ := w.Signal(in(contracts.SeedTraining)); sum.Samples != 1 {
		t.Errorf("rows over the budget: %d samples, want 1", sum.Samples)
	}
}

func variance(xs ...float64) float64 {
	var s, ss float64
	for _, x := range xs {
		s += x
		ss += x * x
	}
	n := float64(len(xs))
	return ss/n - (s/n)*(s/n)
}

func BenchmarkObserve(b *testing.B) {
	w := NewWindow(64)
	out := make([]float32, 64)
	for i := range out {
		out[i] = float32(i%7) - 3
	}
	b.ReportAllocs()
	for b.Loop() {
		w.Observe(out, 1, time.Microsecond)
	}
}

// BenchmarkObserveLarge is the health window's share of a 256×1024 FP32
// inference (bounded by ObserveBudget), on a ReLU's output: zero at
// random half the time, which a branch on the values would mispredict
// (25 µs per call here before observeRow lost its branches, 8.6 after,
// 5–6 with two chains of sums instead of one).
func BenchmarkObserveLarge(b *testing.B) {
	w := NewWindow(1024)
	out := make([]float32, 256*1024)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range out {
		out[i] = max(rng.Float32()*2-1, 0)
	}
	for b.Loop() {
		w.Observe(out, 256, time.Microsecond)
	}
}

// fired is 1 exactly for positive finite values, whatever their bits.
func TestFired(t *testing.T) {
	for _, v := range []float32{
		0, float32(math.Copysign(0, -1)), 1, -1, 1e-45, -1e-45, math.SmallestNonzeroFloat32,
		math.MaxFloat32, -math.MaxFloat32, float32(math.Inf(1)), float32(math.Inf(-1)),
		float32(math.NaN()), math.Float32frombits(0xffc00000), math.Float32frombits(0x7f800001),
	} {
		want := uint8(0)
		if v > 0 && v <= math.MaxFloat32 {
			want = 1
		}
		if got := fired(v); got != want {
			t.Errorf("fired(%v, bits %#08x) = %d, want %d", v, math.Float32bits(v), got, want)
		}
	}
}

// The window's one-pass moments (two chains of sums, the pair loop and its
// odd tail) agree with a plain two-pass computation on rows of every
// parity, with zeros, negatives and a row that holds a NaN.
func TestObserveMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, units := range []int{1, 2, 3, 5, 8, 63, 1024, 1025} {
		rows := min(6, ObserveBudget/units) // every row observed: no sampling
		out := make([]float32, rows*units)
		for i := range out {
			out[i] = max(float32(rng.NormFloat64()), 0) - 0.25
		}
		if units > 2 {
			out[(rows-2)*units+1] = float32(math.NaN()) // that row is left out of the correlations
		}
		w := NewWindow(units)
		w.Observe(out, rows, time.Millisecond)
		sig, sum, _ := w.Signal(in(contracts.SeedTraining))

		var s, ss float64
		var finite, nonFinite int
		fired := make([]bool, units)
		var corr []float64
		for r := range rows {
			row := out[r*units : (r+1)*units]
			rowFinite := true
			for u, v := range row {
				f := float64(v)
				if math.IsNaN(f) {
					nonFinite++
					rowFinite = false
					continue
				}
				s, ss = s+f, ss+f*f
				finite++
				fired[u] = fired[u] || v > 0
			}
			if r > 0 && rowFinite && !slicesHaveNaN(out[(r-1)*units:r*units]) {
				if c, ok := pearson(out[(r-1)*units:r*units], row); ok {
					corr = append(corr, c)
				}
			}
		}
		mean := s / float64(finite)
		wantVar := max(ss/float64(finite)-mean*mean, 0)
		dead := 0
		for _, f := range fired {
			if !f {
				dead++
			}
		}
		wantCorr := 0.0
		for _, c := range corr {
			wantCorr += c / float64(len(corr))
		}
		near := func(name string, got, want float64) {
			if math.Abs(got-want) > 1e-9*max(1, math.Abs(want)) {
				t.Errorf("units %d: %s = %v, want %v", units, name, got, want)
			}
		}
		near("activation_variance", sig.ActivationVariance, wantVar)
		near("dead_neuron_ratio", sig.DeadNeuronRatio, float64(dead)/float64(units))
		near("avg_correlation", sig.AvgCorrelation, wantCorr)
		if sum.NonFinite != int64(nonFinite) {
			t.Errorf("units %d: %d non-finite values, want %d", units, sum.NonFinite, nonFinite)
		}
	}
}

func slicesHaveNaN(v []float32) bool {
	for _, x := range v {
		if x != x {
			return true
		}
	}
	return false
}

// pearson is the correlation of a and b computed from their means (two
// passes); ok is false when either is constant.
func pearson(a, b []float32) (float64, bool) {
	n := float64(len(a))
	var ma, mb float64
	for i := range a {
		ma += float64(a[i]) / n
		mb += float64(b[i]) / n
	}
	var sab, saa, sbb float64
	for i := range a {
		da, db := float64(a[i])-ma, float64(b[i])-mb
		sab, saa, sbb = sab+da*db, saa+da*da, sbb+db*db
	}
	if saa <= 1e-12 || sbb <= 1e-12 {
		return 0, false
	}
	return sab / math.Sqrt(saa*sbb), true
}
