package torchpython

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestLastLine(t *testing.T) {
	for in, want := range map[string]string{
		"":      "",
		"one\n": "one",
		"Traceback (most recent call last):\n  File \"<string>\"\nModuleNotFoundError: No module named 'torch'\n": "ModuleNotFoundError: No module named 'torch'",
	} {
		if got := lastLine([]byte(in)); got != want {
			t.Errorf("lastLine(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestInterpreterFailsWhenRequired: an interpreter without PyTorch is a
// failure, not a skip, under KASMINA_REQUIRE_TORCH=1.
func TestInterpreterFailsWhenRequired(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "python")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'No module named torch' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KASMINA_PYTHON", fake)
	t.Setenv("KASMINA_REQUIRE_TORCH", "1")
	rec := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Interpreter(rec)
	}()
	<-done
	if !rec.failed {
		t.Fatal("Interpreter did not fail without PyTorch under KASMINA_REQUIRE_TORCH=1")
	}
}

// recorder records a Fatalf instead of ending the test.
type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.TB.Logf("Fatalf: "+format, args...)
	runtime.Goexit()
}

func (r *recorder) Helper() {}
