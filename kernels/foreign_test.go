package kernels

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/esper/kasmina-host/internal/torchpython"
)

// torchFiles are the files make_fixtures.py writes and what each is.
var torchFiles = []struct {
	name   string
	format ForeignFormat
	phrase string
}{
	{"sequential_zip.pt", TorchSaveZip, "a PyTorch torch.save archive (zip), not an esper-kernel/v1 file"},
	{"sequential_legacy.pt", TorchSaveLegacy, "a PyTorch torch.save file (legacy pickle format), not an esper-kernel/v1 file"},
	{"sequential_script.pt", TorchScript, "a TorchScript archive (torch.jit.save), not an esper-kernel/v1 file"},
}

// checkRefusesTorchFiles loads every torch file of dir through each entry
// point and checks the refusal.
func checkRefusesTorchFiles(t *testing.T, dir string) {
	for _, f := range torchFiles {
		t.Run(f.name, func(t *testing.T) {
			path := filepath.Join(dir, f.name)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			_, errLoadFile := LoadFile(path, LoadOptions{})
			_, errLoad := Load(data, LoadOptions{InputShape: []int{3}})
			_, errMeta := ReadMetadata(data)
			_, errParse := ParseSafetensors(data)
			for name, err := range map[string]error{"LoadFile": errLoadFile, "Load": errLoad, "ReadMetadata": errMeta, "ParseSafetensors": errParse} {
				var ferr *ForeignFileError
				if !errors.As(err, &ferr) || ferr.Format != f.format || !errors.Is(err, ErrMalformed) {
					t.Errorf("%s: error %v, want a *ForeignFileError of format %v wrapping ErrMalformed", name, err, f.format)
					continue
				}
				for _, want := range []string{f.phrase, "convert it on the compile side with " + Converter} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("%s: error %q does not say %q", name, err, want)
					}
				}
			}
			if !strings.Contains(errLoadFile.Error(), path) {
				t.Errorf("LoadFile: error %q does not name the file", errLoadFile)
			}
		})
	}
}

// TestParseRefusesPyTorchFiles checks that torch.save files (zip and
// legacy) and TorchScript files are named for what they are, not reported
// as a safetensors header length of 578712552184433488: the committed
// fixtures, and files the installed PyTorch writes now.
func TestParseRefusesPyTorchFiles(t *testing.T) {
	t.Run("committed", func(t *testing.T) { checkRefusesTorchFiles(t, filepath.Join("testdata", "torch")) })
	t.Run("installed PyTorch", func(t *testing.T) {
		py := torchpython.Interpreter(t)
		dir := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, py, filepath.Join("testdata", "torch", "make_fixtures.py"), dir).CombinedOutput(); err != nil {
			t.Fatalf("make_fixtures.py: %v\n%s", err, out)
		}
		checkRefusesTorchFiles(t, dir)
	})
}

// safetensorsWithHeaderLength returns a valid safetensors file whose JSON
// header is exactly n bytes (n a multiple of 8), padding with metadata.
func safetensorsWithHeaderLength(t *testing.T, n int) []byte {
	t.Helper()
	for pad := 0; pad < n; pad++ {
		var buf bytes.Buffer
		md := map[string]string{MetaFormat: FormatV1, "pad": strings.Repeat("x", pad)}
		if err := WriteSafetensors(&buf, []Tensor{F32Tensor("w", []int{2}, []float32{1, 2})}, md); err != nil {
			t.Fatal(err)
		}
		if b := buf.Bytes(); int(b[0])|int(b[1])<<8 == n && b[2] == 0 {
			return b
		}
	}
	t.Fatalf("no padding gives a %d-byte header", n)
	return nil
}

func TestSniffForeignNamesOtherFilesAndLeavesSafetensorsAlone(t *testing.T) {
	var plainZip bytes.Buffer
	zw := zip.NewWriter(&plainZip)
	if w, err := zw.Create("notes/readme.txt"); err != nil {
		t.Fatal(err)
	} else {
		_, _ = w.Write([]byte("hello"))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		data []byte
		want ForeignFormat
	}{
		// pickle.dumps({}, protocol=4) and pickle.dumps([], protocol=2).
		{"pickle protocol 4", []byte{0x80, 0x04, 0x7d, 0x94, 0x2e}, Pickle},
		{"pickle protocol 2", []byte{0x80, 0x02, 0x5d, 0x71, 0x00, 0x2e}, Pickle},
		{"other zip", plainZip.Bytes(), Zip},
		{"damaged zip", append([]byte("PK\x03\x04"), make([]byte, 60)...), Zip},
		{"torch magic alone", torchMagic, TorchSaveLegacy},
		// Header lengths 0x280 and 0x380 begin like pickles of protocol 2
		// and 3, but fit in the file: they are safetensors.
		{"safetensors, 640-byte header", safetensorsWithHeaderLength(t, 0x280), 0},
		{"safetensors, 896-byte header", safetensorsWithHeaderLength(t, 0x380), 0},
		{"empty", nil, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := sniffForeign(c.data); got != c.want {
				t.Fatalf("sniffForeign = %v, want %v", got, c.want)
			}
			_, err := ParseSafetensors(c.data)
			var ferr *ForeignFileError
			switch {
			case c.want != 0 && (!errors.As(err, &ferr) || ferr.Format != c.want || !strings.Contains(err.Error(), c.want.String())):
				t.Errorf("ParseSafetensors: %v, want a refusal naming %v", err, c.want)
			case c.want == 0 && c.data != nil && err != nil:
				t.Errorf("ParseSafetensors refused a valid file: %v", err)
			}
		})
	}
}
