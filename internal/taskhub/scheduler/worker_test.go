package scheduler

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/dtstest"
	"fanoutfanin/internal/taskhub"
)

// startWorker runs a worker against srv, with the given silent timeout,
// until the test ends.
func startWorker(t *testing.T, srv *dtstest.Server, silent time.Duration) {
	t.Helper()
	s := &config.Scheduler{Endpoint: "http://" + srv.Addr(), Host: "127.0.0.1", Address: srv.Addr(), Auth: config.AuthNone}
	conn, err := dial(s, nil, "taskhub", "test", "x-user-agent", userAgent(roleWorker), "workerid", newWorkerID())
	if err != nil {
		t.Fatal(err)
	}
	work, stopWork := context.WithCancel(context.Background())
	exec := taskhub.NewExecutor(task.NewTaskExecutor(task.NewTaskRegistry()), zerolog.Nop(), work, nil, nil)
	w := newGRPCWorker(conn, exec, stopWork, zerolog.Nop(), config.TaskHub{Name: "test", Scheduler: s, MaxConcurrentOrchestrations: 2, MaxConcurrentActivities: 2, MaxPayloadBytes: config.DefaultMaxPayloadBytes, MaxStepBytes: config.DefaultMaxStepBytes})
	w.silentTimeout = silent
	w.reconnectBase = 10 * time.Millisecond
	w.start()
	t.Cleanup(func() {
		w.stop(context.Background())
		conn.Close()
	})
}

// A stream on which nothing arrives for the silent timeout is taken for
// dead and replaced; health pings count as something.
func TestSilentStreamIsReplacedAndPingsKeepItAlive(t *testing.T) {
	upstream, _ := dtstest.StartSidecar(t, 0, filepath.Join(t.TempDir(), "sidecar.sqlite"))
	start := func(t *testing.T, ping time.Duration) *dtstest.Server {
		srv, err := dtstest.Start(dtstest.Options{Upstream: upstream, TaskHub: "test", PingInterval: ping})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		// A second: far above the ping interval, so that a loaded machine
		// pausing the worker for a moment does not end a pinged stream.
		startWorker(t, srv, time.Second)
		return srv
	}
	t.Run("no pings", func(t *testing.T) {
		srv := start(t, 0)
		deadline := time.Now().Add(10 * time.Second)
		for len(srv.Streams()) < 3 {
			if time.Now().After(deadline) {
				t.Fatalf("work-item streams opened in 10 s with a 1 s silent timeout: %d, want 3 or more", len(srv.Streams()))
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("pings", func(t *testing.T) {
		srv := start(t, 40*time.Millisecond)
		time.Sleep(3 * time.Second)
		if n := len(srv.Streams()); n != 1 {
			t.Errorf("work-item streams opened in 3 s with pings every 40 ms and a 1 s silent timeout: %d, want 1", n)
		}
		for _, v := range srv.Violations() {
			t.Errorf("protocol violation: %s", v)
		}
	})
}

// activityItem is an activity work item as a backend sends it.
func activityItem(instanceID string, taskID int32, name string) proto.Message {
	item := newMessage("WorkItem")
	req := fieldsOf(item).mutable("activityRequest").set("name", name).set("taskId", taskID)
	req.mutable("orchestrationInstance").set("instanceId", instanceID)
	return item
}

// The worker runs no more activities at once than its limit, whatever the
// backend sends it, and runs every one.
func TestWorkerHoldsItsActivityLimit(t *testing.T) {
	upstream, _ := dtstest.StartSidecar(t, 0, filepath.Join(t.TempDir(), "sidecar.sqlite"))
	srv, err := dtstest.Start(dtstest.Options{Upstream: upstream, TaskHub: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	s := &config.Scheduler{Endpoint: "http://" + srv.Addr(), Host: "127.0.0.1", Address: srv.Addr(), Auth: config.AuthNone}
	conn, err := dial(s, nil, "taskhub", "test", "x-user-agent", userAgent(roleWorker), "workerid", newWorkerID())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	var mu sync.Mutex
	running, most, ran := 0, 0, 0
	r := task.NewTaskRegistry()
	r.AddActivityN("slow", func(task.ActivityContext) (any, error) {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		running--
		ran++
		mu.Unlock()
		return nil, nil
	})
	work, stopWork := context.WithCancel(context.Background())
	exec := taskhub.NewExecutor(task.NewTaskExecutor(r), zerolog.Nop(), work, nil, nil)
	w := newGRPCWorker(conn, exec, stopWork, zerolog.Nop(), config.TaskHub{Name: "test", Scheduler: s, MaxConcurrentOrchestrations: 1, MaxConcurrentActivities: 2, MaxPayloadBytes: config.DefaultMaxPayloadBytes, MaxStepBytes: config.DefaultMaxStepBytes})
	for i := range 10 {
		w.dispatch(activityItem("instance", int32(i), "slow"), encodedHistory{})
	}
	w.inflight.Wait()
	if most != 2 || ran != 10 {
		t.Errorf("ran %d activities, at most %d at once; want 10, at most 2", ran, most)
	}
}
