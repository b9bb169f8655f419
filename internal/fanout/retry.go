package fanout

import (
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/microsoft/durabletask-go/task"

	"fanoutfanin/internal/taskhub"
)

// RetryPolicy is how a failed item is tried again. It travels in the
// orchestration's input, so that every replay, on any worker, retries the
// same way whatever its own settings.
type RetryPolicy struct {
	MaxAttempts  int     `json:"maxAttempts"` // in all, the first included
	FirstDelayMs int64   `json:"firstDelayMs"`
	Backoff      float64 `json:"backoff"` // each delay is this many times the one before
	MaxDelayMs   int64   `json:"maxDelayMs"`
}

// MaxAttempts bounds RetryPolicy.MaxAttempts.
const MaxAttempts = 100

// DefaultRetry is the policy of an orchestration started without one, as
// any durabletask client may start it: three attempts, a second apart, then
// two.
var DefaultRetry = NewRetryPolicy(3, time.Second, 2, time.Minute)

// policyOrDefault is p, or DefaultRetry when an input carries none.
func policyOrDefault(p *RetryPolicy) RetryPolicy {
	if p == nil {
		return DefaultRetry
	}
	return *p
}

// NewRetryPolicy tries an item up to maxAttempts times in all: the first
// retry after firstDelay, each later one backoff times longer than the one
// before, never more than maxDelay.
func NewRetryPolicy(maxAttempts int, firstDelay time.Duration, backoff float64, maxDelay time.Duration) RetryPolicy {
	return RetryPolicy{
		MaxAttempts:  maxAttempts,
		FirstDelayMs: firstDelay.Milliseconds(),
		Backoff:      backoff,
		MaxDelayMs:   maxDelay.Milliseconds(),
	}
}

// delay is how long to wait after attempt (from 1) failed.
func (p RetryPolicy) delay(attempt int) time.Duration {
	ms := float64(p.FirstDelayMs) * math.Pow(max(p.Backoff, 1), float64(attempt-1))
	return time.Duration(min(ms, float64(p.MaxDelayMs))) * time.Millisecond
}

// retrying is an activity call that is tried again, after a durable timer,
// while it fails and attempts remain. Unlike v0.6.0's own retry option,
// whose Await schedules a new timer each time it is called, it keeps its
// state: slide awaits a task more than once (finished, then Await), and
// every schedule must happen exactly once and at the same point of the
// history on every replay. Retries are scheduled only from Await, never
// from settled, so that where they happen depends on the order the
// orchestrator awaits in, not on how far progress reports have read.
type retrying struct {
	ctx     *task.OrchestrationContext
	policy  RetryPolicy
	call    func(attempt int) task.Task
	attempt int       // of current, from 1
	current task.Task // the latest attempt
	timer   task.Task // the wait before the next attempt, while it runs
}

func newRetrying(ctx *task.OrchestrationContext, policy RetryPolicy, call func(attempt int) task.Task) *retrying {
	return &retrying{ctx: ctx, policy: policy, call: call, attempt: 1, current: call(1)}
}

// Await waits for the call's outcome: the first attempt that succeeds, or
// the last one's failure.
func (r *retrying) Await(v any) error {
	for {
		if r.timer != nil {
			if err := r.timer.Await(nil); err != nil {
				return err
			}
			r.timer = nil
			r.attempt++
			r.current = r.call(r.attempt)
		}
		err := r.current.Await(v)
		if err == nil || r.attempt >= r.policy.MaxAttempts {
			return err
		}
		r.timer = r.ctx.CreateTimer(r.policy.delay(r.attempt))
	}
}

// settled reports, without scheduling anything, whether the call has its
// outcome: the latest attempt finished and either succeeded or was the last.
func (r *retrying) settled() bool {
	if r.timer != nil || !done(r.current) {
		return false
	}
	return r.attempt >= r.policy.MaxAttempts || r.current.Await(nil) == nil
}

// settled reports whether t has its outcome, without scheduling anything.
func settled(t task.Task) bool {
	switch t := t.(type) {
	case *retrying:
		return t.settled()
	case *batch:
		return t.settled()
	}
	return done(t)
}

// done is finished without reading events, for tasks whose history has
// been read to its end, as settled's have. For v0.6.0's own tasks it reads
// their flag instead of an Await, which panics when a task is not done:
// progress asks this of every running task at every step.
func done(t task.Task) bool {
	if d, ok := taskhub.Completed(t); ok {
		return d
	}
	return finished(t)
}

// failureMessage is what an item's failure says, without v0.6.0's prefix,
// and short: a summary lists every failed item.
func failureMessage(err error) string {
	const most = 160
	msg := strings.TrimPrefix(err.Error(), "task failed with an error: ")
	if len(msg) > most {
		cut := most
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "…"
	}
	return msg
}
