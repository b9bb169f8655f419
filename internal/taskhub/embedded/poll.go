package embedded

import (
	"context"
	"errors"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/timestamppb"

	"fanoutfanin/internal/taskhub"
)

// The library's own poll loop backs off to 5 s when idle, so the first
// orchestration after a quiet spell waited seconds at each step. Instead each
// worker is woken the moment this process makes work for it, and polls only
// to find work that other processes sharing the hub made, or whose lock
// expired after a crash.
const (
	// Each orchestrator step loads and replays the instance's whole history,
	// so waking it for every finished activity makes a fan-out quadratic.
	// Letting results gather this long first took a 1,000-item fan-out from
	// 2.4 s to 0.63 s (0 and 100 ms were both slower); see BENCHMARKS.md.
	orchestrationSettle = 50 * time.Millisecond

	minPollInterval = 10 * time.Millisecond
	maxPollInterval = time.Second
	errorBackoff    = 5 * time.Second
)

// polling is how often a worker looks for work no wake-up announced: every
// min after it found some, backing off to every max while it finds none.
type polling struct{ min, max time.Duration }

// wakeups: orchestrations is for results and events, which are gathered
// (see orchestrationSettle); newInstances for starts, whose first step
// has nothing to gather and runs at once.
type wakeups struct {
	orchestrations, newInstances, activities chan struct{}
}

func newWakeups() wakeups {
	return wakeups{make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{}, 1)}
}

// signal wakes a worker without blocking; one pending wake-up is enough.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// hubBackend wraps the SQLite backend for four reasons. It takes and
// records work items through hubStore: activities in batches, and every
// item under a lock of its own. It wakes the worker that has new work after
// each write that makes some. It drops, with a debug line, the work of an
// instance purged while it ran. And it separates the work on an item from
// the fetching of it: durabletask-go processes an item with the context it
// was fetched with, so stopping the poll loops would also cancel the items
// in flight before they could be completed or handed back. Their database
// calls run under work instead, which is cancelled only when the shutdown
// grace period is over; handing an item back is never cancelled.
type hubBackend struct {
	backend.Backend
	wake  wakeups
	work  context.Context
	store *hubStore
	log   zerolog.Logger
}

func (b hubBackend) CreateOrchestrationInstance(ctx context.Context, e *backend.HistoryEvent, opts ...backend.OrchestrationIdReusePolicyOptions) error {
	err := errInstanceExists
	if noReusePolicy(opts) {
		err = b.store.create(e)
	}
	if errors.Is(err, errInstanceExists) {
		// A reuse policy, or an id taken: the backend says what that means.
		err = b.Backend.CreateOrchestrationInstance(ctx, e, opts...)
	}
	signal(b.wake.newInstances)
	return err
}

// noReusePolicy reports whether opts ask for no id reuse policy: the client
// always passes one, mostly empty.
func noReusePolicy(opts []backend.OrchestrationIdReusePolicyOptions) bool {
	var policy api.OrchestrationIdReusePolicy
	for _, opt := range opts {
		if err := opt(&policy); err != nil {
			return false
		}
	}
	return len(policy.OperationStatus) == 0 && policy.Action == 0
}

// AddNewOrchestrationEvent is how the worker terminates the orchestrations
// an instance started: as the backend does, whether or not the target
// exists yet, since a step that starts one and is terminated creates it
// only when the step is recorded. The client's events go through
// clientBackend instead.
func (b hubBackend) AddNewOrchestrationEvent(ctx context.Context, id api.InstanceID, e *backend.HistoryEvent) error {
	err := b.Backend.AddNewOrchestrationEvent(ctx, id, e)
	signal(b.wake.orchestrations)
	return err
}

func (b hubBackend) GetOrchestrationWorkItem(ctx context.Context) (*backend.OrchestrationWorkItem, error) {
	return b.store.takeOrchestration(ctx)
}

func (b hubBackend) GetOrchestrationRuntimeState(_ context.Context, wi *backend.OrchestrationWorkItem) (*backend.OrchestrationRuntimeState, error) {
	return b.Backend.GetOrchestrationRuntimeState(b.work, wi)
}

