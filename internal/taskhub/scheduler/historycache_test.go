package scheduler

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/client"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/dtstest"
	"fanoutfanin/internal/taskhub"
)

func TestFieldNumbersAreV060s(t *testing.T) {
	for _, f := range []struct {
		message protoreflect.FullName
		field   protoreflect.Name
		want    protowire.Number
	}{
		{"WorkItem", "orchestratorRequest", fieldWorkItemOrchestrator},
		{"OrchestratorRequest", "pastEvents", fieldOrchestratorPast},
		{"OrchestratorRequest", "newEvents", fieldOrchestratorNew},
	} {
		fd := newMessage(f.message).ProtoReflect().Descriptor().Fields().ByName(f.field)
		if fd == nil || fd.Number() != f.want {
			t.Errorf("%s.%s: %v, want field %d", f.message, f.field, fd, f.want)
		}
	}
}

// A history as an orchestration's steps make it: started, then tasks
// scheduled and completed, each step opening with OrchestratorStarted.
type historyBuilder struct {
	events []*backend.HistoryEvent
	at     time.Time
}

func (h *historyBuilder) add(e *backend.HistoryEvent) *backend.HistoryEvent {
	h.at = h.at.Add(time.Millisecond)
	e.Timestamp = timestamppb.New(h.at)
	h.events = append(h.events, e)
	return e
}

func (h *historyBuilder) started(input string) {
	h.step()
	fieldsOf(h.add(&backend.HistoryEvent{EventId: -1})).mutable("executionStarted").set("name", "chain").
		set("input", wrapperspb.String(input)).mutable("orchestrationInstance").set("instanceId", "i")
}

func (h *historyBuilder) step() {
	fieldsOf(h.add(&backend.HistoryEvent{EventId: -1})).mutable("orchestratorStarted")
}

func (h *historyBuilder) scheduled(id int32) {
	fieldsOf(h.add(&backend.HistoryEvent{EventId: id})).mutable("taskScheduled").set("name", "work").
		set("input", wrapperspb.String(fmt.Sprint(id)))
}

func (h *historyBuilder) completed(id int32) {
	fieldsOf(h.add(&backend.HistoryEvent{EventId: -1})).mutable("taskCompleted").set("taskScheduledId", id).
		set("result", wrapperspb.String(fmt.Sprint(id*10)))
}

