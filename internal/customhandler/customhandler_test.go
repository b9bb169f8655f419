package customhandler

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/httpjson"
)

// --- function.json ---------------------------------------------------------

// writeFunction writes <root>/<name>/function.json.
func writeFunction(t *testing.T, root, name, functionJSON string) {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "function.json"), []byte(functionJSON), 0o644); err != nil {
		t.Fatal(err)
	}
}

// httpFunctionJSON is a function.json with one httpTrigger "req" and one http
// output "res"; methods is a JSON array or "" to leave it out.
func httpFunctionJSON(methods, route string) string {
	trigger := `{"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": "function"`
	if methods != "" {
		trigger += `, "methods": ` + methods
	}
	if route != "" {
		trigger += `, "route": "` + route + `"`
	}
	return `{"bindings": [` + trigger + `}, {"type": "http", "direction": "out", "name": "res"}]}`
}

// loadOne writes one function.json into a fresh app root and loads it.
func loadOne(t *testing.T, name, functionJSON string) ([]Function, error) {
	t.Helper()
	root := t.TempDir()
	writeFunction(t, root, name, functionJSON)
	return LoadFunctions(root)
}

func TestLoadFunctionsRepository(t *testing.T) {
	fns, err := LoadFunctions(filepath.Join("..", ".."))
	if err != nil {
		t.Fatalf("LoadFunctions: %v", err)
	}
	want := []Function{
		{Name: "fan_out_fan_in", Methods: []string{"POST"}, Route: "fan_out_fan_in", Trigger: "req", Output: "res"},
		{Name: "status", Methods: []string{"GET", "POST", "DELETE"}, Route: "status/{instanceId?}/{action?}", Params: []string{"instanceId", "action"}, Trigger: "req", Output: "res"},
	}
	if got, want := len(fns), len(want); got != want {
		t.Fatalf("number of functions: got %d (%+v), want %d", got, fns, want)
	}
	for i := range want {
		assertFunction(t, fns[i], want[i])
	}
}

func assertFunction(t *testing.T, got, want Function) {
	t.Helper()
	if got.Name != want.Name || !slices.Equal(got.Methods, want.Methods) || got.Route != want.Route ||
		!slices.Equal(got.Params, want.Params) || got.Trigger != want.Trigger || got.Output != want.Output {
		t.Errorf("function: got %+v, want %+v", got, want)
	}
}

// A route ending in optional parameters is served with and without them,
// and its paths leave out those without a value.
func TestOptionalRouteParameters(t *testing.T) {
	fn := Function{Route: "status/{instanceId}/{action?}"}
	if got, want := fn.Templates(), []string{"status/{instanceId}/{action}", "status/{instanceId}"}; !slices.Equal(got, want) {
		t.Errorf("Templates: got %q, want %q", got, want)
	}
	for _, tc := range []struct {
		vars map[string]string
		want string
	}{
		{map[string]string{"instanceId": "a b"}, "/api/status/a%20b"},
		{map[string]string{"instanceId": "x", "action": "terminate"}, "/api/status/x/terminate"},
	} {
		if got := fn.Path("api", tc.vars); got != tc.want {
			t.Errorf("Path(%v): got %q, want %q", tc.vars, got, tc.want)
		}
	}
}

func TestLoadFunctionsDefaults(t *testing.T) {
	root := t.TempDir()
	writeFunction(t, root, "zeta", httpFunctionJSON("", ""))
	writeFunction(t, root, "alpha", httpFunctionJSON(`["Get", "post"]`, "/items/{id}/parts/{part}/"))
	if err := os.MkdirAll(filepath.Join(root, "not_a_function"), 0o755); err != nil {
		t.Fatal(err)
	}
	fns, err := LoadFunctions(root)
	if err != nil {
		t.Fatalf("LoadFunctions: %v", err)
	}
	if got, want := len(fns), 2; got != want {
		t.Fatalf("number of functions: got %d (%+v), want %d", got, fns, want)
	}
	assertFunction(t, fns[0], Function{Name: "alpha", Methods: []string{"GET", "POST"}, Route: "items/{id}/parts/{part}", Params: []string{"id", "part"}, Trigger: "req", Output: "res"})
	assertFunction(t, fns[1], Function{Name: "zeta", Route: "zeta", Trigger: "req", Output: "res"})
	if !fns[1].Allows("DELETE") {
		t.Errorf("a function without methods must allow every method; DELETE refused")
	}
	if fns[0].Allows("DELETE") {
		t.Errorf("alpha allows only GET and POST; DELETE accepted")
	}
}

