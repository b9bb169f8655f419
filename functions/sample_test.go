package functions_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protojson"

	"fanoutfanin/functions"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/hubtest"
)

// openSample runs the sample, with settings s, on the real engine and an
// embedded hub in a temporary file.
func openSample(t *testing.T, s functions.SampleSettings, bounds taskhub.Bounds) (taskhub.Client, *fanout.Client) {
	t.Helper()
	retry := fanout.NewRetryPolicy(3, time.Millisecond, 2, 4*time.Millisecond)
	e := fanout.New(fanout.Options{Log: zerolog.Nop(), Retry: &retry, PartitionSize: 10})
	if err := fanout.Register(e, functions.Sample(s)); err != nil {
		t.Fatal(err)
	}
	hub := hubtest.Open(t, hubtest.Config(filepath.Join(t.TempDir(), "test.sqlite")), e.Registry())
	return hub.Client, e.Client(hub.Client, bounds)
}

// waitFor polls the instance until it has finished, failing after 2 minutes.
func waitFor(t *testing.T, c taskhub.Client, id string) *api.OrchestrationMetadata {
	t.Helper()
	return hubtest.Wait(t, c, api.InstanceID(id), 2*time.Minute, nil)
}

// output is the sample's output: the seeds' summary and the engine's record.
type output struct {
	functions.Summary
	TotalItemsFailed int                 `json:"total_items_failed"`
	FailedItems      []fanout.FailedItem `json:"failed_items"`
	Success          bool                `json:"success"`
	Partitions       int                 `json:"partitions"`
}

// The seeds' fan-out: every item processed once, its summary in the seeds'
// names and work-item order, in one orchestration and in partitions.
func TestSample(t *testing.T) {
	hub, c := openSample(t, functions.SampleSettings{MaxDelay: 2 * time.Millisecond}, taskhub.Bounds{})
	for _, n := range []int{7, 25} {
		items := make([]string, n)
		for i := range items {
			items[i] = fmt.Sprintf("Task%d", i+1)
		}
		list, _ := json.Marshal(items)
		started, err := c.Start(context.Background(), functions.SampleName, fanout.Request{Items: list})
		if err != nil {
			t.Fatal(err)
		}
		md := waitFor(t, hub, started.ID)
		var out output
		if err := json.Unmarshal([]byte(md.SerializedOutput), &out); err != nil || md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
			t.Fatalf("%v %s: %v", md.RuntimeStatus, md.SerializedOutput, err)
		}
		if out.TotalItemsProcessed != n || len(out.ProcessedItems) != n || out.ProcessedItems[n-1] != "Processed_"+items[n-1] {
			t.Errorf("%d items: summary %+v, want every item processed, in order", n, out)
		}
		if out.TotalValue < n || out.TotalValue > 100*n || out.AverageValue != math.Round(float64(out.TotalValue)/float64(n)*100)/100 {
			t.Errorf("%d items: totals %+v", n, out.Summary)
		}
		if !out.Success || out.Partitions != (n+9)/10*min(1, n/10) {
			t.Errorf("%d items: success %v, partitions %d", n, out.Success, out.Partitions)
		}
		var fields map[string]any
		json.Unmarshal([]byte(md.SerializedOutput), &fields)
		for _, name := range []string{"total_items_processed", "total_items_failed", "total_value", "average_value", "total_processing_time", "processed_items", "failed_items", "success"} {
			if _, ok := fields[name]; !ok {
				t.Errorf("the output lacks the seeds' %q: %s", name, md.SerializedOutput)
			}
		}
	}
}

