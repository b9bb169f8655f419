// Package functions is what the app does: the fan-out/fan-in orchestration,
// its two activities, and the HTTP functions that start and watch it.
//
// fan_out_fan_in_orchestrator runs process_work_item once for every work
// item (fan-out), waits for every one (fan-in), then hands their results, in
// work-item order, to aggregate_results and returns its summary. Past one
// partition's worth of items it runs them in partitions, each a
// fan_out_fan_in_partition sub-orchestration doing the same for its share,
// and aggregates the partitions' summaries: no orchestration's history, step
// or payload grows with the whole fan-out.
package functions

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
)

// The names are a contract with the task hub and with anyone reading its
// history, so they are registered explicitly.
const (
	OrchestratorName     = "fan_out_fan_in_orchestrator"
	PartitionName        = "fan_out_fan_in_partition"
	ProcessWorkItemName  = "process_work_item"
	AggregateResultsName = "aggregate_results"
)

const (
	// DefaultPartitionSize is how many items one orchestration runs itself
	// before the fan-out is split into partitions; see BENCHMARKS.md.
	DefaultPartitionSize = config.DefaultPartitionSize

	// ItemsEvent names the events that carry a large start's work items,
	// ItemsEvent + "0", "1", …: one orchestration input cannot hold them on
	// the scheduler.
	ItemsEvent = "work_items_"
	// ItemsTimeout is how long an orchestration waits for those events
	// before it fails, having processed nothing.
	ItemsTimeout = 5 * time.Minute

	// DefaultListBytes bounds processed_items in a summary, leaving room in
	// the scheduler's 1 MiB payload for everything else.
	DefaultListBytes = config.DefaultMaxPayloadBytes * 3 / 4
)

// Plan is the orchestration's input: which items to process and how. A
// plain JSON list of work items is accepted as well, so that any durabletask
// client can start the orchestration.
type Plan struct {
	Items []string `json:"items,omitempty"`
	// Count, instead of Items, processes the items Item1 … ItemCount.
	Count int `json:"count,omitempty"`
	// Chunks, instead of Items, says the items arrive in that many events
	// (ItemsEvent + index), holding Total items in all.
	Chunks int `json:"chunks,omitempty"`
	Total  int `json:"total,omitempty"`
	// MaxParallelism bounds how many process_work_item run at once for this
	// orchestration; 0 means no bound.
	MaxParallelism int `json:"maxParallelism,omitempty"`
	// PartitionSize is how many items one orchestration runs itself; 0 means
	// DefaultPartitionSize.
	PartitionSize int `json:"partitionSize,omitempty"`
	// ListBytes bounds processed_items in the summary; 0 means
	// DefaultListBytes.
	ListBytes int `json:"listBytes,omitempty"`
	// StepBytes bounds the partitions' inputs started in one orchestrator
	// step; 0 means no bound.
	StepBytes int `json:"stepBytes,omitempty"`
	// Retry is how failed items are tried again; nil means DefaultRetry.
	Retry *RetryPolicy `json:"retry,omitempty"`
}

// ItemResult is what process_work_item returns for one work item.
type ItemResult struct {
	Item           string  `json:"item"`
	ProcessedItem  string  `json:"processed_item"`
	Value          int     `json:"value"`
	ProcessingTime float64 `json:"processing_time"` // seconds
}

// Summary is what aggregate_results returns, and so the orchestration's
// output. Totals and the average are over the items that succeeded.
type Summary struct {
	TotalItemsProcessed int     `json:"total_items_processed"`
	TotalItemsFailed    int     `json:"total_items_failed"`
	TotalValue          int     `json:"total_value"`
	AverageValue        float64 `json:"average_value"`
	TotalProcessingTime float64 `json:"total_processing_time"`
	// ProcessedItems lists the processed items in work-item order, unless
	// the list would be too large: then it is null, ProcessedItemsOmitted is
	// set, and each partition's own output lists its share.
	ProcessedItems        []string `json:"processed_items"`
	ProcessedItemsOmitted bool     `json:"processed_items_omitted,omitempty"`
	// FailedItems lists the items that failed every attempt, in work-item
	// order, as far as FailedListBytes allows; FailedItemsOmitted counts
	// those left out.
	FailedItems        []FailedItem `json:"failed_items"`
	FailedItemsOmitted int          `json:"failed_items_omitted,omitempty"`
	// Success is whether every item succeeded.
	Success bool `json:"success"`
	// Partitions is how many partitions ran the items; 0 when they ran in
	// one orchestration. Partition k (from 0) is instance "<id>:p<k>".
	Partitions int `json:"partitions,omitempty"`
}

