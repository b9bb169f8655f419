// Package embedded is the task hub that needs nothing installed:
// durabletask-go's SQLite backend in a file, which several processes may
// share. Its hot paths are our own (hubstore.go): work items taken in
// batches under locks that belong to one item, renewed while they run, and
// results written in batches; wake-ups (poll.go) replace most polling. The
// library's backend does the rest: the schema, histories, the client calls.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/backend/sqlite"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/logging"
	"fanoutfanin/internal/taskhub"
)

// embeddedDSN opens the SQLite file with a write-ahead log and normal sync:
// on a 1,000-item fan-out that is over ten times faster than the library's
// rollback journal with full sync, and a committed transaction still survives
// the process being killed. busy_timeout lets several processes share the
// file; it comes first because the pragmas run in order and switching to the
// write-ahead log takes a lock, which processes starting together contend for.
// Every transaction on it writes, some after a read (a purge, say): begun as
// a read, such a transaction fails at once, without waiting, when another
// connection wrote first, so each begins as a write and waits its turn.
func embeddedDSN(file string) string {
	return "file:" + file + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

// Open opens the embedded task hub in the file cfg names, creating it if
// need be, and starts the workers that run the orchestrators and activities
// in registry, recording their spans with tracer (nil: none). Several
// processes may open the same file.
func Open(ctx context.Context, cfg config.TaskHub, registry *task.TaskRegistry, log zerolog.Logger, tracer trace.Tracer) (*taskhub.Hub, error) {
	return open(ctx, cfg, registry, log, tracer, polling{minPollInterval, maxPollInterval})
}

// open opens the embedded hub, its workers looking for work no wake-up
// announced as often as every says.
func open(ctx context.Context, cfg config.TaskHub, registry *task.TaskRegistry, log zerolog.Logger, tracer trace.Tracer, every polling) (*taskhub.Hub, error) {
	if err := os.MkdirAll(filepath.Dir(cfg.EmbeddedFile), 0o755); err != nil {
		return nil, fmt.Errorf("creating the embedded task hub's folder (set %s to a writable folder, or configure the Durable Task Scheduler): %w", config.SettingEmbeddedDir, err)
	}
	dtLog := logging.DurableTask{Log: log.With().Str("component", "durabletask").Logger()}
	opts := sqlite.NewSqliteOptions(embeddedDSN(cfg.EmbeddedFile))
	opts.OrchestrationLockTimeout = cfg.LockTimeout
	opts.ActivityLockTimeout = cfg.LockTimeout
	// The work in flight has until the shutdown grace period ends (see
	// hubBackend); polling, below, stops first.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	wake := newWakeups()
	be := hubBackend{Backend: sqlite.NewSqliteBackend(opts, dtLog), wake: wake, work: workCtx, log: log}
	if err := createTaskHubShared(ctx, be); err != nil {
		stopWork()
		return nil, fmt.Errorf("opening the embedded task hub %s: %w", cfg.EmbeddedFile, err)
	}
	store, err := openHubStore(embeddedDSN(cfg.EmbeddedFile), cfg.LockTimeout, cfg.MaxConcurrentActivities, log)
	if err != nil {
		stopWork()
		return nil, fmt.Errorf("opening the embedded task hub %s: %w", cfg.EmbeddedFile, err)
	}
	be.store = store
	lister, err := openInstanceLister(cfg.EmbeddedFile)
	if err != nil {
		stopWork()
		store.close(ctx)
		return nil, fmt.Errorf("opening the embedded task hub %s: %w", cfg.EmbeddedFile, err)
	}

	exec := taskhub.NewExecutor(task.NewTaskExecutor(registry), log, workCtx, tracer, nil)
	orchestrations := backend.NewOrchestrationWorker(be, exec, dtLog, backend.WithMaxParallelism(int32(cfg.MaxConcurrentOrchestrations)))
	activities := backend.NewActivityTaskWorker(be, exec, dtLog, backend.WithMaxParallelism(int32(cfg.MaxConcurrentActivities)))
	pollCtx, stopPolling := context.WithCancel(context.WithoutCancel(ctx))
	var loops sync.WaitGroup
	for _, w := range []struct {
		worker backend.TaskWorker
		wake   <-chan struct{}
		now    <-chan struct{}
		settle time.Duration
	}{{orchestrations, wake.orchestrations, wake.newInstances, orchestrationSettle}, {activities, wake.activities, nil, 0}} {
		loops.Add(1)
		go func() {
			defer loops.Done()
			poll(pollCtx, w.worker, w.wake, w.now, w.settle, every)
		}()
	}

	log.Info().Str("backend", "embedded").Str("taskHub", cfg.Name).Str("file", cfg.EmbeddedFile).
		Int("maxConcurrentActivities", cfg.MaxConcurrentActivities).
		Int("maxConcurrentOrchestrations", cfg.MaxConcurrentOrchestrations).
		Str("lockTimeout", cfg.LockTimeout.String()).
		Msg("task hub open")

	// Close returns by ctx's deadline whatever the work does: until shortly
	// before it, the work in flight may finish; then what still runs is
	// cancelled and handed back, and the write-ahead log is checkpointed into
	// the main file, so that the file alone holds every instance.
	closeHub := func(ctx context.Context) error {
		stopPolling()
		stopped := make(chan struct{})
		go func() {
			loops.Wait() // no new items from here on
			orchestrations.StopAndDrain()
			activities.StopAndDrain()
			close(stopped)
		}()
		defer stopWork()
		handedBack, late := taskhub.Drain(ctx, stopped, stopWork)
		if late {
			// Say, the file held by another process's write: what this
			// process still holds stays locked until its locks expire.
			return fmt.Errorf("the shutdown grace period ended before the work still running could be handed back; it runs again once its lock expires (%s): %w", cfg.LockTimeout, ctx.Err())
		}
		type result struct {
			checkpointed bool
			err          error
		}
		closed := make(chan result, 1)
		go func() {
			lister.close()
			checkpointed, err := store.close(ctx)
			closed <- result{checkpointed, err}
		}()
		select {
		case r := <-closed:
			if r.err == nil && !r.checkpointed {
				// Not an error: the last process to stop checkpoints the rest.
				log.Info().Str("file", cfg.EmbeddedFile).Msg("the write-ahead log was not fully checkpointed into the hub file: other processes are using it")
			}
			return errors.Join(handedBack, r.err)
		case <-ctx.Done():
			// SQLite's wait for a lock another process holds may outlast ctx.
			return errors.Join(handedBack, fmt.Errorf("closing the hub file: %w", ctx.Err()))
		}
	}
	return taskhub.NewHub(embeddedClient{c: backend.NewTaskHubClient(clientBackend{be}), be: be, lister: lister}, taskhub.Bounds{}, closeHub), nil
}

// createTaskHubShared is createTaskHub, tried again for up to
// openBusyFor while another process holds the file: handlers starting
// together on one file race to switch it to its write-ahead log and create
// the schema, and SQLite answers some of those races with SQLITE_BUSY at
// once, without waiting its busy_timeout.
func createTaskHubShared(ctx context.Context, be backend.Backend) error {
	deadline := time.Now().Add(openBusyFor)
	for {
		err := createTaskHub(ctx, be)
		if err == nil || !strings.Contains(err.Error(), "SQLITE_BUSY") || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(20+rand.IntN(80)) * time.Millisecond):
		}
	}
}

