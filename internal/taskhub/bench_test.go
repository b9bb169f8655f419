package taskhub_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/backend/sqlite"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/logging"
	"fanoutfanin/internal/taskhub"
)

// BenchmarkFanOut runs whole fan-outs (no simulated delay, so the hub itself
// is measured) on the embedded hub as this app opens it, and on the same
// SQLite backend with durabletask-go's defaults for comparison.
func BenchmarkFanOut(b *testing.B) {
	for _, items := range []int{100, 1000} {
		b.Run(fmt.Sprintf("items=%d/embedded", items), func(b *testing.B) {
			hub, err := taskhub.Open(context.Background(), hubConfig(filepath.Join(b.TempDir(), "bench.sqlite")), registry(b), zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			defer hub.Close(context.Background())
			runFanOuts(b, hub.Client, items)
		})
		b.Run(fmt.Sprintf("items=%d/library-defaults", items), func(b *testing.B) {
			runFanOuts(b, libraryDefaults(b), items)
		})
	}
}

func runFanOuts(b *testing.B, c taskhub.Client, items int) {
	input := make([]string, items)
	for i := range input {
		input[i] = fmt.Sprintf("Task%d", i+1)
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		id, err := c.ScheduleNewOrchestration(context.Background(), "fan_out_fan_in_orchestrator", api.WithInput(input))
		if err != nil {
			b.Fatal(err)
		}
		waitComplete(b, c, id, 5*time.Minute)
	}
	b.ReportMetric(float64(items*b.N)/time.Since(start).Seconds(), "items/s")
}

// libraryDefaults opens the SQLite backend as durabletask-go's own sidecar
// does: plain file path (rollback journal, full sync), one work item at a
// time per worker, the library's poll loop.
func libraryDefaults(b *testing.B) taskhub.Client {
	log := logging.DurableTask{Log: zerolog.Nop()}
	be := sqlite.NewSqliteBackend(sqlite.NewSqliteOptions(filepath.Join(b.TempDir(), "defaults.sqlite")), log)
	exec := task.NewTaskExecutor(registry(b))
	w := backend.NewTaskHubWorker(be, backend.NewOrchestrationWorker(be, exec, log), backend.NewActivityTaskWorker(be, exec, log), log)
	if err := w.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { w.Shutdown(context.Background()) })
	return defaultsClient{backend.NewTaskHubClient(be)}
}

type defaultsClient struct{ c backend.TaskHubClient }

func (d defaultsClient) ScheduleNewOrchestration(ctx context.Context, name string, opts ...api.NewOrchestrationOptions) (api.InstanceID, error) {
	return d.c.ScheduleNewOrchestration(ctx, name, opts...)
}

func (d defaultsClient) FetchOrchestrationMetadata(ctx context.Context, id api.InstanceID, _ ...api.FetchOrchestrationMetadataOptions) (*api.OrchestrationMetadata, error) {
	return d.c.FetchOrchestrationMetadata(ctx, id)
}

func (d defaultsClient) RaiseEvent(ctx context.Context, id api.InstanceID, name string, opts ...api.RaiseEventOptions) error {
	return d.c.RaiseEvent(ctx, id, name, opts...)
}