// FailedItem is an item that failed its last attempt.
type FailedItem struct {
	Index    int    `json:"index"` // its place in the whole fan-out, from 0
	Item     string `json:"item"`
	Error    string `json:"error"` // the last attempt's, shortened
	Attempts int    `json:"attempts"`
}

// FailedListBytes bounds failed_items in a summary: at least some hundreds
// of items, well within a payload.
const FailedListBytes = 128 << 10

// Progress is an orchestration's custom status while it runs: items that
// finished, whether they succeeded or failed for good. A partitioned fan-out
// counts a partition's items when the whole partition has finished.
type Progress struct {
	Completed int `json:"completed"`
	Total     int `json:"total"`
}

// AggregateInput is aggregate_results' input: the results of the items, or
// the summaries of the partitions that ran them. (A plain list of item
// results is accepted as well.)
type AggregateInput struct {
	Results  []ItemResult `json:"results,omitempty"`
	Failed   []FailedItem `json:"failed,omitempty"`
	Partials []Summary    `json:"partials,omitempty"`
	// OmitItems leaves processed_items out of the summary.
	OmitItems bool `json:"omitItems,omitempty"`
}

// partition is a fan_out_fan_in_partition's input: its share of the items,
// listed, or generated as Item(First+1) … Item(First+Count). First is the
// place of its first item in the whole fan-out.
type partition struct {
	Items  []string     `json:"items,omitempty"`
	First  int          `json:"first,omitempty"`
	Count  int          `json:"count,omitempty"`
	Window int          `json:"window,omitempty"` // at most this many items at once; 0: all
	Retry  *RetryPolicy `json:"retry,omitempty"`
}

// PartitionID is the instance id of partition k of orchestration id.
func PartitionID(id string, k int) string { return id + ":p" + strconv.Itoa(k) }

// Register adds the orchestrators and both activities to r; work says how
// process_work_item behaves.
func Register(r *task.TaskRegistry, work config.Work, log zerolog.Logger) error {
	return errors.Join(
		r.AddOrchestratorN(OrchestratorName, failOnPanic(Orchestrator(log))),
		r.AddOrchestratorN(PartitionName, failOnPanic(Partition)),
		r.AddActivityN(ProcessWorkItemName, ProcessWorkItem(work)),
		r.AddActivityN(AggregateResultsName, AggregateResults),
	)
}

// failOnPanic makes a panic in orchestrator o, such as v0.6.0's on a
// history it cannot replay, fail the instance with a message saying so:
// v0.6.0 passes such panics on, which would stop the worker and leave the
// instance Running. task.ErrTaskBlocked is how a step normally ends.
func failOnPanic(o task.Orchestrator) task.Orchestrator {
	return func(ctx *task.OrchestrationContext) (out any, err error) {
		defer func() {
			if p := recover(); p != nil {
				if p == task.ErrTaskBlocked {
					panic(p)
				}
				out, err = nil, fmt.Errorf("the orchestrator failed: %v", p)
			}
		}()
		return o(ctx)
	}
}

// items is a fan-out's work items: listed, or generated.
type items struct {
	list  []string
	first int // the place of the first in the whole fan-out; generated: Item(first+1) …
	count int
}

func (it items) len() int {
	if it.list != nil {
		return len(it.list)
	}
	return it.count
}

func (it items) at(i int) string {
	if it.list != nil {
		return it.list[i]
	}
	return "Item" + strconv.Itoa(it.first+i+1)
}

// slice returns items [from, to) as a partition's input.
func (it items) slice(from, to int) partition {
	if it.list != nil {
		return partition{Items: it.list[from:to], First: it.first + from}
	}
	return partition{First: it.first + from, Count: to - from}
}

