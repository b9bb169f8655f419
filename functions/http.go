package functions

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/customhandler"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/httpjson"
	"fanoutfanin/internal/taskhub"
)

// HTTPFunction is one HTTP-triggered function: its folder holds the
// function.json that says its methods and route.
type HTTPFunction struct {
	Name        string
	RouteParams []string // the parameters its route must declare
	Handler     http.Handler
}

// StatusURL returns the absolute URL, as the caller of r would use it, of the
// status function for an instance.
type StatusURL func(r *http.Request, instanceID string) string

// Settings are what the HTTP functions go by, besides the engine.
type Settings struct {
	MaxBodyBytes int64
	MaxItems     int // bounds count and maxParallelism
	StatusURL    StatusURL
}

// HTTP returns the app's HTTP functions: one that starts each of the
// engine's fan-outs, named as it is, and status.
func HTTP(c *fanout.Client, fanouts []string, s Settings) []HTTPFunction {
	var fns []HTTPFunction
	for _, name := range fanouts {
		fns = append(fns, HTTPFunction{Name: name, Handler: StartFanOut(c, name, s)})
	}
	return append(fns, HTTPFunction{Name: "status", RouteParams: []string{"instanceId", "action"}, Handler: Status(c, s)})
}

// Retry-After values, in seconds, as Durable Functions sends them.
const (
	retryAfterStart       = "10"
	retryAfterRunning     = "5"
	retryAfterUnavailable = "5"
)

// checkStatus is the body of a start response, in Durable Functions' shape,
// holding the URIs this app serves.
type checkStatus struct {
	ID                    string `json:"id"`
	StatusQueryGetURI     string `json:"statusQueryGetUri"`
	TerminatePostURI      string `json:"terminatePostUri"`
	SuspendPostURI        string `json:"suspendPostUri"`
	ResumePostURI         string `json:"resumePostUri"`
	RestartPostURI        string `json:"restartPostUri"`
	PurgeHistoryDeleteURI string `json:"purgeHistoryDeleteUri"`
}

func newCheckStatus(id, statusURL string) checkStatus {
	return checkStatus{
		ID:                    id,
		StatusQueryGetURI:     statusURL,
		TerminatePostURI:      statusURL + "/terminate?reason={text}",
		SuspendPostURI:        statusURL + "/suspend?reason={text}",
		ResumePostURI:         statusURL + "/resume?reason={text}",
		RestartPostURI:        statusURL + "/restart",
		PurgeHistoryDeleteURI: statusURL,
	}
}

// StartFanOut starts fan-out name: it reads the request, has the engine
// schedule the orchestration and answers 202 with where to watch it.
func StartFanOut(c *fanout.Client, name string, s Settings) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := readStartRequest(w, r, s)
		if err != nil {
			renderError(w, r, err)
			return
		}
		started, err := c.Start(r.Context(), name, req)
		if err != nil {
			renderError(w, r, err)
			return
		}
		renderStarted(w, r, s, started)
	})
}

// renderStarted answers a start or restart: 202, with where to watch it.
func renderStarted(w http.ResponseWriter, r *http.Request, s Settings, started fanout.Started) {
	url := s.StatusURL(r, started.ID)
	w.Header().Set("Location", url)
	w.Header().Set("Retry-After", retryAfterStart)
	httpjson.Write(w, http.StatusAccepted, newCheckStatus(started.ID, url))
}

