package main

// The report: the machine, a Markdown table per measurement, and the
// targets next to the results.

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// The targets the results are held to.
const (
	targetPerSecond10k = 5000             // embedded, 10,000 items: activities/s, at least
	targetWall100k     = 25 * time.Second // embedded, 100,000 items: at most
	targetRSS100k      = 150_000_000      // embedded, 100,000 items: peak RSS in bytes, at most
	targetSpeedUp      = 30               // 1,000 items against the library defaults: at least
	targetStartP99     = 50 * time.Millisecond
	// The gRPC path, 10,000 items: handler CPU per item, at most, with
	// batches of 100 and with one item per activity; and dispatches per
	// item with batches of 100.
	targetGRPCBatched    = 100 * time.Microsecond
	targetGRPCOne        = 600 * time.Microsecond
	targetGRPCActions    = 0.03
	targetGRPC100kWall   = 60 * time.Second // 100,000 items in batches of 100 on the sidecar
	targetEmbedded1MWall = 30 * time.Second // 1,000,000 items in batches of 100
)

// results is everything measured; what was not measured is zero or nil.
type results struct {
	fanOuts    []fanOutResult // embedded, default partition size
	latency    *latencyResult
	baseline   time.Duration  // library defaults, baselineItems items
	grpc       []fanOutResult // scheduler path, on the sidecar
	partitions []fanOutResult // embedded, 100,000 items per FANOUT_PARTITION_SIZE
	tracing    *tracingResult
	batches    []fanOutResult // embedded, embeddedBatch items per activity
	total      time.Duration  // the whole run
}

// fanOut returns the embedded result for n items, if measured.
func (r results) fanOut(n int) (fanOutResult, bool) {
	for _, f := range r.fanOuts {
		if f.items == n {
			return f, true
		}
	}
	return fanOutResult{}, false
}

// grpcRun returns the gRPC run of n items with batch items per activity
// (1: one), if measured.
func (r results) grpcRun(n, batch int) (fanOutResult, bool) {
	for _, g := range r.grpc {
		if g.items == n && max(g.batch, 1) == batch {
			return g, true
		}
	}
	return fanOutResult{}, false
}

// batched returns the embedded batched run of n items, if measured.
func (r results) batched(n int) (fanOutResult, bool) {
	for _, f := range r.batches {
		if f.items == n {
			return f, true
		}
	}
	return fanOutResult{}, false
}

// speedUp is how many times faster the handler ran baselineItems items than
// the library defaults, or 0 if either was not measured.
func (r results) speedUp() float64 {
	f, ok := r.fanOut(baselineItems)
	if !ok || r.baseline == 0 {
		return 0
	}
	return r.baseline.Seconds() / f.wall.Seconds()
}

// machine describes where the benchmark ran.
type machine struct {
	cpu       string
	nproc     string // what nproc says: the CPUs this process may use
	numCPU    int
	memory    int64 // bytes
	date      time.Time
	goVersion string
}

func describeMachine() machine {
	m := machine{cpu: "unknown", nproc: "?", numCPU: runtime.NumCPU(), date: time.Now().UTC(),
		goVersion: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("nproc").Output(); err == nil {
		m.nproc = strings.TrimSpace(string(out))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				m.memory = kb << 10
			}
		}
	}
	return m
}

