package functions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"github.com/microsoft/durabletask-go/api"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
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

// Settings are what the HTTP functions go by, besides the task hub.
type Settings struct {
	Limits    config.Limits
	Retry     config.Retry
	Bounds    taskhub.Bounds // the task hub's
	StatusURL StatusURL
}

// HTTP returns the app's HTTP functions.
func HTTP(hub taskhub.Client, s Settings) []HTTPFunction {
	return []HTTPFunction{
		{Name: "fan_out_fan_in", Handler: StartFanOut(hub, s)},
		{Name: "status", RouteParams: []string{"instanceId", "action"}, Handler: Status(hub, s)},
	}
}

// DefaultWorkItems are processed when a start request names none.
var DefaultWorkItems = []string{"Item1", "Item2", "Item3", "Item4", "Item5"}

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

// StartFanOut is fan_out_fan_in: it validates the request, schedules the
// orchestration and answers 202 with where to watch it.
func StartFanOut(hub taskhub.Client, s Settings) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		plan, err := readStartRequest(w, r, s.Limits)
		if err != nil {
			httpjson.RenderError(w, r, err)
			return
		}
		start(w, r, hub, s, plan)
	})
}

// start schedules an orchestration of the plan's items, count and
// parallelism, the rest as the settings say, and answers 202 with where to
// watch it. Work items that do not fit one orchestration input on the task
// hub follow the start as events, in parts that do.
func start(w http.ResponseWriter, r *http.Request, hub taskhub.Client, s Settings, plan Plan) {
	limits, bounds, statusURL := s.Limits, s.Bounds, s.StatusURL
	retry := NewRetryPolicy(s.Retry)
	plan.Retry = &retry
	plan.PartitionSize = limits.PartitionSize
	// Three quarters of a payload: the rest of a summary, a step or an
	// event needs room too.
	budget := bounds.MaxPayloadBytes * 3 / 4
	plan.ListBytes = budget
	plan.StepBytes = bounds.MaxStepBytes * 3 / 4
	var chunks [][]string
	if budget > 0 && len(plan.Items) > 0 {
		sizes := encodedSizes(plan.Items)
		if err := fitPartitions(sizes, plan.PartitionSize, budget); err != nil {
			httpjson.RenderError(w, r, err)
			return
		}
		if input, _ := json.Marshal(plan); len(input) > bounds.MaxPayloadBytes {
			chunks = chunk(plan.Items, sizes, budget)
			plan.Chunks, plan.Total, plan.Items = len(chunks), len(plan.Items), nil
		}
	}
	n := max(plan.Count, plan.Total, len(plan.Items))
	id, err := hub.ScheduleNewOrchestration(r.Context(), OrchestratorName, api.WithInput(plan))
	if err != nil {
		renderHubError(w, r, fmt.Errorf("scheduling %s: %w", OrchestratorName, err))
		return
	}
	// The caller going away must not leave the instance waiting for
	// parts nobody sends.
	sendCtx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), ItemsTimeout/2)
	defer cancel()
	for i, c := range chunks {
		if err := hub.RaiseEvent(sendCtx, id, ItemsEvent+strconv.Itoa(i), api.WithEventPayload(c)); err != nil {
			// The instance waits for every part, then fails having run
			// nothing: the start did not happen, as far as work goes.
			zerolog.Ctx(r.Context()).Warn().Str("instanceId", string(id)).Err(err).
				Msgf("sending the work items failed after %d of %d parts; the instance will fail in %s without processing any", i, len(chunks), ItemsTimeout)
			renderHubError(w, r, fmt.Errorf("sending work items to %s: %w", id, err))
			return
		}
	}
	zerolog.Ctx(r.Context()).Info().Str("instanceId", string(id)).Int("items", n).Int("parts", max(1, len(chunks))).Msg("started orchestration")
	url := statusURL(r, string(id))
	w.Header().Set("Location", url)
	w.Header().Set("Retry-After", retryAfterStart)
	httpjson.Write(w, http.StatusAccepted, newCheckStatus(string(id), url))
}

// An item's entry in a partition's results, which aggregate_results gets
// as one payload: its result, {"item":…,"processed_item":"Processed_…",
// "value":100,"processing_time":12.34}, which holds the item twice plus
// resultBytes; or its failure, {"index":…,"item":…,"error":…,"attempts":3},
// which holds it once plus failedBytes (the error shortened to 160 bytes).
const (
	resultBytes = 80
	failedBytes = 240
)

// encodedSizes is how many bytes each item takes as JSON, which encodes
// non-ASCII and <, >, & in several bytes each.
func encodedSizes(items []string) []int {
	sizes := make([]int, len(items))
	for i, item := range items {
		b, _ := json.Marshal(item)
		sizes[i] = len(b)
	}
	return sizes
}

