package e2e

// End-to-end tests of the scheduler path: the real handler binary on a real
// durabletask gRPC backend (the upstream durabletask-go sidecar), directly
// and through a strict DTS conformance server.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"fanoutfanin/internal/dtstest"
)

// countLogs counts the handler's log lines with the given message.
func countLogs(t *testing.T, p *handlerProcess, message string) int {
	t.Helper()
	n := 0
	for _, l := range logLines(t, p.stdout.String()) {
		if l["message"] == message {
			n++
		}
	}
	return n
}

// waitLog waits until the handler has logged message at least n times.
func waitLog(t *testing.T, p *handlerProcess, message string, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for countLogs(t, p, message) < n {
		if time.Now().After(deadline) {
			t.Fatalf("handler did not log %q %d times within %s", message, n, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func workItems(n int) ([]string, string) {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf("Task%02d", i+1)
	}
	body, _ := json.Marshal(map[string]any{"workItems": items})
	return items, string(body)
}

// checkSummary checks a completed instance's output covers items in order.
func checkSummary(t *testing.T, st map[string]any, items []string) {
	t.Helper()
	out, ok := st["output"].(map[string]any)
	if !ok {
		t.Fatalf("no output: %v", st)
	}
	if got, want := out["total_items_processed"], float64(len(items)); got != want {
		t.Errorf("total_items_processed: got %v, want %v", got, want)
	}
	processed, _ := out["processed_items"].([]any)
	if len(processed) != len(items) {
		t.Fatalf("processed_items: got %d, want %d", len(processed), len(items))
	}
	for i, it := range items {
		if processed[i] != "Processed_"+it {
			t.Fatalf("processed_items[%d]: got %v, want Processed_%s", i, processed[i], it)
		}
	}
}

// Started before its scheduler, the handler is ready at once, answers 503
// with Retry-After while the scheduler is down, logs the outage once, and
// recovers by itself once the scheduler is up.
func TestSchedulerOutageThenRecovery(t *testing.T) {
	root := newAppRoot(t, nil)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startHandler(t, root, onScheduler(t, addr))
	p.waitReady(t)

	code, hdr, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a", "b"]}`)
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("start while the scheduler is down: got %d (Retry-After %q) %v, want 503 with Retry-After", code, hdr.Get("Retry-After"), body)
	}
	if msg, _ := body["error"].(string); !strings.Contains(msg, "127.0.0.1") {
		t.Errorf("503 error should name the scheduler's host: %q", msg)
	}
	if code, _, body := p.forward(t, "GET", "/api/status/some-id", ""); code != http.StatusServiceUnavailable {
		t.Errorf("status while the scheduler is down: got %d %v, want 503", code, body)
	}
	time.Sleep(3 * time.Second) // several reconnect attempts

	dtstest.StartSidecar(t, port, filepath.Join(root, "sidecar.sqlite"))
	var id string
	deadline := time.Now().Add(30 * time.Second)
	for id == "" {
		code, _, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a", "b"]}`)
		switch {
		case code == http.StatusAccepted:
			id = body["id"].(string)
		case code != http.StatusServiceUnavailable:
			t.Fatalf("start after the scheduler came up: got %d %v", code, body)
		case time.Now().After(deadline):
			t.Fatal("still 503 30 s after the scheduler came up")
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkSummary(t, pollStatus(t, p, id, "Completed"), []string{"a", "b"})
	if n := countLogs(t, p, "the scheduler cannot be used; retrying until it can"); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
}

// Stopped with SIGTERM while an activity runs, the handler lets it finish
// and its result is accepted — the work-item stream, which holds its lease,
// stays open until then — and the next handler finishes the orchestration.
func TestSchedulerSIGTERMFinishesWorkInFlight(t *testing.T) {
	root := newAppRoot(t, nil)
	addr, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
	settings := onScheduler(t, addr, "FANOUT_WORK_MIN_DELAY", "1s", "FANOUT_WORK_MAX_DELAY", "1s", "FANOUT_LOG_LEVEL", "debug")
	p := startHandler(t, root, settings)
	p.waitReady(t)
	items := []string{"a", "b", "c"}
	_, _, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a", "b", "c"]}`)
	id := body["id"].(string)
	waitLog(t, p, "processing work item", 1, 30*time.Second)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	started, finished := countLogs(t, p, "processing work item"), countLogs(t, p, "processed work item")
	if started == 0 || finished != started {
		t.Errorf("items started before the stop: %d, finished: %d", started, finished)
	}
	if n := countLogs(t, p, "completing the work item failed; handing it back"); n != 0 {
		t.Errorf("%d results of work in flight were refused", n)
	}

	again := startHandler(t, root, settings)
	again.waitReady(t)
	checkSummary(t, pollStatus(t, again, id, "Completed"), items)
}

// Two handlers on one task hub share the work, and when one is killed
// mid-run the other finishes it.
func TestSchedulerScaleOut(t *testing.T) {
	rootA, rootB := newAppRoot(t, nil), newAppRoot(t, nil)
	addr, _ := dtstest.StartSidecar(t, 0, filepath.Join(rootA, "sidecar.sqlite"))
	settings := onScheduler(t, addr, "FANOUT_WORK_MIN_DELAY", "20ms", "FANOUT_WORK_MAX_DELAY", "40ms")
	a := startHandler(t, rootA, settings)
	b := startHandler(t, rootB, settings)
	a.waitReady(t)
	b.waitReady(t)

	items, body := workItems(50)
	_, _, res := a.forward(t, "POST", "/api/fan_out_fan_in", body)
	id := res["id"].(string)
	waitLog(t, a, "processed work item", 5, 60*time.Second)
	waitLog(t, b, "processed work item", 5, 60*time.Second)
	b.cmd.Process.Signal(syscall.SIGKILL)
	b.waitExit(t, 15*time.Second)
	byB := countLogs(t, b, "processed work item")

	checkSummary(t, pollStatus(t, a, id, "Completed"), items)
	byA := countLogs(t, a, "processed work item")
	t.Logf("process_work_item ran %d times on handler A and %d on handler B (killed mid-run)", byA, byB)
	if byA+byB < len(items) {
		t.Errorf("only %d of %d items were processed", byA+byB, len(items))
	}
	if byB >= len(items) {
		t.Errorf("handler B processed all %d items before it was killed; want the kill mid-run", byB)
	}
}

// Through the strict conformance server: every call carries the task hub and
// user agent, completions carry their tokens, long histories are streamed,
// health pings are ignored quietly, a dropped stream is survived, nothing
// goes over the limits, and every item is counted once.
func TestSchedulerConformance(t *testing.T) {
	root := newAppRoot(t, func(h map[string]any) {
		dt := h["extensions"].(map[string]any)["durableTask"].(map[string]any)
		dt["maxConcurrentActivityFunctions"] = 7
		dt["maxConcurrentOrchestratorFunctions"] = 3
	})
	upstream, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
	srv, err := dtstest.Start(dtstest.Options{
		Upstream:               upstream,
		TaskHub:                "default",
		HistoryStreamingEvents: 20,
		PingInterval:           100 * time.Millisecond,
		DropFirstStreamAfter:   12,
		Logf:                   t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)

	p := startHandler(t, root, onScheduler(t, srv.Addr()))
	p.waitReady(t)
	items, body := workItems(30)
	_, _, res := p.forward(t, "POST", "/api/fan_out_fan_in", body)
	id := res["id"].(string)
	checkSummary(t, pollStatus(t, p, id, "Completed"), items)

	for _, v := range srv.Violations() {
		t.Errorf("protocol violation: %s", v)
	}
	stats := srv.Stats()
	t.Logf("conformance server: %+v", stats)
	if stats.DroppedStreams != 1 || stats.HistoryStreams == 0 || stats.Pings == 0 {
		t.Errorf("the run did not exercise a dropped stream, history streaming and pings: %+v", stats)
	}
	streams := srv.Streams()
	if len(streams) < 2 {
		t.Errorf("work-item streams: %d, want a reconnect after the drop", len(streams))
	}
	for _, s := range streams {
		if s.MaxActivities != 7 || s.MaxOrchestrations != 3 || len(s.Capabilities) != 1 || s.Capabilities[0] != 1 {
			t.Errorf("stream asked for %+v, want the host.json limits (7 activities, 3 orchestrations) and history streaming", s)
		}
	}
	completions := srv.ActivityCompletions()
	if len(completions) != len(items)+1 { // every item, and aggregate_results
		t.Errorf("activities completed: %d, want %d", len(completions), len(items)+1)
	}
	for task, n := range completions {
		if n != 1 {
			t.Errorf("activity %s completed %d times", task, n)
		}
	}
	if strings.Contains(p.stdout.String(), "unknown kind") || strings.Contains(strings.ToLower(p.stdout.String()), "ping") {
		t.Errorf("health pings were logged")
	}
}

// With the scheduler's limits lowered to 16 KiB a payload and 64 KiB a
// message, a few hundred long items take every path that keeps a large
// fan-out within them: the items follow the start in parts, run in
// partitions started over several steps, and the summary leaves out a list
// too large to carry. Nothing sent is over the limits, and every item is
// counted once; in batches of ten items per activity too, ten times fewer
// work activities.
func TestSchedulerLargeFanOutWithinLimits(t *testing.T) {
	for _, tc := range []struct {
		name             string
		itemsPerActivity int
		maxParallelism   int
		work             int // work activities completed
	}{
		{"one item per activity", 1, 15, 300},
		{"ten items per activity", 10, 150, 30},
	} {
		t.Run(tc.name, func(t *testing.T) { testLargeFanOutWithinLimits(t, tc.itemsPerActivity, tc.maxParallelism, tc.work) })
	}
}

func testLargeFanOutWithinLimits(t *testing.T, itemsPerActivity, maxParallelism, work int) {
	root := newAppRoot(t, nil)
	upstream, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
	srv, err := dtstest.Start(dtstest.Options{
		Upstream:        upstream,
		TaskHub:         "default",
		MaxPayloadBytes: 16 << 10,
		MaxMessageBytes: 64 << 10,
		Logf:            t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	p := startHandler(t, root, onScheduler(t, srv.Addr(),
		"FANOUT_SCHEDULER_MAX_PAYLOAD_BYTES", "16384",
		"FANOUT_SCHEDULER_MAX_STEP_BYTES", "65536",
		"FANOUT_PARTITION_SIZE", "20"))
	p.waitReady(t)

	items := make([]string, 300)
	for i := range items {
		items[i] = fmt.Sprintf("%03d-%s", i, strings.Repeat("a-long-work-item-", 14)) // 242 characters
	}
	// Fifteen partitions at once: their inputs, some 5 KB each, are more than
	// one 64 KiB step can start.
	body, _ := json.Marshal(map[string]any{"workItems": items, "maxParallelism": maxParallelism, "itemsPerActivity": itemsPerActivity})
	code, _, res := p.forward(t, "POST", "/api/fan_out_fan_in", string(body))
	if code != http.StatusAccepted {
		t.Fatalf("start: got %d %v", code, res)
	}
	id := res["id"].(string)
	st := pollStatus(t, p, id, "Completed")
	out := st["output"].(map[string]any)
	if out["total_items_processed"] != float64(len(items)) || out["processed_items_omitted"] != true || out["partitions"] != 15.0 {
		t.Errorf("output: %v, want %d items over 15 partitions, processed_items omitted", out, len(items))
	}
	var input map[string]any
	json.Unmarshal(mustMarshal(st["input"]), &input)
	if input["chunks"] == nil || input["chunks"].(float64) < 2 {
		t.Errorf("input %v: want the items sent in parts", input)
	}
	// Each partition's status lists its share of the items.
	_, _, part := p.forward(t, "GET", "/api/status/"+id+":p14", "")
	listed, _ := part["output"].(map[string]any)["processed_items"].([]any)
	if len(listed) != 20 || listed[19] != "Processed_"+items[299] {
		t.Errorf("partition 14 lists %d items, want the last 20", len(listed))
	}

	for _, v := range srv.Violations() {
		t.Errorf("protocol violation: %s", v)
	}
	completions := srv.ActivityCompletions()
	processed := 0
	for task, n := range completions {
		if n != 1 {
			t.Errorf("activity %s completed %d times", task, n)
		}
		processed += n
	}
	// The work, and aggregate_results in each partition and the parent.
	if want := work + 15 + 1; processed != want {
		t.Errorf("activities completed: %d, want %d", processed, want)
	}
	if largest := srv.Stats().LargestRequestBytes; largest > 64<<10 {
		t.Errorf("largest request: %d bytes, over 64 KiB", largest)
	}
}

func mustMarshal(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
