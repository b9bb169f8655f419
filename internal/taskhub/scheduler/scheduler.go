// Package scheduler runs the app on the Durable Task Scheduler, or any
// backend that speaks the durabletask gRPC protocol (the upstream sidecar):
// a worker that keeps one work-item stream open and completes each item with
// its token (worker.go), the connection and the app's identity (conn.go), a
// cache that decodes each history event once (historycache.go), the client
// calls (scheduler.go, list.go, manage.go), and access to v0.6.0's messages
// without a second copy of their .proto (wire.go).
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/client"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/logging"
	"fanoutfanin/internal/taskhub"
)

// clientCallTimeout bounds each client call, so that an HTTP request finds
// out quickly that the scheduler is not answering.
const clientCallTimeout = 15 * time.Second

// Open connects to the Durable Task Scheduler, or any durabletask gRPC
// backend, that cfg names and starts a worker for it that runs the
// orchestrators and activities in registry, keeping orchestrations
// between their steps in sessions (nil: none), recording their spans with
// tracer (nil: none). It does not wait for the
// scheduler: the worker keeps trying until it answers, and client calls made
// meanwhile fail with a taskhub.UnavailableError.
func Open(cfg config.TaskHub, registry *task.TaskRegistry, sessions *taskhub.Sessions, log zerolog.Logger, tracer trace.Tracer) (*taskhub.Hub, error) {
	return open(cfg, registry, sessions, log, tracer, nil)
}

// open is Open with the worker's executor wrapped by wrap, if given: for
// tests that watch what the worker runs.
func open(cfg config.TaskHub, registry *task.TaskRegistry, sessions *taskhub.Sessions, log zerolog.Logger, tracer trace.Tracer, wrap func(backend.Executor) backend.Executor) (*taskhub.Hub, error) {
	s := cfg.Scheduler
	cred, err := newCredential(s)
	if err != nil {
		return nil, fmt.Errorf("%s: setting up Authentication=%s: %w", cfg.ConnectionSetting, s.Auth, err)
	}
	var token credentials.PerRPCCredentials // nil: Authentication=None
	if cred != nil {
		token = newBearer(cred)
	}
	// One connection per role, as each says who it is in its headers; the
	// worker's also names this process.
	clientConn, err := dial(s, token, "taskhub", cfg.Name, "x-user-agent", userAgent(roleClient))
	if err != nil {
		return nil, fmt.Errorf("%s: connecting to %s: %w", cfg.ConnectionSetting, s.Host, err)
	}
	workerConn, err := dial(s, token, "taskhub", cfg.Name, "x-user-agent", userAgent(roleWorker), "workerid", newWorkerID())
	if err != nil {
		clientConn.Close()
		return nil, fmt.Errorf("%s: connecting to %s: %w", cfg.ConnectionSetting, s.Host, err)
	}

	workCtx, stopWork := context.WithCancel(context.Background())
	var exec backend.Executor = taskhub.NewExecutor(task.NewTaskExecutor(registry), log, workCtx, tracer, sessions)
	if wrap != nil {
		exec = wrap(exec)
	}
	w := newGRPCWorker(workerConn, exec, stopWork, log.With().Str("component", "worker").Logger(), cfg)
	w.start()

	log.Info().Str("backend", "scheduler").Str("taskHub", cfg.Name).Str("endpoint", s.Endpoint).Str("authentication", string(s.Auth)).
		Int("maxConcurrentActivities", cfg.MaxConcurrentActivities).
		Int("maxConcurrentOrchestrations", cfg.MaxConcurrentOrchestrations).
		Msg("task hub open")

	dtLog := logging.DurableTask{Log: log.With().Str("component", "durabletask").Logger()}
	c := grpcClient{c: client.NewTaskHubGrpcClient(clientConn, dtLog), conn: clientConn, endpoint: s.Host, hub: cfg.Name, queryBatch: queryBatch(cfg.MaxPayloadBytes)}
	closeHub := func(ctx context.Context) error {
		err := w.stop(ctx)
		sessions.Close()
		return errors.Join(err, workerConn.Close(), clientConn.Close())
	}
	return taskhub.NewHub(c, taskhub.Bounds{MaxPayloadBytes: cfg.MaxPayloadBytes, MaxStepBytes: cfg.MaxStepBytes}, closeHub), nil
}