// readStartRequest reads the start request: {"workItems": [...]} or
// {"count": N}, and optionally "maxParallelism" and "itemsPerActivity". An empty body, {} or a null
// list asks for the fan-out's default items. The engine checks the items.
func readStartRequest(w http.ResponseWriter, r *http.Request, s Settings) (fanout.Request, error) {
	body, err := httpjson.ReadBody(w, r, s.MaxBodyBytes, "request body")
	if err != nil || len(bytes.TrimSpace(body)) == 0 {
		return fanout.Request{}, err
	}
	var req struct {
		WorkItems      json.RawMessage `json:"workItems"`
		Count          json.RawMessage `json:"count"`
		MaxParallelism json.RawMessage `json:"maxParallelism"`
		// How many items one work activity runs.
		ItemsPerActivity json.RawMessage `json:"itemsPerActivity"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
			return fanout.Request{}, httpjson.Errorf(http.StatusBadRequest, "request body is not valid JSON: %v", err)
		case errors.As(err, &typ):
			return fanout.Request{}, httpjson.Errorf(http.StatusBadRequest, `request body must be a JSON object such as {"workItems": ["Task1", "Task2"]}, not a JSON %s`, typ.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			field := strings.TrimPrefix(err.Error(), "json: unknown field ")
			return fanout.Request{}, httpjson.Errorf(http.StatusBadRequest, "unknown field %s in request body: the fields are workItems, count, maxParallelism and itemsPerActivity", field)
		}
		return fanout.Request{}, httpjson.Errorf(http.StatusBadRequest, "request body is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fanout.Request{}, httpjson.Errorf(http.StatusBadRequest, "request body must hold one JSON object, but more follows it")
	}
	out := fanout.Request{Items: req.WorkItems}
	if given(req.MaxParallelism) {
		if out.MaxParallelism, err = positive(req.MaxParallelism, "maxParallelism", s.MaxItems); err != nil {
			return fanout.Request{}, err
		}
	}
	if given(req.Count) {
		if out.Count, err = positive(req.Count, "count", s.MaxItems); err != nil {
			return fanout.Request{}, err
		}
	}
	if given(req.ItemsPerActivity) {
		if out.ItemsPerActivity, err = positive(req.ItemsPerActivity, "itemsPerActivity", fanout.MaxItemsPerActivity); err != nil {
			return fanout.Request{}, err
		}
	}
	return out, nil
}

// given reports whether a request field was present and not null.
func given(v json.RawMessage) bool { return len(v) > 0 && string(v) != "null" }

// positive reads a whole number from 1 to most.
func positive(v json.RawMessage, field string, most int) (int, error) {
	var n int
	if err := json.Unmarshal(v, &n); err != nil || n < 1 || n > most {
		return 0, httpjson.Errorf(http.StatusBadRequest, "%s must be a whole number from 1 to %d", field, most)
	}
	return n, nil
}

// statusBody is the status function's answer, in Durable Functions' shape.
type statusBody struct {
	Name            string          `json:"name"`
	InstanceID      string          `json:"instanceId"`
	RuntimeStatus   string          `json:"runtimeStatus"`
	Input           json.RawMessage `json:"input,omitempty"` // left out with showInput=false
	CustomStatus    json.RawMessage `json:"customStatus"`
	Output          json.RawMessage `json:"output"`
	CreatedTime     string          `json:"createdTime"`
	LastUpdatedTime string          `json:"lastUpdatedTime"`
}

// Status is status: GET lists instances, or reports one instance's state,
// answering 202 with where to poll again while it has not finished and 200
// once it has; POST …/terminate, …/suspend, …/resume and …/restart manage
// it, and DELETE purges it.
func Status(c *fanout.Client, s Settings) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A browser gets a page here, any other client JSON.
		w.Header().Add("Vary", "Accept")
		vars := customhandler.RouteValues(r)
		id, action := vars["instanceId"], strings.ToLower(vars["action"])
		if r.Method == http.MethodGet && action == "" && wantsHTML(r) {
			servePage(w, r, id)
			return
		}
		if id == "" {
			if r.Method != http.MethodGet {
				w.Header().Set("Allow", "GET")
				renderError(w, r, httpjson.Errorf(http.StatusMethodNotAllowed, "%s is not allowed on the instance list: use GET, or name an instance", r.Method))
				return
			}
			listInstances(w, r, c)
			return
		}
		allowed := StatusActions()[action]
		if allowed == "" {
			renderError(w, r, httpjson.Errorf(http.StatusNotFound, "unknown action %q: the actions are terminate, suspend, resume and restart", vars["action"]))
			return
		}
		if !slices.Contains(strings.Split(allowed, ", "), r.Method) {
			w.Header().Set("Allow", allowed)
			renderError(w, r, httpjson.Errorf(http.StatusMethodNotAllowed, "%s is not allowed here: use %s", r.Method, allowed))
			return
		}

		reason := r.URL.Query().Get("reason")
		var err error
		switch {
		case r.Method == http.MethodGet:
			var md *api.OrchestrationMetadata
			if md, err = c.Status(r.Context(), id); err == nil {
				renderStatus(w, r, md, s.StatusURL, r.URL.Query().Get("showInput") != "false")
				return
			}
		case action == "":
			var n int
			if n, err = c.Purge(r.Context(), id); err == nil {
				httpjson.Write(w, http.StatusOK, map[string]int{"instancesDeleted": n})
				return
			}
		case action == "restart":
			var started fanout.Started
			if started, err = c.Restart(r.Context(), id); err == nil {
				renderStarted(w, r, s, started)
				return
			}
		case action == "terminate":
			err = c.Terminate(r.Context(), id, reason)
		case action == "suspend":
			err = c.Suspend(r.Context(), id, reason)
		case action == "resume":
			err = c.Resume(r.Context(), id, reason)
		}
		if err != nil {
			renderError(w, r, err)
			return
		}
		zerolog.Ctx(r.Context()).Info().Str("instanceId", id).Str("action", action).Str("reason", reason).Msg("instance managed")
		url := s.StatusURL(r, id)
		w.Header().Set("Location", url)
		httpjson.Write(w, http.StatusAccepted, map[string]string{"id": id, "statusQueryGetUri": url})
	})
}

// StatusActions are what the status function does with an instance: each
// action (its route's {action}; "" for the instance itself) with the
// methods it takes.
func StatusActions() map[string]string {
	return map[string]string{"": "GET, DELETE", "terminate": "POST", "suspend": "POST", "resume": "POST", "restart": "POST"}
}

// renderStatus answers a status query for md.
func renderStatus(w http.ResponseWriter, r *http.Request, md *api.OrchestrationMetadata, statusURL StatusURL, showInput bool) {
	status := http.StatusOK
	if !md.IsComplete() {
		status = http.StatusAccepted
		w.Header().Set("Location", statusURL(r, string(md.InstanceID)))
		w.Header().Set("Retry-After", retryAfterRunning)
	}
	httpjson.Write(w, status, newStatusBody(md, showInput))
}

func newStatusBody(md *api.OrchestrationMetadata, showInput bool) statusBody {
	body := statusBody{
		Name:            md.Name,
		InstanceID:      string(md.InstanceID),
		RuntimeStatus:   fanout.StatusName(md.RuntimeStatus),
		CustomStatus:    jsonValue(md.SerializedCustomStatus),
		Output:          jsonValue(md.SerializedOutput),
		CreatedTime:     timestamp(md.CreatedAt),
		LastUpdatedTime: timestamp(md.LastUpdatedAt),
	}
	if showInput {
		body.Input = jsonValue(md.SerializedInput)
	}
	if md.RuntimeStatus == api.RUNTIME_STATUS_FAILED && md.FailureDetails != nil {
		// As in Durable Functions, a failed instance's output is its failure message.
		body.Output, _ = json.Marshal(md.FailureDetails.GetErrorMessage())
	}
	return body
}

// renderError renders any error of an HTTP function: the engine's refusals
// as their statuses, a scheduler that cannot be used right now as a 503 that
// says which one and when to try again (the worker logs the outage, so the
// request does not), and the rest as httpjson renders them.
func renderError(w http.ResponseWriter, r *http.Request, err error) {
	var refused *fanout.Error
	var unavailable *taskhub.UnavailableError
	switch {
	case errors.As(err, &refused):
		status := map[fanout.Problem]int{fanout.Invalid: http.StatusBadRequest, fanout.NotFound: http.StatusNotFound, fanout.Conflict: http.StatusConflict}[refused.Problem]
		err = httpjson.Errorf(status, "%s", refused.Msg)
	case errors.As(err, &unavailable):
		w.Header().Set("Retry-After", retryAfterUnavailable)
		err = httpjson.Errorf(http.StatusServiceUnavailable, "the Durable Task Scheduler at %s %s; try again shortly", unavailable.Endpoint, unavailable.Reason)
	case errors.Is(err, taskhub.ErrListUnsupported):
		err = httpjson.Errorf(http.StatusNotImplemented,
			"listing instances is not supported by this task hub's backend (%v); the Durable Task Scheduler and the embedded task hub support it, and each instance's own status URL works on any backend", err)
	case errors.Is(err, taskhub.ErrBadContinuationToken):
		err = httpjson.Errorf(http.StatusBadRequest, "%s is not valid: send back the value a previous listing returned, or none for the first page", ContinuationHeader)
	}
	httpjson.RenderError(w, r, err)
}

// jsonValue turns a serialized payload into the JSON value it holds: null
// when there is none, and a JSON string if it is not JSON (which only a
// foreign client could have stored).
func jsonValue(s string) json.RawMessage {
	if s == "" {
		return json.RawMessage("null")
	}
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	quoted, _ := json.Marshal(s)
	return quoted
}

func timestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	// ISO 8601 in UTC, as Durable Functions writes it, to the millisecond.
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
