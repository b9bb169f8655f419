package fanout_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/hubtest"
)

// The engine's tests run their own fan-out, "tally": each item is a word,
// its result a score, and the summary counts and sums the scores and lists
// the words in order.

type score struct {
	Word  string `json:"word"`
	Score int    `json:"score"`
}

type tally struct {
	Items        int      `json:"items"`
	Score        int      `json:"score"`
	Mean         float64  `json:"mean"`
	Words        []string `json:"words"`
	WordsOmitted bool     `json:"words_omitted,omitempty"`
}

// output is a tally fan-out's output: the summary and the engine's record.
type output struct {
	tally
	TotalItemsFailed   int                 `json:"total_items_failed"`
	FailedItems        []fanout.FailedItem `json:"failed_items"`
	FailedItemsOmitted int                 `json:"failed_items_omitted"`
	Success            bool                `json:"success"`
	Partitions         int                 `json:"partitions"`
}

var tallyAggregate = fanout.Aggregate[score, tally]{
	Add: func(t tally, s score) tally {
		t.Items++
		t.Score += s.Score
		if !t.WordsOmitted {
			t.Words = append(t.Words, s.Word)
		}
		return t
	},
	Merge: func(a, b tally) tally {
		a.Items += b.Items
		a.Score += b.Score
		a.WordsOmitted = a.WordsOmitted || b.WordsOmitted
		a.Words = append(a.Words, b.Words...)
		if a.WordsOmitted {
			a.Words = nil
		}
		return a
	},
	Finish: func(t tally) tally {
		t.Mean = 0
		if t.Items > 0 {
			t.Mean = float64(t.Score) / float64(t.Items)
		}
		return t
	},
	Trim: func(t tally) tally {
		t.Words, t.WordsOmitted = nil, true
		return t
	},
}

// scoreOf scores a word by its length alone, so that runs compare exactly.
func scoreOf(_ context.Context, it fanout.Item[string]) (score, error) {
	return score{Word: it.Value, Score: len(it.Value)}, nil
}

// tallySpec is the tests' fan-out with work w.
func tallySpec(w fanout.Work[string, score]) fanout.Spec[string, score, tally] {
	return fanout.Spec[string, score, tally]{
		Name:      "tally",
		Work:      w,
		Aggregate: tallyAggregate,
		Generate:  func(n int) string { return fmt.Sprintf("w%d", n+1) },
	}
}

// fastRetry retries at once, so that tests of failures take no time.
var fastRetry = &fanout.RetryPolicy{MaxAttempts: 3, FirstDelayMs: 1, Backoff: 2, MaxDelayMs: 4}

// hub is an engine with the tally fan-out on an embedded task hub in a
// temporary file.
type hub struct {
	taskhub.Client
	engine *fanout.Engine
	client *fanout.Client
	file   string
}

func openHub(t testing.TB, w fanout.Work[string, score], opts ...func(*fanout.Options)) *hub {
	t.Helper()
	o := fanout.Options{Log: zerolog.Nop(), Retry: fastRetry}
	for _, f := range opts {
		f(&o)
	}
	e := fanout.New(o)
	if err := fanout.Register(e, tallySpec(w)); err != nil {
		t.Fatal(err)
	}
	return openEngine(t, e)
}

func openEngine(t testing.TB, e *fanout.Engine, bounds ...taskhub.Bounds) *hub {
	t.Helper()
	file := filepath.Join(t.TempDir(), "test.sqlite")
	h := hubtest.Open(t, hubtest.Config(file), e.Registry())
	b := h.Bounds
	if len(bounds) > 0 {
		b = bounds[0]
	}
	return &hub{Client: h.Client, engine: e, client: e.Client(h.Client, b), file: file}
}

// waitFor polls the instance until done says so, failing after 2 minutes.
func waitFor(t testing.TB, c taskhub.Client, id api.InstanceID, done func(*api.OrchestrationMetadata) bool) *api.OrchestrationMetadata {
	t.Helper()
	return hubtest.Wait(t, c, id, 2*time.Minute, done)
}

func complete(md *api.OrchestrationMetadata) bool { return md.IsComplete() }

