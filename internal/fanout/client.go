package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/microsoft/durabletask-go/api"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/telemetry"
)

// Client starts, watches and manages fan-outs on a task hub.
type Client struct {
	e      *Engine
	hub    taskhub.Client
	bounds taskhub.Bounds
}

// Client returns a client of the engine's fan-outs on hub, whose limits
// are bounds.
func (e *Engine) Client(hub taskhub.Client, bounds taskhub.Bounds) *Client {
	return &Client{e: e, hub: hub, bounds: bounds}
}

// Request is what a start asks for. Items is a JSON array of items; with
// neither Items nor Count the fan-out's default items are processed.
type Request struct {
	Items          json.RawMessage
	Count          int // items the fan-out generates, instead of Items
	MaxParallelism int // at most this many items at once; 0: no bound
	// ItemsPerActivity is how many items one work activity runs; 0: the
	// engine's Options.ItemsPerActivity.
	ItemsPerActivity int
}

// Started is an instance a start or restart scheduled.
type Started struct {
	ID    string
	Items int
	Parts int // the start's payloads: more than one when the items did not fit one
}

// Start validates req and schedules fan-out name with it. Items that do not
// fit one orchestration input on the task hub follow the start as events,
// in parts that do.
func (c *Client) Start(ctx context.Context, name string, req Request) (Started, error) {
	k := c.e.kind(name)
	if k == nil {
		return Started{}, invalid("no fan-out is named %q", name)
	}
	plan, err := c.plan(k, req)
	if err != nil {
		return Started{}, err
	}
	return c.start(ctx, k, plan)
}