// render writes the whole report as Markdown.
func render(m machine, r results, opts options) string {
	var w strings.Builder
	w.WriteString("# Benchmarks\n\n")
	w.WriteString("Whole fan-out/fan-in orchestrations with no simulated work (`FANOUT_WORK_MIN_DELAY` and\n" +
		"`FANOUT_WORK_MAX_DELAY` are 0), so what is measured is the task hub and the handler themselves. Each\n" +
		"measurement drives the real `handler` binary over HTTP as a user would, in a fresh process on fresh\n" +
		"data: `POST /api/fan_out_fan_in` with `{\"count\": N}`, then `GET /api/status/<id>` every " + millis(opts.poll) + "\n" +
		"until `Completed`, checking that the summary counts every item. Times run from just before the start\n" +
		"request to the status that says `Completed`. The baseline is durabletask-go's SQLite backend with the\n" +
		"library's defaults running the same orchestration in process.\n\n")
	fmt.Fprintf(&w, "Written by `make bench` on %s in %s: %s, %s cores (`nproc`; Go sees %d), %.0f GiB memory, %s.\n\n",
		m.date.Format("2006-01-02 15:04 UTC"), minutes(r.total), m.cpu, m.nproc, m.numCPU, float64(m.memory)/(1<<30), m.goVersion)

	if len(r.fanOuts) > 0 {
		w.WriteString("## Fan-outs on the embedded task hub\n\n")
		w.WriteString("One orchestration of N items, each N in a fresh handler (default `FANOUT_PARTITION_SIZE`). Peak RSS is the\n" +
			"handler's `VmHWM` at the end; CPU is the handler's user + system time during the fan-out.\n\n")
		rows := [][]string{}
		for _, f := range r.fanOuts {
			rows = append(rows, []string{thousands(f.items), seconds(f.wall), thousands(int(f.perSecond())), megabytes(f.peakRSS), seconds(f.handlerCPU.total())})
		}
		table(&w, []string{"Items", "Wall time", "Activities/s", "Peak RSS", "Handler CPU"}, rows)
	}

	if l := r.latency; l != nil {
		w.WriteString("## Start latency\n\n")
		fmt.Fprintf(&w, "%s start requests of %s items each (`{\"count\": %d}`) from %d concurrent clients (keep-alive connections)\n"+
			"to one handler; latency is from sending a request to having read its 202. \"All completed\" runs from the\n"+
			"first start to the last of the %s orchestrations completed.\n\n", thousands(l.starts), thousands(l.items), l.items, l.clients, thousands(l.starts))
		table(&w, []string{"Starts", "Clients", "p50", "p99", "Max", "All completed"},
			[][]string{{thousands(l.starts), strconv.Itoa(l.clients), millis(l.p50), millis(l.p99), millis(l.max), seconds(l.allCompleted)}})
	}

	if r.baseline != 0 {
		w.WriteString("## Against durabletask-go's defaults\n\n")
		fmt.Fprintf(&w, "The same orchestration, %s items in one orchestration (`fanout.Plan{Count: %d, PartitionSize: %d}`), on\n"+
			"durabletask-go's SQLite backend opened as the library's own sidecar does (plain file path, workers with no\n"+
			"options, the library's polling), in process and polled every %s.\n\n", thousands(baselineItems), baselineItems, baselineItems, millis(opts.poll))
		rows := [][]string{{"durabletask-go SQLite, library defaults", seconds(r.baseline), thousands(int(baselineItems / r.baseline.Seconds())), "×1"}}
		if f, ok := r.fanOut(baselineItems); ok {
			rows = append(rows, []string{"handler, embedded task hub", seconds(f.wall), thousands(int(f.perSecond())), fmt.Sprintf("×%.1f faster", r.speedUp())})
		}
		table(&w, []string{"Run (" + thousands(baselineItems) + " items)", "Wall time", "Activities/s", "Speed-up"}, rows)
	}

	if len(r.grpc) > 0 {
		w.WriteString("## gRPC path (the scheduler worker, on the durabletask-go sidecar)\n\n")
		w.WriteString("The handler with `DURABLE_TASK_SCHEDULER_CONNECTION_STRING=Endpoint=http://127.0.0.1:<port>;Authentication=None`,\n" +
			"talking to the upstream durabletask-go v0.6.0 sidecar (`-db` a fresh file), which dispatches one work item at a\n" +
			"time, so the sidecar bounds the wall time. CPU is user + system time (utime + stime in /proc) during the\n" +
			"fan-out, from just before the start request to `Completed`. Dispatches are the work items the sidecar handed\n" +
			"out (orchestrator steps and activities, counted in its file afterwards): what the Durable Task Scheduler\n" +
			"bills and throttles as actions.\n\n")
		rows := [][]string{}
		for _, g := range r.grpc {
			partition := "default"
			if g.partition != 0 {
				partition = thousands(g.partition)
			}
			rows = append(rows, []string{thousands(g.items), strconv.Itoa(max(g.batch, 1)), partition, seconds(g.wall), thousands(int(g.perSecond())),
				cpu(g.handlerCPU), micros(g.cpuPerItem()), thousands(g.actions), fmt.Sprintf("%.3f", g.actionsPerItem()), cpu(g.sidecarCPU), megabytes(g.peakRSS)})
		}
		table(&w, []string{"Items", "Items per activity", "FANOUT_PARTITION_SIZE", "Wall time", "Items/s", "Handler CPU (user + sys)", "Handler CPU / item", "Dispatches", "Dispatches / item", "Sidecar CPU (user + sys)", "Handler peak RSS"}, rows)
	}

	if len(r.batches) > 0 {
		w.WriteString("## Items per activity on the embedded task hub\n\n")
		fmt.Fprintf(&w, "The fan-outs above with `FANOUT_ITEMS_PER_ACTIVITY=%d`, each in a fresh handler.\n\n", embeddedBatch)
		rows := [][]string{}
		for _, f := range r.batches {
			rows = append(rows, []string{thousands(f.items), seconds(f.wall), thousands(int(f.perSecond())), megabytes(f.peakRSS), seconds(f.handlerCPU.total())})
		}
		table(&w, []string{"Items", "Wall time", "Items/s", "Peak RSS", "Handler CPU"}, rows)
	}

	if t := r.tracing; t != nil {
		w.WriteString("## The cost of tracing\n\n")
		fmt.Fprintf(&w, "%s items on the embedded task hub, with tracing off and on in turn, %d times each, each in a fresh\n"+
			"handler. On, the handler exports every span over OTLP/HTTP to a local Jaeger (v1.75.0, in memory) with\n"+
			"`OTEL_BSP_MAX_QUEUE_SIZE=1000000`, so that none is dropped; a traced run lasts until Jaeger holds all\n"+
			"its spans, and its CPU counts the export. Off is the default: no endpoint set.\n\n", thousands(tracingItems), tracingRounds)
		rows := [][]string{}
		for i := range t.off {
			off, on := t.off[i], t.on[i]
			rows = append(rows,
				[]string{fmt.Sprintf("off, round %d", i+1), seconds(off.wall), seconds(off.handlerCPU.total()), micros(off.cpuPerItem()), "—"},
				[]string{fmt.Sprintf("on, round %d", i+1), seconds(on.wall), seconds(on.handlerCPU.total()), micros(on.cpuPerItem()), thousands(t.spans[i])})
		}
		table(&w, []string{"Tracing", "Wall time to Completed", "Handler CPU", "Handler CPU / item", "Spans in Jaeger"}, rows)
		fmt.Fprintf(&w, "On average, tracing on adds %s of handler CPU per item (%+.0f%%) and %+.0f%% of wall time.\n\n",
			micros(t.extraCPUPerItem()), t.extraCPUPercent(), t.extraWallPercent())
	}

	if len(r.partitions) > 0 {
		w.WriteString("## Partition size\n\n")
		fmt.Fprintf(&w, "%s items on the embedded task hub, in a fresh handler per `FANOUT_PARTITION_SIZE`.\n\n", thousands(partitionItems))
		rows := [][]string{}
		for _, f := range r.partitions {
			rows = append(rows, []string{thousands(f.partition), seconds(f.wall), thousands(int(f.perSecond())), megabytes(f.peakRSS), seconds(f.handlerCPU.total())})
		}
		table(&w, []string{"FANOUT_PARTITION_SIZE", "Wall time", "Activities/s", "Peak RSS", "Handler CPU"}, rows)
	}

	w.WriteString("## Targets\n\n")
	table(&w, []string{"Target", "Result", "Met"}, targetRows(r))
	w.WriteString("MB are 10⁶ bytes.\n")
	return w.String()
}

