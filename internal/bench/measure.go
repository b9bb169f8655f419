package main

// The measurements. Each starts its own processes on fresh data and stops
// them before it returns, whatever happens, so that one measurement never
// runs next to another or inherits its state.

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/backend/sqlite"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	_ "modernc.org/sqlite"

	"fanoutfanin/functions"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/logging"
	"fanoutfanin/internal/servers"
)

// bench holds what every measurement shares.
type bench struct {
	opts    options
	tmp     string // everything the run writes; removed at the end
	appRoot string // host.json, the function folders and the handler
	sidecar string // the durabletask-go sidecar binary, if built
	clkTck  int
	client  *http.Client
}

// fanOutResult is one fan-out run to Completed.
type fanOutResult struct {
	items      int
	partition  int // FANOUT_PARTITION_SIZE, 0 for the default
	wall       time.Duration
	peakRSS    int64    // handler's, bytes
	handlerCPU cpuUsage // during the fan-out
	sidecarCPU cpuUsage // during the fan-out; gRPC path only
	cpuBefore  cpuUsage // the handler's, just before the start
	batch      int      // items per activity, 0 for one
	actions    int      // work items the sidecar dispatched (gRPC path): orchestrator steps and activities
}

// perSecond is activities a second, 0 for a run that did not happen.
func (r fanOutResult) perSecond() float64 {
	if r.wall <= 0 {
		return 0
	}
	return float64(r.items) / r.wall.Seconds()
}

// actionsPerItem is the sidecar's dispatches per item.
func (r fanOutResult) actionsPerItem() float64 {
	if r.items == 0 {
		return 0
	}
	return float64(r.actions) / float64(r.items)
}

// cpuPerItem is the handler's CPU time per item.
func (r fanOutResult) cpuPerItem() time.Duration {
	if r.items == 0 {
		return 0
	}
	return r.handlerCPU.total() / time.Duration(r.items)
}

// embeddedSettings are the app settings of a handler on the embedded hub
// with its data in dataDir, no simulated work and room for a million items.
func embeddedSettings(dataDir string) map[string]string {
	return map[string]string{
		"DURABLE_TASK_SCHEDULER_CONNECTION_STRING": "",
		"FANOUT_EMBEDDED_DIR":                      dataDir,
		"FANOUT_WORK_MIN_DELAY":                    "0",
		"FANOUT_WORK_MAX_DELAY":                    "0",
		"FANOUT_LOG_LEVEL":                         "warn",
		"FANOUT_MAX_WORK_ITEMS":                    "1000000",
	}
}

// freshDir makes a new, empty directory for one measurement's data.
func (b *bench) freshDir(name string) (string, error) {
	return os.MkdirTemp(b.tmp, name+"-")
}

// embeddedFanOut runs one fan-out of n items in a fresh handler on a fresh
// embedded hub; partition, if not 0, sets FANOUT_PARTITION_SIZE.
func (b *bench) embeddedFanOut(ctx context.Context, n, partition int) (fanOutResult, error) {
	return b.embeddedBatches(ctx, n, partition, 0)
}

// embeddedBatches is embeddedFanOut with batch items per activity (0:
// one).
func (b *bench) embeddedBatches(ctx context.Context, n, partition, batch int) (fanOutResult, error) {
	dir, err := b.freshDir("embedded-" + strconv.Itoa(n))
	if err != nil {
		return fanOutResult{}, err
	}
	defer os.RemoveAll(dir) // a million items leave a large file behind
	settings := embeddedSettings(dir)
	if batch > 0 {
		settings["FANOUT_ITEMS_PER_ACTIVITY"] = strconv.Itoa(batch)
	}
	r, err := b.fanOutWith(ctx, settings, nil, n, partition)
	r.batch = batch
	return r, err
}

// fanOutWith runs one fan-out of n items in a fresh handler with settings,
// on sidecar sc if not nil; partition, if not 0, sets FANOUT_PARTITION_SIZE.
func (b *bench) fanOutWith(ctx context.Context, settings map[string]string, sc *servers.Process, n, partition int) (fanOutResult, error) {
	if partition != 0 {
		settings["FANOUT_PARTITION_SIZE"] = strconv.Itoa(partition)
	}
	h, err := startHandler(ctx, b.appRoot, settings)
	if err != nil {
		return fanOutResult{}, err
	}
	defer b.stopHandler(h)
	r, err := b.timedFanOut(ctx, h, sc, n, "")
	r.partition = partition
	return r, err
}

