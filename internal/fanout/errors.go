package fanout

import "fmt"

// Problem is what kind of mistake a client call's Error reports; the HTTP
// layer gives each its status.
type Problem int

const (
	Invalid  Problem = iota + 1 // the request is wrong: 400
	NotFound                    // no such instance: 404
	Conflict                    // the instance's state does not allow it: 409
)

// Error is a client call refused for a reason the caller can act on. Its
// message says what was wrong and what to do.
type Error struct {
	Problem Problem
	Msg     string
}

func (e *Error) Error() string { return e.Msg }

func invalid(format string, args ...any) error {
	return &Error{Invalid, fmt.Sprintf(format, args...)}
}

func notFound(id string) error {
	return &Error{NotFound, fmt.Sprintf("no orchestration instance has id %q", id)}
}

func conflict(format string, args ...any) error {
	return &Error{Conflict, fmt.Sprintf(format, args...)}
}
