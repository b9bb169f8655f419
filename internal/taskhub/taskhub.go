// Package taskhub connects the app to the durable task hub it runs on. Open is
// the one place that chooses the backend: it returns the client the HTTP
// functions use and starts the worker that runs orchestrators and activities.
package taskhub

import (
	"context"
	"fmt"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
)

// Client is what the HTTP functions need of a task hub, whichever backend
// serves it. Its method set is that of durabletask-go's gRPC client.
type Client interface {
	ScheduleNewOrchestration(ctx context.Context, orchestrator string, opts ...api.NewOrchestrationOptions) (api.InstanceID, error)
	FetchOrchestrationMetadata(ctx context.Context, id api.InstanceID, opts ...api.FetchOrchestrationMetadataOptions) (*api.OrchestrationMetadata, error)
}

// Hub is an open task hub: a client, and a worker running in this process.
type Hub struct {
	Client Client
	close  func(context.Context) error
}

// Close stops taking new work and waits, until ctx ends, for work in flight.
// Work that does not finish is left to be picked up again.
func (h *Hub) Close(ctx context.Context) error { return h.close(ctx) }

// Open opens the task hub cfg describes and starts a worker that runs the
// orchestrators and activities in registry.
func Open(ctx context.Context, cfg config.TaskHub, registry *task.TaskRegistry, log zerolog.Logger) (*Hub, error) {
	if !cfg.Embedded() {
		return nil, fmt.Errorf("app setting %s is set, which selects the Durable Task Scheduler, and this version runs only on the embedded task hub: "+
			"set %s to an empty value (in local.settings.json or the app settings) to run on the embedded task hub", cfg.ConnectionSetting, cfg.ConnectionSetting)
	}
	return openEmbedded(ctx, cfg, registry, log)
}

// hubExecutor runs activities under the hub's work context (see hubBackend),
// with a logger in their context that carries the orchestration's instance
// id: activities see no instance id otherwise.
type hubExecutor struct {
	backend.Executor
	log  zerolog.Logger
	work context.Context
}

func (x hubExecutor) ExecuteActivity(ctx context.Context, id api.InstanceID, e *backend.HistoryEvent) (*backend.HistoryEvent, error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(x.work, cancel)
	defer stop()
	log := x.log.With().Str("instanceId", string(id)).Str("activity", e.GetTaskScheduled().GetName()).Logger()
	result, err := x.Executor.ExecuteActivity(log.WithContext(ctx), id, e)
	if ctx.Err() != nil {
		// Stopped by shutdown: an error, so the item is handed back rather
		// than its cancellation recorded as the item's failure.
		return nil, fmt.Errorf("activity stopped by shutdown: %w", ctx.Err())
	}
	return result, err
}