func progress(t testing.TB, md *api.OrchestrationMetadata) fanout.Progress {
	t.Helper()
	var p fanout.Progress
	if err := json.Unmarshal([]byte(md.SerializedCustomStatus), &p); err != nil {
		t.Fatalf("custom status %q: %v", md.SerializedCustomStatus, err)
	}
	return p
}

// run starts the tally orchestration with plan and waits for its output.
func run(t testing.TB, h *hub, plan fanout.Plan) (api.InstanceID, output) {
	t.Helper()
	id, err := h.ScheduleNewOrchestration(context.Background(), "tally_orchestrator", api.WithInput(plan))
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, h, id, complete)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("status: got %v (%v), want completed", md.RuntimeStatus, md.FailureDetails)
	}
	var out output
	if err := json.Unmarshal([]byte(md.SerializedOutput), &out); err != nil {
		t.Fatal(err)
	}
	if got, want := progress(t, md).Completed, out.Items+out.TotalItemsFailed; got != want {
		t.Errorf("final custom status counts %d items, want %d", got, want)
	}
	return id, out
}

// words are n distinct words of different lengths.
func words(n int) []string {
	w := make([]string, n)
	for i := range w {
		w[i] = fmt.Sprintf("word-%d%s", i, strings.Repeat("x", i%3))
	}
	return w
}

func raw(items ...string) []json.RawMessage {
	out := make([]json.RawMessage, len(items))
	for i, s := range items {
		out[i], _ = json.Marshal(s)
	}
	return out
}

func TestFanOutFanIn(t *testing.T) {
	h := openHub(t, scoreOf)
	items := words(50)
	_, out := run(t, h, fanout.Plan{Items: raw(items...)})
	want := 0
	for _, w := range items {
		want += len(w)
	}
	if out.Items != 50 || out.Score != want || !slices.Equal(out.Words, items) {
		t.Errorf("summary: %d items, score %d, words %q; want 50, %d, the items in order", out.Items, out.Score, out.Words, want)
	}
	if out.Mean != float64(want)/50 {
		t.Errorf("mean: got %v, want Finish's %v", out.Mean, float64(want)/50)
	}
	if !out.Success || out.TotalItemsFailed != 0 || out.FailedItems == nil || out.Partitions != 0 {
		t.Errorf("record: %+v, want success, no failures listed as [], no partitions", out)
	}
}

