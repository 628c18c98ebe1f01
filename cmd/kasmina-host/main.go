// Command kasmina-host is the node-local sidecar of the Esper morphogenetic
// training platform: it inventories GPUs through NVML, places compiled
// kernels against free VRAM, executes them on the CPU fallback path and
// publishes health signals on the Oona bus.
//
// Usage:
//
//	kasmina-host <command> [flags]
//
// Each command lives in its own file in this package; main only dispatches.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// Exit codes shared by every subcommand.
const (
	exitOK    = 0
	exitFatal = 1
	exitUsage = 2
	// exitStateRefused: serve refuses a state file it must not overwrite
	// (newer version, not JSON, unreadable); the same code as bad
	// settings, which it is: --state-move-aside is the way past it.
	exitStateRefused = 2
)

// command is one subcommand: its one-line summary and its entry point.
// run receives the arguments after the command name and returns an exit code.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands lists every subcommand. Each entry's run function is defined in
// the file named after it (devices.go, run.go, place.go, serve.go, ...).
var commands = map[string]command{
	"version": {"print the version and build information", runVersion},
	"run":     {"run a kernel on an input tensor (latency, GFLOP/s)", runRun},
	"devices": {"show GPUs, MIG instances and the CPU as the host sees them", runDevices},
	"place":   {"dry-run placement of a CompiledKernel document against the devices", runPlace},
	"serve":   {"run the host daemon (HTTP API, health signals, Oona bus)", runServe},

	"healthcheck": {"probe a running daemon's /v2/health/live (for container health checks)", runHealthcheck},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "kasmina-host: unknown command %q\n\n", args[0])
		usage(stderr)
		return exitUsage
	}
	return cmd.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: kasmina-host <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-12s %s\n", name, commands[name].summary)
	}
	fmt.Fprintln(w, "\nRun 'kasmina-host <command> -h' for a command's flags.")
}