// plan checks req against the fan-out and the limits.
func (c *Client) plan(k *kind, req Request) (Plan, error) {
	opts := c.e.opts
	plan := Plan{MaxParallelism: req.MaxParallelism, Batch: opts.ItemsPerActivity}
	if req.MaxParallelism < 0 || req.MaxParallelism > opts.MaxItems {
		return Plan{}, invalid("maxParallelism must be a whole number from 1 to %d", opts.MaxItems)
	}
	switch {
	case req.ItemsPerActivity < 0 || req.ItemsPerActivity > MaxItemsPerActivity:
		return Plan{}, invalid("itemsPerActivity must be a whole number from 1 to %d", MaxItemsPerActivity)
	case req.ItemsPerActivity > 0:
		plan.Batch = req.ItemsPerActivity
	}
	if plan.Batch == 1 {
		plan.Batch = 0 // the default, left out of the input
	}
	given := len(req.Items) > 0 && string(req.Items) != "null"
	switch {
	case req.Count != 0 && given:
		return Plan{}, invalid("give either workItems or count, not both")
	case req.Count != 0:
		if !k.generated {
			return Plan{}, invalid("fan-out %s does not generate items: list them in workItems", k.Name)
		}
		if req.Count < 0 || req.Count > opts.MaxItems {
			return Plan{}, invalid("count must be a whole number from 1 to %d", opts.MaxItems)
		}
		plan.Count = req.Count
		return plan, nil
	case !given:
		if k.defaults == nil {
			return Plan{}, invalid("workItems is missing: list the items to process")
		}
		plan.Items = k.defaults
		return plan, nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(req.Items, &list); err != nil {
		return Plan{}, invalid("workItems must be an array of %s", k.itemsAre)
	}
	switch {
	case len(list) == 0:
		if k.defaults == nil {
			return Plan{}, invalid("workItems is empty: name at least one item")
		}
		return Plan{}, invalid("workItems is empty: name at least one item, or leave workItems out to process the default items")
	case len(list) > opts.MaxItems:
		return Plan{}, invalid("workItems has %d items: at most %d are allowed", len(list), opts.MaxItems)
	}
	for i, raw := range list {
		item, err := k.item(i, raw)
		if err != nil {
			return Plan{}, err
		}
		list[i] = item
	}
	plan.Items = list
	return plan, nil
}

// start schedules the plan's fan-out, with the engine's partition size and
// retry policy and the task hub's bounds.
func (c *Client) start(ctx context.Context, k *kind, plan Plan) (Started, error) {
	plan.Retry = c.e.opts.Retry
	plan.PartitionSize = c.e.opts.PartitionSize
	// Three quarters of a payload: the rest of an output, a step or an
	// event needs room too.
	budget := c.bounds.MaxPayloadBytes * 3 / 4
	plan.ListBytes = budget
	plan.StepBytes = c.bounds.MaxStepBytes * 3 / 4
	if budget > 0 {
		plan.PartitionSize = fitPartitions(plan.Items, plan.PartitionSize, budget)
	}
	var chunks [][]json.RawMessage
	if budget > 0 && len(plan.Items) > 0 {
		if input, _ := json.Marshal(plan); len(input) > c.bounds.MaxPayloadBytes {
			chunks = chunk(plan.Items, budget)
			plan.Chunks, plan.Total, plan.Items = len(chunks), len(plan.Items), nil
		}
	}
	n := max(plan.Count, plan.Total, len(plan.Items))
	// The backend carries the span's context into the instance, whose
	// spans are its children.
	caller := trace.SpanContextFromContext(ctx)
	ctx, span := telemetry.CreateOrchestration(ctx, c.e.opts.Tracer, k.Orchestrator)
	defer span.End()
	plan.Trace = ""
	if span.IsRecording() {
		plan.Trace = telemetry.TraceParent(span.SpanContext())
	}
	id, err := c.hub.ScheduleNewOrchestration(ctx, k.Orchestrator, api.WithInput(plan))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return Started{}, fmt.Errorf("scheduling %s: %w", k.Orchestrator, err)
	}
	span.SetAttributes(telemetry.InstanceID(string(id)))
	// The caller going away must not leave the instance waiting for parts
	// nobody sends.
	sendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ItemsTimeout/2)
	defer cancel()
	for i, part := range chunks {
		if err := c.hub.RaiseEvent(sendCtx, id, ItemsEvent+strconv.Itoa(i), api.WithEventPayload(part)); err != nil {
			// The instance waits for every part, then fails having run
			// nothing: the start did not happen, as far as work goes.
			zerolog.Ctx(ctx).Warn().Str("instanceId", string(id)).Err(err).
				Msgf("sending the work items failed after %d of %d parts; the instance will fail in %s without processing any", i, len(chunks), ItemsTimeout)
			return Started{}, fmt.Errorf("sending work items to %s: %w", id, err)
		}
	}
	s := Started{ID: string(id), Items: n, Parts: max(1, len(chunks))}
	line := zerolog.Ctx(ctx).Info()
	if sc := span.SpanContext(); sc.IsValid() && !caller.IsValid() {
		// A new trace: the request's lines name none.
		line = line.Str("traceId", sc.TraceID().String()).Str("spanId", sc.SpanID().String())
	}
	line.Str("instanceId", s.ID).Int("items", n).Int("parts", s.Parts).Msg("started orchestration")
	return s, nil
}

// fitPartitions returns size, or less if a partition of size items would
// hold more than maxBytes of them as JSON: a partition's items are its
// input, one payload. Items that JSON writes long (CJK, '<') can make a
// thousand of them larger than the scheduler takes.
func fitPartitions(items []json.RawMessage, size, maxBytes int) int {
	largest := func(size int) int {
		most := 0
		for from := 0; from < len(items); from += size {
			n := 2
			for _, item := range items[from:min(len(items), from+size)] {
				n += len(item) + 1
			}
			most = max(most, n)
		}
		return most
	}
	for len(items) > size && size > 1 {
		most := largest(size)
		if most <= maxBytes {
			break
		}
		size = max(1, min(size-1, size*maxBytes/most))
	}
	return size
}

// chunk splits items into lists of at most maxBytes of JSON each.
func chunk(items []json.RawMessage, maxBytes int) [][]json.RawMessage {
	var chunks [][]json.RawMessage
	start, size := 0, 2
	for i, item := range items {
		if i > start && size+len(item)+1 > maxBytes {
			chunks = append(chunks, items[start:i])
			start, size = i, 2
		}
		size += len(item) + 1
	}
	return append(chunks, items[start:])
}

