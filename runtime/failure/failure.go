// Package failure is the host's one error taxonomy. Every error the runtime
// hands to a front end (HTTP, gRPC, the bus) carries a Class; each front end
// maps classes to its own codes in exactly one place (oip's status table,
// the gRPC adapter's code table, the bus consumer's permanent/transient
// rule). The runtime decides the class once, where it knows what went
// wrong, so a front end never parses messages or guesses.
//
// An *Error's message is the message it was built with, never prefixed with
// its class: "kernel \"a/b\": name may not contain '/'", not "bad input:
// bad input: ...". Wrapping with fmt.Errorf("...: %w", err) keeps the class;
// the outermost *Error in a chain decides it, so a caller can reclassify.
package failure

import (
	"context"
	"errors"
	"fmt"
)

// Class says what kind of failure an error is, and so whether repeating
// the same request can succeed.
type Class uint8

// The classes. The zero value is Internal, so an unclassified error is
// never mistaken for the caller's fault.
const (
	// Internal: the host failed (an executor fault, a bug). HTTP 500.
	Internal Class = iota
	// NotFound: no such model, kernel, layer, seed or artifact. HTTP 404.
	NotFound
	// BadInput: the request itself is wrong (a field, a shape, a name).
	// HTTP 400.
	BadInput
	// Malformed: an artifact or document the request points at is
	// unusable (not a kernel file, checksum mismatch, metadata that
	// disagrees with the module). HTTP 422.
	Malformed
	// Refused: the request is well formed but policy refuses it (a
	// reference outside the allow-list, a compilation target the host never
	// executes, a kernel Urza marks invalid, no placement under a deny
	// policy, a transition the seed state machine forbids). HTTP 422.
	Refused
	// Conflict: the request conflicts with the current state. HTTP 409.
	Conflict
	// TooLarge: a body, artifact, batch or output over a configured limit.
	// HTTP 413.
	TooLarge
	// Unsupported: a feature or datatype the host does not implement.
	// HTTP 501.
	Unsupported
	// Unavailable: not now, but maybe soon (a network error, an upstream
	// 5xx, an open circuit breaker, a kernel being unloaded, a memory
	// budget in use). HTTP 503 with Retry-After.
	Unavailable
	// QueueFull: admission control refused the request. HTTP 503 with
	// Retry-After.
	QueueFull
	// Timeout: the request's deadline passed. HTTP 504.
	Timeout
	// Canceled: the caller went away. HTTP 499 (for logs and metrics).
	Canceled
)

var classNames = [...]string{
	Internal:    "internal",
	NotFound:    "not_found",
	BadInput:    "bad_input",
	Malformed:   "malformed",
	Refused:     "refused",
	Conflict:    "conflict",
	TooLarge:    "too_large",
	Unsupported: "unsupported",
	Unavailable: "unavailable",
	QueueFull:   "queue_full",
	Timeout:     "timeout",
	Canceled:    "canceled",
}

// String is the class's snake_case name, bounded for metric labels.
func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// Permanent reports whether repeating the same request cannot succeed
// without something else changing first: the bus dead-letters such
// commands at once instead of retrying them.
func (c Class) Permanent() bool {
	switch c {
	case NotFound, BadInput, Malformed, Refused, Conflict, TooLarge, Unsupported:
		return true
	}
	return false
}

// Error is an error with a class.
type Error struct {
	Class Class
	msg   string
	err   error
}

// Error returns the message, without the class.
func (e *Error) Error() string {
	if e.msg == "" && e.err != nil {
		return e.err.Error()
	}
	return e.msg
}

// Unwrap returns the wrapped error, if any.
func (e *Error) Unwrap() error { return e.err }

// Errorf builds an error of class c. The format may wrap another error
// with %w; the message is exactly the formatted text.
func Errorf(c Class, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{Class: c, msg: err.Error(), err: errors.Unwrap(err)}
}

// Wrap gives err the class c, keeping its message. A nil err stays nil.
func Wrap(c Class, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Class: c, err: err}
}

// ClassOf returns the class of err: that of the outermost *Error in its
// chain; else Timeout or Canceled for the context errors; else Internal.
// A nil error has no class: ClassOf(nil) is Internal, and callers check
// for nil first.
func ClassOf(err error) Class {
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return Timeout
	case errors.Is(err, context.Canceled):
		return Canceled
	}
	return Internal
}

// Is reports whether err is of class c.
func Is(err error, c Class) bool { return err != nil && ClassOf(err) == c }