// timedFanOut starts a fan-out of n items on h (with traceparent, if not
// "") and waits for it to complete, timing it from just before the start
// request, and reads the handler's (and sidecar's, if any) CPU time around
// it and its peak RSS.
func (b *bench) timedFanOut(ctx context.Context, h *handler, sc *servers.Process, n int, traceparent string) (fanOutResult, error) {
	r := fanOutResult{items: n}
	h0, err := cpuTime(h.Pid(), b.clkTck)
	if err != nil {
		return r, err
	}
	r.cpuBefore = h0
	var s0 cpuUsage
	if sc != nil {
		if s0, err = cpuTime(sc.Pid(), b.clkTck); err != nil {
			return r, err
		}
	}
	begin := time.Now()
	s, _, err := startFanOut(ctx, b.client, h, n, traceparent)
	if err != nil {
		return r, err
	}
	if err := waitCompleted(ctx, b.client, h, s, n, b.opts.poll, b.opts.timeout); err != nil {
		return r, err
	}
	r.wall = time.Since(begin)
	h1, err := cpuTime(h.Pid(), b.clkTck)
	if err != nil {
		return r, err
	}
	r.handlerCPU = h1.minus(h0)
	if sc != nil {
		s1, err := cpuTime(sc.Pid(), b.clkTck)
		if err != nil {
			return r, err
		}
		r.sidecarCPU = s1.minus(s0)
	}
	r.peakRSS, err = peakRSS(h.Pid())
	return r, err
}

// stopHandler stops h and forgets its connections, which its port's next
// owner must not inherit.
func (b *bench) stopHandler(h *handler) {
	h.stop()
	b.client.CloseIdleConnections()
}

// latencyResult is many small starts from concurrent clients.
type latencyResult struct {
	starts, clients, items int
	p50, p99, max          time.Duration
	allCompleted           time.Duration // first start to the last completion
}

// startLatency sends starts requests of items items each from clients
// concurrent clients to one handler, then waits for every orchestration
// to complete.
func (b *bench) startLatency(ctx context.Context, starts, clients, items int) (latencyResult, error) {
	r := latencyResult{starts: starts, clients: clients, items: items}
	dir, err := b.freshDir("latency")
	if err != nil {
		return r, err
	}
	h, err := startHandler(ctx, b.appRoot, embeddedSettings(dir))
	if err != nil {
		return r, err
	}
	defer b.stopHandler(h)

	begin := time.Now()
	instances, latencies, err := b.concurrentStarts(ctx, h, starts, clients, items)
	if err != nil {
		return r, err
	}
	// One at a time: by the time the first has completed most others have
	// too, and polling all 500 at once would load the handler measured.
	for _, s := range instances {
		if err := waitCompleted(ctx, b.client, h, s, items, b.opts.poll, b.opts.timeout); err != nil {
			return r, err
		}
	}
	r.allCompleted = time.Since(begin)
	slices.Sort(latencies)
	r.p50, r.p99, r.max = percentile(latencies, 50), percentile(latencies, 99), latencies[len(latencies)-1]
	return r, nil
}

// concurrentStarts sends n start requests from clients goroutines, each
// sending its next as soon as its last is answered. The first error stops
// them all.
func (b *bench) concurrentStarts(ctx context.Context, h *handler, n, clients, items int) ([]started, []time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	instances := make([]started, n)
	latencies := make([]time.Duration, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for i := range next {
				s, took, err := startFanOut(ctx, b.client, h, items, "")
				if err != nil {
					cancel(err)
					return
				}
				instances[i], latencies[i] = s, took
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, nil, err
	}
	return instances, latencies, nil
}

// percentile is the nearest-rank p-th percentile of sorted d.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 × n)
	return sorted[max(rank, 1)-1]
}