// openBusyFor bounds how long opening the embedded hub waits for other
// processes opening it too.
const openBusyFor = 10 * time.Second

// createTaskHub creates the schema. The SQLite backend panics, rather than
// failing, when it cannot open or write the file.
func createTaskHub(ctx context.Context, be backend.Backend) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v", p)
		}
	}()
	if err := be.CreateTaskHub(ctx); err != nil && !errors.Is(err, backend.ErrTaskHubExists) {
		return err
	}
	return be.Start(ctx)
}

// embeddedClient fits the in-process client to Client. It always returns
// payloads, so the fetch options have nothing to change.
type embeddedClient struct {
	c      backend.TaskHubClient
	be     backend.Backend
	lister *instanceLister
}

func (e embeddedClient) ScheduleNewOrchestration(ctx context.Context, orchestrator string, opts ...api.NewOrchestrationOptions) (api.InstanceID, error) {
	return e.c.ScheduleNewOrchestration(ctx, orchestrator, opts...)
}

func (e embeddedClient) FetchOrchestrationMetadata(ctx context.Context, id api.InstanceID, _ ...api.FetchOrchestrationMetadataOptions) (*api.OrchestrationMetadata, error) {
	return e.c.FetchOrchestrationMetadata(ctx, id)
}

func (e embeddedClient) RaiseEvent(ctx context.Context, id api.InstanceID, eventName string, opts ...api.RaiseEventOptions) error {
	return e.c.RaiseEvent(ctx, id, eventName, opts...)
}
