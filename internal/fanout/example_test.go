package fanout_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub/embedded"
)

// A fan-out of your own: check a list of pages. Each item is an object
// {"url": …}; the work fetches it; the summary counts the status codes and
// keeps the slowest call. A server error fails the attempt, which is
// retried, and a page that fails every attempt is listed in the output.
type page struct {
	URL string `json:"url"`
}

type check struct {
	URL    string `json:"url"`
	Status int    `json:"status"`
	Millis int64  `json:"millis"`
}

type report struct {
	Statuses map[int]int `json:"statuses"`
	Slowest  check       `json:"slowest"`
}

func checkPage(ctx context.Context, it fanout.Item[page]) (check, error) {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, it.Value.URL, nil)
	if err != nil {
		return check{}, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return check{}, err
	}
	res.Body.Close()
	if res.StatusCode >= 500 {
		return check{}, fmt.Errorf("GET %s: %s", req.URL.Path, res.Status)
	}
	return check{URL: it.Value.URL, Status: res.StatusCode, Millis: time.Since(start).Milliseconds()}, nil
}

var checkPages = fanout.Spec[page, check, report]{
	Name: "check_pages",
	Work: checkPage,
	Aggregate: fanout.Aggregate[check, report]{
		Add: func(r report, c check) report {
			return merge(r, report{Statuses: map[int]int{c.Status: 1}, Slowest: c})
		},
		Merge: merge,
	},
	Validate: func(p page) error {
		if !strings.HasPrefix(p.URL, "http://") && !strings.HasPrefix(p.URL, "https://") {
			return fmt.Errorf("url %q is not an http(s) URL", p.URL)
		}
		return nil
	},
}

func merge(a, b report) report {
	out := report{Statuses: map[int]int{}, Slowest: a.Slowest}
	for _, m := range []map[int]int{a.Statuses, b.Statuses} {
		for status, n := range m {
			out.Statuses[status] += n
		}
	}
	if b.Slowest.Millis > a.Slowest.Millis {
		out.Slowest = b.Slowest
	}
	return out
}

// Register a fan-out of your own, start it, and read its output. Here 12
// pages run in partitions of 5, at most 3 at once; /flaky fails its first
// attempt and /down every one.
func ExampleRegister() {
	var mu sync.Mutex
	hits := map[string]int{}
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		n := hits[r.URL.Path]
		mu.Unlock()
		switch {
		case r.URL.Path == "/slow":
			time.Sleep(200 * time.Millisecond)
		case r.URL.Path == "/missing":
			w.WriteHeader(http.StatusNotFound)
		case r.URL.Path == "/down", r.URL.Path == "/flaky" && n == 1:
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer site.Close()

	retry := fanout.NewRetryPolicy(2, 10*time.Millisecond, 1, 10*time.Millisecond)
	engine := fanout.New(fanout.Options{Log: zerolog.Nop(), PartitionSize: 5, Retry: &retry, ItemTimeout: 10 * time.Second})
	if err := fanout.Register(engine, checkPages); err != nil {
		fmt.Println(err)
		return
	}

	// The app opens the task hub the same way, from its configuration.
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	hub, err := embedded.Open(context.Background(), config.TaskHub{Name: "example", EmbeddedFile: filepath.Join(dir, "hub.sqlite"),
		LockTimeout: 30 * time.Second, MaxConcurrentActivities: 8, MaxConcurrentOrchestrations: 4}, engine.Registry(), zerolog.Nop(), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer hub.Close(context.Background())
	client := engine.Client(hub.Client, hub.Bounds)

	var pages []page
	for _, path := range []string{"/a", "/b", "/slow", "/c", "/flaky", "/d", "/missing", "/e", "/down", "/f", "/g", "/h"} {
		pages = append(pages, page{URL: site.URL + path})
	}
	items, _ := json.Marshal(pages)
	started, err := client.Start(context.Background(), "check_pages", fanout.Request{Items: items, MaxParallelism: 3})
	if err != nil {
		fmt.Println(err)
		return
	}
	md, err := client.Status(context.Background(), started.ID)
	for err == nil && !md.IsComplete() {
		time.Sleep(10 * time.Millisecond)
		md, err = client.Status(context.Background(), started.ID)
	}
	if err != nil {
		fmt.Println(err)
		return
	}

	var out struct {
		report
		FailedItems []fanout.FailedItem `json:"failed_items"`
		Success     bool                `json:"success"`
		Partitions  int                 `json:"partitions"`
	}
	json.Unmarshal([]byte(md.SerializedOutput), &out)
	fmt.Println(fanout.StatusName(md.RuntimeStatus), "in", out.Partitions, "partitions; success:", out.Success)
	fmt.Println("statuses:", out.Statuses)
	fmt.Println("slowest:", strings.TrimPrefix(out.Slowest.URL, site.URL))
	for _, f := range out.FailedItems {
		fmt.Printf("failed: item %d after %d attempts: %s\n", f.Index, f.Attempts, f.Error)
	}
	mu.Lock()
	fmt.Println("/flaky was fetched", hits["/flaky"], "times")
	mu.Unlock()

	// A page that is not a URL is refused before anything starts.
	_, err = client.Start(context.Background(), "check_pages", fanout.Request{Items: json.RawMessage(`[{"url": "ftp://x"}]`)})
	fmt.Println(err)

	// Output:
	// Completed in 3 partitions; success: false
	// statuses: map[200:10 404:1]
	// slowest: /slow
	// failed: item 8 after 2 attempts: GET /down: 500 Internal Server Error
	// /flaky was fetched 2 times
	// workItems[0]: url "ftp://x" is not an http(s) URL
}
