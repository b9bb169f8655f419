package fanout

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/task"
)

const (
	// ItemsEvent names the events that carry a large start's items,
	// ItemsEvent + "0", "1", …: one orchestration input cannot hold them on
	// the scheduler.
	ItemsEvent = "work_items_"
	// ItemsTimeout is how long an orchestration waits for those events
	// before it fails, having processed nothing.
	ItemsTimeout = 5 * time.Minute

	// DefaultSummaryBytes bounds a summary, and each aggregation's input,
	// when the task hub has no payload limit of its own: three quarters of
	// the scheduler's 1 MiB, leaving room for the rest of the output.
	DefaultSummaryBytes = (1 << 20) * 3 / 4

	// FailedListBytes bounds failed_items in an output: at least some
	// hundreds of items, well within a payload.
	FailedListBytes = 128 << 10
)

// Plan is an orchestration's input: which items to process and how. A plain
// JSON list of items is accepted as well, so that any durabletask client can
// start a fan-out.
type Plan struct {
	Items []json.RawMessage `json:"items,omitempty"`
	// Count, instead of Items, processes the items the fan-out's Generate
	// makes for 0 … Count-1.
	Count int `json:"count,omitempty"`
	// Chunks, instead of Items, says the items arrive in that many events
	// (ItemsEvent + index), holding Total items in all.
	Chunks int `json:"chunks,omitempty"`
	Total  int `json:"total,omitempty"`
	// MaxParallelism bounds how many items run at once; 0 means no bound.
	MaxParallelism int `json:"maxParallelism,omitempty"`
	// PartitionSize is how many items one orchestration runs itself; 0 means
	// DefaultPartitionSize.
	PartitionSize int `json:"partitionSize,omitempty"`
	// ListBytes bounds a summary and each aggregation's input; 0 means
	// DefaultSummaryBytes.
	ListBytes int `json:"listBytes,omitempty"`
	// StepBytes bounds the partitions' inputs started in one orchestrator
	// step; 0 means no bound.
	StepBytes int `json:"stepBytes,omitempty"`
	// Retry is how failed items are tried again; nil means DefaultRetry.
	Retry *RetryPolicy `json:"retry,omitempty"`
	// Batch is how many items one work activity runs; 0 or 1 means one.
	Batch int `json:"batch,omitempty"`
	// Trace is the traceparent of the start's span when the fan-out is
	// traced: its orchestrator's log lines name the trace and its span.
	Trace string `json:"trace,omitempty"`
}

// Progress is an orchestration's custom status while it runs: items that
// finished, whether they succeeded or failed for good. A partitioned fan-out
// counts a partition's items when the whole partition has finished.
type Progress struct {
	Completed int `json:"completed"`
	Total     int `json:"total"`
}

// partitionInput is a partition orchestration's input: its share of the
// items, listed, or generated from First to First+Count-1. First is the
// place of its first item in the whole fan-out.
type partitionInput struct {
	Items  []json.RawMessage `json:"items,omitempty"`
	First  int               `json:"first,omitempty"`
	Count  int               `json:"count,omitempty"`
	Window int               `json:"window,omitempty"` // at most this many items at once; 0: all
	Retry  *RetryPolicy      `json:"retry,omitempty"`
	// Bytes is the plan's ListBytes, when not the default.
	Bytes int `json:"bytes,omitempty"`
	Batch int `json:"batch,omitempty"` // the plan's Batch
}

// PartitionID is the instance id of partition k of orchestration id.
func PartitionID(id string, k int) string { return id + ":p" + strconv.Itoa(k) }

// parentOf is the orchestration partition id belongs to.
func parentOf(id string) string {
	i := strings.LastIndex(id, ":p")
	if i < 0 {
		return id
	}
	return id[:i]
}

// items is a fan-out's work items: listed, or generated.
type items struct {
	list  []json.RawMessage
	first int // the place of the first in the whole fan-out
	count int
	gen   func(n int) json.RawMessage
}

func (it items) len() int {
	if it.list != nil {
		return len(it.list)
	}
	return it.count
}

func (it items) at(i int) json.RawMessage {
	if it.list != nil {
		return it.list[i]
	}
	return it.gen(it.first + i)
}

// slice returns items [from, to) as a partition's input.
func (it items) slice(from, to int) partitionInput {
	if it.list != nil {
		return partitionInput{Items: it.list[from:to], First: it.first + from}
	}
	return partitionInput{First: it.first + from, Count: to - from}
}

// generator makes item n of a start by count as JSON; nil if the fan-out
// has no Generate.
func (f *runner[I, R, S]) generator() func(n int) json.RawMessage {
	if f.spec.Generate == nil {
		return nil
	}
	return func(n int) json.RawMessage {
		defer func() {
			if p := recover(); p != nil {
				panic(fmt.Sprintf("generating item %d: %v", n, p)) // fails the instance
			}
		}()
		item := f.spec.Generate(n)
		if s, ok := any(item).(string); ok && plainJSON(s) {
			// As json.Marshal writes it, without its cost.
			b := make(json.RawMessage, 0, len(s)+2)
			return append(append(append(b, '"'), s...), '"')
		}
		b, err := json.Marshal(item)
		if err != nil {
			panic(fmt.Sprintf("generating item %d: %v", n, err)) // fails the instance
		}
		return b
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
		{"count", plan.Count, MaxItems},
		{"total", plan.Total, MaxItems},
		{"chunks", plan.Chunks, MaxItems},
		{"partitionSize", plan.PartitionSize, MaxPartitionSize},
		{"maxParallelism", plan.MaxParallelism, MaxItems},
		{"retry.maxAttempts", plan.retry().MaxAttempts, MaxAttempts},
	} {
		if f.value < 0 || f.value > f.at {
			return plan, fmt.Errorf("reading the input: %s is %d; it must be from 0 to %d", f.name, f.value, f.at)
		}
	}
	return plan, nil
}

// retry is the plan's retry policy.
func (p Plan) retry() RetryPolicy { return policyOrDefault(p.Retry) }

// summaryBytes bounds a summary and each aggregation's input.
func summaryBytes(n int) int {
	if n <= 0 {
		return DefaultSummaryBytes
	}
	return n
}

// items returns the plan's work items, waiting for them if they come in
// events. A start whose events do not all arrive processes nothing.
func (f *runner[I, R, S]) items(ctx *task.OrchestrationContext, p Plan) (items, error) {
	switch {
	case p.Count > 0:
		gen := f.generator()
		if gen == nil {
			return items{}, fmt.Errorf("the input asks for %d generated items, but fan-out %s generates none: list the items", p.Count, f.names.Name)
		}
		return items{count: p.Count, gen: gen}, nil
	case p.Chunks == 0:
		return items{list: p.Items}, nil
	}
	// Every wait starts now, so all of them share one deadline.
	waits := make([]task.Task, p.Chunks)
	for i := range waits {
		waits[i] = ctx.WaitForSingleEvent(ItemsEvent+strconv.Itoa(i), ItemsTimeout)
	}
	list := make([]json.RawMessage, 0, p.Total)
	for i, w := range waits {
		var chunk []json.RawMessage
		f.wait(ctx, w, nil)
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

// plainJSON reports whether JSON writes s as it is, between quotes: printable
// ASCII, and none of the characters json.Marshal escapes.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
