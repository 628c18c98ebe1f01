package contracts

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/bits"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// maxDepth bounds nesting in free-form values, as the reference's parser
// does, so hostile input cannot exhaust the stack.
const maxDepth = 200

// decoder is a single-pass JSON scanner that validates and assigns as it
// goes. Field-level problems accumulate in errs and decoding continues
// past them, so one decode reports every offending field; malformed JSON
// stops it with syn.
type decoder struct {
	data    []byte
	pos     int
	errs    fieldErrors
	syn     *SyntaxError
	scratch []byte
	arena   []byte // backing store of the strings copied as they are read
	slab    *slab  // backing store of the document's small lists and pointers
	used    slabUse

	// With alias set (by a model's generated Decode function, which
	// passes every string it stored through keep before it returns),
	// strings read from the input point into it until keep copies them
	// into one allocation of the owed bytes (see text and keep).
	alias  bool
	owed   int
	owned  []byte // the copies; nowned bytes of it are used
	nowned int
	// recent holds the latest identifiers read as aliases, so that one
	// the document repeats is the same alias (owed once); kept maps the
	// latest identifiers copied from their place in the input to their
	// copy's in owned. They hold offsets, not strings, so that updating
	// them stores no pointers (which would need write barriers).
	recent  [4]span
	kept    [4]keptSpan
	nrecent int
	nkept   int
}

// span is a string's place in a buffer.
type span struct{ off, n int }

// keptSpan is an identifier's place in the input and its copy's offset
// in owned.
type keptSpan struct {
	src span
	dst int
}

// slab is one allocation holding the small slices and pointed-to values
// of a decoded document: a CompiledKernel needs two shapes, a device
// list, two metric dicts, an optional checksum and an optional
// timestamp, which would otherwise be seven allocations of 16 to 96
// bytes, each costing an allocation and GC work. Its sizes cover the
// documents the services exchange (two shapes of rank <= 4, a few
// devices, four metrics, one optional timestamp: 248 bytes, the 256-byte
// size class, since on a small document every byte allocated costs GC
// time); a list that outgrows its region is moved to the heap by append
// as usual, and a value past its region gets an allocation of its own.
// Every slice handed out is capped at its length (s[:n:n]), so a
// caller's append reallocates instead of writing into a neighbour's
// region; a value kept alive keeps its whole slab alive, which for these
// small documents is the better trade.
type slab struct {
	ints    [8]int
	strs    [4]string
	metrics [4]Metric
	times   [1]time.Time
}

// slabUse counts the elements of each slab region already handed out.
type slabUse struct{ ints, strs, metrics, times uint8 }

// getSlab returns the decode's slab, allocating it on first use so that
// documents without lists or optional values never pay for it.
func (d *decoder) getSlab() *slab {
	if d.slab == nil {
		d.slab = new(slab)
	}
	return d.slab
}

// intsFree returns the unused tail of the slab's ints as an empty slice
// to append to; claimInts then takes the first len(s) of them. Appends
// past the tail move s to the heap, and claimInts leaves the slab as it
// was.
func (d *decoder) intsFree() []int {
	return d.getSlab().ints[d.used.ints:d.used.ints]
}

func (d *decoder) claimInts(s []int) []int {
	if n := len(s); n > 0 && n <= len(d.slab.ints)-int(d.used.ints) && &s[0] == &d.slab.ints[d.used.ints] {
		d.used.ints += uint8(n)
	}
	return s[:len(s):len(s)]
}

func (d *decoder) strsFree() []string {
	return d.getSlab().strs[d.used.strs:d.used.strs]
}

func (d *decoder) claimStrs(s []string) []string {
	if n := len(s); n > 0 && n <= len(d.slab.strs)-int(d.used.strs) && &s[0] == &d.slab.strs[d.used.strs] {
		d.used.strs += uint8(n)
	}
	return s[:len(s):len(s)]
}

func (d *decoder) metricsFree() Metrics {
	return d.getSlab().metrics[d.used.metrics:d.used.metrics]
}

func (d *decoder) claimMetrics(m Metrics) Metrics {
	if n := len(m); n > 0 && n <= len(d.slab.metrics)-int(d.used.metrics) && &m[0] == &d.slab.metrics[d.used.metrics] {
		d.used.metrics += uint8(n)
	}
	return m[:len(m):len(m)]
}

// newStr returns a pointer to a copy of s, in the slab while it has room.
func (d *decoder) newStr(s string) *string {
	sl := d.getSlab()
	if int(d.used.strs) == len(sl.strs) {
		p := new(string) // not &s: that would move s to the heap on every call
		*p = s
		return p
	}
	p := &sl.strs[d.used.strs]
	d.used.strs++
	*p = s
	return p
}

// newTime returns a pointer to a copy of t, in the slab while it has room.
func (d *decoder) newTime(t time.Time) *time.Time {
	sl := d.getSlab()
	if int(d.used.times) == len(sl.times) {
		p := new(time.Time) // not &t: that would move t to the heap on every call
		*p = t
		return p
	}
	p := &sl.times[d.used.times]
	d.used.times++
	*p = t
	return p
}

