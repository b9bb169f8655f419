package fanout_test

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub/hubtest"
)

// A fan-out in batches has the outcome the same fan-out has one item at a
// time: the same summary, in item order, the same failed items with the
// same attempts and errors, the same progress, with an item that succeeds
// on its retry (its batch partly failing), items failing every attempt, a
// window and partitions. Each item is tried as often as unbatched.
func TestBatchesGiveTheSameOutcome(t *testing.T) {
	var mu sync.Mutex
	tries := map[string]int{}
	h := openHub(t, func(ctx context.Context, it fanout.Item[string]) (score, error) {
		mu.Lock()
		tries[it.Value]++
		n := tries[it.Value]
		mu.Unlock()
		switch {
		case strings.HasPrefix(it.Value, "bad"):
			return score{}, fmt.Errorf("%s cannot be processed", it.Value)
		case strings.HasPrefix(it.Value, "flaky") && n == 1:
			return score{}, fmt.Errorf("%s failed its attempt %d", it.Value, it.Attempt)
		}
		return scoreOf(ctx, it)
	})
	items := words(37)
	items[3], items[11], items[20] = "flaky-3", "bad-11", "flaky-20"
	items[21], items[36] = "bad-21", "flaky-36"
	for _, layout := range []struct {
		name string
		plan fanout.Plan
	}{
		{"all at once", fanout.Plan{Items: raw(items...), Retry: fastRetry}},
		{"window", fanout.Plan{Items: raw(items...), MaxParallelism: 7, Retry: fastRetry}},
		{"partitions", fanout.Plan{Items: raw(items...), PartitionSize: 10, MaxParallelism: 9, Retry: fastRetry}},
	} {
		t.Run(layout.name, func(t *testing.T) {
			var want output
			wantTries := map[string]int{}
			for _, b := range []int{0, 2, 5, 100} {
				mu.Lock()
				clear(tries)
				mu.Unlock()
				plan := layout.plan
				plan.Batch = b
				_, out := run(t, h, plan)
				mu.Lock()
				got := maps(tries)
				mu.Unlock()
				if b == 0 {
					want, wantTries = out, got
					if out.TotalItemsFailed != 2 || out.Items != 35 {
						t.Fatalf("unbatched: %+v, want 35 items and 2 failed", out)
					}
					continue
				}
				if !reflect.DeepEqual(out, want) {
					t.Errorf("%d items per activity:\n got %+v\nwant %+v (unbatched)", b, out, want)
				}
				if !reflect.DeepEqual(got, wantTries) {
					t.Errorf("%d items per activity: attempts %v, want %v (unbatched)", b, got, wantTries)
				}
			}
		})
	}
}

func maps(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// A batch's items run at once, up to the window: maxParallelism counts
// items, however they are batched.
func TestBatchesHonourMaxParallelism(t *testing.T) {
	var a atOnce
	h := openHub(t, a.work)
	for _, tc := range []struct {
		name string
		plan fanout.Plan
		want int
	}{
		{"window below the batch", fanout.Plan{Count: 24, MaxParallelism: 3, Batch: 10}, 3},
		{"window of whole batches", fanout.Plan{Count: 40, MaxParallelism: 8, Batch: 4}, 8},
		{"window between batches", fanout.Plan{Count: 40, MaxParallelism: 10, Batch: 4}, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.peak()
			_, out := run(t, h, tc.plan)
			if out.Items != tc.plan.Count {
				t.Errorf("processed %d items, want %d", out.Items, tc.plan.Count)
			}
			if most := a.peak(); most != tc.want {
				t.Errorf("at most %d items ran at once, want %d", most, tc.want)
			}
		})
	}
}

// A batch is one activity: a hundred items in batches of 25 make four
// work activities, where unbatched they make a hundred.
func TestABatchIsOneActivity(t *testing.T) {
	h := openHub(t, scoreOf)
	id, out := run(t, h, fanout.Plan{Count: 100, Batch: 25})
	if out.Items != 100 {
		t.Fatalf("processed %d items, want 100", out.Items)
	}
	events, err := hubtest.History(h.file, string(id))
	if err != nil {
		t.Fatal(err)
	}
	scheduled := 0
	for _, e := range events {
		if ts := e.GetTaskScheduled(); ts != nil && ts.GetName() == "tally_work" {
			scheduled++
		}
	}
	if scheduled != 4 {
		t.Errorf("work activities scheduled: %d, want 4", scheduled)
	}
}