func TestLoadFunctionsErrors(t *testing.T) {
	for _, tc := range []struct {
		name         string
		functionJSON string
		want         []string
	}{
		{
			name:         "invalid JSON",
			functionJSON: "{\n  \"bindings\": [\n    {\"type\": \"httpTrigger\",, \"direction\": \"in\"}\n  ]\n}\n",
			want:         []string{filepath.Join("fn", "function.json") + " line 3:"},
		},
		{
			name: "timer trigger",
			functionJSON: `{"bindings": [{"type": "timerTrigger", "direction": "in", "name": "tick", "schedule": "0 */5 * * * *"},
				{"type": "http", "direction": "out", "name": "res"}]}`,
			want: []string{"fn", `"tick"`, `"timerTrigger"`, "HTTP functions only"},
		},
		{
			name:         "no http output",
			functionJSON: `{"bindings": [{"type": "httpTrigger", "direction": "in", "name": "req"}]}`,
			want:         []string{"fn", "one http output binding"},
		},
		{
			name:         "no bindings",
			functionJSON: `{"bindings": []}`,
			want:         []string{"fn", "one httpTrigger binding"},
		},
		{
			name:         "constrained parameter",
			functionJSON: httpFunctionJSON(`["get"]`, "items/{id:int}"),
			want:         []string{"fn", `"items/{id:int}"`, `"{id:int}"`, "not supported"},
		},
		{
			name:         "catch-all parameter",
			functionJSON: httpFunctionJSON(`["get"]`, "files/{*rest}"),
			want:         []string{`"{*rest}"`, "not supported"},
		},
		{
			name:         "optional parameter before a required one",
			functionJSON: httpFunctionJSON(`["get"]`, "items/{id?}/{part}"),
			want:         []string{`"items/{id?}/{part}"`, "only the last segments can be optional"},
		},
		{
			name:         "parameter inside a segment",
			functionJSON: httpFunctionJSON(`["get"]`, "items/x{id}"),
			want:         []string{`"x{id}"`, "not supported"},
		},
		{
			name:         "empty route",
			functionJSON: httpFunctionJSON(`["get"]`, "/"),
			want:         []string{"route is empty"},
		},
		{
			name:         "unknown method",
			functionJSON: httpFunctionJSON(`["get", "fetch"]`, "items"),
			want:         []string{"fn", `"FETCH"`, "not an HTTP method"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fns, err := loadOne(t, "fn", tc.functionJSON)
			if err == nil {
				t.Fatalf("LoadFunctions: got %+v and no error, want an error containing %q", fns, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("LoadFunctions error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestLoadFunctionsReportsEveryBadFile(t *testing.T) {
	root := t.TempDir()
	writeFunction(t, root, "bad_method", httpFunctionJSON(`["fetch"]`, ""))
	writeFunction(t, root, "bad_route", httpFunctionJSON(`["get"]`, "{*rest}"))
	writeFunction(t, root, "good", httpFunctionJSON(`["get"]`, ""))
	_, err := LoadFunctions(root)
	if err == nil {
		t.Fatal("LoadFunctions: got no error, want one naming bad_method and bad_route")
	}
	for _, w := range []string{"bad_method", "bad_route"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("LoadFunctions error does not name %s:\n%v", w, err)
		}
	}
}

func TestFunctionPath(t *testing.T) {
	status := Function{Name: "status", Route: "status/{instanceId}", Params: []string{"instanceId"}}
	start := Function{Name: "start", Route: "start"}
	for _, tc := range []struct {
		name   string
		fn     Function
		prefix string
		vars   map[string]string
		want   string
	}{
		{"escapes the value", status, "api", map[string]string{"instanceId": "a b/c"}, "/api/status/a%20b%2Fc"},
		{"plain value", status, "api", map[string]string{"instanceId": "abc123"}, "/api/status/abc123"},
		{"empty prefix", status, "", map[string]string{"instanceId": "a b/c"}, "/status/a%20b%2Fc"},
		{"two-segment prefix", status, "x/v1", map[string]string{"instanceId": "id"}, "/x/v1/status/id"},
		{"no parameters", start, "api", nil, "/api/start"},
		{"no parameters, empty prefix", start, "", nil, "/start"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := tc.fn.Path(tc.prefix, tc.vars), tc.want; got != want {
				t.Errorf("Path(%q, %v): got %q, want %q", tc.prefix, tc.vars, got, want)
			}
		})
	}
}

func TestFunctionMatch(t *testing.T) {
	status := Function{Name: "status", Route: "status/{instanceId}", Params: []string{"instanceId"}}
	start := Function{Name: "start", Route: "start"}
	for _, tc := range []struct {
		name   string
		fn     Function
		prefix string
		path   string
		want   map[string]string // nil: no match
	}{
		{"exact", start, "api", "/api/start", map[string]string{}},
		{"route in another case", start, "api", "/api/Start", map[string]string{}},
		{"prefix in another case", start, "api", "/API/start", map[string]string{}},
		{"trailing slash", start, "api", "/api/start/", map[string]string{}},
		{"all at once", start, "api", "/Api/START/", map[string]string{}},
		{"two-segment prefix", start, "x/v1", "/X/V1/Start", map[string]string{}},
		{"empty prefix", start, "", "/START/", map[string]string{}},
		{"parameter keeps its case", status, "api", "/api/Status/AbC-123", map[string]string{"instanceId": "AbC-123"}},
		{"parameter, trailing slash", status, "api", "/API/STATUS/AbC-123/", map[string]string{"instanceId": "AbC-123"}},
		{"two trailing slashes", start, "api", "/api/start//", nil},
		{"extra segment", start, "api", "/api/start/x", nil},
		{"missing parameter", status, "api", "/api/status/", nil},
		{"empty parameter", status, "api", "/api/status//", nil},
		{"no prefix", start, "api", "/start", nil},
		{"other prefix", start, "api", "/apix/start", nil},
		{"root", start, "", "/", nil},
		{"longer literal", start, "api", "/api/started", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vars, ok := tc.fn.match(tc.prefix, tc.path)
			if got, want := ok, tc.want != nil; got != want {
				t.Fatalf("match(%q, %q): matched %v, want %v", tc.prefix, tc.path, got, want)
			}
			if ok && !maps.Equal(vars, tc.want) {
				t.Errorf("match(%q, %q): vars %v, want %v", tc.prefix, tc.path, vars, tc.want)
			}
		})
	}
}

// --- NewRouter ---------------------------------------------------------------

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
}

func TestNewRouterMismatches(t *testing.T) {
	start := Function{Name: "start", Methods: []string{"POST"}, Route: "start", Trigger: "req", Output: "res"}
	status := Function{Name: "status", Methods: []string{"GET"}, Route: "status/{instanceId}", Params: []string{"instanceId"}, Trigger: "req", Output: "res"}
	statusNoParam := Function{Name: "status", Methods: []string{"GET"}, Route: "status", Trigger: "req", Output: "res"}
	startRoute := Function{Name: "start", Methods: []string{"POST"}, Route: "begin", Trigger: "req", Output: "res"}

	for _, tc := range []struct {
		name     string
		fns      []Function
		handlers []Handler
		prefix   string
		want     []string // empty: no error
	}{
		{
			name:     "matching",
			fns:      []Function{start, status},
			handlers: []Handler{{Name: "start", Handler: okHandler()}, {Name: "status", RouteParams: []string{"instanceId"}, Handler: okHandler()}},
			prefix:   "api",
		},
		{
			name:     "function.json without a handler",
			fns:      []Function{start, status},
			handlers: []Handler{{Name: "start", Handler: okHandler()}},
			prefix:   "api",
			want:     []string{"status/function.json", "does not implement"},
		},
		{
			name:     "handler without a function.json",
			fns:      []Function{start},
			handlers: []Handler{{Name: "start", Handler: okHandler()}, {Name: "status", Handler: okHandler()}},
			prefix:   "api",
			want:     []string{"no status/function.json"},
		},
		{
			name:     "route lacks a parameter",
			fns:      []Function{statusNoParam},
			handlers: []Handler{{Name: "status", RouteParams: []string{"instanceId"}, Handler: okHandler()}},
			prefix:   "api",
			want:     []string{"status/function.json", `"status"`, "{instanceId}"},
		},
		{
			name:     "empty prefix and route equal to the name",
			fns:      []Function{start},
			handlers: []Handler{{Name: "start", Handler: okHandler()}},
			prefix:   "",
			want:     []string{"start", "empty route prefix", "payload-mode path"},
		},
		{
			name:     "empty prefix and the name in another case",
			fns:      []Function{{Name: "start", Methods: []string{"POST"}, Route: "Start", Trigger: "req", Output: "res"}},
			handlers: []Handler{{Name: "start", Handler: okHandler()}},
			prefix:   "",
			want:     []string{"start", `"Start"`, "empty route prefix", "payload-mode path"},
		},
		{
			name: "empty prefix and a route matching another's payload path",
			fns: []Function{
				{Name: "start", Methods: []string{"POST"}, Route: "begin", Trigger: "req", Output: "res"},
				{Name: "status", Methods: []string{"GET"}, Route: "{instanceId}", Params: []string{"instanceId"}, Trigger: "req", Output: "res"},
			},
			handlers: []Handler{{Name: "start", Handler: okHandler()}, {Name: "status", RouteParams: []string{"instanceId"}, Handler: okHandler()}},
			prefix:   "",
			want:     []string{"status", `"{instanceId}"`, "/start, the payload-mode path of start"},
		},
		{
			name:     "empty prefix and another route",
			fns:      []Function{startRoute},
			handlers: []Handler{{Name: "start", Handler: okHandler()}},
			prefix:   "",
		},
		{
			name:     "every problem at once",
			fns:      []Function{statusNoParam},
			handlers: []Handler{{Name: "start", Handler: okHandler()}},
			prefix:   "api",
			want:     []string{"status/function.json", "does not implement", "no start/function.json"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := NewRouter(tc.fns, tc.handlers, Options{RoutePrefix: tc.prefix, Log: zerolog.Nop(), LogWriter: io.Discard, MaxPayloadBytes: 1 << 16})
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("NewRouter: unexpected error: %v", err)
				}
				if h == nil {
					t.Fatal("NewRouter: got a nil handler and no error")
				}
				return
			}
			if err == nil {
				t.Fatalf("NewRouter: got no error, want one containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("NewRouter error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

// --- serving -------------------------------------------------------------------

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers.
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

// logLines returns the JSON log lines written to b.
func (b *syncBuffer) logLines(t *testing.T) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	return lines
}

// echoed is what the echo handler answers: what it saw of the request.
type echoed struct {
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	BaseURL string            `json:"baseURL"`
	Host    string            `json:"host"`
	Vars    map[string]string `json:"vars"`
	Body    string            `json:"body"`
	Header  string            `json:"header"` // X-Test
	Accept  string            `json:"accept"`
}

const echoLogMessage = "echo handled the request"

// echoHandler answers 200 with what it saw, sets X-Echo, and logs one line
// through the request's logger.
func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			httpjson.RenderError(w, r, httpjson.Errorf(http.StatusBadRequest, "reading body: %v", err))
			return
		}
		zerolog.Ctx(r.Context()).Info().Str("path", r.URL.Path).Msg(echoLogMessage)
		w.Header().Set("X-Echo", "yes")
		httpjson.Write(w, http.StatusOK, echoed{
			Method:  r.Method,
			URL:     r.URL.String(),
			BaseURL: BaseURL(r),
			Host:    r.Host,
			Vars:    mux.Vars(r),
			Body:    string(body),
			Header:  r.Header.Get("X-Test"),
			Accept:  r.Header.Get("Accept"),
		})
	})
}

// rejectHandler always answers 400, as a function refusing its input does.
func rejectHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpjson.RenderError(w, r, httpjson.Errorf(http.StatusBadRequest, "workItems must be an array of strings"))
	})
}

