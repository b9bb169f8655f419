package functions_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/functions"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/hubfile"
	"fanoutfanin/internal/taskhub"
)

// openHub runs the real engine on an embedded hub in a temporary file.
func openHub(t *testing.T, registry *task.TaskRegistry) taskhub.Client {
	t.Helper()
	return openHubFile(t, registry, filepath.Join(t.TempDir(), "test.sqlite"))
}

func openHubFile(t *testing.T, registry *task.TaskRegistry, file string) taskhub.Client {
	t.Helper()
	cfg := config.TaskHub{
		Name:                        "test",
		EmbeddedFile:                file,
		LockTimeout:                 30 * time.Second,
		MaxConcurrentActivities:     8,
		MaxConcurrentOrchestrations: 4,
	}
	hub, err := taskhub.Open(context.Background(), cfg, registry, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hub.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return hub.Client
}

// waitFor polls the instance until done says so, failing after 2 minutes.
func waitFor(t *testing.T, c taskhub.Client, id api.InstanceID, done func(*api.OrchestrationMetadata) bool) *api.OrchestrationMetadata {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		md, err := c.FetchOrchestrationMetadata(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if done(md) {
			return md
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s: gave up waiting; last status %v, custom status %s", id, md.RuntimeStatus, md.SerializedCustomStatus)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// registryWith registers the real orchestrator and aggregate_results, with
// process standing in for process_work_item.
func registryWith(process func(item string) (functions.ItemResult, error)) *task.TaskRegistry {
	r := task.NewTaskRegistry()
	r.AddOrchestratorN(functions.OrchestratorName, functions.Orchestrator(zerolog.Nop()))
	r.AddOrchestratorN(functions.PartitionName, functions.Partition)
	r.AddActivityN(functions.AggregateResultsName, functions.AggregateResults)
	if process == nil {
		return r // the caller registers its own
	}
	r.AddActivityN(functions.ProcessWorkItemName, func(ctx task.ActivityContext) (any, error) {
		in, err := functions.ReadAttempt(ctx)
		if err != nil {
			return nil, err
		}
		return process(in.Item)
	})
	return r
}

func complete(md *api.OrchestrationMetadata) bool { return md.IsComplete() }

func start(t *testing.T, c taskhub.Client, items []string) api.InstanceID {
	t.Helper()
	id, err := c.ScheduleNewOrchestration(context.Background(), functions.OrchestratorName, api.WithInput(items))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func progress(t *testing.T, md *api.OrchestrationMetadata) functions.Progress {
	t.Helper()
	var p functions.Progress
	if err := json.Unmarshal([]byte(md.SerializedCustomStatus), &p); err != nil {
		t.Fatalf("custom status %q: %v", md.SerializedCustomStatus, err)
	}
	return p
}

func TestFanOutFanIn(t *testing.T) {
	// Registration
	r := task.NewTaskRegistry()
	if err := functions.Register(r, config.Work{Timeout: time.Minute}, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	hub := openHub(t, r)

	// Run the orchestration
	items := make([]string, 50)
	for i := range items {
		items[i] = fmt.Sprintf("Task%d", i+1)
	}
	md := waitFor(t, hub, start(t, hub, items), complete)

	// Validate
	if got, want := md.RuntimeStatus, api.RUNTIME_STATUS_COMPLETED; got != want {
		t.Fatalf("status: got %v, want %v (failure: %v)", got, want, md.FailureDetails)
	}
	var s functions.Summary
	if err := json.Unmarshal([]byte(md.SerializedOutput), &s); err != nil {
		t.Fatal(err)
	}
	if got, want := s.TotalItemsProcessed, len(items); got != want {
		t.Errorf("total_items_processed: got %d, want %d", got, want)
	}
	for i, p := range s.ProcessedItems {
		if want := "Processed_" + items[i]; p != want {
			t.Fatalf("processed_items[%d]: got %q, want %q (work-item order)", i, p, want)
		}
	}
	if len(s.ProcessedItems) != len(items) {
		t.Errorf("processed_items: got %d, want %d", len(s.ProcessedItems), len(items))
	}
	if s.TotalValue < len(items) || s.TotalValue > 100*len(items) {
		t.Errorf("total_value %d is outside what %d values of 1 to 100 can sum to", s.TotalValue, len(items))
	}
	if got, want := s.AverageValue, math.Round(float64(s.TotalValue)/float64(len(items))*100)/100; got != want {
		t.Errorf("average_value: got %v, want %v", got, want)
	}
	if !s.Success {
		t.Error("success: got false")
	}
	if got, want := progress(t, md), (functions.Progress{Completed: len(items), Total: len(items)}); got != want {
		t.Errorf("final custom status: got %+v, want %+v", got, want)
	}
}

// The custom status counts items as they finish, whatever their order: here
// the first item holds out while the rest finish.
func TestProgressCountsItemsInTheOrderTheyFinish(t *testing.T) {
	release := make(chan struct{})
	hub := openHub(t, registryWith(func(item string) (functions.ItemResult, error) {
		if item == "slow" {
			<-release
		}
		return functions.ItemResult{Item: item, ProcessedItem: "Processed_" + item, Value: 10}, nil
	}))

	id := start(t, hub, []string{"slow", "a", "b", "c"})
	md := waitFor(t, hub, id, func(md *api.OrchestrationMetadata) bool {
		return md.SerializedCustomStatus != "" && progress(t, md).Completed == 3
	})
	if got, want := md.RuntimeStatus, api.RUNTIME_STATUS_RUNNING; got != want {
		t.Fatalf("with one item outstanding: got %v, want %v", got, want)
	}
	if got, want := progress(t, md), (functions.Progress{Completed: 3, Total: 4}); got != want {
		t.Errorf("custom status: got %+v, want %+v", got, want)
	}

	close(release)
	md = waitFor(t, hub, id, complete)
	if got, want := md.RuntimeStatus, api.RUNTIME_STATUS_COMPLETED; got != want {
		t.Fatalf("status: got %v, want %v", got, want)
	}
	var s functions.Summary
	if err := json.Unmarshal([]byte(md.SerializedOutput), &s); err != nil {
		t.Fatal(err)
	}
	if got, want := s.ProcessedItems, []string{"Processed_slow", "Processed_a", "Processed_b", "Processed_c"}; !slices.Equal(got, want) {
		t.Errorf("processed_items: got %q, want %q", got, want)
	}
	if got, want := s.TotalValue, 40; got != want {
		t.Errorf("total_value: got %d, want %d", got, want)
	}
}

// fastRetry retries at once, so that tests of failures take no time.
var fastRetry = &functions.RetryPolicy{MaxAttempts: 3, FirstDelayMs: 1, Backoff: 2, MaxDelayMs: 4}

// A failed attempt is tried again after the policy's delays, each longer
// than the one before, and an item that then succeeds counts as any other.
func TestFailedAttemptsAreRetriedAfterTheirDelays(t *testing.T) {
	var mu sync.Mutex
	var attempts []time.Time // of "flaky"
	r := registryWith(nil)
	r.AddActivityN(functions.ProcessWorkItemName, func(ctx task.ActivityContext) (any, error) {
		in, err := functions.ReadAttempt(ctx)
		if err != nil {
			return nil, err
		}
		if in.Item == "flaky" {
			mu.Lock()
			attempts = append(attempts, time.Now())
			mu.Unlock()
			if in.Attempt < 3 {
				return nil, fmt.Errorf("attempt %d of flaky fails", in.Attempt)
			}
		}
		return functions.ItemResult{Item: in.Item, ProcessedItem: "Processed_" + in.Item, Value: 10}, nil
	})
	hub := openHub(t, r)

	retry := &functions.RetryPolicy{MaxAttempts: 3, FirstDelayMs: 300, Backoff: 2, MaxDelayMs: 10_000}
	_, s := runPlan(t, hub, functions.Plan{Items: []string{"a", "flaky", "b"}, Retry: retry})
	if !s.Success || s.TotalItemsProcessed != 3 || s.TotalItemsFailed != 0 || s.TotalValue != 30 {
		t.Errorf("summary: got %+v, want 3 items processed, none failed, total 30, success", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 3 {
		t.Fatalf("flaky was tried %d times, want 3", len(attempts))
	}
	// Durable timers fire on time or a little later, never earlier.
	for i, want := range []time.Duration{300 * time.Millisecond, 600 * time.Millisecond} {
		if got := attempts[i+1].Sub(attempts[i]); got < want {
			t.Errorf("retry %d came %s after the failure, before its delay of %s", i+1, got, want)
		}
	}
}

// An item that fails every attempt does not fail the run: the summary says
// which failed and why, and its totals are over the items that succeeded,
// whether the items ran all at once, in a window, or in partitions.
func TestItemsFailingEveryAttemptAreListed(t *testing.T) {
	var mu sync.Mutex
	tries := map[string]int{}
	hub := openHub(t, registryWith(func(item string) (functions.ItemResult, error) {
		mu.Lock()
		tries[item]++
		mu.Unlock()
		if strings.HasPrefix(item, "bad") {
			return functions.ItemResult{}, fmt.Errorf("%s cannot be processed", item)
		}
		return functions.ItemResult{Item: item, ProcessedItem: "Processed_" + item, Value: 10}, nil
	}))
	items := []string{"a", "bad1", "b", "c", "bad2", "d", "e"}
	for _, tc := range []struct {
		name string
		plan functions.Plan
	}{
		{"all at once", functions.Plan{Items: items, Retry: fastRetry}},
		{"window", functions.Plan{Items: items, MaxParallelism: 2, Retry: fastRetry}},
		{"partitions", functions.Plan{Items: items, PartitionSize: 3, MaxParallelism: 2, Retry: fastRetry}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clear(tries)
			_, s := runPlan(t, hub, tc.plan)
			want := []functions.FailedItem{
				{Index: 1, Item: "bad1", Error: "bad1 cannot be processed", Attempts: 3},
				{Index: 4, Item: "bad2", Error: "bad2 cannot be processed", Attempts: 3},
			}
			if !reflect.DeepEqual(s.FailedItems, want) {
				t.Errorf("failed_items: got %+v, want %+v", s.FailedItems, want)
			}
			if s.Success || s.TotalItemsProcessed != 5 || s.TotalItemsFailed != 2 || s.TotalValue != 50 || s.AverageValue != 10 {
				t.Errorf("summary: got %+v, want 5 processed, 2 failed, total 50, average 10, no success", s)
			}
			if got, want := s.ProcessedItems, []string{"Processed_a", "Processed_b", "Processed_c", "Processed_d", "Processed_e"}; !slices.Equal(got, want) {
				t.Errorf("processed_items: got %q, want %q", got, want)
			}
			mu.Lock()
			defer mu.Unlock()
			if tries["bad1"] != 3 || tries["a"] != 1 {
				t.Errorf("attempts: got %v, want 3 for each bad item and 1 for each other", tries)
			}
		})
	}
}

// activityInput is an ActivityContext holding a JSON input, for running an
// activity on its own.
type activityInput struct {
	ctx   context.Context
	input any
}

func (a activityInput) GetInput(v any) error {
	data, err := json.Marshal(a.input)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

func (a activityInput) Context() context.Context { return a.ctx }

func TestAggregateResults(t *testing.T) {
	results := []functions.ItemResult{
		{Item: "Task1", ProcessedItem: "Processed_Task1", Value: 10, ProcessingTime: 0.5},
		{Item: "Task2", ProcessedItem: "Processed_Task2", Value: 25, ProcessingTime: 1.25},
		{Item: "Task3", ProcessedItem: "Processed_Task3", Value: 30, ProcessingTime: 1.72},
	}
	out, err := functions.AggregateResults(activityInput{context.Background(), results})
	if err != nil {
		t.Fatal(err)
	}
	got := out.(functions.Summary)
	want := functions.Summary{
		TotalItemsProcessed: 3,
		TotalValue:          65,
		AverageValue:        21.67,
		TotalProcessingTime: 3.47,
		ProcessedItems:      []string{"Processed_Task1", "Processed_Task2", "Processed_Task3"},
		FailedItems:         []functions.FailedItem{},
		Success:             true,
	}
	if !slices.Equal(got.ProcessedItems, want.ProcessedItems) {
		t.Errorf("processed_items: got %q, want %q", got.ProcessedItems, want.ProcessedItems)
	}
	got.ProcessedItems, want.ProcessedItems = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("summary: got %+v, want %+v", got, want)
	}

	// The summary's JSON names are the seed's.
	data, _ := json.Marshal(out)
	var fields map[string]any
	json.Unmarshal(data, &fields)
	for _, name := range []string{"total_items_processed", "total_value", "average_value", "total_processing_time", "processed_items", "success", "total_items_failed", "failed_items"} {
		if _, ok := fields[name]; !ok {
			t.Errorf("summary JSON lacks %q: %s", name, data)
		}
	}
}

func TestProcessWorkItem(t *testing.T) {
	const minDelay, maxDelay = 20 * time.Millisecond, 40 * time.Millisecond
	activity := functions.ProcessWorkItem(config.Work{MinDelay: minDelay, MaxDelay: maxDelay, Timeout: time.Minute})
	for range 5 {
		start := time.Now()
		out, err := activity(activityInput{context.Background(), "Task7"})
		elapsed := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		r := out.(functions.ItemResult)
		if r.Item != "Task7" || r.ProcessedItem != "Processed_Task7" {
			t.Errorf("item, processed_item: got %q, %q", r.Item, r.ProcessedItem)
		}
		if r.Value < 1 || r.Value > 100 {
			t.Errorf("value %d is not in 1..100", r.Value)
		}
		if elapsed < minDelay {
			t.Errorf("worked %s, less than the minimum %s", elapsed, minDelay)
		}
		if r.ProcessingTime < 0.02 || r.ProcessingTime > elapsed.Seconds()+0.005 {
			t.Errorf("processing_time %v s does not match the %s spent", r.ProcessingTime, elapsed)
		}
	}
}

func TestProcessWorkItemStopsWhenTheWorkerStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := functions.ProcessWorkItem(config.Work{MinDelay: time.Hour, MaxDelay: time.Hour, Timeout: 2 * time.Hour})(activityInput{ctx, "Task1"}); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

// An attempt that outlasts the timeout fails, saying which setting bounds it.
func TestProcessWorkItemTimesOut(t *testing.T) {
	activity := functions.ProcessWorkItem(config.Work{MinDelay: time.Hour, MaxDelay: time.Hour, Timeout: 50 * time.Millisecond})
	start := time.Now()
	_, err := activity(activityInput{context.Background(), "Task1"})
	if err == nil || !strings.Contains(err.Error(), `attempt 1 at "Task1" took longer than 50ms (FANOUT_ITEM_TIMEOUT)`) {
		t.Fatalf("got %v, want a timeout naming FANOUT_ITEM_TIMEOUT", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("the timed-out attempt returned after %s", elapsed)
	}
}

// FANOUT_FAIL_ITEMS fails the items it matches, whole names only, on their
// first FANOUT_FAIL_ATTEMPTS attempts.
func TestProcessWorkItemFailsChosenItems(t *testing.T) {
	activity := functions.ProcessWorkItem(config.Work{Timeout: time.Minute, FailItems: regexp.MustCompile(`^(?:Task[12])$`), FailAttempts: 2})
	for _, tc := range []struct {
		input any
		fails bool
	}{
		{"Task1", true},
		{functions.Attempt{Item: "Task2", Attempt: 2}, true},
		{functions.Attempt{Item: "Task2", Attempt: 3}, false},
		{"Task12", false},
		{"Task3", false},
	} {
		_, err := activity(activityInput{context.Background(), tc.input})
		if got := err != nil; got != tc.fails {
			t.Errorf("%v: failed %v (%v), want %v", tc.input, got, err, tc.fails)
		}
		if err != nil && !strings.Contains(err.Error(), "failed on purpose: FANOUT_FAIL_ITEMS matches it") {
			t.Errorf("%v: %v does not say why", tc.input, err)
		}
	}
}

// Replaying the recorded history must make the orchestrator ask, at every
// step, for exactly what it asked for when the step first ran: the same
// activities and partitions with the same inputs, then the same result.
// durabletask-go matches replayed tasks to history by id alone, so this is
// what catches an orchestrator that is not deterministic. Items finish in
// random order (0 to 5 ms each), which a sliding window must follow.
func TestReplayIsDeterministic(t *testing.T) {
	r := task.NewTaskRegistry()
	// Two items fail their first attempt: retries, and their timers, must
	// replay too.
	work := config.Work{MaxDelay: 5 * time.Millisecond, Timeout: time.Minute, FailItems: regexp.MustCompile(`^(?:Task3|Task17)$`), FailAttempts: 1}
	if err := functions.Register(r, work, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "replay.sqlite")
	hub := openHubFile(t, r, file)
	items := make([]string, 30)
	for i := range items {
		items[i] = fmt.Sprintf("Task%d", i+1)
	}
	for _, tc := range []struct {
		name       string
		plan       functions.Plan
		partitions int
	}{
		{"all at once", functions.Plan{Items: items, Retry: fastRetry}, 0},
		{"window", functions.Plan{Items: items, MaxParallelism: 4, Retry: fastRetry}, 0},
		{"partitions", functions.Plan{Items: items, PartitionSize: 7, Retry: fastRetry}, 5},
		{"partitions sharing a window", functions.Plan{Count: 30, PartitionSize: 7, MaxParallelism: 5, Retry: fastRetry}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := hub.ScheduleNewOrchestration(context.Background(), functions.OrchestratorName, api.WithInput(tc.plan))
			if err != nil {
				t.Fatal(err)
			}
			md := waitFor(t, hub, id, complete)
			if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
				t.Fatalf("status: %v %v", md.RuntimeStatus, md.FailureDetails)
			}
			if !strings.Contains(md.SerializedOutput, `"total_items_processed":30,"total_items_failed":0,`) {
				t.Errorf("summary: %s, want 30 items processed, none failed", md.SerializedOutput)
			}
			checkReplay(t, r, file, id)
			for k := range tc.partitions {
				checkReplay(t, r, file, api.InstanceID(functions.PartitionID(string(id), k)))
			}
		})
	}
}

// checkReplay replays instance id's recorded history step by step.
func checkReplay(t *testing.T, r *task.TaskRegistry, file string, id api.InstanceID) {
	t.Helper()
	// Each step starts with OrchestratorStarted and its new events, followed
	// by what the orchestrator asked for.
	history := readHistory(t, file, id)
	steps := 0
	for i := 0; i < len(history); {
		j := i + 1
		for j < len(history) && history[j].GetOrchestratorStarted() == nil {
			j++
		}
		inputs := i
		for inputs < j && describe(history[inputs]) == "" {
			inputs++
		}
		var want []string
		for _, e := range history[inputs:j] {
			want = append(want, describe(e))
		}
		res, err := task.NewTaskExecutor(r).ExecuteOrchestrator(context.Background(), id, history[:inputs], nil)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range res.Response.GetActions() {
			switch st, so, co := a.GetScheduleTask(), a.GetCreateSubOrchestration(), a.GetCompleteOrchestration(); {
			case st != nil:
				got = append(got, fmt.Sprintf("%d schedule %s(%s)", a.GetId(), st.GetName(), st.GetInput().GetValue()))
			case so != nil:
				got = append(got, fmt.Sprintf("%d start %s %s(%s)", a.GetId(), so.GetInstanceId(), so.GetName(), so.GetInput().GetValue()))
			case co != nil:
				got = append(got, fmt.Sprintf("complete %v %s", co.GetOrchestrationStatus(), co.GetResult().GetValue()))
			case a.GetCreateTimer() != nil:
				got = append(got, fmt.Sprintf("%d timer %s", a.GetId(), a.GetCreateTimer().GetFireAt().AsTime()))
			default:
				got = append(got, fmt.Sprint(a))
			}
		}
		slices.Sort(got) // actions come from a map
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: step %d replayed differently:\n got %q\nwant %q", id, steps, got, want)
		}
		steps++
		i = j
	}
	if steps < 3 {
		t.Errorf("%s: only %d steps recorded; the fan-out, fan-in and completion take at least 3", id, steps)
	}
}

// describe renders what an orchestrator asked for, as recorded, the way the
// replayed actions are rendered; "" for any other event.
func describe(e *backend.HistoryEvent) string {
	switch ts, so, ec, tc := e.GetTaskScheduled(), e.GetSubOrchestrationInstanceCreated(), e.GetExecutionCompleted(), e.GetTimerCreated(); {
	case tc != nil:
		return fmt.Sprintf("%d timer %s", e.GetEventId(), tc.GetFireAt().AsTime())
	case ts != nil:
		return fmt.Sprintf("%d schedule %s(%s)", e.GetEventId(), ts.GetName(), ts.GetInput().GetValue())
	case so != nil:
		return fmt.Sprintf("%d start %s %s(%s)", e.GetEventId(), so.GetInstanceId(), so.GetName(), so.GetInput().GetValue())
	case ec != nil:
		return fmt.Sprintf("complete %v %s", ec.GetOrchestrationStatus(), ec.GetResult().GetValue())
	}
	return ""
}

// readHistory reads an instance's recorded history from the hub's file.
func readHistory(t *testing.T, file string, id api.InstanceID) []*backend.HistoryEvent {
	t.Helper()
	history, err := hubfile.History(file, string(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(history) == 0 {
		t.Fatal("no history recorded")
	}
	return history
}

// startPlan starts the orchestration with plan and waits for it to finish.
func runPlan(t *testing.T, c taskhub.Client, plan functions.Plan) (api.InstanceID, functions.Summary) {
	t.Helper()
	id, err := c.ScheduleNewOrchestration(context.Background(), functions.OrchestratorName, api.WithInput(plan))
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, c, id, complete)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("status: got %v (%v), want completed", md.RuntimeStatus, md.FailureDetails)
	}
	var s functions.Summary
	if err := json.Unmarshal([]byte(md.SerializedOutput), &s); err != nil {
		t.Fatal(err)
	}
	if got, want := progress(t, md).Completed, s.TotalItemsProcessed+s.TotalItemsFailed; got != want {
		t.Errorf("final custom status counts %d items, want %d", got, want)
	}
	return id, s
}

// scored stands in for process_work_item with a value and time that depend
// on the item alone, so that summaries can be compared exactly.
func scored(item string) (functions.ItemResult, error) {
	return functions.ItemResult{Item: item, ProcessedItem: "Processed_" + item, Value: 1 + len(item)*7%100, ProcessingTime: float64(len(item)%5) / 100}, nil
}

// Partitioning does not change the summary: at one item short of a
// partition, exactly one, and one more, it is the summary of one
// orchestration running every item, but for the partition count.
func TestPartitionBoundariesGiveTheSameSummary(t *testing.T) {
	hub := openHub(t, registryWith(scored))
	const size = 10
	for _, n := range []int{size - 1, size, size + 1, 3*size + 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			items := make([]string, n)
			for i := range items {
				items[i] = fmt.Sprintf("Task-%d%s", i, strings.Repeat("x", i%3))
			}
			_, whole := runPlan(t, hub, functions.Plan{Items: items, PartitionSize: 1000})
			id, parted := runPlan(t, hub, functions.Plan{Items: items, PartitionSize: size})
			if want := (n + size - 1) / size; want > 1 && parted.Partitions != want || want == 1 && parted.Partitions != 0 {
				t.Errorf("partitions: got %d, want %d", parted.Partitions, max(want, 0))
			}
			parted.Partitions = 0
			if !reflect.DeepEqual(parted, whole) {
				t.Errorf("summary with partitions of %d:\n%+v\nwithout:\n%+v", size, parted, whole)
			}
			if parted.TotalItemsProcessed != n || len(parted.ProcessedItems) != n {
				t.Errorf("summary covers %d items, lists %d; want %d", parted.TotalItemsProcessed, len(parted.ProcessedItems), n)
			}
			if n > size {
				// Each partition's own output lists its share.
				md, err := hub.FetchOrchestrationMetadata(context.Background(), api.InstanceID(functions.PartitionID(string(id), 1)))
				if err != nil {
					t.Fatal(err)
				}
				var p functions.Summary
				json.Unmarshal([]byte(md.SerializedOutput), &p)
				if len(p.ProcessedItems) == 0 || p.ProcessedItems[0] != "Processed_"+items[size] {
					t.Errorf("partition 1 output: %s, want it to list items from %q on", md.SerializedOutput, items[size])
				}
			}
		})
	}
}

// Past the list limit, the summary leaves processed_items out and says so;
// the totals still cover every item.
func TestSummaryOmitsAListTooLargeToCarry(t *testing.T) {
	hub := openHub(t, registryWith(scored))
	_, s := runPlan(t, hub, functions.Plan{Count: 50, PartitionSize: 10, ListBytes: 100})
	if s.ProcessedItems != nil || !s.ProcessedItemsOmitted || s.TotalItemsProcessed != 50 || s.Partitions != 5 {
		t.Errorf("summary: %+v, want 50 items over 5 partitions, processed_items omitted", s)
	}
	_, s = runPlan(t, hub, functions.Plan{Count: 50, PartitionSize: 10})
	if len(s.ProcessedItems) != 50 || s.ProcessedItemsOmitted || s.ProcessedItems[49] != "Processed_Item50" {
		t.Errorf("summary: %+v, want all 50 generated items listed", s)
	}
}

// maxParallelism bounds how many items run at once, across partitions, and
// the window stays full: the bound is reached, not merely kept.
func TestMaxParallelismIsHonoured(t *testing.T) {
	var mu sync.Mutex
	running, most := 0, 0
	hub := openHub(t, registryWith(func(item string) (functions.ItemResult, error) {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		running--
		mu.Unlock()
		return scored(item)
	}))
	for _, tc := range []struct {
		name string
		plan functions.Plan
	}{
		{"one orchestration", functions.Plan{Count: 24, MaxParallelism: 3}},
		{"partitions", functions.Plan{Count: 40, MaxParallelism: 3, PartitionSize: 6}},
		{"more partitions than the bound", functions.Plan{Count: 30, MaxParallelism: 2, PartitionSize: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			most = 0
			mu.Unlock()
			_, s := runPlan(t, hub, tc.plan)
			if s.TotalItemsProcessed != tc.plan.Count {
				t.Errorf("processed %d items, want %d", s.TotalItemsProcessed, tc.plan.Count)
			}
			mu.Lock()
			defer mu.Unlock()
			if most != tc.plan.MaxParallelism {
				t.Errorf("at most %d items ran at once, want exactly the bound, %d", most, tc.plan.MaxParallelism)
			}
		})
	}
}

// A large fan-out with no simulated work completes, in partitions, with
// every item counted.
func TestTwentyThousandItems(t *testing.T) {
	if raceDetector {
		t.Skip("make test runs this without the race detector, which slows SQLite twentyfold")
	}
	r := task.NewTaskRegistry()
	if err := functions.Register(r, config.Work{Timeout: time.Minute}, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	hub := openHub(t, r)
	start := time.Now()
	_, s := runPlan(t, hub, functions.Plan{Count: 20_000})
	t.Logf("20,000 items in %s", time.Since(start).Round(time.Millisecond))
	if s.TotalItemsProcessed != 20_000 || len(s.ProcessedItems) != 20_000 || s.Partitions != 20 {
		t.Fatalf("summary: %d items, %d listed, %d partitions; want 20,000 in 20", s.TotalItemsProcessed, len(s.ProcessedItems), s.Partitions)
	}
	if s.ProcessedItems[0] != "Processed_Item1" || s.ProcessedItems[19_999] != "Processed_Item20000" {
		t.Errorf("processed_items out of order: %q … %q", s.ProcessedItems[0], s.ProcessedItems[19_999])
	}
	if s.TotalValue < 20_000 || s.TotalValue > 2_000_000 || s.AverageValue != math.Round(float64(s.TotalValue)/200)/100 {
		t.Errorf("totals: %+v", s)
	}
}

// Any client may start the orchestration; a plan out of range fails that
// instance with a message, and the worker carries on.
func TestInvalidPlanFailsTheInstance(t *testing.T) {
	hub := openHub(t, registryWith(scored))
	for _, plan := range []map[string]int{{"chunks": -1}, {"count": -5}, {"partitionSize": 20_000, "count": 3}} {
		id, err := hub.ScheduleNewOrchestration(context.Background(), functions.OrchestratorName, api.WithInput(plan))
		if err != nil {
			t.Fatal(err)
		}
		md := waitFor(t, hub, id, complete)
		if md.RuntimeStatus != api.RUNTIME_STATUS_FAILED || !strings.Contains(md.FailureDetails.GetErrorMessage(), "it must be from 0 to") {
			t.Errorf("plan %v: got %v %v, want a failure naming the bad number", plan, md.RuntimeStatus, md.FailureDetails)
		}
	}
	if _, s := runPlan(t, hub, functions.Plan{Count: 3}); s.TotalItemsProcessed != 3 {
		t.Errorf("after the bad plans, a good one processed %d items", s.TotalItemsProcessed)
	}
}

// An orchestrator that panics, as v0.6.0 does on a history it cannot
// replay, fails its instance with a message saying why: it is never left
// Running, and the worker carries on.
func TestPanickingOrchestratorFailsTheInstance(t *testing.T) {
	r := registryWith(scored)
	r.AddOrchestratorN("panics", functions.FailOnPanic(func(ctx *task.OrchestrationContext) (any, error) {
		if err := ctx.CallActivity(functions.ProcessWorkItemName, task.WithActivityInput("a")).Await(nil); err != nil {
			return nil, err
		}
		panic("the history cannot be replayed")
	}))
	hub := openHub(t, r)
	id, err := hub.ScheduleNewOrchestration(context.Background(), "panics")
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, hub, id, complete)
	if md.RuntimeStatus != api.RUNTIME_STATUS_FAILED || !strings.Contains(md.FailureDetails.GetErrorMessage(), "the orchestrator failed: the history cannot be replayed") {
		t.Errorf("got %v %v, want Failed saying why", md.RuntimeStatus, md.FailureDetails)
	}
	// The worker goes on with other instances.
	if _, s := runPlan(t, hub, functions.Plan{Items: []string{"b"}}); s.TotalItemsProcessed != 1 {
		t.Errorf("summary after the panic: %+v", s)
	}
}
