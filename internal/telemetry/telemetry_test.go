package telemetry_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub/embedded"
	"fanoutfanin/internal/taskhub/hubtest"
	"fanoutfanin/internal/telemetry"
)

// calls is a fan-out whose work calls a server, passing its context's
// trace on as an instrumented HTTP client (otelhttp) does; the result is
// the traceparent the server saw.
func calls(server string) fanout.Spec[string, string, struct{ N int }] {
	return fanout.Spec[string, string, struct{ N int }]{
		Name: "calls",
		Work: func(ctx context.Context, it fanout.Item[string]) (string, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/"+it.Value, nil)
			if err != nil {
				return "", err
			}
			propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				return "", err
			}
			res.Body.Close()
			return req.Header.Get("traceparent"), nil
		},
		Aggregate: fanout.Aggregate[string, struct{ N int }]{
			Add:   func(s struct{ N int }, _ string) struct{ N int } { s.N++; return s },
			Merge: func(a, b struct{ N int }) struct{ N int } { a.N += b.N; return a },
		},
	}
}

// The work's ctx carries the span of its attempt, so a call it makes is
// the child of that span, in the trace of the fan-out's start.
func TestWorkCallsJoinTheTrace(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]string{} // item → traceparent the server saw
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path[1:]] = r.Header.Get("traceparent")
		mu.Unlock()
	}))
	defer server.Close()

	spans := tracetest.NewInMemoryExporter()
	tracing := telemetry.SyncedTo(spans)
	e := fanout.New(fanout.Options{Log: zerolog.Nop(), Tracer: tracing.Tracer})
	if err := fanout.Register(e, calls(server.URL)); err != nil {
		t.Fatal(err)
	}
	hub, err := embedded.Open(context.Background(), hubtest.Config(filepath.Join(t.TempDir(), "hub.sqlite")), e.Registry(), zerolog.Nop(), tracing.Tracer)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(context.Background())

	caller, _ := telemetry.ParseTraceParent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "")
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), caller)
	items, _ := json.Marshal([]string{"a", "b", "c"})
	started, err := e.Client(hub.Client, hub.Bounds).Start(ctx, "calls", fanout.Request{Items: items})
	if err != nil {
		t.Fatal(err)
	}
	hubtest.Wait(t, hub.Client, api.InstanceID(started.ID), time.Minute, nil)

	activities := map[string]string{} // span id → name
	for _, s := range spans.GetSpans() {
		if s.SpanContext.TraceID() != caller.TraceID() {
			t.Errorf("span %s is in trace %s, want the caller's %s", s.Name, s.SpanContext.TraceID(), caller.TraceID())
		}
		activities[s.SpanContext.SpanID().String()] = s.Name
	}
	mu.Lock()
	defer mu.Unlock()
	for _, item := range []string{"a", "b", "c"} {
		sc, ok := telemetry.ParseTraceParent(seen[item], "")
		if !ok {
			t.Errorf("the call for %s came without a traceparent", item)
			continue
		}
		if sc.TraceID() != caller.TraceID() || activities[sc.SpanID().String()] != "activity:calls_work" {
			t.Errorf("the call for %s is a child of %s in trace %s (%q); want an activity:calls_work span of trace %s",
				item, sc.SpanID(), sc.TraceID(), activities[sc.SpanID().String()], caller.TraceID())
		}
	}
}