// newString copies b into the decode's arena and returns a string over
// it: one allocation serves every string of a document instead of one
// allocation each. Arena bytes are never written again once a string
// covers them, so the strings stay immutable; a string kept alive keeps
// its whole chunk alive, which for these small messages is the better
// trade.
//
// A chunk is sized by what can still come: the strings left to copy lie
// in b and the unread input, so len(b) plus the unread length bounds
// them. The first chunk is further capped at firstArenaChunk, since most
// of a document's bytes are keys, punctuation and numbers that are never
// copied (a 1 KB CompiledKernel copies under 300 bytes); allocating and
// clearing the whole input's size per decode was a third of the bytes
// the decode allocated. Later chunks double, so a large document still
// needs only a few.
func (d *decoder) newString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if cap(d.arena)-len(d.arena) < len(b) {
		size := len(b) + len(d.data) - d.pos
		if limit := max(firstArenaChunk, 2*cap(d.arena)); size > limit {
			size = max(limit, len(b))
		}
		d.arena = make([]byte, 0, size)
	}
	start := len(d.arena)
	d.arena = append(d.arena, b...)
	return unsafe.String(&d.arena[start], len(b))
}

const firstArenaChunk = 512

// text returns b, a string value just read, as a string. When the
// decode may alias its input and b lies in it (no escapes needed
// unescaping), the string points into the input and its bytes are owed
// to keep; otherwise it is copied now.
func (d *decoder) text(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if d.alias && d.inData(unsafe.Pointer(&b[0])) {
		if len(b) >= 16 { // identifiers, which documents repeat
			for _, r := range d.recent[:min(d.nrecent, len(d.recent))] {
				if r.n == len(b) && string(d.data[r.off:r.off+r.n]) == string(b) {
					return unsafe.String(&d.data[r.off], r.n)
				}
			}
			d.recent[d.nrecent%len(d.recent)] = span{d.offset(unsafe.Pointer(&b[0])), len(b)}
			d.nrecent++
		}
		d.owed += len(b)
		return unsafe.String(&b[0], len(b))
	}
	return d.newString(b)
}

// inData reports whether p points into the input.
func (d *decoder) inData(p unsafe.Pointer) bool {
	return len(d.data) > 0 && uint(d.offset(p)) < uint(len(d.data))
}

// offset returns p's offset from the start of the input (meaningful
// only when p points into it).
func (d *decoder) offset(p unsafe.Pointer) int {
	return int(uintptr(p) - uintptr(unsafe.Pointer(unsafe.SliceData(d.data))))
}

// keep returns s, copied if it aliases the input. Every string a model's
// decode stored passes through keep before the model is returned, so
// that nothing returned points into the caller's buffer; the first copy
// allocates the owed bytes at once, so that a document's strings cost
// one allocation of their size. (Copying as they were read took a
// 512-byte first chunk, mostly unused by a small document, and on a
// small document every byte allocated costs GC time.)
func (d *decoder) keep(s string) string {
	if s == "" || !d.inData(unsafe.Pointer(unsafe.StringData(s))) {
		return s
	}
	src := span{d.offset(unsafe.Pointer(unsafe.StringData(s))), len(s)}
	if len(s) >= 16 { // text returned a repeated identifier as one alias
		for _, k := range d.kept[:min(d.nkept, len(d.kept))] {
			if k.src == src {
				return unsafe.String(&d.owned[k.dst], len(s))
			}
		}
	}
	if len(d.owned)-d.nowned < len(s) {
		// The first copy, or one owed did not count: an identifier
		// repeated far apart is owed once but copied again when its
		// first copy has left kept.
		d.owned = make([]byte, max(d.owed, len(s)))
		d.nowned, d.nkept = 0, 0
	}
	dst := d.nowned
	d.nowned += copy(d.owned[dst:], s)
	if len(s) >= 16 {
		d.kept[d.nkept%len(d.kept)] = keptSpan{src, dst}
		d.nkept++
	}
	return unsafe.String(&d.owned[dst], len(s))
}

// keepStrs keeps every element of a decoded string list in place.
func (d *decoder) keepStrs(l []string) {
	for i := range l {
		l[i] = d.keep(l[i])
	}
}

// keepMetrics keeps the names of decoded metrics in place.
func (d *decoder) keepMetrics(m Metrics) {
	for i := range m {
		m[i].Name = d.keep(m[i].Name)
	}
}

// keepOpt keeps the string an Optional[str] points to, in place.
func (d *decoder) keepOpt(p *string) {
	if p != nil {
		*p = d.keep(*p)
	}
}

func newDecoder(model string, data []byte) decoder {
	return decoder{data: data, errs: fieldErrors{model: model}}
}

func (d *decoder) fail(msg string) {
	if d.syn == nil {
		d.syn = &SyntaxError{Model: d.errs.model, Offset: d.pos, Msg: msg}
	}
}

// finish checks that only whitespace follows the top-level value and
// returns the decode's error, if any.
func (d *decoder) finish() error {
	if d.syn == nil {
		d.ws()
		if d.pos != len(d.data) {
			d.fail("unexpected data after the top-level value")
		}
	}
	if d.syn != nil {
		return d.syn
	}
	return d.errs.err()
}

// ws skips white space. Nearly every call finds none, or the single
// space Python's json.dumps writes after ',' and ':', so that case is
// tested inline (a byte above ' ' is never JSON white space) before the
// general loop.
func (d *decoder) ws() {
	if p := d.pos; p < len(d.data) && d.data[p] > ' ' {
		return
	}
	d.wsLoop()
}

