package functions

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/api"

	"fanoutfanin/internal/httpjson"
	"fanoutfanin/internal/taskhub"
)

// ContinuationHeader carries a listing's continuation token both ways, as
// in Durable Functions.
const ContinuationHeader = "x-ms-continuation-token"

// The page size of a listing: top's default and bound.
const (
	defaultTop = 100
	maxTop     = 1000
)

// listInstances is GET status: a page of the instances, newest first, each
// as GET status/{id} shows it but without its input unless showInput=true.
// Partitions are left out unless showPartitions=true.
func listInstances(w http.ResponseWriter, r *http.Request, hub taskhub.Client) {
	q, err := readListQuery(r)
	if err != nil {
		httpjson.RenderError(w, r, err)
		return
	}
	page, err := hub.ListInstances(r.Context(), q)
	switch {
	case errors.Is(err, taskhub.ErrListUnsupported):
		httpjson.RenderError(w, r, httpjson.Errorf(http.StatusNotImplemented,
			"listing instances is not supported by this task hub's backend (%v); the Durable Task Scheduler and the embedded task hub support it, and each instance's own status URL works on any backend", err))
		return
	case errors.Is(err, taskhub.ErrBadContinuationToken):
		httpjson.RenderError(w, r, httpjson.Errorf(http.StatusBadRequest, "%s is not valid: send back the value a previous listing returned, or none for the first page", ContinuationHeader))
		return
	case err != nil:
		renderHubError(w, r, fmt.Errorf("listing instances: %w", err))
		return
	}
	bodies := make([]statusBody, len(page.Instances))
	for i, md := range page.Instances {
		bodies[i] = newStatusBody(md, q.FetchInput)
	}
	if page.ContinuationToken != "" {
		w.Header().Set(ContinuationHeader, page.ContinuationToken)
	}
	httpjson.Write(w, http.StatusOK, bodies)
}

// readListQuery reads a listing's filters: runtimeStatus (comma-separated),
// createdTimeFrom and createdTimeTo (ISO 8601), top, instanceIdPrefix,
// showInput and showPartitions; and the continuation token.
func readListQuery(r *http.Request) (taskhub.Query, error) {
	v := r.URL.Query()
	q := taskhub.Query{
		PageSize:          defaultTop,
		IDPrefix:          v.Get("instanceIdPrefix"),
		ContinuationToken: r.Header.Get(ContinuationHeader),
	}
	if s := v.Get("runtimeStatus"); s != "" {
		for name := range strings.SplitSeq(s, ",") {
			status, ok := parseRuntimeStatus(strings.TrimSpace(name))
			if !ok {
				return q, httpjson.Errorf(http.StatusBadRequest, "runtimeStatus %q is not a status: use %s, comma-separated", name, statusNameList())
			}
			q.Statuses = append(q.Statuses, status)
		}
	}
	var err error
	if q.CreatedFrom, err = readTime(v.Get("createdTimeFrom"), "createdTimeFrom"); err != nil {
		return q, err
	}
	if q.CreatedTo, err = readTime(v.Get("createdTimeTo"), "createdTimeTo"); err != nil {
		return q, err
	}
	if !q.CreatedFrom.IsZero() && !q.CreatedTo.IsZero() && q.CreatedFrom.After(q.CreatedTo) {
		return q, httpjson.Errorf(http.StatusBadRequest, "createdTimeFrom (%s) is after createdTimeTo (%s)", v.Get("createdTimeFrom"), v.Get("createdTimeTo"))
	}
	if s := v.Get("top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxTop {
			return q, httpjson.Errorf(http.StatusBadRequest, "top must be a whole number from 1 to %d, not %q", maxTop, s)
		}
		q.PageSize = n
	}
	if q.FetchInput, err = readBool(v.Get("showInput"), "showInput"); err != nil {
		return q, err
	}
	partitions, err := readBool(v.Get("showPartitions"), "showPartitions")
	if err != nil {
		return q, err
	}
	if !partitions {
		q.ExcludeNames = []string{PartitionName}
	}
	return q, nil
}

// parseRuntimeStatus reads a status as Durable Functions spells it, in any case.
func parseRuntimeStatus(name string) (api.OrchestrationStatus, bool) {
	for status, n := range runtimeStatusNames {
		if strings.EqualFold(n, name) {
			return status, true
		}
	}
	return 0, false
}

func statusNameList() string {
	names := make([]string, 0, len(runtimeStatusNames))
	for status := range runtimeStatusNames {
		names = append(names, runtimeStatusNames[status])
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// readTime reads an ISO 8601 time, or a date (midnight UTC); "" is no time.
func readTime(s, name string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, httpjson.Errorf(http.StatusBadRequest, "%s %q is not an ISO 8601 time such as 2026-01-31T12:00:00Z", name, s)
}

func readBool(s, name string) (bool, error) {
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, httpjson.Errorf(http.StatusBadRequest, "%s must be true or false, not %q", name, s)
	}
	return b, nil
}
