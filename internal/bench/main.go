// Command bench measures the function app end to end, as `make bench` runs
// it: it builds the real handler (and the upstream durabletask-go sidecar),
// lays out an app root as the Functions host does, starts the handler as a
// child process and drives it over HTTP, then writes BENCHMARKS.md and
// prints the same report.
//
// Measurements: fan-outs of 1,000, 10,000 and 100,000 items (and 1,000,000
// with -million) on the embedded task hub, each in a fresh handler; the
// latency of 500 small starts from 50 concurrent clients; the same job on
// durabletask-go's SQLite backend with its defaults, for comparison; 10,000
// items over gRPC on the sidecar (other counts and a partition size with
// -grpc-items and -grpc-partition-size), one item per activity and 100,
// counting the sidecar's dispatches; 10,000 to 1,000,000 items on the
// embedded hub, 100 per activity; 10,000 items with tracing off and
// on, exporting to a local Jaeger; and, with -partition-sizes, 100,000 items
// per FANOUT_PARTITION_SIZE.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"fanoutfanin/internal/servers"
)

// The sizes measured.
const (
	baselineItems  = 1000    // the fan-out the library defaults run
	partitionItems = 100_000 // the fan-out -partition-sizes runs
	grpcItems      = 10_000  // the gRPC run the target is for
	// grpcBatchedItems is the larger gRPC run, in batches only; and
	// embeddedBatch the items per activity of the embedded batched runs.
	grpcBatchedItems = 100_000
	embeddedBatch    = 100
	latencyStarts    = 500
	latencyClients   = 50
	latencyItems     = 10
)

// measurementNames are what -only selects from.
func measurementNames() []string {
	return []string{"fanout", "latency", "baseline", "grpc", "batches", "tracing"}
}

type options struct {
	million        bool
	partitionSizes []int
	grpcItems      []int    // fan-outs on the gRPC path
	grpcPartition  int      // FANOUT_PARTITION_SIZE on the gRPC path; 0 for the default
	grpcBatches    []int    // items per activity on the gRPC path, each with each of grpcItems
	only           []string // measurements to run; all when empty
	out            string   // report file, relative to the module root; "" for none
	poll           time.Duration
	timeout        time.Duration
}

func (o options) runs(name string) bool { return len(o.only) == 0 || slices.Contains(o.only, name) }

func parseFlags() (options, error) {
	var o options
	var sizes, only, grpcCounts, grpcBatches string
	flag.BoolVar(&o.million, "million", false, "also run 1,000,000 items on the embedded hub (takes minutes)")
	flag.StringVar(&grpcCounts, "grpc-items", strconv.Itoa(grpcItems)+","+strconv.Itoa(grpcBatchedItems), "comma-separated item counts to run on the gRPC path, each in a fresh handler and sidecar")
	flag.StringVar(&grpcBatches, "grpc-items-per-activity", "1,100", "comma-separated items per activity to run each of -grpc-items with")
	flag.IntVar(&o.grpcPartition, "grpc-partition-size", 0, "FANOUT_PARTITION_SIZE on the gRPC path (default: the handler's)")
	flag.StringVar(&sizes, "partition-sizes", "", "comma-separated FANOUT_PARTITION_SIZE values: run 100,000 items once with each (e.g. 250,500,1000,2000)")
	flag.StringVar(&only, "only", "", "comma-separated measurements to run, of "+strings.Join(measurementNames(), ", ")+" (default all; then the report goes to stdout only, unless -o is given)")
	flag.StringVar(&o.out, "o", "BENCHMARKS.md", "report file, relative to the module root; empty for stdout only")
	flag.DurationVar(&o.poll, "poll", 50*time.Millisecond, "how often to poll an orchestration's status")
	flag.DurationVar(&o.timeout, "timeout", 15*time.Minute, "longest wait for any one orchestration")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	for _, s := range splitList(sizes) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10_000 {
			return o, fmt.Errorf("-partition-sizes: %q is not a partition size from 1 to 10000", s)
		}
		o.partitionSizes = append(o.partitionSizes, n)
	}
	for _, s := range splitList(grpcCounts) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1_000_000 {
			return o, fmt.Errorf("-grpc-items: %q is not an item count from 1 to 1000000", s)
		}
		o.grpcItems = append(o.grpcItems, n)
	}
	for _, s := range splitList(grpcBatches) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return o, fmt.Errorf("-grpc-items-per-activity: %q is not a count of items per activity from 1 to 1000", s)
		}
		o.grpcBatches = append(o.grpcBatches, n)
	}
	if o.grpcPartition < 0 || o.grpcPartition > 10_000 {
		return o, fmt.Errorf("-grpc-partition-size: %d is not a partition size from 1 to 10000", o.grpcPartition)
	}
	for _, s := range splitList(only) {
		if !slices.Contains(measurementNames(), s) {
			return o, fmt.Errorf("-only: unknown measurement %q; the measurements are %s", s, strings.Join(measurementNames(), ", "))
		}
		o.only = append(o.only, s)
	}
	// A partial run must not overwrite the full report by accident.
	outGiven := false
	flag.Visit(func(f *flag.Flag) { outGiven = outGiven || f.Name == "o" })
	if len(o.only) > 0 && !outGiven {
		o.out = ""
	}
	if o.poll <= 0 || o.timeout <= 0 {
		return o, errors.New("-poll and -timeout must be positive")
	}
	return o, nil
}

func splitList(s string) []string {
	var list []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			list = append(list, f)
		}
	}
	return list
}

func main() {
	opts, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	// Ctrl-C or SIGTERM cancels ctx: every wait returns, and every
	// measurement stops its processes on the way out. A second Ctrl-C
	// kills the benchmark at once (its children die with it).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, opts options) error {
	began := time.Now()
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "fanout-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{opts: opts, tmp: tmp, clkTck: clockTicks(), client: newClient()}

	progress("building the handler")
	if b.appRoot, err = layOutApp(ctx, root, tmp); err != nil {
		return err
	}
	if opts.runs("grpc") {
		progress("building the durabletask-go sidecar")
		if b.sidecar, err = servers.BuildSidecar(); err != nil {
			return err
		}
	}

	res, err := b.measureAll(ctx)
	if err != nil {
		return err
	}
	res.total = time.Since(began)
	report := render(describeMachine(), res, opts)
	fmt.Print("\n" + report)
	if opts.out == "" {
		return nil
	}
	path := opts.out
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	return writeFile(path, report)
}

// measureAll runs the selected measurements in turn. The in-process
// baseline runs last, so its leftovers cannot disturb the handler's runs.
func (b *bench) measureAll(ctx context.Context) (results, error) {
	var res results
	if b.opts.runs("fanout") {
		sizes := []int{1000, 10_000, 100_000}
		if b.opts.million {
			sizes = append(sizes, 1_000_000)
		}
		for _, n := range sizes {
			progress("embedded fan-out of %s items", thousands(n))
			r, err := b.embeddedFanOut(ctx, n, 0)
			if err != nil {
				return res, fmt.Errorf("embedded fan-out of %s items: %w", thousands(n), err)
			}
			progress("  %s, %s activities/s, peak RSS %s", seconds(r.wall), thousands(int(r.perSecond())), megabytes(r.peakRSS))
			res.fanOuts = append(res.fanOuts, r)
		}
	}
	if b.opts.runs("latency") {
		progress("start latency: %d starts of %d items from %d clients", latencyStarts, latencyItems, latencyClients)
		l, err := b.startLatency(ctx, latencyStarts, latencyClients, latencyItems)
		if err != nil {
			return res, fmt.Errorf("start latency: %w", err)
		}
		progress("  p50 %s, p99 %s, max %s; all completed in %s", millis(l.p50), millis(l.p99), millis(l.max), seconds(l.allCompleted))
		res.latency = &l
	}
	for _, n := range b.opts.grpcItems {
		for _, batch := range b.opts.grpcBatches {
			if !b.opts.runs("grpc") {
				break
			}
			if batch == 1 && n > grpcItems && len(b.opts.grpcBatches) > 1 {
				continue // one item per activity: half an hour at 100,000; run it alone with -grpc-items-per-activity 1
			}
			progress("gRPC path: %s items, %d per activity, on the durabletask-go sidecar (one work item at a time: a minute or more for 10,000 one by one)", thousands(n), batch)
			g, err := b.grpcFanOut(ctx, n, b.opts.grpcPartition, batch)
			if err != nil {
				return res, fmt.Errorf("gRPC path: %w", err)
			}
			progress("  %s, %s items/s, handler CPU %s an item, %.3f dispatches an item", seconds(g.wall), thousands(int(g.perSecond())), micros(g.cpuPerItem()), g.actionsPerItem())
			res.grpc = append(res.grpc, g)
		}
	}
	if b.opts.runs("batches") {
		for _, n := range []int{10_000, 100_000, 1_000_000} {
			progress("embedded fan-out of %s items, %d per activity", thousands(n), embeddedBatch)
			r, err := b.embeddedBatches(ctx, n, 0, embeddedBatch)
			if err != nil {
				return res, fmt.Errorf("embedded fan-out of %s items in batches: %w", thousands(n), err)
			}
			progress("  %s, %s items/s, peak RSS %s", seconds(r.wall), thousands(int(r.perSecond())), megabytes(r.peakRSS))
			res.batches = append(res.batches, r)
		}
	}
	if b.opts.runs("tracing") {
		t, err := b.tracingCost(ctx)
		if err != nil {
			return res, fmt.Errorf("the cost of tracing: %w", err)
		}
		res.tracing = &t
	}
	for _, size := range b.opts.partitionSizes {
		progress("embedded fan-out of %s items, FANOUT_PARTITION_SIZE=%d", thousands(partitionItems), size)
		r, err := b.embeddedFanOut(ctx, partitionItems, size)
		if err != nil {
			return res, fmt.Errorf("partition size %d: %w", size, err)
		}
		progress("  %s, %s activities/s, peak RSS %s", seconds(r.wall), thousands(int(r.perSecond())), megabytes(r.peakRSS))
		res.partitions = append(res.partitions, r)
	}
	if b.opts.runs("baseline") {
		progress("baseline: %s items on durabletask-go's SQLite backend with library defaults", thousands(baselineItems))
		d, err := b.baseline(ctx, baselineItems)
		if err != nil {
			return res, err
		}
		progress("  %s", seconds(d))
		res.baseline = d
	}
	return res, nil
}

// progress reports what the benchmark is doing, on stderr, as it goes.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// moduleRoot is the main module's directory, wherever bench runs from.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the fanoutfanin module: run from its directory")
	}
	return filepath.Dir(gomod), nil
}

// layOutApp builds the handler into tmp/app and puts host.json and the
// function folders next to it, as the Functions host sees an app.
func layOutApp(ctx context.Context, root, tmp string) (string, error) {
	app := filepath.Join(tmp, "app")
	if err := goBuild(ctx, root, filepath.Join(app, "handler"), "."); err != nil {
		return "", err
	}
	for _, f := range []string{"host.json", "fan_out_fan_in/function.json", "status/function.json"} {
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(filepath.Join(app, filepath.Dir(f)), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(app, f), data, 0o644); err != nil {
			return "", err
		}
	}
	return app, nil
}

// goBuild builds pkg into out, from the module root.
func goBuild(ctx context.Context, root, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, output)
	}
	return nil
}

// writeFile replaces path with content in one step, so that a failed write
// never leaves half a report.
func writeFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
