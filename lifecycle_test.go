package main

// End-to-end tests of what the hub guarantees whatever the order of actions:
// a purge, a lock, a kill never lose or misplace another instance's work.

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"fanoutfanin/internal/hubfile"
)

// hubFile is the SQLite file of the backend settings chose: the embedded
// hub's, or the upstream sidecar's behind the scheduler path.
func hubFile(root string, settings map[string]string) string {
	if settings["DURABLE_TASK_SCHEDULER_CONNECTION_STRING"] == "" {
		return filepath.Join(root, "data", "default.sqlite")
	}
	return filepath.Join(root, "sidecar.sqlite")
}

// checkNoRows fails the test if instance id or its partitions have any row
// left in the hub file.
func checkNoRows(t *testing.T, file, id string) {
	t.Helper()
	rows, err := hubfile.Rows(file, id)
	if err != nil {
		t.Fatal(err)
	}
	for table, n := range rows {
		if n != 0 {
			t.Errorf("purged instance %s has %d rows left in %s", id, n, table)
		}
	}
}

// errorLines returns the handler's log lines at error level or above.
func errorLines(t *testing.T, p *handlerProcess) []map[string]any {
	t.Helper()
	var errs []map[string]any
	for _, l := range logLines(t, p.stdout.String()) {
		if l["level"] == "error" || l["level"] == "fatal" || l["level"] == "panic" {
			errs = append(errs, l)
		}
	}
	return errs
}

// An instance terminated and purged while one of its activities still runs,
// then another fan-out: the late result of the purged instance neither
// takes the new instance's place nor leaves a row behind, and the new
// instance completes.
func TestPurgeWhileAnActivityRunsLosesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
		root := newAppRoot(t, nil)
		s := settings(t, root, "FANOUT_WORK_MIN_DELAY", "600ms", "FANOUT_WORK_MAX_DELAY", "600ms", "FANOUT_LOG_LEVEL", "debug")
		p := startHandler(t, root, s)
		p.waitReady(t)

		_, _, a := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["t0", "t1", "t2", "t3"], "maxParallelism": 1}`)
		aID := a["id"].(string)
		waitLog(t, p, "processing work item", 1, 30*time.Second)
		if code, _, body := p.forward(t, "POST", "/api/status/"+aID+"/terminate?reason=x", ""); code != http.StatusAccepted {
			t.Fatalf("terminate: got %d %v", code, body)
		}
		pollStatus(t, p, aID, "Terminated")
		if code, _, body := p.forward(t, "DELETE", "/api/status/"+aID, ""); code != http.StatusOK {
			t.Fatalf("purge: got %d %v", code, body)
		}

		_, _, b := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["s0", "s1"], "maxParallelism": 1}`)
		st := pollStatus(t, p, b["id"].(string), "Completed")
		out := st["output"].(map[string]any)
		if out["total_items_processed"] != 2.0 || fmt.Sprint(out["processed_items"]) != "[Processed_s0 Processed_s1]" || out["success"] != true {
			t.Errorf("summary of the fan-out started after the purge: %v", out)
		}

		// The purged instance's activity has finished by now (the new
		// instance's items ran after it); its result left nothing behind.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(p.stdout.String(), `"item":"t0"`) || countLogs(t, p, "processed work item") < 3 {
			if time.Now().After(deadline) {
				t.Fatal("the purged instance's activity never finished")
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // its result is written, or dropped
		checkNoRows(t, hubFile(root, s), aID)
		for _, l := range errorLines(t, p) {
			t.Errorf("error logged: %v", l)
		}
	})
}

// itemLogs counts the handler's log lines with message about item.
func itemLogs(t *testing.T, p *handlerProcess, message, item string) int {
	t.Helper()
	n := 0
	for _, l := range logLines(t, p.stdout.String()) {
		if l["message"] == message && l["item"] == item {
			n++
		}
	}
	return n
}

// An activity three times as long as the embedded hub's lock timeout runs
// once and completes: the handler renews the lock while it runs. Killed
// during the next one, the handler leaves its lock to expire, and the
// restarted handler runs that item again within about the lock timeout.
func TestLongActivityRunsOnceAndComesBackAfterAKill(t *testing.T) {
	const lock = time.Second
	root := newAppRoot(t, nil)
	s := embedded(t, root,
		"FANOUT_EMBEDDED_LOCK_TIMEOUT", lock.String(),
		"FANOUT_WORK_MIN_DELAY", "3s", "FANOUT_WORK_MAX_DELAY", "3s",
		"FANOUT_ITEM_TIMEOUT", "20s",
		"FANOUT_LOG_LEVEL", "debug")
	first := startHandler(t, root, s)
	first.waitReady(t)
	_, _, started := first.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["long0", "long1"], "maxParallelism": 1}`)
	id := started["id"].(string)

	deadline := time.Now().Add(30 * time.Second)
	for itemLogs(t, first, "processing work item", "long1") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second item never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if runs, done := itemLogs(t, first, "processing work item", "long0"), itemLogs(t, first, "processed work item", "long0"); runs != 1 || done != 1 {
		t.Errorf("an item three times as long as the lock ran %d times and finished %d times, want once", runs, done)
	}

	time.Sleep(lock + lock/2) // past the lock's first expiry, had it not been renewed
	killed := time.Now()
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.waitExit(t, 15*time.Second)

	second := startHandler(t, root, s)
	second.waitReady(t)
	deadline = time.Now().Add(30 * time.Second)
	for itemLogs(t, second, "processing work item", "long1") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the killed handler's item never ran again")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waited := time.Since(killed)
	t.Logf("the killed handler's item ran again %s after the kill (lock timeout %s)", waited.Round(time.Millisecond), lock)
	// The lock expires within lock of the kill; the restarted handler's
	// start and its first polls for work take the rest.
	if waited > lock+3*time.Second {
		t.Errorf("the killed handler's item ran again %s after the kill, want within about the lock timeout (%s)", waited, lock)
	}
	st := pollStatus(t, second, id, "Completed")
	checkSummary(t, st, []string{"long0", "long1"})
	if n := itemLogs(t, second, "processing work item", "long0"); n != 0 {
		t.Errorf("long0, recorded before the kill, ran %d times after it", n)
	}
	if n := itemLogs(t, second, "processing work item", "long1"); n != 1 {
		t.Errorf("long1 ran %d times after the kill, want once", n)
	}
}
