// Package telemetry traces fan-outs with OpenTelemetry, in the span schema
// the durabletask SDKs share (durabletask-dotnet's, which the Java, JS and
// Python SDKs follow): create_orchestration:<name> when a fan-out is
// started, orchestration:<name> for each orchestration from its start to
// its end, activity:<name> for each attempt at an activity. Spans are
// exported over OTLP as the standard OTEL_* settings say; with no endpoint
// set, nothing is recorded and the tracer is a no-op.
package telemetry

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"fanoutfanin/internal/config"
)

// Scope is the instrumentation scope of the handler's spans.
const Scope = "fanoutfanin"

// Tracing is the handler's tracer and what exports its spans.
type Tracing struct {
	Tracer   trace.Tracer
	provider *sdktrace.TracerProvider // nil when tracing is off
}

// Off is tracing that records nothing.
func Off() *Tracing { return &Tracing{Tracer: noop.NewTracerProvider().Tracer(Scope)} }

// Open starts tracing as cfg says. With tracing on, it also registers the
// provider and the W3C propagator with OpenTelemetry's globals, which is
// where instrumentation in user code (an otelhttp client in a fan-out's
// work) finds them; durabletask-go's own spans, whose names differ from the
// schema above, stay off.
func Open(ctx context.Context, cfg config.Telemetry, log zerolog.Logger) (*Tracing, error) {
	if !cfg.Enabled() {
		return Off(), nil
	}
	var exp sdktrace.SpanExporter
	var err error
	// The exporters read the endpoint, headers, timeout and certificates
	// from the standard settings themselves.
	if cfg.Protocol == "grpc" {
		exp, err = otlptracegrpc.New(ctx)
	} else {
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("OpenTelemetry: creating the %s trace exporter: %w", cfg.Protocol, err)
	}
	t, err := exportingTo(sdktrace.WithBatcher(exp), cfg.ServiceName)
	if err != nil {
		return nil, err
	}
	otel.SetErrorHandler(&errorLog{log: log})
	otel.SetTracerProvider(withoutLibrarySpans{t.provider})
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return t, nil
}

// exportingTo is tracing whose spans go to processor. The sampler comes
// from OTEL_TRACES_SAMPLER; the batching, for a batcher, from OTEL_BSP_*.
func exportingTo(processor sdktrace.TracerProviderOption, service string) (*Tracing, error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(service)))
	if err != nil {
		return nil, fmt.Errorf("OpenTelemetry: %w", err)
	}
	provider := sdktrace.NewTracerProvider(processor, sdktrace.WithResource(res), sdktrace.WithIDGenerator(idGenerator{}))
	return &Tracing{Tracer: provider.Tracer(Scope), provider: provider}, nil
}

// Records says whether tr records spans: false for the tracer of tracing
// that is off, which callers skip the work of spans for.
func Records(tr trace.Tracer) bool {
	_, off := tr.(noop.Tracer)
	return !off
}

// Recording says whether spans are recorded and exported.
func (t *Tracing) Recording() bool { return t.provider != nil }

// Shutdown exports the spans still buffered, until ctx ends.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.provider == nil {
		return nil
	}
	return t.provider.Shutdown(ctx)
}

// withoutLibrarySpans is the global provider: durabletask-go v0.6.0 starts
// spans of its own ("orchestration||name") on the embedded hub, which would
// double ours under other names; its tracer is a no-op, which keeps a
// parent's span context, as the library's spans do while no provider is set.
type withoutLibrarySpans struct{ *sdktrace.TracerProvider }

func (w withoutLibrarySpans) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	if strings.HasPrefix(name, "durabletask") {
		return noop.NewTracerProvider().Tracer(name)
	}
	return w.TracerProvider.Tracer(name, opts...)
}

// errorLog logs the SDK's errors (a collector that cannot be reached, say)
// as warnings, at most one a minute, with how many were left out; the SDK
// would write each to stderr.
type errorLog struct {
	log     zerolog.Logger
	mu      sync.Mutex
	last    time.Time
	skipped int
}

const errorLogEvery = time.Minute

func (e *errorLog) Handle(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if time.Since(e.last) < errorLogEvery {
		e.skipped++
		return
	}
	e.log.Warn().Err(err).Int("alikeLeftOut", e.skipped).Msg("tracing: spans could not be exported; the work goes on without them")
	e.last, e.skipped = time.Now(), 0
}
