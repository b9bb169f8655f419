package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/functions"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/embedded"
	"fanoutfanin/internal/taskhub/hubtest"
)

func hubConfig(file string) config.TaskHub { return hubtest.Config(file) }

// registry runs the app's fan-out, its items taking no time.
func registry(t testing.TB) *task.TaskRegistry {
	t.Helper()
	return withWork(t, functions.ProcessWorkItem(functions.SampleSettings{}))
}

// withWork runs the app's fan-out with work as process_work_item.
func withWork(t testing.TB, work fanout.Work[string, functions.ItemResult]) *task.TaskRegistry {
	t.Helper()
	e := fanout.New(fanout.Options{Log: zerolog.Nop()})
	spec := functions.Sample(functions.SampleSettings{})
	spec.Work = work
	if err := fanout.Register(e, spec); err != nil {
		t.Fatal(err)
	}
	return e.Registry()
}

// result is what process_work_item would return for item, with value.
func result(item string, value int) functions.ItemResult {
	return functions.ItemResult{Item: item, ProcessedItem: "Processed_" + item, Value: value}
}

func TestUnwritableFolderIsAnError(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	os.WriteFile(blocker, nil, 0o644)
	// A folder cannot be made under a plain file, whoever runs the test.
	_, err := embedded.Open(context.Background(), hubConfig(filepath.Join(blocker, "hub", "x.sqlite")), registry(t), zerolog.Nop(), nil)
	if err == nil || !strings.Contains(err.Error(), config.SettingEmbeddedDir) {
		t.Errorf("got %v, want an error that names %s", err, config.SettingEmbeddedDir)
	}
}

func TestUnopenableFileIsAnErrorNotAPanic(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "x.sqlite")
	os.Mkdir(file, 0o755) // a folder where the file should be
	_, err := embedded.Open(context.Background(), hubConfig(file), registry(t), zerolog.Nop(), nil)
	if err == nil || !strings.Contains(err.Error(), "opening the embedded task hub") {
		t.Errorf("got %v, want an error opening the hub", err)
	}
}