// fitPartitions checks that each partition's results, which its
// aggregate_results receives as one payload, stay within maxBytes. sizes
// are the items' encoded sizes.
func fitPartitions(sizes []int, size, maxBytes int) error {
	for from := 0; from < len(sizes); from += size {
		to, n := min(len(sizes), from+size), 0
		for _, s := range sizes[from:to] {
			n += max(2*s+resultBytes, s+failedBytes)
		}
		if n > maxBytes {
			return httpjson.Errorf(http.StatusRequestEntityTooLarge,
				"workItems[%d] to [%d] make results of about %d bytes for one partition, over the %d the task hub takes in one payload: send shorter items, or lower %s (now %d)",
				from, to-1, n, maxBytes, config.SettingPartitionSize, size)
		}
	}
	return nil
}

// chunk splits items, whose encoded sizes are sizes, into lists of at most
// maxBytes of JSON each.
func chunk(items []string, sizes []int, maxBytes int) [][]string {
	var chunks [][]string
	start, size := 0, 2
	for i, s := range sizes {
		if i > start && size+s+1 > maxBytes {
			chunks = append(chunks, items[start:i])
			start, size = i, 2
		}
		size += s + 1
	}
	return append(chunks, items[start:])
}

// readStartRequest reads the start request: {"workItems": [...]} or {"count": N},
// and optionally "maxParallelism". An empty body, {} or a null list means
// DefaultWorkItems.
func readStartRequest(w http.ResponseWriter, r *http.Request, limits config.Limits) (Plan, error) {
	body, err := httpjson.ReadBody(w, r, limits.MaxBodyBytes, "request body")
	if err != nil {
		return Plan{}, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return Plan{Items: DefaultWorkItems}, nil
	}

	var req struct {
		WorkItems      json.RawMessage `json:"workItems"`
		Count          json.RawMessage `json:"count"`
		MaxParallelism json.RawMessage `json:"maxParallelism"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
			return Plan{}, httpjson.Errorf(http.StatusBadRequest, "request body is not valid JSON: %v", err)
		case errors.As(err, &typ):
			return Plan{}, httpjson.Errorf(http.StatusBadRequest, `request body must be a JSON object such as {"workItems": ["Task1", "Task2"]}, not a JSON %s`, typ.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			field := strings.TrimPrefix(err.Error(), "json: unknown field ")
			return Plan{}, httpjson.Errorf(http.StatusBadRequest, "unknown field %s in request body: the fields are workItems, count and maxParallelism", field)
		}
		return Plan{}, httpjson.Errorf(http.StatusBadRequest, "request body is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Plan{}, httpjson.Errorf(http.StatusBadRequest, "request body must hold one JSON object, but more follows it")
	}

	var plan Plan
	if given(req.MaxParallelism) {
		n, err := positive(req.MaxParallelism, "maxParallelism", limits.MaxWorkItems)
		if err != nil {
			return Plan{}, err
		}
		plan.MaxParallelism = n
	}
	switch {
	case given(req.Count) && given(req.WorkItems):
		return Plan{}, httpjson.Errorf(http.StatusBadRequest, "give either workItems or count, not both")
	case given(req.Count):
		n, err := positive(req.Count, "count", limits.MaxWorkItems)
		if err != nil {
			return Plan{}, err
		}
		plan.Count = n
		return plan, nil
	case !given(req.WorkItems):
		plan.Items = DefaultWorkItems
		return plan, nil
	}

	var items []string
	if err := json.Unmarshal(req.WorkItems, &items); err != nil {
		return Plan{}, httpjson.Errorf(http.StatusBadRequest, "workItems must be an array of strings")
	}
	switch {
	case len(items) == 0:
		return Plan{}, httpjson.Errorf(http.StatusBadRequest, "workItems is empty: name at least one item, or leave workItems out to process the default items")
	case len(items) > limits.MaxWorkItems:
		return Plan{}, httpjson.Errorf(http.StatusBadRequest, "workItems has %d items: at most %d are allowed", len(items), limits.MaxWorkItems)
	}
	for i, item := range items {
		if strings.TrimSpace(item) == "" {
			return Plan{}, httpjson.Errorf(http.StatusBadRequest, "workItems[%d] is empty", i)
		}
		if n := utf8.RuneCountInString(item); n > limits.MaxItemLength {
			return Plan{}, httpjson.Errorf(http.StatusBadRequest, "workItems[%d] is %d characters long: at most %d are allowed", i, n, limits.MaxItemLength)
		}
	}
	plan.Items = items
	return plan, nil
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

var runtimeStatusNames = map[api.OrchestrationStatus]string{
	api.RUNTIME_STATUS_PENDING:          "Pending",
	api.RUNTIME_STATUS_RUNNING:          "Running",
	api.RUNTIME_STATUS_COMPLETED:        "Completed",
	api.RUNTIME_STATUS_CONTINUED_AS_NEW: "ContinuedAsNew",
	api.RUNTIME_STATUS_FAILED:           "Failed",
	api.RUNTIME_STATUS_CANCELED:         "Canceled",
	api.RUNTIME_STATUS_TERMINATED:       "Terminated",
	api.RUNTIME_STATUS_SUSPENDED:        "Suspended",
}

// Status is status: GET lists instances, or reports one instance's state,
// answering 202 with where to poll again while it has not finished and 200
// once it has; POST
// …/terminate, …/suspend, …/resume and …/restart manage it, and DELETE
// purges it.
func Status(hub taskhub.Client, s Settings) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A browser gets a page here, any other client JSON.
		w.Header().Add("Vary", "Accept")
		vars := mux.Vars(r)
		id, action := vars["instanceId"], strings.ToLower(vars["action"])
		if r.Method == http.MethodGet && action == "" && wantsHTML(r) {
			servePage(w, r, id)
			return
		}
		if id == "" {
			if r.Method != http.MethodGet {
				w.Header().Set("Allow", "GET")
				httpjson.RenderError(w, r, httpjson.Errorf(http.StatusMethodNotAllowed, "%s is not allowed on the instance list: use GET, or name an instance", r.Method))
				return
			}
			listInstances(w, r, hub)
			return
		}
		allowed := map[string]string{"": "GET, DELETE", "terminate": "POST", "suspend": "POST", "resume": "POST", "restart": "POST"}[action]
		if allowed == "" {
			httpjson.RenderError(w, r, httpjson.Errorf(http.StatusNotFound, "unknown action %q: the actions are terminate, suspend, resume and restart", vars["action"]))
			return
		}
		if !slices.Contains(strings.Split(allowed, ", "), r.Method) {
			w.Header().Set("Allow", allowed)
			httpjson.RenderError(w, r, httpjson.Errorf(http.StatusMethodNotAllowed, "%s is not allowed here: use %s", r.Method, allowed))
			return
		}

		md, err := hub.FetchOrchestrationMetadata(r.Context(), api.InstanceID(id), api.WithFetchPayloads(true))
		if errors.Is(err, api.ErrInstanceNotFound) {
			httpjson.RenderError(w, r, errNoInstance(id))
			return
		} else if err != nil {
			renderHubError(w, r, fmt.Errorf("fetching instance %s: %w", id, err))
			return
		}
		if r.Method == http.MethodGet {
			renderStatus(w, r, md, s.StatusURL, r.URL.Query().Get("showInput") != "false")
			return
		}
		if md.Name == PartitionName {
			parent, _, _ := strings.Cut(id, ":p")
			httpjson.RenderError(w, r, httpjson.Errorf(http.StatusConflict, "instance %s is a partition of %s: manage %s instead", id, parent, parent))
			return
		}
		m := manager{hub: hub, md: md, reason: r.URL.Query().Get("reason")}
		switch action {
		case "":
			n, err := m.purge(r.Context())
			if err != nil {
				renderHubError(w, r, err)
				return
			}
			zerolog.Ctx(r.Context()).Info().Str("instanceId", id).Int("instancesDeleted", n).Msg("purged instance")
			httpjson.Write(w, http.StatusOK, map[string]int{"instancesDeleted": n})
			return
		case "restart":
			plan, err := m.restartPlan(r.Context())
			if err != nil {
				renderHubError(w, r, err)
				return
			}
			start(w, r, hub, s, plan)
			return
		case "terminate":
			err = m.terminate(r.Context())
		case "suspend":
			err = m.suspend(r.Context())
		case "resume":
			err = m.resume(r.Context())
		}
		if errors.Is(err, api.ErrInstanceNotFound) {
			err = errNoInstance(id) // purged since it was fetched
		}
		if err != nil {
			renderHubError(w, r, err)
			return
		}
		zerolog.Ctx(r.Context()).Info().Str("instanceId", id).Str("action", action).Str("reason", m.reason).Msg("instance managed")
		url := s.StatusURL(r, id)
		w.Header().Set("Location", url)
		httpjson.Write(w, http.StatusAccepted, map[string]string{"id": id, "statusQueryGetUri": url})
	})
}

// errNoInstance is the 404 for an instance id the task hub does not have.
func errNoInstance(id string) error {
	return httpjson.Errorf(http.StatusNotFound, "no orchestration instance has id %q", id)
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
		RuntimeStatus:   runtimeStatusNames[md.RuntimeStatus],
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

// renderHubError renders a failed task hub call. A scheduler that cannot be
// used right now is a 503 that says which one and when to try again; the
// worker logs the outage, so the request does not.
func renderHubError(w http.ResponseWriter, r *http.Request, err error) {
	var unavailable *taskhub.UnavailableError
	if errors.As(err, &unavailable) {
		w.Header().Set("Retry-After", retryAfterUnavailable)
		err = httpjson.Errorf(http.StatusServiceUnavailable, "the Durable Task Scheduler at %s %s; try again shortly", unavailable.Endpoint, unavailable.Reason)
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
