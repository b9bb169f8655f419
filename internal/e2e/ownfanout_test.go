package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// guideFiles returns the files docs/your-own-fan-out.md walks a user
// through adding, by path: each is a code block right after a line naming
// it.
func guideFiles(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("docs/your-own-fan-out.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(data)
	files := map[string]string{}
	for _, m := range regexp.MustCompile("(?s)`([^`\n]+\\.(?:go|json))`[^\n]*:\n\n```(?:go|json)\n(.*?)\n```").FindAllStringSubmatch(section, -1) {
		files[m[1]] = m[2] + "\n"
	}
	if len(files) != 2 {
		t.Fatalf("docs/your-own-fan-out.md names %d files, want its Go file and its function.json: %v", len(files), files)
	}
	return files
}

// copyModule copies this repository's source, without its git data and
// what builds and runs leave, into dir.
func copyModule(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir() && (path == ".git" || path == "dist" || path == ".durabletask" || path == "test-artifacts"):
			return filepath.SkipDir
		case d.IsDir():
			return os.MkdirAll(filepath.Join(dir, path), 0o755)
		case path == "handler" || !d.Type().IsRegular():
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, path), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// buildWithFiles adds files (contents by path) to a copy of this
// repository, builds the handler from it, and returns a function app root
// with that handler, host.json, and the function folders of the sample,
// the status function and files.
func buildWithFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	module := t.TempDir()
	copyModule(t, module)
	functionFiles := []string{"host.json", "fan_out_fan_in/function.json", "status/function.json"}
	for path, content := range files {
		if _, err := os.Stat(path); err == nil {
			t.Fatalf("%s, which the test adds, already exists in the repository", path)
		}
		os.MkdirAll(filepath.Join(module, filepath.Dir(path)), 0o755)
		if err := os.WriteFile(filepath.Join(module, path), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if filepath.Base(path) == "function.json" {
			functionFiles = append(functionFiles, path)
		}
	}
	root := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(root, "handler"), ".")
	build.Dir = module
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building with %s added: %v\n%s", strings.Join(slices.Sorted(maps.Keys(files)), ", "), err, out)
	}
	for _, f := range functionFiles {
		os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
		copyFile(t, filepath.Join(module, f), filepath.Join(root, f), 0o644)
	}
	return root
}