// listBytes is how large processed_items would be for these items.
func (it items) listBytes() int {
	const perItem = len(`"Processed_",`)
	if it.list == nil {
		return it.count*(perItem+len("Item")) + digits(it.first+1, it.first+it.count)
	}
	n := 0
	for _, s := range it.list {
		n += perItem + len(s)
	}
	return n
}

// digits is how many decimal digits the numbers from a to b have in all.
func digits(a, b int) int {
	n := 0
	for lo, width := 1, 1; lo <= b; lo, width = lo*10, width+1 {
		hi := lo*10 - 1
		if from, to := max(a, lo), min(b, hi); from <= to {
			n += (to - from + 1) * width
		}
	}
	return n
}

// Orchestrator returns fan_out_fan_in_orchestrator. Like every orchestrator it
// is replayed from its history, so it must be deterministic: no clock, no
// randomness, no I/O; and it logs only when not replaying.
func Orchestrator(log zerolog.Logger) task.Orchestrator {
	return func(ctx *task.OrchestrationContext) (any, error) {
		log := log.With().Str("instanceId", string(ctx.ID)).Logger()
		plan, err := readPlan(ctx)
		if err != nil {
			return nil, err
		}
		work, err := plan.items(ctx)
		if err != nil {
			return nil, err
		}
		n := work.len()
		size := plan.PartitionSize
		if size <= 0 {
			size = DefaultPartitionSize
		}
		partitions := (n + size - 1) / size
		if !ctx.IsReplaying {
			log.Info().Int("items", n).Int("partitions", partitions).Int("maxParallelism", plan.MaxParallelism).Msg("fanning out")
		}

		var summary Summary
		if partitions <= 1 {
			summary, err = fanOut(ctx, work, plan.MaxParallelism, plan.retry())
		} else {
			summary, err = fanOutPartitions(ctx, work, size, plan)
		}
		if err != nil {
			return nil, err
		}
		if !ctx.IsReplaying {
			log.Info().Int("items", summary.TotalItemsProcessed).Int("failed", summary.TotalItemsFailed).Int("totalValue", summary.TotalValue).Msg("fan-in complete")
		}
		return summary, nil
	}
}

// readPlan reads the orchestration's input: a Plan, or a plain list.
func readPlan(ctx *task.OrchestrationContext) (Plan, error) {
	var raw json.RawMessage
	if err := ctx.GetInput(&raw); err != nil {
		return Plan{}, fmt.Errorf("reading the input: %w", err)
	}
	var plan Plan
	if len(raw) > 0 && raw[0] == '[' {
		return plan, json.Unmarshal(raw, &plan.Items)
	}
	if err := json.Unmarshal(raw, &plan); err != nil {
		return plan, fmt.Errorf("reading the input: it must be a list of work items or a plan: %w", err)
	}
	// Any client may start the orchestration: numbers out of range must
	// fail it, not the process.
	for _, f := range []struct {
		name      string
		value, at int
	}{
		{"count", plan.Count, config.MaxWorkItems},
		{"total", plan.Total, config.MaxWorkItems},
		{"chunks", plan.Chunks, config.MaxWorkItems},
		{"partitionSize", plan.PartitionSize, config.MaxPartitionSize},
		{"maxParallelism", plan.MaxParallelism, config.MaxWorkItems},
		{"retry.maxAttempts", plan.retry().MaxAttempts, config.MaxAttempts},
	} {
		if f.value < 0 || f.value > f.at {
			return plan, fmt.Errorf("reading the input: %s is %d; it must be from 0 to %d", f.name, f.value, f.at)
		}
	}
	return plan, nil
}

// retry is the plan's retry policy.
func (p Plan) retry() RetryPolicy { return policyOrDefault(p.Retry) }

