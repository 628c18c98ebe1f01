package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// serveEnvVars returns the environment variables `serve` reads, from its
// own -h output ("[$NAME]").
func serveEnvVars(t *testing.T) map[string]bool {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := dispatch(context.Background(), []string{"serve", "-h"}, &out, &errOut); code != exitOK {
		t.Fatalf("serve -h: exit %d", code)
	}
	vars := map[string]bool{}
	for _, m := range regexp.MustCompile(`\[\$([A-Z0-9_]+)\]`).FindAllStringSubmatch(errOut.String(), -1) {
		vars[m[1]] = true
	}
	if !vars["KASMINA_ADDR"] || !vars["REDIS_URL"] {
		t.Fatalf("serve -h lists no KASMINA_ADDR/REDIS_URL:\n%s", errOut.String())
	}
	return vars
}

// k8s types: the few fields the checks read.
type k8sDoc struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Metadata struct {
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec k8sPodSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sPodSpec struct {
	RuntimeClassName              string            `yaml:"runtimeClassName"`
	NodeSelector                  map[string]string `yaml:"nodeSelector"`
	TerminationGracePeriodSeconds int               `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot bool `yaml:"runAsNonRoot"`
		RunAsUser    int  `yaml:"runAsUser"`
	} `yaml:"securityContext"`
	Containers []k8sContainer `yaml:"containers"`
	Volumes    []struct {
		Name   string         `yaml:"name"`
		Secret map[string]any `yaml:"secret"`
	} `yaml:"volumes"`
}

type k8sContainer struct {
	Name  string   `yaml:"name"`
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	EnvFrom []struct {
		ConfigMapRef struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
	} `yaml:"envFrom"`
	Env []struct {
		Name      string         `yaml:"name"`
		Value     *string        `yaml:"value"`
		ValueFrom map[string]any `yaml:"valueFrom"`
	} `yaml:"env"`
	LivenessProbe  k8sProbe `yaml:"livenessProbe"`
	ReadinessProbe k8sProbe `yaml:"readinessProbe"`
	StartupProbe   k8sProbe `yaml:"startupProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		ReadOnlyRootFilesystem   bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation bool `yaml:"allowPrivilegeEscalation"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

func readManifest(t *testing.T) []k8sDoc {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(false)
	var docs []k8sDoc
	for {
		var d k8sDoc
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("deploy/daemonset.yaml does not parse: %v", err)
		}
		if d.Kind != "" {
			docs = append(docs, d)
		}
	}
	return docs
}

// TestDeployManifestMatchesBinary checks deploy/daemonset.yaml against the
// binary: every setting it passes is one serve reads, the probes and the
// scrape annotations point at the daemon's routes and port, the token is
// a mounted secret file, NVIDIA_VISIBLE_DEVICES is left to the device
// plugin, and the pod runs non-root on a read-only root. Then it starts
// the daemon with the manifest's settings to prove they are accepted.
func TestDeployManifestMatchesBinary(t *testing.T) {
	known := serveEnvVars(t)
	docs := readManifest(t)
	var ds *k8sDoc
	configMaps := map[string]map[string]string{}
	for i := range docs {
		switch docs[i].Kind {
		case "DaemonSet":
			ds = &docs[i]
		case "ConfigMap":
			configMaps[docs[i].Metadata.Name] = docs[i].Data
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet in deploy/daemonset.yaml")
	}
	pod := ds.Spec.Template.Spec
	if pod.RuntimeClassName != "nvidia" {
		t.Errorf("runtimeClassName %q, want nvidia", pod.RuntimeClassName)
	}
	if len(pod.NodeSelector) == 0 {
		t.Error("no nodeSelector for GPU nodes")
	}
	if !pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.RunAsUser == 0 {
		t.Error("the pod must run as a non-root user")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Errorf("args %v, want serve", c.Args)
	}
	if !c.SecurityContext.ReadOnlyRootFilesystem || c.SecurityContext.AllowPrivilegeEscalation {
		t.Error("the container needs a read-only root filesystem and no privilege escalation")
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Limits["memory"] == "" {
		t.Error("resources: want cpu requests and a memory limit")
	}

	// The settings: env and the ConfigMaps it reads.
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		cm, ok := configMaps[ef.ConfigMapRef.Name]
		if !ok {
			t.Errorf("envFrom names ConfigMap %q, not in the manifest", ef.ConfigMapRef.Name)
		}
		for k, v := range cm {
			env[k] = v
		}
	}
	fromSecret := map[string]bool{}
	for _, e := range c.Env {
		switch {
		case e.Value != nil:
			env[e.Name] = *e.Value
		case e.ValueFrom["secretKeyRef"] != nil:
			fromSecret[e.Name] = true
			env[e.Name] = ""
		default:
			env[e.Name] = ""
		}
	}
	for name := range env {
		if !known[name] {
			t.Errorf("the manifest sets %s, which kasmina-host serve does not read", name)
		}
	}
	if _, set := env["NVIDIA_VISIBLE_DEVICES"]; set {
		t.Error("NVIDIA_VISIBLE_DEVICES is baked into the manifest; leave it to the device plugin")
	}
	if !fromSecret["REDIS_URL"] {
		t.Error("REDIS_URL must come from a Secret (it may hold a password)")
	}
	if _, ok := env["KASMINA_AUTH_TOKEN"]; ok {
		t.Error("the token must be a mounted file (KASMINA_AUTH_TOKEN_FILE), not an environment value")
	}
	mounted := func(path string) string {
		for _, m := range c.VolumeMounts {
			if path == m.MountPath || strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") {
				return m.Name
			}
		}
		return ""
	}
	tokenVol := mounted(env["KASMINA_AUTH_TOKEN_FILE"])
	isSecret := false
	for _, v := range pod.Volumes {
		if v.Name == tokenVol && v.Secret != nil {
			isSecret = true
		}
	}
	if !isSecret {
		t.Errorf("KASMINA_AUTH_TOKEN_FILE %q is not in a mounted Secret volume", env["KASMINA_AUTH_TOKEN_FILE"])
	}
	if mounted(env["KASMINA_STATE_DIR"]) == "" {
		t.Errorf("KASMINA_STATE_DIR %q is not a mounted volume (the root filesystem is read-only)", env["KASMINA_STATE_DIR"])
	}
	portName, port := "", ""
	for _, key := range []string{"KASMINA_GRPC_ADDR", "KASMINA_ADDR"} {
		_, p, err := net.SplitHostPort(env[key])
		port = p // KASMINA_ADDR's, last, for the probes below
		if err != nil {
			t.Fatalf("%s %q: %v", key, env[key], err)
		}
		name := ""
		for _, cp := range c.Ports {
			if strconv.Itoa(cp.ContainerPort) == port {
				name = cp.Name
			}
		}
		if name == "" {
			t.Errorf("no containerPort for %s's port %s", key, port)
		}
		if key == "KASMINA_ADDR" {
			portName = name
		}
	}
	if exit, err := time.ParseDuration(env["KASMINA_EXIT_TIMEOUT"]); err != nil || time.Duration(pod.TerminationGracePeriodSeconds)*time.Second <= exit {
		t.Errorf("terminationGracePeriodSeconds %d must exceed KASMINA_EXIT_TIMEOUT %q", pod.TerminationGracePeriodSeconds, env["KASMINA_EXIT_TIMEOUT"])
	}

	// Probes and scraping.
	for _, p := range []struct {
		name  string
		probe k8sProbe
		path  string
	}{{"liveness", c.LivenessProbe, "/v2/health/live"}, {"readiness", c.ReadinessProbe, "/v2/health/ready"}} {
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s probe on %q, want %s", p.name, p.probe.HTTPGet.Path, p.path)
		}
		if got := toString(p.probe.HTTPGet.Port); got != portName && got != port {
			t.Errorf("%s probe on port %v, want %s", p.name, got, port)
		}
	}
	ann := ds.Spec.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != port || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v, want scrape true, port %s, path /metrics", ann, port)
	}

	// The daemon accepts the manifest's settings (paths, address and the
	// bus replaced by the test's own; the token from a temporary file).
	if testing.Short() {
		return
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("manifest"), 0o600); err != nil {
		t.Fatal(err)
	}
	var extra []string
	for k, v := range env {
		switch k {
		case "REDIS_URL", "KASMINA_ADDR", "KASMINA_GRPC_ADDR", "KASMINA_STATE_DIR", "KASMINA_HOST_ID", "KASMINA_EXIT_TIMEOUT":
			continue // the test harness sets these
		case "KASMINA_AUTH_TOKEN_FILE":
			v = tokenFile
		}
		extra = append(extra, k+"="+v)
	}
	d := startDaemon(t, daemonConfig{env: extra, token: "manifest", args: []string{"--no-examples"}})
	d.stop()
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int:
		return strconv.Itoa(x)
	}
	return ""
}

