// Package taskhub is what the app needs of the durable task hub it runs on,
// whichever backend serves it: the Client the HTTP functions and the fan-out
// engine call, the Hub a backend opens, and the pieces both backends share
// to run work (Executor, Drain). The backends are its subpackages: embedded
// (durabletask-go's SQLite backend in a file) and scheduler (the Durable
// Task Scheduler, or any durabletask gRPC backend). The app chooses one in
// one place (internal/app).
package taskhub

import (
	"context"

	"github.com/microsoft/durabletask-go/api"
)

// Client is what the HTTP functions need of a task hub, whichever backend
// serves it. Its methods are those of durabletask-go's gRPC client, but for
// PurgeInstance and ListInstances.
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

// NewHub is how a backend returns the hub it opened: close stops its worker
// as Close says.
func NewHub(c Client, b Bounds, close func(context.Context) error) *Hub {
	return &Hub{Client: c, Bounds: b, close: close}
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