// kind returns the fan-out named name, nil if none is.
func (e *Engine) kind(name string) *kind {
	for _, k := range e.kinds {
		if k.Name == name {
			return k
		}
	}
	return nil
}

// kindOf returns the fan-out an instance of orchestrator name belongs to,
// and whether the instance is one of its partitions.
func (e *Engine) kindOf(orchestrator string) (*kind, bool) {
	for _, k := range e.kinds {
		switch orchestrator {
		case k.Orchestrator:
			return k, false
		case k.Partition:
			return k, true
		}
	}
	return nil, false
}

// Status returns instance id's state, payloads included.
func (c *Client) Status(ctx context.Context, id string) (*api.OrchestrationMetadata, error) {
	md, err := c.hub.FetchOrchestrationMetadata(ctx, api.InstanceID(id), api.WithFetchPayloads(true))
	if errors.Is(err, api.ErrInstanceNotFound) {
		return nil, notFound(id)
	} else if err != nil {
		return nil, fmt.Errorf("fetching instance %s: %w", id, err)
	}
	return md, nil
}

// List returns a page of the instances q selects; partitions only if
// partitions is set.
func (c *Client) List(ctx context.Context, q taskhub.Query, partitions bool) (taskhub.Page, error) {
	if !partitions {
		for _, k := range c.e.kinds {
			q.ExcludeNames = append(q.ExcludeNames, k.Partition)
		}
	}
	return c.hub.ListInstances(ctx, q)
}

// manage fetches instance id for an action and checks that it is a
// fan-out, not one of its partitions.
func (c *Client) manage(ctx context.Context, id, reason string) (manager, error) {
	md, err := c.Status(ctx, id)
	if err != nil {
		return manager{}, err
	}
	k, partition := c.e.kindOf(md.Name)
	if partition {
		parent := parentOf(id)
		return manager{}, conflict("instance %s is a partition of %s: manage %s instead", id, parent, parent)
	}
	return manager{c: c, k: k, md: md, reason: reason}, nil
}

// Terminate ends instance id, and so its partitions, as Terminated, with
// reason as its output.
func (c *Client) Terminate(ctx context.Context, id, reason string) error {
	m, err := c.manage(ctx, id, reason)
	if err != nil {
		return err
	}
	return m.found(m.terminate(ctx))
}

// Suspend suspends instance id and its running partitions: no more of its
// items start until it is resumed.
func (c *Client) Suspend(ctx context.Context, id, reason string) error {
	m, err := c.manage(ctx, id, reason)
	if err != nil {
		return err
	}
	return m.found(m.suspend(ctx))
}

// Resume resumes a suspended instance id and its partitions.
func (c *Client) Resume(ctx context.Context, id, reason string) error {
	m, err := c.manage(ctx, id, reason)
	if err != nil {
		return err
	}
	return m.found(m.resume(ctx))
}

// Purge deletes finished instance id and its partitions, returning how
// many instances were deleted.
func (c *Client) Purge(ctx context.Context, id string) (int, error) {
	m, err := c.manage(ctx, id, "")
	if err != nil {
		return 0, err
	}
	return m.purge(ctx)
}

// Restart starts a new instance of instance id's fan-out with its items,
// count and parallelism.
func (c *Client) Restart(ctx context.Context, id string) (Started, error) {
	m, err := c.manage(ctx, id, "")
	if err != nil {
		return Started{}, err
	}
	if m.k == nil {
		return Started{}, m.conflict("it is a %s, not a fan-out this app runs", m.md.Name)
	}
	plan, err := m.restartPlan(ctx)
	if err != nil {
		return Started{}, err
	}
	return c.start(ctx, m.k, plan)
}

// manager applies a management action to one instance, md, as fetched
// just before. An action that does not apply to the instance's state is a
// Conflict that says why.
type manager struct {
	c      *Client
	k      *kind // nil: not a fan-out of this engine
	md     *api.OrchestrationMetadata
	reason string
}

