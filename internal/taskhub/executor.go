package taskhub

import (
	"context"
	"fmt"
	"slices"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"fanoutfanin/internal/telemetry"
)

// Executor runs the app's orchestrators and activities for either backend,
// wrapping durabletask-go's. Activities run under the hub's work context,
// which is cancelled only when the shutdown grace period ends, not when the
// item's fetching stops; and with a logger in their context (ActivityLog)
// that carries the orchestration's instance id, which activities are not
// told otherwise. It records the spans of orchestrations and activities
// (internal/telemetry).
type Executor struct {
	backend.Executor
	log      zerolog.Logger
	work     context.Context
	tracer   trace.Tracer
	sessions *Sessions
}

// NewExecutor wraps exec for a hub whose work context is work, recording
// spans with tracer (nil: none), and keeping orchestrations between steps
// in sessions (nil: none; see Sessions).
func NewExecutor(exec backend.Executor, log zerolog.Logger, work context.Context, tracer trace.Tracer, sessions *Sessions) Executor {
	if tracer == nil {
		tracer = telemetry.Off().Tracer
	}
	return Executor{Executor: exec, log: log, work: work, tracer: tracer, sessions: sessions}
}

// ActivityLog is the logger an activity run by an Executor has in its
// context: it names the instance and the activity, and, when the activity
// is traced, its trace and span (traceId, spanId). Elsewhere it is
// zerolog's disabled logger, or the context's own.
func ActivityLog(ctx context.Context) *zerolog.Logger { return zerolog.Ctx(ctx) }

// ExecuteOrchestrator turns a panic that escapes the orchestrator into an
// error, which hands the work item back instead of stopping the process;
// the worker logs it. And a terminated instance ends Terminated, suspended
// or not: durabletask-go v0.6.0 takes a termination while suspended but
// sends no action until a resume that never comes, so an instance
// terminated while suspended, or suspended after a terminate was accepted,
// stayed Running for ever.
func (x Executor) ExecuteOrchestrator(ctx context.Context, id api.InstanceID, old, new []*backend.HistoryEvent) (res *backend.ExecutionResults, err error) {
	defer func() {
		if p := recover(); p != nil {
			res, err = nil, fmt.Errorf("orchestrator panicked: %v", p)
		}
	}()
	old, new = suspensionsThatCount(old, new)
	if x.sessions != nil {
		res, err = x.sessions.execute(x.Executor, id, old, new)
	} else {
		res, err = x.Executor.ExecuteOrchestrator(ctx, id, old, new)
	}
	if err == nil {
		if output, ok := terminatedWith(old, new); ok {
			EndOrchestration(res.Response, api.RUNTIME_STATUS_TERMINATED, output, nil)
		}
		if telemetry.Records(x.tracer) {
			x.recordEnd(res, id, old, new)
		}
	}
	if err != nil {
		x.sessions.forget(id)
	} else if _, _, ends := Ending(res); ends {
		x.sessions.forget(id)
	}
	return res, err
}

// recordEnd records the orchestration's span if this step ends it.
func (x Executor) recordEnd(res *backend.ExecutionResults, id api.InstanceID, old, new []*backend.HistoryEvent) {
	if status, failure, ends := Ending(res); ends && status != api.RUNTIME_STATUS_CONTINUED_AS_NEW {
		if started := ExecutionStarted(old, new); started != nil {
			telemetry.RecordOrchestration(x.tracer, started, string(id), status, failure)
		}
	}
}

// ExecutionStarted is the ExecutionStarted event among an instance's
// events; nil if there is none.
func ExecutionStarted(old, new []*backend.HistoryEvent) *backend.HistoryEvent {
	for _, events := range [][]*backend.HistoryEvent{old, new} {
		for _, e := range events {
			if e.GetExecutionStarted() != nil {
				return e
			}
		}
	}
	return nil
}

