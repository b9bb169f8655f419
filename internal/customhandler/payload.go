package customhandler

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/gorilla/mux"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/httpjson"
)

// invocation is the host's payload-mode request body. Top-level names match
// case-insensitively, as the host reads them.
type invocation struct {
	Data map[string]json.RawMessage `json:"Data"`
}

// httpRequestData is an HTTP trigger's input in an invocation payload.
type httpRequestData struct {
	URL     string              `json:"Url"`
	Method  string              `json:"Method"`
	Headers map[string][]string `json:"Headers"`
	Params  map[string]string   `json:"Params"`
	// Body is the raw body as a JSON string, or absent when empty. Older hosts
	// sent a JSON body as the JSON value itself; both are accepted.
	Body json.RawMessage `json:"Body"`
}

// httpOutput is the function's HTTP response inside the reply.
type httpOutput struct {
	StatusCode int               `json:"statusCode"`
	Headers    map[string]string `json:"headers"`
	Body       string            `json:"body"`
}

type invocationReply struct {
	Outputs     map[string]httpOutput `json:"Outputs"`
	Logs        []string              `json:"Logs"`
	ReturnValue any                   `json:"ReturnValue"`
}

// payload serves a function in payload mode: it rebuilds the caller's request
// from the invocation, runs the same handler as forwarding mode, and returns
// its response, and the log lines it wrote, in the reply. The reply is 200
// whatever the function answered; only a payload that cannot be read at all
// gets a plain 400, or 413 if too large to hold, which the host reports to
// the caller as a failure.
func payload(fn Function, h http.Handler, opts Options) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			refuseMethod(w, r, []string{http.MethodPost}, "%s %s: invocation payloads are POSTed", r.Method, r.URL.Path)
			return
		}
		log := requestLogger(opts.Log, fn.Name, r)
		ctx := log.WithContext(r.Context())
		req, err := readInvocation(r.WithContext(ctx), fn, opts)
		if err != nil {
			log.Warn().Err(err).Msg("unreadable invocation payload")
			httpjson.RenderError(w, r.WithContext(ctx), err)
			return
		}

		logs := &logCapture{}
		req, fnLog := traced(req, log.Output(zerolog.MultiLevelWriter(opts.LogWriter, logs)))
		rec := newRecorder()
		// req's context holds the route parameters; add the capturing logger to it.
		h.ServeHTTP(rec, req.WithContext(fnLog.WithContext(req.Context())))

		httpjson.Write(w, http.StatusOK, invocationReply{
			Outputs: map[string]httpOutput{fn.Output: rec.output()},
			Logs:    logs.lines(),
		})
	})
}

// readInvocation decodes the payload and rebuilds the HTTP request in it. A
// request body cut short as opts.MaxBodyBytes says reads as too large.
func readInvocation(r *http.Request, fn Function, opts Options) (*http.Request, error) {
	payload, cut, err := readPayload(r.Body, fn.Trigger, limitsFor(opts))
	if err != nil {
		return nil, err
	}
	var inv invocation
	if err := json.Unmarshal(payload, &inv); err != nil {
		return nil, httpjson.Errorf(http.StatusBadRequest, "invocation payload is not a JSON object of the form {\"Data\": {...}, \"Metadata\": {...}}: %v", err)
	}
	raw, ok := inv.Data[fn.Trigger]
	if !ok {
		return nil, httpjson.Errorf(http.StatusBadRequest, "invocation payload has no Data.%s, the %s function's httpTrigger binding", fn.Trigger, fn.Name)
	}
	var d httpRequestData
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, httpjson.Errorf(http.StatusBadRequest, "invocation payload's Data.%s is not an HTTP request: %v", fn.Trigger, err)
	}
	u, err := url.Parse(d.URL)
	// Hostname, not Host: "http://:80/" has a host, ":80", but no name in
	// it; and "a://:0:" has the name ":0", which is no name either (only an
	// IPv6 address, in brackets, holds a colon).
	if err != nil || !u.IsAbs() || u.Hostname() == "" || strings.Contains(u.Hostname(), ":") && !strings.HasPrefix(u.Host, "[") {
		return nil, httpjson.Errorf(http.StatusBadRequest, "invocation payload's Data.%s.Url %q is not an absolute URL", fn.Trigger, d.URL)
	}
	if d.Method == "" || strings.ContainsAny(d.Method, " \t\r\n") {
		return nil, httpjson.Errorf(http.StatusBadRequest, "invocation payload's Data.%s.Method %q is not an HTTP method", fn.Trigger, d.Method)
	}
	header := http.Header{}
	// In name order: names that differ only in case become one header,
	// whose values must not come in the map's random order.
	for _, name := range slices.Sorted(maps.Keys(d.Headers)) {
		for _, v := range d.Headers[name] {
			header.Add(name, v) // canonicalizes the name
		}
	}
	reqBody, err := rawBody(d.Body, header.Get("Content-Type"), cut)
	if err != nil {
		return nil, httpjson.Errorf(http.StatusBadRequest, "invocation payload's Data.%s.Body: %v", fn.Trigger, err)
	}

	req, err := http.NewRequestWithContext(r.Context(), strings.ToUpper(d.Method), u.String(), bytes.NewReader(reqBody))
	if err != nil {
		return nil, httpjson.Errorf(http.StatusBadRequest, "invocation payload's Data.%s: %v", fn.Trigger, err)
	}
	if cut {
		// More than the function takes; what it reads past that fails as
		// a MaxBytesReader would, so its own limit answers the caller.
		req.Body = io.NopCloser(io.MultiReader(bytes.NewReader(reqBody), tooLargeBody{opts.MaxBodyBytes}))
		req.ContentLength = -1
	}
	req.Header = header
	req.RemoteAddr = r.RemoteAddr
	return mux.SetURLVars(req, d.Params), nil // read by RouteValues
}

// rawBody returns the request body an invocation carries. The host sends it
// as a string, base64-encoded for binary content types. A cut body's base64
// is decoded up to its last whole group.
func rawBody(b json.RawMessage, contentType string, cut bool) ([]byte, error) {
	if len(b) == 0 || string(b) == "null" {
		return nil, nil
	}
	if b[0] != '"' {
		return b, nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	if ct := strings.ToLower(contentType); strings.HasPrefix(ct, "application/octet-stream") || strings.HasPrefix(ct, "multipart/") {
		if cut {
			s = strings.NewReplacer("\r", "", "\n", "").Replace(s)
			s = s[:len(s)/4*4]
		}
		return base64.StdEncoding.DecodeString(s)
	}
	return []byte(s), nil
}

// recorder collects a handler's response for the reply.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(p)
}

func (r *recorder) output() httpOutput {
	out := httpOutput{StatusCode: r.status, Headers: map[string]string{}, Body: r.body.String()}
	if out.StatusCode == 0 {
		out.StatusCode = http.StatusOK
	}
	for name, values := range r.header {
		out.Headers[name] = strings.Join(values, ", ")
	}
	return out
}

// logCapture keeps a function's log lines as text for the reply's Logs.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := zerolog.ConsoleWriter{Out: &c.buf, NoColor: true, PartsExclude: []string{zerolog.TimestampFieldName}}
	return w.Write(p)
}

func (c *logCapture) lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	lines := []string{}
	for _, l := range strings.Split(strings.TrimRight(c.buf.String(), "\n"), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
