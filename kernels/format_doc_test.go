package kernels

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestKernelFormatDocumentsWhatTheCodeAccepts keeps KERNEL_FORMAT.md in step
// with the parser: every module type and each of its attributes appears in
// the type's table row, every dtype the reader takes is listed, and the
// limits are quoted with their values.
func TestKernelFormatDocumentsWhatTheCodeAccepts(t *testing.T) {
	raw, err := os.ReadFile("KERNEL_FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	_, graph, ok := strings.Cut(doc, "\n## Module graph\n")
	if !ok {
		t.Fatal("no \"## Module graph\" section")
	}
	graph, _, _ = strings.Cut(graph, "\n## ")
	rows := map[string]string{}
	for _, line := range strings.Split(graph, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.Split(line, "|")[1]
		for _, f := range strings.Split(first, ",") {
			rows[strings.Trim(strings.TrimSpace(f), "`")] = line
		}
	}
	for typ, attrs := range moduleAttrs {
		row, ok := rows[typ]
		if !ok {
			t.Errorf("module type %q has no row in the module table", typ)
			continue
		}
		for _, a := range attrs {
			if !strings.Contains(row, "`"+a+"`") {
				t.Errorf("module type %q: attribute %q is missing from its row", typ, a)
			}
		}
	}
	for _, d := range []DType{F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, Bool} {
		if !strings.Contains(doc, "`"+string(d)+"`") {
			t.Errorf("dtype %s is not listed", d)
		}
	}
	for name, want := range map[string]string{
		"MaxHeaderBytes": fmt.Sprintf("%d MiB (`MaxHeaderBytes`)", MaxHeaderBytes>>20),
		"MaxTensors":     fmt.Sprintf("%d tensors (`MaxTensors`)", MaxTensors),
		"MaxRank":        fmt.Sprintf("%d (`MaxRank`)", MaxRank),
		"MaxDepth":       fmt.Sprintf("%d deep (`MaxDepth`)", MaxDepth),
		"MaxModules":     fmt.Sprintf("%d modules (`MaxModules`)", MaxModules),
		"Converter":      Converter,
		"FormatV1":       "exactly `" + FormatV1 + "`",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("%s: the document does not say %q", name, want)
		}
	}
}
