package fanout

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/microsoft/durabletask-go/task"

	"fanoutfanin/internal/telemetry"
)

// Orchestrators are replayed from their history, so everything here must be
// deterministic: no clock, no randomness, no I/O, and logs only when not
// replaying. Sizes are measured on the JSON that the history holds.

// workInput is the work activity's input as an object: the form earlier
// versions sent on a retry ({"item", "attempt"}), and that any client may
// send. This version sends workJSON's array.
type workInput struct {
	Item    json.RawMessage `json:"item"`
	Index   *int            `json:"index,omitempty"`
	Attempt int             `json:"attempt,omitempty"` // absent: 1
}

// workJSON is the work activity's input: [item, index], or [item, index,
// attempt] past the first attempt. It is written directly, and short,
// because every replay of a step writes it again for every item so far and
// the history holds it.
func workJSON(item json.RawMessage, index, attempt int) string {
	var digits [20]byte
	var b strings.Builder
	b.Grow(len(item) + 24)
	b.WriteByte('[')
	b.Write(item)
	b.WriteByte(',')
	b.Write(strconv.AppendInt(digits[:0], int64(index), 10))
	if attempt != 1 {
		b.WriteByte(',')
		b.Write(strconv.AppendInt(digits[:0], int64(attempt), 10))
	}
	b.WriteByte(']')
	return b.String()
}

// aggregateInput is the aggregate activity's input: item results, or
// summaries to merge, and the bound on the summary it returns.
type aggregateInput struct {
	Results  []json.RawMessage `json:"results,omitempty"`
	Partials []json.RawMessage `json:"partials,omitempty"`
	Bytes    int               `json:"bytes,omitempty"`
}

// FailedItem is an item that failed its last attempt.
type FailedItem struct {
	Index    int             `json:"index"` // its place in the whole fan-out, from 0
	Item     json.RawMessage `json:"item"`
	Error    string          `json:"error"` // the last attempt's, shortened
	Attempts int             `json:"attempts"`
}

// record is what the engine adds to a summary in an output: the failed
// items, as far as FailedListBytes allows, and whether every item succeeded.
type record struct {
	TotalItemsFailed   int          `json:"total_items_failed"`
	FailedItems        []FailedItem `json:"failed_items"`
	FailedItemsOmitted int          `json:"failed_items_omitted,omitempty"`
	Success            bool         `json:"success"`
	// Partitions is how many partitions ran the items; 0 when they ran in
	// one orchestration. Partition k (from 0) is instance "<id>:p<k>".
	Partitions int `json:"partitions,omitempty"`

	listed int // bytes of FailedItems
}

// fail records a failed item, listing it if there is room.
func (r *record) fail(f FailedItem) {
	r.TotalItemsFailed++
	r.list(f)
}

func (r *record) list(f FailedItem) {
	b, _ := json.Marshal(f) // raw JSON, ints and a string always encode
	if r.listed += len(b) + 1; r.listed > FailedListBytes {
		r.FailedItemsOmitted++
		return
	}
	r.FailedItems = append(r.FailedItems, f)
}

// add records a partition's failed items after those recorded.
func (r *record) add(p record) {
	r.TotalItemsFailed += p.TotalItemsFailed
	for _, f := range p.FailedItems {
		r.list(f)
	}
	r.FailedItemsOmitted += p.FailedItemsOmitted
}

// output is a fan-out's output: the summary's fields, then the record's.
// The summary is read as S first: an aggregation recorded by an earlier
// version may carry the record's fields too, which would be there twice.
func (f *runner[I, R, S]) output(summary json.RawMessage, r record) (json.RawMessage, error) {
	var s S
	if err := json.Unmarshal(summary, &s); err != nil {
		return nil, fmt.Errorf("reading the summary: %w", err)
	}
	summary, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("writing the summary: %w", err)
	}
	return output(summary, r), nil
}

