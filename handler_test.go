package main

// End-to-end tests: the real handler binary, started the way the Azure
// Functions host starts it, driven through both of the host's request modes.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"fanoutfanin/internal/dtstest"
	"fanoutfanin/internal/hubfile"
)

var handlerBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "handler-e2e")
	if err != nil {
		panic(err)
	}
	handlerBinary = filepath.Join(dir, "handler")
	build := exec.Command("go", "build", "-o", handlerBinary, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the handler:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newAppRoot lays out a function app as the host sees it: host.json, the
// function folders and the handler binary. edit, if given, changes host.json.
func newAppRoot(t *testing.T, edit func(host map[string]any)) string {
	t.Helper()
	root := t.TempDir()
	copyFile(t, handlerBinary, filepath.Join(root, "handler"), 0o755)
	for _, f := range []string{"fan_out_fan_in/function.json", "status/function.json"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
		copyFile(t, f, filepath.Join(root, f), 0o644)
	}
	data, err := os.ReadFile("host.json")
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		var host map[string]any
		if err := json.Unmarshal(data, &host); err != nil {
			t.Fatal(err)
		}
		edit(host)
		data, _ = json.Marshal(host)
	}
	if err := os.WriteFile(filepath.Join(root, "host.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, mode); err != nil {
		t.Fatal(err)
	}
}

// localSettings are the Values of the shipped local.settings.json, which
// `func start` turns into environment variables.
func localSettings(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("local.settings.json")
	if err != nil {
		t.Fatal(err)
	}
	var ls struct{ Values map[string]string }
	if err := json.Unmarshal(data, &ls); err != nil {
		t.Fatal(err)
	}
	return ls.Values
}

// handlerProcess is the handler running as a child process.
type handlerProcess struct {
	cmd    *exec.Cmd
	port   int
	stdout *syncBuffer
	stderr *syncBuffer
	exited chan error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startHandler starts root/handler as the host does: working directory the
// app root, the host's environment plus every app setting, and a random port
// in FUNCTIONS_CUSTOMHANDLER_PORT. It does not wait for readiness.
func startHandler(t *testing.T, root string, settings map[string]string) *handlerProcess {
	t.Helper()
	port := freePort(t)
	env := os.Environ()
	for k, v := range settings {
		env = append(env, k+"="+v)
	}
	env = append(env,
		"FUNCTIONS_CUSTOMHANDLER_PORT="+strconv.Itoa(port),
		"FUNCTIONS_HTTPWORKER_PORT="+strconv.Itoa(port),
		"FUNCTIONS_CUSTOMHANDLER_WORKER_ID=6d7b1e8c-0f9a-4c5e-9d3b-2a1f4e6c8b70",
		"FUNCTIONS_HTTPWORKER_ID=6d7b1e8c-0f9a-4c5e-9d3b-2a1f4e6c8b70",
		"FUNCTIONS_APP_ROOT_PATH="+root,
	)
	p := &handlerProcess{port: port, stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(filepath.Join(root, "handler"))
	p.cmd.Dir = root
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("handler stdout:\n%s\nhandler stderr:\n%s", p.stdout, p.stderr)
		}
	})
	return p
}

// waitReady probes GET / every 25 ms, as the host does, until any answer.
func (p *handlerProcess) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // the host's initializationTimeout
	for time.Now().Before(deadline) {
		select {
		case err := <-p.exited:
			p.exited <- err // for the cleanup, which waits for it
			t.Fatalf("handler exited before it was ready: %v\nstderr: %s", err, p.stderr)
		default:
		}
		res, err := http.Get(p.url("/"))
		if err == nil {
			res.Body.Close()
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatal("handler not listening after 30 s")
}

// waitExit waits for the handler to exit and returns how it did.
func (p *handlerProcess) waitExit(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err // for the cleanup
		return err
	case <-time.After(within):
		t.Fatalf("handler still running after %s", within)
		return nil
	}
}

func (p *handlerProcess) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", p.port, path)
}

// embedded are the settings for a run on the embedded hub: local.settings.json
// with the scheduler connection string emptied, and no simulated delay.
func embedded(t *testing.T, root string, extra ...string) map[string]string {
	t.Helper()
	s := localSettings(t)
	s["DURABLE_TASK_SCHEDULER_CONNECTION_STRING"] = ""
	s["FANOUT_EMBEDDED_DIR"] = filepath.Join(root, "data")
	return withSettings(s, append([]string{"FANOUT_WORK_MIN_DELAY", "0", "FANOUT_WORK_MAX_DELAY", "0"}, extra...)...)
}

// onScheduler are the settings for a run on a gRPC backend at addr: the
// shipped local.settings.json, whose emulator connection string is kept
// as it is but for the address, and no simulated delay.
func onScheduler(t *testing.T, addr string, extra ...string) map[string]string {
	t.Helper()
	s := localSettings(t)
	shipped := s["DURABLE_TASK_SCHEDULER_CONNECTION_STRING"]
	if !strings.Contains(shipped, "localhost:8080") {
		t.Fatalf("local.settings.json no longer points at the emulator on localhost:8080: %q", shipped)
	}
	s["DURABLE_TASK_SCHEDULER_CONNECTION_STRING"] = strings.Replace(shipped, "localhost:8080", addr, 1)
	return withSettings(s, append([]string{"FANOUT_WORK_MIN_DELAY", "0", "FANOUT_WORK_MAX_DELAY", "0"}, extra...)...)
}

