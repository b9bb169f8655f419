package embedded_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/functions"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/embedded"
	"fanoutfanin/internal/taskhub/hubtest"
)

// Work this process creates runs at once: a start wakes the orchestration
// worker, a step that schedules items wakes the activity worker, and each
// result wakes the orchestration again. With the file polled only once a
// minute, a fan-out finishes in well under a second only through them.
func TestWakeUpsRunNewWorkWithoutPolling(t *testing.T) {
	ctx := context.Background()
	hub, err := embedded.OpenPolling(ctx, hubConfig(filepath.Join(t.TempDir(), "x.sqlite")), registry(t), zerolog.Nop(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(ctx)
	items := make([]string, 10)
	for i := range items {
		items[i] = fmt.Sprintf("Task%d", i)
	}
	for round := range 2 { // the second after the workers have gone idle
		start := time.Now()
		id, err := hub.Client.ScheduleNewOrchestration(ctx, functions.OrchestratorName, api.WithInput(items))
		if err != nil {
			t.Fatal(err)
		}
		md := waitComplete(t, hub.Client, id, 5*time.Second)
		elapsed := time.Since(start)
		t.Logf("round %d: 10 items in %s", round+1, elapsed.Round(time.Millisecond))
		if !strings.Contains(md.SerializedOutput, `"total_items_processed":10`) {
			t.Errorf("output: %s", md.SerializedOutput)
		}
		if elapsed > 3*time.Second {
			t.Errorf("round %d: a 10-item fan-out took %s with the file polled once a minute; want it run as soon as the work is made", round+1, elapsed)
		}
	}
}

// Close returns by its deadline even when an activity ignores its context
// and never ends: the item is handed back, unlocked at once, and runs again
// when the hub next runs.
func TestCloseReturnsByItsDeadlineWhenAnActivityIgnoresItsContext(t *testing.T) {
	ctx := context.Background()
	cfg := hubConfig(filepath.Join(t.TempDir(), "x.sqlite"))
	cfg.LockTimeout = time.Hour // only handing back can release the item this test
	never := make(chan struct{})
	defer close(never)
	hub, id := startOneItem(t, cfg, func(task.ActivityContext) (any, error) {
		<-never
		return nil, nil
	})

	const grace = time.Second
	closeCtx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	begin := time.Now()
	closed := make(chan error, 1)
	go func() { closed <- hub.Close(closeCtx) }()
	select {
	case err := <-closed:
		elapsed := time.Since(begin)
		if elapsed > grace+250*time.Millisecond {
			t.Errorf("Close took %s with a deadline of %s", elapsed, grace)
		}
		if err == nil || !strings.Contains(err.Error(), "handed back") {
			t.Errorf("Close: got %v, want an error saying work was handed back", err)
		}
	case <-time.After(10 * grace):
		t.Fatalf("Close has not returned %s after its deadline of %s", 9*grace, grace)
	}
	if tasks, instances, err := hubtest.Locked(cfg.EmbeddedFile); err != nil || tasks != 0 || instances != 0 {
		t.Errorf("after Close: %d work items and %d instances locked (%v), want none", tasks, instances, err)
	}

	finishesOnReopen(t, cfg, id)
}

// A page of the listing ends early once its payloads pass 8 MiB, with a
// token that leads on to the rest, so that instances with large inputs or
// outputs cannot make one answer of any size.
func TestListingPagesEndAtTheirSizeBound(t *testing.T) {
	ctx := context.Background()
	// No orchestrators registered: the instances stay as they were created.
	hub, err := embedded.Open(ctx, hubConfig(filepath.Join(t.TempDir(), "x.sqlite")), task.NewTaskRegistry(), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(ctx)
	big := strings.Repeat("x", 3<<20)
	var ids []api.InstanceID
	for range 5 {
		id, err := hub.Client.ScheduleNewOrchestration(ctx, "unregistered", api.WithInput(big))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		time.Sleep(2 * time.Millisecond) // distinct creation times, for the order checked below
	}
	var got []api.InstanceID
	q := taskhub.Query{PageSize: 100, FetchInput: true}
	for pages := 1; ; pages++ {
		page, err := hub.Client.ListInstances(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		// 3 MiB inputs: the page holds the one that passes 8 MiB, then ends.
		if want := min(3, 5-len(got)); len(page.Instances) != want {
			t.Errorf("page %d: %d instances, want %d", pages, len(page.Instances), want)
		}
		for _, md := range page.Instances {
			got = append(got, md.InstanceID)
		}
		if page.ContinuationToken == "" {
			break
		}
		q.ContinuationToken = page.ContinuationToken
	}
	slices.Reverse(ids)
	if !slices.Equal(got, ids) {
		t.Errorf("listed %v, want every instance once, newest first: %v", got, ids)
	}
	if page, err := hub.Client.ListInstances(ctx, taskhub.Query{PageSize: 100}); err != nil || len(page.Instances) != 5 || page.Instances[0].SerializedInput != "" {
		t.Errorf("without inputs all 5 fit one page, with no input: %d instances, %v", len(page.Instances), err)
	}
}