// Work gets each item with its place in the fan-out and its attempt, and
// items may be any JSON value.
func TestItemsAreAnyJSON(t *testing.T) {
	type point struct {
		X, Y int
	}
	var mu sync.Mutex
	seen := map[int]point{}
	e := fanout.New(fanout.Options{Log: zerolog.Nop()})
	err := fanout.Register(e, fanout.Spec[point, int, struct{ Sum int }]{
		Name: "points",
		Work: func(_ context.Context, it fanout.Item[point]) (int, error) {
			mu.Lock()
			seen[it.Index] = it.Value
			mu.Unlock()
			if it.Attempt != 1 {
				return 0, fmt.Errorf("attempt %d", it.Attempt)
			}
			return it.Value.X * it.Value.Y, nil
		},
		Aggregate: fanout.Aggregate[int, struct{ Sum int }]{
			Add:   func(s struct{ Sum int }, r int) struct{ Sum int } { s.Sum += r; return s },
			Merge: func(a, b struct{ Sum int }) struct{ Sum int } { a.Sum += b.Sum; return a },
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	h := openEngine(t, e)
	started, err := h.client.Start(context.Background(), "points", fanout.Request{Items: json.RawMessage(`[{"X": 2, "Y": 3}, {"X": 4, "Y": 5}]`)})
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, h, api.InstanceID(started.ID), complete)
	if md.SerializedOutput != `{"Sum":26,"total_items_failed":0,"failed_items":[],"success":true}` {
		t.Errorf("output: %s", md.SerializedOutput)
	}
	if want := map[int]point{0: {2, 3}, 1: {4, 5}}; !reflect.DeepEqual(seen, want) {
		t.Errorf("work saw %v, want %v", seen, want)
	}
}

// The custom status counts items as they finish, whatever their order: here
// the first item holds out while the rest finish.
func TestProgressCountsItemsInTheOrderTheyFinish(t *testing.T) {
	release := make(chan struct{})
	h := openHub(t, func(ctx context.Context, it fanout.Item[string]) (score, error) {
		if it.Value == "slow" {
			<-release
		}
		return scoreOf(ctx, it)
	})
	id, err := h.ScheduleNewOrchestration(context.Background(), "tally_orchestrator", api.WithInput([]string{"slow", "a", "b", "c"}))
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, h, id, func(md *api.OrchestrationMetadata) bool {
		return md.SerializedCustomStatus != "" && progress(t, md).Completed == 3
	})
	if got, want := md.RuntimeStatus, api.RUNTIME_STATUS_RUNNING; got != want {
		t.Fatalf("with one item outstanding: got %v, want %v", got, want)
	}
	if got, want := progress(t, md), (fanout.Progress{Completed: 3, Total: 4}); got != want {
		t.Errorf("custom status: got %+v, want %+v", got, want)
	}
	close(release)
	md = waitFor(t, h, id, complete)
	var out output
	json.Unmarshal([]byte(md.SerializedOutput), &out)
	if got, want := out.Words, []string{"slow", "a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("words: got %q, want %q", got, want)
	}
}

// A failed attempt is tried again after the policy's delays, each longer
// than the one before, and an item that then succeeds counts as any other.
func TestFailedAttemptsAreRetriedAfterTheirDelays(t *testing.T) {
	var mu sync.Mutex
	var attempts []time.Time // of "flaky"
	h := openHub(t, func(ctx context.Context, it fanout.Item[string]) (score, error) {
		if it.Value == "flaky" {
			mu.Lock()
			attempts = append(attempts, time.Now())
			mu.Unlock()
			if it.Attempt < 3 {
				return score{}, fmt.Errorf("attempt %d of flaky fails", it.Attempt)
			}
		}
		return scoreOf(ctx, it)
	})
	retry := &fanout.RetryPolicy{MaxAttempts: 3, FirstDelayMs: 300, Backoff: 2, MaxDelayMs: 10_000}
	_, out := run(t, h, fanout.Plan{Items: raw("a", "flaky", "b"), Retry: retry})
	if !out.Success || out.Items != 3 || out.TotalItemsFailed != 0 {
		t.Errorf("output: got %+v, want 3 items, none failed, success", out)
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

// An item that fails every attempt does not fail the run: the output says
// which failed and why, and the summary is over the items that succeeded,
// whether the items ran all at once, in a window, or in partitions.
func TestItemsFailingEveryAttemptAreListed(t *testing.T) {
	var mu sync.Mutex
	tries := map[string]int{}
	h := openHub(t, func(ctx context.Context, it fanout.Item[string]) (score, error) {
		mu.Lock()
		tries[it.Value]++
		mu.Unlock()
		if strings.HasPrefix(it.Value, "bad") {
			return score{}, fmt.Errorf("%s cannot be processed", it.Value)
		}
		return scoreOf(ctx, it)
	})
	items := raw("a", "bad1", "b", "c", "bad2", "d", "e")
	for _, tc := range []struct {
		name string
		plan fanout.Plan
	}{
		{"all at once", fanout.Plan{Items: items, Retry: fastRetry}},
		{"window", fanout.Plan{Items: items, MaxParallelism: 2, Retry: fastRetry}},
		{"partitions", fanout.Plan{Items: items, PartitionSize: 3, MaxParallelism: 2, Retry: fastRetry}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			clear(tries)
			mu.Unlock()
			_, out := run(t, h, tc.plan)
			want := []fanout.FailedItem{
				{Index: 1, Item: json.RawMessage(`"bad1"`), Error: "bad1 cannot be processed", Attempts: 3},
				{Index: 4, Item: json.RawMessage(`"bad2"`), Error: "bad2 cannot be processed", Attempts: 3},
			}
			if !reflect.DeepEqual(out.FailedItems, want) {
				t.Errorf("failed_items: got %+v, want %+v", out.FailedItems, want)
			}
			if out.Success || out.Items != 5 || out.TotalItemsFailed != 2 || out.Score != 5 {
				t.Errorf("output: got %+v, want 5 items, 2 failed, score 5, no success", out)
			}
			if got, want := out.Words, []string{"a", "b", "c", "d", "e"}; !slices.Equal(got, want) {
				t.Errorf("words: got %q, want %q", got, want)
			}
			mu.Lock()
			defer mu.Unlock()
			if tries["bad1"] != 3 || tries["a"] != 1 {
				t.Errorf("attempts: got %v, want 3 for each bad item and 1 for each other", tries)
			}
		})
	}
}

// An attempt that outlasts the per-attempt timeout fails, and is retried:
// work that heeds its ctx sees it end; work that ignores it and succeeds
// late has its result dropped.
func TestAttemptsTimeOut(t *testing.T) {
	var mu sync.Mutex
	attempts := 0
	heeded := make(chan error, 10)
	h := openHub(t, func(ctx context.Context, it fanout.Item[string]) (score, error) {
		mu.Lock()
		attempts++
		n := attempts
		mu.Unlock()
		switch {
		case it.Value == "heeds":
			<-ctx.Done()
			heeded <- ctx.Err()
			return score{}, ctx.Err()
		case n <= 2:
			time.Sleep(300 * time.Millisecond) // ignores ctx, then succeeds
		}
		return scoreOf(ctx, it)
	}, func(o *fanout.Options) { o.ItemTimeout = 100 * time.Millisecond })
	_, out := run(t, h, fanout.Plan{Items: raw("ignores"), Retry: fastRetry})
	mu.Lock()
	if out.Items != 1 || attempts != 3 {
		t.Errorf("output %+v after %d attempts: want the two late successes dropped and the third attempt counted", out, attempts)
	}
	mu.Unlock()
	_, out = run(t, h, fanout.Plan{Items: raw("heeds"), Retry: &fanout.RetryPolicy{MaxAttempts: 1}})
	if out.TotalItemsFailed != 1 || !strings.Contains(out.FailedItems[0].Error, "took longer than the 100ms an attempt may take") {
		t.Errorf("output: %+v, want the item failed by its timeout", out)
	}
	if err := <-heeded; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the work's ctx ended with %v, want its deadline", err)
	}
}

// Partitioning does not change the summary: at one item short of a
// partition, exactly one, and one more, it is the summary of one
// orchestration running every item, but for the partition count.
func TestPartitionBoundariesGiveTheSameSummary(t *testing.T) {
	h := openHub(t, scoreOf)
	const size = 10
	for _, n := range []int{size - 1, size, size + 1, 3*size + 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			items := words(n)
			_, whole := run(t, h, fanout.Plan{Items: raw(items...), PartitionSize: 1000})
			id, parted := run(t, h, fanout.Plan{Items: raw(items...), PartitionSize: size})
			if want := (n + size - 1) / size; want > 1 && parted.Partitions != want || want == 1 && parted.Partitions != 0 {
				t.Errorf("partitions: got %d, want %d", parted.Partitions, want)
			}
			parted.Partitions = 0
			if !reflect.DeepEqual(parted, whole) {
				t.Errorf("output with partitions of %d:\n%+v\nwithout:\n%+v", size, parted, whole)
			}
			if n > size {
				// Each partition's own output holds its share.
				md, err := h.FetchOrchestrationMetadata(context.Background(), api.InstanceID(fanout.PartitionID(string(id), 1)))
				if err != nil {
					t.Fatal(err)
				}
				var p output
				json.Unmarshal([]byte(md.SerializedOutput), &p)
				if len(p.Words) == 0 || p.Words[0] != items[size] {
					t.Errorf("partition 1 output: %s, want it to list items from %q on", md.SerializedOutput, items[size])
				}
			}
		})
	}
}

