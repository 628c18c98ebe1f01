package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"

	"github.com/esper/kasmina-host/runtime"
)

// runPlace implements `kasmina-host place --kernel FILE.json [--batch N]
// [--simulate ...] [--json]`: a dry run of placement for a CompiledKernel
// document against the devices now. It exits 0 when a device is found and
// 1 when none is, printing the decision either way.
func runPlace(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("place", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kasmina-host place --kernel FILE.json [--batch N] [--simulate dgxa100|FILE.json] [--json]")
		fmt.Fprintln(stderr, "\nDry run: where would this CompiledKernel go, and why not elsewhere?")
		fs.PrintDefaults()
	}
	e := &envFlags{fs: fs}
	kernelPath := fs.String("kernel", "", "CompiledKernel JSON document (or a bare KernelMetadata document)")
	batch := fs.Int("batch", 32, "batch size the memory estimate is made for")
	asJSON := fs.Bool("json", false, "print the decision as one JSON object")
	var df deviceFlags
	df.register(fs)
	var pf placementFlags
	pf.register(fs, e)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "kasmina-host place: "+format+"\n", a...)
		return code
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "unexpected argument %q", fs.Arg(0))
	}
	if *kernelPath == "" {
		return fail(exitUsage, "--kernel FILE.json is required")
	}
	if *batch < 1 {
		return fail(exitUsage, "--batch must be ≥ 1, got %d", *batch)
	}
	if err := errors.Join(df.validate(), e.err()); err != nil {
		return fail(exitUsage, "%v", err)
	}
	opts, fb, err := pf.parse()
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	data, err := os.ReadFile(*kernelPath)
	if err != nil {
		return fail(exitFatal, "%v", err)
	}
	md, err := runtime.MetadataOf(data)
	if err != nil {
		return fail(exitFatal, "%s: %v", *kernelPath, err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	inv, err := df.open(ctx, logger)
	if err != nil {
		return fail(exitFatal, "%v", err)
	}
	defer inv.Close()
	host, err := runtime.New(runtime.Config{Placement: opts, Fallback: fb, Logger: logger}, runtime.Deps{Inventory: inv})
	if err != nil {
		return fail(exitFatal, "%v", err)
	}
	view, err := host.Plan(md, *batch, nil)
	if err != nil {
		return fail(exitFatal, "%v", err)
	}
	code := exitOK
	if view.Device == "" {
		code = exitFatal
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(view); err != nil {
			return fail(exitFatal, "%v", err)
		}
		return code
	}
	if view.Device != "" {
		fmt.Fprintf(stdout, "placed on %s", view.Device)
		if view.UUID != "" {
			fmt.Fprintf(stdout, " (%s)", view.UUID)
		}
		fmt.Fprintf(stdout, ", degraded=%v\n", view.Degraded)
	} else {
		fmt.Fprintln(stdout, "no placement")
	}
	fmt.Fprintf(stdout, "estimate: %.1f MiB at batch %d (%s; contract %.1f MiB, weights+activations %.1f MiB)\n",
		view.EstimateMiB, view.Batch, view.EstimateSource, view.ContractMiB, view.FloorMiB)
	fmt.Fprintf(stdout, "reason: %s\n\n", view.Reason)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tFITS\tFREE MiB\tRESERVED\tHEADROOM\tEFFECTIVE\tREASON")
	for _, c := range view.Candidates {
		fmt.Fprintf(tw, "%s\t%v\t%.0f\t%.0f\t%.0f\t%.0f\t%s\n", c.Device, c.Fits, c.FreeMiB, c.ReservedMiB, c.HeadroomMiB, c.EffectiveFreeMiB, c.Reason)
	}
	tw.Flush()
	return code
}
