package contracts

import (
	"fmt"
	"strconv"
)

// SeedID identifies a seed within a model: the layer and the seed's index
// in it (the reference's (layer_id, seed_idx) tuple).
type SeedID struct {
	LayerID int
	SeedIdx int
}

// ValidateSeedID checks a seed ID pair: both elements non-negative. The
// error wraps ErrSeedIDNegative.
func ValidateSeedID(id SeedID) error {
	if id.LayerID < 0 || id.SeedIdx < 0 {
		return fmt.Errorf("seed ID (%d, %d): %w", id.LayerID, id.SeedIdx, ErrSeedIDNegative)
	}
	return nil
}

// ParseSeedID decodes a seed ID from its JSON form, an array of two
// integers, with the reference's checks: anything but two elements wraps
// ErrSeedIDShape (Python's ValueError), a non-integer element wraps
// ErrSeedIDType (TypeError), a negative one ErrSeedIDNegative.
func ParseSeedID(data []byte) (SeedID, error) {
	d := newDecoder("SeedID", data)
	if d.peek() != '[' {
		if d.skipValue(0); d.syn != nil {
			return SeedID{}, d.syn
		}
		return SeedID{}, fmt.Errorf("seed ID is not an array: %w", ErrSeedIDShape)
	}
	d.pos++
	var vals []int
	typeErr := -1
	first := true
	for i := 0; d.nextElem(&first); i++ {
		c := d.data[d.pos]
		if c == '-' || (c >= '0' && c <= '9') {
			b, isInt, ok := d.scanNumber()
			if !ok {
				break
			}
			n, fits := parseIntLit(b)
			if isInt && fits {
				vals = append(vals, int(n))
				continue
			}
			if isInt {
				return SeedID{}, fmt.Errorf("seed ID element %d (%s) is out of the int64 range: %w", i, b, ErrSeedIDShape)
			}
		} else if !d.skipValue(0) {
			break
		}
		vals = append(vals, 0)
		if typeErr < 0 {
			typeErr = i
		}
	}
	if err := d.finish(); err != nil {
		return SeedID{}, err
	}
	if len(vals) != 2 {
		return SeedID{}, fmt.Errorf("seed ID has %d elements, want 2: %w", len(vals), ErrSeedIDShape)
	}
	if typeErr >= 0 {
		return SeedID{}, fmt.Errorf("seed ID element %s is not an integer: %w", strconv.Itoa(typeErr), ErrSeedIDType)
	}
	id := SeedID{LayerID: vals[0], SeedIdx: vals[1]}
	return id, ValidateSeedID(id)
}

// AppendJSON appends the seed ID as a two-element JSON array.
func (s SeedID) AppendJSON(dst []byte) []byte {
	dst = append(dst, '[')
	dst = appendInt(dst, s.LayerID)
	dst = append(dst, ',')
	dst = appendInt(dst, s.SeedIdx)
	return append(dst, ']')
}
