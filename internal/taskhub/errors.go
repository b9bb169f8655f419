package taskhub

import (
	"errors"
	"fmt"
)

// ErrStillRunning is returned by PurgeInstance when the instance, or an
// orchestration it started, has not finished.
var ErrStillRunning = errors.New("has not finished")

// ErrListUnsupported is returned by ListInstances when the backend cannot
// list instances.
var ErrListUnsupported = errors.New("this task hub backend cannot list instances")

// ErrBadContinuationToken is returned by ListInstances for a continuation
// token it did not issue.
var ErrBadContinuationToken = errors.New("the continuation token is not one this task hub issued")

// UnavailableError says the scheduler could not be used: it is down or
// unreachable, or it refused this app's credentials or task hub. The request
// itself was fine and may succeed later.
type UnavailableError struct {
	Endpoint string // the scheduler's host
	Reason   string
	Err      error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("the Durable Task Scheduler at %s %s: %v", e.Endpoint, e.Reason, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }
