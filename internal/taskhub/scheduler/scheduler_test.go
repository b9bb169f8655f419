package scheduler_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/dtstest"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/hubtest"
	"fanoutfanin/internal/taskhub/scheduler"
)

// onSidecar is a task hub's configuration on a fresh upstream sidecar.
func onSidecar(t testing.TB) config.TaskHub {
	t.Helper()
	addr, _ := dtstest.StartSidecar(t, 0, filepath.Join(t.TempDir(), "sidecar.sqlite"))
	cfg := hubtest.Config("")
	cfg.Scheduler = &config.Scheduler{Endpoint: "http://" + addr, Host: "127.0.0.1", Address: addr, Auth: config.AuthNone}
	return cfg
}

// openOnSidecar opens the task hub over gRPC on a fresh upstream sidecar.
func openOnSidecar(t *testing.T, r *task.TaskRegistry) *taskhub.Hub {
	t.Helper()
	hub, err := scheduler.Open(onSidecar(t), r, taskhub.NewSessions(taskhub.DefaultSessions), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Close(context.Background()) })
	return hub
}

// waitFailed waits for an instance to fail and returns its failure message.
func waitFailed(t *testing.T, c taskhub.Client, id api.InstanceID) string {
	t.Helper()
	md := hubtest.Wait(t, c, id, time.Minute, nil)
	if md.RuntimeStatus != api.RUNTIME_STATUS_FAILED {
		t.Fatalf("instance %s: %v, want failed", id, md.RuntimeStatus)
	}
	if md.FailureDetails == nil {
		t.Fatalf("instance %s failed without failure details", id)
	}
	return md.FailureDetails.GetErrorMessage()
}

// An orchestrator step or an activity result the scheduler would refuse is
// never sent: the orchestration fails at once with a message that says which
// limit it hit and how to stay under it, and its failure details reach the
// client.
func TestSchedulerLimitsFailTheOrchestrationClearly(t *testing.T) {
	big := strings.Repeat("x", config.DefaultMaxPayloadBytes+1)
	r := task.NewTaskRegistry()
	r.AddOrchestratorN("big_status", func(ctx *task.OrchestrationContext) (any, error) {
		ctx.SetCustomStatus(big)
		return nil, ctx.CreateTimer(time.Hour).Await(nil)
	})
	r.AddOrchestratorN("big_step", func(ctx *task.OrchestrationContext) (any, error) {
		// Five inputs under the payload limit that make one step over the
		// message limit.
		input := strings.Repeat("y", 900_000)
		var tasks []task.Task
		for range 5 {
			tasks = append(tasks, ctx.CallActivity("echo", task.WithActivityInput(input)))
		}
		for _, t := range tasks {
			if err := t.Await(nil); err != nil {
				return nil, err
			}
		}
		return nil, nil
	})
	r.AddOrchestratorN("big_result", func(ctx *task.OrchestrationContext) (any, error) {
		return nil, ctx.CallActivity("big").Await(nil)
	})
	r.AddActivityN("echo", func(ctx task.ActivityContext) (any, error) { return "ok", nil })
	r.AddActivityN("big", func(ctx task.ActivityContext) (any, error) { return big, nil })
	hub := openOnSidecar(t, r)

	for name, want := range map[string]string{
		"big_status": "over the scheduler's limit of 1048576 bytes per payload",
		"big_step":   "over the scheduler's limit of 4089446 bytes per step",
		"big_result": "activity big returned 1048579 bytes, over the scheduler's limit of 1048576 bytes per payload",
	} {
		id, err := hub.Client.ScheduleNewOrchestration(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if got := waitFailed(t, hub.Client, id); !strings.Contains(got, want) {
			t.Errorf("%s failed with %q, want it to say %q", name, got, want)
		}
	}
}

// One QueryInstances asks for no more instances than one received message
// holds were each payload at the configured limit: at 10 MiB a payload
// that is 2, so a page of 5 takes 3 calls, and holds all 5.
func TestListingAsksForWhatOneMessageHolds(t *testing.T) {
	upstream, _ := dtstest.StartSidecar(t, 0, filepath.Join(t.TempDir(), "sidecar.sqlite"))
	srv, err := dtstest.Start(dtstest.Options{Upstream: upstream, TaskHub: "test", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := hubtest.Config("")
	cfg.Scheduler = &config.Scheduler{Endpoint: "http://" + srv.Addr(), Host: "127.0.0.1", Address: srv.Addr(), Auth: config.AuthNone}
	cfg.MaxPayloadBytes = 10 << 20
	// No orchestrators registered: the instances stay pending.
	hub, err := scheduler.Open(cfg, task.NewTaskRegistry(), nil, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(context.Background())
	ctx := context.Background()
	for range 5 {
		if _, err := hub.Client.ScheduleNewOrchestration(ctx, "unregistered"); err != nil {
			t.Fatal(err)
		}
	}
	before := srv.Stats().Queries
	page, err := hub.Client.ListInstances(ctx, taskhub.Query{PageSize: 5})
	if err != nil {
		t.Fatal(err)
	}
	if calls := srv.Stats().Queries - before; len(page.Instances) != 5 || page.ContinuationToken != "" || calls != 3 {
		t.Errorf("a page of 5: %d instances, token %q, in %d calls; want 5, none, in 3", len(page.Instances), page.ContinuationToken, calls)
	}
	for _, v := range srv.Violations() {
		t.Errorf("protocol violation: %s", v)
	}
}
