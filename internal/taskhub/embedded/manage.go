package embedded

import (
	"context"
	"errors"
	"fmt"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"

	"fanoutfanin/internal/taskhub"
)

// The management calls of the embedded hub. Terminate, suspend and resume
// are events the worker applies in order, as any other; termination
// reaches the sub-orchestrations an instance started.

func (e embeddedClient) TerminateOrchestration(ctx context.Context, id api.InstanceID, opts ...api.TerminateOptions) error {
	return e.c.TerminateOrchestration(ctx, id, append(opts, api.WithRecursiveTerminate(true))...)
}

func (e embeddedClient) SuspendOrchestration(ctx context.Context, id api.InstanceID, reason string) error {
	return e.c.SuspendOrchestration(ctx, id, reason)
}

func (e embeddedClient) ResumeOrchestration(ctx context.Context, id api.InstanceID, reason string) error {
	return e.c.ResumeOrchestration(ctx, id, reason)
}

// PurgeInstance deletes a finished instance and every orchestration it
// started, and says how many it deleted. It checks them all before
// deleting any, so an instance with a sub-orchestration still running is
// left whole; one already deleted on its own is passed over.
func (e embeddedClient) PurgeInstance(ctx context.Context, id api.InstanceID) (int, error) {
	var tree []api.InstanceID // children before their parent
	var walk func(id api.InstanceID, root bool) error
	walk = func(id api.InstanceID, root bool) error {
		state, err := e.be.GetOrchestrationRuntimeState(ctx, &backend.OrchestrationWorkItem{InstanceID: id})
		if err != nil {
			return err
		}
		switch exists := len(state.OldEvents())+len(state.NewEvents()) > 0; {
		case !exists && root:
			return api.ErrInstanceNotFound
		case !exists:
			return nil
		case !state.IsCompleted():
			return fmt.Errorf("%s %w", id, taskhub.ErrStillRunning)
		}
		for _, ev := range state.OldEvents() {
			if c := ev.GetSubOrchestrationInstanceCreated(); c != nil {
				if err := walk(api.InstanceID(c.GetInstanceId()), false); err != nil {
					return err
				}
			}
		}
		tree = append(tree, id)
		return nil
	}
	if err := walk(id, true); err != nil {
		return 0, err
	}
	for i, iid := range tree {
		if err := e.be.PurgeOrchestrationState(ctx, iid); err != nil && !errors.Is(err, api.ErrInstanceNotFound) {
			return i, fmt.Errorf("purging %s: %w", iid, err)
		}
	}
	return len(tree), nil
}
