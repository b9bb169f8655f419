package e2e

// End-to-end tests of the embedded hub under load and shared: the real
// handler binary, several processes on one SQLite file, many clients at once.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"fanoutfanin/internal/taskhub/hubtest"
)

// Handler processes started at the same moment on one hub file all come up
// (each opens the file, switches it to its write-ahead log and creates the
// schema, all at once), and a fan-out started on one of them runs on
// several, each item recorded once.
func TestManyHandlersStartTogetherOnOneHubFile(t *testing.T) {
	const handlers = 20
	root := newAppRoot(t, func(h map[string]any) {
		// Two items at a time each: the work has to spread to finish.
		h["extensions"].(map[string]any)["durableTask"].(map[string]any)["maxConcurrentActivityFunctions"] = 2
	})
	settings := embedded(t, root, "FANOUT_WORK_MIN_DELAY", "100ms", "FANOUT_WORK_MAX_DELAY", "100ms")
	ps := make([]*handlerProcess, handlers)
	for i := range ps {
		ps[i] = startHandler(t, root, settings)
	}
	for i := range ps {
		err := ps[i].up(30 * time.Second)
		// The free port a handler was given can be taken by some other
		// process's connection before it listens: start it again elsewhere.
		for tries := 0; err != nil && strings.Contains(err.Error(), "address already in use") && tries < 3; tries++ {
			ps[i] = startHandler(t, root, settings)
			err = ps[i].up(30 * time.Second)
		}
		if err != nil {
			t.Errorf("handler %d of %d: %v", i+1, handlers, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	items, body := workItems(60)
	code, _, res := ps[0].forward(t, "POST", "/api/fan_out_fan_in", body)
	if code != http.StatusAccepted {
		t.Fatalf("start: got %d %v", code, res)
	}
	id := res["id"].(string)
	st := pollStatus(t, ps[0], id, "Completed")
	checkSummary(t, st, items)

	// Who ran what, from the activities' own log lines.
	runs := map[string]int{} // item → times processed, over every handler
	var perHandler []int
	total := 0.0
	for _, p := range ps {
		n := 0
		for _, l := range logLines(t, p.stdout.String()) {
			if l["message"] == "processed work item" && l["instanceId"] == id {
				runs[l["item"].(string)]++
				total += l["value"].(float64)
				n++
			}
		}
		perHandler = append(perHandler, n)
	}
	t.Logf("process_work_item runs per handler: %v", perHandler)
	busy := 0
	for _, n := range perHandler {
		if n > 0 {
			busy++
		}
	}
	if busy < 3 {
		t.Errorf("the fan-out ran on %d of %d handlers, want it spread over at least 3", busy, handlers)
	}
	for _, it := range items {
		if runs[it] != 1 {
			t.Errorf("%s was processed %d times, want once", it, runs[it])
		}
	}
	if got := st["output"].(map[string]any)["total_value"]; got != total {
		t.Errorf("total_value: got %v, want %v, the sum of the values the handlers logged", got, total)
	}
	recorded := map[int32]int{}
	history, err := hubtest.History(filepath.Join(root, "data", "default.sqlite"), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range history {
		if tc := e.GetTaskCompleted(); tc != nil {
			recorded[tc.TaskScheduledId]++
		}
	}
	for task, n := range recorded {
		if n != 1 {
			t.Errorf("task %d: result recorded %d times", task, n)
		}
	}
	if len(recorded) != len(items)+1 { // every item, and aggregate_results
		t.Errorf("results recorded: %d, want %d", len(recorded), len(items)+1)
	}
}

// 200 starts from 20 clients at once are all accepted, and every one
// completes with its own items in its summary.
func TestTwoHundredConcurrentStarts(t *testing.T) {
	const clients, perClient = 20, 10
	root := newAppRoot(t, nil)
	p := startHandler(t, root, embedded(t, root))
	p.waitReady(t)

	type started struct {
		id    string
		items []string
	}
	var (
		mu  sync.Mutex
		all []started
		wg  sync.WaitGroup
	)
	begin := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range perClient {
				items := []string{fmt.Sprintf("c%d-%d-a", c, k), fmt.Sprintf("c%d-%d-b", c, k)}
				body, _ := json.Marshal(map[string]any{"workItems": items})
				code, res, err := postJSON(p.url("/api/fan_out_fan_in"), string(body))
				if err != nil || code != http.StatusAccepted {
					t.Errorf("start %d of client %d: %d %v %v", k, c, code, res, err)
					return
				}
				mu.Lock()
				all = append(all, started{res["id"].(string), items})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	accepted := time.Since(begin)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, s := range all[i*perClient : (i+1)*perClient] {
				if err := waitSummary(p.url("/api/status/"+s.id), s.items, 60*time.Second); err != nil {
					t.Errorf("instance %s: %v", s.id, err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d starts from %d clients: accepted in %s, all complete after %s", len(all), clients, accepted.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
}

// postJSON posts body and decodes the JSON answer; unlike forward it can
// run on any goroutine.
func postJSON(url, body string) (int, map[string]any, error) {
	res, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	var out map[string]any
	err = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out, err
}

// waitSummary polls a status URL until the instance completes, and checks its
// summary covers items, in order, once each.
func waitSummary(url string, items []string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		res, err := http.Get(url)
		if err != nil {
			return err
		}
		var st map[string]any
		err = json.NewDecoder(res.Body).Decode(&st)
		res.Body.Close()
		if err != nil {
			return err
		}
		switch st["runtimeStatus"] {
		case "Completed":
			out, _ := st["output"].(map[string]any)
			want := make([]any, len(items))
			for i, it := range items {
				want[i] = "Processed_" + it
			}
			if out["total_items_processed"] != float64(len(items)) || fmt.Sprint(out["processed_items"]) != fmt.Sprint(want) || out["success"] != true {
				return fmt.Errorf("summary %v, want %d items %v", out, len(items), want)
			}
			return nil
		case "Pending", "Running":
		default:
			return fmt.Errorf("status %v", st)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not complete after %s: %v", within, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// up waits, as waitReady does, until the handler answers GET /, but returns
// an error if it exits first (and leaves its exit for the cleanup to see).
func (p *handlerProcess) up(within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.exited:
			p.exited <- err
			return fmt.Errorf("exited before it was ready (%v): %s", err, strings.TrimSpace(p.stderr.String()))
		default:
		}
		if res, err := http.Get(p.url("/")); err == nil {
			res.Body.Close()
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("not listening after %s", within)
}