// items returns the plan's work items, waiting for them if they come in
// events. A start whose events do not all arrive processes nothing.
func (p Plan) items(ctx *task.OrchestrationContext) (items, error) {
	switch {
	case p.Count > 0:
		return items{count: p.Count}, nil
	case p.Chunks == 0:
		return items{list: p.Items}, nil
	}
	// Every wait starts now, so all of them share one deadline.
	waits := make([]task.Task, p.Chunks)
	for i := range waits {
		waits[i] = ctx.WaitForSingleEvent(ItemsEvent+strconv.Itoa(i), ItemsTimeout)
	}
	list := make([]string, 0, p.Total)
	for i, w := range waits {
		var chunk []string
		if err := w.Await(&chunk); err != nil {
			return items{}, fmt.Errorf("only %d of the %d parts of the work items arrived within %s, so none was processed: start again: %w", i, p.Chunks, ItemsTimeout, err)
		}
		list = append(list, chunk...)
	}
	if len(list) != p.Total {
		return items{}, fmt.Errorf("the work items arrived with %d items, not the %d announced; none was processed", len(list), p.Total)
	}
	return items{list: list}, nil
}

// Partition is fan_out_fan_in_partition: one partition's fan-out and fan-in.
func Partition(ctx *task.OrchestrationContext) (any, error) {
	var p partition
	if err := ctx.GetInput(&p); err != nil {
		return nil, fmt.Errorf("reading the partition: %w", err)
	}
	work := items{list: p.Items, first: p.First, count: p.Count}
	return fanOut(ctx, work, p.Window, policyOrDefault(p.Retry))
}

