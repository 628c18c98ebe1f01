package contracts

import (
	"errors"
	"strings"
	"testing"
)

func TestListElementErrorsNameTheirIndex(t *testing.T) {
	doc := kernelJSON(3, 2, 1)
	doc = strings.Replace(doc, `"input_shape": [2, 3, 4]`, `"input_shape": [2, "x", 4.5]`, 1)
	doc = strings.Replace(doc, `"device_requirements": ["dev0", "dev1"]`, `"device_requirements": ["dev0", 7]`, 1)
	_, err := DecodeCompiledKernel([]byte(doc))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a *ValidationError", err)
	}
	var paths []string
	for _, f := range ve.Fields {
		paths = append(paths, f.Path)
	}
	want := []string{"metadata.input_shape.1", "metadata.input_shape.2", "metadata.device_requirements.1"}
	if strings.Join(paths, " ") != strings.Join(want, " ") {
		t.Fatalf("error paths %q, want %q", paths, want)
	}
}
