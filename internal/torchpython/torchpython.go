// Package torchpython finds, for tests, the Python interpreter that has
// PyTorch: KASMINA_PYTHON, or Debian's /usr/bin/python3 (python3-torch),
// never whatever python3 comes first on PATH.
package torchpython

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Interpreter returns the interpreter's path. Without PyTorch the test is
// skipped loudly (a SKIPPED line on stdout and the reason), or fails when
// KASMINA_REQUIRE_TORCH=1, as CI sets it.
func Interpreter(t testing.TB) string {
	t.Helper()
	py := os.Getenv("KASMINA_PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", "import torch; print(torch.__version__)").CombinedOutput()
	if err != nil {
		reason := fmt.Sprintf("PyTorch is not importable by %s (%v)", py, err)
		if l := lastLine(out); l != "" {
			reason = fmt.Sprintf("PyTorch is not importable by %s (%v: %s)", py, err, l)
		}
		if os.Getenv("KASMINA_REQUIRE_TORCH") == "1" {
			t.Fatalf("%s, and KASMINA_REQUIRE_TORCH=1", reason)
		}
		fmt.Printf("%s: SKIPPED (%s)\n", t.Name(), reason)
		t.Skipf("SKIPPED, NOT RUN: %s. Install it with `apt-get install -y --no-install-recommends python3-torch libopenblas0` (or point KASMINA_PYTHON at one that has torch); set KASMINA_REQUIRE_TORCH=1 to make this a failure.", reason)
	}
	t.Logf("PyTorch %s at %s", strings.TrimSpace(string(out)), py)
	return py
}

// lastLine is the last non-blank line of b, where a Python traceback puts
// the error.
func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
