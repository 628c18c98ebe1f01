package kernels

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Error messages name what in a file is wrong, with its byte offset, but
// quote the file's own bytes only as a short, printable-escaped prefix
// (quote): a kernel reference may name a file that is not a kernel at all,
// and an error travels to the client, the logs and the bus's dead-letter
// stream. encoding/json's messages quote the input ("invalid character
// 'r' ..."), so they are described instead (jsonError).

// maxQuoted is the most bytes of a file an error message quotes.
const maxQuoted = 32

// quote returns s as a Go-quoted (printable-escaped) string of at most
// maxQuoted bytes of s, followed by … when cut.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}

// quoteRaw is quote for raw bytes (a JSON value).
func quoteRaw(b []byte) string { return quote(string(b)) }

// jsonError describes a JSON decoding error without quoting the input.
func jsonError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return "JSON syntax error"
	case errors.As(err, &typ):
		kind, _, _ := strings.Cut(typ.Value, " ") // "number 12" quotes the number
		if typ.Field != "" {
			return fmt.Sprintf("field %s: a JSON %s where %s is wanted", quote(typ.Field), kind, typ.Type)
		}
		return fmt.Sprintf("a JSON %s where %s is wanted", kind, typ.Type)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "unexpected end of JSON"
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown field " + quote(strings.Trim(name, `"`))
	}
	return "invalid JSON"
}