// output is a fan-out's output: the summary's fields, then the record's.
func output(summary json.RawMessage, r record) json.RawMessage {
	if r.FailedItems == nil {
		r.FailedItems = []FailedItem{}
	}
	r.Success = r.TotalItemsFailed == 0
	b, _ := json.Marshal(r)
	if len(summary) <= 2 { // {}
		return b
	}
	out := make([]byte, 0, len(summary)+len(b))
	out = append(out, summary[:len(summary)-1]...)
	out = append(out, ',')
	return append(out, b[1:]...)
}

// orchestrate is the fan-out's orchestrator.
func (f *runner[I, R, S]) orchestrate(ctx *task.OrchestrationContext) (any, error) {
	plan, err := readPlan(ctx)
	if err != nil {
		return nil, err
	}
	logCtx := f.opts.Log.With().Str("instanceId", string(ctx.ID))
	if sc, ok := telemetry.ParseTraceParent(plan.Trace, ""); ok {
		logCtx = logCtx.Str("traceId", sc.TraceID().String()).Str("spanId", telemetry.OrchestrationSpanID(sc.TraceID(), string(ctx.ID)).String())
	}
	log := logCtx.Logger()
	work, err := f.items(ctx, plan)
	if err != nil {
		return nil, err
	}
	n := work.len()
	// Not this worker's setting: every replay, on any worker, must split
	// the items alike. Start always writes the size into the plan.
	size := plan.PartitionSize
	if size <= 0 {
		size = DefaultPartitionSize
	}
	partitions := (n + size - 1) / size
	if !ctx.IsReplaying {
		log.Info().Int("items", n).Int("partitions", partitions).Int("maxParallelism", plan.MaxParallelism).Msg("fanning out")
	}
	var summary json.RawMessage
	var rec record
	if partitions <= 1 {
		summary, rec, err = f.fanOut(ctx, work, plan.MaxParallelism, plan.Batch, plan.retry(), summaryBytes(plan.ListBytes))
	} else {
		summary, rec, err = f.fanOutPartitions(ctx, work, size, plan)
	}
	if err != nil {
		return nil, err
	}
	if !ctx.IsReplaying {
		log.Info().Int("items", n-rec.TotalItemsFailed).Int("failed", rec.TotalItemsFailed).Msg("fan-in complete")
	}
	return f.output(summary, rec)
}

// partition is the partition orchestrator: one partition's fan-out and
// fan-in.
func (f *runner[I, R, S]) partition(ctx *task.OrchestrationContext) (any, error) {
	var p partitionInput
	if err := ctx.GetInput(&p); err != nil {
		return nil, fmt.Errorf("reading the partition: %w", err)
	}
	work := items{list: p.Items, first: p.First, count: p.Count}
	if p.Items == nil {
		if work.gen = f.generator(); work.gen == nil {
			return nil, fmt.Errorf("the partition asks for generated items, but fan-out %s generates none", f.names.Name)
		}
	}
	summary, rec, err := f.fanOut(ctx, work, p.Window, p.Batch, policyOrDefault(p.Retry), summaryBytes(p.Bytes))
	if err != nil {
		return nil, err
	}
	return f.output(summary, rec)
}

// fanOut runs the work for every item, at most window at once (0: all at
// once), in batches of batchSize items if more than 1, each tried again as
// retry says while it fails, and aggregates their results into a summary of
// at most budget bytes. An item failing every attempt is recorded, not
// fatal.
func (f *runner[I, R, S]) fanOut(ctx *task.OrchestrationContext, work items, window, batchSize int, retry RetryPolicy, budget int) (json.RawMessage, record, error) {
	if batchSize > 1 {
		return f.fanOutBatches(ctx, work, window, batchSize, retry, budget)
	}
	n := work.len()
	tasks := f.slide(ctx, n, window, func(i, _ int, _ func()) task.Task {
		item, index := work.at(i), work.first+i
		return newRetrying(ctx, retry, func(attempt int) task.Task {
			return ctx.CallActivity(f.names.Work, task.WithRawActivityInput(workJSON(item, index, attempt)))
		})
	}, func(done []bool) {
		finished := 0
		for _, d := range done {
			if d {
				finished++
			}
		}
		setProgress(ctx, finished, n)
	})
	var rec record
	var results []json.RawMessage
	for i, t := range tasks {
		var r json.RawMessage
		if err := t.Await(&r); err != nil {
			rec.fail(FailedItem{Index: work.first + i, Item: work.at(i), Error: failureMessage(err), Attempts: t.(*retrying).attempt})
			continue
		}
		results = append(results, r)
	}
	summary, err := f.aggregateAll(ctx, results, nil, budget)
	return summary, rec, err
}