// fanOut runs process_work_item for every item, at most window at once
// (0: all at once), each tried again as retry says while it fails, and
// aggregates their results. An item failing every attempt is listed in the
// summary, not fatal.
func fanOut(ctx *task.OrchestrationContext, work items, window int, retry RetryPolicy) (Summary, error) {
	n := work.len()
	tasks := slide(ctx, n, window, func(i, _ int) task.Task {
		item := work.at(i)
		return newRetrying(ctx, retry, func(attempt int) task.Task {
			if attempt == 1 {
				return ctx.CallActivity(ProcessWorkItemName, task.WithActivityInput(item))
			}
			return ctx.CallActivity(ProcessWorkItemName, task.WithActivityInput(Attempt{Item: item, Attempt: attempt}))
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
	var in AggregateInput
	for i, t := range tasks {
		var r ItemResult
		if err := t.Await(&r); err != nil {
			in.Failed = append(in.Failed, FailedItem{Index: work.first + i, Item: work.at(i), Error: failureMessage(err), Attempts: t.(*retrying).attempt})
			continue
		}
		in.Results = append(in.Results, r)
	}
	var summary Summary
	if err := ctx.CallActivity(AggregateResultsName, task.WithActivityInput(in)).Await(&summary); err != nil {
		return Summary{}, fmt.Errorf("aggregating the results failed: %w", err)
	}
	return summary, nil
}

// fanOutPartitions runs the items in partitions of size items, and
// aggregates the partitions' summaries. With a bound on parallelism, as many
// partitions run at once as the bound allows, sharing it, and each freed
// share goes to the next partition.
func fanOutPartitions(ctx *task.OrchestrationContext, work items, size int, plan Plan) (Summary, error) {
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
	partials := make([]Summary, count)
	stepBytes := 0 // partitions' inputs started in this step
	tasks := slide(ctx, count, running, func(k, slot int) task.Task {
		p := work.slice(k*size, min(n, (k+1)*size))
		p.Window = share(slot)
		p.Retry = plan.Retry
		input, _ := json.Marshal(p) // strings and ints always encode
		if plan.StepBytes > 0 && stepBytes > 0 && stepBytes+len(input) > plan.StepBytes {
			// A step must stay under the scheduler's message limit: end
			// this one, with a timer due at once, and start the rest after.
			ctx.CreateTimer(0).Await(nil)
			stepBytes = 0
		}
		stepBytes += len(input)
		return ctx.CallSubOrchestrator(PartitionName, task.WithRawSubOrchestratorInput(string(input)),
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
	for k, t := range tasks {
		if err := t.Await(&partials[k]); err != nil {
			return Summary{}, fmt.Errorf("partition %d (items %d to %d) failed: %w", k, k*size, min(n, (k+1)*size)-1, err)
		}
	}
	limit := plan.ListBytes
	if limit <= 0 {
		limit = DefaultListBytes
	}
	in := AggregateInput{Partials: partials, OmitItems: work.listBytes() > limit}
	if in.OmitItems {
		for k := range in.Partials {
			in.Partials[k].ProcessedItems = nil
		}
	}
	var summary Summary
	if err := ctx.CallActivity(AggregateResultsName, task.WithActivityInput(in)).Await(&summary); err != nil {
		return Summary{}, fmt.Errorf("aggregating the results failed: %w", err)
	}
	summary.Partitions = count
	return summary, nil
}

// slide starts n tasks with start(i, slot), at most window at once (0 or
// n and more: all at once). The next task starts as soon as the earliest
// running one finishes, on its slot. Before waiting it tells progress which
// tasks have finished. It returns every task, in order, once all have
// finished; the caller reads their outcomes.
//
// Why the earliest: v0.6.0 has no "when any", and a replay must start each
// task at the same point of the history as the first run did. Awaiting the
// earliest task consumes the history exactly up to its end, after which the
// first run started the next one (or retried it); asking a later task first
// could read past where the next one was started, which v0.6.0 rejects as
// nondeterminism. So slide waits for every task in order, and asks about the
// others (report) only when the next thing it does is block, ending the step.
func slide(ctx *task.OrchestrationContext, n, window int, start func(i, slot int) task.Task, progress func(done []bool)) []task.Task {
	if window <= 0 || window > n {
		window = n
	}
	tasks := make([]task.Task, n)
	for i := range window {
		tasks[i] = start(i, i)
	}
	for i := range n {
		if !finished(tasks[i]) {
			report(tasks, i, min(n, i+window), progress)
			tasks[i].Await(nil) // blocks: ends this step until it finishes
		}
		if i+window < n {
			tasks[i+window] = start(i+window, i%window)
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

// setProgress sets the custom status to done of total items.
func setProgress(ctx *task.OrchestrationContext, done, total int) {
	status, _ := json.Marshal(Progress{Completed: done, Total: total}) // two ints always encode
	ctx.SetCustomStatus(string(status))
}

// finished reports whether t has completed or failed. durabletask-go v0.6.0
// has no such query, so it awaits t: a finished task returns at once; an
// unfinished one first replays every remaining history event (as the next
// Await would) and then signals "blocked" by panicking with
// task.ErrTaskBlocked, which is caught here. Nothing else is caught, and the
// orchestrator's own Await still blocks it the usual way. This leans on how
// v0.6.0 (pinned in go.mod) works, which its own executor checks the same way
// (start() compares the panic value with ErrTaskBlocked); TestReplayIsDeterministic
// and TestProgressCountsItemsInTheOrderTheyFinish check it on every upgrade.
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

// Attempt is process_work_item's input on a retry: the item and which
// attempt this is, from 2. A first attempt's input is the item alone.
type Attempt struct {
	Item    string `json:"item"`
	Attempt int    `json:"attempt"`
}

// ReadAttempt reads process_work_item's input, either form, as an Attempt.
func ReadAttempt(ctx task.ActivityContext) (Attempt, error) {
	var raw json.RawMessage
	if err := ctx.GetInput(&raw); err != nil {
		return Attempt{}, fmt.Errorf("reading the work item: %w", err)
	}
	in := Attempt{Attempt: 1}
	var err error
	if len(raw) > 0 && raw[0] == '{' {
		err = json.Unmarshal(raw, &in)
	} else {
		err = json.Unmarshal(raw, &in.Item)
	}
	if err != nil {
		return Attempt{}, fmt.Errorf("reading the work item: it must be a string or {\"item\": …, \"attempt\": n}: %w", err)
	}
	return in, nil
}

// ProcessWorkItem returns process_work_item, which simulates work on one
// item, as work says, and scores it 1 to 100.
func ProcessWorkItem(work config.Work) task.Activity {
	return func(ctx task.ActivityContext) (any, error) {
		in, err := ReadAttempt(ctx)
		if err != nil {
			return nil, err
		}
		item := in.Item
		log := zerolog.Ctx(ctx.Context())
		log.Debug().Str("item", item).Int("attempt", in.Attempt).Msg("processing work item")

		if work.FailItems != nil && work.FailItems.MatchString(item) && (work.FailAttempts == 0 || in.Attempt <= work.FailAttempts) {
			log.Warn().Str("item", item).Int("attempt", in.Attempt).Msg("failing work item on purpose")
			return nil, fmt.Errorf("attempt %d at %q failed on purpose: %s matches it", in.Attempt, item, config.SettingFailItems)
		}

		start := time.Now()
		delay := work.MinDelay
		if work.MaxDelay > work.MinDelay {
			delay += rand.N(work.MaxDelay - work.MinDelay + 1)
		}
		t := time.NewTimer(delay)
		defer t.Stop()
		timeout := time.NewTimer(work.Timeout)
		defer timeout.Stop()
		select {
		case <-t.C:
		case <-timeout.C:
			log.Warn().Str("item", item).Int("attempt", in.Attempt).Dur("timeout", work.Timeout).Msg("work item timed out")
			return nil, fmt.Errorf("attempt %d at %q took longer than %s (%s)", in.Attempt, item, work.Timeout, config.SettingItemTimeout)
		case <-ctx.Context().Done():
			// The worker is stopping: the result is not recorded and the item
			// runs again when the hub next runs.
			return nil, ctx.Context().Err()
		}

		result := ItemResult{
			Item:           item,
			ProcessedItem:  "Processed_" + item,
			Value:          1 + rand.IntN(100),
			ProcessingTime: round2(time.Since(start).Seconds()),
		}
		log.Info().Str("item", item).Int("value", result.Value).Float64("seconds", result.ProcessingTime).Msg("processed work item")
		return result, nil
	}
}

// AggregateResults is aggregate_results: it sums the item results, or the
// partitions' summaries, into the summary, keeping their order.
func AggregateResults(ctx task.ActivityContext) (any, error) {
	var raw json.RawMessage
	if err := ctx.GetInput(&raw); err != nil {
		return nil, fmt.Errorf("reading the results: %w", err)
	}
	var in AggregateInput
	var err error
	if len(raw) > 0 && raw[0] == '[' {
		err = json.Unmarshal(raw, &in.Results)
	} else {
		err = json.Unmarshal(raw, &in)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the results: %w", err)
	}

	s := Summary{FailedItems: []FailedItem{}}
	// Seconds are summed in hundredths, as each was rounded, so that the
	// total does not depend on how the items were partitioned.
	var hundredths int64
	for _, r := range in.Results {
		s.TotalItemsProcessed++
		s.TotalValue += r.Value
		hundredths += int64(math.Round(r.ProcessingTime * 100))
		s.ProcessedItems = append(s.ProcessedItems, r.ProcessedItem)
	}
	failedBytes := 0
	listFailed := func(f FailedItem) {
		b, _ := json.Marshal(f)
		if failedBytes += len(b) + 1; failedBytes > FailedListBytes {
			s.FailedItemsOmitted++
			return
		}
		s.FailedItems = append(s.FailedItems, f)
	}
	for _, f := range in.Failed {
		s.TotalItemsFailed++
		listFailed(f)
	}
	for _, p := range in.Partials {
		s.TotalItemsProcessed += p.TotalItemsProcessed
		s.TotalItemsFailed += p.TotalItemsFailed
		s.TotalValue += p.TotalValue
		hundredths += int64(math.Round(p.TotalProcessingTime * 100))
		s.ProcessedItems = append(s.ProcessedItems, p.ProcessedItems...)
		for _, f := range p.FailedItems {
			listFailed(f)
		}
		s.FailedItemsOmitted += p.FailedItemsOmitted
	}
	s.Success = s.TotalItemsFailed == 0
	if in.OmitItems {
		s.ProcessedItems, s.ProcessedItemsOmitted = nil, true
	} else if s.ProcessedItems == nil {
		s.ProcessedItems = []string{}
	}
	if s.TotalItemsProcessed > 0 {
		s.AverageValue = round2(float64(s.TotalValue) / float64(s.TotalItemsProcessed))
	}
	s.TotalProcessingTime = float64(hundredths) / 100
	zerolog.Ctx(ctx.Context()).Info().Int("items", s.TotalItemsProcessed).Int("failed", s.TotalItemsFailed).Int("totalValue", s.TotalValue).Msg("aggregated results")
	return s, nil
}

// round2 rounds to two decimals, as the summary's figures are shown.
func round2(x float64) float64 { return math.Round(x*100) / 100 }
