package main

// The cost of tracing: the same fan-out with tracing off and on, in turn.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"fanoutfanin/internal/servers"
)

// tracingItems is the fan-out the cost of tracing is measured on, and
// tracingRounds how many times each of off and on runs.
const (
	tracingItems  = 10_000
	tracingRounds = 2
)

// tracingResult is fan-outs with tracing off and on, alternately.
type tracingResult struct {
	off, on []fanOutResult
	spans   []int // spans Jaeger received of each traced fan-out
}

// tracingCost runs tracingItems items tracingRounds times with tracing off
// and on in turn, each in a fresh handler, the traced ones exporting over
// OTLP/HTTP to a local Jaeger with a queue that holds every span. A traced
// run lasts until Jaeger holds all of its spans, and its CPU counts the
// export.
func (b *bench) tracingCost(ctx context.Context) (tracingResult, error) {
	var r tracingResult
	progress("building Jaeger (minutes, the first time)")
	bin, err := servers.BuildJaeger()
	if err != nil {
		return r, err
	}
	dir, err := b.freshDir("jaeger")
	if err != nil {
		return r, err
	}
	j, err := servers.StartJaeger(bin, dir)
	if err != nil {
		return r, err
	}
	defer j.Stop()
	for round := range tracingRounds {
		progress("tracing off, round %d: %s items", round+1, thousands(tracingItems))
		off, err := b.embeddedFanOut(ctx, tracingItems, 0)
		if err != nil {
			return r, err
		}
		r.off = append(r.off, off)

		progress("tracing on, round %d: %s items", round+1, thousands(tracingItems))
		on, spans, err := b.tracedFanOut(ctx, j)
		if err != nil {
			return r, err
		}
		r.on, r.spans = append(r.on, on), append(r.spans, spans)
		progress("  off %s, on %s; %s spans", seconds(off.wall), seconds(on.wall), thousands(spans))
	}
	return r, nil
}

// tracedFanOut runs tracingItems items with tracing on, started with a
// traceparent of its own, and waits until Jaeger's count of the trace's
// spans stops growing.
func (b *bench) tracedFanOut(ctx context.Context, j *servers.Jaeger) (fanOutResult, int, error) {
	dir, err := b.freshDir("traced")
	if err != nil {
		return fanOutResult{}, 0, err
	}
	settings := embeddedSettings(dir)
	settings["OTEL_EXPORTER_OTLP_ENDPOINT"] = j.OTLPHTTP
	settings["OTEL_SERVICE_NAME"] = "fanout-bench"
	settings["OTEL_BSP_MAX_QUEUE_SIZE"] = "1000000"
	h, err := startHandler(ctx, b.appRoot, settings)
	if err != nil {
		return fanOutResult{}, 0, err
	}
	defer b.stopHandler(h)
	trace := make([]byte, 16)
	rand.Read(trace)
	id := hex.EncodeToString(trace)
	r, err := b.timedFanOut(ctx, h, nil, tracingItems, "00-"+id+"-00f067aa0ba902b7-01")
	if err != nil {
		return r, 0, err
	}
	// The spans still buffered go out within the batch delay (5 s); the
	// run ends once Jaeger holds them all, and its CPU counts that.
	spans, last, deadline := 0, time.Now(), time.Now().Add(time.Minute)
	for time.Since(last) < 6*time.Second && time.Now().Before(deadline) {
		got, err := j.Trace(ctx, id)
		if err != nil {
			return r, 0, err
		}
		if len(got) > spans {
			spans, last = len(got), time.Now()
		}
		time.Sleep(250 * time.Millisecond)
	}
	c, err := cpuTime(h.Pid(), b.clkTck)
	if err != nil {
		return r, 0, err
	}
	r.handlerCPU = c.minus(r.cpuBefore)
	if spans < tracingItems {
		return r, spans, fmt.Errorf("a traced fan-out of %d items: Jaeger holds %d spans", tracingItems, spans)
	}
	return r, spans, nil
}

func mean(rs []fanOutResult, of func(fanOutResult) time.Duration) time.Duration {
	var sum time.Duration
	for _, r := range rs {
		sum += of(r)
	}
	return sum / time.Duration(max(1, len(rs)))
}

func cpuPerItem(r fanOutResult) time.Duration { return r.cpuPerItem() }
func wall(r fanOutResult) time.Duration       { return r.wall }

// extraCPUPerItem is the mean handler CPU per item tracing adds.
func (t tracingResult) extraCPUPerItem() time.Duration {
	return mean(t.on, cpuPerItem) - mean(t.off, cpuPerItem)
}

func (t tracingResult) extraCPUPercent() float64 {
	return 100 * float64(t.extraCPUPerItem()) / float64(max(1, mean(t.off, cpuPerItem)))
}

func (t tracingResult) extraWallPercent() float64 {
	off := mean(t.off, wall)
	return 100 * float64(mean(t.on, wall)-off) / float64(max(1, off))
}