func (d *decoder) wsLoop() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\n', '\t', '\r':
			d.pos++
		default:
			return
		}
	}
}

// sep steps over a ',' or ':' and the one space json.dumps writes after
// it, so that the peek or ws that follows takes its inlined fast path
// (a call to wsLoop per separator was a tenth of decoding such input).
func (d *decoder) sep() {
	p := d.pos + 1
	if p < len(d.data) && d.data[p] == ' ' {
		p++
	}
	d.pos = p
}

// peek returns the next non-space byte, or 0 at the end of input.
func (d *decoder) peek() byte {
	if p := d.pos; p < len(d.data) && d.data[p] > ' ' {
		return d.data[p]
	}
	d.wsLoop()
	if d.pos >= len(d.data) {
		return 0
	}
	return d.data[d.pos]
}

// openObject consumes '{' of a model's own object; a value of another
// type is a type error at path (the root when path is "").
func (d *decoder) openObject(path string) bool {
	c := d.peek()
	if c == '{' {
		d.pos++
		return true
	}
	if c == 0 {
		d.fail("unexpected end of input, expected an object")
		return false
	}
	d.typeError(path, "input should be an object")
	return false
}

// nextKey advances to the next member of the current object and returns
// its key (valid until the next string is read) positioned at the value;
// it returns false at '}' or on a syntax error.
func (d *decoder) nextKey(first *bool) ([]byte, bool) {
	// The usual layout, `, "` (or `"` first), is stepped over in line.
	if p := d.pos; *first && p < len(d.data) && d.data[p] == '"' {
		*first = false
	} else if !*first && p+2 < len(d.data) && d.data[p] == ',' && (d.data[p+1] == '"' || d.data[p+1] == ' ' && d.data[p+2] == '"') {
		d.pos = p + 1
		if d.data[p+1] == ' ' {
			d.pos++
		}
	} else if !d.keyStart(first) {
		return nil, false
	}
	key, ok := d.readString()
	if !ok {
		return nil, false
	}
	// And `: ` before a value.
	if p := d.pos; p+2 < len(d.data) && d.data[p] == ':' {
		if c := d.data[p+1]; c > ' ' {
			d.pos = p + 1
			return key, true
		} else if c == ' ' && d.data[p+2] > ' ' {
			d.pos = p + 2
			return key, true
		}
	}
	if !d.keyEnd() {
		return nil, false
	}
	return key, true
}

// member is nextKey for a model's object. Documents nearly always list a
// model's fields in the reference's order, so it first checks whether
// the input continues with want, the key expected next (quoted, with
// its colon), in place: hit means the key is want's and was not read.
// Otherwise key is the key read, valid until the next string is read.
// ok is false at '}' or on a syntax error.
func (d *decoder) member(first *bool, want string) (hit bool, key []byte, ok bool) {
	if p := d.expect(*first, want); p >= 0 {
		*first = false
		d.pos = p
		return true, nil, true
	}
	if key, ok = d.nextKey(first); !ok {
		return false, nil, false
	}
	return len(want) > 3 && string(key) == want[1:len(want)-2], key, true
}

// expect returns the position of the value when the input continues
// with the usual layout: `, ` (nothing before the first member), want,
// an optional space and the value; else -1. Keys are short, so it
// compares up to four eight-byte words in line (the last overlapping
// the one before) instead of calling the runtime's general comparison.
func (d *decoder) expect(first bool, want string) int {
	p := d.pos
	if uint(p) > uint(len(d.data)) {
		return -1
	}
	rest := d.data[p:]
	if !first {
		if len(rest) < 2 || rest[0] != ',' {
			return -1
		}
		if rest[1] == ' ' {
			rest, p = rest[2:], p+2
		} else {
			rest, p = rest[1:], p+1
		}
	}
	n := len(want)
	if len(rest) < n+2 { // want, and a value (after a space) to follow
		return -1
	}
	switch {
	case n < 8 || n > 32:
		if n == 0 || string(rest[:n]) != want { // "" follows the last field
			return -1
		}
	case n <= 16:
		if binary.LittleEndian.Uint64(rest) != load64(want) ||
			binary.LittleEndian.Uint64(rest[n-8:]) != load64(want[n-8:]) {
			return -1
		}
	default:
		if binary.LittleEndian.Uint64(rest) != load64(want) ||
			binary.LittleEndian.Uint64(rest[8:]) != load64(want[8:]) ||
			binary.LittleEndian.Uint64(rest[n/2:]) != load64(want[n/2:]) ||
			binary.LittleEndian.Uint64(rest[n-8:]) != load64(want[n-8:]) {
			return -1
		}
	}
	p += n
	if c := rest[n]; c > ' ' {
		return p
	} else if c == ' ' && rest[n+1] > ' ' {
		return p + 1
	}
	return -1
}

