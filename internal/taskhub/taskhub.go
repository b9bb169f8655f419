// Package taskhub connects the app to the durable task hub it runs on. Open is
// the one place that chooses the backend: it returns the client the HTTP
// functions use and starts the worker that runs orchestrators and activities.
package taskhub

import (
	"context"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
)

// Client is what the HTTP functions need of a task hub, whichever backend
// serves it. Its methods are those of durabletask-go's gRPC client, but for
// PurgeInstance.
type Client interface {
	ScheduleNewOrchestration(ctx context.Context, orchestrator string, opts ...api.NewOrchestrationOptions) (api.InstanceID, error)
	FetchOrchestrationMetadata(ctx context.Context, id api.InstanceID, opts ...api.FetchOrchestrationMetadataOptions) (*api.OrchestrationMetadata, error)
	RaiseEvent(ctx context.Context, id api.InstanceID, eventName string, opts ...api.RaiseEventOptions) error
	// TerminateOrchestration ends the instance and every orchestration it
	// started, as Terminated.
	TerminateOrchestration(ctx context.Context, id api.InstanceID, opts ...api.TerminateOptions) error
	SuspendOrchestration(ctx context.Context, id api.InstanceID, reason string) error
	ResumeOrchestration(ctx context.Context, id api.InstanceID, reason string) error
	// PurgeInstance deletes a finished instance and every orchestration it
	// started, returning how many were deleted: api.ErrInstanceNotFound if
	// there is no such instance, ErrStillRunning if one has not finished.
	PurgeInstance(ctx context.Context, id api.InstanceID) (int, error)
	// ListInstances returns a page of the instances q selects:
	// ErrListUnsupported if the backend cannot list them,
	// ErrBadContinuationToken for a token it did not issue.
	ListInstances(ctx context.Context, q Query) (Page, error)
}

// Hub is an open task hub: a client, and a worker running in this process.
type Hub struct {
	Client Client
	Bounds Bounds
	close  func(context.Context) error
}

// Bounds are what the backend accepts in one payload (an orchestration's
// input, an event's data, …) and in one orchestrator step; 0 means no
// bound.
type Bounds struct {
	MaxPayloadBytes, MaxStepBytes int
}

// Close stops taking new work and waits, until ctx ends, for work in flight.
// Work that does not finish is left to be picked up again.
func (h *Hub) Close(ctx context.Context) error { return h.close(ctx) }

// Open opens the task hub cfg describes and starts a worker that runs the
// orchestrators and activities in registry: the embedded hub when no
// scheduler is configured, else the scheduler's.
func Open(ctx context.Context, cfg config.TaskHub, registry *task.TaskRegistry, log zerolog.Logger) (*Hub, error) {
	if cfg.Embedded() {
		return openEmbedded(ctx, cfg, registry, log)
	}
	return openScheduler(cfg, task.NewTaskExecutor(registry), log)
}
