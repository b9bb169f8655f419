package e2e

// End-to-end tests of how the handler meets the Functions host's protocol:
// routes matched as the host matches them, and a request body over the
// function's limit answered inside the invocation reply in payload mode.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"fanoutfanin/internal/taskhub/hubtest"
)

// The host routes a request to a function whatever the case of its path,
// with or without a trailing slash; the handler, which forwarding mode
// hands the path as the caller sent it, routes it the same way. Instance
// ids keep their case.
func TestRoutesMatchAsTheHostMatchesThem(t *testing.T) {
	root := newAppRoot(t, nil)
	p := startHandler(t, root, embedded(t, root))
	p.waitReady(t)

	t.Run("forwarding mode", func(t *testing.T) {
		var id string
		for _, path := range []string{"/api/Fan_Out_Fan_In", "/API/FAN_OUT_FAN_IN/", "/api/fan_out_fan_in/"} {
			code, hdr, body := p.forward(t, "POST", path, `{"workItems": ["Task1", "Task2"]}`)
			if code != http.StatusAccepted {
				t.Fatalf("POST %s: got %d %v, want 202", path, code, body)
			}
			id, _ = body["id"].(string)
			// The URLs given back are the routes as function.json writes them.
			statusURL := "http://localhost:7071/api/status/" + id
			if got := body["statusQueryGetUri"]; got != statusURL {
				t.Errorf("POST %s: statusQueryGetUri %v, want %s", path, got, statusURL)
			}
			if got := hdr.Get("Location"); got != statusURL {
				t.Errorf("POST %s: Location %q, want %s", path, got, statusURL)
			}
			for _, status := range []string{"/api/Status/" + id, "/API/STATUS/" + id + "/", "/api/status/" + id + "/"} {
				code, _, st := p.forward(t, "GET", status, "")
				if code != http.StatusOK && code != http.StatusAccepted || st["instanceId"] != id {
					t.Errorf("GET %s: got %d %v, want the status of %s", status, code, st, id)
				}
			}
		}
		pollStatus(t, p, id, "Completed")

		if upper := strings.ToUpper(id); upper != id {
			code, _, body := p.forward(t, "GET", "/api/Status/"+upper, "")
			if want := fmt.Sprintf("no orchestration instance has id %q", upper); code != http.StatusNotFound || body["error"] != want {
				t.Errorf("GET /api/Status/%s: got %d %v, want 404 %q: instance ids are case-sensitive", upper, code, body, want)
			}
		}
		code, hdr, body := p.forward(t, "GET", "/Api/Fan_Out_Fan_In/", "")
		if code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "POST" || body["error"] != "fan_out_fan_in does not accept GET: use POST" {
			t.Errorf("GET /Api/Fan_Out_Fan_In/: got %d (Allow %q) %v, want 405 naming POST", code, hdr.Get("Allow"), body)
		}
		for _, path := range []string{"/api/Fan_Out_Fan_In/x", "/apis/fan_out_fan_in"} {
			if code, _, body := p.forward(t, "POST", path, "{}"); code != http.StatusNotFound || body["error"] == nil {
				t.Errorf("POST %s: got %d %v, want 404 with an error", path, code, body)
			}
		}
		// With or without its slash, status with no id is the instance list,
		// which only GET reads.
		for _, path := range []string{"/api/status/", "/API/Status"} {
			if code, hdr, body := p.forward(t, "POST", path, "{}"); code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "GET" || body["error"] == nil {
				t.Errorf("POST %s: got %d (Allow %q) %v, want 405 naming GET", path, code, hdr.Get("Allow"), body)
			}
		}
	})

	// The host has routed the request already; the URL it passes on is the
	// caller's.
	t.Run("payload mode", func(t *testing.T) {
		res, _ := p.invoke(t, "fan_out_fan_in", "POST", "http://localhost:7071/API/Fan_Out_Fan_In/", `{"workItems": ["A"]}`, nil)
		if res["statusCode"] != 202.0 {
			t.Fatalf("start: statusCode %v, want 202: %v", res["statusCode"], res)
		}
		id, _ := outputBody(t, res)["id"].(string)
		if got, want := outputBody(t, res)["statusQueryGetUri"], "http://localhost:7071/api/status/"+id; got != want {
			t.Errorf("statusQueryGetUri: got %v, want %s", got, want)
		}
		res, _ = p.invoke(t, "status", "GET", "http://localhost:7071/Api/STATUS/"+id+"/", "", map[string]string{"instanceId": id})
		if code := res["statusCode"]; code != 200.0 && code != 202.0 || outputBody(t, res)["instanceId"] != id {
			t.Errorf("status: got %v, want the status of %s", res, id)
		}
	})
}