// limitedHandler reads the body as the app's functions do, at most
// testMaxBodyBytes of it, and answers 200 with its length.
func limitedHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := httpjson.ReadBody(w, r, testMaxBodyBytes, "request body")
		if err != nil {
			httpjson.RenderError(w, r, err)
			return
		}
		httpjson.Write(w, http.StatusOK, map[string]int{"length": len(body)})
	})
}

const (
	testMaxPayloadBytes = 4 << 10
	testMaxBodyBytes    = 256
)

// testServer serves, with prefix "api": start (POST start, echo), status
// (GET status/{instanceId}, echo), reject (POST reject, always 400) and
// limited (POST limited, a body of at most testMaxBodyBytes). It returns the
// server's URL and the buffer the router's logger writes to.
func testServer(t *testing.T) (string, *syncBuffer) {
	t.Helper()
	root := t.TempDir()
	writeFunction(t, root, "start", httpFunctionJSON(`["post"]`, "start"))
	writeFunction(t, root, "status", httpFunctionJSON(`["get"]`, "status/{instanceId}"))
	writeFunction(t, root, "reject", httpFunctionJSON(`["post"]`, "reject"))
	writeFunction(t, root, "limited", httpFunctionJSON(`["post"]`, "limited"))
	fns, err := LoadFunctions(root)
	if err != nil {
		t.Fatalf("LoadFunctions: %v", err)
	}
	logs := &syncBuffer{}
	router, err := NewRouter(fns, []Handler{
		{Name: "start", Handler: echoHandler()},
		{Name: "status", RouteParams: []string{"instanceId"}, Handler: echoHandler()},
		{Name: "reject", Handler: rejectHandler()},
		{Name: "limited", Handler: limitedHandler()},
	}, Options{
		RoutePrefix:     "api",
		Log:             zerolog.New(logs).Level(zerolog.InfoLevel),
		LogWriter:       logs,
		MaxPayloadBytes: testMaxPayloadBytes,
		MaxBodyBytes:    testMaxBodyBytes,
	})
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	srv := httptest.NewServer(router)
	t.Cleanup(srv.Close)
	return srv.URL, logs
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, method, url string, header http.Header, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the response: %v", method, url, err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

func wantStatus(t *testing.T, res response, want int) {
	t.Helper()
	if got := res.status; got != want {
		t.Fatalf("status: got %d, want %d; body: %s", got, want, res.body)
	}
}

func wantJSONContentType(t *testing.T, res response) {
	t.Helper()
	mt, _, err := mime.ParseMediaType(res.header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("Content-Type %q: %v", res.header.Get("Content-Type"), err)
	}
	if got, want := mt, "application/json"; got != want {
		t.Errorf("Content-Type: got %q, want %q", got, want)
	}
}

// errorMessage decodes a {"error": "..."} body.
func errorMessage(t *testing.T, body []byte) string {
	t.Helper()
	var e map[string]string
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body is not a JSON object of strings: %q: %v", body, err)
	}
	msg, ok := e["error"]
	if !ok || len(e) != 1 {
		t.Fatalf(`body: got %s, want {"error": "..."}`, body)
	}
	return msg
}

