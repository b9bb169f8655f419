package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"fanoutfanin/internal/dtstest"
)

// listBackends are the backends that list instances: the embedded hub, and
// the strict conformance server, which answers QueryInstances in front of
// the upstream sidecar (which does not).
var listBackends = []struct {
	name     string
	settings func(t *testing.T, root string, extra ...string) map[string]string
}{
	{"embedded", embedded},
	{"scheduler", func(t *testing.T, root string, extra ...string) map[string]string {
		upstream, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
		srv, err := dtstest.Start(dtstest.Options{Upstream: upstream, TaskHub: "default", Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			for _, v := range srv.Violations() {
				// The test's own bad token reaches the scheduler, which
				// refuses it: the app cannot tell a scheduler's token.
				if !strings.Contains(v, `unknown continuationToken "not-a-token"`) {
					t.Errorf("protocol violation: %s", v)
				}
			}
			srv.Close()
		})
		return onScheduler(t, srv.Addr(), extra...)
	}},
}

// list asks for one page of the instance list.
func (p *handlerProcess) list(t *testing.T, query, token string) (int, string, []map[string]any, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", p.url("/api/status?"+query), nil)
	req.Host = "localhost:7071"
	if token != "" {
		req.Header.Set("x-ms-continuation-token", token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(res.Body).Decode(&raw); err != nil {
		t.Fatalf("GET /api/status?%s: body is not JSON: %v", query, err)
	}
	if res.StatusCode != http.StatusOK {
		var e map[string]any
		json.Unmarshal(raw, &e)
		return res.StatusCode, "", nil, e
	}
	var page []map[string]any
	if err := json.Unmarshal(raw, &page); err != nil {
		t.Fatalf("GET /api/status?%s: 200 body is not a JSON array: %s", query, raw)
	}
	return res.StatusCode, res.Header.Get("x-ms-continuation-token"), page, nil
}

// listAll follows the continuation tokens to the end, returning the ids in
// order; before fetching the second page it calls between.
func (p *handlerProcess) listAll(t *testing.T, query string, between func()) []string {
	t.Helper()
	var ids []string
	token := ""
	for pages := 0; ; pages++ {
		code, next, page, errBody := p.list(t, query, token)
		if code != http.StatusOK {
			t.Fatalf("list %q: HTTP %d %v", query, code, errBody)
		}
		for _, in := range page {
			ids = append(ids, in["instanceId"].(string))
		}
		if next == "" {
			return ids
		}
		if pages == 0 && between != nil {
			between()
		}
		token = next
	}
}

func TestListInstances(t *testing.T) {
	for _, b := range listBackends {
		t.Run(b.name, func(t *testing.T) {
			root := newAppRoot(t, nil)
			p := startHandler(t, root, b.settings(t, root, "FANOUT_PARTITION_SIZE", "2"))
			p.waitReady(t)

			start := func(body string) string {
				code, _, res := p.forward(t, "POST", "/api/fan_out_fan_in", body)
				if code != http.StatusAccepted {
					t.Fatalf("start: HTTP %d %v", code, res)
				}
				// Listed times are to the millisecond: apart by more, the
				// time filters below can single instances out.
				time.Sleep(2 * time.Millisecond)
				return res["id"].(string)
			}
			var started []string // oldest first
			for range 4 {
				started = append(started, start(`{"count": 2}`))
			}
			partitioned := start(`{"workItems": ["a", "b", "c", "d", "e"]}`) // 3 partitions
			started = append(started, partitioned)
			for _, id := range started {
				pollStatus(t, p, id, "Completed")
			}
			terminated := start(`{"count": 1}`)
			if code, _, res := p.forward(t, "POST", "/api/status/"+terminated+"/terminate?reason=enough", ""); code != http.StatusAccepted {
				t.Fatalf("terminate: HTTP %d %v", code, res)
			}
			pollStatus(t, p, terminated, "Terminated")
			started = append(started, terminated)
			newestFirst := slices.Clone(started)
			slices.Reverse(newestFirst)

			// Pages of two, newest first, each instance once and no
			// partition; one started after the first page is not on the
			// later ones.
			var late string
			ids := p.listAll(t, "top=2", func() { late = start(`{"count": 1}`) })
			if !slices.Equal(ids, newestFirst) {
				t.Errorf("pages of 2: got %v, want %v", ids, newestFirst)
			}
			pollStatus(t, p, late, "Completed")
			if ids := p.listAll(t, "top=3", nil); !slices.Equal(ids, append([]string{late}, newestFirst...)) {
				t.Errorf("pages of 3 after one more start: got %v, want %v", ids, append([]string{late}, newestFirst...))
			}

			_, _, page, _ := p.list(t, "top=1000", "")
			var createdTimes []string
			for _, in := range page {
				createdTimes = append(createdTimes, in["createdTime"].(string))
				if _, ok := in["input"]; ok {
					t.Errorf("%s: input listed without showInput=true", in["instanceId"])
				}
				if in["instanceId"] == partitioned {
					out, _ := in["output"].(map[string]any)
					if out["partitions"] != 3.0 || out["total_items_processed"] != 5.0 {
						t.Errorf("partitioned instance's output: %v", in["output"])
					}
				}
			}
			if !slices.IsSortedFunc(createdTimes, func(a, b string) int { return strings.Compare(b, a) }) {
				t.Errorf("createdTime not newest first: %v", createdTimes)
			}

			// Filters.
			if ids := p.listAll(t, "runtimeStatus=Terminated", nil); !slices.Equal(ids, []string{terminated}) {
				t.Errorf("runtimeStatus=Terminated: got %v, want %v", ids, []string{terminated})
			}
			if ids := p.listAll(t, "runtimeStatus=running,Pending", nil); len(ids) != 0 {
				t.Errorf("runtimeStatus=running,Pending: got %v, want none", ids)
			}
			if ids := p.listAll(t, "runtimeStatus=Completed,Terminated&top=4", nil); len(ids) != len(started)+1 {
				t.Errorf("runtimeStatus=Completed,Terminated: got %d instances, want %d", len(ids), len(started)+1)
			}
			parts := p.listAll(t, "showPartitions=true&instanceIdPrefix="+url.QueryEscape(partitioned+":p"), nil)
			slices.Sort(parts)
			if want := []string{partitioned + ":p0", partitioned + ":p1", partitioned + ":p2"}; !slices.Equal(parts, want) {
				t.Errorf("partitions: got %v, want %v", parts, want)
			}
			if all := p.listAll(t, "showPartitions=true&top=5", nil); len(all) != len(started)+1+3 {
				t.Errorf("showPartitions=true: got %d instances, want %d", len(all), len(started)+1+3)
			}
			// createdTime is to the millisecond, so from a listed time is
			// inclusive; up to the oldest's time plus 1 ms is the oldest alone.
			oldestCreated, _ := time.Parse(time.RFC3339, createdTimes[len(createdTimes)-1])
			newest3 := append([]string{late}, newestFirst[:2]...)
			if ids := p.listAll(t, "createdTimeFrom="+url.QueryEscape(createdTimes[2]), nil); !slices.Equal(ids, newest3) {
				t.Errorf("createdTimeFrom the third newest: got %v, want %v", ids, newest3)
			}
			to := oldestCreated.Add(time.Millisecond).Format(time.RFC3339Nano)
			if ids := p.listAll(t, "createdTimeTo="+url.QueryEscape(to), nil); !slices.Equal(ids, started[:1]) {
				t.Errorf("createdTimeTo the oldest + 1 ms: got %v, want %v", ids, started[:1])
			}
			_, _, withInput, _ := p.list(t, "top=1&showInput=true", "")
			if len(withInput) != 1 || withInput[0]["input"] == nil {
				t.Errorf("showInput=true: %v", withInput)
			}

			// In payload mode the token travels in the invocation's headers.
			var viaPayload []string
			token := ""
			for range 3 {
				out, _ := p.invokeWith(t, "status", "GET", "http://localhost:7071/api/status?top=3", "", map[string]string{}, map[string]string{"x-ms-continuation-token": token})
				var page []map[string]any
				if err := json.Unmarshal([]byte(out["body"].(string)), &page); err != nil || out["statusCode"] != "200" && out["statusCode"] != 200.0 {
					t.Fatalf("payload mode list: %v", out)
				}
				for _, in := range page {
					viaPayload = append(viaPayload, in["instanceId"].(string))
				}
				headers, _ := out["headers"].(map[string]any)
				token = ""
				for name, v := range headers { // names are case-insensitive
					if strings.EqualFold(name, "x-ms-continuation-token") {
						token, _ = v.(string)
					}
				}
				if token == "" {
					break
				}
			}
			if want := append([]string{late}, newestFirst...); !slices.Equal(viaPayload, want) {
				t.Errorf("payload mode pages of 3: got %v, want %v", viaPayload, want)
			}

			// Bad filters are a 400 that says what is wrong.
			for query, want := range map[string]string{
				"runtimeStatus=Done":                                  `runtimeStatus "Done" is not a status`,
				"createdTimeFrom=yesterday":                           `createdTimeFrom "yesterday" is not an ISO 8601 time`,
				"createdTimeFrom=2026-02-01&createdTimeTo=2026-01-01": "createdTimeFrom (2026-02-01) is after createdTimeTo (2026-01-01)",
				"top=0":             "top must be a whole number from 1 to 1000",
				"top=1001":          "top must be a whole number from 1 to 1000",
				"showInput=yes":     "showInput must be true or false",
				"showPartitions=1x": "showPartitions must be true or false",
			} {
				code, _, _, e := p.list(t, query, "")
				if msg, _ := e["error"].(string); code != http.StatusBadRequest || !strings.Contains(msg, want) {
					t.Errorf("%s: HTTP %d %v, want 400 with %q", query, code, e, want)
				}
			}
			if code, _, e := p.forward(t, "DELETE", "/api/status", ""); code != http.StatusMethodNotAllowed {
				t.Errorf("DELETE on the list: HTTP %d %v, want 405", code, e)
			}
			code, _, _, e := p.list(t, "", "not-a-token")
			if msg, _ := e["error"].(string); code != http.StatusBadRequest || !strings.Contains(msg, "x-ms-continuation-token is not valid") {
				t.Errorf("bad continuation token: HTTP %d %v, want 400", code, e)
			}
		})
	}
}

// The upstream sidecar does not implement QueryInstances: the list is a 501
// that says so, and an instance's own status still works.
func TestListInstancesUnsupported(t *testing.T) {
	root := newAppRoot(t, nil)
	addr, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
	p := startHandler(t, root, onScheduler(t, addr))
	p.waitReady(t)
	_, _, res := p.forward(t, "POST", "/api/fan_out_fan_in", `{"count": 1}`)
	code, _, _, e := p.list(t, "", "")
	if msg, _ := e["error"].(string); code != http.StatusNotImplemented || !strings.Contains(msg, "does not implement QueryInstances") {
		t.Errorf("list on the sidecar: HTTP %d %v, want 501 naming QueryInstances", code, e)
	}
	pollStatus(t, p, res["id"].(string), "Completed")
}
