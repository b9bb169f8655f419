package e2e

// The status page in a real browser: headless Chromium, driven with
// chromedp, against the real handler.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"fanoutfanin/internal/dtstest"
)

// xssItem is a work item whose name would run script if the page ever put
// it into HTML unescaped.
const xssItem = "<img src=x onerror=alert(1)>"

// browser is a headless Chromium tab, and what it saw happen: JavaScript
// dialogs, errors, and the requests it sent.
type browser struct {
	ctx context.Context

	mu       sync.Mutex
	dialogs  []string
	errors   []string
	requests []*network.Request
	internal []string // chromedp's own complaints
}

// chromiumMissing is set once a test has failed for want of Chromium.
var chromiumMissing atomic.Bool

// newBrowser starts headless Chromium with a fresh profile. Chromium is
// required, not optional: a test that skips checks nothing.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	exe, err := exec.LookPath("chromium")
	if err != nil {
		// One failure says so; the other page tests stop without repeating it.
		if chromiumMissing.CompareAndSwap(false, true) {
			t.Fatalf("the status page is tested in headless Chromium, which is not on PATH (%v): install it, e.g. apt-get install chromium on Debian or Ubuntu (.ci/run does), and run the test again", err)
		}
		t.SkipNow()
	}
	// Now and then, on a busy machine, Chromium exits as it starts, before
	// it listens: that says nothing about the page, so it gets three tries.
	for attempt := 1; ; attempt++ {
		b, stop, err := startBrowser(exe)
		if err == nil {
			t.Cleanup(stop)
			return b
		}
		stop()
		if attempt == 3 {
			t.Fatalf("starting Chromium (%s): %v", exe, err)
		}
		t.Logf("starting Chromium (%s), attempt %d: %v", exe, attempt, err)
	}
}

// startBrowser starts Chromium and returns the tab, and how to stop it.
func startBrowser(exe string) (*browser, func(), error) {
	// A fresh profile, removed once Chromium has quit: its helper processes
	// may write to it for a moment after the main one has gone, which
	// t.TempDir would report as a failure.
	profile, err := os.MkdirTemp("", "chromium-profile")
	if err != nil {
		return nil, func() {}, err
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1000, 800),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		// No connections but to the handler: this machine's network is
		// closed, and the test needs none.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &browser{}
	ctx, cancelCtx := chromedp.NewContext(allocCtx, chromedp.WithErrorf(func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if strings.HasPrefix(msg, "unhandled node event") {
			return // events of a newer Chromium than chromedp knows, which it needs not
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		b.internal = append(b.internal, msg)
	}))
	ctx, cancelTimeout := context.WithTimeout(ctx, 45*time.Second)
	stop := func() {
		chromedp.Cancel(ctx) // closes the browser and waits for it
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
		for i := 0; os.RemoveAll(profile) != nil && i < 20; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	b.ctx = ctx
	chromedp.ListenTarget(ctx, func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch e := ev.(type) {
		case *page.EventJavascriptDialogOpening:
			b.dialogs = append(b.dialogs, fmt.Sprintf("%s: %q", e.Type, e.Message))
			// Close it, or the page would wait for it for ever.
			go chromedp.Run(ctx, page.HandleJavaScriptDialog(false))
		case *runtime.EventExceptionThrown:
			b.errors = append(b.errors, "exception: "+e.ExceptionDetails.Error())
		case *log.EventEntryAdded:
			// A refused script or style (CSP) is logged here, as is a failed load.
			if e.Entry.Level == log.LevelError {
				b.errors = append(b.errors, fmt.Sprintf("%s: %s (%s)", e.Entry.Source, e.Entry.Text, e.Entry.URL))
			}
		case *network.EventRequestWillBeSent:
			b.requests = append(b.requests, e.Request)
		}
	})
	return b, stop, chromedp.Run(ctx) // starts the browser
}

