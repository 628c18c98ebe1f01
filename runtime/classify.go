package runtime

import (
	"context"
	"errors"
	"io/fs"
	"net"

	"github.com/esper/kasmina-host/contracts"
	"github.com/esper/kasmina-host/internal/regularfile"
	"github.com/esper/kasmina-host/kernels"
	"github.com/esper/kasmina-host/kernels/source"
	"github.com/esper/kasmina-host/runtime/failure"
)

// This file is the one place where the errors of the packages below the
// runtime (kernels, kernels/source, the file system, the network), which
// know nothing of failure classes, get one. Every Host method that fronts a
// request returns classified errors, so the front ends map classes and
// never inspect causes: oip's status table for HTTP, Class.Permanent for
// the bus consumer (dead-letter at once, or leave pending for a retry).
//
//	cause                                              class        HTTP  bus
//	artifact or Urza id not found                      NotFound     404   dead letter
//	reference that cannot be parsed, unknown scheme,
//	  an expected checksum that is not a SHA-256       BadInput     400   dead letter
//	reference refused by policy, a non-regular file,
//	  a target never executed, an illegal transition   Refused      422   dead letter
//	checksum mismatch, malformed kernel file or
//	  Urza record, metadata disagreeing with module    Malformed    422   dead letter
//	artifact over the size cap                         TooLarge     413   dead letter
//	network error, Urza 5xx, other fetch failures      Unavailable  503   retried
//	deadline passed                                    Timeout      504   retried
//	caller went away                                   Canceled     499   retried
//
// An error that already carries a class keeps it.

// classify gives err a class when it has none: the class of the first
// cause in the table above that it wraps, else def (the class of an error
// nothing more is known about at the call site: Unavailable for fetching,
// Malformed for parsing). A nil err stays nil.
func classify(err error, def failure.Class) error {
	if err == nil {
		return nil
	}
	var classified *failure.Error
	if errors.As(err, &classified) {
		return err
	}
	return failure.Wrap(classOf(err, def), err)
}

// classOf is classify's table.
func classOf(err error, def failure.Class) failure.Class {
	is := func(targets ...error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
	var netErr net.Error
	switch {
	case is(context.DeadlineExceeded):
		return failure.Timeout
	case is(context.Canceled):
		return failure.Canceled
	case is(source.ErrNotFound, errUrzaNotFound, fs.ErrNotExist):
		return failure.NotFound
	case is(source.ErrNotAllowed, regularfile.ErrNotRegular, kernels.ErrTargetNotExecutable,
		contracts.ErrIllegalTransition, fs.ErrPermission):
		return failure.Refused // before BadInput: a refused file is also an invalid reference
	case is(source.ErrInvalidRef, source.ErrUnsupportedScheme, source.ErrInvalidChecksum):
		return failure.BadInput
	case is(kernels.ErrChecksumMismatch, kernels.ErrMalformed, kernels.ErrMetadataMismatch):
		return failure.Malformed
	case is(source.ErrTooLarge, regularfile.ErrTooLarge):
		return failure.TooLarge
	case errors.As(err, &netErr):
		return failure.Unavailable
	}
	return def
}