func (m manager) id() api.InstanceID { return m.md.InstanceID }

func (m manager) conflict(format string, args ...any) error {
	return conflict("instance %s is %s: "+format, append([]any{m.id(), StatusName(m.md.RuntimeStatus)}, args...)...)
}

// found turns the task hub's "not found" into NotFound: the instance was
// purged since it was fetched.
func (m manager) found(err error) error {
	if errors.Is(err, api.ErrInstanceNotFound) {
		return notFound(string(m.id()))
	}
	return err
}

// terminate: a suspended instance is resumed first, with its partitions:
// a durabletask-go v0.6.0 backend (the sidecar) records the end of a
// suspended instance as Suspended still.
func (m manager) terminate(ctx context.Context) error {
	if m.md.IsComplete() {
		return m.conflict("only a pending, running or suspended instance can be terminated")
	}
	if m.md.RuntimeStatus == api.RUNTIME_STATUS_SUSPENDED {
		if err := m.resume(ctx); err != nil {
			return fmt.Errorf("resuming %s to terminate it: %w", m.id(), err)
		}
	}
	if err := m.c.hub.TerminateOrchestration(ctx, m.id(), api.WithOutput(m.reason)); err != nil {
		return fmt.Errorf("terminating %s: %w", m.id(), err)
	}
	return nil
}

// suspend: items already running finish, and their results wait.
func (m manager) suspend(ctx context.Context) error {
	if m.md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING && m.md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
		return m.conflict("only a pending or running instance can be suspended")
	}
	if err := m.c.hub.SuspendOrchestration(ctx, m.id(), m.reason); err != nil {
		return fmt.Errorf("suspending %s: %w", m.id(), err)
	}
	return m.eachPartition(ctx, func(st api.OrchestrationStatus) bool {
		return st == api.RUNTIME_STATUS_RUNNING || st == api.RUNTIME_STATUS_PENDING
	}, func(id api.InstanceID) error {
		return m.c.hub.SuspendOrchestration(ctx, id, m.reason)
	})
}

// resume reaches the unfinished partitions too: those whose suspension is
// still on its way, which a resume only of those already suspended would
// leave suspended for ever. A partition that is not suspended passes over
// the resume (see the task hub's executor).
func (m manager) resume(ctx context.Context) error {
	if m.md.RuntimeStatus != api.RUNTIME_STATUS_SUSPENDED {
		return m.conflict("only a suspended instance can be resumed")
	}
	if err := m.eachPartition(ctx, func(st api.OrchestrationStatus) bool {
		return st == api.RUNTIME_STATUS_SUSPENDED || st == api.RUNTIME_STATUS_RUNNING || st == api.RUNTIME_STATUS_PENDING
	}, func(id api.InstanceID) error {
		return m.c.hub.ResumeOrchestration(ctx, id, m.reason)
	}); err != nil {
		return err
	}
	if err := m.c.hub.ResumeOrchestration(ctx, m.id(), m.reason); err != nil {
		return fmt.Errorf("resuming %s: %w", m.id(), err)
	}
	return nil
}

// eachPartition calls do for each of the instance's partitions whose state
// in accepts. Partitions start in order, so the first missing one ends the
// list.
func (m manager) eachPartition(ctx context.Context, in func(api.OrchestrationStatus) bool, do func(api.InstanceID) error) error {
	for k := 0; ; k++ {
		id := api.InstanceID(PartitionID(string(m.id()), k))
		md, err := m.c.hub.FetchOrchestrationMetadata(ctx, id, api.WithFetchPayloads(false))
		if errors.Is(err, api.ErrInstanceNotFound) {
			return nil
		} else if err != nil {
			return fmt.Errorf("fetching partition %s: %w", id, err)
		}
		if in(md.RuntimeStatus) {
			if err := do(id); err != nil {
				return fmt.Errorf("partition %s: %w", id, err)
			}
		}
	}
}