// suspensionsThatCount leaves out a suspension of an instance already
// suspended, and a resumption of one that is not, as the backend's own
// status does. durabletask-go v0.6.0's executor holds the second of two
// suspensions back until the resumption, then applies it: one resume left
// the instance suspended inside, Running outside, for ever. A step's events
// pass through as they are when there is nothing to leave out.
func suspensionsThatCount(old, new []*backend.HistoryEvent) ([]*backend.HistoryEvent, []*backend.HistoryEvent) {
	suspended := false
	counts := func(e *backend.HistoryEvent) bool {
		switch {
		case e.GetExecutionSuspended() != nil:
			if suspended {
				return false
			}
			suspended = true
		case e.GetExecutionResumed() != nil:
			if !suspended {
				return false
			}
			suspended = false
		}
		return true
	}
	keep := func(events []*backend.HistoryEvent) []*backend.HistoryEvent {
		for i, e := range events {
			if counts(e) {
				continue
			}
			kept := slices.Clone(events[:i])
			for _, e := range events[i+1:] {
				if counts(e) {
					kept = append(kept, e)
				}
			}
			return kept
		}
		return events
	}
	old = keep(old)
	return old, keep(new)
}

// terminatedWith returns the output of the first termination among an
// instance's events, if there is one: what its result must be.
func terminatedWith(old, new []*backend.HistoryEvent) (*wrapperspb.StringValue, bool) {
	for _, events := range [][]*backend.HistoryEvent{old, new} {
		for _, e := range events {
			if et := e.GetExecutionTerminated(); et != nil {
				return et.GetInput(), true
			}
		}
	}
	return nil, false
}

func (x Executor) ExecuteActivity(ctx context.Context, id api.InstanceID, e *backend.HistoryEvent) (*backend.HistoryEvent, error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(x.work, cancel)
	defer stop()
	ctx, span := telemetry.StartActivity(ctx, x.tracer, e, string(id))
	logCtx := x.log.With().Str("instanceId", string(id)).Str("activity", e.GetTaskScheduled().GetName())
	if sc := span.SpanContext(); sc.IsValid() {
		logCtx = logCtx.Str("traceId", sc.TraceID().String()).Str("spanId", sc.SpanID().String())
	}
	log := logCtx.Logger()
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
			telemetry.EndActivity(span, o.result, o.err)
			return o.result, o.err
		}
	case <-ctx.Done():
		// An activity that ignores its context (a loop, a long sleep) is
		// left behind, its result dropped, so that it cannot hold up the
		// shutdown; the process ends soon after.
	}
	// Stopped by shutdown: an error, so the item is handed back rather than
	// its cancellation recorded as the item's failure.
	err := fmt.Errorf("activity stopped by shutdown: %w", ctx.Err())
	telemetry.EndActivity(span, nil, err)
	return nil, err
}

// EndOrchestration replaces an orchestrator response's actions with one that
// ends the orchestration in status, with result or failure: what the
// Executor does to a terminated instance, and what a backend does to a step
// it cannot send. v0.6.0's response type is internal to durabletask-go, so
// it is reached through reflection.
func EndOrchestration(res proto.Message, status api.OrchestrationStatus, result *wrapperspb.StringValue, failure *backend.TaskFailureDetails) {
	m := res.ProtoReflect()
	field := func(m protoreflect.Message, name protoreflect.Name) protoreflect.FieldDescriptor {
		return m.Descriptor().Fields().ByName(name)
	}
	actions := m.Mutable(field(m, "actions")).List()
	id := int64(0)
	for i := range actions.Len() {
		a := actions.Get(i).Message()
		id = max(id, a.Get(field(a, "id")).Int()+1)
	}
	actions.Truncate(0)
	action := actions.NewElement()
	a := action.Message()
	a.Set(field(a, "id"), protoreflect.ValueOfInt32(int32(id)))
	end := a.Mutable(field(a, "completeOrchestration")).Message()
	end.Set(field(end, "orchestrationStatus"), protoreflect.ValueOfEnum(protoreflect.EnumNumber(status)))
	if result != nil {
		end.Set(field(end, "result"), protoreflect.ValueOfMessage(result.ProtoReflect()))
	}
	if failure != nil {
		end.Set(field(end, "failureDetails"), protoreflect.ValueOfMessage(failure.ProtoReflect()))
	}
	actions.Append(action)
}

// Ending says whether a step's results end the orchestration, or start it
// anew (continued as new), and in which status, with which failure
// message.
func Ending(res *backend.ExecutionResults) (status api.OrchestrationStatus, failure string, ends bool) {
	for _, a := range res.Response.GetActions() {
		if end := a.GetCompleteOrchestration(); end != nil {
			return end.GetOrchestrationStatus(), end.GetFailureDetails().GetErrorMessage(), true
		}
	}
	return 0, "", false
}
