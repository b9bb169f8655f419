package fanout_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub"
)

// FuzzStartRequest feeds a start's checks any workItems, count and
// maxParallelism, for a fan-out of strings with small limits. What they
// refuse is an Invalid Error that says why; what they take is a plan within
// the limits: a count, or the items the JSON lists, each a string neither
// blank nor too long, and compact.
func FuzzStartRequest(f *testing.F) {
	for _, seed := range []struct {
		items              string
		count, parallelism int
	}{
		{`["a", "b"]`, 0, 0},
		{`["a"]`, 3, 0},
		{``, 3, 2},
		{`[]`, 0, 0},
		{`[" ", "x"]`, 0, 1},
		{`["123456789"]`, 0, 0},
		{`["\u00e9t\u00e9", "<&>"]`, 0, 0},
		{`[1, {"a": 2}, null]`, 0, 0},
		{`"a"`, 0, 0},
		{`null`, 0, -1},
		{`[` + strings.Repeat(`"a",`, 20) + `"a"]`, 0, 0},
	} {
		f.Add([]byte(seed.items), seed.count, seed.parallelism)
	}
	e := fanout.New(fanout.Options{Log: zerolog.Nop(), MaxItems: 20, MaxItemLength: 8})
	if err := fanout.Register(e, tallySpec(scoreOf)); err != nil {
		f.Fatal(err)
	}
	c := e.Client(nil, taskhub.Bounds{})
	f.Fuzz(func(t *testing.T, items []byte, count, parallelism int) {
		req := fanout.Request{Items: items, Count: count, MaxParallelism: parallelism}
		plan, err := c.PlanFor("tally", req)
		if err != nil {
			var refused *fanout.Error
			if !errors.As(err, &refused) || refused.Problem != fanout.Invalid || refused.Msg == "" {
				t.Fatalf("%+v: error %v is not an Invalid Error with a message", req, err)
			}
			return
		}
		if plan.MaxParallelism != parallelism || parallelism < 0 || parallelism > 20 {
			t.Errorf("%+v: maxParallelism %d, want %d within 0 to 20", req, plan.MaxParallelism, parallelism)
		}
		if count != 0 {
			if plan.Count != count || count < 1 || count > 20 || plan.Items != nil {
				t.Errorf("%+v: plan %+v, want a count of 1 to 20 and no items", req, plan)
			}
			return
		}
		var want []string
		if err := json.Unmarshal(items, &want); err != nil {
			t.Fatalf("%+v: took items that are no list of strings: %v", req, err)
		}
		if len(plan.Items) != len(want) || len(want) < 1 || len(want) > 20 {
			t.Fatalf("%+v: %d items taken, want the %d listed, 1 to 20", req, len(plan.Items), len(want))
		}
		for i, raw := range plan.Items {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil || s != want[i] {
				t.Errorf("%+v: item %d is %s, want %q", req, i, raw, want[i])
			}
			if strings.TrimSpace(s) == "" || utf8.RuneCountInString(s) > 8 {
				t.Errorf("%+v: item %d, %q, is blank or longer than 8 characters", req, i, s)
			}
			if compact, _ := json.Marshal(raw); string(compact) != string(raw) {
				t.Errorf("%+v: item %d, %s, is not compact", req, i, raw)
			}
		}
	})
}