// fanOutBatches is fanOut in batches of at most size items (fewer if
// window is smaller), and at most budget bytes of input: at most window
// items run at once, in whole batches (at least one).
func (f *runner[I, R, S]) fanOutBatches(ctx *task.OrchestrationContext, work items, window, size int, retry RetryPolicy, budget int) (json.RawMessage, record, error) {
	n := work.len()
	if window > 0 {
		size = min(size, window)
	}
	bounds := batchBounds(work, size, budget)
	count := len(bounds) - 1
	batches := 0 // at once; 0: all
	if window > 0 {
		batches = max(1, window/size)
	}
	tasks := f.slide(ctx, count, batches, func(k, _ int, _ func()) task.Task {
		from := bounds[k]
		return newBatch(ctx, retry, bounds[k+1]-from, func(pending []int, attempt int) task.Task {
			return ctx.CallActivity(f.names.Work, task.WithRawActivityInput(batchJSON(work, from, pending, attempt, budget)))
		})
	}, func(done []bool) {
		// A batch's items count once the whole batch has its outcome.
		finished := 0
		for k, d := range done {
			if d {
				finished += bounds[k+1] - bounds[k]
			}
		}
		setProgress(ctx, finished, n)
	})
	var rec record
	var results []json.RawMessage
	for k, t := range tasks {
		if err := t.Await(nil); err != nil {
			return nil, record{}, err
		}
		b := t.(*batch)
		for pos, r := range b.results {
			if r != nil {
				results = append(results, r)
				continue
			}
			i := bounds[k] + pos
			rec.fail(FailedItem{Index: work.first + i, Item: work.at(i), Error: b.errs[pos], Attempts: b.attempts[pos]})
		}
	}
	summary, err := f.aggregateAll(ctx, results, nil, budget)
	return summary, rec, err
}

// fanOutPartitions runs the items in partitions of size items, and merges
// the partitions' summaries. With a bound on parallelism, as many
// partitions run at once as the bound allows, sharing it, and each freed
// share goes to the next partition.
func (f *runner[I, R, S]) fanOutPartitions(ctx *task.OrchestrationContext, work items, size int, plan Plan) (json.RawMessage, record, error) {
	n := work.len()
	count := (n + size - 1) / size
	running := count
	if plan.MaxParallelism > 0 {
		running = min(count, plan.MaxParallelism)
	}
	share := func(slot int) int {
		if plan.MaxParallelism <= 0 {
			return 0
		}
		w := plan.MaxParallelism / running
		if slot < plan.MaxParallelism%running {
			w++
		}
		return w
	}
	budget := summaryBytes(plan.ListBytes)
	stepBytes := 0 // partitions' inputs started since the last pause: this step's, or more
	tasks := f.slide(ctx, count, running, func(k, slot int, pause func()) task.Task {
		p := work.slice(k*size, min(n, (k+1)*size))
		p.Window = share(slot)
		p.Retry = plan.Retry
		p.Batch = plan.Batch
		if budget != DefaultSummaryBytes {
			p.Bytes = budget
		}
		input, _ := json.Marshal(p) // raw JSON and ints always encode
		if plan.StepBytes > 0 && stepBytes > 0 && stepBytes+len(input) > plan.StepBytes {
			// A step must stay under the scheduler's message limit: end
			// this one, with a timer due at once, and start the rest after.
			pause()
			stepBytes = 0
		}
		stepBytes += len(input)
		return ctx.CallSubOrchestrator(f.names.Partition, task.WithRawSubOrchestratorInput(string(input)),
			task.WithSubOrchestrationInstanceID(PartitionID(string(ctx.ID), k)))
	}, func(done []bool) {
		// A partition's items count once the whole partition has finished.
		finished := 0
		for k, d := range done {
			if d {
				finished += min(n, (k+1)*size) - k*size
			}
		}
		setProgress(ctx, finished, n)
	})
	var rec record
	partials := make([]json.RawMessage, count)
	for k, t := range tasks {
		var out json.RawMessage
		if err := t.Await(&out); err != nil {
			return nil, record{}, fmt.Errorf("partition %d (items %d to %d) failed: %w", k, k*size, min(n, (k+1)*size)-1, err)
		}
		// The summary is the output without the record: S ignores its keys.
		var s S
		var p record
		if err := errors.Join(json.Unmarshal(out, &s), json.Unmarshal(out, &p)); err != nil {
			return nil, record{}, fmt.Errorf("reading partition %d's output: %w", k, err)
		}
		partials[k], _ = json.Marshal(s) // it was decoded from JSON
		rec.add(p)
	}
	rec.Partitions = count
	summary, err := f.aggregateAll(ctx, nil, partials, budget)
	return summary, rec, err
}

