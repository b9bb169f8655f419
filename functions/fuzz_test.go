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
	"unicode/utf8"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/httpjson"
)

// fuzzLimits are small, so that fuzzed bodies reach them.
var fuzzLimits = config.Limits{MaxWorkItems: 20, MaxItemLength: 8, MaxBodyBytes: 1 << 10, PartitionSize: 5}

// FuzzReadStartRequest feeds readStartRequest, which reads the body of a
// fan_out_fan_in start, any bytes. It refuses what it cannot take with a 400
// (a 413 past the size limit) that says why. What it takes is a plan within
// the limits — default items, a count, or items that are neither blank nor
// too long, optionally bounded in parallelism — from a JSON object with no
// other fields, and is what the JSON says, as encoding/json reads it.
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
		`{"workItems": ["a", " "]}`,
		`{"workItems": ["123456789"]}`,
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
		plan, err := readStartRequest(httptest.NewRecorder(), r, fuzzLimits)
		if err != nil {
			var e *httpjson.Error
			if !errors.As(err, &e) || e.Message == "" {
				t.Fatalf("readStartRequest(%q): error %v is not an httpjson error with a message", body, err)
			}
			want := http.StatusBadRequest
			if int64(len(body)) > fuzzLimits.MaxBodyBytes {
				want = http.StatusRequestEntityTooLarge
			}
			if e.Status != want {
				t.Errorf("readStartRequest(%q): status %d (%s), want %d", body, e.Status, e.Message, want)
			}
			return
		}
		if int64(len(body)) > fuzzLimits.MaxBodyBytes {
			t.Fatalf("readStartRequest: a %d-byte body taken, over the %d limit", len(body), fuzzLimits.MaxBodyBytes)
		}
		checkPlan(t, body, plan)

		// What the body says, read by encoding/json alone.
		if len(bytes.TrimSpace(body)) == 0 {
			if !slices.Equal(plan.Items, DefaultWorkItems) {
				t.Errorf("readStartRequest(%q): items %q, want the default items", body, plan.Items)
			}
			return
		}
		var req struct {
			WorkItems      []string
			Count          *int
			MaxParallelism *int
		}
		if err := json.Unmarshal(body, &req); err != nil {
			t.Fatalf("readStartRequest(%q) took a body encoding/json refuses: %v (plan %+v)", body, err, plan)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil {
			t.Fatalf("readStartRequest(%q) took a body that is no JSON object: %v (plan %+v)", body, err, plan)
		}
		for name := range fields {
			if !slices.ContainsFunc([]string{"workItems", "count", "maxParallelism"}, func(f string) bool { return strings.EqualFold(f, name) }) {
				t.Errorf("readStartRequest(%q) took a body with the unknown field %q", body, name)
			}
		}
		want := Plan{Items: req.WorkItems}
		if req.Count != nil {
			want.Count = *req.Count
		} else if req.WorkItems == nil {
			want.Items = DefaultWorkItems
		}
		if req.MaxParallelism != nil {
			want.MaxParallelism = *req.MaxParallelism
		}
		if plan.Count != want.Count || plan.MaxParallelism != want.MaxParallelism || !slices.Equal(plan.Items, want.Items) {
			t.Errorf("readStartRequest(%q):\n got %+v\nwant %+v", body, plan, want)
		}
	})
}

// checkPlan checks that plan, read from body, is within fuzzLimits.
func checkPlan(t *testing.T, body []byte, plan Plan) {
	t.Helper()
	if plan.Chunks != 0 || plan.Total != 0 || plan.PartitionSize != 0 || plan.ListBytes != 0 || plan.StepBytes != 0 {
		t.Errorf("readStartRequest(%q): %+v sets what only the start itself may", body, plan)
	}
	if plan.MaxParallelism < 0 || plan.MaxParallelism > fuzzLimits.MaxWorkItems {
		t.Errorf("readStartRequest(%q): maxParallelism %d, want 0 (none) or 1 to %d", body, plan.MaxParallelism, fuzzLimits.MaxWorkItems)
	}
	switch {
	case plan.Count != 0:
		if plan.Items != nil || plan.Count < 1 || plan.Count > fuzzLimits.MaxWorkItems {
			t.Errorf("readStartRequest(%q): count %d with items %q, want 1 to %d and no items", body, plan.Count, plan.Items, fuzzLimits.MaxWorkItems)
		}
	case len(plan.Items) == 0 || len(plan.Items) > fuzzLimits.MaxWorkItems:
		t.Errorf("readStartRequest(%q): %d items, want 1 to %d", body, len(plan.Items), fuzzLimits.MaxWorkItems)
	}
	for i, item := range plan.Items {
		if strings.TrimSpace(item) == "" || utf8.RuneCountInString(item) > fuzzLimits.MaxItemLength {
			t.Errorf("readStartRequest(%q): item %d, %q, is blank or longer than %d characters", body, i, item, fuzzLimits.MaxItemLength)
		}
	}
}