func (b hubBackend) CompleteOrchestrationWorkItem(_ context.Context, wi *backend.OrchestrationWorkItem) error {
	// The backend records a suspension over an end, so an instance that
	// ended while suspended (terminated: see taskhub.Executor) would read as
	// Suspended for ever: it is resumed as it ends.
	if wi.State != nil && wi.State.IsCompleted() && wi.State.RuntimeStatus() == api.RUNTIME_STATUS_SUSPENDED {
		if err := wi.State.AddEvent(resumedEvent()); err != nil {
			return err
		}
	}
	err := b.Backend.CompleteOrchestrationWorkItem(b.work, wi)
	b.store.unlocked(wi)
	signal(b.wake.activities)
	signal(b.wake.orchestrations)
	return b.droppedIfPurged(err, wi.InstanceID, "step")
}

func (b hubBackend) AbandonOrchestrationWorkItem(ctx context.Context, wi *backend.OrchestrationWorkItem) error {
	err := b.Backend.AbandonOrchestrationWorkItem(context.WithoutCancel(ctx), wi)
	b.store.unlocked(wi)
	signal(b.wake.orchestrations)
	return b.droppedIfPurged(err, wi.InstanceID, "step")
}

func (b hubBackend) GetActivityWorkItem(ctx context.Context) (*backend.ActivityWorkItem, error) {
	return b.store.next(ctx)
}

func (b hubBackend) CompleteActivityWorkItem(_ context.Context, wi *backend.ActivityWorkItem) error {
	err := b.store.complete(wi)
	signal(b.wake.orchestrations)
	return err
}

func (b hubBackend) AbandonActivityWorkItem(ctx context.Context, wi *backend.ActivityWorkItem) error {
	err := b.Backend.AbandonActivityWorkItem(context.WithoutCancel(ctx), wi)
	b.store.release(wi)
	signal(b.wake.activities)
	return b.droppedIfPurged(err, wi.InstanceID, "activity")
}

// droppedIfPurged turns the failure to record or hand back work of an
// instance that a purge deleted meanwhile into a debug line: the work has
// nothing left to belong to, and the purge took every row of it.
func (b hubBackend) droppedIfPurged(err error, id api.InstanceID, what string) error {
	if err == nil || !b.store.purged(id) {
		return err
	}
	b.log.Debug().Str("instanceId", string(id)).Str("work", what).Msg("dropped work whose instance was purged while it ran")
	return nil
}

// clientBackend is the backend as the client sees it: an event for an
// instance that does not exist (purged, say, since the caller looked) is
// refused with api.ErrInstanceNotFound, and leaves no row behind.
type clientBackend struct{ hubBackend }

func (b clientBackend) AddNewOrchestrationEvent(_ context.Context, id api.InstanceID, e *backend.HistoryEvent) error {
	err := b.store.addEvent(id, e)
	signal(b.wake.orchestrations)
	return err
}

// poll feeds w work items until ctx ends, waiting settle after a wake-up on
// wake, and not after one on now (nil: none), and looking anyway as every
// says. ProcessNext waits for a free slot when w already runs its maximum,
// and runs each item in its own goroutine.
func poll(ctx context.Context, w backend.TaskWorker, wake, now <-chan struct{}, settle time.Duration, every polling) {
	idle := every.min
	for {
		found, err := w.ProcessNext(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case found:
			idle = every.min
			continue
		case err != nil:
			// ProcessNext has logged it; back off, wake-ups or not, so a
			// broken store is not hammered.
			taskhub.Sleep(ctx, errorBackoff)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
			idle = every.min
			taskhub.Sleep(ctx, settle)
		case <-now:
			idle = every.min
		case <-time.After(idle):
			idle = min(2*idle, every.max)
		}
	}
}

// resumedEvent is an ExecutionResumed event, as the backend records one. Its
// type is internal to durabletask-go, so it is made through reflection.
func resumedEvent() *backend.HistoryEvent {
	e := &backend.HistoryEvent{EventId: -1, Timestamp: timestamppb.Now()}
	m := e.ProtoReflect()
	fd := m.Descriptor().Fields().ByName("executionResumed")
	m.Set(fd, m.NewField(fd))
	return e
}
