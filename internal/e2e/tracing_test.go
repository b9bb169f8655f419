package e2e

// End-to-end tests of tracing: a fan-out is one trace in a real Jaeger.

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"fanoutfanin/internal/servers"
)

var jaeger struct {
	once sync.Once
	bin  string
	err  error
}

// startJaeger starts a Jaeger of its own for the test, building it once
// for the test binary (minutes, the first time on a machine).
func startJaeger(t *testing.T) *servers.Jaeger {
	t.Helper()
	jaeger.once.Do(func() { jaeger.bin, jaeger.err = servers.BuildJaeger() })
	if jaeger.err != nil {
		t.Fatal(jaeger.err)
	}
	j, err := servers.StartJaeger(jaeger.bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Stop)
	return j
}

// tracingSettings send the handler's spans to j over OTLP/HTTP, or over
// OTLP/gRPC, soon after they end.
func tracingSettings(j *servers.Jaeger, grpc bool) []string {
	endpoint, protocol := j.OTLPHTTP, "http/protobuf"
	if grpc {
		endpoint, protocol = j.OTLPGRPC, "grpc"
	}
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT", endpoint,
		"OTEL_EXPORTER_OTLP_PROTOCOL", protocol,
		"OTEL_SERVICE_NAME", "fanout-e2e",
		"OTEL_BSP_SCHEDULE_DELAY", "100",
	}
}

