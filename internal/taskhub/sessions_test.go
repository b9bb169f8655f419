package taskhub

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// event is a history event of kind at, set as set says.
func event(id int32, at time.Time, kind string, set func(protoreflect.Message)) *backend.HistoryEvent {
	e := &backend.HistoryEvent{EventId: id, Timestamp: timestamppb.New(at)}
	m := e.ProtoReflect()
	sub := m.Mutable(m.Descriptor().Fields().ByName(protoreflect.Name(kind))).Message()
	if set != nil {
		set(sub)
	}
	return e
}

func named(name string) func(protoreflect.Message) {
	return func(m protoreflect.Message) {
		m.Set(m.Descriptor().Fields().ByName("name"), protoreflect.ValueOfString(name))
	}
}

func ofTask(id int32) func(protoreflect.Message) {
	return func(m protoreflect.Message) {
		m.Set(m.Descriptor().Fields().ByName("taskScheduledId"), protoreflect.ValueOfInt32(id))
	}
}

// waits is an orchestrator of this test's own: three activities one after
// the other, then a timer, parking as the engine does: its progress set
// before each Park, and when it ends.
func waits(s *Sessions) task.Orchestrator {
	return func(ctx *task.OrchestrationContext) (any, error) {
		wait := func(t task.Task, status string) {
			for {
				if done, _ := Completed(t); done {
					return
				}
				if blocked(t) {
					ctx.SetCustomStatus(status)
					s.Park(ctx)
				}
			}
		}
		for i := range 3 {
			wait(ctx.CallActivity("a"), fmt.Sprint(i, " done"))
		}
		wait(ctx.CreateTimer(time.Second), "waiting")
		ctx.SetCustomStatus("finished")
		return "done", nil
	}
}

// blocked reports whether t is not done once the history is read to its
// end, as the engine's finished does.
func blocked(t task.Task) (yes bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != task.ErrTaskBlocked {
				panic(p)
			}
			yes = true
		}
	}()
	t.Await(nil)
	return false
}

// history builds the steps of one instance of waits.
type history struct {
	t0        time.Time
	old, last []*backend.HistoryEvent
	n         int
}

func newHistory(t0 time.Time) *history {
	h := &history{t0: t0}
	h.last = []*backend.HistoryEvent{event(-1, t0, "orchestratorStarted", nil), event(-1, t0, "executionStarted", named("o"))}
	return h
}

// next makes the next step's new events: the last step's become past,
// with what recorded its actions, and the step brings extra.
func (h *history) next(recorded []*backend.HistoryEvent, extra ...*backend.HistoryEvent) {
	h.old = append(append(append([]*backend.HistoryEvent(nil), h.old...), h.last...), recorded...)
	h.n++
	h.last = append([]*backend.HistoryEvent{event(-1, h.at(), "orchestratorStarted", nil)}, extra...)
}

func (h *history) at() time.Time { return h.t0.Add(time.Duration(h.n) * time.Second) }

// Each step that a kept orchestration takes makes the response a full
// replay of its history makes, custom status included: through
// completions, a suspension, a resumption and a termination.
func TestSessionStepsMatchAFullReplay(t *testing.T) {
	for _, tc := range []struct {
		name string
		ends string // how it ends: "done", or the last event's kind
	}{
		{"completes", "done"},
		{"suspended, resumed", "executionResumed"},
		{"suspended, terminated", "executionTerminated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSessions(4)
			defer s.Close()
			r := task.NewTaskRegistry()
			r.AddOrchestratorN("o", waits(s))
			kept := NewExecutor(task.NewTaskExecutor(r), zerolog.Nop(), context.Background(), nil, s)
			cold := NewExecutor(task.NewTaskExecutor(r), zerolog.Nop(), context.Background(), nil, nil)

			h := newHistory(time.Unix(1000, 0))
			steps := []func(){
				func() { h.next([]*backend.HistoryEvent{event(0, h.at(), "taskScheduled", named("a"))}) },
				func() {
					h.next(nil, event(-1, h.at(), "taskCompleted", ofTask(0)))
				},
			}
			if tc.ends != "done" {
				steps = append(steps,
					func() {
						h.next([]*backend.HistoryEvent{event(1, h.at(), "taskScheduled", named("a"))}, event(-1, h.at(), "executionSuspended", nil))
					},
					func() { h.next(nil, event(-1, h.at(), "taskCompleted", ofTask(1))) },
					func() { h.next(nil, event(-1, h.at(), tc.ends, nil)) })
			} else {
				steps = append(steps,
					func() {
						h.next([]*backend.HistoryEvent{event(1, h.at(), "taskScheduled", named("a"))}, event(-1, h.at(), "taskCompleted", ofTask(1)))
					},
					func() {
						h.next([]*backend.HistoryEvent{event(2, h.at(), "taskScheduled", named("a"))}, event(-1, h.at(), "taskCompleted", ofTask(2)))
					},
					func() {
						h.next([]*backend.HistoryEvent{event(3, h.at(), "timerCreated", nil)}, event(-1, h.at(), "timerFired", func(m protoreflect.Message) {
							m.Set(m.Descriptor().Fields().ByName("timerId"), protoreflect.ValueOfInt32(3))
						}))
					})
			}
			for i := -1; i < len(steps); i++ {
				if i >= 0 {
					steps[i]()
				}
				got, err := kept.ExecuteOrchestrator(context.Background(), "i", h.old, h.last)
				if err != nil {
					t.Fatalf("step %d: %v", i+1, err)
				}
				want, err := cold.ExecuteOrchestrator(context.Background(), "i", h.old, h.last)
				if err != nil {
					t.Fatalf("step %d, replayed: %v", i+1, err)
				}
				if !proto.Equal(got.Response, want.Response) {
					t.Fatalf("step %d: kept, the orchestration made\n%v\nreplayed, it makes\n%v", i+1, got.Response, want.Response)
				}
			}
			if st := s.Stats(); st.Resumed != uint64(len(steps)) {
				t.Errorf("%d of %d steps resumed, want all but the first", st.Resumed, st.Steps)
			}
		})
	}
}

