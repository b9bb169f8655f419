package scheduler_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/hubtest"
	"fanoutfanin/internal/taskhub/scheduler"
)

// doubled is a fan-out of these tests' own: each item n yields 2n, unless
// fails says its attempt fails.
type doubled struct {
	Sum   int `json:"sum"`
	Count int `json:"count"`
}

func doubledEngine(t *testing.T, fails func(n, attempt int) bool) *fanout.Engine {
	t.Helper()
	e := fanout.New(fanout.Options{Log: zerolog.Nop(), PartitionSize: 1000,
		Retry: &fanout.RetryPolicy{MaxAttempts: 3, FirstDelayMs: 1, Backoff: 2, MaxDelayMs: 4}})
	err := fanout.Register(e, fanout.Spec[int, int, doubled]{
		Name: "doubled",
		Work: func(_ context.Context, it fanout.Item[int]) (int, error) {
			if fails(it.Value, it.Attempt) {
				return 0, fmt.Errorf("item %d failed attempt %d on purpose", it.Value, it.Attempt)
			}
			return 2 * it.Value, nil
		},
		Aggregate: fanout.Aggregate[int, doubled]{
			Add:   func(s doubled, r int) doubled { return doubled{s.Sum + r, s.Count + 1} },
			Merge: func(a, b doubled) doubled { return doubled{a.Sum + b.Sum, a.Count + b.Count} },
		},
		Generate: func(n int) int { return n },
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// step is one orchestrator step a worker ran: the history it was given and
// the response it made.
type step struct {
	id       api.InstanceID
	old, new []*backend.HistoryEvent
	response proto.Message
}

// recorder keeps every orchestrator step the worker runs.
type recorder struct {
	backend.Executor
	mu    sync.Mutex
	steps []step
}

func (r *recorder) ExecuteOrchestrator(ctx context.Context, id api.InstanceID, old, new []*backend.HistoryEvent) (*backend.ExecutionResults, error) {
	res, err := r.Executor.ExecuteOrchestrator(ctx, id, old, new)
	if err == nil {
		r.mu.Lock()
		r.steps = append(r.steps, step{id, old, new, canonical(res.Response)})
		r.mu.Unlock()
	}
	return res, err
}

// canonical is a copy of an orchestrator response with its actions in
// order: v0.6.0 makes them in a map's order.
func canonical(res proto.Message) proto.Message {
	c := proto.Clone(res)
	m := c.ProtoReflect()
	list := m.Mutable(m.Descriptor().Fields().ByName("actions")).List()
	var actions []protoreflect.Value
	for i := range list.Len() {
		actions = append(actions, list.Get(i))
	}
	id := func(v protoreflect.Value) int64 {
		a := v.Message()
		return a.Get(a.Descriptor().Fields().ByName("id")).Int()
	}
	slices.SortFunc(actions, func(a, b protoreflect.Value) int { return cmp.Compare(id(a), id(b)) })
	list.Truncate(0)
	for _, a := range actions {
		list.Append(a)
	}
	return c
}

// A worker keeps its orchestrations between their steps: a step of a
// 1,000-item partition reads its new events, not the whole history. The
// worker is replaced halfway, as after a restart; the new one replays each
// history once, then keeps it too. Every step, kept or not, made exactly
// the response a full replay of its history makes.
func TestWorkerKeepsOrchestrationsBetweenSteps(t *testing.T) {
	cfg := onSidecar(t)
	rec := &recorder{}
	open := func(e *fanout.Engine) *taskhub.Hub {
		hub, err := scheduler.OpenWith(cfg, e.Registry(), e.Sessions(), func(x backend.Executor) backend.Executor {
			rec.Executor = x
			return rec
		})
		if err != nil {
			t.Fatal(err)
		}
		return hub
	}
	// Item 999 always fails, and every 250th from 7 fails its first attempt.
	fails := func(n, attempt int) bool { return n == 999 || (n%250 == 7 && attempt == 1) }
	first, second := doubledEngine(t, fails), doubledEngine(t, fails)
	hub := open(first)
	client := first.Client(hub.Client, hub.Bounds)
	const items = 1500
	started, err := client.Start(context.Background(), "doubled", fanout.Request{Count: items})
	if err != nil {
		t.Fatal(err)
	}

	// Replace the worker once the first partition is under way.
	p0 := fanout.PartitionID(started.ID, 0)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		md, err := hub.Client.FetchOrchestrationMetadata(context.Background(), api.InstanceID(p0))
		if err == nil {
			var p fanout.Progress
			if json.Unmarshal([]byte(md.SerializedCustomStatus), &p) == nil && p.Completed >= 300 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the first partition did not get under way")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := hub.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	before := len(rec.steps)
	rec.mu.Unlock()
	hub = open(second)
	defer hub.Close(context.Background())

	md := waitComplete(t, hub.Client, api.InstanceID(started.ID))
	var out struct {
		doubled
		Failed int `json:"total_items_failed"`
	}
	if err := json.Unmarshal([]byte(md.SerializedOutput), &out); err != nil {
		t.Fatal(err)
	}
	if want := items*(items-1) - 2*999; out.Sum != want || out.Count != items-1 || out.Failed != 1 {
		t.Fatalf("output %s: want sum %d of %d items, 1 failed", md.SerializedOutput, want, items-1)
	}

	// Each worker resumed most of its steps, and read each event about
	// once: a full replay per step reads hundreds of times as many.
	for name, st := range map[string]taskhub.SessionStats{"first": first.Sessions().Stats(), "second": second.Sessions().Stats()} {
		t.Logf("%s worker: %d steps, %d resumed, %d events read", name, st.Steps, st.Resumed, st.Events)
		if st.Steps == 0 || st.Resumed*10 < st.Steps*8 {
			t.Errorf("%s worker resumed %d of %d steps, want most", name, st.Resumed, st.Steps)
		}
		if st.Events > 10*items {
			t.Errorf("%s worker read %d history events for %d items: steps replay their histories", name, st.Events, items)
		}
	}
	if before == 0 || len(rec.steps) == before {
		t.Fatalf("%d steps before the restart, %d after: want both", before, len(rec.steps)-before)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	checkReplays(t, first, rec.steps)
}

// checkReplays checks that a full replay of each step's history makes the
// response the worker made, custom status included.
func checkReplays(t *testing.T, e *fanout.Engine, steps []step) {
	t.Helper()
	cold := taskhub.NewExecutor(task.NewTaskExecutor(e.Registry()), zerolog.Nop(), context.Background(), nil, nil)
	for i, s := range steps {
		res, err := cold.ExecuteOrchestrator(context.Background(), s.id, s.old, s.new)
		if err != nil {
			t.Fatalf("step %d of %s: replay: %v", i, s.id, err)
		}
		if got := canonical(res.Response); !proto.Equal(got, s.response) {
			t.Fatalf("step %d of %s (%d+%d events): the worker sent\n%v\na full replay makes\n%v", i, s.id, len(s.old), len(s.new), s.response, got)
		}
	}
}

// Steps that end early to keep a step's message small (partitions started
// over several steps) set the same progress kept or replayed.
func TestKeptStepsThatStartPartitionsInPartsMatchAFullReplay(t *testing.T) {
	rec := &recorder{}
	e := doubledEngine(t, func(int, int) bool { return false })
	hub, err := scheduler.OpenWith(onSidecar(t), e.Registry(), e.Sessions(), func(x backend.Executor) backend.Executor {
		rec.Executor = x
		return rec
	})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(context.Background())
	items := make([]json.RawMessage, 120)
	for i := range items {
		items[i] = json.RawMessage(fmt.Sprint(i))
	}
	// Each partition's input is some 60 bytes: three partitions a step.
	id, err := hub.Client.ScheduleNewOrchestration(context.Background(), "doubled_orchestrator",
		api.WithInput(fanout.Plan{Items: items, PartitionSize: 5, MaxParallelism: 12, StepBytes: 200}))
	if err != nil {
		t.Fatal(err)
	}
	waitComplete(t, hub.Client, id)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	pauses := 0
	for _, s := range rec.steps {
		if s.id == id && strings.Contains(prototext.Format(s.response), "createTimer") {
			pauses++
		}
	}
	if pauses < 3 {
		t.Fatalf("%d steps of the fan-out ended early to start partitions later, want several", pauses)
	}
	checkReplays(t, e, rec.steps)
}

// waitComplete waits for an instance to complete and returns it.
func waitComplete(t *testing.T, c taskhub.Client, id api.InstanceID) *api.OrchestrationMetadata {
	t.Helper()
	md := hubtest.Wait(t, c, id, 3*time.Minute, nil)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("instance %s: %v: %v", id, md.RuntimeStatus, md.FailureDetails)
	}
	return md
}
