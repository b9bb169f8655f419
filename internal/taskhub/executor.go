package taskhub

import (
	"context"
	"fmt"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/rs/zerolog"
)

// hubExecutor runs the app's orchestrators and activities for either
// backend. Activities run under the hub's work context, which is cancelled
// only when the shutdown grace period ends, not when the item's fetching
// stops; and with a logger in their context that carries the orchestration's
// instance id, which activities are not told otherwise.
type hubExecutor struct {
	backend.Executor
	log  zerolog.Logger
	work context.Context
}

// ExecuteOrchestrator turns a panic that escapes the orchestrator into an
// error, which hands the work item back instead of stopping the process;
// the worker logs it.
func (x hubExecutor) ExecuteOrchestrator(ctx context.Context, id api.InstanceID, old, new []*backend.HistoryEvent) (res *backend.ExecutionResults, err error) {
	defer func() {
		if p := recover(); p != nil {
			res, err = nil, fmt.Errorf("orchestrator panicked: %v", p)
		}
	}()
	return x.Executor.ExecuteOrchestrator(ctx, id, old, new)
}

func (x hubExecutor) ExecuteActivity(ctx context.Context, id api.InstanceID, e *backend.HistoryEvent) (*backend.HistoryEvent, error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(x.work, cancel)
	defer stop()
	log := x.log.With().Str("instanceId", string(id)).Str("activity", e.GetTaskScheduled().GetName()).Logger()
	type outcome struct {
		result *backend.HistoryEvent
		err    error
	}
	done := make(chan outcome, 1)
	go func() {
		result, err := x.Executor.ExecuteActivity(log.WithContext(ctx), id, e)
		done <- outcome{result, err}
	}()
	select {
	case o := <-done:
		if ctx.Err() == nil {
			return o.result, o.err
		}
	case <-ctx.Done():
		// An activity that ignores its context (a loop, a long sleep) is
		// left behind, its result dropped, so that it cannot hold up the
		// shutdown; the process ends soon after.
	}
	// Stopped by shutdown: an error, so the item is handed back rather than
	// its cancellation recorded as the item's failure.
	return nil, fmt.Errorf("activity stopped by shutdown: %w", ctx.Err())
}