// targetRows holds each result against its target; a target whose
// measurement did not run says so.
func targetRows(r results) [][]string {
	var rows [][]string
	add := func(target string, measured bool, result string, met bool) {
		if !measured {
			rows = append(rows, []string{target, "not measured", "—"})
			return
		}
		rows = append(rows, []string{target, result, yesNo(met)})
	}
	f10k, ok := r.fanOut(10_000)
	add("Embedded, 10,000 items: ≥ 5,000 activities/s", ok, thousands(int(f10k.perSecond()))+" activities/s", f10k.perSecond() >= targetPerSecond10k)
	f100k, ok := r.fanOut(100_000)
	add("Embedded, 100,000 items: ≤ 25 s", ok, seconds(f100k.wall), f100k.wall <= targetWall100k)
	add("Embedded, 100,000 items: peak RSS ≤ 150 MB", ok, megabytes(f100k.peakRSS), f100k.peakRSS <= targetRSS100k)
	add("Embedded, 1,000 items: ≥ 30× faster than the library defaults", r.speedUp() > 0, fmt.Sprintf("×%.1f", r.speedUp()), r.speedUp() >= targetSpeedUp)
	l := r.latency
	add("Start latency, 50 concurrent clients: p99 ≤ 50 ms", l != nil, func() string {
		if l == nil {
			return ""
		}
		return "p99 " + millis(l.p99)
	}(), l != nil && l.p99 <= targetStartP99)
	g, ok := r.grpcRun(grpcItems, 100)
	add("gRPC path, 10,000 items, 100 per activity: ≤ 100 µs handler CPU per item", ok, micros(g.cpuPerItem()), ok && g.cpuPerItem() <= targetGRPCBatched)
	add("gRPC path, 10,000 items, 100 per activity: ≤ 0.03 dispatches per item", ok, fmt.Sprintf("%.3f", g.actionsPerItem()), ok && g.actionsPerItem() <= targetGRPCActions)
	g, ok = r.grpcRun(grpcItems, 1)
	add("gRPC path, 10,000 items, 1 per activity: ≤ 600 µs handler CPU per item", ok, micros(g.cpuPerItem()), ok && g.cpuPerItem() <= targetGRPCOne)
	g, ok = r.grpcRun(grpcBatchedItems, 100)
	add("gRPC path, 100,000 items, 100 per activity: < 60 s", ok, seconds(g.wall), ok && g.wall < targetGRPC100kWall)
	f1m, ok := r.batched(1_000_000)
	add("Embedded, 1,000,000 items, 100 per activity: < 30 s", ok, seconds(f1m.wall), ok && f1m.wall < targetEmbedded1MWall)
	return rows
}

