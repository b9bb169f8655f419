package scheduler_test

import (
	"context"
	"flag"
	"syscall"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/rs/zerolog"

	"fanoutfanin/functions"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/scheduler"
)

var (
	benchItems     = flag.Int("fanout.items", 1000, "BenchmarkSchedulerFanOut: work items per fan-out")
	benchPartition = flag.Int("fanout.partition", config.DefaultPartitionSize, "BenchmarkSchedulerFanOut: FANOUT_PARTITION_SIZE")
)

// usage is this process's resource usage so far.
func usage(b *testing.B) syscall.Rusage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru
}

// BenchmarkSchedulerFanOut runs fan-outs of -fanout.items items on the
// gRPC path, the worker in this process against the upstream sidecar, and
// reports this process's CPU time per activity: the worker's and the
// orchestrator's, not the sidecar's (but this process also copies the
// sidecar's log, some 5 % of it). With -cpuprofile, the profile is the
// worker's alone. Also per activity: voluntary and involuntary context
// switches, orchestrator steps and the history events they replay. Run it
// with -benchtime=1x: each fan-out takes seconds. Flags of its own come
// after -args:
//
//	go test ./internal/taskhub/scheduler/ -run '^$' -bench SchedulerFanOut -benchtime=1x -cpuprofile cpu.out -args -fanout.items=2000
func BenchmarkSchedulerFanOut(b *testing.B) {
	e := engine(b)
	hub, err := scheduler.Open(onSidecar(b), e.Registry(), e.Sessions(), zerolog.Nop(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer hub.Close(context.Background())

	n := *benchItems
	plan := fanout.Plan{Count: n, PartitionSize: *benchPartition,
		ListBytes: config.DefaultMaxPayloadBytes * 3 / 4, StepBytes: config.DefaultMaxStepBytes * 3 / 4}
	ru0 := usage(b)
	b.ResetTimer()
	for b.Loop() {
		id, err := hub.Client.ScheduleNewOrchestration(context.Background(), functions.OrchestratorName, api.WithInput(plan))
		if err != nil {
			b.Fatal(err)
		}
		waitDone(b, hub.Client, id)
	}
	b.StopTimer()
	activities := float64(b.N * n)
	ru1 := usage(b)
	user := time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano())
	sys := time.Duration(ru1.Stime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(float64((user+sys).Microseconds())/activities, "cpu-µs/activity")
	b.ReportMetric(float64(sys.Microseconds())/activities, "sys-µs/activity")
	b.ReportMetric(float64(ru1.Nvcsw-ru0.Nvcsw)/activities, "vcsw/activity")
	b.ReportMetric(float64(ru1.Nivcsw-ru0.Nivcsw)/activities, "ivcsw/activity")
	st := e.Sessions().Stats()
	b.ReportMetric(float64(st.Steps)/activities, "steps/activity")
	b.ReportMetric(float64(st.Resumed)/float64(max(st.Steps, 1)), "resumed/step")
	b.ReportMetric(float64(st.Events)/activities, "events/activity")
}

// waitDone waits for an instance to complete, polling every 50 ms as the
// benchmark in internal/bench does, so that polling costs little.
func waitDone(b *testing.B, c taskhub.Client, id api.InstanceID) {
	for {
		md, err := c.FetchOrchestrationMetadata(context.Background(), id)
		if err != nil {
			b.Fatal(err)
		}
		if md.IsComplete() {
			if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
				b.Fatalf("instance %s: %v: %v", id, md.RuntimeStatus, md.FailureDetails)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
