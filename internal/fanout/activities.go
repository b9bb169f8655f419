package fanout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/microsoft/durabletask-go/task"
	"go.opentelemetry.io/otel/trace"

	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/telemetry"
)

// readWork reads the work activity's input in any form a version has sent:
// [item, index] or [item, index, attempt]; or, from earlier versions, whose
// items were strings, the bare item (a first attempt) or {"item",
// "attempt"}. The index is -1 if absent.
func readWork(raw json.RawMessage) (workInput, int, error) {
	in := workInput{Item: raw, Attempt: 1}
	switch {
	case len(raw) > 0 && raw[0] == '[':
		if item, index, attempt, ok := readWorkJSON(raw); ok {
			in.Item, in.Attempt = item, attempt
			return in, index, nil
		}
		var parts []json.RawMessage
		if err := json.Unmarshal(raw, &parts); err != nil || len(parts) < 2 || len(parts) > 3 {
			return in, 0, fmt.Errorf("[item, index] or [item, index, attempt] expected")
		}
		var index int
		err := json.Unmarshal(parts[1], &index)
		if len(parts) == 3 && err == nil {
			err = json.Unmarshal(parts[2], &in.Attempt)
		}
		in.Item = parts[0]
		return in, index, err
	case len(raw) > 0 && raw[0] == '{':
		if err := json.Unmarshal(raw, &in); err != nil {
			return in, 0, err
		}
		if in.Index != nil {
			return in, *in.Index, nil
		}
	}
	return in, -1, nil
}

// readWorkJSON reads what workJSON writes, without reflection: from the
// end, a number after a comma is the index, or the attempt if a number
// after a comma comes before it too; the item, a JSON value, is the rest
// (and decoding it checks it).
func readWorkJSON(raw json.RawMessage) (item json.RawMessage, index, attempt int, ok bool) {
	if len(raw) < 4 || raw[len(raw)-1] != ']' {
		return nil, 0, 0, false
	}
	body := raw[1 : len(raw)-1]
	last, body, ok := trailingNumber(body)
	if !ok {
		return nil, 0, 0, false
	}
	if before, rest, ok := trailingNumber(body); ok {
		return rest, before, last, len(rest) > 0
	}
	return body, last, 1, len(body) > 0
}

// trailingNumber splits ",<digits>" off the end of b.
func trailingNumber(b []byte) (int, []byte, bool) {
	i := len(b)
	for i > 0 && b[i-1] >= '0' && b[i-1] <= '9' {
		i--
	}
	if i == len(b) || i == 0 || b[i-1] != ',' || len(b)-i > 9 {
		return 0, b, false
	}
	n, _ := strconv.Atoi(string(b[i:]))
	return n, b[:i-1], true
}

// work is the work activity: one attempt at one item, within the
// per-attempt timeout; or at each item of a batch.
func (f *runner[I, R, S]) work(actx task.ActivityContext) (any, error) {
	var raw json.RawMessage
	if err := actx.GetInput(&raw); err != nil {
		return nil, fmt.Errorf("reading the work item: %w", err)
	}
	if isBatch(raw) {
		outs, n, err := runBatch(raw, f.opts.BatchConcurrency, func(item json.RawMessage, index, attempt int) (any, error) {
			return f.runItem(actx, item, index, attempt)
		})
		if err := actx.Context().Err(); err != nil {
			return nil, err // the worker is stopping: the batch runs again
		}
		if err != nil {
			return nil, fmt.Errorf("the batch: %w", err)
		}
		if span := trace.SpanFromContext(actx.Context()); span.IsRecording() {
			span.SetAttributes(telemetry.BatchItems(n))
		}
		return outs, nil
	}
	in, index, err := readWork(raw)
	if err != nil {
		return nil, fmt.Errorf("reading the work item: it must be [item, index] or [item, index, attempt]: %w", err)
	}
	if span := trace.SpanFromContext(actx.Context()); span.IsRecording() {
		span.SetAttributes(telemetry.ItemIndex(index), telemetry.ItemAttempt(max(in.Attempt, 1)))
	}
	return f.runItem(actx, in.Item, index, in.Attempt)
}

