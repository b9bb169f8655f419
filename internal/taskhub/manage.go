package taskhub

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
)

// ErrStillRunning is returned by PurgeInstance when the instance, or an
// orchestration it started, has not finished.
var ErrStillRunning = errors.New("has not finished")

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
			return fmt.Errorf("%s %w", id, ErrStillRunning)
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

// The management calls of the gRPC backend. The scheduler terminates and
// purges sub-orchestrations itself when asked to recurse.

func (g grpcClient) TerminateOrchestration(ctx context.Context, id api.InstanceID, opts ...api.TerminateOptions) error {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	return g.unavailable(ctx, g.c.TerminateOrchestration(ctx, id, append(opts, api.WithRecursiveTerminate(true))...))
}

func (g grpcClient) SuspendOrchestration(ctx context.Context, id api.InstanceID, reason string) error {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	return g.unavailable(ctx, g.c.SuspendOrchestration(ctx, id, reason))
}

func (g grpcClient) ResumeOrchestration(ctx context.Context, id api.InstanceID, reason string) error {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	return g.unavailable(ctx, g.c.ResumeOrchestration(ctx, id, reason))
}

// PurgeInstance calls PurgeInstances itself: v0.6.0's client does not
// recurse by default and drops the count.
func (g grpcClient) PurgeInstance(ctx context.Context, id api.InstanceID) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	req := newMessage("PurgeInstancesRequest")
	fieldsOf(req).set("instanceId", string(id)).set("recursive", true)
	res := newMessage("PurgeInstancesResponse")
	if err := g.conn.Invoke(ctx, method("PurgeInstances"), req, res); err != nil {
		// The upstream sidecar answers a running sub-orchestration with its
		// own error text, and no status code for it.
		if strings.Contains(err.Error(), api.ErrNotCompleted.Error()) {
			return 0, fmt.Errorf("%s or an orchestration it started %w", id, ErrStillRunning)
		}
		return 0, g.unavailable(ctx, err)
	}
	n := int(fieldsOf(res).int32("deletedInstanceCount"))
	if n == 0 {
		return 0, api.ErrInstanceNotFound
	}
	return n, nil
}