// Sizes are measured: a summary past the bound is trimmed, and results
// too many for one aggregation are folded in several, within the bound.
func TestSummariesAndAggregationsStayWithinTheBound(t *testing.T) {
	h := openHub(t, scoreOf)
	// Generated words w1 … w50 in 5 partitions: the list is over 400 bytes.
	_, out := run(t, h, fanout.Plan{Count: 50, PartitionSize: 10, ListBytes: 400})
	if out.Words != nil || !out.WordsOmitted || out.Items != 50 || out.Partitions != 5 {
		t.Errorf("output: %+v, want 50 items over 5 partitions, words trimmed", out)
	}
	_, out = run(t, h, fanout.Plan{Count: 50, PartitionSize: 10})
	if len(out.Words) != 50 || out.WordsOmitted || out.Words[49] != "w50" {
		t.Errorf("output: %+v, want all 50 generated words listed", out)
	}

	// 40 results of about 230 bytes each, against a bound of 2,000 bytes.
	long := make([]string, 40)
	for i := range long {
		long[i] = fmt.Sprintf("%03d%s", i, strings.Repeat("y", 200))
	}
	id, out := run(t, h, fanout.Plan{Items: raw(long...), ListBytes: 2000})
	if out.Items != 40 || out.Score != 40*203 || !out.WordsOmitted {
		t.Errorf("output: %+v, want 40 items scored, the words trimmed", out)
	}
	history, err := hubtest.History(h.file, string(id))
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, e := range history {
		if ts := e.GetTaskScheduled(); ts != nil && ts.Name == "tally_aggregate" {
			calls++
			if n := len(ts.GetInput().GetValue()); n > 2000 {
				t.Errorf("an aggregation's input is %d bytes, over the bound of 2000", n)
			}
		}
	}
	if calls < 5 {
		t.Errorf("%d aggregations for 9 kB of results, want them split to fit 2 kB", calls)
	}
}