// runItem is one attempt at one item, within the per-attempt timeout.
func (f *runner[I, R, S]) runItem(actx task.ActivityContext, raw json.RawMessage, index, attempt int) (any, error) {
	item := Item[I]{Index: index, Attempt: attempt}
	if err := json.Unmarshal(raw, &item.Value); err != nil {
		return nil, fmt.Errorf("reading work item %d: %w", index, err)
	}
	item.Log = taskhub.ActivityLog(actx.Context()).With().Int("index", index).Logger()

	ctx, cancel := context.WithTimeout(actx.Context(), f.opts.ItemTimeout)
	defer cancel()
	r, err := f.spec.Work(ctx, item)
	switch {
	case actx.Context().Err() != nil:
		// The worker is stopping: nothing is recorded, and the item runs
		// again when the hub next runs.
		return nil, actx.Context().Err()
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		// Late, whatever the outcome: an attempt's result counts only
		// within its time.
		item.Log.Warn().Int("attempt", attempt).Dur("timeout", f.opts.ItemTimeout).Msg("work item timed out")
		return nil, fmt.Errorf("attempt %d took longer than the %s an attempt may take", attempt, f.opts.ItemTimeout)
	case err != nil:
		return nil, err
	}
	return r, nil
}

// aggregate is the aggregate activity: it folds results into a summary, or
// merges summaries, in order, and finishes it; a summary larger than the
// input's bound is trimmed.
func (f *runner[I, R, S]) aggregate(actx task.ActivityContext) (any, error) {
	var raw json.RawMessage
	if err := actx.GetInput(&raw); err != nil {
		return nil, fmt.Errorf("reading the results: %w", err)
	}
	// aggregateInput, decoded in one pass.
	var in struct {
		Results  []R `json:"results"`
		Partials []S `json:"partials"`
		Bytes    int `json:"bytes"`
	}
	var err error
	if len(raw) > 0 && raw[0] == '[' {
		err = json.Unmarshal(raw, &in.Results)
	} else {
		err = json.Unmarshal(raw, &in)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the results: %w", err)
	}
	agg := f.spec.Aggregate
	var s S
	for _, r := range in.Results {
		s = agg.Add(s, r)
	}
	for _, p := range in.Partials {
		s = agg.Merge(s, p)
	}
	if agg.Finish != nil {
		s = agg.Finish(s)
	}
	out, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encoding the summary: %w", err)
	}
	budget := summaryBytes(in.Bytes)
	if len(out) > budget && agg.Trim != nil {
		if out, err = json.Marshal(agg.Trim(s)); err != nil {
			return nil, fmt.Errorf("encoding the summary: %w", err)
		}
	}
	if len(out) > budget {
		return nil, fmt.Errorf("the summary is %d bytes, over the %d one payload may carry: give the fan-out's Aggregate a Trim that makes it smaller", len(out), budget)
	}
	taskhub.ActivityLog(actx.Context()).Info().Int("results", len(in.Results)).Int("summaries", len(in.Partials)).Msg("aggregated results")
	return json.RawMessage(out), nil
}

// checkItem checks item i of a start against the fan-out's item type and
// Validate, and returns it as compact JSON.
func (f *runner[I, R, S]) checkItem(i int, raw json.RawMessage) (json.RawMessage, error) {
	var v I
	if err := json.Unmarshal(raw, &v); err != nil {
		if is := jsonKind(raw); is != describe(reflect.TypeFor[I]()) {
			return nil, invalid("workItems must be an array of %s: workItems[%d] is %s", describe(reflect.TypeFor[I]()), i, article(is))
		}
		return nil, invalid("workItems[%d] cannot be read: %v", i, err)
	}
	compact, err := json.Marshal(raw) // RawMessage: checked and compacted
	if err != nil {
		return nil, invalid("workItems[%d]: %v", i, err)
	}
	length, what := utf8.RuneCount(compact), " as JSON"
	if s, ok := any(v).(string); ok {
		if strings.TrimSpace(s) == "" {
			return nil, invalid("workItems[%d] is empty", i)
		}
		length, what = utf8.RuneCountInString(s), ""
	} else if string(compact) == "null" {
		return nil, invalid("workItems[%d] is null", i)
	}
	if f.opts.MaxItemLength > 0 && length > f.opts.MaxItemLength {
		return nil, invalid("workItems[%d] is %d characters long%s: at most %d are allowed", i, length, what, f.opts.MaxItemLength)
	}
	if f.spec.Validate != nil {
		if err := f.spec.Validate(v); err != nil {
			return nil, invalid("workItems[%d]: %v", i, err)
		}
	}
	return compact, nil
}

// jsonKind says what a JSON value is, in describe's words.
func jsonKind(raw json.RawMessage) string {
	switch b := bytes.TrimSpace(raw); {
	case len(b) == 0:
		return "nothing"
	case b[0] == '"':
		return "strings"
	case b[0] == '{':
		return "objects"
	case b[0] == '[':
		return "arrays"
	case b[0] == 't' || b[0] == 'f':
		return "true or false"
	case b[0] == 'n':
		return "null"
	}
	return "numbers"
}

// article turns describe's plural into one value's description.
func article(plural string) string {
	switch plural {
	case "strings":
		return "a string"
	case "objects":
		return "an object"
	case "arrays":
		return "an array"
	case "numbers":
		return "a number"
	}
	return plural
}
