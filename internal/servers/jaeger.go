package servers

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
)

// BuildJaeger builds Jaeger (the module in tools/jaeger, kept apart so that
// its many dependencies do not move this module's), or finds it built, and
// returns the binary's path. The first build takes minutes.
func BuildJaeger() (string, error) {
	return build("jaeger", "tools/jaeger", "github.com/jaegertracing/jaeger/cmd/jaeger")
}

// Jaeger is a running Jaeger: OTLP in, spans kept in memory, its query API
// out, all on loopback.
type Jaeger struct {
	*Process
	OTLPHTTP string // http://127.0.0.1:port, OTLP over HTTP
	OTLPGRPC string // http://127.0.0.1:port, OTLP over gRPC
	Query    string // http://127.0.0.1:port, the query API and UI
}

// StartJaeger starts the Jaeger binary with its configuration in dir, on
// free ports, and returns once its query API accepts connections.
func StartJaeger(binary, dir string) (*Jaeger, error) {
	var ports [4]int
	for i := range ports {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	addr := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	config := fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memory:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memory
    http:
      endpoint: %s
    grpc:
      endpoint: %s
receivers:
  otlp:
    protocols:
      http:
        endpoint: %s
      grpc:
        endpoint: %s
exporters:
  jaeger_storage_exporter:
    trace_storage: memory
`, addr(ports[0]), addr(ports[1]), addr(ports[2]), addr(ports[3]))
	file := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(file, []byte(config), 0o644); err != nil {
		return nil, err
	}
	p, err := start("jaeger", addr(ports[0]), binary, "--config", file)
	if err != nil {
		return nil, err
	}
	// The query API is up; the receivers start with it, but check.
	for _, port := range ports[2:] {
		if err := waitListening(p, addr(port)); err != nil {
			p.Stop()
			return nil, err
		}
	}
	return &Jaeger{Process: p, Query: "http://" + addr(ports[0]), OTLPHTTP: "http://" + addr(ports[2]), OTLPGRPC: "http://" + addr(ports[3])}, nil
}

// Span is a span as Jaeger's query API returns it. Times are in
// microseconds.
type Span struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	StartTime int64 `json:"startTime"`
	Duration  int64 `json:"duration"`
	Tags      []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
	Logs []struct {
		Fields []struct {
			Key   string `json:"key"`
			Value any    `json:"value"`
		} `json:"fields"`
	} `json:"logs"`
	ProcessID string `json:"processID"`
}

// Parent is the id of the span's parent, "" for a root.
func (s Span) Parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Tag is the value of the span's tag key, and whether it has it.
func (s Span) Tag(key string) (any, bool) {
	for _, t := range s.Tags {
		if t.Key == key {
			return t.Value, true
		}
	}
	return nil, false
}

// Trace returns the spans Jaeger holds of trace id (32 hex digits); none,
// and no error, if it holds none yet.
func (j *Jaeger) Trace(ctx context.Context, id string) ([]Span, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.Query+"/api/traces/"+id, nil)
	if err != nil {
		return nil, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jaeger: GET /api/traces/%s: %s", id, res.Status)
	}
	var body struct {
		Data []struct {
			Spans []Span `json:"spans"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("jaeger: reading trace %s: %w", id, err)
	}
	var spans []Span
	for _, t := range body.Data {
		spans = append(spans, t.Spans...)
	}
	return spans, nil
}
