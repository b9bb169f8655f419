package fanout_test

import (
	"testing"

	"fanoutfanin/internal/fanout"
)

// BenchmarkEmbeddedFanOut runs a fan-out of 10,000 generated items that
// take no time on the embedded hub, in process, to profile the engine:
// go test ./internal/fanout/ -run '^$' -bench EmbeddedFanOut -cpuprofile cpu.out
func BenchmarkEmbeddedFanOut(b *testing.B) {
	h := openHub(b, scoreOf)
	for b.Loop() {
		if _, out := run(b, h, fanout.Plan{Count: 10_000}); out.Items != 10_000 {
			b.Fatalf("%d items", out.Items)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*10_000), "µs/item")
}
