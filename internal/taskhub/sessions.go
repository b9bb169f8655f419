package taskhub

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/protobuf/proto"
)

// DefaultSessions is how many orchestrations a worker keeps running between
// their steps. A partition of 1,000 items holds some hundreds of kB while it
// waits.
const DefaultSessions = 64

// Sessions keeps orchestrations running between their steps, so that a step
// costs what its new events cost, not a replay of the whole history: what
// Durable Functions calls extended sessions and Temporal a sticky cache.
//
// durabletask-go v0.6.0 runs an orchestrator from its start at every step:
// an Await that finds no more history ends the step by panicking. An
// orchestrator that calls Park instead of such an Await stays where it is,
// in its goroutine, until the next step of the same history arrives; the
// next step then feeds it only the events it has not seen, through v0.6.0's
// own event handling. A step whose history does not extend what the
// orchestrator has seen (another execution; a worker that lost it), or that
// arrives while it is still busy, replays in full, as v0.6.0 would: so
// whatever the cache holds, an orchestrator sees exactly the history the
// step carries, and produces exactly the actions a full replay would. Its
// custom status is the last it set, which is a full replay's too if every
// step ends with a status set since its last Park, or by code that every
// replay runs: the engine sets its progress before each Park, and once all
// its tasks have finished.
//
// The Sessions a worker runs in must be those its orchestrators Park on,
// and serve that worker alone: after Close, they keep nothing. Nil Sessions
// keep nothing: Park blocks as Await does.
type Sessions struct {
	max int

	mu     sync.Mutex
	byID   map[api.InstanceID]*session
	closed bool

	steps, resumed, events atomic.Uint64
}

// NewSessions keeps at most max orchestrations between steps.
func NewSessions(max int) *Sessions {
	return &Sessions{max: max, byID: make(map[api.InstanceID]*session)}
}

// SessionStats count a worker's orchestrator steps: how many resumed an
// orchestration kept waiting, and how many history events the
// orchestrators processed in all (a full replay processes every event of
// the history; a resumed step only the new ones).
type SessionStats struct{ Steps, Resumed, Events uint64 }

// Stats returns the counts so far.
func (s *Sessions) Stats() SessionStats {
	return SessionStats{Steps: s.steps.Load(), Resumed: s.resumed.Load(), Events: s.events.Load()}
}

// session is one orchestration kept between steps: the goroutine running
// it waits in Park.
type session struct {
	id  api.InstanceID
	ctx *task.OrchestrationContext // its context, known from its first Park
	// The history the orchestration has processed: the last step's.
	old, new []*backend.HistoryEvent
	resume   chan bool    // true: the context has more events; false: stop
	out      chan outcome // what a step came to
	// Running a step, or waiting in Park. The fields change under
	// Sessions.mu, or while busy, by the step's executor alone.
	busy, parked bool
}

// outcome is where a session's step ended: parked, or with the
// orchestrator's results or failure.
type outcome struct {
	parked bool
	res    *backend.ExecutionResults
	err    error
}

// Park ends the orchestrator's step, as an Await of a task that is not
// done would: call it only when the history has no more events (an Await
// of the task the orchestrator waits for has just reported it blocked),
// and after setting the custom status, if the orchestrator sets one (see
// Sessions).
// When ctx's orchestration runs in a session, Park returns once the next
// step's events are in ctx, and the orchestrator goes on reading them;
// otherwise, or when the session is stopped, it panics with
// task.ErrTaskBlocked, as v0.6.0's Await does: a stopped session's step
// ends, and no one waits for its results.
func (s *Sessions) Park(ctx *task.OrchestrationContext) {
	se := s.sessionOf(ctx)
	if se == nil {
		panic(task.ErrTaskBlocked)
	}
	se.out <- outcome{parked: true}
	if !<-se.resume {
		panic(task.ErrTaskBlocked)
	}
}

// sessionOf is the session that runs ctx, if any.
func (s *Sessions) sessionOf(ctx *task.OrchestrationContext) *session {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.byID[ctx.ID]
	if se == nil || !se.busy {
		return nil
	}
	if se.ctx == nil {
		// Its first Park: ctx is the session's if it reads the very events
		// the session gave its executor, not another run's of the same
		// instance.
		if _, new := contextEvents(ctx); unsafe.SliceData(*new) != unsafe.SliceData(se.new) {
			return nil
		}
		se.ctx = ctx
	}
	if se.ctx != ctx {
		return nil
	}
	return se
}