// A history that does not begin with what the orchestration read (the
// instance started again under its id) is replayed in full.
func TestSessionReplaysAnotherExecution(t *testing.T) {
	s := NewSessions(4)
	defer s.Close()
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("o", waits(s))
	x := NewExecutor(task.NewTaskExecutor(r), zerolog.Nop(), context.Background(), nil, s)
	first := newHistory(time.Unix(1000, 0))
	if _, err := x.ExecuteOrchestrator(context.Background(), "i", first.old, first.last); err != nil {
		t.Fatal(err)
	}
	again := newHistory(time.Unix(2000, 0))
	again.next([]*backend.HistoryEvent{event(0, again.at(), "taskScheduled", named("a"))}, event(-1, again.at(), "taskCompleted", ofTask(0)))
	res, err := x.ExecuteOrchestrator(context.Background(), "i", again.old, again.last)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Resumed != 0 {
		t.Errorf("%d steps resumed, want none: the second history is another execution's", st.Resumed)
	}
	if got := res.Response.GetCustomStatus().GetValue(); got != "1 done" {
		t.Errorf("custom status %q, want %q", got, "1 done")
	}
}

// Steps of many instances, each delivered twice at once and more kept
// than the bound allows, make what a full replay makes; once the worker
// stops, no orchestration's goroutine is left, finished or not.
func TestSessionsUnderDuplicatesAndEviction(t *testing.T) {
	s := NewSessions(3)
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("o", waits(s))
	x := NewExecutor(task.NewTaskExecutor(r), zerolog.Nop(), context.Background(), nil, s)
	cold := NewExecutor(task.NewTaskExecutor(r), zerolog.Nop(), context.Background(), nil, nil)
	var wg sync.WaitGroup
	for k := range 8 {
		wg.Go(func() {
			id := api.InstanceID(fmt.Sprint("i", k))
			h := newHistory(time.Unix(1000, 0))
			for step := 0; ; step++ {
				var twice *backend.ExecutionResults
				var twiceErr error
				var dup sync.WaitGroup
				dup.Go(func() { twice, twiceErr = x.ExecuteOrchestrator(context.Background(), id, h.old, h.last) })
				once, err := x.ExecuteOrchestrator(context.Background(), id, h.old, h.last)
				dup.Wait()
				want, _ := cold.ExecuteOrchestrator(context.Background(), id, h.old, h.last)
				if err != nil || twiceErr != nil {
					t.Errorf("%s step %d: %v, %v", id, step, err, twiceErr)
					return
				}
				for _, got := range []*backend.ExecutionResults{once, twice} {
					if !proto.Equal(got.Response, want.Response) {
						t.Errorf("%s step %d: got\n%v\nwant\n%v", id, step, got.Response, want.Response)
						return
					}
				}
				if _, _, ends := Ending(once); ends || (k%2 == 1 && step == 2) {
					return // odd instances stay unfinished, kept if not evicted
				}
				switch {
				case step < 3:
					h.next([]*backend.HistoryEvent{event(int32(step), h.at(), "taskScheduled", named("a"))}, event(-1, h.at(), "taskCompleted", ofTask(int32(step))))
				default:
					h.next([]*backend.HistoryEvent{event(3, h.at(), "timerCreated", nil)}, event(-1, h.at(), "timerFired", func(m protoreflect.Message) {
						m.Set(m.Descriptor().Fields().ByName("timerId"), protoreflect.ValueOfInt32(3))
					}))
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%+v", s.Stats())
	if st := s.Stats(); st.Resumed == 0 {
		t.Error("no step resumed")
	}
	s.Close()
	deadline := time.Now().Add(5 * time.Second)
	for sessionGoroutines() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := sessionGoroutines(); n > 0 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d orchestrations' goroutines left after Close\n%s", n, buf[:runtime.Stack(buf, true)])
	}
}

// sessionGoroutines counts the goroutines that run a session.
func sessionGoroutines() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "taskhub.(*session).run(")
}
