#!/usr/bin/env bash
# Runs every fuzz target of the module (every `func FuzzXxx` in a *_test.go
# file) for SECONDS each, one after another, and prints one line per target
# with its executions, new corpus entries and result, then a summary.
#
#   bench/fuzz/run.sh [SECONDS]     # default 3 (what CI runs)
#   bench/fuzz/run.sh -list         # list the targets and exit
#
# Environment:
#   FUZZ_PARALLEL  fuzzing workers per target (default: go's, GOMAXPROCS)
#   FUZZ_REPORT    also write the table as Markdown to this file
#   FUZZ_MATCH     only targets whose "pkg FuzzName" matches this regex
#   FUZZ_MINIMIZE  -fuzzminimizetime (default 100x: go's 60s default, and
#                  even 2s, stall targets with kilobyte-sized inputs such
#                  as the safetensors files, which then run a few
#                  executions a second while every new corpus entry is
#                  minimized; 100 runs per attempt keeps them at thousands)
#
# Go 1.26's fuzz coordinator can end a run with a bare "context deadline
# exceeded" at the -fuzztime boundary and no input written
# (golang/go#75804, fixed in Go 1.27). Such a run is retried once and, if
# it happens again with no reproducer, reported as "engine flake" without
# failing the script: it is not a finding.
#
# A finding is a failing input: `go test` writes it to the package's
# testdata/fuzz/FuzzXxx/ directory (the reproducer; re-run it with
# `go test -run 'FuzzXxx/HASH' ./pkg`), this script prints where, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${1:-3}
targets=$(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(' . |
	sed -E 's#^\./(.*)/[^/]+_test\.go:[0-9]+:func (Fuzz[A-Za-z0-9_]+)\(.*#\1 \2#' | sort -u)
if [[ -n "${FUZZ_MATCH:-}" ]]; then
	targets=$(grep -E -- "$FUZZ_MATCH" <<<"$targets" || true)
fi
if [[ "$secs" == "-list" ]]; then
	echo "$targets"
	exit 0
fi
if ! [[ "$secs" =~ ^[0-9]+$ ]] || ((secs < 1)); then
	echo "usage: $0 [SECONDS|-list]" >&2
	exit 2
fi
n=$(wc -l <<<"$targets")
echo "fuzz: $n targets, ${secs}s each, $(nproc) CPUs, $(go version | cut -d' ' -f3)"
par=()
[[ -n "${FUZZ_PARALLEL:-}" ]] && par=(-parallel "$FUZZ_PARALLEL")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows=()
failed=0
flakes=0
total_execs=0
start=$SECONDS
printf '%-22s %-22s %12s %6s %7s %6s  %s\n' package target execs new corpus wall result
while read -r pkg name; do
	log="$tmp/$name.log"
	t0=$SECONDS
	flake=""
	for attempt in 1 2; do
		set +e
		go test -run '^$' -fuzz "^${name}\$" -fuzztime "${secs}s" -fuzzminimizetime "${FUZZ_MINIMIZE:-100x}" \
			"${par[@]}" "./$pkg" >"$log" 2>&1
		rc=$?
		set -e
		if ((rc != 0)) && ! grep -q 'Failing input written' "$log" &&
			grep -q -- "--- FAIL: $name" "$log" && grep -qx '    context deadline exceeded' "$log"; then
			flake="engine flake (golang/go#75804), attempt $attempt"
			continue
		fi
		flake=""
		break
	done
	# The last progress line: "fuzz: elapsed: 3s, execs: 12345 (4115/sec), new interesting: 2 (total: 40)".
	execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
	newi=$(grep -oE 'new interesting: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
	corpus=$(grep -oE 'total: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
	execs=${execs:-0}
	total_execs=$((total_execs + execs))
	if ((rc == 0)); then
		result="ok${flake:+ after $flake}"
	elif [[ -n "$flake" ]]; then
		result="$flake"
		flakes=$((flakes + 1))
	else
		failed=$((failed + 1))
		repro=$(grep -oE "testdata/fuzz/${name}/[0-9a-f]+" "$log" | head -1 || true)
		if [[ -n "$repro" ]]; then
			result="FINDING $pkg/$repro"
		else
			result="FAIL (rc $rc, no reproducer written)"
		fi
		echo "---- $pkg $name output (tail):" >&2
		tail -40 "$log" >&2
	fi
	printf '%-22s %-22s %12s %6s %7s %5ss  %s\n' "$pkg" "$name" "$execs" "${newi:-0}" "${corpus:-?}" "$((SECONDS - t0))" "$result"
	rows+=("| \`$pkg\` | $name | $execs | ${newi:-0} | ${corpus:-?} | $result |")
done <<<"$targets"
echo "fuzz: $n targets, $total_execs executions, $failed with findings or failures, $flakes engine flakes, $((SECONDS - start))s in all"
if [[ -n "${FUZZ_REPORT:-}" ]]; then
	{
		echo "| package | target | executions | new interesting | corpus | result |"
		echo "|---|---|---:|---:|---:|---|"
		printf '%s\n' "${rows[@]}"
	} >"$FUZZ_REPORT"
fi
((failed == 0))
