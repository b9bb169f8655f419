package functions

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"fanoutfanin/internal/httpjson"
)

// fuzzSettings are small, so that fuzzed bodies reach them.
var fuzzSettings = Settings{MaxItems: 20, MaxBodyBytes: 1 << 10}

// FuzzReadStartRequest feeds readStartRequest, which reads the body of a
// start, any bytes. It refuses what it cannot take with a 400 (a 413 past
// the size limit) that says why. What it takes is what the JSON says, as
// encoding/json reads it, from a JSON object with no other fields: the
// items as they were sent (the engine checks them), a count and a
// parallelism within the bound.
func FuzzReadStartRequest(f *testing.F) {
	for _, seed := range []string{
		``,
		`{}`,
		`{"workItems": ["Task1", "Task2", "Task3"]}`,
		`{"count": 20, "maxParallelism": 3}`,
		`{"workItems": null, "maxParallelism": null}`,
		`{"WORKITEMS": ["\u00e9t\u00e9", "<&>"]}`,
		`{"workItems": ["a"], "count": 2}`,
		`{"workItems": []}`,
		`{"workItems": [{"url": "http://x"}, 5]}`,
		`{"count": 21}`,
		`{"count": 1.5}`,
		`{"items": ["a"]}`,
		`{} {}`,
		`[1, 2]`,
		`{"workItems": ["a"`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/api/fan_out_fan_in", bytes.NewReader(body))
		req, err := readStartRequest(httptest.NewRecorder(), r, fuzzSettings)
		if err != nil {
			var e *httpjson.Error
			if !errors.As(err, &e) || e.Message == "" {
				t.Fatalf("readStartRequest(%q): error %v is not an httpjson error with a message", body, err)
			}
			want := http.StatusBadRequest
			if int64(len(body)) > fuzzSettings.MaxBodyBytes {
				want = http.StatusRequestEntityTooLarge
			}
			if e.Status != want {
				t.Errorf("readStartRequest(%q): status %d (%s), want %d", body, e.Status, e.Message, want)
			}
			return
		}
		if int64(len(body)) > fuzzSettings.MaxBodyBytes {
			t.Fatalf("readStartRequest: a %d-byte body taken, over the %d limit", len(body), fuzzSettings.MaxBodyBytes)
		}
		if len(bytes.TrimSpace(body)) == 0 {
			if req.Items != nil || req.Count != 0 || req.MaxParallelism != 0 {
				t.Errorf("readStartRequest(%q): %+v, want an empty request (the default items)", body, req)
			}
			return
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil {
			t.Fatalf("readStartRequest(%q) took a body that is no JSON object: %v (request %+v)", body, err, req)
		}
		for name := range fields {
			if !slices.ContainsFunc([]string{"workItems", "count", "maxParallelism"}, func(f string) bool { return strings.EqualFold(f, name) }) {
				t.Errorf("readStartRequest(%q) took a body with the unknown field %q", body, name)
			}
		}
		var want struct {
			WorkItems      json.RawMessage
			Count          *int
			MaxParallelism *int
		}
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("readStartRequest(%q) took a body encoding/json refuses: %v (request %+v)", body, err, req)
		}
		if !bytes.Equal(req.Items, want.WorkItems) {
			t.Errorf("readStartRequest(%q): items %s, want %s", body, req.Items, want.WorkItems)
		}
		for _, n := range []struct {
			name      string
			got       int
			requested *int
		}{{"count", req.Count, want.Count}, {"maxParallelism", req.MaxParallelism, want.MaxParallelism}} {
			switch {
			case n.requested == nil && n.got != 0:
				t.Errorf("readStartRequest(%q): %s %d, none asked for", body, n.name, n.got)
			case n.requested != nil && (n.got != *n.requested || n.got < 1 || n.got > fuzzSettings.MaxItems):
				t.Errorf("readStartRequest(%q): %s %d, want %d within 1 to %d", body, n.name, n.got, *n.requested, fuzzSettings.MaxItems)
			}
		}
	})
}
