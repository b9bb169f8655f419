package e2e

// The handler in both of the host's request modes, and its starts, stops
// and kills.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"fanoutfanin/internal/taskhub/hubtest"
)

func TestForwardingMode(t *testing.T) {
	forEachBackend(t, testForwardingMode)
}

func testForwardingMode(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
	root := newAppRoot(t, nil)
	p := startHandler(t, root, settings(t, root))
	p.waitReady(t)

	code, hdr, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["Task1", "Task2", "Task3", "Task4", "Task5", "Task6"]}`)
	if code != http.StatusAccepted {
		t.Fatalf("start: got %d %v, want 202", code, body)
	}
	id, _ := body["id"].(string)
	if got, want := body["statusQueryGetUri"], "http://localhost:7071/api/status/"+id; got != want {
		t.Errorf("statusQueryGetUri: got %v, want %v", got, want)
	}
	if got, want := hdr.Get("Location"), "http://localhost:7071/api/status/"+id; got != want {
		t.Errorf("Location: got %q, want %q", got, want)
	}

	st := pollStatus(t, p, id, "Completed")
	out := st["output"].(map[string]any)
	if got, want := out["total_items_processed"], 6.0; got != want {
		t.Errorf("total_items_processed: got %v, want %v", got, want)
	}
	if got, want := fmt.Sprint(out["processed_items"]), "[Processed_Task1 Processed_Task2 Processed_Task3 Processed_Task4 Processed_Task5 Processed_Task6]"; got != want {
		t.Errorf("processed_items: got %s, want %s", got, want)
	}
	if out["success"] != true {
		t.Errorf("success: got %v", out["success"])
	}

	// Errors are JSON, in forwarding mode as everywhere.
	if code, _, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": [""]}`); code != 400 || body["error"] != "workItems[0] is empty" {
		t.Errorf("bad input: got %d %v", code, body)
	}
	if code, _, body := p.forward(t, "GET", "/api/nothing-here", ""); code != 404 || body["error"] == nil {
		t.Errorf("unknown route: got %d %v", code, body)
	}

	// Every log line about the orchestration carries its instance id.
	seen := map[string]int{}
	for _, l := range logLines(t, p.stdout.String()) {
		msg, _ := l["message"].(string)
		switch msg {
		case "started orchestration", "fanning out", "processed work item", "aggregated results", "fan-in complete":
			seen[msg]++
			if l["instanceId"] != id {
				t.Errorf("log line %v: instanceId %v, want %s", l, l["instanceId"], id)
			}
		}
	}
	if seen["processed work item"] != 6 || seen["started orchestration"] != 1 || seen["fan-in complete"] != 1 {
		t.Errorf("log lines about the orchestration: got %v", seen)
	}

	// The host stops the handler with SIGTERM; it stops promptly and cleanly.
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// Stopped with SIGTERM mid-fan-out, the handler lets the items in flight
// finish and leaves nothing locked, so the next start carries on at once
// rather than after the lock timeout.
func TestSIGTERMLeavesNothingLocked(t *testing.T) {
	root := newAppRoot(t, nil)
	settings := embedded(t, root, "FANOUT_WORK_MIN_DELAY", "800ms", "FANOUT_WORK_MAX_DELAY", "800ms")
	p := startHandler(t, root, settings)
	p.waitReady(t)
	_, _, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a", "b", "c"]}`)
	id := body["id"].(string)
	pollStatus(t, p, id, "Running")
	time.Sleep(200 * time.Millisecond) // the items are being worked on
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}

	lockedTasks, lockedInstances, err := hubtest.Locked(filepath.Join(root, "data", "default.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	if lockedTasks != 0 || lockedInstances != 0 {
		t.Errorf("after SIGTERM: %d work items and %d instances still locked", lockedTasks, lockedInstances)
	}
	if done := completedItems(t, filepath.Join(root, "data", "default.sqlite"), id); len(done) != 3 {
		t.Errorf("items in flight at SIGTERM that finished and were recorded: %d, want 3", len(done))
	}

	again := startHandler(t, root, settings) // lock timeout 30 s
	again.waitReady(t)
	start := time.Now()
	pollStatus(t, again, id, "Completed")
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("took %s to finish after the restart", elapsed)
	}
}

func TestPayloadMode(t *testing.T) {
	forEachBackend(t, testPayloadMode)
}

