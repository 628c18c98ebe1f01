package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/esper/kasmina-host/device"
)

// deviceFlags are the flags shared by every subcommand that opens a device
// inventory (devices, place, serve). Each flag's default comes from its
// KASMINA_* environment variable, so a flag wins over the environment.
type deviceFlags struct {
	simulate   string
	requireGPU bool
	envErr     error
}

// register adds --simulate and --require-gpu to fs.
func (f *deviceFlags) register(fs *flag.FlagSet) {
	f.simulate = os.Getenv("KASMINA_SIMULATE")
	if v, ok := os.LookupEnv("KASMINA_REQUIRE_GPU"); ok && v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			f.envErr = fmt.Errorf("KASMINA_REQUIRE_GPU=%q is not a boolean", v)
		}
		f.requireGPU = b
	}
	fs.StringVar(&f.simulate, "simulate", f.simulate,
		"simulate a node instead of reading NVML: dgxa100, dgxa100-mig, or a JSON file (format: device/SIMULATE.md) [$KASMINA_SIMULATE]")
	fs.BoolVar(&f.requireGPU, "require-gpu", f.requireGPU,
		"fail instead of running CPU-only when there is no NVML or no visible GPU [$KASMINA_REQUIRE_GPU]")
}

// validate reports a bad environment value (a usage error, exit 2).
func (f *deviceFlags) validate() error { return f.envErr }

// options turns the flags into device.Options; the caller may set more
// fields (RefreshInterval, ...) before calling device.Open.
func (f *deviceFlags) options(logger *slog.Logger) device.Options {
	return device.Options{Simulate: f.simulate, RequireGPU: f.requireGPU, Logger: logger}
}

// open opens the inventory the flags describe.
func (f *deviceFlags) open(ctx context.Context, logger *slog.Logger) (*device.Inventory, error) {
	return device.Open(ctx, f.options(logger))
}