// fit trims summaries (if the fan-out has a Trim) when together they
// would not fit one aggregation, so that the output says, as a whole, that
// it left something out.
func (f *runner[I, R, S]) fit(partials []json.RawMessage, budget int) ([]json.RawMessage, error) {
	total := groupKeys
	for _, p := range partials {
		total += len(p) + 1
	}
	if total <= budget || f.spec.Aggregate.Trim == nil {
		return partials, nil
	}
	trimmed := make([]json.RawMessage, len(partials))
	for k, p := range partials {
		var s S
		if err := json.Unmarshal(p, &s); err != nil {
			return nil, fmt.Errorf("reading summary %d: %w", k, err)
		}
		trimmed[k], _ = json.Marshal(f.spec.Aggregate.Trim(s)) // it was decoded from JSON
	}
	return trimmed, nil
}

// aggregateAll folds results, then merges partials, with the aggregate
// activity, in as many calls as keep each input within budget bytes, and
// returns the one summary.
func (f *runner[I, R, S]) aggregateAll(ctx *task.OrchestrationContext, results, partials []json.RawMessage, budget int) (json.RawMessage, error) {
	for {
		if results == nil {
			var err error
			if partials, err = f.fit(partials, budget); err != nil {
				return nil, err
			}
		}
		groups := group(results, partials, budget)
		if results == nil && len(partials) > 1 && len(groups) == len(partials) {
			return nil, fmt.Errorf("the summaries are too large to merge: no two fit the %d bytes one payload may carry; give the fan-out's Aggregate a Trim that makes a summary smaller", budget)
		}
		sums := make([]task.Task, len(groups))
		for i, g := range groups {
			if budget != DefaultSummaryBytes {
				g.Bytes = budget
			}
			sums[i] = ctx.CallActivity(f.names.Aggregate, task.WithActivityInput(g))
		}
		merged := make([]json.RawMessage, len(groups))
		for i, t := range sums {
			f.wait(ctx, t, nil)
			if err := t.Await(&merged[i]); err != nil {
				return nil, fmt.Errorf("aggregating the results failed: %w", err)
			}
		}
		if len(merged) == 1 {
			return merged[0], nil
		}
		results, partials = nil, merged
	}
}

// groupKeys is an aggregation input's size without its lists.
const groupKeys = len(`{"results":[],"partials":[],"bytes":1048576}`)

// group splits results and partials into aggregation inputs of at most
// budget bytes each, in order, each holding at least one.
func group(results, partials []json.RawMessage, budget int) []aggregateInput {
	var groups []aggregateInput
	g, size := aggregateInput{}, groupKeys
	add := func(raw json.RawMessage, partial bool) {
		if size+len(raw)+1 > budget && len(g.Results)+len(g.Partials) > 0 {
			groups = append(groups, g)
			g, size = aggregateInput{}, groupKeys
		}
		size += len(raw) + 1
		if partial {
			g.Partials = append(g.Partials, raw)
		} else {
			g.Results = append(g.Results, raw)
		}
	}
	for _, r := range results {
		add(r, false)
	}
	for _, p := range partials {
		add(p, true)
	}
	return append(groups, g)
}