func wantErrorResponse(t *testing.T, res response, status int, parts ...string) {
	t.Helper()
	wantStatus(t, res, status)
	wantJSONContentType(t, res)
	msg := errorMessage(t, res.body)
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("error message %q does not contain %q", msg, p)
		}
	}
}

func decodeEcho(t *testing.T, body []byte) echoed {
	t.Helper()
	var e echoed
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("echo body is not JSON: %q: %v", body, err)
	}
	return e
}

func TestReadinessProbe(t *testing.T) {
	url, _ := testServer(t)
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		start := time.Now()
		res := do(t, method, url+"/", nil, "")
		if got, want := res.status, http.StatusOK; got != want {
			t.Errorf("%s /: status got %d, want %d", method, got, want)
		}
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("%s / took %v: the host probes every 25ms and needs a fast answer", method, elapsed)
		}
	}
}

func TestForwardingMode(t *testing.T) {
	url, _ := testServer(t)

	t.Run("POST reaches the handler with the body", func(t *testing.T) {
		res := do(t, http.MethodPost, url+"/api/start?x=1", http.Header{"X-Test": {"hello"}}, `{"workItems":["a"]}`)
		wantStatus(t, res, http.StatusOK)
		if got, want := res.header.Get("X-Echo"), "yes"; got != want {
			t.Errorf("X-Echo header: got %q, want %q", got, want)
		}
		e := decodeEcho(t, res.body)
		if got, want := e.Method, "POST"; got != want {
			t.Errorf("method: got %q, want %q", got, want)
		}
		if got, want := e.Body, `{"workItems":["a"]}`; got != want {
			t.Errorf("body: got %q, want %q", got, want)
		}
		if got, want := e.URL, "/api/start?x=1"; got != want {
			t.Errorf("URL: got %q, want %q", got, want)
		}
		if got, want := e.Header, "hello"; got != want {
			t.Errorf("X-Test header: got %q, want %q", got, want)
		}
		if got, want := e.BaseURL, url; got != want {
			t.Errorf("BaseURL: got %q, want %q", got, want)
		}
	})

	t.Run("route parameters arrive in mux.Vars", func(t *testing.T) {
		res := do(t, http.MethodGet, url+"/api/status/abc-123", nil, "")
		wantStatus(t, res, http.StatusOK)
		e := decodeEcho(t, res.body)
		if got, want := e.Vars["instanceId"], "abc-123"; got != want {
			t.Errorf("mux.Vars()[instanceId]: got %q, want %q", got, want)
		}
	})

	t.Run("Path of an id round-trips", func(t *testing.T) {
		status := Function{Name: "status", Route: "status/{instanceId}"}
		res := do(t, http.MethodGet, url+status.Path("api", map[string]string{"instanceId": "a b"}), nil, "")
		wantStatus(t, res, http.StatusOK)
		if got, want := decodeEcho(t, res.body).Vars["instanceId"], "a b"; got != want {
			t.Errorf("mux.Vars()[instanceId]: got %q, want %q", got, want)
		}
	})

	t.Run("wrong method gets 405", func(t *testing.T) {
		res := do(t, http.MethodGet, url+"/api/start", nil, "")
		wantErrorResponse(t, res, http.StatusMethodNotAllowed, "start", "GET", "POST")
		if got, want := res.header.Get("Allow"), "POST"; got != want {
			t.Errorf("Allow header: got %q, want %q", got, want)
		}
	})

	t.Run("wrong method on a route with parameters gets 405", func(t *testing.T) {
		res := do(t, http.MethodDelete, url+"/api/status/abc", nil, "")
		wantErrorResponse(t, res, http.StatusMethodNotAllowed, "status", "DELETE", "GET")
		if got, want := res.header.Get("Allow"), "GET"; got != want {
			t.Errorf("Allow header: got %q, want %q", got, want)
		}
	})

	t.Run("function answering 400", func(t *testing.T) {
		res := do(t, http.MethodPost, url+"/api/reject", nil, "{}")
		wantErrorResponse(t, res, http.StatusBadRequest, "workItems")
	})

	for _, path := range []string{"/api/nope", "/nope/start", "/api/status", "/api/status/a/b", "/start/extra"} {
		t.Run("unknown path "+path, func(t *testing.T) {
			res := do(t, http.MethodGet, url+path, nil, "")
			wantErrorResponse(t, res, http.StatusNotFound, path)
		})
	}
}

// Routes match as the Functions host matches them: in any case, with or
// without a trailing slash; parameter values keep their case.
func TestForwardingModeRoutesMatchAsTheHost(t *testing.T) {
	url, _ := testServer(t)

	for _, path := range []string{"/api/Start", "/API/START", "/api/start/", "/Api/Start/"} {
		t.Run("POST "+path, func(t *testing.T) {
			res := do(t, http.MethodPost, url+path, nil, `{"workItems":["a"]}`)
			wantStatus(t, res, http.StatusOK)
			e := decodeEcho(t, res.body)
			if got, want := e.Body, `{"workItems":["a"]}`; got != want {
				t.Errorf("body: got %q, want %q", got, want)
			}
			if got, want := e.URL, path; got != want {
				t.Errorf("URL the function saw: got %q, want %q", got, want)
			}
		})
	}
	for _, path := range []string{"/api/Status/AbC-123", "/API/status/AbC-123/", "/api/STATUS/AbC-123/"} {
		t.Run("GET "+path, func(t *testing.T) {
			res := do(t, http.MethodGet, url+path, nil, "")
			wantStatus(t, res, http.StatusOK)
			if got, want := decodeEcho(t, res.body).Vars["instanceId"], "AbC-123"; got != want {
				t.Errorf("mux.Vars()[instanceId]: got %q, want %q", got, want)
			}
		})
	}

	t.Run("wrong method on a route in another case gets 405", func(t *testing.T) {
		res := do(t, http.MethodGet, url+"/API/Start/", nil, "")
		wantErrorResponse(t, res, http.StatusMethodNotAllowed, "start does not accept GET: use POST")
		if got, want := res.header.Get("Allow"), "POST"; got != want {
			t.Errorf("Allow header: got %q, want %q", got, want)
		}
	})

	t.Run("method in lower case", func(t *testing.T) {
		res := do(t, "post", url+"/api/start", nil, "{}")
		wantStatus(t, res, http.StatusOK)
	})

	t.Run("POST to the readiness probe gets 405", func(t *testing.T) {
		res := do(t, http.MethodPost, url+"/", nil, "")
		wantErrorResponse(t, res, http.StatusMethodNotAllowed, "POST /", "GET or HEAD")
		if got, want := res.header.Get("Allow"), "GET, HEAD"; got != want {
			t.Errorf("Allow header: got %q, want %q", got, want)
		}
	})

	for _, path := range []string{"/api/Start/x", "/api/Startx", "/API/status/", "/apix/start", "/api/Nope/"} {
		t.Run("unknown path "+path, func(t *testing.T) {
			res := do(t, http.MethodPost, url+path, nil, "")
			wantErrorResponse(t, res, http.StatusNotFound, path)
		})
	}

	t.Run("payload-mode path is the function's name as it is", func(t *testing.T) {
		res := do(t, http.MethodPost, url+"/Start", nil, "")
		wantErrorResponse(t, res, http.StatusNotFound, "/Start")
	})
}

