package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Terminate, suspend, resume, restart and purge, as a user calls them with
// the URIs the start returned, on both backends.
func TestManageInstances(t *testing.T) {
	forEachBackend(t, func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
		root := newAppRoot(t, nil)
		p := startHandler(t, root, settings(t, root, "FANOUT_WORK_MIN_DELAY", "150ms", "FANOUT_WORK_MAX_DELAY", "150ms", "FANOUT_PARTITION_SIZE", "5"))
		p.waitReady(t)
		call := func(method, uri string) (int, map[string]any) {
			t.Helper()
			path := strings.TrimPrefix(uri, "http://localhost:7071")
			code, _, body := p.forward(t, method, path, "")
			return code, body
		}

		// The start lists every management URI, Durable Functions' way.
		items, body := workItems(20)
		_, _, started := p.forward(t, "POST", "/api/fan_out_fan_in", strings.Replace(body, "{", `{"maxParallelism": 2, `, 1))
		id := started["id"].(string)
		status := "http://localhost:7071/api/status/" + id
		for field, want := range map[string]string{
			"terminatePostUri":      status + "/terminate?reason={text}",
			"suspendPostUri":        status + "/suspend?reason={text}",
			"resumePostUri":         status + "/resume?reason={text}",
			"restartPostUri":        status + "/restart",
			"purgeHistoryDeleteUri": status,
		} {
			if got := started[field]; got != want {
				t.Errorf("%s: got %v, want %s", field, got, want)
			}
		}
		uri := func(field, reason string) string {
			return strings.Replace(started[field].(string), "{text}", reason, 1)
		}

		// Suspended, it starts no more items; resumed, it completes them all.
		if code, body := call("POST", uri("resumePostUri", "early")); code != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "only a suspended instance can be resumed") {
			t.Errorf("resume while running: got %d %v, want 409", code, body)
		}
		waitLog(t, p, "processed work item", 2, 30*time.Second)
		if code, body := call("POST", uri("suspendPostUri", "maintenance")); code != http.StatusAccepted {
			t.Fatalf("suspend: got %d %v, want 202", code, body)
		}
		pollStatus(t, p, id, "Suspended")
		if code, body := call("POST", uri("suspendPostUri", "again")); code != http.StatusConflict {
			t.Errorf("suspend while suspended: got %d %v, want 409", code, body)
		}
		time.Sleep(500 * time.Millisecond) // items in flight finish
		settled := countLogs(t, p, "processed work item")
		time.Sleep(time.Second)
		if n := countLogs(t, p, "processed work item"); n != settled {
			t.Errorf("items processed while suspended: %d became %d", settled, n)
		}
		if settled >= len(items) {
			t.Fatalf("all %d items ran before the suspension took hold; the test needs slower items", settled)
		}
		if code, body := call("POST", uri("resumePostUri", "done")); code != http.StatusAccepted {
			t.Fatalf("resume: got %d %v, want 202", code, body)
		}
		checkSummary(t, pollStatus(t, p, id, "Completed"), items)

		// Finished: it cannot be terminated or suspended, but it can be
		// restarted, as a new instance with the same items.
		for _, field := range []string{"terminatePostUri", "suspendPostUri"} {
			if code, body := call("POST", uri(field, "late")); code != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "is Completed") {
				t.Errorf("%s on a completed instance: got %d %v, want 409 saying it is Completed", field, code, body)
			}
		}
		code, restarted := call("POST", uri("restartPostUri", ""))
		if code != http.StatusAccepted || restarted["id"] == id || restarted["terminatePostUri"] == nil {
			t.Fatalf("restart: got %d %v, want 202 with a new instance's check-status body", code, restarted)
		}
		newID := restarted["id"].(string)

		// Terminated, it ends with the reason as output, and so do its
		// partitions, once it has started them (terminated before its first
		// step, it would start none).
		pollStatus(t, p, newID+":p0", "Running")
		if code, body := call("POST", strings.Replace(restarted["terminatePostUri"].(string), "{text}", "enough", 1)); code != http.StatusAccepted {
			t.Fatalf("terminate: got %d %v, want 202", code, body)
		}
		st := pollStatus(t, p, newID, "Terminated")
		if st["output"] != "enough" {
			t.Errorf("terminated output: got %v, want the reason", st["output"])
		}
		pollStatus(t, p, newID+":p0", "Terminated")

		// A partition is managed through its fan-out only.
		if code, body := call("DELETE", status+":p0"); code != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "is a partition of "+id) {
			t.Errorf("purging a partition: got %d %v, want 409", code, body)
		}
		// Purged, the fan-out and its four partitions are gone.
		code, purged := call("DELETE", uri("purgeHistoryDeleteUri", ""))
		if code != http.StatusOK || purged["instancesDeleted"] != 5.0 {
			t.Errorf("purge: got %d %v, want 200 with 5 instances deleted", code, purged)
		}
		for _, gone := range []string{id, id + ":p0", id + ":p3"} {
			if code, body := call("GET", "/api/status/"+gone); code != http.StatusNotFound {
				t.Errorf("status of purged %s: got %d %v, want 404", gone, code, body)
			}
		}
		if code, body := call("DELETE", uri("purgeHistoryDeleteUri", "")); code != http.StatusNotFound {
			t.Errorf("purging again: got %d %v, want 404", code, body)
		}
		if code, body := call("POST", "/api/status/"+id+"/rewind"); code != http.StatusNotFound || !strings.Contains(fmt.Sprint(body["error"]), `unknown action "rewind"`) {
			t.Errorf("unknown action: got %d %v, want 404", code, body)
		}
		if code, body := call("GET", "/api/status/"+newID+"/terminate"); code != http.StatusMethodNotAllowed {
			t.Errorf("GET terminate: got %d %v, want 405", code, body)
		}
	})
}

