package kernels

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Converter is the compile-side tool that turns PyTorch files into
// esper-kernel/v1 files; ForeignFileError names it.
const Converter = "kernels/torchexport/esper_convert.py"

// ForeignFormat is a file format the reader recognises in place of a
// safetensors file and refuses without interpreting it: nothing in such a
// file is decompressed, unpickled or run.
type ForeignFormat uint8

// The formats recognised. The zero value is no foreign format.
const (
	// TorchSaveZip is torch.save's zip container (the default since
	// PyTorch 1.6): PREFIX/data.pkl, PREFIX/data/N, PREFIX/version.
	TorchSaveZip ForeignFormat = iota + 1
	// TorchSaveLegacy is torch.save(..., _use_new_zipfile_serialization=
	// False): pickles that start with torch's magic number.
	TorchSaveLegacy
	// TorchScript is torch.jit.save (ScriptModule.save): a zip that holds
	// PREFIX/constants.pkl and the module's source under PREFIX/code/.
	TorchScript
	// Pickle is another Python pickle (protocol 2 to 5).
	Pickle
	// Zip is another zip archive.
	Zip
)

// String describes the format as the refusal names it.
func (f ForeignFormat) String() string {
	switch f {
	case TorchSaveZip:
		return "a PyTorch torch.save archive (zip)"
	case TorchSaveLegacy:
		return "a PyTorch torch.save file (legacy pickle format)"
	case TorchScript:
		return "a TorchScript archive (torch.jit.save)"
	case Pickle:
		return "a Python pickle"
	case Zip:
		return "a zip archive"
	}
	return fmt.Sprintf("ForeignFormat(%d)", uint8(f))
}

// ForeignFileError refuses a file in a ForeignFormat. It wraps ErrMalformed.
type ForeignFileError struct {
	Format ForeignFormat
}

// Error says what the file is and how to convert it.
func (e *ForeignFileError) Error() string {
	return fmt.Sprintf("the file is %s, not an %s file; convert it on the compile side with %s (the host never unpickles or runs a model file)", e.Format, FormatV1, Converter)
}

// Unwrap returns ErrMalformed.
func (e *ForeignFileError) Unwrap() error { return ErrMalformed }

var (
	zipMagic = []byte("PK\x03\x04")
	// torchMagic is how torch.save's legacy format begins: pickle protocol
	// 2 (0x80 0x02), then LONG1 (0x8a) of 10 bytes holding torch's magic
	// number 0x1950a86a20f9469cfc6c, little-endian.
	torchMagic = []byte{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19}
)

// sniffForeign returns the foreign format data is in, or 0. It reads magic
// numbers and, for a zip, the entry names of its central directory. A zip
// signature or torch's magic number can never begin a safetensors file the
// reader accepts (their header length would exceed MaxHeaderBytes); a bare
// pickle's first bytes can, so a pickle is named only when the header
// length they spell runs past the end of the file.
func sniffForeign(data []byte) ForeignFormat {
	switch {
	case bytes.HasPrefix(data, zipMagic):
		return sniffZip(data)
	case bytes.HasPrefix(data, torchMagic):
		return TorchSaveLegacy
	case len(data) >= 2 && data[0] == 0x80 && data[1] >= 2 && data[1] <= 5:
		if len(data) < 8 || binary.LittleEndian.Uint64(data) > uint64(len(data)-8) {
			return Pickle
		}
	}
	return 0
}

// sniffZip tells torch.save and TorchScript archives from other zips by the
// names in the central directory (nothing is decompressed).
func sniffZip(data []byte) ForeignFormat {
	r, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return Zip // a damaged zip is still a zip
	}
	pkl := false
	for _, f := range r.File {
		// Entries sit under one top-level folder named after the file.
		_, rest, ok := strings.Cut(f.Name, "/")
		if !ok {
			continue
		}
		switch {
		case rest == "constants.pkl" || strings.HasPrefix(rest, "code/"):
			return TorchScript
		case rest == "data.pkl":
			pkl = true
		}
	}
	if pkl {
		return TorchSaveZip
	}
	return Zip
}
