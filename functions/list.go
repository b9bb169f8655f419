package functions

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"fanoutfanin/internal/fanout"
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
func listInstances(w http.ResponseWriter, r *http.Request, c *fanout.Client) {
	q, partitions, err := readListQuery(r)
	if err != nil {
		renderError(w, r, err)
		return
	}
	page, err := c.List(r.Context(), q, partitions)
	if err != nil {
		renderError(w, r, fmt.Errorf("listing instances: %w", err))
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
// createdTimeFrom and createdTimeTo (ISO 8601), top, instanceIdPrefix and
// showInput; and the continuation token. It also says whether
// showPartitions is set.
func readListQuery(r *http.Request) (taskhub.Query, bool, error) {
	v := r.URL.Query()
	q := taskhub.Query{
		PageSize:          defaultTop,
		IDPrefix:          v.Get("instanceIdPrefix"),
		ContinuationToken: r.Header.Get(ContinuationHeader),
	}
	if s := v.Get("runtimeStatus"); s != "" {
		for name := range strings.SplitSeq(s, ",") {
			status, ok := fanout.ParseStatus(strings.TrimSpace(name))
			if !ok {
				return q, false, httpjson.Errorf(http.StatusBadRequest, "runtimeStatus %q is not a status: use %s, comma-separated", name, strings.Join(fanout.StatusNames(), ", "))
			}
			q.Statuses = append(q.Statuses, status)
		}
	}
	var err error
	if q.CreatedFrom, err = readTime(v.Get("createdTimeFrom"), "createdTimeFrom"); err != nil {
		return q, false, err
	}
	if q.CreatedTo, err = readTime(v.Get("createdTimeTo"), "createdTimeTo"); err != nil {
		return q, false, err
	}
	if !q.CreatedFrom.IsZero() && !q.CreatedTo.IsZero() && q.CreatedFrom.After(q.CreatedTo) {
		return q, false, httpjson.Errorf(http.StatusBadRequest, "createdTimeFrom (%s) is after createdTimeTo (%s)", v.Get("createdTimeFrom"), v.Get("createdTimeTo"))
	}
	if s := v.Get("top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxTop {
			return q, false, httpjson.Errorf(http.StatusBadRequest, "top must be a whole number from 1 to %d, not %q", maxTop, s)
		}
		q.PageSize = n
	}
	if q.FetchInput, err = readBool(v.Get("showInput"), "showInput"); err != nil {
		return q, false, err
	}
	partitions, err := readBool(v.Get("showPartitions"), "showPartitions")
	if err != nil {
		return q, false, err
	}
	return q, partitions, nil
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