// A running instance cannot be purged; its status can leave the input out;
// actions work in payload mode too.
func TestPurgeRunningAndStatusWithoutInput(t *testing.T) {
	root := newAppRoot(t, nil)
	p := startHandler(t, root, embedded(t, root, "FANOUT_WORK_MIN_DELAY", "2s", "FANOUT_WORK_MAX_DELAY", "2s"))
	p.waitReady(t)
	_, _, started := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a", "b"]}`)
	id := started["id"].(string)

	code, _, body := p.forward(t, "DELETE", "/api/status/"+id, "")
	if code != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "only a finished instance can be purged") {
		t.Errorf("purging a running instance: got %d %v, want 409", code, body)
	}
	if _, _, body := p.forward(t, "GET", "/api/status/"+id+"?showInput=false", ""); body["instanceId"] != id || body["input"] != nil {
		t.Errorf("status with showInput=false: %v, want no input", body)
	} else if _, present := body["input"]; present {
		t.Errorf("status with showInput=false has an input field: %v", body)
	}

	res, _ := p.invoke(t, "status", "POST", "http://localhost:7071/api/status/"+id+"/terminate?reason=stop", "", map[string]string{"instanceId": id, "action": "terminate"})
	if got := res["statusCode"]; fmt.Sprint(got) != "202" {
		t.Errorf("terminate in payload mode: got %v, want 202", res)
	}
	pollStatus(t, p, id, "Terminated")
}

// Items that fail every attempt are retried, then listed in the summary;
// the run completes, on both backends.
func TestFailingItemsAreRetriedThenListed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
		root := newAppRoot(t, nil)
		p := startHandler(t, root, settings(t, root, "FANOUT_FAIL_ITEMS", "Task0[37]", "FANOUT_ITEM_RETRY_DELAY", "20ms"))
		p.waitReady(t)
		_, body := workItems(8)
		_, _, started := p.forward(t, "POST", "/api/fan_out_fan_in", body)
		st := pollStatus(t, p, started["id"].(string), "Completed")
		out := st["output"].(map[string]any)
		if out["success"] != false || out["total_items_processed"] != 6.0 || out["total_items_failed"] != 2.0 {
			t.Errorf("summary: %v, want 6 processed, 2 failed, no success", out)
		}
		failed := fmt.Sprint(out["failed_items"])
		for _, want := range []string{"item:Task03", "item:Task07", "attempts:3", "failed on purpose"} {
			if !strings.Contains(failed, want) {
				t.Errorf("failed_items %s does not say %q", failed, want)
			}
		}
		if n := countLogs(t, p, "failing work item on purpose"); n != 6 {
			t.Errorf("attempts at the failing items: %d, want 3 each", n)
		}
	})
}