// In payload mode, a request body over FANOUT_MAX_BODY_BYTES, however much
// over, is refused by the function itself, as in forwarding mode: the
// invocation gets its 200 reply, with the function's 413 and its error
// inside, which the host passes on to the caller. Only an invocation too
// large for what is not its body is refused as a whole. Nothing is
// scheduled.
func TestPayloadModeBodyOverTheLimit(t *testing.T) {
	const limit = 4096
	root := newAppRoot(t, nil)
	p := startHandler(t, root, embedded(t, root, "FANOUT_MAX_BODY_BYTES", strconv.Itoa(limit)))
	p.waitReady(t)
	const wantError = "request body is larger than 4096 bytes"
	// What internal/app allows an invocation to hold: a body limit's worth
	// of JSON text, escaped, and 64 KiB for the rest.
	const invocationBound = 6*limit + 64<<10

	for _, tc := range []struct {
		name string
		size int
	}{
		{"one byte over", limit + 1},
		{"over the invocation's bound", 2 * invocationBound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"workItems": ["` + strings.Repeat("x", tc.size) + `"]}`
			res, logs := p.invoke(t, "fan_out_fan_in", "POST", "http://localhost:7071/api/fan_out_fan_in", body, nil)
			if got, want := res["statusCode"], float64(http.StatusRequestEntityTooLarge); got != want {
				t.Errorf("statusCode: got %v, want %v: %v", got, want, res)
			}
			if headers, _ := res["headers"].(map[string]any); !strings.HasPrefix(fmt.Sprint(headers["Content-Type"]), "application/json") {
				t.Errorf("headers: %v, want a JSON Content-Type", res["headers"])
			}
			if got := outputBody(t, res); got["error"] != wantError || len(got) != 1 {
				t.Errorf("body: got %v, want {\"error\": %q}", got, wantError)
			}
			for _, l := range logs {
				if strings.Contains(l, "started orchestration") {
					t.Errorf("Logs: %q", logs)
				}
			}

			code, _, got := p.forward(t, "POST", "/api/fan_out_fan_in", body)
			if code != http.StatusRequestEntityTooLarge || got["error"] != wantError {
				t.Errorf("forwarding mode: got %d %v, want 413 {\"error\": %q}", code, got, wantError)
			}
		})
	}

	t.Run("invocation over its bound for what is not the body", func(t *testing.T) {
		payload, _ := json.Marshal(map[string]any{
			"Data": map[string]any{"req": map[string]any{
				"Url": "http://localhost:7071/api/fan_out_fan_in", "Method": "POST",
				"Headers": map[string][]string{"X-Large": {strings.Repeat("h", invocationBound)}},
				"Body":    `{"workItems": ["A"]}`,
			}},
			"Metadata": map[string]any{},
		})
		res, err := http.Post(p.url("/fan_out_fan_in"), "application/json; charset=utf-8", bytes.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var got map[string]any
		json.NewDecoder(res.Body).Decode(&got)
		want := fmt.Sprintf("invocation payload is larger than %d bytes", invocationBound)
		if res.StatusCode != http.StatusRequestEntityTooLarge || got["error"] != want {
			t.Errorf("got %d %v, want 413 {\"error\": %q}", res.StatusCode, got, want)
		}
	})

	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 15*time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	n, err := hubtest.Instances(filepath.Join(root, "data", "default.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("instances in the hub after refused starts: %d, want 0", n)
	}
}