// TestDockerfileMatchesBinary checks Dockerfile.cuda against the binary:
// its KASMINA_* settings exist, EXPOSE is KASMINA_ADDR's port, the health
// check runs a subcommand the binary has, the user is not root, and NVML
// gets the utility capability.
func TestDockerfileMatchesBinary(t *testing.T) {
	known := serveEnvVars(t)
	raw, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile.cuda"))
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, then read the final stage's instructions.
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(strings.TrimSuffix(l, "\\") + " ")
			continue
		}
		cur.WriteString(l)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	env := map[string]string{}
	var expose, user, healthcheck, cmd, entrypoint string
	stages := 0
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			stages++
		case "ENV":
			for _, kv := range strings.Fields(rest) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = v
				}
			}
		case "EXPOSE":
			expose = strings.TrimSpace(rest)
		case "USER":
			user = strings.TrimSpace(rest)
		case "HEALTHCHECK":
			healthcheck = rest
		case "CMD":
			cmd = rest
		case "ENTRYPOINT":
			entrypoint = rest
		}
	}
	if stages < 2 {
		t.Errorf("%d stages, want a build stage and a runtime stage", stages)
	}
	for k := range env {
		if strings.HasPrefix(k, "KASMINA_") && !known[k] {
			t.Errorf("ENV %s: kasmina-host serve does not read it", k)
		}
	}
	if env["NVIDIA_DRIVER_CAPABILITIES"] != "utility" {
		t.Errorf("NVIDIA_DRIVER_CAPABILITIES=%q, want utility", env["NVIDIA_DRIVER_CAPABILITIES"])
	}
	exposed := strings.Fields(expose)
	for _, key := range []string{"KASMINA_ADDR", "KASMINA_GRPC_ADDR"} {
		if _, port, err := net.SplitHostPort(env[key]); err != nil || !slices.Contains(exposed, port) {
			t.Errorf("EXPOSE %q but %s=%q", expose, key, env[key])
		}
	}
	if env["KASMINA_AUTH_TOKEN_FILE"] == "" {
		t.Error("the image listens beyond loopback: it needs KASMINA_AUTH_TOKEN_FILE")
	}
	if user == "" || strings.HasPrefix(user, "0") || strings.HasPrefix(user, "root") {
		t.Errorf("USER %q: want a non-root user", user)
	}
	if exit, err := time.ParseDuration(env["KASMINA_EXIT_TIMEOUT"]); err != nil || exit >= 10*time.Second {
		t.Errorf("KASMINA_EXIT_TIMEOUT=%q must fit docker stop's default 10 s", env["KASMINA_EXIT_TIMEOUT"])
	}
	m := regexp.MustCompile(`kasmina-host",\s*"([a-z]+)"`).FindStringSubmatch(healthcheck)
	if m == nil {
		t.Fatalf("HEALTHCHECK %q does not run kasmina-host <command>", healthcheck)
	}
	if _, ok := commands[m[1]]; !ok {
		t.Errorf("HEALTHCHECK runs %q, which is not a kasmina-host command", m[1])
	}
	if !strings.Contains(entrypoint, "kasmina-host") || !strings.Contains(cmd, `"serve"`) {
		t.Errorf("ENTRYPOINT %s CMD %s: want kasmina-host serve", entrypoint, cmd)
	}
}
