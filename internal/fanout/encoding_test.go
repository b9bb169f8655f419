package fanout_test

import (
	"encoding/json"
	"testing"

	"fanoutfanin/internal/fanout"
)

// The inputs written by hand, because replays write them again and again,
// are what encoding/json would write, and read back as written.
func TestHandWrittenJSONIsEncodingJSONs(t *testing.T) {
	for _, s := range []string{"", "Item1", "a b", `quo"te`, `back\slash`, "<tag>", "a&b", "é", "tab\t", "\x7f", "~"} {
		want, _ := json.Marshal(s)
		if fanout.PlainJSON(s) && `"`+s+`"` != string(want) {
			t.Errorf("%q: taken as plain, but encoding/json writes %s", s, want)
		}
		if !fanout.PlainJSON(s) && `"`+s+`"` == string(want) {
			t.Logf("%q: not taken as plain, though it could be", s)
		}
	}
	for _, item := range []string{`"Item1"`, `{"url":"http://x"}`, `12`, `-1.5`, `[1,2]`, `{"index":5,"attempt":7}`, `",9"`, `[3,4]`, `1e5`} {
		for _, n := range [][2]int{{0, 1}, {999_999, 3}, {7, 100}} {
			parts := []any{json.RawMessage(item), n[0]}
			if n[1] != 1 {
				parts = append(parts, n[1])
			}
			want, _ := json.Marshal(parts)
			got := fanout.WorkJSON(json.RawMessage(item), n[0], n[1])
			if got != string(want) {
				t.Errorf("work input: got %s, want %s", got, want)
			}
			back, index, attempt, err := fanout.ReadWork([]byte(got))
			if err != nil || string(back) != item || index != n[0] || attempt != n[1] {
				t.Errorf("%s read back as %s, %d, %d (%v)", got, back, index, attempt, err)
			}
		}
	}
	// What earlier versions sent, and what another client may.
	for raw, want := range map[string][3]any{
		`"Task1"`:                                {`"Task1"`, -1, 1},
		`{"item":"Task1","attempt":2}`:           {`"Task1"`, -1, 2},
		`{"attempt":3,"index":4,"item":"Task1"}`: {`"Task1"`, 4, 3},
		`{ "item" : "Task1" , "index" : 4 }`:     {`"Task1"`, 4, 1},
		`[ "Task1" , 4 , 2 ]`:                    {`"Task1"`, 4, 2},
	} {
		item, index, attempt, err := fanout.ReadWork([]byte(raw))
		if err != nil || string(item) != want[0] || index != want[1] || attempt != want[2] {
			t.Errorf("%s: read as %s, %d, %d (%v), want %v", raw, item, index, attempt, err, want)
		}
	}
}
