// Package functions is what the app does: the fan-out/fan-in orchestration,
// its two activities, and the HTTP functions that start and watch it.
//
// fan_out_fan_in_orchestrator runs process_work_item once for every work
// item, all at once (fan-out), waits for every one (fan-in), then hands their
// results, in work-item order, to aggregate_results and returns its summary.
package functions

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
)

// The names are a contract with the task hub and with anyone reading its
// history, so they are registered explicitly.
const (
	OrchestratorName     = "fan_out_fan_in_orchestrator"
	ProcessWorkItemName  = "process_work_item"
	AggregateResultsName = "aggregate_results"
)

// ItemResult is what process_work_item returns for one work item.
type ItemResult struct {
	Item           string  `json:"item"`
	ProcessedItem  string  `json:"processed_item"`
	Value          int     `json:"value"`
	ProcessingTime float64 `json:"processing_time"` // seconds
}

// Summary is what aggregate_results returns, and so the orchestration's output.
type Summary struct {
	TotalItemsProcessed int      `json:"total_items_processed"`
	TotalValue          int      `json:"total_value"`
	AverageValue        float64  `json:"average_value"`
	TotalProcessingTime float64  `json:"total_processing_time"`
	ProcessedItems      []string `json:"processed_items"`
	Success             bool     `json:"success"`
}

// Progress is the orchestration's custom status while it runs.
type Progress struct {
	Completed int `json:"completed"`
	Total     int `json:"total"`
}

// Register adds the orchestrator and both activities to r. Each item's
// simulated work takes a random time in [minDelay, maxDelay].
func Register(r *task.TaskRegistry, minDelay, maxDelay time.Duration, log zerolog.Logger) error {
	return errors.Join(
		r.AddOrchestratorN(OrchestratorName, Orchestrator(log)),
		r.AddActivityN(ProcessWorkItemName, ProcessWorkItem(minDelay, maxDelay)),
		r.AddActivityN(AggregateResultsName, AggregateResults),
	)
}

// Orchestrator returns fan_out_fan_in_orchestrator. Like every orchestrator it
// is replayed from its history, so it must be deterministic: no clock, no
// randomness, no I/O; and it logs only when not replaying.
func Orchestrator(log zerolog.Logger) task.Orchestrator {
	return func(ctx *task.OrchestrationContext) (any, error) {
		log := log.With().Str("instanceId", string(ctx.ID)).Logger()
		var items []string
		if err := ctx.GetInput(&items); err != nil {
			return nil, fmt.Errorf("reading the work items: %w", err)
		}
		if !ctx.IsReplaying {
			log.Info().Int("items", len(items)).Msg("fanning out")
		}

		tasks := make([]task.Task, len(items))
		for i, item := range items {
			tasks[i] = ctx.CallActivity(ProcessWorkItemName, task.WithActivityInput(item))
		}

		// Report how many items have finished, in whatever order they did.
		// The count comes from the history alone, so it replays the same.
		completed := 0
		for _, t := range tasks {
			if finished(t) {
				completed++
			}
		}
		status, err := json.Marshal(Progress{Completed: completed, Total: len(items)})
		if err != nil {
			return nil, err
		}
		ctx.SetCustomStatus(string(status))

		results := make([]ItemResult, len(items))
		for i, t := range tasks {
			if err := t.Await(&results[i]); err != nil {
				return nil, fmt.Errorf("work item %d (%q) failed: %w", i, items[i], err)
			}
		}

		var summary Summary
		if err := ctx.CallActivity(AggregateResultsName, task.WithActivityInput(results)).Await(&summary); err != nil {
			return nil, fmt.Errorf("aggregating the results failed: %w", err)
		}
		if !ctx.IsReplaying {
			log.Info().Int("items", summary.TotalItemsProcessed).Int("totalValue", summary.TotalValue).Msg("fan-in complete")
		}
		return summary, nil
	}
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

// ProcessWorkItem returns process_work_item, which simulates work on one item
// for a random time in [minDelay, maxDelay] and scores it 1 to 100.
func ProcessWorkItem(minDelay, maxDelay time.Duration) task.Activity {
	return func(ctx task.ActivityContext) (any, error) {
		var item string
		if err := ctx.GetInput(&item); err != nil {
			return nil, fmt.Errorf("reading the work item: %w", err)
		}
		log := zerolog.Ctx(ctx.Context())
		log.Debug().Str("item", item).Msg("processing work item")

		start := time.Now()
		delay := minDelay
		if maxDelay > minDelay {
			delay += rand.N(maxDelay - minDelay + 1)
		}
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
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

// AggregateResults is aggregate_results: it sums the item results into the
// summary, keeping their order.
func AggregateResults(ctx task.ActivityContext) (any, error) {
	var results []ItemResult
	if err := ctx.GetInput(&results); err != nil {
		return nil, fmt.Errorf("reading the item results: %w", err)
	}
	s := Summary{
		TotalItemsProcessed: len(results),
		ProcessedItems:      make([]string, len(results)),
		Success:             true,
	}
	var seconds float64
	for i, r := range results {
		s.TotalValue += r.Value
		seconds += r.ProcessingTime
		s.ProcessedItems[i] = r.ProcessedItem
	}
	if len(results) > 0 {
		s.AverageValue = round2(float64(s.TotalValue) / float64(len(results)))
	}
	s.TotalProcessingTime = round2(seconds)
	zerolog.Ctx(ctx.Context()).Info().Int("items", s.TotalItemsProcessed).Int("totalValue", s.TotalValue).Msg("aggregated results")
	return s, nil
}

// round2 rounds to two decimals, as the summary's figures are shown.
func round2(x float64) float64 { return math.Round(x*100) / 100 }