// encode splits the history at past as a work item carries it: the past
// events in one region of the request, the new ones after them.
func encode(t *testing.T, events []*backend.HistoryEvent, past int) encodedHistory {
	t.Helper()
	var req []byte
	for i, e := range events {
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		field := fieldOrchestratorPast
		if i >= past {
			field = fieldOrchestratorNew
		}
		req = protowire.AppendBytes(protowire.AppendTag(req, field, protowire.BytesType), b)
	}
	req = protowire.AppendString(protowire.AppendTag(req, 1, protowire.BytesType), "i") // instanceId
	_, h, err := splitRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// streamed is h with its past events one by one, as a streamed history
// has them.
func streamed(t *testing.T, h encodedHistory) encodedHistory {
	t.Helper()
	past := pastEncoded(t, h)
	return encodedHistory{past: past, new: h.new}
}

// pastEncoded is each of h's past events' encoding.
func pastEncoded(t *testing.T, h encodedHistory) [][]byte {
	t.Helper()
	if h.pastRegion == nil {
		return h.past
	}
	past, err := splitRegion(h.pastRegion)
	if err != nil {
		t.Fatal(err)
	}
	return past
}

// checkDecoded checks that past and new are exactly the events h encodes.
func checkDecoded(t *testing.T, h encodedHistory, past, new []*backend.HistoryEvent) {
	t.Helper()
	encodedPast := pastEncoded(t, h)
	if len(past) != len(encodedPast) || len(new) != len(h.new) {
		t.Fatalf("decoded %d past and %d new events, want %d and %d", len(past), len(new), len(encodedPast), len(h.new))
	}
	for i, e := range append(append([]*backend.HistoryEvent(nil), past...), new...) {
		want := &backend.HistoryEvent{}
		if err := proto.Unmarshal(append(append([][]byte(nil), encodedPast...), h.new...)[i], want); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(e, want) {
			t.Errorf("event %d: %v, want %v", i, e, want)
		}
	}
}

// Each step's history is the last one's and a few events more: those
// already decoded are taken as they are, and only the new ones decoded.
// The past events that came as the last step's past come again first, in
// the same bytes, and are not even read one by one.
func TestHistoryCacheDecodesEachEventOnce(t *testing.T) {
	for _, way := range []struct {
		name string
		as   func(*testing.T, encodedHistory) encodedHistory
	}{
		{"in a work item", func(_ *testing.T, h encodedHistory) encodedHistory { return h }},
		{"streamed", streamed},
	} {
		t.Run(way.name, func(t *testing.T) {
			c := newHistoryCache(historyCacheBytes)
			var h historyBuilder
			h.started(`"a"`)
			h.scheduled(0)
			h.scheduled(1)
			first := way.as(t, encode(t, h.events, 0))
			past1, new1, err := c.decode("i", first)
			if err != nil {
				t.Fatal(err)
			}
			checkDecoded(t, first, past1, new1)

			before := len(h.events)
			h.step()
			h.completed(0)
			second := way.as(t, encode(t, h.events, before))
			past2, new2, err := c.decode("i", second)
			if err != nil {
				t.Fatal(err)
			}
			checkDecoded(t, second, past2, new2)
			for i := range past2 {
				if past2[i] != new1[i] {
					t.Errorf("event %d was decoded again, although the step before had it", i)
				}
			}
			if got, want := c.decoded, uint64(before+2); got != want {
				t.Errorf("events decoded in two steps: %d, want %d (each event once)", got, want)
			}

			pastThird := len(h.events)
			h.step()
			third := way.as(t, encode(t, h.events, pastThird))
			readBefore := c.read
			past3, new3, err := c.decode("i", third)
			if err != nil {
				t.Fatal(err)
			}
			checkDecoded(t, third, past3, new3)
			wantRead := uint64(len(h.events)) // streamed: every event
			if third.pastRegion != nil {
				wantRead = uint64(len(second.new) + len(third.new)) // the last step's past is not read again
			}
			if got := c.read - readBefore; got != wantRead {
				t.Errorf("events read one by one in the third step: %d, want %d", got, wantRead)
			}
			if got, want := c.decoded, uint64(len(h.events)); got != want {
				t.Errorf("events decoded in three steps: %d, want %d (each event once)", got, want)
			}

			// Another instance's history shares nothing with this one's.
			if _, _, err := c.decode("other", second); err != nil {
				t.Fatal(err)
			}
			if got, want := c.decoded, uint64(len(h.events)+before+2); got != want {
				t.Errorf("events decoded after another instance's step: %d, want %d", got, want)
			}
		})
	}
}

// The work item decides what is replayed, whatever the cache holds: a step
// taken by another worker in between, an instance started again under the
// same id, a work item with fewer events than the last, a history
// streamed.
func TestHistoryCacheFollowsTheWorkItem(t *testing.T) {
	var h historyBuilder
	h.started(`"a"`)
	h.scheduled(0)
	h.scheduled(1)
	mine := encode(t, h.events, 0)

	// Another worker's step: task 0 completed, task 2 scheduled. Then ours.
	h.step()
	h.completed(0)
	h.scheduled(2)
	past := len(h.events)
	h.step()
	h.completed(1)
	afterOther := encode(t, h.events, past)

	// The instance purged and started again, with other input and times.
	var again historyBuilder
	again.at = time.Unix(1e9, 0)
	again.started(`"b"`)
	again.scheduled(0)
	restarted := encode(t, again.events, 1)

	for _, tc := range []struct {
		name       string
		steps      []encodedHistory
		wantReused int // of the last step's events
	}{
		{"another worker took a step in between", []encodedHistory{mine, afterOther}, len(mine.new)},
		{"started again under the same id", []encodedHistory{afterOther, restarted}, 0},
		// Rare (a work item delivered again after a later one): decoded
		// afresh, as the cache has the events it shares only as a region.
		{"fewer events than the last step", []encodedHistory{afterOther, mine}, 0},
		{"streamed after a work item", []encodedHistory{mine, streamed(t, afterOther)}, len(mine.new)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newHistoryCache(historyCacheBytes)
			var total uint64
			for _, step := range tc.steps {
				past, new, err := c.decode("i", step)
				if err != nil {
					t.Fatal(err)
				}
				checkDecoded(t, step, past, new)
				total += uint64(len(pastEncoded(t, step)) + len(step.new))
			}
			if got := int(c.hits); got != tc.wantReused {
				t.Errorf("events reused: %d, want %d", got, tc.wantReused)
			}
			if c.hits+c.decoded != total {
				t.Errorf("events reused %d + decoded %d, want %d in all", c.hits, c.decoded, total)
			}
		})
	}
}

