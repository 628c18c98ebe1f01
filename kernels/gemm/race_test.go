//go:build race

package gemm

// raceEnabled trims the slowest test cases under the race detector.
const raceEnabled = true
