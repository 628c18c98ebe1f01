package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// runHealthcheck implements `kasmina-host healthcheck [--addr HOST:PORT]
// [--ready] [--timeout D]`: a probe for container health checks in images
// that have no curl. It GETs /v2/health/live (or /v2/health/ready with
// --ready) of the daemon at --addr and exits 0 on 200, 1 otherwise. The
// address defaults to $KASMINA_ADDR, as serve reads it; a wildcard host
// (0.0.0.0, ::, empty) is probed on loopback.
func runHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kasmina-host healthcheck [--addr HOST:PORT] [--ready] [--timeout 3s]")
		fmt.Fprintln(stderr, "\nExits 0 when the daemon at --addr answers 200 on /v2/health/live (--ready: /v2/health/ready), 1 otherwise.")
		fs.PrintDefaults()
	}
	e := &envFlags{fs: fs}
	addr := new(string)
	e.String(addr, "addr", "KASMINA_ADDR", DefaultAddr, "the daemon's listen address")
	ready := fs.Bool("ready", false, "probe /v2/health/ready instead of /v2/health/live")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kasmina-host healthcheck: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	host, port, err := net.SplitHostPort(*addr)
	if err != nil {
		fmt.Fprintf(stderr, "kasmina-host healthcheck: --addr %q: %v\n", *addr, err)
		return exitUsage
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "kasmina-host healthcheck: --timeout must be > 0")
		return exitUsage
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	path := "/v2/health/live"
	if *ready {
		path = "/v2/health/ready"
	}
	url := "http://" + net.JoinHostPort(host, port) + path
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "kasmina-host healthcheck: %v\n", err)
		return exitUsage
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "kasmina-host healthcheck: %v\n", err)
		return exitFatal
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "kasmina-host healthcheck: %s answered %d: %s\n", url, resp.StatusCode, body)
		return exitFatal
	}
	fmt.Fprintf(stdout, "%s: %s\n", url, body)
	return exitOK
}