// load64 reads the first eight bytes of s little-endian (one load once
// compiled).
func load64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// keyStart steps over the ',' before a member (none before the first)
// to the '"' of its key; it returns false at '}' or on a syntax error.
func (d *decoder) keyStart(first *bool) bool {
	c := d.peek()
	if *first {
		*first = false
		if c == '}' {
			d.pos++
			return false
		}
	} else {
		if c == '}' {
			d.pos++
			return false
		}
		if c != ',' {
			if c == 0 {
				d.fail("unexpected end of input in object")
			} else {
				d.fail("expected ',' or '}' in object")
			}
			return false
		}
		d.sep()
		c = d.peek()
	}
	if c != '"' {
		if c == 0 {
			d.fail("unexpected end of input in object")
		} else {
			d.fail("expected a string key in object")
		}
		return false
	}
	return true
}

// keyEnd steps over the ':' after a key to the start of the value.
func (d *decoder) keyEnd() bool {
	if d.peek() != ':' {
		d.fail("expected ':' after object key")
		return false
	}
	d.sep()
	d.ws()
	if d.pos >= len(d.data) {
		d.fail("unexpected end of input, expected a value")
		return false
	}
	return true
}

// nextElem advances to the next array element; false at ']' or on error.
func (d *decoder) nextElem(first *bool) bool {
	c := d.peek()
	if *first {
		*first = false
		if c == ']' {
			d.pos++
			return false
		}
		if c == 0 {
			d.fail("unexpected end of input in array")
			return false
		}
		return true
	}
	if c == ']' {
		d.pos++
		return false
	}
	if c != ',' {
		if c == 0 {
			d.fail("unexpected end of input in array")
		} else {
			d.fail("expected ',' or ']' in array")
		}
		return false
	}
	d.sep()
	if d.peek() == 0 {
		d.fail("unexpected end of input in array")
		return false
	}
	return true
}

// strPlain marks bytes that need no attention inside a JSON string:
// printable ASCII other than the quote and the backslash.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const (
	ones8 = 0x0101010101010101
	high8 = 0x8080808080808080
)

// special8 returns, for the eight bytes packed little-endian in x, a
// mask with the top bit of every byte that needs attention in a JSON
// string ('"', '\\', a control byte, a byte >= 0x80) set. Subtracting 1
// from every byte of x^c wraps a byte equal to c to 0xff, and
// subtracting 0x20 from every byte of x wraps a control byte; a byte
// >= 0x80 keeps its top bit through x^'"' - 1 unless it is 0xa2, which
// x^'\\' - 1 flags. A borrow starts only at a byte that is itself
// special, so it can only flag bytes above the first special one: the
// lowest set bit always marks the first special byte. Identifiers,
// checksums and references are long runs of plain bytes, which this
// scans a word at a time instead of a byte at a time.
func special8(x uint64) uint64 {
	m := (x ^ '"'*ones8) - ones8
	m |= (x ^ '\\'*ones8) - ones8
	m |= x - 0x20*ones8
	return m & high8
}

// nextSpecial returns the index of the first byte at or after i that is
// not plain inside a JSON string, or len(data): sixteen bytes at a time
// while they remain, then eight, then one.
func nextSpecial(data []byte, i int) int {
	for ; i+16 <= len(data); i += 16 {
		w := data[i : i+16]
		m := special8(binary.LittleEndian.Uint64(w))
		if m != 0 {
			return i + bits.TrailingZeros64(m)>>3
		}
		if m = special8(binary.LittleEndian.Uint64(w[8:])); m != 0 {
			return i + 8 + bits.TrailingZeros64(m)>>3
		}
	}
	if i+8 <= len(data) {
		if m := special8(binary.LittleEndian.Uint64(data[i:])); m != 0 {
			return i + bits.TrailingZeros64(m)>>3
		}
		i += 8
	}
	for i < len(data) && strPlain[data[i]] {
		i++
	}
	return i
}

// readString reads a JSON string at d.pos (which holds '"'). The result
// aliases the input or the scratch buffer.
func (d *decoder) readString() ([]byte, bool) {
	start := d.pos + 1
	i := start
	data := d.data
	high := false
	for {
		if i = nextSpecial(data, i); i >= len(data) {
			break
		}
		c := data[i]
		if c == '"' {
			d.pos = i + 1
			s := data[start:i]
			if high && !utf8.Valid(s) {
				d.pos = start
				d.fail("invalid UTF-8 in string")
				return nil, false
			}
			return s, true
		}
		if c == '\\' {
			return d.readEscaped(start, i)
		}
		if c < 0x20 {
			d.pos = i
			d.fail("control character in string")
			return nil, false
		}
		high = true // c >= 0x80: checked as UTF-8 once the string ends
		i++
	}
	d.pos = i
	d.fail("unterminated string")
	return nil, false
}