// docs/your-own-fan-out.md, followed word for word: its two files
// added to a copy of this repository, nothing else changed, build and run a
// fan-out that starts, retries, lists its failures, refuses bad items and
// is watched like the sample.
func TestYourOwnFanOutAsTheGuideShows(t *testing.T) {
	root := buildWithFiles(t, guideFiles(t))

	var mu sync.Mutex
	hits := map[string]int{}
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		n := hits[r.URL.Path]
		mu.Unlock()
		switch r.URL.Path {
		case "/slow":
			time.Sleep(300 * time.Millisecond)
		case "/nope":
			w.WriteHeader(http.StatusNotFound)
		case "/flaky":
			if n == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		case "/down":
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer site.Close()

	settings := embedded(t, root, "FANOUT_ITEM_RETRY_DELAY", "10ms", "FANOUT_ITEM_MAX_ATTEMPTS", "2", "CHECK_URLS_TIMEOUT", "5s")
	p := startHandler(t, root, settings)
	p.waitReady(t)

	var links []map[string]string
	for _, path := range []string{"/a", "/slow", "/nope", "/flaky", "/down", "/b"} {
		links = append(links, map[string]string{"url": site.URL + path})
	}
	body, _ := json.Marshal(map[string]any{"workItems": links, "maxParallelism": 3})
	code, _, started := p.forward(t, "POST", "/api/check_urls", string(body))
	if code != http.StatusAccepted {
		t.Fatalf("start: %d %v", code, started)
	}
	st := pollStatus(t, p, started["id"].(string), "Completed")
	if st["name"] != "check_urls_orchestrator" {
		t.Errorf("name: %v", st["name"])
	}
	out, _ := st["output"].(map[string]any)
	statuses, _ := json.Marshal(out["statuses"])
	slowest, _ := out["slowest"].(map[string]any)
	if string(statuses) != `{"200":4,"404":1}` || slowest["url"] != site.URL+"/slow" || out["success"] != false || out["total_items_failed"] != 1.0 {
		t.Errorf("output: %v, want 4 × 200, 1 × 404, /slow the slowest, /down failed", out)
	}
	failed, _ := out["failed_items"].([]any)
	if len(failed) != 1 || fmt.Sprint(failed[0].(map[string]any)["item"]) != fmt.Sprint(map[string]any{"url": site.URL + "/down"}) {
		t.Errorf("failed_items: %v, want the /down link", failed)
	}
	mu.Lock()
	if hits["/flaky"] != 2 || hits["/down"] != 2 || hits["/a"] != 1 {
		t.Errorf("fetches: %v, want /flaky and /down twice (a retry each), the rest once", hits)
	}
	mu.Unlock()

	for body, want := range map[string]string{
		`{"workItems": ["https://example.com"]}`: "workItems must be an array of objects: workItems[0] is a string",
		`{"workItems": [{"url": "ftp://x"}]}`:    `workItems[0]: "ftp://x" is not an http or https URL`,
		`{"count": 3}`:                           "fan-out check_urls does not generate items: list them in workItems",
		`{}`:                                     "workItems is missing: list the items to process",
	} {
		if code, _, res := p.forward(t, "POST", "/api/check_urls", body); code != http.StatusBadRequest || res["error"] != want {
			t.Errorf("%s: got %d %v, want 400 %q", body, code, res, want)
		}
	}
	// The sample runs beside it, unchanged.
	_, _, sample := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["Task1"]}`)
	pollStatus(t, p, sample["id"].(string), "Completed")
}

// treeFiles returns the files under dir, by their paths in it.
func treeFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		files[filepath.ToSlash(rel)] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// The status page shows a fan-out of your own as it shows the sample: its
// summary's fields, whatever their shape (a number, a map, an object, a
// list of values, a long one cut short, a list of objects), and its
// result in the list, counted from the engine's fields and its progress
// (testdata/count_stock_app, partitioned here to merge summaries too).
func TestYourOwnFanOutOnTheStatusPage(t *testing.T) {
	b := newBrowser(t)
	root := buildWithFiles(t, treeFiles(t, "internal/e2e/testdata/count_stock_app"))
	p := startHandler(t, root, embedded(t, root, "FANOUT_PARTITION_SIZE", "5", "FANOUT_ITEM_MAX_ATTEMPTS", "1"))
	p.waitReady(t)

	type count struct {
		SKU   string `json:"sku"`
		Shelf string `json:"shelf"`
		Qty   int    `json:"qty"`
	}
	var items []count
	for i, qty := range []int{5, 12, 0, 7, 3, 40, 8, 0, 2, 9, 1, 6} {
		items = append(items, count{fmt.Sprintf("A-%02d", i+1), []string{"north", "south"}[i%2], qty})
		if i == 4 {
			items = append(items, count{"X-99", "north", -1}) // fails
		}
	}
	body, _ := json.Marshal(map[string]any{"workItems": items})
	code, _, started := p.forward(t, "POST", "/api/count_stock", string(body))
	if code != http.StatusAccepted {
		t.Fatalf("start: %d %v", code, started)
	}
	id := started["id"].(string)
	pollStatus(t, p, id, "Completed")

	b.run(t, "opening the instance page", chromedp.Navigate(p.url("/api/status/"+id)))
	b.waitFor(t, "its summary and failed item", `document.querySelector('#summary dd') !== null &&
		document.querySelectorAll('#failed-body tr').length === 1`)
	var summary string
	b.eval(t, `document.getElementById('summary').innerText`, &summary)
	for _, want := range []string{
		"Processed\n12",
		"Failed\n1",
		"Units\n93",
		"By shelf\nnorth: 19, south: 74",
		"Largest\nsku: A-06, shelf: south, qty: 40",
		"Counted\nA-01, A-02, A-03, A-04, A-05, A-06, A-07, A-08, A-09, A-10, and 2 more",
		"Shelves\nnorth, south",
		"Empty\nsku: A-03, shelf: north, qty: 0; sku: A-08, shelf: south, qty: 0",
		"Partitions\n3",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary %q lacks %q", summary, want)
		}
	}
	b.fits(t, "a fan-out of your own")
	b.screenshot(t, filepath.Join(artifactDir(), t.Name()+".png"))

	// Its partitions are managed through it: a partition's page offers no
	// action, whatever the fan-out.
	b.run(t, "opening a partition's page", chromedp.Navigate(p.url("/api/status/"+id+":p0")))
	b.waitFor(t, "the partition, with no action", `!document.getElementById('details').hidden &&
		document.querySelector('#summary dd') !== null && document.getElementById('actions').hidden`)

	b.run(t, "opening the list", chromedp.Navigate(p.url("/api/status")))
	b.waitFor(t, "its result in the list", fmt.Sprintf(`[...document.querySelectorAll('#list-body tr')].some((tr) =>
		tr.cells[0].textContent === %s && tr.cells[6].textContent === '12 processed, 1 failed')`, jsString(id)))
	b.check(t)
}
