package e2e

// End-to-end tests of stopping the handler: the real binary, stopped with
// signals as the Functions host, a container platform or Ctrl-C stop it.

import (
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"fanoutfanin/internal/taskhub/hubtest"
)

// slowWork are settings for items that outlast any grace period here, on the
// embedded hub, with a lock that outlasts the tests: only handing the items
// back lets a restarted handler run them soon.
func slowWork(t *testing.T, root string, extra ...string) map[string]string {
	t.Helper()
	return embedded(t, root, append([]string{
		"FANOUT_WORK_MIN_DELAY", "1m", "FANOUT_WORK_MAX_DELAY", "1m",
		"FANOUT_EMBEDDED_LOCK_TIMEOUT", "10m",
		"FANOUT_LOG_LEVEL", "debug",
	}, extra...)...)
}

// startSlowFanOut starts a fan-out of items that do not finish by themselves,
// and waits until they are being worked on.
func startSlowFanOut(t *testing.T, p *handlerProcess, items ...string) string {
	t.Helper()
	body := fmt.Sprintf(`{"workItems": ["%s"]}`, strings.Join(items, `", "`))
	code, _, res := p.forward(t, "POST", "/api/fan_out_fan_in", body)
	if code != http.StatusAccepted {
		t.Fatalf("start: got %d %v", code, res)
	}
	waitLog(t, p, "processing work item", len(items), 30*time.Second)
	return res["id"].(string)
}

// A call that never finishes and work that would take a minute do not keep
// the handler past its one grace period: it exits cleanly within
// FANOUT_SHUTDOWN_GRACE of SIGTERM, the call cut off and the work handed
// back, and the next handler runs that work at once.
func TestSIGTERMStopsWithinOneGracePeriod(t *testing.T) {
	const grace = 2 * time.Second
	root := newAppRoot(t, nil)
	p := startHandler(t, root, slowWork(t, root, "FANOUT_SHUTDOWN_GRACE", grace.String()))
	p.waitReady(t)
	id := startSlowFanOut(t, p, "a", "b")

	// A call in flight: a body announced and never sent.
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/fan_out_fan_in HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
	time.Sleep(100 * time.Millisecond) // the server is reading it

	begin := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v, want a clean exit", err)
	}
	elapsed := time.Since(begin)
	t.Logf("exited %s after SIGTERM, with a grace period of %s", elapsed.Round(time.Millisecond), grace)
	// Some slack for a loaded machine; a second budget would be a full
	// grace period more.
	if elapsed > grace+time.Second {
		t.Errorf("exited %s after SIGTERM; want within the grace period of %s", elapsed, grace)
	}
	if n := countLogs(t, p, "calls still running in the shutdown grace period were cut off"); n != 1 {
		t.Errorf("the call cut off was logged %d times, want once", n)
	}

	file := filepath.Join(root, "data", "default.sqlite")
	if tasks, instances, err := hubtest.Locked(file); err != nil || tasks != 0 || instances != 0 {
		t.Errorf("after SIGTERM: %d work items and %d instances locked (%v), want none: the work was not handed back", tasks, instances, err)
	}
	again := startHandler(t, root, embedded(t, root, "FANOUT_EMBEDDED_LOCK_TIMEOUT", "10m"))
	again.waitReady(t)
	checkSummary(t, pollStatus(t, again, id, "Completed"), []string{"a", "b"})
}

// Ctrl-C twice: the second signal ends the graceful stop at once, with a
// non-zero exit and a line that says so.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	root := newAppRoot(t, nil)
	p := startHandler(t, root, slowWork(t, root)) // the default grace period, 10 s
	p.waitReady(t)
	startSlowFanOut(t, p, "a")

	p.cmd.Process.Signal(syscall.SIGINT)
	waitLog(t, p, "shutting down: finishing the work in flight (a second signal stops at once)", 1, 5*time.Second)
	begin := time.Now()
	p.cmd.Process.Signal(syscall.SIGINT)
	err := p.waitExit(t, 3*time.Second)
	t.Logf("exited %s after the second signal: %v", time.Since(begin).Round(time.Millisecond), err)
	if err == nil {
		t.Errorf("exit after a second signal: 0, want non-zero")
	}
	if n := countLogs(t, p, "second signal: stopping at once; work in flight is not handed back"); n != 1 {
		t.Errorf("the stop at once was logged %d times, want once", n)
	}
	if !strings.Contains(p.stderr.String(), "second signal") {
		t.Errorf("stderr does not say why the handler stopped: %q", p.stderr)
	}
}

// After a clean stop the hub file alone holds every instance: copying
// default.sqlite, without the write-ahead log beside it, copies them all.
func TestCleanStopLeavesEveryInstanceInTheHubFile(t *testing.T) {
	root := newAppRoot(t, nil)
	p := startHandler(t, root, embedded(t, root))
	p.waitReady(t)
	var ids []string
	for i := range 5 {
		_, _, res := p.forward(t, "POST", "/api/fan_out_fan_in", fmt.Sprintf(`{"workItems": ["a%d", "b%d"]}`, i, i))
		ids = append(ids, res["id"].(string))
	}
	for _, id := range ids {
		pollStatus(t, p, id, "Completed")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}

	copied := filepath.Join(t.TempDir(), "copy.sqlite")
	copyFile(t, filepath.Join(root, "data", "default.sqlite"), copied, 0o644)
	db, err := sql.Open("sqlite", "file:"+copied+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, id := range ids {
		var status string
		if err := db.QueryRow("SELECT RuntimeStatus FROM Instances WHERE InstanceID = ?", id).Scan(&status); err != nil {
			t.Errorf("instance %s in the copied hub file: %v", id, err)
		} else if status != "COMPLETED" {
			t.Errorf("instance %s in the copied hub file: %s, want COMPLETED", id, status)
		}
	}
}
