package functions_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/rs/zerolog"

	"fanoutfanin/functions"
	"fanoutfanin/internal/app"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/hubtest"
)

// server is the whole app in this process, on the repository's own host.json
// and function.json files, with an embedded hub in a temporary folder.
type server struct {
	*httptest.Server
	cfg config.Config
}

func newServer(t *testing.T, settings map[string]string) *server {
	t.Helper()
	env := map[string]string{
		config.SettingAppRoot:         "..",
		config.SettingEmbeddedDir:     t.TempDir(),
		functions.SettingWorkMinDelay: "0",
		functions.SettingWorkMaxDelay: "0",
	}
	for k, v := range settings {
		env[k] = v
	}
	var fanouts []functions.Registration
	cfg, err := config.Load(nil, func(k string) string { return env[k] }, func(p *config.Parser) { fanouts = functions.ReadFanouts(p) })
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.Open(context.Background(), cfg, fanouts, zerolog.Nop(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{Server: httptest.NewServer(a.Handler), cfg: cfg}
	t.Cleanup(func() {
		s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.Close(ctx)
	})
	return s
}

// instances counts the orchestration instances in the hub's file.
func (s *server) instances(t *testing.T) int {
	t.Helper()
	n, err := hubtest.Instances(s.cfg.TaskHub.EmbeddedFile)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func do(t *testing.T, method, url, body string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	if host := req.Header.Get("Host"); host != "" {
		req.Host = host // net/http sends req.Host, not a Host header
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	if method != http.MethodHead {
		if got := res.Header.Get("Content-Type"); !strings.HasPrefix(got, "application/json") {
			t.Errorf("%s %s: Content-Type %q, want application/json", method, url, got)
		}
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("%s %s: body is not a JSON object: %s", method, url, raw)
		}
	}
	return r
}

func TestStartRejectsBadInput(t *testing.T) {
	s := newServer(t, map[string]string{
		config.SettingMaxWorkItems:  "3",
		config.SettingMaxItemLength: "8",
		config.SettingMaxBodyBytes:  "200",
	})
	url := s.URL + "/api/fan_out_fan_in"
	for _, tc := range []struct {
		name, method, body string
		status             int
		error              string
	}{
		{"malformed JSON", "POST", `{"workItems": [`, 400, "not valid JSON"},
		{"not JSON at all", "POST", `workItems=a`, 400, "not valid JSON"},
		{"array body", "POST", `["Task1"]`, 400, "must be a JSON object"},
		{"string items", "POST", `{"workItems": "Task1"}`, 400, "workItems must be an array of strings"},
		{"number items", "POST", `{"workItems": [1, 2]}`, 400, "workItems must be an array of strings"},
		{"null item", "POST", `{"workItems": ["a", null]}`, 400, "workItems[1] is empty"},
		{"empty list", "POST", `{"workItems": []}`, 400, "workItems is empty"},
		{"empty item", "POST", `{"workItems": ["a", ""]}`, 400, "workItems[1] is empty"},
		{"blank item", "POST", `{"workItems": ["  "]}`, 400, "workItems[0] is empty"},
		{"over-long item", "POST", `{"workItems": ["123456789"]}`, 400, "workItems[0] is 9 characters long: at most 8"},
		{"too many items", "POST", `{"workItems": ["a", "b", "c", "d"]}`, 400, "workItems has 4 items: at most 3"},
		{"unknown field", "POST", `{"workitem": ["a"]}`, 400, `unknown field "workitem" in request body: the fields are workItems, count, maxParallelism and itemsPerActivity`},
		{"items and count", "POST", `{"workItems": ["a"], "count": 2}`, 400, "give either workItems or count, not both"},
		{"count zero", "POST", `{"count": 0}`, 400, "count must be a whole number from 1 to 3"},
		{"count over the limit", "POST", `{"count": 4}`, 400, "count must be a whole number from 1 to 3"},
		{"count not a number", "POST", `{"count": "2"}`, 400, "count must be a whole number from 1 to 3"},
		{"maxParallelism zero", "POST", `{"count": 2, "maxParallelism": 0}`, 400, "maxParallelism must be a whole number from 1 to 3"},
		{"maxParallelism fractional", "POST", `{"count": 2, "maxParallelism": 1.5}`, 400, "maxParallelism must be a whole number from 1 to 3"},
		{"maxParallelism over the bound", "POST", `{"workItems": ["a"], "maxParallelism": 4}`, 400, "maxParallelism must be a whole number from 1 to 3"},
		{"itemsPerActivity zero", "POST", `{"count": 2, "itemsPerActivity": 0}`, 400, "itemsPerActivity must be a whole number from 1 to 1000"},
		{"itemsPerActivity over the bound", "POST", `{"count": 2, "itemsPerActivity": 1001}`, 400, "itemsPerActivity must be a whole number from 1 to 1000"},
		{"itemsPerActivity not a number", "POST", `{"count": 2, "itemsPerActivity": "10"}`, 400, "itemsPerActivity must be a whole number from 1 to 1000"},
		{"trailing data", "POST", `{"workItems": ["a"]} {}`, 400, "more follows"},
		{"body too large", "POST", `{"workItems": ["` + strings.Repeat("a", 300) + `"]}`, 413, "larger than 200 bytes"},
		{"wrong method", "GET", ``, 405, "fan_out_fan_in does not accept GET: use POST"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, url, tc.body, "Content-Type", "application/json")
			if r.status != tc.status {
				t.Errorf("status: got %d, want %d (%s)", r.status, tc.status, r.raw)
			}
			if msg, _ := r.body["error"].(string); !strings.Contains(msg, tc.error) {
				t.Errorf("error: got %q, want it to say %q", msg, tc.error)
			}
		})
	}
	if got := s.instances(t); got != 0 {
		t.Errorf("bad requests scheduled %d orchestrations, want none", got)
	}
	if got := do(t, "GET", url, "").header.Get("Allow"); got != "POST" {
		t.Errorf("405 Allow header: got %q, want POST", got)
	}
}

func TestStartAnswersWithCheckStatus(t *testing.T) {
	s := newServer(t, nil)
	r := do(t, "POST", s.URL+"/api/fan_out_fan_in?code=key", `{"workItems": ["Task1", "Task2"]}`, "Content-Type", "application/json")
	if got, want := r.status, http.StatusAccepted; got != want {
		t.Fatalf("status: got %d, want %d: %s", got, want, r.raw)
	}
	id, _ := r.body["id"].(string)
	statusURL, _ := r.body["statusQueryGetUri"].(string)
	if id == "" {
		t.Fatalf("no id in %s", r.raw)
	}
	if got, want := statusURL, s.URL+"/api/status/"+id; got != want {
		t.Errorf("statusQueryGetUri: got %q, want %q", got, want)
	}
	if got := r.header.Get("Location"); got != statusURL {
		t.Errorf("Location: got %q, want %q", got, statusURL)
	}
	if got, want := r.header.Get("Retry-After"), "10"; got != want {
		t.Errorf("Retry-After: got %q, want %q", got, want)
	}

	// Behind Azure's front end the caller used https, which the host passes on.
	r = do(t, "POST", s.URL+"/api/fan_out_fan_in", "", "X-Forwarded-Proto", "https", "Host", "myapp.azurewebsites.net")
	if got, want := r.body["statusQueryGetUri"], "https://myapp.azurewebsites.net/api/status/"+r.body["id"].(string); got != want {
		t.Errorf("statusQueryGetUri behind a proxy: got %q, want %q", got, want)
	}
}

// {"count": N} processes Item1 … ItemN, with the settings' partition size
// and the request's maxParallelism in the orchestration's input.
func TestStartWithCount(t *testing.T) {
	s := newServer(t, map[string]string{config.SettingPartitionSize: "4"})
	r := do(t, "POST", s.URL+"/api/fan_out_fan_in", `{"count": 10, "maxParallelism": 3}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("status %d: %s", r.status, r.raw)
	}
	st := waitForStatus(t, r.body["statusQueryGetUri"].(string), "Completed")
	if got, want := string(mustJSON(t, st.body["input"])), `{"count":10,"maxParallelism":3,"partitionSize":4,"retry":{"backoff":2,"firstDelayMs":1000,"maxAttempts":3,"maxDelayMs":60000}}`; got != want {
		t.Errorf("input: got %s, want %s", got, want)
	}
	var out output
	json.Unmarshal(mustJSON(t, st.body["output"]), &out)
	if out.TotalItemsProcessed != 10 || out.Partitions != 3 || len(out.ProcessedItems) != 10 || out.ProcessedItems[9] != "Processed_Item10" {
		t.Errorf("output: %+v, want Item1 … Item10 over 3 partitions", out)
	}
}

func TestStartUsesDefaultItems(t *testing.T) {
	s := newServer(t, nil)
	for _, body := range []string{"", "{}", `{"workItems": null}`, "  \n"} {
		r := do(t, "POST", s.URL+"/api/fan_out_fan_in", body)
		if r.status != http.StatusAccepted {
			t.Fatalf("body %q: status %d: %s", body, r.status, r.raw)
		}
		st := waitForStatus(t, r.body["statusQueryGetUri"].(string), "Completed")
		var input struct{ Items []string }
		json.Unmarshal(mustJSON(t, st.body["input"]), &input)
		if !slices.Equal(input.Items, functions.DefaultWorkItems) {
			t.Errorf("body %q: input %+v, want the default items %q", body, input, functions.DefaultWorkItems)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// waitForStatus polls a status URL until runtimeStatus is want.
func waitForStatus(t *testing.T, url, want string) response {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := do(t, "GET", url, "")
		if r.body["runtimeStatus"] == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: runtimeStatus never became %s; last answer %d %s", url, want, r.status, r.raw)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStatus(t *testing.T) {
	s := newServer(t, map[string]string{
		functions.SettingWorkMinDelay: "300ms",
		functions.SettingWorkMaxDelay: "300ms",
	})
	r := do(t, "POST", s.URL+"/api/fan_out_fan_in", `{"workItems": ["Task1", "Task2", "Task3"]}`)
	url := r.body["statusQueryGetUri"].(string)

	running := waitForStatus(t, url, "Running")
	if got, want := running.status, http.StatusAccepted; got != want {
		t.Errorf("while running: status %d, want %d", got, want)
	}
	if got := running.header.Get("Location"); got != url {
		t.Errorf("while running: Location %q, want %q", got, url)
	}
	if got, want := running.header.Get("Retry-After"), "5"; got != want {
		t.Errorf("while running: Retry-After %q, want %q", got, want)
	}
	if cs, ok := running.body["customStatus"].(map[string]any); !ok || cs["total"] != 3.0 {
		t.Errorf("while running: customStatus %v, want {completed: k, total: 3}", running.body["customStatus"])
	}

	done := waitForStatus(t, url, "Completed")
	if got, want := done.status, http.StatusOK; got != want {
		t.Errorf("completed: status %d, want %d", got, want)
	}
	if got := done.header.Get("Location"); got != "" {
		t.Errorf("completed: Location %q, want none", got)
	}
	b := done.body
	if got, want := b["name"], "fan_out_fan_in_orchestrator"; got != want {
		t.Errorf("name: got %v, want %v", got, want)
	}
	if got, want := b["instanceId"], r.body["id"]; got != want {
		t.Errorf("instanceId: got %v, want %v", got, want)
	}
	if got, want := string(mustJSON(t, b["input"])), `{"items":["Task1","Task2","Task3"],"partitionSize":1000,"retry":{"backoff":2,"firstDelayMs":1000,"maxAttempts":3,"maxDelayMs":60000}}`; got != want {
		t.Errorf("input: got %s, want %s", got, want)
	}
	if got, want := string(mustJSON(t, b["customStatus"])), `{"completed":3,"total":3}`; got != want {
		t.Errorf("customStatus: got %s, want %s", got, want)
	}
	out, ok := b["output"].(map[string]any)
	if !ok {
		t.Fatalf("output is not a JSON object: %v", b["output"])
	}
	if got, want := string(mustJSON(t, out["processed_items"])), `["Processed_Task1","Processed_Task2","Processed_Task3"]`; got != want {
		t.Errorf("output.processed_items: got %s, want %s", got, want)
	}
	if got := out["total_processing_time"].(float64); got < 0.9 {
		t.Errorf("output.total_processing_time: got %v, want about 3 × 0.3 s", got)
	}
	for _, field := range []string{"createdTime", "lastUpdatedTime"} {
		ts, _ := b[field].(string)
		if parsed, err := time.Parse(time.RFC3339, ts); err != nil || !strings.HasSuffix(ts, "Z") || time.Since(parsed) > time.Minute {
			t.Errorf("%s: %q is not a recent RFC 3339 UTC time", field, ts)
		}
	}
}

func TestStatusOfUnknownInstance(t *testing.T) {
	s := newServer(t, nil)
	r := do(t, "GET", s.URL+"/api/status/no-such-id", "")
	if got, want := r.status, http.StatusNotFound; got != want {
		t.Errorf("status: got %d, want %d", got, want)
	}
	if got, want := r.body["error"], `no orchestration instance has id "no-such-id"`; got != want {
		t.Errorf("error: got %q, want %q", got, want)
	}
	if r = do(t, "POST", s.URL+"/api/status/x", ""); r.status != http.StatusMethodNotAllowed {
		t.Errorf("POST status: got %d, want 405", r.status)
	}
}

// A start whose items are larger than one orchestration input may be sends
// them after the start, in parts that fit; the orchestration runs them all,
// in order, and its output keeps within a payload.
func TestStartSendsLargeInputsInParts(t *testing.T) {
	hub, c := openSample(t, functions.SampleSettings{}, taskhub.Bounds{MaxPayloadBytes: 4096})
	h := functions.StartFanOut(c, functions.SampleName, functions.Settings{MaxItems: 1000, MaxBodyBytes: 1 << 20, StatusURL: func(*http.Request, string) string { return "" }})
	items := make([]string, 100)
	for i := range items {
		items[i] = fmt.Sprintf("Part-of-a-large-start-%03d-%s", i, strings.Repeat("x", 34)) // 60 characters
	}
	body, _ := json.Marshal(map[string]any{"workItems": items})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/api/fan_out_fan_in", bytes.NewReader(body)))
	var res map[string]string
	json.Unmarshal(rec.Body.Bytes(), &res)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("got %d %s, want 202", rec.Code, rec.Body)
	}

	md := waitFor(t, hub, res["id"])
	var plan fanout.Plan
	json.Unmarshal([]byte(md.SerializedInput), &plan)
	if plan.Chunks < 2 || plan.Total != len(items) || len(md.SerializedInput) > 4096 {
		t.Errorf("input %s: want the items announced in parts, within 4096 bytes", md.SerializedInput)
	}
	var s output
	json.Unmarshal([]byte(md.SerializedOutput), &s)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || s.TotalItemsProcessed != len(items) || s.Partitions != 10 || len(md.SerializedOutput) > 4096 {
		t.Fatalf("got %v %s, want all %d items completed in 10 partitions, within 4096 bytes", md.RuntimeStatus, md.SerializedOutput, len(items))
	}
	// The list is too long for 4096-byte payloads; each partition has its share, in order.
	last, err := hub.FetchOrchestrationMetadata(context.Background(), api.InstanceID(fanout.PartitionID(res["id"], 9)))
	if err != nil {
		t.Fatal(err)
	}
	var p functions.Summary
	json.Unmarshal([]byte(last.SerializedOutput), &p)
	if !s.ProcessedItemsOmitted || len(p.ProcessedItems) != 10 || p.ProcessedItems[9] != "Processed_"+items[99] {
		t.Errorf("summary omitted the list: %v; partition 9 lists %q", s.ProcessedItemsOmitted, p.ProcessedItems)
	}
}

// Sizes are measured, not estimated: items whose results would not fit one
// payload together (here, characters JSON writes as six bytes each) run,
// their results aggregated in parts that fit, and the summary leaves out
// the list it cannot carry.
func TestLargeResultsAreAggregatedInPartsThatFit(t *testing.T) {
	hub, c := openSample(t, functions.SampleSettings{}, taskhub.Bounds{MaxPayloadBytes: 16 << 10})
	items := make([]string, 20)
	for i := range items {
		items[i] = fmt.Sprintf("%02d%s", i, strings.Repeat("<", 98)) // 600 bytes as JSON
	}
	list, _ := json.Marshal(items)
	started, err := c.Start(context.Background(), functions.SampleName, fanout.Request{Items: list})
	if err != nil {
		t.Fatal(err)
	}
	md := waitFor(t, hub, started.ID)
	var s output
	json.Unmarshal([]byte(md.SerializedOutput), &s)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || s.TotalItemsProcessed != 20 || !s.ProcessedItemsOmitted || s.Partitions != 2 {
		t.Fatalf("got %v %s, want 20 items in 2 partitions, the list omitted", md.RuntimeStatus, md.SerializedOutput)
	}
	p0, err := hub.FetchOrchestrationMetadata(context.Background(), api.InstanceID(fanout.PartitionID(started.ID, 0)))
	if err != nil {
		t.Fatal(err)
	}
	var p output
	json.Unmarshal([]byte(p0.SerializedOutput), &p)
	if p.TotalItemsProcessed != 10 || len(p0.SerializedOutput) > 16<<10 {
		t.Errorf("partition 0: %d bytes, %d items", len(p0.SerializedOutput), p.TotalItemsProcessed)
	}
}