// Items that JSON writes six times as long as they are ('<' is \u003c)
// make partitions smaller than the setting says, so that each partition's
// input fits one payload.
func TestPartitionsFitOnePayload(t *testing.T) {
	e := fanout.New(fanout.Options{Log: zerolog.Nop(), PartitionSize: 100})
	if err := fanout.Register(e, tallySpec(scoreOf)); err != nil {
		t.Fatal(err)
	}
	const limit = 16 << 10
	h := openEngine(t, e, taskhub.Bounds{MaxPayloadBytes: limit, MaxStepBytes: 4 * limit})
	list := make([]string, 200)
	for i := range list {
		list[i] = fmt.Sprintf("%03d%s", i, strings.Repeat("<", 200))
	}
	items, _ := json.Marshal(list)
	started, err := h.client.Start(context.Background(), "tally", fanout.Request{Items: items})
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, h, api.InstanceID(started.ID), complete)
	var out output
	if err := json.Unmarshal([]byte(md.SerializedOutput), &out); err != nil {
		t.Fatal(err)
	}
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || out.Items != 200 || out.Partitions <= 2 {
		t.Fatalf("%v, %d items in %d partitions; want 200 items in more than 2", md.RuntimeStatus, out.Items, out.Partitions)
	}
	for k := range out.Partitions {
		history, err := hubtest.History(h.file, fanout.PartitionID(started.ID, k))
		if err != nil {
			t.Fatal(err)
		}
		if n := len(taskhub.ExecutionStarted(history, nil).GetExecutionStarted().GetInput().GetValue()); n > limit {
			t.Errorf("partition %d's input is %d bytes, over the payload limit of %d", k, n, limit)
		}
	}
}

// A summary that cannot be trimmed and is too large fails the fan-out with
// a message that says what to do.
func TestASummaryTooLargeWithoutTrimFailsClearly(t *testing.T) {
	e := fanout.New(fanout.Options{Log: zerolog.Nop()})
	spec := tallySpec(scoreOf)
	spec.Aggregate.Trim = nil
	if err := fanout.Register(e, spec); err != nil {
		t.Fatal(err)
	}
	h := openEngine(t, e)
	id, err := h.ScheduleNewOrchestration(context.Background(), "tally_orchestrator", api.WithInput(fanout.Plan{Count: 40, ListBytes: 100}))
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, h, id, complete)
	if md.RuntimeStatus != api.RUNTIME_STATUS_FAILED || !strings.Contains(md.FailureDetails.GetErrorMessage(), "give the fan-out's Aggregate a Trim") {
		t.Errorf("got %v %v, want a failure saying to give a Trim", md.RuntimeStatus, md.FailureDetails)
	}
}

// maxParallelism bounds how many items run at once, across partitions, and
// the window stays full: the bound is reached, not merely kept.
// atOnce is work that scores an item after 20 ms, and counts how many
// items ran at once, at most.
type atOnce struct {
	mu            sync.Mutex
	running, most int
}

func (a *atOnce) work(ctx context.Context, it fanout.Item[string]) (score, error) {
	a.mu.Lock()
	a.running++
	a.most = max(a.most, a.running)
	a.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	a.mu.Lock()
	a.running--
	a.mu.Unlock()
	return scoreOf(ctx, it)
}

