package customhandler

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"fanoutfanin/internal/httpjson"
)

// Whatever it reads, readPayload passes on as it is, but for the body's
// text past the cut.
func TestReadPayloadKeepsAllButTheCut(t *testing.T) {
	lim := payloadLimits{held: 1 << 20, keep: 8, dropped: 1 << 20}
	for _, payload := range []string{
		``,
		`{}`,
		`[{"Data": {"req": {"Body": "0123456789abcdef"}}}]`,
		`{"Data": [{"req": {"Body": "0123456789abcdef"}}]}`,
		`{"Data": {"other": {"Body": "0123456789abcdef"}}}`,
		`{"Data": {"req": {"Inner": {"Body": "0123456789abcdef"}}}}`,
		`{"Data": {"req": {"Body": {"not": "a string 0123456789"}}}}`,
		`{"Data": {"req": {"Body": "01234567"}}}`,
		`{"Metadata": {"Body": "0123456789abcdef"}, "Data": {"req": {"Url": "x\"}{,:[", "Body": "0\"2\\5"}}}`,
		`{"Data" {"req": {"Body": "0123456789abcdef"}}}`,
		`not JSON at all "Data": "Body": "0123456789abcdef"`,
		"{\"Data\": {\"req\": {\"Body\": \"0\u00e9\u4e16\"}}}",
	} {
		got, cut, err := readPayload(strings.NewReader(payload), "req", lim)
		if err != nil {
			t.Errorf("readPayload(%s): %v", payload, err)
			continue
		}
		if cut || string(got) != payload {
			t.Errorf("readPayload(%s): got %s, cut %v; want it as it was", payload, got, cut)
		}
	}
}

func TestReadPayloadCutsTheBody(t *testing.T) {
	lim := payloadLimits{held: 1 << 20, keep: 8, dropped: 1 << 20}
	for _, tc := range []struct {
		name, payload, body string
	}{
		{"plain text", `{"Data": {"req": {"Body": "0123456789abcdef", "Url": "u"}}}`, "01234567"},
		{"names in another case", `{"DATA": {"req": {"body": "0123456789abcdef"}}}`, "01234567"},
		{"an escaped name", `{"D\u0061ta": {"req": {"Body": "0123456789abcdef"}}}`, "01234567"},
		{"never inside an escape", `{"Data": {"req": {"Body": "0123456\u00e9\u00e9\u00e9"}}}`, "0123456é"},
		{"never inside a UTF-8 character", "{\"Data\": {\"req\": {\"Body\": \"0123456\u00e9\u4e16\u4e16\"}}}", "0123456\u00e9"},
		{"escapes throughout", `{"Data": {"req": {"Body": "\t\t\t\t\u0001\u0001\t\t\t\t\t"}}}`, "\t\t\t\t\x01\x01\t\t"},
		// Line breaks, which base64 skips, do not count.
		{"line breaks", `{"Data": {"req": {"Body": "0\r\n1\n2\u000A3\u000d45678\r\n9"}}}`, "0\r\n1\n2\n3\r4567"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, cut, err := readPayload(strings.NewReader(tc.payload), "req", lim)
			if err != nil {
				t.Fatalf("readPayload: %v", err)
			}
			if !cut {
				t.Errorf("readPayload: not cut: %s", got)
			}
			var inv struct {
				Data map[string]struct{ Body string }
			}
			if err := json.Unmarshal(got, &inv); err != nil {
				t.Fatalf("what readPayload kept is not JSON: %s: %v", got, err)
			}
			if got, want := inv.Data["req"].Body, tc.body; got != want {
				t.Errorf("body kept: got %q, want %q", got, want)
			}
		})
	}

	t.Run("another trigger's body is not cut", func(t *testing.T) {
		payload := `{"Data": {"request": {"Body": "0123456789abcdef"}}}`
		got, cut, err := readPayload(strings.NewReader(payload), "req", lim)
		if err != nil || cut || string(got) != payload {
			t.Errorf("readPayload: got %s, cut %v, %v; want it as it was", got, cut, err)
		}
	})
	t.Run("no cut without keep", func(t *testing.T) {
		payload := `{"Data": {"req": {"Body": "0123456789abcdef"}}}`
		got, cut, err := readPayload(strings.NewReader(payload), "req", payloadLimits{held: 1 << 20})
		if err != nil || cut || string(got) != payload {
			t.Errorf("readPayload: got %s, cut %v, %v; want it as it was", got, cut, err)
		}
	})
}

func TestReadPayloadBounds(t *testing.T) {
	body := strings.Repeat("x", 100)
	payload := `{"Data": {"req": {"Body": "` + body + `"}}}`
	// With a cut, what is held but for the body: 31 bytes.
	for _, tc := range []struct {
		name   string
		lim    payloadLimits
		status int // 0: no error
		want   string
	}{
		{"within", payloadLimits{held: 31, keep: 8, dropped: 92}, 0, ""},
		{"held over", payloadLimits{held: 30, keep: 8, dropped: 92}, http.StatusRequestEntityTooLarge, "invocation payload is larger than 30 bytes"},
		{"dropped over", payloadLimits{held: 31, keep: 8, dropped: 91}, http.StatusRequestEntityTooLarge, "Data.req.Body is longer than any the Functions host forwards: its JSON text runs on over 91 bytes past 8 characters"},
		{"no cut, held over", payloadLimits{held: len64(payload) - 1}, http.StatusRequestEntityTooLarge, "larger than"},
		{"no cut, within", payloadLimits{held: len64(payload)}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := readPayload(strings.NewReader(payload), "req", tc.lim)
			if tc.status == 0 {
				if err != nil {
					t.Errorf("readPayload: %v", err)
				}
				return
			}
			var e *httpjson.Error
			if !errors.As(err, &e) || e.Status != tc.status || !strings.Contains(e.Message, tc.want) {
				t.Errorf("readPayload: got %v, want a %d containing %q", err, tc.status, tc.want)
			}
		})
	}

	t.Run("read error", func(t *testing.T) {
		r := io.MultiReader(strings.NewReader(`{"Data": `), iotest.ErrReader(errors.New("connection reset")))
		_, _, err := readPayload(r, "req", payloadLimits{held: 1 << 10})
		var e *httpjson.Error
		if !errors.As(err, &e) || e.Status != http.StatusBadRequest || !strings.Contains(e.Message, "reading the invocation payload: connection reset") {
			t.Errorf("readPayload: got %v, want a 400 saying the payload could not be read", err)
		}
	})
}

func len64(s string) int64 { return int64(len(s)) }