// aggregate_results' arithmetic: the seeds' totals and average, rounded,
// and seconds summed in hundredths, so that partitioning changes nothing.
func TestSummary(t *testing.T) {
	results := []functions.ItemResult{
		{Item: "Task1", ProcessedItem: "Processed_Task1", Value: 10, ProcessingTime: 0.5},
		{Item: "Task2", ProcessedItem: "Processed_Task2", Value: 25, ProcessingTime: 1.25},
		{Item: "Task3", ProcessedItem: "Processed_Task3", Value: 30, ProcessingTime: 1.72},
	}
	var whole functions.Summary
	for _, r := range results {
		whole = functions.AddResult(whole, r)
	}
	whole = functions.FinishSummary(whole)
	want := functions.Summary{TotalItemsProcessed: 3, TotalValue: 65, AverageValue: 21.67, TotalProcessingTime: 3.47,
		ProcessedItems: []string{"Processed_Task1", "Processed_Task2", "Processed_Task3"}}
	if !reflect.DeepEqual(whole, want) {
		t.Errorf("summary: got %+v, want %+v", whole, want)
	}
	first := functions.FinishSummary(functions.AddResult(functions.Summary{}, results[0]))
	rest := functions.FinishSummary(functions.AddResult(functions.AddResult(functions.Summary{}, results[1]), results[2]))
	if merged := functions.FinishSummary(functions.MergeSummaries(first, rest)); !reflect.DeepEqual(merged, want) {
		t.Errorf("merged: got %+v, want %+v", merged, want)
	}
	trimmed := functions.MergeSummaries(functions.TrimSummary(first), rest)
	if trimmed.ProcessedItems != nil || !trimmed.ProcessedItemsOmitted || trimmed.TotalItemsProcessed != 3 {
		t.Errorf("merged with a trimmed summary: %+v, want the list left out and the totals kept", trimmed)
	}
	if empty := functions.FinishSummary(functions.Summary{}); empty.ProcessedItems == nil || empty.AverageValue != 0 {
		t.Errorf("no items: %+v, want processed_items [] and average 0", empty)
	}
}

func TestProcessWorkItem(t *testing.T) {
	const minDelay, maxDelay = 20 * time.Millisecond, 40 * time.Millisecond
	work := functions.ProcessWorkItem(functions.SampleSettings{MinDelay: minDelay, MaxDelay: maxDelay})
	for range 5 {
		start := time.Now()
		r, err := work(context.Background(), fanout.Item[string]{Value: "Task7", Attempt: 1, Log: zerolog.Nop()})
		elapsed := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
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
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	slow := functions.ProcessWorkItem(functions.SampleSettings{MinDelay: time.Hour, MaxDelay: time.Hour})
	if _, err := slow(ctx, fanout.Item[string]{Value: "Task1", Attempt: 1, Log: zerolog.Nop()}); !errors.Is(err, context.Canceled) {
		t.Errorf("when its attempt ends: got %v, want context.Canceled", err)
	}
}

// FANOUT_FAIL_ITEMS fails the items it matches, whole texts only, on their
// first FANOUT_FAIL_ATTEMPTS attempts, whatever the work and the item type.
func TestFailingFailsChosenItems(t *testing.T) {
	f := functions.Failures{Items: regexp.MustCompile(`^(?:Task[12]|\{"id":7\})$`), Attempts: 2}
	ok := func(context.Context, fanout.Item[string]) (int, error) { return 1, nil }
	work := functions.Failing(ok, f)
	for _, tc := range []struct {
		item    string
		attempt int
		fails   bool
	}{
		{"Task1", 1, true},
		{"Task2", 2, true},
		{"Task2", 3, false},
		{"Task12", 1, false},
		{"Task3", 1, false},
	} {
		_, err := work(context.Background(), fanout.Item[string]{Value: tc.item, Attempt: tc.attempt, Log: zerolog.Nop()})
		if got := err != nil; got != tc.fails {
			t.Errorf("%s attempt %d: failed %v (%v), want %v", tc.item, tc.attempt, got, err, tc.fails)
		}
		if err != nil && !strings.Contains(err.Error(), "failed on purpose: FANOUT_FAIL_ITEMS matches it") {
			t.Errorf("%s: %v does not say why", tc.item, err)
		}
	}
	type record struct {
		ID int `json:"id"`
	}
	objects := functions.Failing(func(context.Context, fanout.Item[record]) (int, error) { return 1, nil }, f)
	if _, err := objects(context.Background(), fanout.Item[record]{Value: record{7}, Attempt: 1, Log: zerolog.Nop()}); err == nil {
		t.Error(`{"id":7} was not failed: an object item matches by its JSON`)
	}
	if got := functions.Failing(ok, functions.Failures{}); reflect.ValueOf(got).Pointer() != reflect.ValueOf(ok).Pointer() {
		t.Error("without FANOUT_FAIL_ITEMS the work is not wrapped")
	}
}

// Instances started by the previous version complete after an upgrade: its
// recorded histories (testdata/upgrade, one single orchestration and one
// partitioned, with retries and a failed item) replay step by step, asking
// for the same tasks in the same places, and end with the same output.
// Activities the previous version scheduled take their inputs as they were.
func TestUpgradeReplaysRecordedHistories(t *testing.T) {
	e := fanout.New(fanout.Options{Log: zerolog.Nop()})
	if err := fanout.Register(e, functions.Sample(functions.SampleSettings{})); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("testdata/upgrade/*.json")
	if len(files) != 5 {
		t.Fatalf("%d recorded histories, want 5", len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			history := readRecorded(t, file)
			id := history[1].GetExecutionStarted().GetOrchestrationInstance().GetInstanceId()
			steps := 0
			for i := 0; i < len(history); {
				j := i + 1
				for j < len(history) && history[j].GetOrchestratorStarted() == nil {
					j++
				}
				asked := i
				for asked < j && !isAction(history[asked]) {
					asked++
				}
				res, err := task.NewTaskExecutor(e.Registry()).ExecuteOrchestrator(context.Background(), api.InstanceID(id), history[:asked], nil)
				if err != nil {
					t.Fatal(err)
				}
				var got, want []string
				for _, ev := range history[asked:j] {
					want = append(want, recordedAction(t, ev))
				}
				for _, a := range res.Response.GetActions() {
					switch st, so, co := a.GetScheduleTask(), a.GetCreateSubOrchestration(), a.GetCompleteOrchestration(); {
					case st != nil:
						got = append(got, fmt.Sprintf("%d schedule %s", a.GetId(), st.GetName()))
					case so != nil:
						got = append(got, fmt.Sprintf("%d start %s %s", a.GetId(), so.GetInstanceId(), so.GetName()))
					case co != nil:
						got = append(got, fmt.Sprintf("complete %v %v", co.GetOrchestrationStatus(), jsonValue(t, co.GetResult().GetValue())))
					case a.GetCreateTimer() != nil:
						got = append(got, fmt.Sprintf("%d timer", a.GetId()))
					default:
						got = append(got, fmt.Sprint(a))
					}
				}
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Fatalf("step %d replayed differently:\n got %q\nwant %q", steps, got, want)
				}
				steps++
				i = j
			}
			for _, ev := range history {
				ts := ev.GetTaskScheduled()
				if ts == nil {
					continue
				}
				// The new activities read the old inputs.
				if err := runActivity(e.Registry(), ev); err != nil {
					t.Errorf("%s(%s): %v", ts.GetName(), ts.GetInput().GetValue(), err)
				}
			}
		})
	}
}

