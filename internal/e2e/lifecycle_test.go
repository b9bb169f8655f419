package e2e

// End-to-end tests of what the hub guarantees whatever the order of actions:
// a purge, a lock, a kill never lose or misplace another instance's work.

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"fanoutfanin/internal/dtstest"
	"fanoutfanin/internal/tailbuf"
	"fanoutfanin/internal/taskhub/hubtest"
)

// lifecycleBackends are backends, and the scheduler path through the strict
// conformance server, which fails the test on any protocol violation it saw:
// a completion or hand-back with another item's token, a retry after the
// scheduler said an item was gone.
var lifecycleBackends = append(slices.Clip(backends), struct {
	name     string
	settings func(t *testing.T, root string, extra ...string) map[string]string
}{"conformance", func(t *testing.T, root string, extra ...string) map[string]string {
	upstream, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
	// The server's log (every dispatch, completion and stream) is shown
	// only when the test fails: its end explains a lost item.
	log := &tailbuf.Buffer{Max: 256 << 10}
	srv, err := dtstest.Start(dtstest.Options{Upstream: upstream, TaskHub: "default", PingInterval: 100 * time.Millisecond,
		Logf: func(format string, args ...any) {
			fmt.Fprintf(log, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, v := range srv.Violations() {
			t.Errorf("protocol violation: %s", v)
		}
		srv.Close()
		if t.Failed() {
			t.Logf("conformance server log (its end):\n%s", log.String())
		}
	})
	return onScheduler(t, srv.Addr(), extra...)
}})

// forEachLifecycleBackend runs test once on every one of lifecycleBackends.
func forEachLifecycleBackend(t *testing.T, test func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string)) {
	for _, b := range lifecycleBackends {
		t.Run(b.name, func(t *testing.T) { test(t, b.settings) })
	}
}

// hubFile is the SQLite file of the backend settings chose: the embedded
// hub's, or the upstream sidecar's behind the scheduler path (directly or
// through the conformance server).
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
	rows, err := hubtest.Rows(file, id)
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
	forEachLifecycleBackend(t, func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
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

var (
	lifecycleSeed    = flag.Uint64("lifecycle.seed", 0, "TestRandomLifecycle's seed; 0 draws one")
	lifecycleActions = flag.Int("lifecycle.actions", 30, "how many actions TestRandomLifecycle takes on each backend")
)

// instance is what TestRandomLifecycle knows of one fan-out it started.
type instance struct {
	id         string
	items      []string
	terminated bool // a terminate was accepted: it may end Terminated
	purged     bool
}

// lifecycle drives handlers sharing one task hub, each killed and started
// again at random, and the instances they started.
type lifecycle struct {
	t        *testing.T
	rng      *rand.Rand
	root     string
	settings map[string]string
	running  []*handlerProcess // one a slot
	all      []*handlerProcess // every one started, for their logs
	started  []*instance
	kills    int
	actions  []string // what act did, for the failure message
}

// call sends a request to one of the running handlers, again while it
// answers 503 (a handler just started on the scheduler path may not be
// connected yet), and fails the test on any other 5xx.
func (l *lifecycle) call(method, path, body string) (int, map[string]any) {
	l.t.Helper()
	p := l.running[l.rng.IntN(len(l.running))]
	for try := 0; ; try++ {
		code, _, res := p.forward(l.t, method, path, body)
		if code == http.StatusServiceUnavailable && try < 100 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if code >= 500 {
			l.t.Fatalf("%s %s: got %d %v", method, path, code, res)
		}
		return code, res
	}
}

func (l *lifecycle) start(items []string) {
	l.t.Helper()
	body, _ := json.Marshal(map[string]any{"workItems": items, "maxParallelism": 1 + l.rng.IntN(3)})
	code, res := l.call("POST", "/api/fan_out_fan_in", string(body))
	if code != http.StatusAccepted {
		l.t.Fatalf("start: got %d %v", code, res)
	}
	l.started = append(l.started, &instance{id: res["id"].(string), items: items})
}

// startHandler starts a handler in slot.
func (l *lifecycle) startHandler(slot int) {
	p := startHandler(l.t, l.root, l.settings)
	l.running[slot] = p
	l.all = append(l.all, p)
	p.waitReady(l.t)
}

// act takes one action, chosen at random, and checks its answer against
// what the test knows: a purged instance is gone; otherwise the answer
// depends on the instance's state, which moves on by itself, so any of the
// documented answers will do, but never a 5xx.
func (l *lifecycle) act() string {
	t := l.t
	t.Helper()
	var in *instance
	if len(l.started) > 0 {
		in = l.started[l.rng.IntN(len(l.started))]
	}
	want := func(what string, code int, res map[string]any, ok ...int) string {
		t.Helper()
		if in.purged {
			ok = []int{http.StatusNotFound}
		}
		if !slices.Contains(ok, code) {
			t.Errorf("%s %s: got %d %v, want one of %v", what, in.id, code, res, ok)
		}
		return fmt.Sprintf("%s %s: %d", what, in.id, code)
	}
	switch r := l.rng.IntN(16); {
	case r < 3 || in == nil:
		n := 1 + l.rng.IntN(7)
		items := make([]string, n)
		for i := range items {
			items[i] = fmt.Sprintf("i%d-%d", len(l.started), i)
			if l.rng.IntN(4) == 0 {
				items[i] = "flaky-" + items[i] // fails its first attempt
			}
		}
		l.start(items)
		return fmt.Sprintf("start %s: %d items", l.started[len(l.started)-1].id, n)
	case r < 5:
		code, res := l.call("POST", "/api/status/"+in.id+"/terminate?reason=random", "")
		if code == http.StatusAccepted {
			in.terminated = true
		}
		return want("terminate", code, res, http.StatusAccepted, http.StatusConflict)
	case r < 7:
		code, res := l.call("POST", "/api/status/"+in.id+"/suspend", "")
		return want("suspend", code, res, http.StatusAccepted, http.StatusConflict)
	case r < 9:
		code, res := l.call("POST", "/api/status/"+in.id+"/resume", "")
		return want("resume", code, res, http.StatusAccepted, http.StatusConflict)
	case r < 10:
		code, res := l.call("POST", "/api/status/"+in.id+"/restart", "")
		if code == http.StatusAccepted {
			l.started = append(l.started, &instance{id: res["id"].(string), items: in.items})
		}
		return want("restart", code, res, http.StatusAccepted)
	case r < 12:
		code, res := l.call("DELETE", "/api/status/"+in.id, "")
		s := want("purge", code, res, http.StatusOK, http.StatusConflict)
		if code == http.StatusOK {
			in.purged = true
		}
		return s
	case r < 13:
		slot := l.rng.IntN(len(l.running))
		l.running[slot].cmd.Process.Signal(syscall.SIGKILL)
		l.running[slot].waitExit(t, 15*time.Second)
		l.kills++
		l.startHandler(slot)
		return fmt.Sprintf("kill -9 handler %d and start it again", slot)
	default:
		d := time.Duration(20+l.rng.IntN(400)) * time.Millisecond
		time.Sleep(d)
		return "wait " + d.String()
	}
}

// settle resumes what is suspended and waits until every instance not
// purged has finished.
func (l *lifecycle) settle(within time.Duration) map[string]map[string]any {
	t := l.t
	t.Helper()
	deadline := time.Now().Add(within)
	final := map[string]map[string]any{}
	for {
		pending := 0
		for _, in := range l.started {
			if in.purged || final[in.id] != nil {
				continue
			}
			code, st := l.call("GET", "/api/status/"+in.id, "")
			switch st["runtimeStatus"] {
			case "Completed", "Failed", "Terminated":
				final[in.id] = st
				continue
			case "Suspended":
				if in.terminated && st["output"] == "random" && misreportsSuspendedEnds(l.settings) {
					final[in.id] = st // ended, but reads as Suspended: see misreportsSuspendedEnds
					continue
				}
				l.call("POST", "/api/status/"+in.id+"/resume?reason=settle", "")
			case nil:
				t.Fatalf("instance %s, never purged, is gone: %d %v", in.id, code, st)
			}
			pending++
			if time.Now().After(deadline) {
				t.Fatalf("instance %s never finished: %v", in.id, st)
			}
		}
		if pending == 0 {
			return final
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Several fan-outs at once on two handlers sharing the task hub, with
// random interleavings of start, terminate, suspend, resume, restart, purge,
// a kill -9 and restart of either handler, and items that fail their first
// attempt. Once every suspended instance is
// resumed, each instance ends as the actions explain: completed with every
// item counted once, or terminated if a terminate was accepted; a purged
// one is gone, rows and all; and nothing was logged at error level.
// -lifecycle.seed replays a run; make lifecycle runs it at length.
func TestRandomLifecycle(t *testing.T) {
	seed := *lifecycleSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	forEachLifecycleBackend(t, func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
		t.Logf("seed %d", seed)
		root := newAppRoot(t, nil)
		l := &lifecycle{t: t, rng: rand.New(rand.NewPCG(seed, 0)), root: root}
		defer func() {
			if t.Failed() {
				t.Logf("actions:\n%s", strings.Join(l.actions, "\n"))
				t.Logf("replay with: go test ./internal/e2e/ -run '^%s$' -lifecycle.seed=%d -lifecycle.actions=%d", t.Name(), seed, *lifecycleActions)
			}
		}()
		l.settings = settings(t, root,
			"FANOUT_WORK_MIN_DELAY", "10ms", "FANOUT_WORK_MAX_DELAY", "250ms",
			"FANOUT_PARTITION_SIZE", "3",
			"FANOUT_EMBEDDED_LOCK_TIMEOUT", "1s",
			"FANOUT_FAIL_ITEMS", "flaky-.*", "FANOUT_FAIL_ATTEMPTS", "1", "FANOUT_ITEM_RETRY_DELAY", "50ms")
		l.running = make([]*handlerProcess, 2)
		for slot := range l.running {
			l.startHandler(slot)
		}
		for range *lifecycleActions {
			l.actions = append(l.actions, l.act())
		}
		final := l.settle(2 * time.Minute)
		if t.Failed() {
			return
		}

		completed, terminated := 0, 0
		for _, in := range l.started {
			st := final[in.id]
			switch {
			case in.purged:
				if code, res := l.call("GET", "/api/status/"+in.id, ""); code != http.StatusNotFound {
					t.Errorf("purged instance %s: status %d %v, want 404", in.id, code, res)
				}
				checkNoRows(t, hubFile(root, l.settings), in.id)
			case st["runtimeStatus"] == "Completed":
				completed++
				checkSummary(t, st, in.items)
				if out := st["output"].(map[string]any); out["success"] != true || out["total_items_failed"] != 0.0 {
					t.Errorf("instance %s: summary %v, want every item to succeed on its retry", in.id, out)
				}
			case st["runtimeStatus"] == "Terminated" && in.terminated,
				st["runtimeStatus"] == "Suspended" && in.terminated && misreportsSuspendedEnds(l.settings):
				terminated++
				if st["output"] != "random" {
					t.Errorf("terminated instance %s: output %v, want the reason", in.id, st["output"])
				}
			default:
				t.Errorf("instance %s ended %v, which no action explains (terminate accepted: %v): %v", in.id, st["runtimeStatus"], in.terminated, st)
			}
		}
		for _, p := range l.all {
			for _, line := range errorLines(t, p) {
				t.Errorf("logged at error level: %v", line)
			}
		}
		purged := 0
		for _, in := range l.started {
			if in.purged {
				purged++
			}
		}
		t.Logf("%d actions, %d instances: %d completed, %d terminated, %d purged; %d kills", len(l.actions), len(l.started), completed, terminated, purged, l.kills)
	})
}

// misreportsSuspendedEnds says whether settings choose a backend that
// reports an instance suspended after a terminate was accepted, but before
// it was applied, as Suspended for ever, though it ended (its output is the
// reason): the durabletask-go v0.6.0 sidecar, whose status puts a
// suspension above an end. The embedded hub records such an end as it is.
func misreportsSuspendedEnds(settings map[string]string) bool {
	return settings["DURABLE_TASK_SCHEDULER_CONNECTION_STRING"] != ""
}

// A suspended instance can be terminated, and an instance suspended right
// after a terminate was accepted ends terminated too: both end Terminated,
// with the reason as output, their partitions with them.
func TestTerminateWhileSuspended(t *testing.T) {
	forEachBackend(t, func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
		root := newAppRoot(t, nil)
		s := settings(t, root, "FANOUT_WORK_MIN_DELAY", "300ms", "FANOUT_WORK_MAX_DELAY", "300ms", "FANOUT_PARTITION_SIZE", "2")
		p := startHandler(t, root, s)
		p.waitReady(t)
		start := func() string {
			t.Helper()
			_, _, res := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a", "b", "c", "d", "e", "f"], "maxParallelism": 2}`)
			return res["id"].(string)
		}
		post := func(id, action string) {
			t.Helper()
			if code, _, res := p.forward(t, "POST", "/api/status/"+id+"/"+action+"?reason="+action+"d", ""); code != http.StatusAccepted {
				t.Fatalf("%s %s: got %d %v, want 202", action, id, code, res)
			}
		}

		suspended := start()
		waitLog(t, p, "processed work item", 1, 30*time.Second)
		post(suspended, "suspend")
		pollStatus(t, p, suspended, "Suspended")
		post(suspended, "terminate")

		ids := []string{suspended}
		if !misreportsSuspendedEnds(s) {
			raced := start()
			post(raced, "terminate")
			post(raced, "suspend")
			ids = append(ids, raced)
		}
		for _, id := range ids {
			if st := pollStatus(t, p, id, "Terminated"); st["output"] != "terminated" {
				t.Errorf("instance %s ended with output %v, want the reason", id, st["output"])
			}
		}
		pollStatus(t, p, suspended+":p0", "Terminated")
	})
}

// Suspended twice before the first suspension took hold, an instance is
// resumed by one resume, and completes.
func TestSuspendedTwiceResumesOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string) {
		root := newAppRoot(t, nil)
		p := startHandler(t, root, settings(t, root, "FANOUT_PARTITION_SIZE", "2"))
		p.waitReady(t)
		items := []string{"a", "b", "c"}
		var id string
		for try := 0; id == ""; try++ {
			if try == 20 {
				t.Fatal("the first suspension took hold before a second could be sent, 20 times")
			}
			_, _, started := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a", "b", "c"]}`)
			candidate := started["id"].(string)
			p.forward(t, "POST", "/api/status/"+candidate+"/suspend", "")
			if code, _, _ := p.forward(t, "POST", "/api/status/"+candidate+"/suspend", ""); code == http.StatusAccepted {
				id = candidate
			}
		}
		pollStatus(t, p, id, "Suspended")
		if code, _, res := p.forward(t, "POST", "/api/status/"+id+"/resume", ""); code != http.StatusAccepted {
			t.Fatalf("resume: got %d %v", code, res)
		}
		checkSummary(t, pollStatus(t, p, id, "Completed"), items)
	})
}