// peak returns the most items that ran at once since the last call.
func (a *atOnce) peak() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	most := a.most
	a.most = 0
	return most
}

func TestMaxParallelismIsHonoured(t *testing.T) {
	var a atOnce
	h := openHub(t, a.work)
	for _, tc := range []struct {
		name string
		plan fanout.Plan
	}{
		{"one orchestration", fanout.Plan{Count: 24, MaxParallelism: 3}},
		{"partitions", fanout.Plan{Count: 40, MaxParallelism: 3, PartitionSize: 6}},
		{"more partitions than the bound", fanout.Plan{Count: 30, MaxParallelism: 2, PartitionSize: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.peak()
			_, out := run(t, h, tc.plan)
			if out.Items != tc.plan.Count {
				t.Errorf("processed %d items, want %d", out.Items, tc.plan.Count)
			}
			if most := a.peak(); most != tc.plan.MaxParallelism {
				t.Errorf("at most %d items ran at once, want exactly the bound, %d", most, tc.plan.MaxParallelism)
			}
		})
	}
}

// A large fan-out completes, in partitions, with every item counted once
// and in order.
func TestTwentyThousandItems(t *testing.T) {
	if raceDetector {
		t.Skip("make test runs this without the race detector, which slows SQLite twentyfold")
	}
	h := openHub(t, scoreOf)
	start := time.Now()
	_, out := run(t, h, fanout.Plan{Count: 20_000})
	t.Logf("20,000 items in %s", time.Since(start).Round(time.Millisecond))
	if out.Items != 20_000 || len(out.Words) != 20_000 || out.Partitions != 20 {
		t.Fatalf("output: %d items, %d listed, %d partitions; want 20,000 in 20", out.Items, len(out.Words), out.Partitions)
	}
	if out.Words[0] != "w1" || out.Words[19_999] != "w20000" {
		t.Errorf("words out of order: %q … %q", out.Words[0], out.Words[19_999])
	}
}

// Any client may start the orchestration; a plan out of range, or one a
// fan-out cannot run, fails that instance with a message, and the worker
// carries on.
func TestInvalidPlanFailsTheInstance(t *testing.T) {
	e := fanout.New(fanout.Options{Log: zerolog.Nop()})
	spec := tallySpec(scoreOf)
	spec.Generate = func(n int) string {
		if n == 2 {
			panic("no third word")
		}
		return "w"
	}
	if err := fanout.Register(e, spec); err != nil {
		t.Fatal(err)
	}
	h := openEngine(t, e)
	for plan, want := range map[string]string{
		`{"chunks": -1}`:                       "it must be from 0 to",
		`{"count": -5}`:                        "it must be from 0 to",
		`{"partitionSize": 20000, "count": 3}`: "it must be from 0 to",
		`{"count": 3}`:                         "the orchestrator failed: generating item 2: no third word",
	} {
		id, err := h.ScheduleNewOrchestration(context.Background(), "tally_orchestrator", api.WithRawInput(plan))
		if err != nil {
			t.Fatal(err)
		}
		md := waitFor(t, h, id, complete)
		if md.RuntimeStatus != api.RUNTIME_STATUS_FAILED || !strings.Contains(md.FailureDetails.GetErrorMessage(), want) {
			t.Errorf("plan %s: got %v %v, want a failure saying %q", plan, md.RuntimeStatus, md.FailureDetails, want)
		}
	}
	if _, out := run(t, h, fanout.Plan{Count: 2}); out.Items != 2 {
		t.Errorf("after the bad plans, a good one processed %d items", out.Items)
	}
}