// setProgress sets the custom status to done of total items.
func setProgress(ctx *task.OrchestrationContext, done, total int) {
	status, _ := json.Marshal(Progress{Completed: done, Total: total}) // two ints always encode
	ctx.SetCustomStatus(string(status))
}

// slide starts n tasks with start(i, slot, pause), at most window at once
// (0 or n and more: all at once). The next task starts as soon as the
// earliest running one finishes, on its slot; start may call pause to end
// the step first. Before waiting it tells progress which tasks have
// finished. It returns every task, in order, once all have finished; the
// caller reads their outcomes.
//
// Why the earliest: v0.6.0 has no "when any", and a replay must start each
// task at the same point of the history as the first run did. Awaiting the
// earliest task consumes the history exactly up to its end, after which the
// first run started the next one (or retried it); asking a later task first
// could read past where the next one was started, which v0.6.0 rejects as
// nondeterminism. So slide waits for every task in order, and asks about the
// others (report) only when the next thing it does is block, ending the step.
func (f *runner[I, R, S]) slide(ctx *task.OrchestrationContext, n, window int, start func(i, slot int, pause func()) task.Task, progress func(done []bool)) []task.Task {
	if window <= 0 || window > n {
		window = n
	}
	tasks := make([]task.Task, n)
	// pause, which start may call, ends the step before the task it starts,
	// with a timer due at once. Like slide's own waits, it sets the progress
	// first: the custom status a step ends with must be what a replay of its
	// history sets, not what an earlier step of a kept orchestration set.
	var running, next int // the tasks before running have finished; next is being started
	pause := func() {
		f.wait(ctx, ctx.CreateTimer(0), func() { report(tasks, running, next, progress) })
	}
	for i := range window {
		next = i
		tasks[i] = start(i, i, pause)
	}
	for i := range n {
		f.wait(ctx, tasks[i], func() { report(tasks, i, min(n, i+window), progress) })
		if i+window < n {
			running, next = i+1, i+window
			tasks[i+window] = start(i+window, i%window, pause)
		}
	}
	report(tasks, n, n, progress)
	return tasks
}

// report tells progress which tasks have finished: all before from (slide
// has seen them finish), and those of [from, to) that have. Asking is cheap
// once one unfinished task has read the rest of the history.
func report(tasks []task.Task, from, to int, progress func(done []bool)) {
	done := make([]bool, len(tasks))
	for i := range from {
		done[i] = true
	}
	for i := from; i < to; i++ {
		done[i] = settled(tasks[i])
	}
	progress(done)
}

// wait waits until t has finished: while it has not, the history has no
// more events, and the step ends (see taskhub.Sessions), after
// beforeEnd, if given, has set the progress.
func (f *runner[I, R, S]) wait(ctx *task.OrchestrationContext, t task.Task, beforeEnd func()) {
	for !finished(t) {
		if beforeEnd != nil {
			beforeEnd()
		}
		f.sessions.Park(ctx)
	}
}

// finished reports whether t has completed or failed. durabletask-go v0.6.0
// has no such query, so it awaits t: a finished task returns at once; an
// unfinished one first replays every remaining history event (as the next
// Await would) and then signals "blocked" by panicking with
// task.ErrTaskBlocked, which is caught here. Nothing else is caught, and the
// orchestrator's own Await still blocks it the usual way. This leans on how
// v0.6.0 (pinned in go.mod) works, which its own executor checks the same way
// (start() compares the panic value with ErrTaskBlocked); the engine's
// replay and progress tests check it on every upgrade.
func finished(t task.Task) (done bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != task.ErrTaskBlocked {
				panic(p)
			}
			done = false
		}
	}()
	t.Await(nil) // a failure counts as finished; the caller's Await reports it
	return true
}