func (b *browser) run(t *testing.T, what string, actions ...chromedp.Action) {
	t.Helper()
	if err := chromedp.Run(b.ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page into out.
func (b *browser) eval(t *testing.T, expr string, out any) {
	t.Helper()
	b.run(t, "evaluating "+expr, chromedp.Evaluate(expr, out))
}

// waitFor waits until a JavaScript expression is true in the page. Errors
// count as false: during a navigation there is no page to ask.
func (b *browser) waitFor(t *testing.T, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var ok bool
		if err := chromedp.Run(b.ctx, chromedp.Evaluate(expr, &ok)); err == nil && ok {
			return
		}
		if time.Now().After(deadline) || b.ctx.Err() != nil {
			var text string
			chromedp.Run(b.ctx, chromedp.Evaluate(`document.body.innerText`, &text))
			t.Fatalf("waiting for %s: not so after 20 s; the page says:\n%s", what, text)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check fails the test if the browser has opened a dialog or seen an
// error, but for those that contain one of expected.
func (b *browser) check(t *testing.T, expected ...string) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.dialogs) > 0 {
		t.Errorf("the page opened JavaScript dialogs: %s", b.dialogs)
	}
	for _, e := range b.errors {
		if !slices.ContainsFunc(expected, func(s string) bool { return strings.Contains(e, s) }) {
			t.Errorf("the browser reported an error: %s", e)
		}
	}
	// Worth a look only when something else failed.
	if t.Failed() && len(b.internal) > 0 {
		t.Logf("chromedp said:\n%s", strings.Join(b.internal, "\n"))
	}
}

// screenshot writes a full-page PNG to each path, making its folder.
func (b *browser) screenshot(t *testing.T, paths ...string) {
	t.Helper()
	var png []byte
	// The page's whole size, measured now: chromedp's FullScreenshot leaves
	// that to Chromium, which now and then takes a stale one and cuts the
	// page short.
	b.run(t, "taking a screenshot", chromedp.ActionFunc(func(ctx context.Context) error {
		_, _, _, _, _, size, err := page.GetLayoutMetrics().Do(ctx)
		if err != nil {
			return err
		}
		png, err = page.CaptureScreenshot().
			WithFormat(page.CaptureScreenshotFormatPng).
			WithCaptureBeyondViewport(true).
			WithClip(&page.Viewport{Width: size.Width, Height: size.Height, Scale: 1}).
			Do(ctx)
		return err
	}))
	for _, path := range paths {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot (%d KiB): %s", len(png)>>10, path)
	}
}

// fits checks that the page, as it is, fits a phone (375 px) and a laptop
// (1280 px) screen: no horizontal scrollbar, and no table that scrolls
// sideways inside its box.
func (b *browser) fits(t *testing.T, what string) {
	t.Helper()
	for _, width := range []int64{1280, 375} {
		b.run(t, fmt.Sprintf("showing %s %d px wide", what, width), chromedp.EmulateViewport(width, 800))
		var overflow []string
		b.eval(t, `[document.documentElement.scrollWidth > window.innerWidth ? 'the page, ' + document.documentElement.scrollWidth + ' px' : '',
			...[...document.querySelectorAll('.table-wrap')].filter((e) => e.offsetParent !== null && e.scrollWidth > e.clientWidth).map((e) => e.id || 'a table')].filter(Boolean)`, &overflow)
		if len(overflow) > 0 {
			t.Errorf("%s, %d px wide, scrolls sideways: %s", what, width, strings.Join(overflow, ", "))
		}
	}
	b.run(t, "restoring the window's size", chromedp.EmulateViewport(1000, 800)) // as startBrowser opens it
}

// artifactDir is where tests leave files to look at: $FANOUT_TEST_ARTIFACTS,
// else test-artifacts/ at the repository's root.
func artifactDir() string {
	if dir := os.Getenv("FANOUT_TEST_ARTIFACTS"); dir != "" {
		return dir
	}
	return "test-artifacts"
}

// startFanOut starts a fan-out of items and returns its instance id.
func startFanOut(t *testing.T, p *handlerProcess, items []string, maxParallelism int) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"workItems": items, "maxParallelism": maxParallelism})
	code, _, started := p.forward(t, "POST", "/api/fan_out_fan_in", string(body))
	if code != 202 {
		t.Fatalf("start: %d %v", code, started)
	}
	return started["id"].(string)
}