func testPayloadMode(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
	root := newAppRoot(t, nil)
	p := startHandler(t, root, settings(t, root))
	p.waitReady(t)

	res, logs := p.invoke(t, "fan_out_fan_in", "POST", "http://localhost:7071/api/fan_out_fan_in", `{"workItems": ["A", "B"]}`, nil)
	if got, want := res["statusCode"], 202.0; got != want {
		t.Fatalf("statusCode: got %v, want %v (%v)", got, want, res)
	}
	body := outputBody(t, res)
	id, _ := body["id"].(string)
	statusURL := "http://localhost:7071/api/status/" + id
	if got := body["statusQueryGetUri"]; got != statusURL {
		t.Errorf("statusQueryGetUri: got %v, want %v", got, statusURL)
	}
	if got := res["headers"].(map[string]any)["Location"]; got != statusURL {
		t.Errorf("Location header: got %v, want %v", got, statusURL)
	}
	if !slices.ContainsFunc(logs, func(l string) bool { return strings.Contains(l, "started orchestration") && strings.Contains(l, id) }) {
		t.Errorf("Logs %q lack the start of %s", logs, id)
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		res, _ := p.invoke(t, "status", "GET", statusURL, "", map[string]string{"instanceId": id})
		b := outputBody(t, res)
		if b["runtimeStatus"] == "Completed" {
			if res["statusCode"] != 200.0 {
				t.Errorf("completed statusCode: got %v, want 200", res["statusCode"])
			}
			if got := fmt.Sprint(b["output"].(map[string]any)["processed_items"]); got != "[Processed_A Processed_B]" {
				t.Errorf("processed_items: got %s", got)
			}
			break
		}
		if res["statusCode"] != 202.0 {
			t.Fatalf("while running: statusCode %v, want 202", res["statusCode"])
		}
		if time.Now().After(deadline) {
			t.Fatalf("never completed: %v", b)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A function's 4xx travels inside a 200 reply.
	res, _ = p.invoke(t, "fan_out_fan_in", "POST", "http://localhost:7071/api/fan_out_fan_in", `{"workItems": 5}`, nil)
	if res["statusCode"] != 400.0 || outputBody(t, res)["error"] != "workItems must be an array of strings" {
		t.Errorf("bad input in payload mode: got %v", res)
	}
	res, _ = p.invoke(t, "status", "GET", "http://localhost:7071/api/status/nope", "", map[string]string{"instanceId": "nope"})
	if res["statusCode"] != 404.0 {
		t.Errorf("unknown instance in payload mode: got %v", res)
	}

	// An unreadable payload, or an unknown function, is a plain error.
	for path, want := range map[string]int{"/fan_out_fan_in": 400, "/no_such_function": 404} {
		r, err := http.Post(p.url(path), "application/json", strings.NewReader(`{"Data": `))
		if err != nil {
			t.Fatal(err)
		}
		var e map[string]any
		json.NewDecoder(r.Body).Decode(&e)
		r.Body.Close()
		if r.StatusCode != want || e["error"] == nil {
			t.Errorf("POST %s with a broken payload: got %d %v, want %d with an error", path, r.StatusCode, e, want)
		}
	}
}

// A connection string the handler cannot use stops it at start with a
// message that names the setting and the problem, and shows none of the
// string's values but the endpoint's host.
func TestBadConnectionStringsStopTheHandler(t *testing.T) {
	const secret = "s3cr3t-client-id"
	for _, tc := range []struct {
		name, value string
		want        []string
	}{
		{"unknown key", "Endpoint=https://x.westus.durabletask.io;Authentication=ManagedIdentity;ClientID=" + secret + ";Passwrd=" + secret,
			[]string{`unknown key "Passwrd"`}},
		{"unknown authentication", "Endpoint=https://x.westus.durabletask.io;Authentication=" + secret,
			[]string{"Authentication", "ManagedIdentity", "WorkloadIdentity"}},
		{"missing endpoint", "Authentication=ManagedIdentity;ClientID=" + secret,
			[]string{"Endpoint"}},
		{"token over http", "Endpoint=http://x.westus.durabletask.io;Authentication=ManagedIdentity;ClientID=" + secret,
			[]string{"https"}},
		{"task hub differs from hubName", "Endpoint=http://localhost:8080;Authentication=None;TaskHub=other",
			[]string{`"other"`, `"default"`, "hubName"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := newAppRoot(t, nil)
			settings := withSettings(localSettings(t), "DURABLE_TASK_SCHEDULER_CONNECTION_STRING", tc.value)
			p := startHandler(t, root, settings)
			if err := p.waitExit(t, 15*time.Second); err == nil {
				t.Fatal("handler exited 0")
			}
			stderr := p.stderr.String()
			for _, want := range append(tc.want, "DURABLE_TASK_SCHEDULER_CONNECTION_STRING") {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q: %s", want, stderr)
				}
			}
			if strings.Contains(stderr+p.stdout.String(), secret) {
				t.Errorf("a value from the connection string leaked into the output: %s %s", stderr, p.stdout)
			}
		})
	}
}

func TestBadHostJSONIsAClearStartupError(t *testing.T) {
	root := newAppRoot(t, func(h map[string]any) {
		h["extensions"].(map[string]any)["durableTask"].(map[string]any)["maxConcurrentActivityFunctions"] = "many"
	})
	p := startHandler(t, root, embedded(t, root))
	if err := p.waitExit(t, 15*time.Second); err == nil {
		t.Fatal("handler exited 0")
	}
	if got := p.stderr.String(); !strings.Contains(got, "maxConcurrentActivityFunctions") {
		t.Errorf("stderr does not name the bad setting: %s", got)
	}
}

// Killed mid-fan-out and started again on the same data, the handler
// finishes the orchestration, and no item whose result the hub had recorded
// before the kill runs again.
func TestKill9MidFanOutResumes(t *testing.T) {
	root := newAppRoot(t, func(h map[string]any) {
		h["extensions"].(map[string]any)["durableTask"].(map[string]any)["maxConcurrentActivityFunctions"] = 4
	})
	settings := embedded(t, root,
		"FANOUT_WORK_MIN_DELAY", "100ms",
		"FANOUT_WORK_MAX_DELAY", "200ms",
		"FANOUT_EMBEDDED_LOCK_TIMEOUT", "2s", // how soon the dead process's locks expire
	)
	items := make([]string, 40)
	for i := range items {
		items[i] = fmt.Sprintf("Task%02d", i+1)
	}
	input, _ := json.Marshal(map[string]any{"workItems": items})

	first := startHandler(t, root, settings)
	first.waitReady(t)
	_, _, body := first.forward(t, "POST", "/api/fan_out_fan_in", string(input))
	id := body["id"].(string)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, st := first.forward(t, "GET", "/api/status/"+id, "")
		if cs, ok := st["customStatus"].(map[string]any); ok && cs["completed"].(float64) >= 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fan-out made no progress: %v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.waitExit(t, 15*time.Second)

	done := completedItems(t, filepath.Join(root, "data", "default.sqlite"), id)
	if len(done) < 8 || len(done) >= len(items) {
		t.Fatalf("killed with %d of %d items recorded; want the kill mid-fan-out", len(done), len(items))
	}

	second := startHandler(t, root, settings)
	second.waitReady(t)
	st := pollStatus(t, second, id, "Completed")
	out := st["output"].(map[string]any)
	if got, want := out["total_items_processed"], float64(len(items)); got != want {
		t.Errorf("total_items_processed: got %v, want %v", got, want)
	}
	var processed []string
	for _, it := range out["processed_items"].([]any) {
		processed = append(processed, it.(string))
	}
	for i, it := range items {
		if i >= len(processed) || processed[i] != "Processed_"+it {
			t.Fatalf("processed_items: got %q, want Processed_ of %q in order", processed, items)
		}
	}
	total, avg := out["total_value"].(float64), out["average_value"].(float64)
	if want := float64(int(total/float64(len(items))*100+0.5)) / 100; avg != want {
		t.Errorf("average_value %v does not match total_value %v over %d items", avg, total, len(items))
	}

	rerun := map[string]bool{}
	for _, l := range logLines(t, second.stdout.String()) {
		if l["message"] == "processed work item" {
			rerun[l["item"].(string)] = true
		}
	}
	for _, it := range items {
		switch {
		case done[it] && rerun[it]:
			t.Errorf("%s was recorded before the kill and ran again after it", it)
		case !done[it] && !rerun[it]:
			t.Errorf("%s was not recorded before the kill and did not run after it", it)
		}
	}
}

// completedItems reads from the hub's file which items' results the hub had
// recorded: a TaskCompleted event in the instance's history or inbox.
func completedItems(t *testing.T, file, id string) map[string]bool {
	t.Helper()
	history, err := hubtest.History(file, id)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := hubtest.Pending(file, id)
	if err != nil {
		t.Fatal(err)
	}
	scheduled := map[int32]string{}
	var completed []int32
	for _, e := range append(history, pending...) {
		if ts := e.GetTaskScheduled(); ts != nil && ts.Name == "process_work_item" {
			// [item, index] or [item, index, attempt]
			var in []json.RawMessage
			var item string
			if json.Unmarshal([]byte(ts.Input.GetValue()), &in) == nil && len(in) > 0 {
				json.Unmarshal(in[0], &item)
			}
			scheduled[e.EventId] = item
		}
		if tc := e.GetTaskCompleted(); tc != nil {
			completed = append(completed, tc.TaskScheduledId)
		}
	}
	done := map[string]bool{}
	for _, taskID := range completed {
		if item, ok := scheduled[taskID]; ok {
			done[item] = true
		}
	}
	return done
}