// Functions may share a route with different methods, as the host allows:
// each method reaches its own function, and a method none takes gets a 405
// that names them all.
func TestForwardingModeSharedRoute(t *testing.T) {
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			httpjson.Write(w, http.StatusOK, map[string]string{"function": name, "id": mux.Vars(r)["id"]})
		})
	}
	fns := []Function{
		{Name: "item_get", Methods: []string{"GET"}, Route: "items/{id}", Params: []string{"id"}, Trigger: "req", Output: "res"},
		{Name: "item_put", Methods: []string{"PUT", "PATCH"}, Route: "Items/{id}", Params: []string{"id"}, Trigger: "req", Output: "res"},
	}
	router, err := NewRouter(fns, []Handler{
		{Name: "item_get", RouteParams: []string{"id"}, Handler: named("item_get")},
		{Name: "item_put", RouteParams: []string{"id"}, Handler: named("item_put")},
	}, Options{RoutePrefix: "v1", Log: zerolog.Nop(), LogWriter: io.Discard, MaxPayloadBytes: testMaxPayloadBytes})
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	srv := httptest.NewServer(router)
	t.Cleanup(srv.Close)

	for method, want := range map[string]string{"GET": "item_get", "PUT": "item_put", "PATCH": "item_put"} {
		t.Run(method, func(t *testing.T) {
			res := do(t, method, srv.URL+"/v1/items/X7/", nil, "")
			wantStatus(t, res, http.StatusOK)
			var got map[string]string
			if err := json.Unmarshal(res.body, &got); err != nil {
				t.Fatal(err)
			}
			if got["function"] != want || got["id"] != "X7" {
				t.Errorf("answer: got %v, want function %s, id X7", got, want)
			}
		})
	}
	t.Run("DELETE", func(t *testing.T) {
		res := do(t, http.MethodDelete, srv.URL+"/V1/ITEMS/X7", nil, "")
		wantErrorResponse(t, res, http.StatusMethodNotAllowed, "item_get and item_put do not accept DELETE: use GET or PUT or PATCH")
		if got, want := res.header.Get("Allow"), "GET, PUT, PATCH"; got != want {
			t.Errorf("Allow header: got %q, want %q", got, want)
		}
	})
}

// hostInvocation is a payload as the Functions host sends it (see
// shared/reference/custom-handler.md). body is the Body member's raw JSON, or
// "" to leave it out.
func hostInvocation(method, url, params, body string) string {
	req := `{
      "Url": "` + url + `",
      "Method": "` + method + `",
      "Query": {"x": "1"},
      "Headers": {"Accept": ["*/*"], "Host": ["localhost:7071"], "X-Test": ["from-host", "twice"]},
      "Params": ` + params + `,
      "Identities": []`
	if body != "" {
		req += `,
      "Body": ` + body
	}
	return `{
  "Data": {
    "req": ` + req + `
    }
  },
  "Metadata": {
    "instanceId": "\"abc\"",
    "x": "\"1\"",
    "Query": {"x": "1"},
    "Headers": {"Accept": "*/*"},
    "sys": {"MethodName": "status", "UtcNow": "2024-05-01T10:00:00.0000000Z", "RandGuid": "6c2f9f0e-8d6a-4a9e-9a55-1b0d8f2f6e11"}
  }
}`
}

type replyOutput struct {
	StatusCode int               `json:"statusCode"`
	Headers    map[string]string `json:"headers"`
	Body       string            `json:"body"`
}

type reply struct {
	Outputs     map[string]replyOutput `json:"Outputs"`
	Logs        []string               `json:"Logs"`
	ReturnValue json.RawMessage        `json:"ReturnValue"`
}

// invoke POSTs payload to /<function> as the host does and decodes the reply,
// which must be HTTP 200 application/json of the documented shape.
func invoke(t *testing.T, url, function, payload string, header http.Header) (reply, replyOutput) {
	t.Helper()
	h := http.Header{"Content-Type": {"application/json; charset=utf-8"}}
	for k, v := range header {
		h[k] = v
	}
	res := do(t, http.MethodPost, url+"/"+function, h, payload)
	wantStatus(t, res, http.StatusOK)
	wantJSONContentType(t, res)

	var top map[string]json.RawMessage
	if err := json.Unmarshal(res.body, &top); err != nil {
		t.Fatalf("reply is not a JSON object: %q: %v", res.body, err)
	}
	for _, k := range []string{"Outputs", "Logs", "ReturnValue"} {
		if _, ok := top[k]; !ok {
			t.Errorf("reply has no %s: %s", k, res.body)
		}
	}
	if got, want := len(top), 3; got != want {
		t.Errorf("reply members: got %d, want %d (Outputs, Logs, ReturnValue): %s", got, want, res.body)
	}
	var rep reply
	if err := json.Unmarshal(res.body, &rep); err != nil {
		t.Fatalf("reply: %q: %v", res.body, err)
	}
	if got, want := string(rep.ReturnValue), "null"; got != want {
		t.Errorf("ReturnValue: got %s, want %s", got, want)
	}
	if got, want := len(rep.Outputs), 1; got != want {
		t.Errorf("number of Outputs: got %d, want %d: %s", got, want, res.body)
	}
	out, ok := rep.Outputs["res"]
	if !ok {
		t.Fatalf("reply has no Outputs.res: %s", res.body)
	}
	return rep, out
}