// table writes a Markdown table: the first column aligned left, the others
// right (they hold numbers).
func table(w *strings.Builder, header []string, rows [][]string) {
	w.WriteString("| " + strings.Join(header, " | ") + " |\n|---|")
	w.WriteString(strings.Repeat("---:|", len(header)-1) + "\n")
	for _, row := range rows {
		w.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	w.WriteString("\n")
}

func yesNo(met bool) string {
	if met {
		return "yes"
	}
	return "**no**"
}

// thousands formats n with commas: 100,000.
func thousands(n int) string {
	s := strconv.Itoa(n)
	sign := ""
	if n < 0 {
		sign, s = "-", s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return sign + s
}

// Units as the report shows them.
func seconds(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
func millis(d time.Duration) string  { return fmt.Sprintf("%.1f ms", d.Seconds()*1e3) }
func micros(d time.Duration) string  { return fmt.Sprintf("%.1f µs", d.Seconds()*1e6) }
func megabytes(b int64) string       { return fmt.Sprintf("%.0f MB", float64(b)/1e6) }
func cpu(c cpuUsage) string {
	return fmt.Sprintf("%.2f s (%.2f + %.2f)", c.total().Seconds(), c.user.Seconds(), c.sys.Seconds())
}

func minutes(d time.Duration) string {
	return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
}