// The cache holds no more than its bound, and forgets finished histories.
func TestHistoryCacheIsBounded(t *testing.T) {
	var h historyBuilder
	h.started(`"a"`)
	for i := range int32(10) {
		h.scheduled(i)
	}
	step := encode(t, h.events, 0)
	size := 0
	for _, b := range step.new {
		size += len(b)
	}
	c := newHistoryCache(2 * size)
	for _, id := range []api.InstanceID{"a", "b", "a", "c"} {
		if _, _, err := c.decode(id, step); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := c.entries["c"]; !ok || len(c.entries) != 2 || c.bytes != 2*size {
		t.Errorf("kept %d histories (c: %t) in %d bytes, want c and one other in %d", len(c.entries), ok, c.bytes, 2*size)
	}
	c.forget("c")
	if _, ok := c.entries["c"]; ok || c.bytes != size {
		t.Errorf("c still kept after forget, or %d bytes held, want %d", c.bytes, size)
	}
	small := newHistoryCache(size - 1)
	if _, _, err := small.decode("a", step); err != nil || len(small.entries) != 0 || small.bytes != 0 {
		t.Errorf("a history larger than the bound was kept (%v)", err)
	}
}

// sidecarWorker runs a worker with registry r against the sidecar at addr
// until the test ends.
func sidecarWorker(t *testing.T, addr string, r *task.TaskRegistry) *grpcWorker {
	t.Helper()
	s := &config.Scheduler{Endpoint: "http://" + addr, Host: "127.0.0.1", Address: addr, Auth: config.AuthNone}
	conn, err := dial(s, nil, "taskhub", "test", "x-user-agent", userAgent(roleWorker), "workerid", newWorkerID())
	if err != nil {
		t.Fatal(err)
	}
	work, stopWork := context.WithCancel(context.Background())
	exec := taskhub.NewExecutor(task.NewTaskExecutor(r), zerolog.Nop(), work, nil, nil)
	w := newGRPCWorker(conn, exec, stopWork, zerolog.Nop(), config.TaskHub{Name: "test", Scheduler: s, MaxConcurrentOrchestrations: 2, MaxConcurrentActivities: 2, MaxPayloadBytes: config.DefaultMaxPayloadBytes, MaxStepBytes: config.DefaultMaxStepBytes})
	w.start()
	t.Cleanup(func() {
		w.stop(context.Background())
		conn.Close()
	})
	return w
}

// chain runs steps activities one after another, each adding to the last
// one's result: every step replays the whole history, and a step replayed
// from a wrong history gives a wrong sum or fails. Each step also runs a
// second activity that adds nothing, so that a backend handing out work
// items to its streams in turn gives a worker orchestrator steps and
// activities in turn, not only one kind.
func chainRegistry(steps int) *task.TaskRegistry {
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("chain", func(ctx *task.OrchestrationContext) (any, error) {
		sum := 0
		for i := range steps {
			next := ctx.CallActivity("add", task.WithActivityInput([2]int{sum, i}))
			zero := ctx.CallActivity("add", task.WithActivityInput([2]int{0, 0}))
			if err := errors.Join(next.Await(&sum), zero.Await(nil)); err != nil {
				return nil, err
			}
		}
		return sum, nil
	})
	r.AddActivityN("add", func(ctx task.ActivityContext) (any, error) {
		var in [2]int
		if err := ctx.GetInput(&in); err != nil {
			return nil, err
		}
		return in[0] + in[1], nil
	})
	return r
}

// runChain runs the chain orchestration on the sidecar at addr and checks
// its result.
func runChain(t *testing.T, addr string, steps int) {
	t.Helper()
	s := &config.Scheduler{Endpoint: "http://" + addr, Host: "127.0.0.1", Address: addr, Auth: config.AuthNone}
	conn, err := dial(s, nil, "taskhub", "test")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := client.NewTaskHubGrpcClient(conn, backend.DefaultLogger())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id, err := c.ScheduleNewOrchestration(ctx, "chain")
	if err != nil {
		t.Fatal(err)
	}
	md, err := c.WaitForOrchestrationCompletion(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.SerializedOutput, fmt.Sprint(steps*(steps-1)/2); md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || got != want {
		t.Fatalf("chain of %d: %v with output %s (%v), want completed with %s", steps, md.RuntimeStatus, got, md.FailureDetails, want)
	}
}

// On the upstream sidecar, which sends every step the whole history, the
// worker decodes each event about once, not once a step.
func TestWorkerDecodesEachHistoryEventOnce(t *testing.T) {
	const steps = 20
	addr, _ := dtstest.StartSidecar(t, 0, filepath.Join(t.TempDir(), "sidecar.sqlite"))
	w := sidecarWorker(t, addr, chainRegistry(steps))
	runChain(t, addr, steps)

	w.history.mu.Lock()
	defer w.history.mu.Unlock()
	t.Logf("history events reused %d, decoded %d, read one by one %d", w.history.hits, w.history.decoded, w.history.read)
	// Each step adds some 5 events (OrchestratorStarted, two TaskScheduled,
	// two TaskCompleted) to the history: decoded at every step, that would
	// be some 5 × steps²/2 decodings.
	if w.history.decoded > 8*steps || w.history.hits < 2*steps*steps {
		t.Errorf("events decoded %d, reused %d; want each of the some %d events decoded about once", w.history.decoded, w.history.hits, 5*steps)
	}
	// And read: a step reads its new events, and the last step's, which
	// now are past events, but not the past events of the last step.
	if w.history.read > 16*steps {
		t.Errorf("events read one by one: %d; want each of the some %d events read about twice", w.history.read, 5*steps)
	}
	if len(w.history.entries) != 0 {
		t.Errorf("the finished orchestration's history is still kept")
	}
}

// Two workers on one sidecar take the steps of one orchestration in turns,
// so each one's cache misses the steps the other took: the orchestration
// still completes with the right result.
func TestHistoryCacheWithStepsTakenByAnotherWorker(t *testing.T) {
	const steps = 30
	addr, _ := dtstest.StartSidecar(t, 0, filepath.Join(t.TempDir(), "sidecar.sqlite"))
	a := sidecarWorker(t, addr, chainRegistry(steps))
	b := sidecarWorker(t, addr, chainRegistry(steps))
	runChain(t, addr, steps)

	for name, w := range map[string]*grpcWorker{"a": a, "b": b} {
		w.history.mu.Lock()
		hits, decoded := w.history.hits, w.history.decoded
		w.history.mu.Unlock()
		t.Logf("worker %s: history events reused %d, decoded %d", name, hits, decoded)
		if hits+decoded == 0 {
			t.Errorf("worker %s took no orchestrator step; the test needs both to", name)
		}
	}
}