func (d *decoder) readEscaped(start, i int) ([]byte, bool) {
	data := d.data
	buf := append(d.scratch[:0], data[start:i]...)
	rawStart := len(buf) // first byte that came raw and still needs UTF-8 checking
	_ = rawStart
	for i < len(data) {
		c := data[i]
		switch {
		case c == '"':
			d.pos = i + 1
			d.scratch = buf
			if !utf8.Valid(buf) {
				d.pos = start
				d.fail("invalid UTF-8 in string")
				return nil, false
			}
			return buf, true
		case c < 0x20:
			d.pos = i
			d.fail("control character in string")
			return nil, false
		case c != '\\':
			buf = append(buf, c)
			i++
			continue
		}
		if i+1 >= len(data) {
			d.pos = i
			d.fail("unterminated string")
			return nil, false
		}
		e := data[i+1]
		i += 2
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := hex4(data, i)
			if !ok {
				d.pos = i
				d.fail("invalid \\u escape")
				return nil, false
			}
			i += 4
			if utf16.IsSurrogate(r) {
				if r >= 0xDC00 || i+6 > len(data) || data[i] != '\\' || data[i+1] != 'u' {
					d.pos = i
					d.fail("lone surrogate in \\u escape")
					return nil, false
				}
				r2, ok := hex4(data, i+2)
				if !ok || r2 < 0xDC00 || r2 > 0xDFFF {
					d.pos = i
					d.fail("lone surrogate in \\u escape")
					return nil, false
				}
				r = utf16.DecodeRune(r, r2)
				i += 6
			}
			buf = utf8.AppendRune(buf, r)
		default:
			d.pos = i - 1
			d.fail("invalid escape in string")
			return nil, false
		}
	}
	d.pos = i
	d.fail("unterminated string")
	return nil, false
}