// waitForTrace polls j for trace id until done says its spans are all
// there.
func waitForTrace(t *testing.T, j *servers.Jaeger, id string, done func([]servers.Span) bool) []servers.Span {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		spans, err := j.Trace(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if done(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s in Jaeger after 30 s:\n%s", id, describe(spans))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func named(spans []servers.Span, name string) []servers.Span {
	var out []servers.Span
	for _, s := range spans {
		if s.OperationName == name {
			out = append(out, s)
		}
	}
	return out
}

func describe(spans []servers.Span) string {
	var lines []string
	for _, s := range spans {
		id, _ := s.Tag("durabletask.task.instance_id")
		lines = append(lines, fmt.Sprintf("  %s %s (parent %s) %v", s.SpanID, s.OperationName, s.Parent(), id))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// A fan-out started with a traceparent is one trace: the start, the
// orchestration, its partitions, each attempt at each item (a retried item
// twice, its failed attempt marked as an error), each linked to its
// parent; and the lines an activity logs carry the trace's id.
// On the scheduler path, the trace context travels in the protocol's fields,
// which the conformance server relays as the scheduler does (the upstream
// v0.6.0 sidecar drops them); there the spans go over OTLP/gRPC.
func TestFanOutIsOneTrace(t *testing.T) {
	for _, b := range lifecycleBackends {
		if b.name == "sidecar" {
			continue
		}
		t.Run(b.name, func(t *testing.T) { testFanOutIsOneTrace(t, b.settings, b.name != "embedded") })
	}
}

func testFanOutIsOneTrace(t *testing.T, backend func(t *testing.T, root string, extra ...string) map[string]string, grpc bool) {
	j := startJaeger(t)
	root := newAppRoot(t, nil)
	settings := backend(t, root, append(tracingSettings(j, grpc),
		"FANOUT_PARTITION_SIZE", "3",
		"FANOUT_FAIL_ITEMS", "flaky-.*", "FANOUT_FAIL_ATTEMPTS", "1", "FANOUT_ITEM_RETRY_DELAY", "10ms")...)
	p := startHandler(t, root, settings)
	p.waitReady(t)

	traceID, caller := randomHex(16), randomHex(8)
	code, _, body := p.forwardWith(t, "POST", "/api/fan_out_fan_in", `{"workItems":["a","b","flaky-c","d","e"]}`,
		map[string]string{"traceparent": "00-" + traceID + "-" + caller + "-01"})
	if code != 202 {
		t.Fatalf("start: %d %v", code, body)
	}
	id := body["id"].(string)
	pollStatus(t, p, id, "Completed")

	const orchestrator, partition = "orchestration:fan_out_fan_in_orchestrator", "orchestration:fan_out_fan_in_partition"
	spans := waitForTrace(t, j, traceID, func(s []servers.Span) bool {
		return len(named(s, orchestrator)) == 1 && len(named(s, partition)) == 2 && len(named(s, "activity:process_work_item")) >= 6
	})
	byID := map[string]servers.Span{}
	for _, s := range spans {
		byID[s.SpanID] = s
	}
	check := func(what string, s servers.Span, parent string) {
		t.Helper()
		if s.Parent() != parent {
			t.Errorf("%s: parent %s (%s), want %s (%s)", what, s.Parent(), byID[s.Parent()].OperationName, parent, byID[parent].OperationName)
		}
	}

	creates := named(spans, "create_orchestration:fan_out_fan_in_orchestrator")
	if len(creates) != 1 {
		t.Fatalf("create_orchestration spans: %d, want 1; the trace:\n%s", len(creates), describe(spans))
	}
	check("create_orchestration", creates[0], caller)
	orch := named(spans, orchestrator)[0]
	check(orchestrator, orch, creates[0].SpanID)
	if v, _ := orch.Tag("durabletask.task.instance_id"); v != id {
		t.Errorf("%s: instance id %v, want %s", orchestrator, v, id)
	}
	if v, _ := orch.Tag("durabletask.task.status"); v != "Completed" {
		t.Errorf("%s: status %v, want Completed", orchestrator, v)
	}
	partitions := map[string]bool{}
	for _, s := range named(spans, partition) {
		check(partition, s, orch.SpanID)
		partitions[s.SpanID] = true
	}

	attempts := map[float64][]servers.Span{}
	for _, s := range named(spans, "activity:process_work_item") {
		if !partitions[s.Parent()] {
			t.Errorf("process_work_item span %s: parent %s (%s), want a partition's", s.SpanID, s.Parent(), byID[s.Parent()].OperationName)
		}
		index, ok := s.Tag("fanout.item.index")
		if !ok {
			t.Errorf("process_work_item span %s has no fanout.item.index", s.SpanID)
		}
		for _, key := range []string{"durabletask.type", "durabletask.task.name", "durabletask.task.instance_id", "durabletask.task.task_id"} {
			if _, ok := s.Tag(key); !ok {
				t.Errorf("process_work_item span %s has no %s", s.SpanID, key)
			}
		}
		i, _ := index.(float64)
		attempts[i] = append(attempts[i], s)
	}
	for i := range 5 {
		want := 1
		if i == 2 { // flaky-c fails its first attempt
			want = 2
		}
		if got := len(attempts[float64(i)]); got != want {
			t.Errorf("item %d: %d process_work_item spans, want %d", i, got, want)
		}
	}
	failed := 0
	for _, s := range attempts[2] {
		if v, _ := s.Tag("otel.status_code"); v == "ERROR" {
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("item 2's attempts: %d marked as errors, want 1:\n%s", failed, describe(attempts[2]))
	}
	for _, s := range named(spans, "activity:aggregate_results") {
		if s.Parent() != orch.SpanID && !partitions[s.Parent()] {
			t.Errorf("aggregate_results span %s: parent %s, want an orchestration's", s.SpanID, s.Parent())
		}
	}

	logged := 0
	for _, l := range logLines(t, p.stdout.String()) {
		if l["message"] == "fanning out" || l["message"] == "fan-in complete" {
			if l["traceId"] != traceID || l["spanId"] != orch.SpanID {
				t.Errorf("the orchestrator's line %q names trace %v, span %v; want %s and its span %s", l["message"], l["traceId"], l["spanId"], traceID, orch.SpanID)
			}
		}
		if l["message"] == "processed work item" {
			logged++
			if l["traceId"] != traceID || byID[fmt.Sprint(l["spanId"])].OperationName != "activity:process_work_item" {
				t.Errorf("an activity's log line names trace %v, span %v; want %s and its process_work_item span", l["traceId"], l["spanId"], traceID)
			}
		}
	}
	if logged == 0 {
		t.Error("no activity logged a line")
	}
	for _, line := range strings.Split(p.stdout.String(), "\n") {
		if strings.Count(line, `"traceId"`) > 1 || strings.Count(line, `"spanId"`) > 1 {
			t.Errorf("a log line names its trace twice: %s", line)
		}
	}
}

// In payload mode the caller's traceparent comes among the invocation's
// headers; it is the parent of the start's span all the same, and the
// function's log lines, which the reply carries, name the trace.
func TestPayloadModeStartJoinsTheCallersTrace(t *testing.T) {
	j := startJaeger(t)
	root := newAppRoot(t, nil)
	p := startHandler(t, root, embedded(t, root, tracingSettings(j, false)...))
	p.waitReady(t)
	traceID, caller := randomHex(16), randomHex(8)
	res, logs := p.invokeWith(t, "fan_out_fan_in", "POST", "http://localhost:7071/api/fan_out_fan_in", `{"workItems":["a"]}`, nil,
		map[string]string{"traceparent": "00-" + traceID + "-" + caller + "-01"})
	if res["statusCode"] != 202.0 {
		t.Fatalf("start in payload mode: %v", res)
	}
	spans := waitForTrace(t, j, traceID, func(s []servers.Span) bool {
		return len(named(s, "orchestration:fan_out_fan_in_orchestrator")) == 1
	})
	creates := named(spans, "create_orchestration:fan_out_fan_in_orchestrator")
	if len(creates) != 1 || creates[0].Parent() != caller {
		t.Fatalf("create_orchestration spans: want one, child of %s:\n%s", caller, describe(spans))
	}
	named := false
	for _, l := range logs {
		named = named || strings.Contains(l, traceID)
	}
	if !named {
		t.Errorf("no log line in the reply names trace %s: %q", traceID, logs)
	}
}

// A collector that cannot be reached neither fails a fan-out nor holds up
// the handler's stop past its grace period: spans that cannot be sent are
// dropped, with a warning in the handler's log (not on stderr, which the
// SDK would write to).
func TestUnreachableCollectorNeitherFailsNorHoldsUpTheStop(t *testing.T) {
	const grace = 2 * time.Second
	root := newAppRoot(t, nil)
	closed := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	p := startHandler(t, root, embedded(t, root,
		"OTEL_EXPORTER_OTLP_ENDPOINT", closed, "OTEL_BSP_SCHEDULE_DELAY", "100",
		"FANOUT_SHUTDOWN_GRACE", grace.String()))
	p.waitReady(t)
	code, _, body := p.forwardWith(t, "POST", "/api/fan_out_fan_in", `{"workItems":["a","b","c"]}`,
		map[string]string{"traceparent": "00-" + randomHex(16) + "-" + randomHex(8) + "-01"})
	if code != 202 {
		t.Fatalf("start: %d %v", code, body)
	}
	checkSummary(t, pollStatus(t, p, body["id"].(string), "Completed"), []string{"a", "b", "c"})

	begin := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v, want a clean exit", err)
	}
	if elapsed := time.Since(begin); elapsed > grace+time.Second {
		t.Errorf("exited %s after SIGTERM; want within the grace period of %s", elapsed, grace)
	}
	if n := countLogs(t, p, "tracing: spans could not be exported; the work goes on without them"); n != 1 {
		t.Errorf("the spans not exported were reported %d times, want once (at most once a minute)", n)
	}
	if s := p.stderr.String(); s != "" {
		t.Errorf("stderr: %s", s)
	}
}

// Spans still buffered when the handler is stopped are sent before it
// exits: with a batch delay of a minute, only the stop's flush can have
// sent them.
func TestStopSendsTheSpansStillBuffered(t *testing.T) {
	j := startJaeger(t)
	root := newAppRoot(t, nil)
	settings := embedded(t, root, append(tracingSettings(j, false), "OTEL_BSP_SCHEDULE_DELAY", "60000")...)
	p := startHandler(t, root, settings)
	p.waitReady(t)
	traceID := randomHex(16)
	code, _, body := p.forwardWith(t, "POST", "/api/fan_out_fan_in", `{"workItems":["a","b"]}`,
		map[string]string{"traceparent": "00-" + traceID + "-" + randomHex(8) + "-01"})
	if code != 202 {
		t.Fatalf("start: %d %v", code, body)
	}
	pollStatus(t, p, body["id"].(string), "Completed")
	if spans, err := j.Trace(context.Background(), traceID); err != nil || len(spans) != 0 {
		t.Fatalf("before the stop Jaeger holds %d spans (%v); with a batch delay of a minute, want none yet", len(spans), err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	waitForTrace(t, j, traceID, func(s []servers.Span) bool {
		return len(named(s, "orchestration:fan_out_fan_in_orchestrator")) == 1 && len(named(s, "activity:process_work_item")) == 2
	})
}

// A fan-out whose handler is killed mid-run and started again is still one
// trace: the new process names the same orchestration and partition spans
// as the parents of the items it runs, since their ids are derived, not
// kept in a process.
func TestTraceSurvivesAKill(t *testing.T) {
	j := startJaeger(t)
	root := newAppRoot(t, nil)
	settings := embedded(t, root, append(tracingSettings(j, false),
		"FANOUT_WORK_MIN_DELAY", "200ms", "FANOUT_WORK_MAX_DELAY", "200ms",
		"FANOUT_PARTITION_SIZE", "3", "FANOUT_EMBEDDED_LOCK_TIMEOUT", "1s")...)
	p := startHandler(t, root, settings)
	p.waitReady(t)
	traceID := randomHex(16)
	code, _, body := p.forwardWith(t, "POST", "/api/fan_out_fan_in", `{"workItems":["a","b","c","d","e","f"],"maxParallelism":2}`,
		map[string]string{"traceparent": "00-" + traceID + "-" + randomHex(8) + "-01"})
	if code != 202 {
		t.Fatalf("start: %d %v", code, body)
	}
	id := body["id"].(string)
	waitLog(t, p, "processed work item", 2, 30*time.Second)
	time.Sleep(300 * time.Millisecond) // the first spans exported
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.waitExit(t, 15*time.Second)

	again := startHandler(t, root, settings)
	again.waitReady(t)
	pollStatus(t, again, id, "Completed")
	spans := waitForTrace(t, j, traceID, func(s []servers.Span) bool {
		return len(named(s, "orchestration:fan_out_fan_in_orchestrator")) == 1 && len(named(s, "orchestration:fan_out_fan_in_partition")) == 2
	})
	orch := named(spans, "orchestration:fan_out_fan_in_orchestrator")[0]
	partitions := map[string]bool{}
	for _, s := range named(spans, "orchestration:fan_out_fan_in_partition") {
		partitions[s.SpanID] = true
		if s.Parent() != orch.SpanID {
			t.Errorf("partition span %s: parent %s, want the orchestration's %s", s.SpanID, s.Parent(), orch.SpanID)
		}
	}
	traced := map[float64]bool{}
	for _, s := range named(spans, "activity:process_work_item") {
		if !partitions[s.Parent()] {
			t.Errorf("process_work_item span %s: parent %s, want a partition's:\n%s", s.SpanID, s.Parent(), describe(spans))
		}
		i, _ := s.Tag("fanout.item.index")
		traced[i.(float64)] = true
	}
	// What the killed process had not yet sent is lost with it; what the
	// new one ran is in the trace.
	ran := 0
	for _, l := range logLines(t, again.stdout.String()) {
		if l["message"] == "processed work item" {
			ran++
			if !traced[l["index"].(float64)] {
				t.Errorf("item %v, run after the restart, has no span:\n%s", l["index"], describe(spans))
			}
		}
	}
	if ran == 0 {
		t.Error("the handler started again ran no item")
	}
}
