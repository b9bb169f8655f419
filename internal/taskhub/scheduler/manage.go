package scheduler

import (
	"context"
	"fmt"
	"strings"

	"github.com/microsoft/durabletask-go/api"

	"fanoutfanin/internal/taskhub"
)

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
			return 0, fmt.Errorf("%s or an orchestration it started %w", id, taskhub.ErrStillRunning)
		}
		return 0, g.unavailable(ctx, err)
	}
	n := int(fieldsOf(res).int32("deletedInstanceCount"))
	if n == 0 {
		return 0, api.ErrInstanceNotFound
	}
	return n, nil
}
