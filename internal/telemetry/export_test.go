package telemetry

import sdktrace "go.opentelemetry.io/otel/sdk/trace"

// SyncedTo is tracing that hands each span to exp as it ends, without
// touching OpenTelemetry's globals: for tests that read the spans back.
func SyncedTo(exp sdktrace.SpanExporter) *Tracing {
	t, err := exportingTo(sdktrace.WithSyncer(exp), "test")
	if err != nil {
		panic(err)
	}
	return t
}