// grpcClient is the client side of the gRPC backend.
type grpcClient struct {
	c        *client.TaskHubGrpcClient
	conn     *grpc.ClientConn
	endpoint string
	hub      string
	// queryBatch bounds the instances one QueryInstances asks for.
	queryBatch int
}

func (g grpcClient) ScheduleNewOrchestration(ctx context.Context, orchestrator string, opts ...api.NewOrchestrationOptions) (api.InstanceID, error) {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	id, err := g.c.ScheduleNewOrchestration(ctx, orchestrator, opts...)
	return id, g.unavailable(ctx, err)
}

func (g grpcClient) RaiseEvent(ctx context.Context, id api.InstanceID, name string, opts ...api.RaiseEventOptions) error {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	return g.unavailable(ctx, g.c.RaiseEvent(ctx, id, name, opts...))
}

// FetchOrchestrationMetadata calls GetInstance itself, always with
// payloads: v0.6.0's client drops the failure details of a failed instance.
func (g grpcClient) FetchOrchestrationMetadata(ctx context.Context, id api.InstanceID, _ ...api.FetchOrchestrationMetadataOptions) (*api.OrchestrationMetadata, error) {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	req := newMessage("GetInstanceRequest")
	fieldsOf(req).set("instanceId", string(id)).set("getInputsAndOutputs", true)
	res := newMessage("GetInstanceResponse")
	if err := g.conn.Invoke(ctx, method("GetInstance"), req, res); err != nil {
		return nil, g.unavailable(ctx, err)
	}
	f := fieldsOf(res)
	if !f.boolean("exists") {
		return nil, api.ErrInstanceNotFound
	}
	return orchestrationMetadata(f.msg("orchestrationState")), nil
}

// orchestrationMetadata reads an OrchestrationState.
func orchestrationMetadata(st fields) *api.OrchestrationMetadata {
	md := &api.OrchestrationMetadata{
		InstanceID:             api.InstanceID(st.str("instanceId")),
		Name:                   st.str("name"),
		RuntimeStatus:          api.OrchestrationStatus(st.m.Get(st.fd("orchestrationStatus")).Enum()),
		SerializedInput:        stringValue(st, "input"),
		SerializedOutput:       stringValue(st, "output"),
		SerializedCustomStatus: stringValue(st, "customStatus"),
		CreatedAt:              timestamp(st, "createdTimestamp"),
		LastUpdatedAt:          timestamp(st, "lastUpdatedTimestamp"),
	}
	if st.has("failureDetails") {
		md.FailureDetails = st.msg("failureDetails").m.Interface().(*backend.TaskFailureDetails)
	}
	return md
}

func stringValue(f fields, name protoreflect.Name) string {
	if !f.has(name) {
		return ""
	}
	return f.msg(name).m.Interface().(*wrapperspb.StringValue).GetValue()
}

func timestamp(f fields, name protoreflect.Name) time.Time {
	if !f.has(name) {
		return time.Time{}
	}
	return f.msg(name).m.Interface().(*timestamppb.Timestamp).AsTime()
}

// unavailable turns a failure to reach or use the scheduler into an
// UnavailableError; other errors pass through.
func (g grpcClient) unavailable(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	reason := unusableReason(err, g.hub)
	if reason == "" && errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		reason = "did not answer in time"
	}
	if reason == "" {
		return err
	}
	return &taskhub.UnavailableError{Endpoint: g.endpoint, Reason: reason, Err: err}
}

// unusableReason says why err means the scheduler cannot be used right now,
// for the client's 503s and the worker's outage line alike; "" when err
// means something else.
func unusableReason(err error, hub string) string {
	switch status.Code(err) {
	case codes.Unavailable:
		if strings.Contains(status.Convert(err).Message(), tokenFailure) {
			return "cannot be called: no token could be had for this app's identity"
		}
		return "is not answering"
	case codes.DeadlineExceeded:
		return "did not answer in time"
	case codes.Unauthenticated, codes.PermissionDenied:
		return "refused this app's credentials"
	case codes.NotFound:
		return fmt.Sprintf("does not know task hub %q", hub)
	}
	return ""
}