// recordedAction describes what a recorded event asked for; a completion
// by its output as a JSON value, so that key order does not matter.
func recordedAction(t *testing.T, e *backend.HistoryEvent) string {
	switch ts, so, ec, tc := e.GetTaskScheduled(), e.GetSubOrchestrationInstanceCreated(), e.GetExecutionCompleted(), e.GetTimerCreated(); {
	case tc != nil:
		return fmt.Sprintf("%d timer", e.GetEventId())
	case ts != nil:
		return fmt.Sprintf("%d schedule %s", e.GetEventId(), ts.GetName())
	case so != nil:
		return fmt.Sprintf("%d start %s %s", e.GetEventId(), so.GetInstanceId(), so.GetName())
	case ec != nil:
		return fmt.Sprintf("complete %v %v", ec.GetOrchestrationStatus(), jsonValue(t, ec.GetResult().GetValue()))
	}
	return ""
}

func isAction(e *backend.HistoryEvent) bool {
	return e.GetTaskScheduled() != nil || e.GetSubOrchestrationInstanceCreated() != nil || e.GetExecutionCompleted() != nil || e.GetTimerCreated() != nil
}

// jsonValue renders a JSON text with its keys sorted.
func jsonValue(t *testing.T, s string) string {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	if key := duplicateKey(s); key != "" {
		t.Fatalf("%s: the key %q is there twice", s, key)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// duplicateKey is a key that an object of JSON text s has twice, if any:
// decoding keeps the last, so the text says two things.
func duplicateKey(s string) string {
	dec := json.NewDecoder(strings.NewReader(s))
	var objects []map[string]bool // open objects' keys; nil for an array
	expectKey := func() bool { return len(objects) > 0 && objects[len(objects)-1] != nil }
	afterKey := false
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		switch tok {
		case json.Delim('{'):
			objects = append(objects, map[string]bool{})
			afterKey = false
			continue
		case json.Delim('['):
			objects = append(objects, nil)
			afterKey = false
			continue
		case json.Delim('}'), json.Delim(']'):
			objects = objects[:len(objects)-1]
			afterKey = false
			continue
		}
		if key, ok := tok.(string); ok && expectKey() && !afterKey {
			if objects[len(objects)-1][key] {
				return key
			}
			objects[len(objects)-1][key] = true
			afterKey = true
			continue
		}
		afterKey = false
	}
}

// readRecorded reads a history saved as a JSON array of events.
func readRecorded(t *testing.T, file string) []*backend.HistoryEvent {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		t.Fatal(err)
	}
	history := make([]*backend.HistoryEvent, len(raws))
	for i, r := range raws {
		history[i] = &backend.HistoryEvent{}
		if err := protojson.Unmarshal(r, history[i]); err != nil {
			t.Fatal(err)
		}
	}
	return history
}