// Register refuses a fan-out it could not run, saying why.
func TestRegisterRefusesWhatItCannotRun(t *testing.T) {
	type clash struct {
		Failed int `json:"total_items_failed"`
	}
	e := fanout.New(fanout.Options{})
	err := fanout.Register(e, fanout.Spec[string, int, clash]{Name: "clash", Work: func(context.Context, fanout.Item[string]) (int, error) { return 0, nil },
		Aggregate: fanout.Aggregate[int, clash]{Add: func(c clash, _ int) clash { return c }, Merge: func(a, _ clash) clash { return a }}})
	if err == nil || !strings.Contains(err.Error(), `"total_items_failed", which the engine writes`) {
		t.Errorf("a summary using an engine key: got %v", err)
	}
	err = fanout.Register(e, fanout.Spec[string, int, int]{Name: "plain"})
	for _, want := range []string{"it has no Work", "needs both Add and Merge", "its summary is a int: it must be a struct"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("an empty spec: got %v, want it to say %q", err, want)
		}
	}
	if err := fanout.Register(e, tallySpec(scoreOf)); err != nil {
		t.Fatal(err)
	}
	if err := fanout.Register(e, tallySpec(scoreOf)); err == nil || !strings.Contains(err.Error(), "registered already") {
		t.Errorf("the same name twice: got %v", err)
	}
	if got := e.Names(); !slices.Equal(got, []string{"tally"}) {
		t.Errorf("names: %q", got)
	}
}

// The client checks a start against the fan-out before anything is
// scheduled, and says what is wrong.
func TestStartRefusesBadRequests(t *testing.T) {
	e := fanout.New(fanout.Options{Log: zerolog.Nop(), MaxItems: 3, MaxItemLength: 12})
	spec := tallySpec(scoreOf)
	spec.Generate = nil
	spec.Validate = func(s string) error {
		if strings.ContainsRune(s, '!') {
			return errors.New("no shouting")
		}
		return nil
	}
	if err := fanout.Register(e, spec); err != nil {
		t.Fatal(err)
	}
	h := openEngine(t, e)
	for _, tc := range []struct {
		req  fanout.Request
		want string
	}{
		{fanout.Request{}, "workItems is missing"},
		{fanout.Request{Items: json.RawMessage(`{"a": 1}`)}, "workItems must be an array of strings"},
		{fanout.Request{Items: json.RawMessage(`[{"a": 1}]`)}, "workItems must be an array of strings: workItems[0] is an object"},
		{fanout.Request{Items: json.RawMessage(`[]`)}, "workItems is empty: name at least one item"},
		{fanout.Request{Items: json.RawMessage(`["a", "b", "c", "d"]`)}, "workItems has 4 items: at most 3"},
		{fanout.Request{Items: json.RawMessage(`["a", " "]`)}, "workItems[1] is empty"},
		{fanout.Request{Items: json.RawMessage(`["a", "hello, world!"]`)}, "workItems[1] is 13 characters long: at most 12"},
		{fanout.Request{Items: json.RawMessage(`["a", "hi!"]`)}, "workItems[1]: no shouting"},
		{fanout.Request{Count: 3}, "fan-out tally does not generate items: list them in workItems"},
	} {
		_, err := h.client.Start(context.Background(), "tally", tc.req)
		var refused *fanout.Error
		if !errors.As(err, &refused) || refused.Problem != fanout.Invalid || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %d: got %v, want Invalid saying %q", tc.req.Items, tc.req.Count, err, tc.want)
		}
	}
	if _, err := h.client.Start(context.Background(), "nope", fanout.Request{Items: json.RawMessage(`["a"]`)}); err == nil {
		t.Error("a start of an unknown fan-out was taken")
	}
	if n, err := hubtest.Instances(h.file); err != nil || n != 0 {
		t.Errorf("refused starts scheduled %d instances (%v)", n, err)
	}
}

