package e2e

// The end-to-end tests' harness: the real handler binary, built once and
// started the way the Azure Functions host starts it, both of the host's
// request modes, and the backends table.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"fanoutfanin/internal/dtstest"
	"fanoutfanin/internal/servers"
)

var handlerBinary string

func TestMain(m *testing.M) {
	// The tests read the app's files (host.json, the function folders,
	// the docs) and build the handler from the module root.
	if err := chdirModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
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
	port, err := servers.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
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
	return p.forwardWith(t, method, path, body, nil)
}

// forwardWith is forward with more request headers.
func (p *handlerProcess) forwardWith(t *testing.T, method, path, body string, headers map[string]string) (int, http.Header, map[string]any) {
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
	for k, v := range headers {
		req.Header.Set(k, v)
	}
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

// pollStatus polls instance id's status until runtimeStatus is want.
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

// chdirModuleRoot makes the module root, where go.mod is, the working
// directory.
func chdirModuleRoot() error {
	for {
		if _, err := os.Stat("go.mod"); err == nil {
			return nil
		}
		wd, _ := os.Getwd()
		if filepath.Dir(wd) == wd {
			return fmt.Errorf("no go.mod above the test's directory")
		}
		if err := os.Chdir(".."); err != nil {
			return err
		}
	}
}