// runActivity runs the activity that scheduled asks for, as a worker would.
func runActivity(r *task.TaskRegistry, scheduled *backend.HistoryEvent) error {
	res, err := task.NewTaskExecutor(r).ExecuteActivity(context.Background(), "upgrade", scheduled)
	if err != nil {
		return err
	}
	if f := res.GetTaskFailed(); f != nil {
		if strings.Contains(f.GetFailureDetails().GetErrorMessage(), "failed on purpose") {
			return nil
		}
		return errors.New(f.GetFailureDetails().GetErrorMessage())
	}
	return nil
}

// The sample's settings are read at start with the rest, every problem in
// one report.
func TestReadSampleSettings(t *testing.T) {
	load := func(env map[string]string) (functions.SampleSettings, error) {
		env[config.SettingAppRoot] = ".."
		var s functions.SampleSettings
		_, err := config.Load(nil, func(k string) string { return env[k] }, func(p *config.Parser) { s = functions.ReadSampleSettings(p) })
		return s, err
	}
	s, err := load(map[string]string{})
	if err != nil || s.MinDelay != 500*time.Millisecond || s.MaxDelay != 2*time.Second || s.Fail.Items != nil {
		t.Errorf("defaults: %+v (%v)", s, err)
	}
	s, err = load(map[string]string{functions.SettingWorkMinDelay: "0", functions.SettingWorkMaxDelay: "10ms",
		functions.SettingFailItems: "Item[0-9]|bad.*", functions.SettingFailAttempts: "2"})
	if err != nil || s.MinDelay != 0 || s.MaxDelay != 10*time.Millisecond || s.Fail.Attempts != 2 {
		t.Errorf("settings: %+v (%v)", s, err)
	}
	// The pattern matches whole item names.
	for item, want := range map[string]bool{"Item7": true, "Item77": false, "bad": true, "a bad": false} {
		if got := s.Fail.Items != nil && s.Fail.Items.MatchString(item); got != want {
			t.Errorf("FANOUT_FAIL_ITEMS matching %q: got %v, want %v", item, got, want)
		}
	}
	_, err = load(map[string]string{
		functions.SettingWorkMinDelay: "3s", functions.SettingWorkMaxDelay: "1s",
		functions.SettingFailItems: "Item[0-", functions.SettingFailAttempts: "101",
		config.SettingPort: "70000",
	})
	for _, want := range []string{"FANOUT_WORK_MIN_DELAY (3s) is longer than FANOUT_WORK_MAX_DELAY (1s)", `FANOUT_FAIL_ITEMS is "Item[0-"`, `FANOUT_FAIL_ATTEMPTS is "101"`, config.SettingPort} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad settings: got %v, want it to say %q", err, want)
		}
	}
	// The app reads them with its fan-outs, of which the sample is the one.
	var regs []functions.Registration
	_, err = config.Load(nil, func(k string) string {
		return map[string]string{config.SettingAppRoot: "..", functions.SettingWorkMinDelay: "9s"}[k]
	},
		func(p *config.Parser) { regs = functions.ReadFanouts(p) })
	if len(regs) != 1 || err == nil || !strings.Contains(err.Error(), "FANOUT_WORK_MIN_DELAY (9s) is longer than") {
		t.Errorf("ReadFanouts: %d fan-outs, %v; want the sample's, and its settings checked", len(regs), err)
	}
	_, err = load(map[string]string{functions.SettingWorkMaxDelay: "soon", functions.SettingWorkMinDelay: "-1s"})
	for _, want := range []string{`FANOUT_WORK_MAX_DELAY is "soon"`, `FANOUT_WORK_MIN_DELAY is "-1s"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad durations: got %v, want it to say %q", err, want)
		}
	}
}
