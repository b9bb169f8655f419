package telemetry

import (
	"context"
	"errors"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The attributes of the durabletask span schema.
const (
	attrType       = attribute.Key("durabletask.type")
	attrName       = attribute.Key("durabletask.task.name")
	attrInstanceID = attribute.Key("durabletask.task.instance_id")
	attrTaskID     = attribute.Key("durabletask.task.task_id")
	attrStatus     = attribute.Key("durabletask.task.status")
)

// The fan-out's own attributes of an activity span: which item, which
// attempt (from 1).
func ItemIndex(i int) attribute.KeyValue   { return attribute.Int("fanout.item.index", i) }
func ItemAttempt(n int) attribute.KeyValue { return attribute.Int("fanout.item.attempt", n) }

// BatchItems is the fan-out's attribute of a batch's activity span: how
// many items it ran.
func BatchItems(n int) attribute.KeyValue { return attribute.Int("fanout.batch.items", n) }

// InstanceID is the attribute naming an instance, for a span started
// before its id was known.
func InstanceID(id string) attribute.KeyValue { return attrInstanceID.String(id) }

// CreateOrchestration starts the span of starting orchestrator name, a
// child of ctx's span (the caller's traceparent, if it sent
// one). The backend carries the span's context, which the returned ctx
// holds, into the orchestration's ExecutionStarted event.
func CreateOrchestration(ctx context.Context, tr trace.Tracer, name string) (context.Context, trace.Span) {
	return tr.Start(ctx, "create_orchestration:"+name,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attrType.String("orchestration"), attrName.String(name)))
}

// traceContext is durabletask-go's TraceContext, whose type is internal to
// it, by its getters.
type traceContext interface {
	GetTraceParent() string
	GetTraceState() *wrapperspb.StringValue
}

// sampled is the span context tc names, if it names a sampled one; a nil
// tc names none.
func sampled(tc traceContext) (trace.SpanContext, bool) {
	sc, ok := ParseTraceParent(tc.GetTraceParent(), tc.GetTraceState().GetValue())
	return sc, ok && sc.IsSampled()
}

// Orchestration is the span context of instance id's orchestration span,
// the parent of everything the orchestration schedules; false if the
// orchestration is not traced (its ExecutionStarted event carries no
// sampled trace context).
func Orchestration(started *backend.HistoryEvent, id string) (trace.SpanContext, bool) {
	parent, ok := sampled(started.GetExecutionStarted().GetParentTraceContext())
	if !ok {
		return trace.SpanContext{}, false
	}
	return parent.WithSpanID(OrchestrationSpanID(parent.TraceID(), id)).WithRemote(false), true
}

// RecordOrchestration records the span of instance id's orchestration,
// which has just ended in status (with failure, if it failed): from its
// ExecutionStarted event to now. Its parent is what started it: the
// create_orchestration span, or the parent orchestration's span for a
// sub-orchestration.
func RecordOrchestration(tr trace.Tracer, started *backend.HistoryEvent, id string, status api.OrchestrationStatus, failure string) {
	es := started.GetExecutionStarted()
	parent, ok := sampled(es.GetParentTraceContext())
	if !ok {
		return
	}
	if p := es.GetParentInstance().GetOrchestrationInstance().GetInstanceId(); p != "" {
		parent = parent.WithSpanID(OrchestrationSpanID(parent.TraceID(), p))
	}
	ctx := withSpanID(trace.ContextWithRemoteSpanContext(context.Background(), parent), OrchestrationSpanID(parent.TraceID(), id))
	_, span := tr.Start(ctx, "orchestration:"+es.GetName(),
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(started.GetTimestamp().AsTime()),
		trace.WithAttributes(attrType.String("orchestration"), attrName.String(es.GetName()), attrInstanceID.String(id),
			attrStatus.String(statusName(status))))
	if status == api.RUNTIME_STATUS_FAILED {
		span.SetStatus(codes.Error, failure)
	}
	span.End(trace.WithTimestamp(time.Now()))
}

// StartActivity starts the span of one attempt at the activity that
// scheduled describes, task taskID of instance id, a child of the
// orchestration's span; none if the orchestration is not traced.
func StartActivity(ctx context.Context, tr trace.Tracer, scheduled *backend.HistoryEvent, id string) (context.Context, trace.Span) {
	ts := scheduled.GetTaskScheduled()
	if !Records(tr) || ts.GetParentTraceContext() == nil {
		return ctx, trace.SpanFromContext(context.Background()) // a no-op span
	}
	parent, ok := sampled(ts.GetParentTraceContext())
	if !ok {
		return ctx, trace.SpanFromContext(context.Background())
	}
	parent = parent.WithSpanID(OrchestrationSpanID(parent.TraceID(), id))
	return tr.Start(trace.ContextWithRemoteSpanContext(ctx, parent), "activity:"+ts.GetName(),
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attrType.String("activity"), attrName.String(ts.GetName()), attrInstanceID.String(id),
			attrTaskID.Int64(int64(scheduled.GetEventId()))))
}

// EndActivity ends an activity's span with its outcome: a failed attempt
// records its error.
func EndActivity(span trace.Span, outcome *backend.HistoryEvent, err error) {
	switch failed := outcome.GetTaskFailed(); {
	case err != nil:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	case failed != nil:
		msg := failed.GetFailureDetails().GetErrorMessage()
		span.RecordError(errors.New(msg), trace.WithAttributes(attribute.String("exception.type", failed.GetFailureDetails().GetErrorType())))
		span.SetStatus(codes.Error, msg)
	}
	span.End()
}

// statusName is a status as the SDKs write it: Completed, Failed, ….
func statusName(s api.OrchestrationStatus) string {
	switch s {
	case api.RUNTIME_STATUS_COMPLETED:
		return "Completed"
	case api.RUNTIME_STATUS_FAILED:
		return "Failed"
	case api.RUNTIME_STATUS_TERMINATED:
		return "Terminated"
	case api.RUNTIME_STATUS_CONTINUED_AS_NEW:
		return "ContinuedAsNew"
	}
	return s.String()
}