func withSettings(s map[string]string, kv ...string) map[string]string {
	for i := 0; i+1 < len(kv); i += 2 {
		s[kv[i]] = kv[i+1]
	}
	return s
}

// backends are the task hubs every end-to-end test of the app's behaviour
// runs on: the embedded one, and the upstream durabletask-go sidecar (a real
// gRPC backend we did not write) through the scheduler path.
var backends = []struct {
	name     string
	settings func(t *testing.T, root string, extra ...string) map[string]string
}{
	{"embedded", embedded},
	{"sidecar", func(t *testing.T, root string, extra ...string) map[string]string {
		addr, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
		return onScheduler(t, addr, extra...)
	}},
}

// forEachBackend runs test once on every backend.
func forEachBackend(t *testing.T, test func(t *testing.T, settings func(t *testing.T, root string, extra ...string) map[string]string)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, b.settings) })
	}
}

// forward sends a request as the host does in forwarding mode: the caller's
// method, path, headers and body, plus the host's own headers.
func (p *handlerProcess) forward(t *testing.T, method, path, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, p.url(path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "localhost:7071" // the Host the caller used
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Azure-Functions-HostVersion", "4.1036.1.23224")
	req.Header.Set("X-Azure-Functions-InvocationId", "0f3c6e55-4a4b-4a52-9f53-1a2b3c4d5e6f")
	req.Header.Set("User-Agent", "Azure-Functions-Host/4.1036.1.23224")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: body is not JSON: %v", method, path, err)
	}
	return res.StatusCode, res.Header, out
}

// invoke sends an invocation payload as the host does in payload mode and
// returns the function's HTTP output from the reply, and the reply's Logs.
func (p *handlerProcess) invoke(t *testing.T, function, method, url, body string, params map[string]string) (res map[string]any, logs []string) {
	t.Helper()
	return p.invokeWith(t, function, method, url, body, params, nil)
}

// invokeWith is invoke with more request headers.
func (p *handlerProcess) invokeWith(t *testing.T, function, method, url, body string, params, headers map[string]string) (res map[string]any, logs []string) {
	t.Helper()
	h := map[string][]string{"Content-Type": {"application/json"}, "Host": {"localhost:7071"}}
	for k, v := range headers {
		h[k] = []string{v}
	}
	req := map[string]any{
		"Url":        url,
		"Method":     method,
		"Query":      map[string]string{},
		"Headers":    h,
		"Params":     params,
		"Identities": []any{},
	}
	if body != "" {
		req["Body"] = body
	}
	payload, _ := json.Marshal(map[string]any{
		"Data":     map[string]any{"req": req},
		"Metadata": map[string]any{"sys": map[string]string{"MethodName": function, "UtcNow": time.Now().UTC().Format(time.RFC3339), "RandGuid": "2b8c4f8e-6a53-4b0a-a1a3-6f2c9b7d1e44"}},
	})
	hreq, _ := http.NewRequest("POST", p.url("/"+function), bytes.NewReader(payload))
	hreq.Header.Set("Content-Type", "application/json; charset=utf-8")
	hreq.Header.Set("X-Azure-Functions-InvocationId", "8e1c1b1a-5d7e-4c36-b0f1-7f0a3c2d9e88")
	hres, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	defer hres.Body.Close()
	if hres.StatusCode != http.StatusOK || !strings.HasPrefix(hres.Header.Get("Content-Type"), "application/json") {
		raw, _ := io.ReadAll(hres.Body)
		t.Fatalf("payload mode %s: got %d %s, want 200 application/json: %s", function, hres.StatusCode, hres.Header.Get("Content-Type"), raw)
	}
	var reply struct {
		Outputs     map[string]map[string]any
		Logs        []string
		ReturnValue any
	}
	if err := json.NewDecoder(hres.Body).Decode(&reply); err != nil {
		t.Fatal(err)
	}
	out, ok := reply.Outputs["res"]
	if !ok {
		t.Fatalf("payload mode %s: reply has no Outputs.res: %+v", function, reply)
	}
	return out, reply.Logs
}

// outputBody decodes the JSON body inside a payload-mode output.
func outputBody(t *testing.T, out map[string]any) map[string]any {
	t.Helper()
	s, ok := out["body"].(string)
	if !ok {
		t.Fatalf("output body is not a string: %v", out["body"])
	}
	var b map[string]any
	if err := json.Unmarshal([]byte(s), &b); err != nil {
		t.Fatalf("output body is not JSON: %q", s)
	}
	return b
}

// logLines parses the handler's JSON log lines.
func logLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("stdout line is not JSON: %q", sc.Text())
		}
		lines = append(lines, l)
	}
	return lines
}

func pollStatus(t *testing.T, p *handlerProcess, id, want string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, _, body := p.forward(t, "GET", "/api/status/"+id, "")
		if body["runtimeStatus"] == want {
			if code != http.StatusOK && want == "Completed" {
				t.Errorf("completed status: HTTP %d, want 200", code)
			}
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s never reached %s: last %d %v", id, want, code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

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

	lockedTasks, lockedInstances, err := hubfile.Locked(filepath.Join(root, "data", "default.sqlite"))
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
	history, err := hubfile.History(file, id)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := hubfile.Pending(file, id)
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
