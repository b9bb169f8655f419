package customhandler

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"github.com/rs/zerolog"
)

// Bounds of the routers FuzzInvocationPayload sends payloads to.
const (
	fuzzMaxPayloadBytes = 4 << 10
	fuzzMaxBodyBytes    = 16 // small, so that bodies are often cut
)

// fuzzSeen is what the function behind a fuzzed payload saw of its request,
// as it answers it.
type fuzzSeen struct {
	Method   string            `json:"method"`
	URL      string            `json:"url"`
	Host     []byte            `json:"host"` // a %-escape in the URL can make it invalid UTF-8, which JSON strings lose
	Header   http.Header       `json:"header"`
	Vars     map[string]string `json:"vars"`
	Body     []byte            `json:"body"`
	TooLarge bool              `json:"tooLarge"` // the body's reader failed as a MaxBytesReader does
	ReadErr  string            `json:"readErr"`  // any other failure reading it
}

// fuzzRouter serves one function, start, which answers with what it saw, in
// payload mode with bodies cut past maxBody (0 for no cut).
func fuzzRouter(t testing.TB, maxPayload, maxBody int64) http.Handler {
	t.Helper()
	fn := Function{Name: "start", Route: "start", Trigger: "req", Output: "res"} // every method
	see := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := fuzzSeen{Method: r.Method, URL: r.URL.String(), Host: []byte(r.Host), Header: r.Header, Vars: mux.Vars(r)}
		var err error
		s.Body, err = io.ReadAll(r.Body)
		var tooLarge *http.MaxBytesError
		if s.TooLarge = errors.As(err, &tooLarge); err != nil && !s.TooLarge {
			s.ReadErr = err.Error()
		}
		json.NewEncoder(w).Encode(s)
	})
	h, err := NewRouter([]Function{fn}, []Handler{{Name: fn.Name, Handler: see}}, Options{
		RoutePrefix: "api", Log: zerolog.Nop(), LogWriter: io.Discard, MaxPayloadBytes: maxPayload, MaxBodyBytes: maxBody,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// fuzzInvoke POSTs payload to h as the host does, and returns what the
// function saw, or the status and error of a refused payload.
func fuzzInvoke(t *testing.T, h http.Handler, payload []byte) (seen *fuzzSeen, status int, msg string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/start", bytes.NewReader(payload)))
	if rec.Code != http.StatusOK {
		var e struct{ Error string }
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
			t.Fatalf("payload %q: a %d whose body is not a JSON error: %q", payload, rec.Code, rec.Body)
		}
		return nil, rec.Code, e.Error
	}
	var reply struct {
		Outputs map[string]struct {
			StatusCode int
			Body       string
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &reply); err != nil {
		t.Fatalf("payload %q: reply is not JSON: %v: %q", payload, err, rec.Body)
	}
	out, ok := reply.Outputs["res"]
	if !ok || out.StatusCode != http.StatusOK {
		t.Fatalf("payload %q: reply %q, want the function's 200 in Outputs.res", payload, rec.Body)
	}
	seen = &fuzzSeen{}
	if err := json.Unmarshal([]byte(out.Body), seen); err != nil {
		t.Fatalf("payload %q: the function's answer is not what it wrote: %v: %q", payload, err, out.Body)
	}
	return seen, http.StatusOK, ""
}

// FuzzInvocationPayload sends any bytes as the payload the Functions host
// POSTs when enableForwardingHttpRequest is false. A payload that cannot be
// read is refused with a 400 (a 413 past the limit) that says why; one that
// can reaches the function as a request it can serve: an upper-case method
// that is an HTTP token, an absolute URL with a host name, canonical header
// names, a body no larger than the payload. The same payload is read the
// same every time, and the request, sent again as the host would send it,
// comes back the same. With the body cut (MaxBodyBytes), the function sees
// the same request with the same body or, only if the body is longer than
// the cut, the start of it, then the error of a body too large.
func FuzzInvocationPayload(f *testing.F) {
	for _, seed := range []string{
		// A JSON body as the host sends it: a string.
		`{"Data": {"req": {"Url": "https://app.azurewebsites.net/api/start?code=k", "Method": "POST", "Query": {"code": "k"},
			"Headers": {"Content-Type": ["application/json"], "X-Test": ["a", "b"]}, "Params": {}, "Identities": [],
			"Body": "{\"workItems\": [\"a\", \"b\", \"c\", \"d\"]}"}}, "Metadata": {"sys": {"MethodName": "start"}}}`,
		// A binary body, base64-encoded.
		`{"Data": {"req": {"Url": "http://localhost:7071/api/start", "Method": "post",
			"Headers": {"content-type": ["application/octet-stream"]}, "Body": "eyJ3b3JrSXRlbXMiOiBbImEiLCAiYiIsICJjIl19"}}}`,
		// An older host's JSON body, as the value itself.
		`{"Data": {"req": {"Url": "http://localhost:7071/api/start", "Method": "POST", "Body": {"count": 3}}}}`,
		// Route parameters and no body.
		`{"Data": {"req": {"Url": "http://[::1]:7071/api/status/abc", "Method": "GET", "Params": {"instanceId": "abc"}}}}`,
		// Escapes and multi-byte characters.
		`{"data": {"req": {"Url": "http://h/", "Method": "PUT", "body": "0123456789abcd\u00e9\u4e16\ud83d\ude00\"\\\n"}}}`,
		// Refused: not an object, no trigger, not a request, a relative URL,
		// a method with a space, a binary body that is not base64.
		`[]`,
		`{"Data": {"other": {}}}`,
		`{"Data": {"req": 3}}`,
		`{"Data": {"req": {"Url": "/api/start", "Method": "POST"}}}`,
		`{"Data": {"req": {"Url": "http://h/", "Method": "PO ST"}}}`,
		`{"Data": {"req": {"Url": "http://h/", "Method": "POST", "Headers": {"Content-Type": ["multipart/form-data"]}, "Body": "not base64!"}}}`,
	} {
		f.Add([]byte(seed))
	}
	h := fuzzRouter(f, fuzzMaxPayloadBytes, 0)
	again := fuzzRouter(f, 4*fuzzMaxPayloadBytes, 0) // escapes and base64 may make a payload sent again larger
	cut := fuzzRouter(f, fuzzMaxPayloadBytes, fuzzMaxBodyBytes)
	f.Fuzz(func(t *testing.T, payload []byte) {
		seen, status, msg := fuzzInvoke(t, h, payload)
		// The same payload is read the same way every time.
		if seen2, status2, msg2 := fuzzInvoke(t, h, payload); status2 != status || msg2 != msg || (seen != nil && !sameRequest(seen, seen2)) {
			t.Fatalf("payload %q read twice: %d %q %+v, then %d %q %+v", payload, status, msg, seen, status2, msg2, seen2)
		}
		if status != http.StatusOK && (msg == "" || status != http.StatusBadRequest && status != http.StatusRequestEntityTooLarge) {
			t.Fatalf("payload %q: refused with %d %q, want a 400 or 413 that says why", payload, status, msg)
		}
		if tooLarge := len(payload) > fuzzMaxPayloadBytes; tooLarge != (status == http.StatusRequestEntityTooLarge) {
			t.Fatalf("payload of %d bytes, limit %d: got %d %q", len(payload), fuzzMaxPayloadBytes, status, msg)
		}
		// Cutting the body can hide a fault past the cut, but never add one.
		seenCut, statusCut, msgCut := fuzzInvoke(t, cut, payload)
		if statusCut != http.StatusOK && (statusCut != status || msgCut == "") {
			t.Fatalf("payload %q: with the body cut, refused with %d %q; without, %d %q", payload, statusCut, msgCut, status, msg)
		}
		if seen == nil {
			return
		}

		checkSeen(t, payload, seen)
		if seen.TooLarge || seen.ReadErr != "" {
			t.Fatalf("payload %q: the body's reader failed: %+v", payload, seen)
		}
		sentAgain := fuzzPayload(t, seen)
		if seen2, status2, msg2 := fuzzInvoke(t, again, sentAgain); seen2 == nil {
			t.Errorf("payload %q was read as %+v, but the same sent again, %q, is refused: %d %s", payload, seen, sentAgain, status2, msg2)
		} else if !sameRequest(seen, seen2) || !bytes.Equal(seen.Body, seen2.Body) || seen2.TooLarge {
			t.Errorf("payload %q and the same sent again, %q, differ:\n%+v\n%+v", payload, sentAgain, seen, seen2)
		}

		switch {
		case seenCut == nil:
			t.Errorf("payload %q: read whole, but refused with the body cut: %d %q", payload, statusCut, msgCut)
		case !sameRequest(seen, seenCut) || seenCut.ReadErr != "":
			t.Errorf("payload %q: with the body cut the function saw another request:\n%+v\n%+v", payload, seen, seenCut)
		case !seenCut.TooLarge && !bytes.Equal(seenCut.Body, seen.Body):
			t.Errorf("payload %q: with the body cut, a body that reads whole but is %q, not %q", payload, seenCut.Body, seen.Body)
		case seenCut.TooLarge && (len(seen.Body) <= fuzzMaxBodyBytes || !bytes.HasPrefix(seen.Body, seenCut.Body)):
			t.Errorf("payload %q: a %d-byte body (cut past %d) read as %q, then too large", payload, len(seen.Body), fuzzMaxBodyBytes, seenCut.Body)
		}
	})
}

// sameRequest reports whether a and b are the same request, body aside.
func sameRequest(a, b *fuzzSeen) bool {
	return a.Method == b.Method && a.URL == b.URL && bytes.Equal(a.Host, b.Host) && reflect.DeepEqual(a.Header, b.Header) && maps.Equal(a.Vars, b.Vars)
}

// checkSeen checks the request the function saw, from payload.
func checkSeen(t *testing.T, payload []byte, s *fuzzSeen) {
	t.Helper()
	if s.Method == "" || s.Method != strings.ToUpper(s.Method) || strings.ContainsFunc(s.Method, notTokenChar) {
		t.Errorf("payload %q: method %q is not an upper-case HTTP token", payload, s.Method)
	}
	if u, err := url.Parse(s.URL); err != nil || !u.IsAbs() || u.Hostname() == "" || string(s.Host) != u.Host {
		t.Errorf("payload %q: URL %q is not absolute with a host (Host %q)", payload, s.URL, s.Host)
	}
	for name := range s.Header {
		if name != http.CanonicalHeaderKey(name) {
			t.Errorf("payload %q: header name %q is not canonical", payload, name)
		}
	}
	// Base64 and JSON escapes only ever shrink what they carry.
	if len(s.Body) > len(payload) {
		t.Errorf("payload %q: a %d-byte body from a %d-byte payload", payload, len(s.Body), len(payload))
	}
}

// notTokenChar reports whether r may not appear in an HTTP method (RFC 9110's tchar).
func notTokenChar(r rune) bool {
	return r > 0x7e || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r)
}

// fuzzPayload is the payload the host would send for the request s: the
// body a base64 string for binary content types, a string otherwise — or,
// for a body a JSON string cannot hold (not UTF-8), the JSON value an older
// host sent, which is what such a body was read from.
func fuzzPayload(t *testing.T, s *fuzzSeen) []byte {
	t.Helper()
	var body any
	raw := false
	switch ct := strings.ToLower(s.Header.Get("Content-Type")); {
	case len(s.Body) == 0:
	case strings.HasPrefix(ct, "application/octet-stream"), strings.HasPrefix(ct, "multipart/"):
		body = base64.StdEncoding.EncodeToString(s.Body)
	case utf8.Valid(s.Body):
		body = string(s.Body)
	default:
		// Spliced in below as it is: json.Marshal would compact it.
		body, raw = rawBodyMark, true
	}
	payload, err := json.Marshal(map[string]any{"Data": map[string]any{"req": map[string]any{
		"Url": s.URL, "Method": s.Method, "Headers": s.Header, "Params": s.Vars, "Body": body,
	}}})
	if err != nil {
		t.Fatalf("encoding %+v again: %v", s, err)
	}
	if raw {
		// Body is the first member of req, as json.Marshal sorts them.
		mark, _ := json.Marshal(rawBodyMark)
		payload = bytes.Replace(payload, mark, s.Body, 1)
	}
	return payload
}

// rawBodyMark holds the place of a JSON-value body in fuzzPayload.
const rawBodyMark = "\x00raw body\x00"