// State lives in the file: a hub opened again on it sees earlier instances.
func TestInstancesSurviveReopening(t *testing.T) {
	ctx := context.Background()
	cfg := hubConfig(filepath.Join(t.TempDir(), "x.sqlite"))
	hub, err := embedded.Open(ctx, cfg, registry(t), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := hub.Client.ScheduleNewOrchestration(ctx, functions.OrchestratorName, api.WithInput([]string{"a"}))
	if err != nil {
		t.Fatal(err)
	}
	waitComplete(t, hub.Client, id, 20*time.Second)
	if err := hub.Close(ctx); err != nil {
		t.Fatal(err)
	}

	hub, err = embedded.Open(ctx, cfg, registry(t), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(ctx)
	md, err := hub.Client.FetchOrchestrationMetadata(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.RuntimeStatus, api.RUNTIME_STATUS_COMPLETED; got != want {
		t.Errorf("after reopening: got %v, want %v", got, want)
	}
}

func waitComplete(t testing.TB, c taskhub.Client, id api.InstanceID, within time.Duration) *api.OrchestrationMetadata {
	t.Helper()
	md := hubtest.Wait(t, c, id, within, nil)
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("instance %s: %v: %v", id, md.RuntimeStatus, md.FailureDetails)
	}
	return md
}

// Work still running when the shutdown grace period ends is handed back:
// unlocked at once, not recorded as failed, and done when the hub next runs.
func TestCloseHandsBackUnfinishedWork(t *testing.T) {
	ctx := context.Background()
	cfg := hubConfig(filepath.Join(t.TempDir(), "x.sqlite"))
	cfg.LockTimeout = time.Hour // only handing back can release the item this test
	hub, id := startOneItem(t, cfg, func(actx task.ActivityContext) (any, error) {
		<-actx.Context().Done()
		return nil, actx.Context().Err()
	})
	closeCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := hub.Close(closeCtx); err == nil || !strings.Contains(err.Error(), "handed back") {
		t.Errorf("Close: got %v, want an error saying work was handed back", err)
	}
	finishesOnReopen(t, cfg, id)
}

// oneItem is an orchestration of one activity, "item", on "a": what the
// hand-back tests need, whatever the app runs.
const oneItem = "one_item"

func oneItemRegistry(t *testing.T, item task.Activity) *task.TaskRegistry {
	t.Helper()
	r := task.NewTaskRegistry()
	if err := errors.Join(
		r.AddOrchestratorN(oneItem, func(ctx *task.OrchestrationContext) (any, error) {
			var out string
			err := ctx.CallActivity("item", task.WithActivityInput("a")).Await(&out)
			return out, err
		}),
		r.AddActivityN("item", item),
	); err != nil {
		t.Fatal(err)
	}
	return r
}

// startOneItem opens the embedded hub cfg names with item as the activity
// of a one-item orchestration, starts one and returns once the item has
// started.
func startOneItem(t *testing.T, cfg config.TaskHub, item task.Activity) (*taskhub.Hub, api.InstanceID) {
	t.Helper()
	started := make(chan struct{}, 1)
	hub, err := embedded.Open(context.Background(), cfg, oneItemRegistry(t, func(actx task.ActivityContext) (any, error) {
		started <- struct{}{}
		return item(actx)
	}), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := hub.Client.ScheduleNewOrchestration(context.Background(), oneItem)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	return hub, id
}

// finishesOnReopen opens the hub cfg names again, with an item that
// finishes, and checks that the one-item orchestration id completes: the
// item handed back runs again at once, though its lock would hold it for an
// hour.
func finishesOnReopen(t *testing.T, cfg config.TaskHub, id api.InstanceID) {
	t.Helper()
	hub, err := embedded.Open(context.Background(), cfg, oneItemRegistry(t, func(task.ActivityContext) (any, error) { return "done", nil }), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(context.Background())
	md := waitComplete(t, hub.Client, id, 20*time.Second)
	if md.SerializedOutput != `"done"` {
		t.Errorf("output: %s", md.SerializedOutput)
	}
}

// Work that finishes within the grace period is recorded, not abandoned.
func TestCloseLetsWorkInFlightFinish(t *testing.T) {
	ctx := context.Background()
	cfg := hubConfig(filepath.Join(t.TempDir(), "x.sqlite"))
	cfg.LockTimeout = time.Hour
	started := make(chan struct{}, 3)
	slow := withWork(t, func(_ context.Context, it fanout.Item[string]) (functions.ItemResult, error) {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		return result(it.Value, 7), nil
	})
	hub, err := embedded.Open(ctx, cfg, slow, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := hub.Client.ScheduleNewOrchestration(ctx, functions.OrchestratorName, api.WithInput([]string{"a", "b", "c"}))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		<-started
	}
	closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := hub.Close(closeCtx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// A process whose process_work_item never succeeds finishes the
	// orchestration: every item's result was recorded before Close returned.
	noWork := withWork(t, func(_ context.Context, it fanout.Item[string]) (functions.ItemResult, error) {
		t.Errorf("item %s ran again", it.Value)
		return functions.ItemResult{}, errors.New("ran again")
	})
	hub, err = embedded.Open(ctx, cfg, noWork, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(ctx)
	md := waitComplete(t, hub.Client, id, 20*time.Second)
	if !strings.Contains(md.SerializedOutput, `"total_value":21`) {
		t.Errorf("output: %s", md.SerializedOutput)
	}
}

// Activities are taken from the file in batches, but never more than the
// worker can run at once: an item taken and left waiting would hold its lock
// while it waits, and another process could not take it.
func TestActivitiesTakenAreNeverMoreThanTheLimit(t *testing.T) {
	ctx := context.Background()
	cfg := hubConfig(filepath.Join(t.TempDir(), "x.sqlite"))
	cfg.MaxConcurrentActivities = 3
	var mu sync.Mutex
	most := 0
	slow := withWork(t, func(_ context.Context, it fanout.Item[string]) (functions.ItemResult, error) {
		locked, _, err := hubtest.Locked(cfg.EmbeddedFile)
		if err != nil {
			return functions.ItemResult{}, err
		}
		mu.Lock()
		most = max(most, locked)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		return result(it.Value, 1), nil
	})
	hub, err := embedded.Open(ctx, cfg, slow, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(ctx)
	items := make([]string, 30)
	for i := range items {
		items[i] = fmt.Sprintf("Task%d", i)
	}
	id, err := hub.Client.ScheduleNewOrchestration(ctx, functions.OrchestratorName, api.WithInput(items))
	if err != nil {
		t.Fatal(err)
	}
	md := waitComplete(t, hub.Client, id, 60*time.Second)
	if !strings.Contains(md.SerializedOutput, `"total_items_processed":30`) {
		t.Errorf("output: %s", md.SerializedOutput)
	}
	mu.Lock()
	defer mu.Unlock()
	if most < 2 || most > cfg.MaxConcurrentActivities {
		t.Errorf("activity work items locked at once: at most %d seen; want some, never more than %d", most, cfg.MaxConcurrentActivities)
	}
}