// baseline runs the same fan-out of n items as one orchestration on
// durabletask-go's SQLite backend with the library's defaults, in this
// process, as internal/taskhub's BenchmarkFanOut does: a plain file path
// (rollback journal, full sync), the library's workers with no options
// (one work item at a time each) and its polling loop.
func (b *bench) baseline(ctx context.Context, n int) (time.Duration, error) {
	dir, err := b.freshDir("baseline")
	if err != nil {
		return 0, err
	}
	log := logging.DurableTask{Log: zerolog.Nop()}
	be := sqlite.NewSqliteBackend(sqlite.NewSqliteOptions(filepath.Join(dir, "defaults.sqlite")), log)
	engine := fanout.New(fanout.Options{Log: zerolog.Nop()})
	if err := fanout.Register(engine, functions.Sample(functions.SampleSettings{})); err != nil {
		return 0, err
	}
	exec := task.NewTaskExecutor(engine.Registry())
	w := backend.NewTaskHubWorker(be, backend.NewOrchestrationWorker(be, exec, log), backend.NewActivityTaskWorker(be, exec, log), log)
	if err := w.Start(ctx); err != nil {
		return 0, fmt.Errorf("starting durabletask-go's worker: %w", err)
	}
	defer w.Shutdown(context.Background())
	c := backend.NewTaskHubClient(be)

	begin := time.Now()
	id, err := c.ScheduleNewOrchestration(ctx, functions.OrchestratorName, api.WithInput(fanout.Plan{Count: n, PartitionSize: n}))
	if err != nil {
		return 0, fmt.Errorf("baseline: %w", err)
	}
	// Polled as the handler's status is, so both are timed alike.
	deadline := time.Now().Add(b.opts.timeout)
	for {
		md, err := c.FetchOrchestrationMetadata(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("baseline: %w", err)
		}
		if md.IsComplete() {
			if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
				return 0, fmt.Errorf("baseline: instance %s ended %s: %v", id, md.RuntimeStatus, md.FailureDetails)
			}
			took := time.Since(begin)
			return took, checkSummary(string(id), []byte(md.SerializedOutput), n)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("baseline: instance %s not complete after %s", id, b.opts.timeout)
		}
		if err := sleep(ctx, b.opts.poll); err != nil {
			return 0, err
		}
	}
}

// grpcFanOut runs a fan-out of n items on the scheduler path: the handler
// talking gRPC to the upstream durabletask-go sidecar on a fresh file;
// partition, if not 0, sets FANOUT_PARTITION_SIZE.
func (b *bench) grpcFanOut(ctx context.Context, n, partition, batch int) (fanOutResult, error) {
	dir, err := b.freshDir("grpc")
	if err != nil {
		return fanOutResult{}, err
	}
	sc, err := servers.StartSidecar(b.sidecar, 0, filepath.Join(dir, "sidecar.sqlite"))
	if err != nil {
		return fanOutResult{}, err
	}
	defer sc.Stop()
	addr := sc.Addr
	settings := embeddedSettings(dir)
	settings["DURABLE_TASK_SCHEDULER_CONNECTION_STRING"] = "Endpoint=http://" + addr + ";Authentication=None"
	if batch > 0 {
		settings["FANOUT_ITEMS_PER_ACTIVITY"] = strconv.Itoa(batch)
	}
	r, err := b.fanOutWith(ctx, settings, sc, n, partition)
	r.batch = batch
	if err == nil {
		err = sc.Running() // the sidecar must have lived through it
	}
	if err == nil {
		r.actions, err = dispatched(filepath.Join(dir, "sidecar.sqlite"))
	}
	return r, err
}

// dispatched counts the work items the sidecar handed out, from its file:
// each orchestrator step begins with an OrchestratorStarted event, and each
// activity is a TaskScheduled event.
func dispatched(file string) (int, error) {
	db, err := sql.Open("sqlite", "file:"+file+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return 0, err
	}
	defer db.Close()
	rows, err := db.Query("SELECT EventPayload FROM History")
	if err != nil {
		return 0, fmt.Errorf("counting the sidecar's work items: %w", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			return 0, err
		}
		var e backend.HistoryEvent
		if err := proto.Unmarshal(payload, &e); err != nil {
			return 0, err
		}
		if e.GetOrchestratorStarted() != nil || e.GetTaskScheduled() != nil {
			n++
		}
	}
	return n, rows.Err()
}