func hex4(data []byte, i int) (rune, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var r rune
	for _, c := range data[i : i+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

// scanNumber consumes a JSON number and reports its bytes and whether it
// is an integer literal (no fraction, no exponent).
func (d *decoder) scanNumber() ([]byte, bool, bool) {
	data := d.data
	start := d.pos
	i := start
	if i < len(data) && data[i] == '-' {
		i++
	}
	if i >= len(data) {
		d.pos = i
		d.fail("unexpected end of input in number")
		return nil, false, false
	}
	if data[i] == '0' {
		i++
	} else if data[i] >= '1' && data[i] <= '9' {
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
	} else {
		d.pos = i
		d.fail("invalid number")
		return nil, false, false
	}
	isInt := true
	if i < len(data) && data[i] == '.' {
		isInt = false
		i++
		j := i
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		if i == j {
			d.pos = i
			d.fail("invalid number: expected a digit after '.'")
			return nil, false, false
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		isInt = false
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		j := i
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		if i == j {
			d.pos = i
			d.fail("invalid number: expected a digit in the exponent")
			return nil, false, false
		}
	}
	d.pos = i
	return data[start:i], isInt, true
}

// bstr views b as a string without copying; only for immediate use.
func bstr(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// parseIntLit parses an integer literal (optional '-', digits).
func parseIntLit(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg = true
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	if len(b) <= 18 {
		var n int64
		for _, c := range b {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int64(c-'0')
		}
		if neg {
			n = -n
		}
		return n, true
	}
	s := bstr(b)
	if neg {
		n, err := strconv.ParseInt("-"+s, 10, 64)
		return n, err == nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// matchLit consumes the literal lit (true, false, null).
func (d *decoder) matchLit(lit string) bool {
	if len(d.data)-d.pos >= len(lit) && string(d.data[d.pos:d.pos+len(lit)]) == lit {
		d.pos += len(lit)
		return true
	}
	d.fail("invalid literal")
	return false
}

// skipValue consumes any JSON value, checking its syntax.
func (d *decoder) skipValue(depth int) bool { return d.scanValue(depth, false) }

// scanValue consumes any JSON value, checking its syntax. With checkRange
// it also records an error (at the empty path; the caller places it) for
// every number that is not an integer literal and lies outside the float64
// range, as decoding the value would.
func (d *decoder) scanValue(depth int, checkRange bool) bool {
	if depth > maxDepth {
		d.fail("nesting too deep")
		return false
	}
	switch c := d.peek(); c {
	case '{':
		d.pos++
		first := true
		for {
			if _, ok := d.nextKey(&first); !ok {
				break
			}
			if !d.scanValue(depth+1, checkRange) {
				return false
			}
		}
		return d.syn == nil
	case '[':
		d.pos++
		first := true
		for d.nextElem(&first) {
			if !d.scanValue(depth+1, checkRange) {
				return false
			}
		}
		return d.syn == nil
	case '"':
		_, ok := d.readString()
		return ok
	case 't':
		return d.matchLit("true")
	case 'f':
		return d.matchLit("false")
	case 'n':
		return d.matchLit("null")
	case 0:
		d.fail("unexpected end of input, expected a value")
		return false
	default:
		at := d.pos
		b, isInt, ok := d.scanNumber()
		if !ok {
			return false
		}
		if checkRange && !isInt {
			if _, ok := parseFloatLit(b); !ok {
				d.errs.add("", "number at byte "+strconv.Itoa(at)+" is out of the float64 range")
			}
		}
		return true
	}
}

// typeError records reason at path and skips the offending value.
func (d *decoder) typeError(path, reason string) {
	at := d.pos
	if d.skipValue(0) {
		d.errs.add(path, reason+" (at byte "+strconv.Itoa(at)+")")
	}
}

// anyValue decodes a free-form value: objects become map[string]any,
// arrays []any, integer literals int64 (json.Number past int64), other
// numbers float64, strings, bools and nil.
func (d *decoder) anyValue(path string, depth int) (any, bool) {
	return d.anyValueKeys(path, depth, false)
}

// anyValueKeys is anyValue; with stripKeys the keys of this (outermost)
// object lose surrounding white space, as str_strip_whitespace does to
// a Dict[str, Any]'s keys.
func (d *decoder) anyValueKeys(path string, depth int, stripKeys bool) (any, bool) {
	if depth > maxDepth {
		d.fail("nesting too deep")
		return nil, false
	}
	switch c := d.peek(); c {
	case '{':
		d.pos++
		m := map[string]any{}
		first := true
		for {
			k, ok := d.nextKey(&first)
			if !ok {
				break
			}
			key := d.newString(k)
			if stripKeys {
				key = strip(key)
			}
			v, ok := d.anyValue(path, depth+1)
			if !ok {
				return nil, false
			}
			m[key] = v
		}
		return m, d.syn == nil
	case '[':
		d.pos++
		s := []any{}
		first := true
		for d.nextElem(&first) {
			v, ok := d.anyValue(path, depth+1)
			if !ok {
				return nil, false
			}
			s = append(s, v)
		}
		return s, d.syn == nil
	case '"':
		b, ok := d.readString()
		return d.newString(b), ok
	case 't':
		return true, d.matchLit("true")
	case 'f':
		return false, d.matchLit("false")
	case 'n':
		return nil, d.matchLit("null")
	case 0:
		d.fail("unexpected end of input, expected a value")
		return nil, false
	default:
		at := d.pos
		b, isInt, ok := d.scanNumber()
		if !ok {
			return nil, false
		}
		if isInt {
			if n, ok := parseIntLit(b); ok {
				return n, true
			}
			return json.Number(string(b)), true
		}
		f, ok := parseFloatLit(b)
		if !ok {
			d.errs.add(path, "number at byte "+strconv.Itoa(at)+" is out of the float64 range")
			return 0.0, true
		}
		return f, true
	}
}

// anyMap decodes a Dict[str, Any] field.
func (d *decoder) anyMap(p, name string, stripKeys bool) (map[string]any, bool) {
	if d.peek() != '{' {
		d.typeError(join(p, name), "input should be a valid dictionary")
		return nil, false
	}
	n := len(d.errs.fields)
	v, ok := d.anyValueKeys("", 0, stripKeys)
	for i := n; i < len(d.errs.fields); i++ {
		d.errs.fields[i].Path = join(p, name)
	}
	if !ok {
		return nil, false
	}
	return v.(map[string]any), true
}

// metrics decodes a Dict[str, float] field, keeping key order.
func (d *decoder) metrics(p, name string, stripKeys bool) (Metrics, bool) {
	if d.peek() != '{' {
		d.typeError(join(p, name), "input should be a valid dictionary")
		return nil, false
	}
	d.pos++
	if d.peek() == '}' { // {} needs no storage; Metrics{} is non-nil without allocating
		d.pos++
		return Metrics{}, true
	}
	m := d.metricsFree()
	first := true
	good := true
	for {
		k, ok := d.nextKey(&first)
		if !ok {
			break
		}
		key := d.text(k)
		if stripKeys {
			key = strip(key)
		}
		f, ok := d.float("", key)
		if ok {
			m.Set(key, f)
		} else {
			good = false
			d.relocate(p, name)
		}
	}
	return d.claimMetrics(m), good && d.syn == nil
}

// intList decodes a List[int] field.
func (d *decoder) intList(p, name string) ([]int, bool) {
	if d.peek() != '[' {
		d.typeError(join(p, name), "input should be a valid list")
		return nil, false
	}
	d.pos++
	if d.peek() == ']' {
		d.pos++
		return []int{}, true
	}
	out := d.intsFree()
	first := true
	good := true
	for i := 0; d.nextElem(&first); i++ {
		n, ok := d.int("", "") // the index joins the path only on error
		if ok {
			out = append(out, n)
		} else {
			good = false
			d.relocateElem(p, name, i)
		}
	}
	return d.claimInts(out), good && d.syn == nil
}

// stringList decodes a List[str] field.
func (d *decoder) stringList(p, name string) ([]string, bool) {
	if d.peek() != '[' {
		d.typeError(join(p, name), "input should be a valid list")
		return nil, false
	}
	d.pos++
	if d.peek() == ']' {
		d.pos++
		return []string{}, true
	}
	out := d.strsFree()
	first := true
	good := true
	for i := 0; d.nextElem(&first); i++ {
		s, ok := d.str("", "") // the index joins the path only on error
		if ok {
			out = append(out, s)
		} else {
			good = false
			d.relocateElem(p, name, i)
		}
	}
	return d.claimStrs(out), good && d.syn == nil
}

// str decodes a str field; only JSON strings are accepted, as Pydantic
// does.
func (d *decoder) str(prefix, name string) (string, bool) {
	if d.data[d.pos] != '"' {
		d.typeError(join(prefix, name), "input should be a valid string")
		return "", false
	}
	b, ok := d.readString()
	if !ok {
		return "", false
	}
	return d.intern(b), true
}

// intern returns the common constant strings of the contracts without
// copying them; anything else goes through text (and an identifier the
// document repeats, such as a kernel's ID in its metadata, is copied
// once by keep).
func (d *decoder) intern(b []byte) string {
	if len(b) < 16 {
		if s, ok := constString(b); ok {
			return s
		}
	}
	return d.text(b)
}

// constString returns the common constant strings of the contracts
// without allocating.
func constString(b []byte) (string, bool) {
	switch string(b) {
	case "cuda":
		return "cuda", true
	case "cpu":
		return "cpu", true
	case "torchscript":
		return "torchscript", true
	case "pickle":
		return "pickle", true
	case "1.0":
		return "1.0", true
	case "compiled":
		return "compiled", true
	case "validated":
		return "validated", true
	case "deployed":
		return "deployed", true
	case "deprecated":
		return "deprecated", true
	case "initialized":
		return "initialized", true
	case "running":
		return "running", true
	}
	return "", false
}

// optStr decodes an Optional[str] field.
func (d *decoder) optStr(prefix, name string) (*string, bool) {
	if d.data[d.pos] == 'n' {
		return nil, d.matchLit("null")
	}
	s, ok := d.str(prefix, name)
	if !ok {
		return nil, false
	}
	return d.newStr(s), true
}

const maxExactFloatInt = 1 << 63

// int decodes an int field with Pydantic's lax rules: integers, floats
// with no fractional part, decimal strings and booleans.
func (d *decoder) int(prefix, name string) (int, bool) {
	at := d.pos
	if n, frac, neg, ok := d.shortNumber(); ok {
		if frac == 0 {
			if neg {
				return -int(n), true
			}
			return int(n), true
		}
		d.pos = at // a fraction: the general path tells 5.0 from 5.5
	}
	c := d.data[d.pos]
	switch {
	case c == '-' || (c >= '0' && c <= '9'):
		at := d.pos
		b, isInt, ok := d.scanNumber()
		if !ok {
			return 0, false
		}
		if isInt {
			if n, ok := parseIntLit(b); ok {
				return int(n), true
			}
			d.errs.add(join(prefix, name), "integer at byte "+strconv.Itoa(at)+" is out of the int64 range")
			return 0, false
		}
		f, err := strconv.ParseFloat(bstr(b), 64)
		if err != nil || math.IsInf(f, 0) || f >= maxExactFloatInt || f < -maxExactFloatInt {
			d.errs.add(join(prefix, name), "number at byte "+strconv.Itoa(at)+" is out of the int64 range")
			return 0, false
		}
		if f != math.Trunc(f) {
			d.errs.add(join(prefix, name), "input should be a valid integer, got a number with a fractional part")
			return 0, false
		}
		return int(f), true
	case c == '"':
		b, ok := d.readString()
		if !ok {
			return 0, false
		}
		if n, ok := intFromString(b); ok {
			return n, true
		}
		d.errs.add(join(prefix, name), "input should be a valid integer, unable to parse string as an integer")
		return 0, false
	case c == 't':
		return 1, d.matchLit("true")
	case c == 'f':
		return 0, d.matchLit("false")
	}
	d.typeError(join(prefix, name), "input should be a valid integer")
	return 0, false
}

// intFromString accepts what Pydantic's lax int does from a string in
// its common forms: surrounding whitespace, a sign, digits, and an
// optional fraction of zeros ("5.0").
func intFromString(b []byte) (int, bool) {
	b = trimASCIISpace(b)
	if len(b) > 0 && b[0] == '+' {
		b = b[1:]
		if len(b) > 0 && b[0] == '-' {
			return 0, false
		}
	}
	if dot := indexByte(b, '.'); dot >= 0 {
		for _, c := range b[dot+1:] {
			if c != '0' {
				return 0, false
			}
		}
		b = b[:dot]
	}
	n, ok := parseIntLit(b)
	return int(n), ok
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func trimASCIISpace(b []byte) []byte {
	for len(b) > 0 && isASCIISpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isASCIISpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func isASCIISpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// float decodes a float field with Pydantic's lax rules: numbers,
// booleans and decimal strings. Non-finite values are refused: the
// reference would write them back as null, which it then rejects.
func (d *decoder) float(prefix, name string) (float64, bool) {
	if n, frac, neg, ok := d.shortNumber(); ok {
		if frac == 0 { // an integer literal: "-0" is 0, as parseIntLit reads it
			if neg {
				return float64(-int64(n)), true
			}
			return float64(n), true
		}
		f := float64(n) / pow10tab[frac]
		if neg {
			f = -f
		}
		return f, true
	}
	c := d.data[d.pos]
	switch {
	case c == '-' || (c >= '0' && c <= '9'):
		at := d.pos
		b, isInt, ok := d.scanNumber()
		if !ok {
			return 0, false
		}
		if isInt && len(b) <= 16 {
			n, _ := parseIntLit(b)
			return float64(n), true
		}
		f, ok := parseFloatLit(b)
		if !ok {
			d.errs.add(join(prefix, name), "number at byte "+strconv.Itoa(at)+" is out of the float64 range")
			return 0, false
		}
		return f, true
	case c == '"':
		b, ok := d.readString()
		if !ok {
			return 0, false
		}
		if f, ok := floatFromString(b); ok {
			return f, true
		}
		d.errs.add(join(prefix, name), "input should be a valid number, unable to parse string as a number")
		return 0, false
	case c == 't':
		return 1, d.matchLit("true")
	case c == 'f':
		return 0, d.matchLit("false")
	}
	d.typeError(join(prefix, name), "input should be a valid number")
	return 0, false
}

func floatFromString(b []byte) (float64, bool) {
	b = trimASCIISpace(b)
	if len(b) == 0 {
		return 0, false
	}
	digits := false
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			digits = true
		case c == '+' || c == '-' || c == '.' || c == 'e' || c == 'E':
		default:
			return 0, false
		}
	}
	if !digits {
		return 0, false
	}
	f, err := strconv.ParseFloat(bstr(b), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, false
	}
	return f, true
}

// boolean decodes a bool field with Pydantic's lax rules.
func (d *decoder) boolean(prefix, name string) (bool, bool) {
	c := d.data[d.pos]
	switch {
	case c == 't':
		return true, d.matchLit("true")
	case c == 'f':
		return false, d.matchLit("false")
	case c == '-' || (c >= '0' && c <= '9'):
		b, _, ok := d.scanNumber()
		if !ok {
			return false, false
		}
		if f, err := strconv.ParseFloat(bstr(b), 64); err == nil && (f == 0 || f == 1) {
			return f == 1, true
		}
		d.errs.add(join(prefix, name), "input should be a valid boolean, unable to interpret input")
		return false, false
	case c == '"':
		b, ok := d.readString()
		if !ok {
			return false, false
		}
		switch string(lowerASCII(b)) {
		case "1", "on", "t", "true", "y", "yes":
			return true, true
		case "0", "off", "f", "false", "n", "no":
			return false, true
		}
		d.errs.add(join(prefix, name), "input should be a valid boolean, unable to interpret input")
		return false, false
	}
	d.typeError(join(prefix, name), "input should be a valid boolean")
	return false, false
}

func lowerASCII(b []byte) []byte {
	if len(b) > 5 {
		return b
	}
	var buf [5]byte
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	out := buf[:len(b)]
	return append([]byte(nil), out...)
}

// extra records a key the model does not define.
func (d *decoder) extra(prefix string, key []byte) {
	d.typeError(join(prefix, string(key)), "extra fields not permitted")
}

// relocate prefixes the path of the error just recorded (an element's
// or key's) with its container's, built only now that it is needed.
func (d *decoder) relocate(p, name string) {
	if n := len(d.errs.fields); n > 0 && d.syn == nil {
		d.errs.fields[n-1].Path = join(join(p, name), d.errs.fields[n-1].Path)
	}
}

// relocateElem is relocate for element i of a list whose element error
// was recorded at the empty path: formatting the index only now keeps
// strconv out of every successful element.
func (d *decoder) relocateElem(p, name string, i int) {
	if n := len(d.errs.fields); n > 0 && d.syn == nil {
		path := join(join(p, name), strconv.Itoa(i))
		if rest := d.errs.fields[n-1].Path; rest != "" {
			path = join(path, rest)
		}
		d.errs.fields[n-1].Path = path
	}
}

// missing records a required field that was absent.
func (d *decoder) missing(prefix, name string) {
	d.errs.add(join(prefix, name), "field required")
}

// shortNumber reads, in one pass, the number at d.pos when it has the
// common short form: an optional '-', an integer part without a leading
// zero (or a single 0), an optional fraction, at most 15 digits in all
// and no exponent. It returns the digits as an integer, the number of
// them after the point and the sign; the value is exactly
// n / 10^frac, which for at most 15 digits is one correctly rounded
// division, as parseFloatLit computes it. Any other form (an exponent,
// a leading zero, more digits, none) returns ok false with d.pos
// unchanged, for the general path to read or report.
func (d *decoder) shortNumber() (n uint64, frac int, neg, ok bool) {
	data := d.data
	i := d.pos
	if i < len(data) && data[i] == '-' {
		neg = true
		i++
	}
	start := i
	for i < len(data) && data[i]-'0' <= 9 {
		n = n*10 + uint64(data[i]-'0')
		i++
	}
	digits := i - start
	if digits == 0 || (data[start] == '0' && digits > 1) {
		return 0, 0, false, false
	}
	if i < len(data) && data[i] == '.' {
		i++
		fs := i
		for i < len(data) && data[i]-'0' <= 9 {
			n = n*10 + uint64(data[i]-'0')
			i++
		}
		frac = i - fs
		if frac == 0 {
			return 0, 0, false, false
		}
		digits += frac
	}
	if digits > 15 || (i < len(data) && (data[i] == 'e' || data[i] == 'E')) {
		return 0, 0, false, false
	}
	d.pos = i
	return n, frac, neg, true
}

var pow10tab = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// parseFloatLit converts a scanned JSON number. Short literals take the
// exact fast path (a mantissa below 2^53 scaled by a power of ten up to
// 10^22 is one correctly rounded IEEE operation, exactly what
// strconv does first); the rest go through strconv.ParseFloat.
func parseFloatLit(b []byte) (float64, bool) {
	var mant uint64
	exp := 0
	i := 0
	neg := false
	if i < len(b) && b[i] == '-' {
		neg = true
		i++
	}
	nd := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		mant = mant*10 + uint64(b[i]-'0')
		nd++
	}
	if i < len(b) && b[i] == '.' {
		i++
		for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
			mant = mant*10 + uint64(b[i]-'0')
			nd++
			exp--
		}
	}
	if i == len(b) && nd <= 15 && mant < 1<<53 && exp >= -22 {
		f := float64(mant)
		if exp < 0 {
			f /= pow10tab[-exp]
		}
		if neg {
			f = -f
		}
		return f, true
	}
	f, err := strconv.ParseFloat(bstr(b), 64)
	if err != nil || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}