// Replaying the recorded history must make the orchestrator ask, at every
// step, for exactly what it asked for when the step first ran: the same
// activities and partitions with the same inputs, then the same result.
// durabletask-go matches replayed tasks to history by id alone, so this is
// what catches an orchestrator that is not deterministic. Items finish in
// random order (0 to 5 ms each), which a sliding window must follow.
func TestReplayIsDeterministic(t *testing.T) {
	h := openHub(t, func(ctx context.Context, it fanout.Item[string]) (score, error) {
		time.Sleep(time.Duration(len(it.Value)*7919%6) * time.Millisecond)
		if (it.Value == "w3" || it.Value == "w17") && it.Attempt == 1 {
			return score{}, errors.New("first attempts at w3 and w17 fail")
		}
		return scoreOf(ctx, it)
	})
	items := make([]string, 30)
	for i := range items {
		items[i] = fmt.Sprintf("w%d", i+1)
	}
	for _, tc := range []struct {
		name       string
		plan       fanout.Plan
		partitions int
	}{
		{"all at once", fanout.Plan{Items: raw(items...), Retry: fastRetry}, 0},
		{"window", fanout.Plan{Items: raw(items...), MaxParallelism: 4, Retry: fastRetry}, 0},
		{"partitions", fanout.Plan{Items: raw(items...), PartitionSize: 7, Retry: fastRetry}, 5},
		{"partitions sharing a window", fanout.Plan{Count: 30, PartitionSize: 7, MaxParallelism: 5, Retry: fastRetry}, 5},
		{"aggregations in parts", fanout.Plan{Count: 30, ListBytes: 300, Retry: fastRetry}, 0},
		{"batches", fanout.Plan{Items: raw(items...), Batch: 4, Retry: fastRetry}, 0},
		{"batches in partitions sharing a window", fanout.Plan{Count: 30, Batch: 3, PartitionSize: 7, MaxParallelism: 5, Retry: fastRetry}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, out := run(t, h, tc.plan)
			if out.Items != 30 || out.TotalItemsFailed != 0 {
				t.Errorf("output: %+v, want 30 items, none failed", out)
			}
			CheckReplay(t, h.engine.Registry(), h.file, id)
			for k := range tc.partitions {
				CheckReplay(t, h.engine.Registry(), h.file, api.InstanceID(fanout.PartitionID(string(id), k)))
			}
		})
	}
}

// CheckReplay replays instance id's recorded history step by step.
func CheckReplay(t *testing.T, r *task.TaskRegistry, file string, id api.InstanceID) {
	t.Helper()
	history, err := hubtest.History(file, string(id))
	if err != nil || len(history) == 0 {
		t.Fatalf("history of %s: %d events (%v)", id, len(history), err)
	}
	steps := 0
	// Each step starts with OrchestratorStarted and its new events, followed
	// by what the orchestrator asked for.
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

// The app's settings are bounded as the engine is, and default as it does.
func TestSettingsMatchTheEngine(t *testing.T) {
	for _, c := range []struct {
		name           string
		setting, fixed any
	}{
		{"most items", config.MaxWorkItems, fanout.MaxItems},
		{"largest partition", config.MaxPartitionSize, fanout.MaxPartitionSize},
		{"default partition", config.DefaultPartitionSize, fanout.DefaultPartitionSize},
		{"largest batch", config.MaxItemsPerActivity, fanout.MaxItemsPerActivity},
		{"batch concurrency", config.DefaultBatchConcurrency, fanout.DefaultBatchConcurrency},
		{"most attempts", config.MaxAttempts, fanout.MaxAttempts},
		{"default item timeout", config.DefaultItemTimeout, fanout.DefaultItemTimeout},
		{"default retry", fanout.NewRetryPolicy(config.DefaultMaxAttempts, config.DefaultRetryDelay, config.DefaultRetryBackoff, config.DefaultRetryMaxDelay), fanout.DefaultRetry},
		{"payload bound", config.DefaultMaxPayloadBytes * 3 / 4, fanout.DefaultSummaryBytes},
	} {
		if c.setting != c.fixed {
			t.Errorf("%s: the settings say %v, the engine %v", c.name, c.setting, c.fixed)
		}
	}
}

// A plan that names no partition size, as any client may start, is split
// by the engine's default, never by the worker's own setting: a replay on
// a worker set otherwise must split it alike.
func TestAPlanWithoutPartitionSizeIgnoresTheWorkersSetting(t *testing.T) {
	h := openHub(t, scoreOf, func(o *fanout.Options) { o.PartitionSize = 5 })
	if _, out := run(t, h, fanout.Plan{Count: 12}); out.Items != 12 || out.Partitions != 0 {
		t.Errorf("output: %+v, want 12 items in one orchestration (the default partition size)", out)
	}
	started, err := h.client.Start(context.Background(), "tally", fanout.Request{Count: 12})
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, h, api.InstanceID(started.ID), complete)
	var out output
	json.Unmarshal([]byte(md.SerializedOutput), &out)
	if out.Items != 12 || out.Partitions != 3 {
		t.Errorf("a start through the client: %+v, want its plan to carry the setting, 5: 3 partitions", out)
	}
}
