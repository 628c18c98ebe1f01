#!/bin/sh
# Runs kernels/gemm's benchmarks in the default build and the openblas build,
# PyTorch on the same shapes, and the FMA peak loop, then prints one table of
# GFLOP/s, ratios and fraction of peak. Needs Debian's python3-torch
# (/usr/bin/python3) and libopenblas-dev; missing parts are left out.
#
# The machine is shared, so each side is timed as short samples (go test
# -count with a short -benchtime; as many samples of the same length in
# PyTorch), the sides take turns round by round so that a busy spell hits
# them alike, and the table gives the fastest sample of each (and, at the
# right, the ratios of the median samples). The script changes no OPENBLAS_*
# variable: both OpenBLAS users run under the environment printed first.
#   SAMPLE (default 100ms)             length of one sample
#   BENCHTIME (if set, and SAMPLE not) total time per side and shape, split
#                                      into ROUNDS x SAMPLES samples
#   SAMPLES (default 3)                samples per side, shape and round
#   ROUNDS (default 3; COUNT if set)   rounds
#   TORCH_THREADS (default: PyTorch's own choice) torch.set_num_threads. Its
#                                      intra-op OpenMP threads keep spinning
#                                      next to OpenBLAS's pthreads, so more is
#                                      not faster on 2 cores (see README).
set -eu
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
samples=${SAMPLES:-3}
rounds=${ROUNDS:-${COUNT:-3}}
seconds() { python3 -c 'import sys,re; m=re.fullmatch(r"([\d.]+)(ns|us|ms|s|m)", sys.argv[1]); print(float(m.group(1))*{"ns":1e-9,"us":1e-6,"ms":1e-3,"s":1,"m":60}[m.group(2)] if m else 0.1)' "$1"; }
if [ -n "${SAMPLE:-}" ]; then
	sample_s=$(seconds "$SAMPLE")
elif [ -n "${BENCHTIME:-}" ]; then
	sample_s=$(python3 -c 'import sys; print(max(0.01, float(sys.argv[1]) / int(sys.argv[2])))' "$(seconds "$BENCHTIME")" "$((rounds * samples))")
else
	sample_s=0.1
fi
sample=$(python3 -c 'import sys; print(f"{float(sys.argv[1]) * 1000:.0f}ms")' "$sample_s")
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; flags: $(grep -o -w -E 'avx512f|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "environment: $(env | grep -E '^(OPENBLAS_|GOTO_|OMP_|GOMAXPROCS)' | tr '\n' ' ' || true)(no other OPENBLAS_*, GOTO_*, OMP_*, GOMAXPROCS)"
echo "samples: $rounds rounds x $samples samples of $sample per side and shape"
CGO_ENABLED=0 go test -c -o "$out/default.test" ./kernels/gemm/
have_blas=0
if echo '#include <cblas.h>' | cc -E - >/dev/null 2>&1; then
	go test -tags openblas -c -o "$out/openblas.test" ./kernels/gemm/
	have_blas=1
	(cd kernels/gemm && "$out/openblas.test" -test.run '^TestOpenBLASSetup$' -test.v) | sed -n 's/.*openblas: /openblas build: /p'
else
	echo "== openblas build skipped: no cblas.h (apt-get install libopenblas-dev)"
fi
have_torch=0
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
	have_torch=1
else
	echo "== PyTorch skipped: /usr/bin/python3 has no torch (apt-get install python3-torch libopenblas0)"
fi
# bench FILE TEST-BINARY ARGS...: runs a benchmark binary in kernels/gemm,
# appends its output to FILE and shows its Benchmark lines; a binary that
# fails stops the script with its output (a pipe through tee and grep hid
# a crash and left table.py partial data).
bench() {
	file=$1
	shift
	if ! (cd kernels/gemm && "$@") >"$file.part" 2>&1; then
		cat "$file.part" >&2
		echo "bench/gemm/run.sh: $* failed" >&2
		exit 1
	fi
	cat "$file.part" >>"$file"
	grep -E 'Benchmark' "$file.part" || true
}
for r in $(seq "$rounds"); do
	echo "== round $r: default build (cgo-free)"
	bench "$out/default.txt" "$out/default.test" -test.run '^$' -test.bench 'Shapes|FMAPeak' -test.benchtime "$sample" -test.count "$samples"
	if [ "$have_blas" = 1 ]; then
		echo "== round $r: openblas build"
		bench "$out/openblas.txt" "$out/openblas.test" -test.run '^$' -test.bench 'Shapes/impl=openblas' -test.benchtime "$sample" -test.count "$samples"
	fi
	if [ "$have_torch" = 1 ]; then
		echo "== round $r: PyTorch"
		/usr/bin/python3 bench/gemm/torch_bench.py "${TORCH_THREADS:-0}" "$samples" "$sample_s" | tee -a "$out/torch.txt"
	fi
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
/usr/bin/python3 bench/gemm/table.py "$out/default.txt" "$out/openblas.txt" "$out/torch.txt"
