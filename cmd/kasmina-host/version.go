package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
)

// version is set at link time: -ldflags "-X main.version=v0.1.0".
var version = "dev"

// buildInfo describes the binary for `kasmina-host version` and the
// kasmina_build_info metric.
type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
	Tags      string `json:"tags"`
	CGO       bool   `json:"cgo"`
}

func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, Commit: "unknown"}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	bi.GoVersion = info.GoVersion
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Commit = s.Value
		case "-tags":
			bi.Tags = s.Value
		case "CGO_ENABLED":
			bi.CGO = s.Value == "1"
		}
	}
	return bi
}

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) int {
	bi := readBuildInfo()
	fmt.Fprintf(stdout, "kasmina-host %s (commit %s, %s, tags=%q, cgo=%v)\n",
		bi.Version, bi.Commit, bi.GoVersion, bi.Tags, bi.CGO)
	return exitOK
}