func TestPayloadMode(t *testing.T) {
	url, _ := testServer(t)
	rep, out := invoke(t, url, "start",
		hostInvocation("POST", "https://myapp.azurewebsites.net/api/start?x=1", `{}`, `"{\"workItems\":[\"a\",\"b\"]}"`),
		http.Header{"X-Azure-Functions-InvocationId": {"inv-payload"}})

	if got, want := out.StatusCode, http.StatusOK; got != want {
		t.Errorf("Outputs.res.statusCode: got %d, want %d", got, want)
	}
	if got, want := out.Headers["X-Echo"], "yes"; got != want {
		t.Errorf("Outputs.res.headers[X-Echo]: got %q, want %q", got, want)
	}
	if got, want := out.Headers["Content-Type"], "application/json; charset=utf-8"; got != want {
		t.Errorf("Outputs.res.headers[Content-Type]: got %q, want %q", got, want)
	}
	e := decodeEcho(t, []byte(out.Body))
	if got, want := e.Method, "POST"; got != want {
		t.Errorf("method the function saw: got %q, want %q", got, want)
	}
	if got, want := e.URL, "https://myapp.azurewebsites.net/api/start?x=1"; got != want {
		t.Errorf("URL the function saw: got %q, want %q", got, want)
	}
	if got, want := e.BaseURL, "https://myapp.azurewebsites.net"; got != want {
		t.Errorf("BaseURL the function saw: got %q, want %q", got, want)
	}
	if got, want := e.Host, "myapp.azurewebsites.net"; got != want {
		t.Errorf("Host the function saw: got %q, want %q", got, want)
	}
	if got, want := e.Body, `{"workItems":["a","b"]}`; got != want {
		t.Errorf("body the function saw: got %q, want %q", got, want)
	}
	if got, want := e.Header, "from-host"; got != want {
		t.Errorf("X-Test header the function saw: got %q, want %q", got, want)
	}
	if got, want := e.Accept, "*/*"; got != want {
		t.Errorf("Accept header the function saw: got %q, want %q", got, want)
	}

	found := false
	for _, l := range rep.Logs {
		if strings.Contains(l, echoLogMessage) {
			found = true
			if !strings.Contains(l, "inv-payload") {
				t.Errorf("Logs line %q does not carry the invocation id inv-payload", l)
			}
		}
	}
	if !found {
		t.Errorf("Logs: got %q, want a line containing %q", rep.Logs, echoLogMessage)
	}
}

func TestPayloadModeRouteParams(t *testing.T) {
	url, _ := testServer(t)
	_, out := invoke(t, url, "status",
		hostInvocation("GET", "http://localhost:7071/api/status/abc?x=1", `{"instanceId": "abc"}`, ""), nil)
	if got, want := out.StatusCode, http.StatusOK; got != want {
		t.Fatalf("Outputs.res.statusCode: got %d, want %d; body %s", got, want, out.Body)
	}
	e := decodeEcho(t, []byte(out.Body))
	if got, want := e.Method, "GET"; got != want {
		t.Errorf("method the function saw: got %q, want %q", got, want)
	}
	if got, want := e.BaseURL, "http://localhost:7071"; got != want {
		t.Errorf("BaseURL the function saw: got %q, want %q", got, want)
	}
	if got, want := e.Vars["instanceId"], "abc"; got != want {
		t.Errorf("mux.Vars()[instanceId] the function saw: got %q, want %q (Params: {\"instanceId\": \"abc\"})", got, want)
	}
}

