package kernels

import (
	"encoding/binary"
	"strconv"
	"strings"
	"testing"
)

// safetensorsWith builds a file whose header is exactly header.
func safetensorsWith(header string, body []byte) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(out, header...), body...)
}

// A file that is not a kernel (a secret a reference pointed at) is refused
// without its bytes in the error: at most a short, printable-escaped
// prefix of a name or value the header holds, never raw bytes, and never
// the first 8 bytes as a number.
func TestErrorsQuoteNoMoreThanAShortPrefixOfTheFile(t *testing.T) {
	const secret = "root:x:0:0:root:/root:/bin/bash\nsecret-token-ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789"
	long := strings.Repeat("S", 200)
	first8 := strconv.FormatUint(binary.LittleEndian.Uint64([]byte(secret)), 10)
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"a text file", []byte(secret)},
		{"a header that is not JSON", safetensorsWith(secret, nil)},
		{"a string where the header object should be", safetensorsWith(strconv.Quote(secret), nil)},
		{"a number where the header object should be", safetensorsWith("12345678901234567890123456789", nil)},
		{"a long tensor name", safetensorsWith(`{"`+long+`":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}`, make([]byte, 4))},
		{"a long dtype", safetensorsWith(`{"t":{"dtype":"`+long+`","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4))},
		{"an unknown tensor field", safetensorsWith(`{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"`+long+`":1}}`, make([]byte, 4))},
		{"a long format", safetensorsWith(`{"__metadata__":{"format":"`+long+`"}}`, nil)},
		{"a metadata value that is no string", safetensorsWith(`{"__metadata__":{"`+long+`":12345678901234567890}}`, nil)},
		{"a long module type", safetensorsWith(`{"__metadata__":{"format":"esper-kernel/v1","esper.module":"{\"type\":\"`+long+`\"}"}}`, nil)},
		{"a module attribute of the wrong type", safetensorsWith(`{"__metadata__":{"format":"esper-kernel/v1","esper.module":"{\"type\":\"sequential\",\"layers\":[{\"type\":\"linear\",\"in_features\":\"`+long+`\"}]}"}}`, nil)},
	} {
		_, err := Load(c.data, LoadOptions{InputShape: []int{1}})
		if err == nil {
			t.Errorf("%s: loaded", c.name)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "root:x:0") || strings.Contains(msg, "secret-token") || strings.Contains(msg, first8) {
			t.Errorf("%s: the error quotes the file: %s", c.name, msg)
		}
		if strings.Contains(msg, strings.Repeat("S", maxQuoted+1)) {
			t.Errorf("%s: the error quotes more than %d bytes of the file: %s", c.name, maxQuoted, msg)
		}
		t.Logf("%s: %s", c.name, msg)
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"X32":                      `"X32"`,
		"tab\there":                `"tab\there"`,
		strings.Repeat("é", 20):    `"` + strings.Repeat("é", 16) + `"…`,
		strings.Repeat("a", 33):    `"` + strings.Repeat("a", 32) + `"…`,
		"\x00\x01" + "root:x:0:0:": `"\x00\x01root:x:0:0:"`,
	} {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %s, want %s", in, got, want)
		}
	}
}
