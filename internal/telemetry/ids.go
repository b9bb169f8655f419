package telemetry

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// An orchestration's span has the same id whichever worker runs it, and
// however often its history is replayed: each of its steps, on any worker,
// after any restart, names it as the parent of what it schedules, and its
// end records it. The id is derived from the trace and the instance id,
// where the official SDKs have the scheduler keep the first worker's
// (OrchestrationTraceContext): the upstream sidecar and the embedded hub
// keep nothing of the kind.

// OrchestrationSpanID is the span id of instance id's orchestration span in
// trace tid.
func OrchestrationSpanID(tid trace.TraceID, instanceID string) trace.SpanID {
	h := sha256.New()
	h.Write(tid[:])
	h.Write([]byte(instanceID))
	var sid trace.SpanID
	copy(sid[:], h.Sum(nil))
	if !sid.IsValid() { // all zeros: not a valid id
		sid[7] = 1
	}
	return sid
}

type spanIDKey struct{}

// withSpanID makes the next span started from ctx have id sid.
func withSpanID(ctx context.Context, sid trace.SpanID) context.Context {
	return context.WithValue(ctx, spanIDKey{}, sid)
}

// idGenerator is the SDK's random generator, but for span ids chosen by
// withSpanID.
type idGenerator struct{}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	var tid trace.TraceID
	for !tid.IsValid() {
		crand.Read(tid[:])
	}
	return tid, idGenerator{}.NewSpanID(ctx, tid)
}

func (idGenerator) NewSpanID(ctx context.Context, _ trace.TraceID) trace.SpanID {
	if sid, ok := ctx.Value(spanIDKey{}).(trace.SpanID); ok {
		return sid
	}
	var sid trace.SpanID
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}

// ParseTraceParent reads a W3C traceparent and its tracestate, as a remote
// span context.
func ParseTraceParent(traceparent, tracestate string) (trace.SpanContext, bool) {
	carrier := propagation.MapCarrier{"traceparent": traceparent, "tracestate": tracestate}
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), carrier))
	return sc, sc.IsValid()
}

// TraceParent formats sc as a W3C traceparent.
func TraceParent(sc trace.SpanContext) string {
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
}