// purge deletes the finished instance and its partitions.
func (m manager) purge(ctx context.Context) (int, error) {
	if !m.md.IsComplete() {
		return 0, m.conflict("only a finished instance can be purged; terminate it first")
	}
	n, err := m.c.hub.PurgeInstance(ctx, m.id())
	switch {
	case errors.Is(err, taskhub.ErrStillRunning):
		return 0, conflict("instance %s cannot be purged yet: %v; try again shortly", m.id(), err)
	case errors.Is(err, api.ErrInstanceNotFound):
		return 0, notFound(string(m.id()))
	case err != nil:
		return 0, fmt.Errorf("purging %s: %w", m.id(), err)
	}
	zerolog.Ctx(ctx).Info().Str("instanceId", string(m.id())).Int("instancesDeleted", n).Msg("purged instance")
	return n, nil
}

// restartPlan is what to start again: the instance's items, count and
// parallelism. Items that came in parts are gathered again from its
// partitions' inputs, the only place they are kept.
func (m manager) restartPlan(ctx context.Context) (Plan, error) {
	raw := []byte(m.md.SerializedInput)
	var old Plan
	var err error
	if len(raw) > 0 && raw[0] == '[' {
		err = json.Unmarshal(raw, &old.Items)
	} else if len(raw) > 0 {
		err = json.Unmarshal(raw, &old)
	}
	if err != nil {
		return Plan{}, m.conflict("its input is not a fan-out this app can restart: %v", err)
	}
	plan := Plan{Items: old.Items, Count: old.Count, MaxParallelism: old.MaxParallelism, Batch: old.Batch}
	if old.Chunks == 0 {
		if plan.Count == 0 && len(plan.Items) == 0 {
			if m.k.defaults == nil {
				return Plan{}, m.conflict("its input names no items")
			}
			plan.Items = m.k.defaults
		}
		return plan, nil
	}
	for k := 0; len(plan.Items) < old.Total; k++ {
		id := api.InstanceID(PartitionID(string(m.id()), k))
		md, err := m.c.hub.FetchOrchestrationMetadata(ctx, id, api.WithFetchPayloads(true))
		if errors.Is(err, api.ErrInstanceNotFound) {
			return Plan{}, m.conflict("its %d work items came in parts and are kept only by its partitions, but partition %s is missing: start a new fan-out with them instead", old.Total, id)
		} else if err != nil {
			return Plan{}, fmt.Errorf("fetching partition %s: %w", id, err)
		}
		var p partitionInput
		if err := json.Unmarshal([]byte(md.SerializedInput), &p); err != nil || p.First != len(plan.Items) {
			return Plan{}, m.conflict("the input of its partition %s does not hold its share of the work items", id)
		}
		plan.Items = append(plan.Items, p.Items...)
	}
	return plan, nil
}

// statusNames are the runtime statuses as Durable Functions spells them.
var statusNames = map[api.OrchestrationStatus]string{
	api.RUNTIME_STATUS_PENDING:          "Pending",
	api.RUNTIME_STATUS_RUNNING:          "Running",
	api.RUNTIME_STATUS_COMPLETED:        "Completed",
	api.RUNTIME_STATUS_CONTINUED_AS_NEW: "ContinuedAsNew",
	api.RUNTIME_STATUS_FAILED:           "Failed",
	api.RUNTIME_STATUS_CANCELED:         "Canceled",
	api.RUNTIME_STATUS_TERMINATED:       "Terminated",
	api.RUNTIME_STATUS_SUSPENDED:        "Suspended",
}

// StatusName is a runtime status as Durable Functions spells it.
func StatusName(s api.OrchestrationStatus) string { return statusNames[s] }

// ParseStatus reads a status as Durable Functions spells it, in any case.
func ParseStatus(name string) (api.OrchestrationStatus, bool) {
	for status, n := range statusNames {
		if strings.EqualFold(n, name) {
			return status, true
		}
	}
	return 0, false
}

// StatusNames lists the statuses' names, sorted.
func StatusNames() []string {
	names := make([]string, 0, len(statusNames))
	for _, n := range statusNames {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