// The page follows a fan-out live to its summary, shows an item named like
// HTML as text, lists, filters and pages through the instances, terminates,
// restarts and purges an instance through its confirmation dialog, shows
// a refusal, and carries the function key on every request and link.
func TestStatusPage(t *testing.T) {
	b := newBrowser(t)
	root := newAppRoot(t, nil)
	p := startHandler(t, root, embedded(t, root,
		"FANOUT_WORK_MIN_DELAY", "100ms", "FANOUT_WORK_MAX_DELAY", "400ms",
		"FANOUT_PARTITION_SIZE", "10",
		"FANOUT_FAIL_ITEMS", `order-00[37]|<img.*`, "FANOUT_ITEM_RETRY_DELAY", "50ms"))
	p.waitReady(t)

	items := []string{xssItem}
	for i := 1; i < 30; i++ {
		items = append(items, fmt.Sprintf("order-%03d", i))
	}
	id := startFanOut(t, p, items, 3) // some 3 s: long enough to watch
	instancePage := p.url("/api/status/" + id + "?code=secret")

	// The instance page, from Running to its summary, without a reload.
	b.run(t, "opening the instance page", chromedp.Navigate(instancePage), chromedp.Evaluate(`window.notReloaded = true`, nil))
	var sawRunning bool
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st struct {
			Status, Text string
			Value, Max   float64
			Summary      bool
		}
		b.eval(t, `({
			status: document.getElementById('status').textContent,
			text: document.getElementById('progress-text').textContent,
			value: document.getElementById('progress').value,
			max: document.getElementById('progress').max,
			summary: document.querySelector('#summary dd') !== null,
		})`, &st)
		if st.Status == "Running" && st.Value < st.Max {
			sawRunning = true
		}
		if st.Status == "Completed" && st.Value == st.Max && strings.HasSuffix(st.Text, "100 %") && st.Summary {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page never showed the instance completed: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !sawRunning {
		t.Error("the page never showed the instance running, part way through")
	}
	var page struct {
		NotReloaded  bool
		Summary      string
		Failed       []string
		Literal      bool
		Images       int
		Partitions   int
		PartitionsOK bool
		Links        []string
	}
	b.waitFor(t, "the partitions, all completed", `document.querySelectorAll('#partitions-body tr').length === 3 &&
		[...document.querySelectorAll('#partitions-body .badge')].every((b) => b.textContent === 'Completed')`)
	b.eval(t, `({
		notReloaded: window.notReloaded === true,
		summary: document.getElementById('summary').innerText,
		failed: [...document.querySelectorAll('#failed-body tr')].map((tr) => tr.cells[1].textContent),
		literal: [...document.querySelectorAll('td')].some((td) => td.textContent === `+jsString(xssItem)+`),
		images: document.getElementsByTagName('img').length,
		links: [...document.querySelectorAll('a[href]')].map((a) => a.href),
	})`, &page)
	if !page.NotReloaded {
		t.Error("the page reloaded itself")
	}
	for _, want := range []string{"Processed\n27", "Failed\n3", "Total value\n", "Average value\n", "Total processing time\n", "Partitions\n3"} {
		if !strings.Contains(page.Summary, want) {
			t.Errorf("summary %q lacks %q", page.Summary, want)
		}
	}
	if got, want := strings.Join(page.Failed, " | "), xssItem+" | order-003 | order-007"; got != want {
		t.Errorf("failed items: got %s, want %s", got, want)
	}
	if !page.Literal || page.Images != 0 {
		t.Errorf("the item %s: shown as text %v; <img> elements in the page: %d, want 0", xssItem, page.Literal, page.Images)
	}
	for _, link := range page.Links {
		if u, err := url.Parse(link); err != nil || u.Query().Get("code") != "secret" {
			t.Errorf("link %s lacks code=secret", link)
		}
	}

	// The list: both instances, newest first, one a page with ?top=1.
	slow := startFanOut(t, p, []string{"slow-1", "slow-2", "slow-3", "slow-4", "slow-5", "slow-6", "slow-7", "slow-8", "slow-9", "slow-10"}, 1)
	b.run(t, "opening the list", chromedp.Navigate(p.url("/api/status?code=secret")))
	b.waitFor(t, "both instances listed", fmt.Sprintf(`[...document.querySelectorAll('#list-body a')].map((a) => a.textContent).join() === %s`, jsString(slow+","+id)))
	b.waitFor(t, "the summary of the first in the list", fmt.Sprintf(`[...document.querySelectorAll('#list-body tr')].some((tr) => tr.cells[0].textContent === %s && tr.cells[6].textContent === '27 processed, 3 failed')`, jsString(id)))
	b.run(t, "showing partitions", chromedp.Click("#filter-partitions", chromedp.ByQuery))
	b.waitFor(t, "partitions listed", fmt.Sprintf(`[...document.querySelectorAll('#list-body a')].some((a) => a.textContent === %s)`, jsString(id+":p2")))
	b.fits(t, "the list")
	b.run(t, "opening the list a page at a time", chromedp.Navigate(p.url("/api/status?code=secret&top=1")))
	b.waitFor(t, "the first page", fmt.Sprintf(`document.querySelector('#list-body a')?.textContent === %s && !document.getElementById('next').disabled`, jsString(slow)))
	b.run(t, "going to the next page", chromedp.Click("#next", chromedp.ByQuery))
	b.waitFor(t, "the second page", fmt.Sprintf(`document.querySelector('#list-body a')?.textContent === %s && document.getElementById('page-label').textContent === 'Page 2'`, jsString(id)))
	b.run(t, "going back", chromedp.Click("#prev", chromedp.ByQuery))
	b.waitFor(t, "the first page again", fmt.Sprintf(`document.querySelector('#list-body a')?.textContent === %s && document.getElementById('prev').disabled`, jsString(slow)))

	// Terminating: the button asks in a modal dialog, with a reason.
	b.run(t, "opening the slow instance from the list", chromedp.Click("#list-body a", chromedp.ByQuery))
	b.waitFor(t, "the slow instance running", `document.getElementById('status').textContent === 'Running'`)
	b.run(t, "asking to terminate",
		chromedp.Click(`button[data-action="terminate"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#confirm", chromedp.ByQuery))
	var focused string
	b.eval(t, `document.getElementById('confirm').open ? document.activeElement.id : 'no dialog'`, &focused)
	if focused != "reason" {
		t.Errorf("with the dialog open, the focus is on %q, want the reason", focused)
	}
	b.run(t, "confirming", chromedp.SendKeys("#reason", "enough for today", chromedp.ByQuery), chromedp.Click("#confirm-ok", chromedp.ByQuery))
	b.waitFor(t, "the slow instance terminated", `document.getElementById('status').textContent === 'Terminated' &&
		document.getElementById('failure').textContent.includes('enough for today') && !document.getElementById('confirm').open`)
	if st := pollStatus(t, p, slow, "Terminated"); st["output"] != "enough for today" {
		t.Errorf("terminated instance's output: %v, want the reason given in the dialog", st["output"])
	}

	// A refused action shows the API's message next to the buttons. (Resume
	// is not offered for a terminated instance: shown here to be refused.)
	b.run(t, "resuming a terminated instance",
		chromedp.Evaluate(`document.querySelector('button[data-action="resume"]').hidden = false`, nil),
		chromedp.Click(`button[data-action="resume"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#confirm", chromedp.ByQuery),
		chromedp.Click("#confirm-ok", chromedp.ByQuery))
	b.waitFor(t, "the refusal", `document.getElementById('action-error').textContent.includes('only a suspended instance can be resumed')`)

	// Restarted, the browser follows to the new instance's page.
	b.run(t, "restarting",
		chromedp.Click(`button[data-action="restart"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#confirm", chromedp.ByQuery),
		chromedp.Click("#confirm-ok", chromedp.ByQuery))
	b.waitFor(t, "the restarted instance's page", fmt.Sprintf(`location.pathname.startsWith('/api/status/') && location.pathname !== %s &&
		new URLSearchParams(location.search).get('code') === 'secret' && document.getElementById('status').textContent !== ''`, jsString("/api/status/"+slow)))
	var restarted string
	b.eval(t, `document.body.dataset.instanceId`, &restarted)

	// Purged, it is gone, and the browser is back on the list.
	b.run(t, "opening the terminated instance", chromedp.Navigate(p.url("/api/status/"+slow+"?code=secret")))
	b.run(t, "purging",
		chromedp.Click(`button[data-action="purge"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#confirm", chromedp.ByQuery),
		chromedp.Click("#confirm-ok", chromedp.ByQuery))
	b.waitFor(t, "the list without the purged instance", fmt.Sprintf(`!document.getElementById('list-view').hidden &&
		[...document.querySelectorAll('#list-body a')].map((a) => a.textContent).join() === %s`, jsString(restarted+","+id)))
	b.run(t, "choosing Completed instances", chromedp.Evaluate(`{
		const filter = document.getElementById('filter-status');
		filter.value = 'Completed';
		filter.dispatchEvent(new Event('change'));
	}`, nil))
	b.waitFor(t, "only the completed instance", fmt.Sprintf(`[...document.querySelectorAll('#list-body a')].map((a) => a.textContent).join() === %s`, jsString(id)))
	if code, _, body := p.forward(t, "GET", "/api/status/"+slow, ""); code != 404 {
		t.Errorf("status of the purged instance: %d %v, want 404", code, body)
	}

	// Last, the finished fan-out again, for the screenshot.
	b.run(t, "opening the finished instance", chromedp.Navigate(instancePage))
	b.waitFor(t, "its summary, partitions and failed items", `document.querySelector('#summary dd') !== null &&
		document.querySelectorAll('#partitions-body tr').length === 3 && document.querySelectorAll('#failed-body tr').length === 3`)
	b.fits(t, "the finished instance")
	b.run(t, "settling", chromedp.Evaluate(`document.activeElement.blur()`, nil))
	paths := []string{filepath.Join(artifactDir(), t.Name()+".png")}
	if docs := os.Getenv("FANOUT_SCREENSHOT"); docs != "" {
		paths = append(paths, docs)
	}
	b.screenshot(t, paths...)

	// Every API call the page made carried the function key.
	b.mu.Lock()
	var calls []string
	for _, r := range b.requests {
		u, err := url.Parse(r.URL)
		if err != nil || !strings.HasPrefix(u.Path, "/api/") {
			continue
		}
		calls = append(calls, r.Method+" "+u.Path)
		if u.Query().Get("code") != "secret" {
			t.Errorf("%s %s lacks code=secret", r.Method, r.URL)
		}
	}
	b.mu.Unlock()
	for _, want := range []string{"GET /api/status/" + id, "GET /api/status", "POST /api/status/" + slow + "/terminate",
		"POST /api/status/" + slow + "/resume", "POST /api/status/" + slow + "/restart", "DELETE /api/status/" + slow} {
		if !slices.Contains(calls, want) {
			t.Errorf("the page never sent %s; it sent %s", want, calls)
		}
	}
	b.check(t, "status of 409 (Conflict) (http://127.0.0.1:"+fmt.Sprint(p.port)+"/api/status/"+slow+"/resume?")
}

// jsString is s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// On a backend that cannot list instances the list page says so, with the
// API's own message, and an instance's page works as ever.
func TestStatusPageWithoutListing(t *testing.T) {
	b := newBrowser(t)
	root := newAppRoot(t, nil)
	addr, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
	p := startHandler(t, root, onScheduler(t, addr))
	p.waitReady(t)
	id := startFanOut(t, p, []string{"a", "b", "c"}, 3)

	b.run(t, "opening the list", chromedp.Navigate(p.url("/api/status")))
	b.waitFor(t, "the list's error", `document.getElementById('list-message').textContent.includes('listing instances is not supported') &&
		document.getElementById('list-wrap').hidden`)
	b.run(t, "opening an instance by its id",
		chromedp.SendKeys("#open-id", id+kb.Enter, chromedp.ByQuery))
	b.waitFor(t, "the instance completed", `document.getElementById('status').textContent === 'Completed' &&
		document.getElementById('summary').innerText.includes('Processed\n3') && document.getElementById('partitions').hidden`)
	b.check(t, "status of 501")
}