// execute runs one step of instance id with exec (v0.6.0's executor): in
// its session if the history extends the session's, else in a new one.
func (s *Sessions) execute(exec backend.Executor, id api.InstanceID, old, new []*backend.HistoryEvent) (*backend.ExecutionResults, error) {
	s.steps.Add(1)
	s.mu.Lock()
	se := s.byID[id]
	if se != nil && se.busy {
		// Another step of the same instance is running (a redelivered work
		// item): this one replays on its own.
		s.mu.Unlock()
		s.events.Add(uint64(len(old) + len(new)))
		return exec.ExecuteOrchestrator(context.Background(), id, old, new)
	}
	if se != nil {
		se.busy = true // this step's: no one else touches it now
	}
	s.mu.Unlock()

	resume := se != nil && se.extendedBy(old, new)
	s.mu.Lock()
	if se != nil && !resume {
		s.stop(se)
		se = nil
	}
	if se == nil {
		se = &session{id: id, resume: make(chan bool, 1), out: make(chan outcome, 1)}
		s.add(se)
	}
	se.busy = true
	if resume {
		s.resumed.Add(1)
		s.events.Add(uint64(len(old) + len(new) - se.seen()))
		setContextEvents(se.ctx, old, new)
		se.old, se.new = old, new
		se.parked = false
	} else {
		s.events.Add(uint64(len(old) + len(new)))
		// new in an array of the session's own (never empty, so never
		// shared): how Park knows its context.
		se.old, se.new = old, append(make([]*backend.HistoryEvent, 0, len(new)+1), new...)
	}
	s.mu.Unlock()

	if resume {
		se.resume <- true
	} else {
		go se.run(exec)
	}
	o := <-se.out

	// Read while the session is busy and its goroutine waits: no one else
	// reads or resumes it.
	var res *backend.ExecutionResults
	complete := o.parked && contextIndex(se.ctx) == se.seen()
	if complete {
		res = results(id, se.ctx)
	}
	s.mu.Lock()
	se.busy = false
	switch {
	case !o.parked:
		// The orchestrator returned, or failed: its goroutine has ended.
		s.drop(se)
		s.mu.Unlock()
		return o.res, o.err
	case !complete:
		// Parked before reading every event, which is no step's end: a
		// full replay says where the step ends.
		se.parked = true
		s.stop(se)
		s.mu.Unlock()
		s.events.Add(uint64(len(old) + len(new)))
		return exec.ExecuteOrchestrator(context.Background(), id, old, new)
	}
	se.parked = true
	if s.closed {
		s.stop(se) // the worker stopped while this step ran
	}
	s.mu.Unlock()
	return res, nil
}

// run runs the session's first step, then its later ones as Park lets
// them in, until the orchestrator returns or is stopped. out has room for
// the last outcome even when no one reads it.
func (se *session) run(exec backend.Executor) {
	defer func() {
		if p := recover(); p != nil {
			se.out <- outcome{err: fmt.Errorf("orchestrator panicked: %v", p)}
		}
	}()
	res, err := exec.ExecuteOrchestrator(context.Background(), se.id, se.old, se.new)
	se.out <- outcome{res: res, err: err}
}

// seen is how many events the session's orchestration has read.
func (se *session) seen() int { return len(se.old) + len(se.new) }

// extendedBy reports whether a history old+new begins with the events the
// session has read, the same events in the same order. Events are
// compared as pointers first: the scheduler path's history cache hands
// every step the same decoded event while it keeps the instance. Else the
// past events of the last step, which the scheduler had committed, by what
// identifies an event in one execution's history, which is only appended
// to: its kind, id and time, and the start, which names the execution, in
// full; and the last step's new events, which a redelivered step may carry
// otherwise, in full.
func (se *session) extendedBy(old, new []*backend.HistoryEvent) bool {
	n := se.seen()
	if len(old)+len(new) < n {
		return false
	}
	at := func(old, new []*backend.HistoryEvent, i int) *backend.HistoryEvent {
		if i < len(old) {
			return old[i]
		}
		return new[i-len(old)]
	}
	for i := range n {
		a, b := at(se.old, se.new, i), at(old, new, i)
		switch {
		case a == b:
		case i >= len(se.old) || a.GetExecutionStarted() != nil:
			if !proto.Equal(a, b) {
				return false
			}
		case a.GetEventId() != b.GetEventId() || reflect.TypeOf(a.GetEventType()) != reflect.TypeOf(b.GetEventType()) ||
			a.GetTimestamp().GetSeconds() != b.GetTimestamp().GetSeconds() || a.GetTimestamp().GetNanos() != b.GetTimestamp().GetNanos():
			return false
		}
	}
	return true
}

// add keeps se, stopping a waiting session chosen at random while there
// are too many. s.mu is held.
func (s *Sessions) add(se *session) {
	for len(s.byID) >= s.max {
		stopped := false
		for _, other := range s.byID { // map order: as good as random
			if !other.busy {
				s.stop(other)
				stopped = true
				break
			}
		}
		if !stopped {
			break // all busy: they hold their goroutines anyway
		}
	}
	s.byID[se.id] = se
}

// stop ends a session that is not busy, unwinding its goroutine if it is
// waiting. s.mu is held.
func (s *Sessions) stop(se *session) {
	if se.parked {
		se.parked = false
		se.resume <- false
	}
	s.drop(se)
}

func (s *Sessions) drop(se *session) {
	if s.byID[se.id] == se {
		delete(s.byID, se.id)
	}
}

// forget stops id's session if it waits: its orchestration has ended.
func (s *Sessions) forget(id api.InstanceID) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if se := s.byID[id]; se != nil && !se.busy {
		s.stop(se)
	}
}

// Close stops every waiting session, and every session that is busy once
// its step ends: the worker has stopped.
func (s *Sessions) Close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, se := range s.byID {
		if !se.busy {
			s.stop(se)
		}
	}
}
