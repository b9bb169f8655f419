package scheduler

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"fanoutfanin/internal/telemetry"
)

// Trace context travels in the protocol's own fields, as the official SDKs
// send them, so that the scheduler keeps each span's parent with the work it
// hands out: the client's span in CreateInstanceRequest, the
// orchestration's span in each action that schedules an activity or a
// sub-orchestration (and, for the scheduler to keep, in
// OrchestratorResponse.orchestrationTraceContext); the scheduler passes them
// on in ExecutionStartedEvent, TaskScheduledEvent and ActivityRequest.
// v0.6.0's messages lack most of these fields, so they travel as unknown
// fields; the upstream v0.6.0 sidecar drops them.

// traceContext encodes sc as a TraceContext message.
func traceContext(sc trace.SpanContext) []byte {
	tc := newMessage("TraceContext")
	f := fieldsOf(tc).set("traceParent", telemetry.TraceParent(sc))
	if ts := sc.TraceState().String(); ts != "" {
		f.set("traceState", wrapperspb.String(ts))
	}
	b, _ := proto.Marshal(tc)
	return b
}

func appendMessage(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// activityParent is the trace context an activity request carries, as
// v0.6.0's TraceContext; nil if none.
func activityParent(req proto.Message) proto.Message {
	b := unknownString(req, fieldActivityTraceContext)
	if b == "" {
		return nil
	}
	tc := newMessage("TraceContext")
	if proto.Unmarshal([]byte(b), tc) != nil {
		return nil
	}
	return tc
}

// traceActions names orchestration, the orchestration's span, which began
// at started, as the parent of everything res schedules.
func traceActions(res proto.Message, orchestration trace.SpanContext, started time.Time) {
	tc := appendMessage(nil, fieldActionTraceContext, traceContext(orchestration))
	f := fieldsOf(res)
	actions := f.m.Get(f.fd("actions")).List()
	for i := range actions.Len() {
		a := fields{actions.Get(i).Message()}
		for _, kind := range []protoreflect.Name{"scheduleTask", "createSubOrchestration"} {
			if a.has(kind) {
				appendUnknown(a.msg(kind).m.Interface(), tc)
			}
		}
	}
	spanID, _ := proto.Marshal(wrapperspb.String(orchestration.SpanID().String()))
	start, _ := proto.Marshal(timestamppb.New(started))
	otc := appendMessage(appendMessage(nil, 1, spanID), 2, start) // OrchestrationTraceContext{spanID, spanStartTime}
	appendUnknown(res, appendMessage(nil, fieldOrchestratorRespTrace, otc))
}

// withCreateTraceContext is the client's interceptor that sends the span in
// a StartInstance call's context as the new instance's parent.
func withCreateTraceContext(ctx context.Context, rpc string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if sc := trace.SpanContextFromContext(ctx); rpc == method("StartInstance") && sc.IsValid() && sc.IsSampled() {
		if m, ok := req.(proto.Message); ok {
			m = proto.Clone(m)
			appendUnknown(m, appendMessage(nil, fieldCreateTraceContext, traceContext(sc)))
			req = m
		}
	}
	return invoke(ctx, rpc, req, reply, cc, opts...)
}
