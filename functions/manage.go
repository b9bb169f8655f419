package functions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/microsoft/durabletask-go/api"

	"fanoutfanin/internal/httpjson"
	"fanoutfanin/internal/taskhub"
)

// manager applies a management action to one fan-out instance, md, as
// fetched just before. An action that does not apply to the instance's
// state is a 409 that says why.
type manager struct {
	hub    taskhub.Client
	md     *api.OrchestrationMetadata
	reason string
}

func (m manager) id() api.InstanceID { return m.md.InstanceID }

func (m manager) state() string { return runtimeStatusNames[m.md.RuntimeStatus] }

func (m manager) conflict(format string, args ...any) error {
	return httpjson.Errorf(http.StatusConflict, "instance %s is %s: "+format, append([]any{m.id(), m.state()}, args...)...)
}

// terminate ends the instance, and so its partitions, as Terminated, with
// the reason as its output. A suspended instance is resumed first, with its
// partitions: a durabletask-go v0.6.0 backend (the sidecar) records the end
// of a suspended instance as Suspended still.
func (m manager) terminate(ctx context.Context) error {
	if m.md.IsComplete() {
		return m.conflict("only a pending, running or suspended instance can be terminated")
	}
	if m.md.RuntimeStatus == api.RUNTIME_STATUS_SUSPENDED {
		if err := m.resume(ctx); err != nil {
			return fmt.Errorf("resuming %s to terminate it: %w", m.id(), err)
		}
	}
	if err := m.hub.TerminateOrchestration(ctx, m.id(), api.WithOutput(m.reason)); err != nil {
		return fmt.Errorf("terminating %s: %w", m.id(), err)
	}
	return nil
}

// suspend suspends the instance, then its partitions that are running, so
// that no more of its items start until it is resumed. Items already
// running finish, and their results wait.
func (m manager) suspend(ctx context.Context) error {
	if m.md.RuntimeStatus != api.RUNTIME_STATUS_RUNNING && m.md.RuntimeStatus != api.RUNTIME_STATUS_PENDING {
		return m.conflict("only a pending or running instance can be suspended")
	}
	if err := m.hub.SuspendOrchestration(ctx, m.id(), m.reason); err != nil {
		return fmt.Errorf("suspending %s: %w", m.id(), err)
	}
	return m.eachPartition(ctx, func(st api.OrchestrationStatus) bool {
		return st == api.RUNTIME_STATUS_RUNNING || st == api.RUNTIME_STATUS_PENDING
	}, func(id api.InstanceID) error {
		return m.hub.SuspendOrchestration(ctx, id, m.reason)
	})
}

// resume resumes the instance and its unfinished partitions: those whose
// suspension is still on its way too, which a resume only of those already
// suspended would leave suspended for ever. A partition that is not
// suspended passes over the resume (see the task hub's executor).
func (m manager) resume(ctx context.Context) error {
	if m.md.RuntimeStatus != api.RUNTIME_STATUS_SUSPENDED {
		return m.conflict("only a suspended instance can be resumed")
	}
	if err := m.eachPartition(ctx, func(st api.OrchestrationStatus) bool {
		return st == api.RUNTIME_STATUS_SUSPENDED || st == api.RUNTIME_STATUS_RUNNING || st == api.RUNTIME_STATUS_PENDING
	}, func(id api.InstanceID) error {
		return m.hub.ResumeOrchestration(ctx, id, m.reason)
	}); err != nil {
		return err
	}
	if err := m.hub.ResumeOrchestration(ctx, m.id(), m.reason); err != nil {
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
		md, err := m.hub.FetchOrchestrationMetadata(ctx, id, api.WithFetchPayloads(false))
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
	n, err := m.hub.PurgeInstance(ctx, m.id())
	switch {
	case errors.Is(err, taskhub.ErrStillRunning):
		return 0, httpjson.Errorf(http.StatusConflict, "instance %s cannot be purged yet: %v; try again shortly", m.id(), err)
	case errors.Is(err, api.ErrInstanceNotFound):
		return 0, errNoInstance(string(m.id()))
	case err != nil:
		return 0, fmt.Errorf("purging %s: %w", m.id(), err)
	}
	return n, nil
}

// restartPlan is what to start again: the instance's items, count and
// parallelism. Items that came in parts are gathered again from its
// partitions' inputs, the only place they are kept.
func (m manager) restartPlan(ctx context.Context) (Plan, error) {
	var raw json.RawMessage
	if m.md.SerializedInput != "" {
		raw = json.RawMessage(m.md.SerializedInput)
	}
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
	plan := Plan{Items: old.Items, Count: old.Count, MaxParallelism: old.MaxParallelism}
	if old.Chunks == 0 {
		if plan.Count == 0 && len(plan.Items) == 0 {
			plan.Items = DefaultWorkItems
		}
		return plan, nil
	}
	for k := 0; len(plan.Items) < old.Total; k++ {
		id := api.InstanceID(PartitionID(string(m.id()), k))
		md, err := m.hub.FetchOrchestrationMetadata(ctx, id, api.WithFetchPayloads(true))
		if errors.Is(err, api.ErrInstanceNotFound) {
			return Plan{}, m.conflict("its %d work items came in parts and are kept only by its partitions, but partition %s is missing: start a new fan-out with them instead", old.Total, id)
		} else if err != nil {
			return Plan{}, fmt.Errorf("fetching partition %s: %w", id, err)
		}
		var p partition
		if err := json.Unmarshal([]byte(md.SerializedInput), &p); err != nil || p.First != len(plan.Items) {
			return Plan{}, m.conflict("the input of its partition %s does not hold its share of the work items", id)
		}
		plan.Items = append(plan.Items, p.Items...)
	}
	return plan, nil
}
