package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/esper/kasmina-host/device"
)

// runDevices implements `kasmina-host devices [--json] [--all] [--simulate ...]`:
// the GPUs, MIG instances and the CPU as this process sees them
// (CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES applied).
func runDevices(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devices", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kasmina-host devices [--json] [--all] [--simulate dgxa100|dgxa100-mig|FILE.json]")
		fmt.Fprintln(stderr, "\nShows the GPUs, MIG instances and the CPU this process may use.")
		fs.PrintDefaults()
	}
	asJSON := fs.Bool("json", false, "print a JSON array, one object per device, GPUs and MIG instances first, the CPU last")
	all := fs.Bool("all", false, "also show devices hidden by CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES")
	var df deviceFlags
	df.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kasmina-host devices: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return exitUsage
	}
	if err := df.validate(); err != nil {
		fmt.Fprintf(stderr, "kasmina-host devices: %v\n", err)
		return exitUsage
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	inv, err := df.open(ctx, logger)
	if err != nil {
		fmt.Fprintf(stderr, "kasmina-host devices: %v\n", err)
		return exitFatal
	}
	defer inv.Close()
	snap := inv.Snapshot()
	devs := snap.Visible()
	if *all {
		devs = snap.Devices
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(devs); err != nil {
			fmt.Fprintf(stderr, "kasmina-host devices: %v\n", err)
			return exitFatal
		}
		return exitOK
	}
	if err := writeDeviceTable(stdout, snap, devs); err != nil {
		fmt.Fprintf(stderr, "kasmina-host devices: %v\n", err)
		return exitFatal
	}
	return exitOK
}

// writeDeviceTable prints an nvidia-smi-like summary, one row per device.
func writeDeviceTable(w io.Writer, snap device.Snapshot, devs []device.Device) error {
	header := "Source: " + snap.Source
	if snap.DriverVersion != "" {
		header += fmt.Sprintf("   Driver: %s   CUDA: %s   NVML: %s", snap.DriverVersion, snap.CUDADriverVersion, snap.NVMLVersion)
	}
	if _, err := fmt.Fprintln(w, header); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IDX\tKIND\tNAME\tUUID\tMEMORY USED / TOTAL\tFREE\tUTIL\tTEMP\tPOWER\tHEALTH")
	for _, d := range devs {
		util, temp, power := "-", "-", "-"
		switch d.Kind {
		case device.KindGPU:
			util = fmt.Sprintf("%d%%", d.UtilizationGPU)
			temp = fmt.Sprintf("%dC", d.TemperatureC)
			power = fmt.Sprintf("%.0fW", d.PowerW)
		case device.KindCPU:
			util = fmt.Sprintf("%g cores", d.CPUCores)
		}
		health := string(d.Health.State)
		if d.Health.State != device.HealthHealthy && d.Health.Reason != "" {
			health += ": " + d.Health.Reason
		}
		if !d.Visible {
			health += " (hidden)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s / %s\t%s\t%s\t%s\t%s\t%s\n", d.Label(), d.Kind, d.Name, d.UUID,
			mebibytes(d.MemoryUsedBytes), mebibytes(d.MemoryTotalBytes), mebibytes(d.MemoryFreeBytes), util, temp, power, health)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, warning := range snap.Warnings {
		if _, err := fmt.Fprintln(w, "warning: "+strings.TrimSpace(warning)); err != nil {
			return err
		}
	}
	return nil
}

// mebibytes formats bytes as nvidia-smi does ("40960MiB").
func mebibytes(b uint64) string { return fmt.Sprintf("%dMiB", b>>20) }
