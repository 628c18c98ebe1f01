package main

import (
	"os/exec"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape GETs /metrics without any credentials: it must stay open for
// Prometheus even when the daemon requires a token.
func (d *daemon) scrape() string {
	d.t.Helper()
	code, h, body := d.do("GET", "/metrics", nil, map[string]string{"Authorization": ""})
	if code != 200 {
		d.t.Fatalf("/metrics: status %d: %s", code, body)
	}
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		d.t.Errorf("/metrics Content-Type %q, want the text format", ct)
	}
	return string(body)
}

func parseMetrics(t testing.TB, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("/metrics does not parse as the Prometheus text format: %v", err)
	}
	return mfs
}

// metricValue returns the value of the first series of name whose labels
// include want: a counter's or gauge's value, a histogram's sample count.
func metricValue(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// checkCommonMetrics checks the series every running daemon exports:
// build information, device gauges, the bus counters, the executor queue.
func checkCommonMetrics(t testing.TB, mfs map[string]*dto.MetricFamily) {
	t.Helper()
	checks := []struct {
		name   string
		labels map[string]string
		ok     func(float64) bool
		want   string
	}{
		{"kasmina_build_info", map[string]string{"version": "e2e-test", "nvml": "false"}, func(v float64) bool { return v == 1 }, "1"},
		{"kasmina_device_memory_total_bytes", map[string]string{"index": "cpu"}, func(v float64) bool { return v > 0 }, "> 0"},
		{"kasmina_device_memory_free_bytes", map[string]string{"index": "cpu"}, func(v float64) bool { return v > 0 }, "> 0"},
		{"kasmina_device_healthy", map[string]string{"index": "cpu"}, func(v float64) bool { return v == 1 }, "1"},
		{"kasmina_bus_messages_published_total", map[string]string{"topic": "telemetry.seed.health"}, func(v float64) bool { return v > 0 }, "> 0"},
		{"kasmina_bus_messages_delivered_total", map[string]string{"topic": "telemetry.seed.health"}, func(v float64) bool { return v > 0 }, "> 0"},
		{"kasmina_bus_buffer_messages", nil, func(v float64) bool { return v >= 0 }, "present"},
		{"kasmina_pending_requests", map[string]string{"executor": "cpu-f32"}, func(v float64) bool { return v == 0 }, "0 at rest"},
		{"kasmina_health_signals_total", nil, func(v float64) bool { return v > 0 }, "> 0"},
		{"kasmina_http_requests_total", map[string]string{"route": "POST /v2/models/{name}/infer", "code": "200"}, func(v float64) bool { return v > 0 }, "> 0"},
	}
	for _, c := range checks {
		v, ok := metricValue(mfs, c.name, c.labels)
		if !ok || !c.ok(v) {
			t.Errorf("%s%v = %v (present %v), want %s", c.name, c.labels, v, ok, c.want)
		}
	}
	bi := mfs["kasmina_build_info"]
	if bi != nil && len(bi.GetMetric()) == 1 {
		labels := map[string]bool{}
		for _, lp := range bi.GetMetric()[0].GetLabel() {
			labels[lp.GetName()] = lp.GetValue() != ""
		}
		for _, l := range []string{"version", "commit", "goversion", "nvml"} {
			if !labels[l] {
				t.Errorf("kasmina_build_info lacks a %s label", l)
			}
		}
	}
}

// lintMetrics runs client_golang's promlint over the parsed scrape, and
// `promtool check metrics` over the raw text when promtool is on PATH.
func lintMetrics(t testing.TB, text string) {
	t.Helper()
	mfs := parseMetrics(t, text)
	list := make([]*dto.MetricFamily, 0, len(mfs))
	for _, mf := range mfs {
		list = append(list, mf)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].GetName() < list[j].GetName() })
	problems, err := promlint.NewWithMetricFamilies(list).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool is not on PATH (Debian package prometheus): only promlint checked /metrics")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	} else {
		t.Logf("promtool check metrics: passed %s", strings.TrimSpace(string(out)))
	}
}
