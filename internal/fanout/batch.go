package fanout

// Items per activity. A batch of items is one work activity: one message
// from the scheduler, one lock, one result, where a scheduler bills and
// caps by the message. The work function is still called once per item;
// the activity runs a batch's items a few at a time, each with its own
// timeout, and returns each item's outcome. The items of a batch that fail
// are tried again together, as a smaller batch, as the retry policy says.

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/microsoft/durabletask-go/task"
)

// batchPrefix starts a batch's input, {"batch":[[item,index],…],"attempt":n},
// which a single item's input, an array, never does.
const batchPrefix = `{"batch":[`

// batchJSON is the input of the batch of items [from, from+len) of work
// whose positions are pending, at attempt; its result may take at most
// bytes.
func batchJSON(work items, from int, pending []int, attempt, bytes int) string {
	var b strings.Builder
	b.WriteString(batchPrefix)
	for i, pos := range pending {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(workJSON(work.at(from+pos), work.first+from+pos, 1))
	}
	b.WriteString(`],"attempt":`)
	b.WriteString(strconv.Itoa(attempt))
	b.WriteString(`,"bytes":`)
	b.WriteString(strconv.Itoa(bytes))
	b.WriteByte('}')
	return b.String()
}

// outcome is one item's outcome in a batch's result: its result, or the
// error of its attempt.
type outcome struct {
	R json.RawMessage `json:"r,omitempty"`
	E *string         `json:"e,omitempty"`
}

// batch is a batch's work activity, tried again for the items that failed,
// after a durable timer, while attempts remain. Like retrying, it keeps its
// state across Awaits, and schedules only from Await.
type batch struct {
	ctx      *task.OrchestrationContext
	policy   RetryPolicy
	call     func(pending []int, attempt int) task.Task
	results  []json.RawMessage // by position in the batch; nil until it succeeds
	errs     []string          // by position: the latest failure
	attempts []int             // by position: attempts made
	pending  []int             // positions the current attempt runs
	attempt  int
	current  task.Task
	timer    task.Task
	done     bool
}

func newBatch(ctx *task.OrchestrationContext, policy RetryPolicy, size int, call func(pending []int, attempt int) task.Task) *batch {
	b := &batch{ctx: ctx, policy: policy, call: call, attempt: 1,
		results: make([]json.RawMessage, size), errs: make([]string, size), attempts: make([]int, size), pending: make([]int, size)}
	for i := range b.pending {
		b.pending[i] = i
	}
	b.current = call(b.pending, 1)
	return b
}

// Await waits until every item of the batch has succeeded, or failed its
// last attempt. Failures are the items', not Await's.
func (b *batch) Await(any) error {
	for !b.done {
		if b.timer != nil {
			if err := b.timer.Await(nil); err != nil {
				return err
			}
			b.timer = nil
			b.attempt++
			b.current = b.call(b.pending, b.attempt)
		}
		b.absorb()
		if len(b.pending) == 0 || b.attempt >= b.policy.MaxAttempts {
			b.done = true
			break
		}
		b.timer = b.ctx.CreateTimer(b.policy.delay(b.attempt))
	}
	return nil
}

// absorb waits for the current attempt and records each pending item's
// outcome; the items that failed become the next attempt's.
func (b *batch) absorb() {
	var outs []outcome
	err := b.current.Await(&outs)
	var failed []int
	for j, pos := range b.pending {
		b.attempts[pos] = b.attempt
		switch {
		case err != nil:
			b.errs[pos] = failureMessage(err)
		case j >= len(outs):
			b.errs[pos] = "the batch's result has no outcome for this item"
		case outs[j].E != nil:
			b.errs[pos] = failureMessage(errors.New(*outs[j].E))
		default:
			b.results[pos] = outs[j].R
			continue
		}
		failed = append(failed, pos)
	}
	b.pending = failed
}

// settled reports, without scheduling anything, whether the batch has its
// outcome: the current attempt finished, and it was the last or nothing
// in it failed.
func (b *batch) settled() bool {
	if b.done {
		return true
	}
	if b.timer != nil || !done(b.current) {
		return false
	}
	if b.attempt >= b.policy.MaxAttempts {
		return true
	}
	var outs []outcome
	if err := b.current.Await(&outs); err != nil || len(outs) < len(b.pending) {
		return false
	}
	for _, o := range outs {
		if o.E != nil {
			return false
		}
	}
	return true
}

// batchBounds cuts work into batches of at most size items, and at most
// budget bytes of input each (0: no bound): batch k is items [bounds[k],
// bounds[k+1]).
func batchBounds(work items, size, budget int) []int {
	bounds := []int{0}
	n, from, bytes := work.len(), 0, len(batchPrefix)+16
	for i := range n {
		itemBytes := len(work.at(i)) + 12 // [,index] and a comma
		if i > from && (i-from >= size || (budget > 0 && bytes+itemBytes > budget)) {
			bounds = append(bounds, i)
			from, bytes = i, len(batchPrefix)+16
		}
		bytes += itemBytes
	}
	if n > 0 {
		bounds = append(bounds, n)
	}
	return bounds
}

// isBatch reports whether a work activity's input is a batch's.
func isBatch(raw json.RawMessage) bool { return bytes.HasPrefix(raw, []byte(batchPrefix)) }

// runBatch runs each item of a batch's input with run, at most concurrency
// at once, and returns the outcomes in the batch's order, as JSON. Outcomes
// larger than the input's bound fail the batch, saying what to change: a
// result a scheduler would refuse would be refused on every attempt.
func runBatch(raw json.RawMessage, concurrency int, run func(item json.RawMessage, index, attempt int) (any, error)) (json.RawMessage, int, error) {
	var in struct {
		Batch   []json.RawMessage `json:"batch"`
		Attempt int               `json:"attempt"`
		Bytes   int               `json:"bytes"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, 0, err
	}
	outs := make([]outcome, len(in.Batch))
	slots := make(chan struct{}, max(1, concurrency))
	var wg sync.WaitGroup
	for j, w := range in.Batch {
		item, index, err := readBatchItem(w)
		if err != nil {
			msg := "reading the batch's item: " + err.Error()
			outs[j].E = &msg
			continue
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			r, err := run(item, index, max(in.Attempt, 1))
			if err != nil {
				msg := err.Error()
				outs[j].E = &msg
				return
			}
			if outs[j].R, err = json.Marshal(r); err != nil {
				msg := "encoding the result: " + err.Error()
				outs[j].E = &msg
			}
		})
	}
	wg.Wait()
	b, err := json.Marshal(outs)
	if err != nil {
		return nil, 0, err
	}
	if in.Bytes > 0 && len(b) > in.Bytes {
		return nil, 0, errBatchTooLarge{items: len(outs), bytes: len(b), most: in.Bytes}
	}
	return b, len(outs), nil
}

// errBatchTooLarge fails a batch whose outcomes would not fit a payload.
type errBatchTooLarge struct{ items, bytes, most int }

func (e errBatchTooLarge) Error() string {
	return "the results of a batch of " + strconv.Itoa(e.items) + " items take " + strconv.Itoa(e.bytes) +
		" bytes, over the " + strconv.Itoa(e.most) + " one payload may carry: start with fewer itemsPerActivity"
}

// readBatchItem reads one [item, index] of a batch.
func readBatchItem(w json.RawMessage) (json.RawMessage, int, error) {
	in, index, err := readWork(w)
	if err == nil && index < 0 {
		err = errors.New("[item, index] expected")
	}
	return in.Item, index, err
}