func TestPayloadModeBodies(t *testing.T) {
	url, _ := testServer(t)
	for _, tc := range []struct {
		name, body, want string
	}{
		{"absent", "", ""},
		{"null", "null", ""},
		{"empty string", `""`, ""},
		{"string", `"hello world"`, "hello world"},
		{"JSON object from an older host", `{"workItems": ["a"]}`, `{"workItems": ["a"]}`},
		{"JSON array from an older host", `[1,2]`, `[1,2]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, out := invoke(t, url, "start", hostInvocation("POST", "http://localhost:7071/api/start", `{}`, tc.body), nil)
			if got, want := out.StatusCode, http.StatusOK; got != want {
				t.Fatalf("Outputs.res.statusCode: got %d, want %d; body %s", got, want, out.Body)
			}
			if got, want := decodeEcho(t, []byte(out.Body)).Body, tc.want; got != want {
				t.Errorf("body the function saw: got %q, want %q", got, want)
			}
		})
	}
}

// The host base64-encodes binary bodies; header names arrive as the caller
// wrote them.
func TestPayloadModeBase64Bodies(t *testing.T) {
	url, _ := testServer(t)
	for _, ct := range []string{"application/octet-stream", "multipart/form-data; boundary=x"} {
		t.Run(ct, func(t *testing.T) {
			payload := strings.Replace(hostInvocation("POST", "http://localhost:7071/api/start", `{}`, `"eyJ3b3JrSXRlbXMiOiBbImEiXX0="`),
				`"Accept": ["*/*"]`, `"content-type": ["`+ct+`"]`, 1)
			_, out := invoke(t, url, "start", payload, nil)
			if got, want := decodeEcho(t, []byte(out.Body)).Body, `{"workItems": ["a"]}`; got != want {
				t.Errorf("body the function saw: got %q, want %q", got, want)
			}
		})
	}
	payload := strings.Replace(hostInvocation("POST", "http://localhost:7071/api/start", `{}`, `"not base64!"`),
		`"Accept": ["*/*"]`, `"Content-Type": ["application/octet-stream"]`, 1)
	res := do(t, "POST", url+"/start", nil, payload)
	wantErrorResponse(t, res, http.StatusBadRequest, "Data.req.Body")
}

func TestPayloadModeFunctionErrorsStayInside(t *testing.T) {
	url, _ := testServer(t)

	t.Run("function answers 400", func(t *testing.T) {
		_, out := invoke(t, url, "reject", hostInvocation("POST", "http://localhost:7071/api/reject", `{}`, `"{}"`), nil)
		if got, want := out.StatusCode, http.StatusBadRequest; got != want {
			t.Errorf("Outputs.res.statusCode: got %d, want %d", got, want)
		}
		if msg := errorMessage(t, []byte(out.Body)); !strings.Contains(msg, "workItems") {
			t.Errorf("Outputs.res.body error %q does not contain %q", msg, "workItems")
		}
	})

	t.Run("wrong method", func(t *testing.T) {
		_, out := invoke(t, url, "start", hostInvocation("GET", "http://localhost:7071/api/start", `{}`, ""), nil)
		if got, want := out.StatusCode, http.StatusMethodNotAllowed; got != want {
			t.Errorf("Outputs.res.statusCode: got %d, want %d", got, want)
		}
		if got, want := out.Headers["Allow"], "POST"; got != want {
			t.Errorf("Outputs.res.headers[Allow]: got %q, want %q", got, want)
		}
		if msg := errorMessage(t, []byte(out.Body)); !strings.Contains(msg, "POST") || !strings.Contains(msg, "GET") {
			t.Errorf("Outputs.res.body error %q does not name GET and POST", msg)
		}
	})

	t.Run("lower-case method", func(t *testing.T) {
		_, out := invoke(t, url, "start", hostInvocation("post", "http://localhost:7071/api/start", `{}`, `"x"`), nil)
		if got, want := out.StatusCode, http.StatusOK; got != want {
			t.Errorf("Outputs.res.statusCode: got %d, want %d; body %s", got, want, out.Body)
		}
	})
}

// cutAfterLast returns s up to the last sep in it, included.
func cutAfterLast(s, sep string) string { return s[:strings.LastIndex(s, sep)+len(sep)] }

// A body larger than the function takes, however large, is refused by the
// function itself, inside a 200 reply, as in forwarding mode; only the part
// the function needs to see that is kept.
func TestPayloadModeOversizedBody(t *testing.T) {
	url, logs := testServer(t)
	limited := func(body, contentType string) string {
		return strings.Replace(hostInvocation("POST", "http://localhost:7071/api/limited", `{}`, body),
			`"Accept": ["*/*"]`, `"Content-Type": ["`+contentType+`"]`, 1)
	}
	quoted := func(s string) string {
		b, _ := json.Marshal(s)
		return string(b)
	}
	huge := 4 * testMaxPayloadBytes // the whole invocation is over MaxPayloadBytes
	escaped := strings.Repeat(`\u0001`, huge)

	for _, tc := range []struct {
		name    string
		payload string
	}{
		{"one byte over", limited(quoted(strings.Repeat("x", testMaxBodyBytes+1)), "application/json")},
		{"far over", limited(quoted(strings.Repeat("x", huge)), "application/json")},
		{"far over, every byte escaped", limited(`"`+escaped+`"`, "application/json")},
		{"far over, in base64", limited(quoted(base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", huge)))), "application/octet-stream")},
		{"far over, base64 with an escaped +", limited(`"`+strings.Repeat(`\u002B`, huge)+`"`, "application/octet-stream")},
		{"far over, body before the rest", `{"Data": {"req": {"Body": ` + quoted(strings.Repeat("x", huge)) +
			`, "Url": "http://localhost:7071/api/limited", "Method": "POST", "Headers": {}, "Params": {}}}, "Metadata": {}}`},
		{"far over, names in other cases", `{"data": {"req": {"Url": "http://localhost:7071/api/limited", "Method": "POST", "body": ` + quoted(strings.Repeat("x", huge)) + `}}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.name, "far over") && len(tc.payload) <= testMaxPayloadBytes {
				t.Fatalf("payload of %d bytes is not over MaxPayloadBytes (%d)", len(tc.payload), testMaxPayloadBytes)
			}
			_, out := invoke(t, url, "limited", tc.payload, nil)
			if got, want := out.StatusCode, http.StatusRequestEntityTooLarge; got != want {
				t.Errorf("Outputs.res.statusCode: got %d, want %d; body %s", got, want, out.Body)
			}
			if got, want := errorMessage(t, []byte(out.Body)), "request body is larger than 256 bytes"; got != want {
				t.Errorf("Outputs.res.body error: got %q, want %q", got, want)
			}
		})
	}

	// Up to the limit, every byte arrives, however it was written.
	plusses := bytes.Repeat([]byte{0xfb, 0xef, 0xbe}, testMaxBodyBytes/3) // base64 "++++"
	for _, tc := range []struct {
		name    string
		payload string
		want    int // body length
	}{
		{"at the limit", limited(quoted(strings.Repeat("x", testMaxBodyBytes)), "application/json"), testMaxBodyBytes},
		{"at the limit, every byte escaped", limited(`"`+strings.Repeat(`\u0001`, testMaxBodyBytes)+`"`, "application/json"), testMaxBodyBytes},
		{"at the limit, in base64", limited(quoted(base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", testMaxBodyBytes)))), "application/octet-stream"), testMaxBodyBytes},
		{"within the limit, in base64 escaped throughout", limited(`"`+strings.ReplaceAll(base64.StdEncoding.EncodeToString(plusses), "+", `\u002B`)+`"`, "application/octet-stream"), len(plusses)},
		{"within the limit, in base64 with line breaks", limited(quoted(strings.Repeat(base64.StdEncoding.EncodeToString([]byte("abc"))+"\r\n", testMaxBodyBytes/3)), "application/octet-stream"), testMaxBodyBytes / 3 * 3},
		{"a huge body replaced by a later one", strings.Replace(limited(`"x"`, "application/json"), `"Data": {`,
			`"Data": {"req": {"Body": `+quoted(strings.Repeat("x", huge))+`}, `, 1), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, out := invoke(t, url, "limited", tc.payload, nil)
			if got, want := out.StatusCode, http.StatusOK; got != want {
				t.Fatalf("Outputs.res.statusCode: got %d, want %d; body %s", got, want, out.Body)
			}
			var got map[string]int
			json.Unmarshal([]byte(out.Body), &got)
			if got["length"] != tc.want {
				t.Errorf("body length the function saw: got %v, want %d", out.Body, tc.want)
			}
		})
	}

	if strings.Contains(logs.String(), "unreadable invocation payload") {
		t.Errorf("an invocation was refused as unreadable:\n%s", logs)
	}
}

func TestPayloadModeBadPayloads(t *testing.T) {
	url, _ := testServer(t)
	jsonHeader := http.Header{"Content-Type": {"application/json"}}

	for _, tc := range []struct {
		name     string
		function string
		payload  string
		status   int
		want     []string
	}{
		{"not JSON", "start", "hello", http.StatusBadRequest, []string{"not a JSON object"}},
		{"JSON array", "start", "[]", http.StatusBadRequest, []string{"not a JSON object"}},
		{"no Data.req", "start", `{"Data": {}, "Metadata": {}}`, http.StatusBadRequest, []string{"Data.req"}},
		{"no Data", "start", `{"Metadata": {}}`, http.StatusBadRequest, []string{"Data.req"}},
		{"Data.req not an object", "start", `{"Data": {"req": 3}}`, http.StatusBadRequest, []string{"Data.req", "not an HTTP request"}},
		{"relative Url", "start", hostInvocation("POST", "/api/start", `{}`, ""), http.StatusBadRequest, []string{"Data.req.Url", `"/api/start"`, "absolute URL"}},
		{"Url whose host name is a port", "start", hostInvocation("POST", "http://:0:/api/start", `{}`, ""), http.StatusBadRequest, []string{"Data.req.Url", "absolute URL"}},
		{"no Method", "start", hostInvocation("", "http://localhost:7071/api/start", `{}`, ""), http.StatusBadRequest, []string{"Data.req.Method"}},
		{"unknown function", "nope", hostInvocation("POST", "http://localhost:7071/api/nope", `{}`, ""), http.StatusNotFound, []string{"/nope"}},
		{"too large", "start", strings.Replace(hostInvocation("POST", "http://localhost:7071/api/start", `{}`, ""),
			`"X-Test": [`, `"X-Test": ["`+strings.Repeat("x", testMaxPayloadBytes)+`", `, 1), http.StatusRequestEntityTooLarge, []string{"larger than 4096 bytes"}},
		{"body not a JSON string past the cut", "limited", hostInvocation("POST", "http://localhost:7071/api/limited", `{}`, `"`+strings.Repeat("x", 2*testMaxPayloadBytes)+"\x01\""), http.StatusBadRequest, []string{"Data.req.Body", "control character"}},
		{"bad escape past the cut", "limited", hostInvocation("POST", "http://localhost:7071/api/limited", `{}`, `"`+strings.Repeat("x", 2*testMaxPayloadBytes)+`\q"`), http.StatusBadRequest, []string{"Data.req.Body", `invalid escape "\\q"`}},
		{"payload ends inside the body", "limited", cutAfterLast(hostInvocation("POST", "http://localhost:7071/api/limited", `{}`, `"`+strings.Repeat("x", 2*testMaxPayloadBytes)+`"`), "x"), http.StatusBadRequest, []string{"not a JSON object", "unexpected end"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := do(t, http.MethodPost, url+"/"+tc.function, jsonHeader, tc.payload)
			wantErrorResponse(t, res, tc.status, tc.want...)
		})
	}

	t.Run("IPv6 host", func(t *testing.T) {
		res := do(t, http.MethodPost, url+"/start", jsonHeader, hostInvocation("POST", "http://[::1]:7071/api/start", `{}`, ""))
		wantStatus(t, res, http.StatusOK)
	})

	t.Run("GET on the payload path", func(t *testing.T) {
		res := do(t, http.MethodGet, url+"/start", nil, "")
		wantErrorResponse(t, res, http.StatusMethodNotAllowed, "POST")
		if got, want := res.header.Get("Allow"), "POST"; got != want {
			t.Errorf("Allow header: got %q, want %q", got, want)
		}
	})
}

func TestInvocationIDInLogs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		invoke func(t *testing.T, url string)
	}{
		{"forwarding mode", func(t *testing.T, url string) {
			res := do(t, http.MethodPost, url+"/api/start", http.Header{"X-Azure-Functions-InvocationId": {"inv-42"}}, "{}")
			wantStatus(t, res, http.StatusOK)
		}},
		{"payload mode", func(t *testing.T, url string) {
			invoke(t, url, "start", hostInvocation("POST", "http://localhost:7071/api/start", `{}`, `"{}"`),
				http.Header{"X-Azure-Functions-InvocationId": {"inv-42"}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, logs := testServer(t)
			tc.invoke(t, url)
			var line map[string]any
			for _, l := range logs.logLines(t) {
				if l["message"] == echoLogMessage {
					line = l
				}
			}
			if line == nil {
				t.Fatalf("no log line %q in:\n%s", echoLogMessage, logs.String())
			}
			if got, want := line["invocationId"], any("inv-42"); got != want {
				t.Errorf("invocationId in the log line: got %v, want %v", got, want)
			}
			if got, want := line["function"], any("start"); got != want {
				t.Errorf("function in the log line: got %v, want %v", got, want)
			}
			if got, want := line["level"], any("info"); got != want {
				t.Errorf("level in the log line: got %v, want %v", got, want)
			}
		})
	}
}

func TestBaseURL(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  func() *http.Request
		want string
	}{
		{"plain request", func() *http.Request {
			return httptest.NewRequest(http.MethodGet, "/api/start", nil)
		}, "http://example.com"},
		{"forwarded https", func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/api/start", nil)
			r.Host = "myapp.azurewebsites.net"
			r.Header.Set("X-Forwarded-Proto", "https")
			return r
		}, "https://myapp.azurewebsites.net"},
		{"forwarded list, first wins", func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/api/start", nil)
			r.Header.Set("X-Forwarded-Proto", " HTTPS , http")
			return r
		}, "https://example.com"},
		{"forwarded nonsense ignored", func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/api/start", nil)
			r.Header.Set("X-Forwarded-Proto", "ftp")
			return r
		}, "http://example.com"},
		{"TLS connection", func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/api/start", nil)
			r.TLS = &tls.ConnectionState{}
			return r
		}, "https://example.com"},
		{"payload-mode URL with a scheme", func() *http.Request {
			r, err := http.NewRequest(http.MethodGet, "https://myapp.azurewebsites.net/api/status/abc", nil)
			if err != nil {
				panic(err)
			}
			return r
		}, "https://myapp.azurewebsites.net"},
		{"forwarded proto beats the URL's scheme", func() *http.Request {
			r, err := http.NewRequest(http.MethodGet, "http://localhost:7071/api/status/abc", nil)
			if err != nil {
				panic(err)
			}
			r.Header.Set("X-Forwarded-Proto", "https")
			return r
		}, "https://localhost:7071"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := BaseURL(tc.req()), tc.want; got != want {
				t.Errorf("BaseURL: got %q, want %q", got, want)
			}
		})
	}
}
