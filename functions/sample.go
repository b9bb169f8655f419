// Package functions is the app: the seeds' fan-out (process_work_item and
// aggregate_results, on the fan-out engine) and the HTTP functions that
// start, watch and manage any fan-out the engine runs. A fan-out of your own
// is one more file like sample.go, plus its function.json.
package functions

import (
	"context"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
)

// The sample's names are a contract with the task hub and with anyone
// reading its history.
const (
	SampleName           = "fan_out_fan_in"
	OrchestratorName     = "fan_out_fan_in_orchestrator"
	PartitionName        = "fan_out_fan_in_partition"
	ProcessWorkItemName  = "process_work_item"
	AggregateResultsName = "aggregate_results"
)

// DefaultWorkItems are processed when a start names none.
var DefaultWorkItems = []string{"Item1", "Item2", "Item3", "Item4", "Item5"}

// The sample's app settings and their defaults.
const (
	SettingWorkMinDelay = "FANOUT_WORK_MIN_DELAY"
	SettingWorkMaxDelay = "FANOUT_WORK_MAX_DELAY"
	DefaultWorkMinDelay = 500 * time.Millisecond
	DefaultWorkMaxDelay = 2 * time.Second
	SettingFailItems    = "FANOUT_FAIL_ITEMS"
	SettingFailAttempts = "FANOUT_FAIL_ATTEMPTS"
)

// SampleSettings are how process_work_item behaves: it pretends to work for
// a time drawn uniformly from [MinDelay, MaxDelay]. Fail says which items
// fail on purpose.
type SampleSettings struct {
	MinDelay, MaxDelay time.Duration
	Fail               Failures
}

// ReadSampleSettings reads the sample's app settings through p, which
// reports every problem at start with the rest of the configuration.
func ReadSampleSettings(p *config.Parser) SampleSettings {
	s := SampleSettings{
		MinDelay: p.Duration(SettingWorkMinDelay, DefaultWorkMinDelay),
		MaxDelay: p.Duration(SettingWorkMaxDelay, DefaultWorkMaxDelay),
		Fail:     ReadFailures(p),
	}
	if s.MinDelay > s.MaxDelay {
		p.Fail("%s (%s) is longer than %s (%s)", SettingWorkMinDelay, s.MinDelay, SettingWorkMaxDelay, s.MaxDelay)
	}
	return s
}

// ItemResult is what process_work_item returns for one work item.
type ItemResult struct {
	Item           string  `json:"item"`
	ProcessedItem  string  `json:"processed_item"`
	Value          int     `json:"value"`
	ProcessingTime float64 `json:"processing_time"` // seconds
}

// Summary is what aggregate_results returns: the seeds' summary. Totals and
// the average are over the items that succeeded; the fan-out's output adds
// the failed items (see fanout.ReservedKeys).
type Summary struct {
	TotalItemsProcessed int     `json:"total_items_processed"`
	TotalValue          int     `json:"total_value"`
	AverageValue        float64 `json:"average_value"`
	TotalProcessingTime float64 `json:"total_processing_time"`
	// ProcessedItems lists the processed items in work-item order, unless
	// the list would be too large: then it is null, ProcessedItemsOmitted is
	// set, and each partition's own output lists its share.
	ProcessedItems        []string `json:"processed_items"`
	ProcessedItemsOmitted bool     `json:"processed_items_omitted,omitempty"`
}

// Sample is the seeds' fan-out: process_work_item simulates work on each
// item and scores it 1 to 100; aggregate_results sums the scores.
func Sample(s SampleSettings) fanout.Spec[string, ItemResult, Summary] {
	return fanout.Spec[string, ItemResult, Summary]{
		Name:              SampleName,
		Orchestrator:      OrchestratorName,
		Partition:         PartitionName,
		WorkActivity:      ProcessWorkItemName,
		AggregateActivity: AggregateResultsName,
		Work:              Failing(ProcessWorkItem(s), s.Fail),
		Aggregate: fanout.Aggregate[ItemResult, Summary]{
			Add: AddResult, Merge: MergeSummaries, Finish: FinishSummary, Trim: TrimSummary,
		},
		Generate:     func(n int) string { return "Item" + strconv.Itoa(n+1) },
		DefaultItems: DefaultWorkItems,
	}
}

// ProcessWorkItem is process_work_item: it waits as s says, then scores
// the item.
func ProcessWorkItem(s SampleSettings) fanout.Work[string, ItemResult] {
	return func(ctx context.Context, it fanout.Item[string]) (ItemResult, error) {
		it.Log.Debug().Str("item", it.Value).Int("attempt", it.Attempt).Msg("processing work item")
		start := time.Now()
		delay := s.MinDelay
		if s.MaxDelay > s.MinDelay {
			delay += rand.N(s.MaxDelay - s.MinDelay + 1)
		}
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ItemResult{}, ctx.Err()
		}
		r := ItemResult{
			Item:           it.Value,
			ProcessedItem:  "Processed_" + it.Value,
			Value:          1 + rand.IntN(100),
			ProcessingTime: round2(time.Since(start).Seconds()),
		}
		it.Log.Info().Str("item", it.Value).Int("value", r.Value).Float64("seconds", r.ProcessingTime).Msg("processed work item")
		return r, nil
	}
}

// AddResult folds one item's result into a summary. Seconds are summed in
// hundredths, as each was rounded, so that the total does not depend on how
// the items were partitioned.
func AddResult(s Summary, r ItemResult) Summary {
	s.TotalItemsProcessed++
	s.TotalValue += r.Value
	s.TotalProcessingTime = addSeconds(s.TotalProcessingTime, r.ProcessingTime)
	if !s.ProcessedItemsOmitted {
		s.ProcessedItems = append(s.ProcessedItems, r.ProcessedItem)
	}
	return s
}

// MergeSummaries combines the summaries of earlier items, a, and later, b.
func MergeSummaries(a, b Summary) Summary {
	a.TotalItemsProcessed += b.TotalItemsProcessed
	a.TotalValue += b.TotalValue
	a.TotalProcessingTime = addSeconds(a.TotalProcessingTime, b.TotalProcessingTime)
	a.ProcessedItemsOmitted = a.ProcessedItemsOmitted || b.ProcessedItemsOmitted
	if a.ProcessedItemsOmitted {
		a.ProcessedItems = nil
	} else {
		a.ProcessedItems = append(a.ProcessedItems, b.ProcessedItems...)
	}
	return a
}

// FinishSummary works out the average, and lists no items as [], not null.
func FinishSummary(s Summary) Summary {
	s.AverageValue = 0
	if s.TotalItemsProcessed > 0 {
		s.AverageValue = round2(float64(s.TotalValue) / float64(s.TotalItemsProcessed))
	}
	if s.ProcessedItems == nil && !s.ProcessedItemsOmitted {
		s.ProcessedItems = []string{}
	}
	return s
}

// TrimSummary leaves out the list of processed items, too long to carry.
func TrimSummary(s Summary) Summary {
	s.ProcessedItems, s.ProcessedItemsOmitted = nil, true
	return s
}

func addSeconds(a, b float64) float64 {
	return float64(int64(math.Round(a*100))+int64(math.Round(b*100))) / 100
}

// round2 rounds to two decimals, as the summary's figures are shown.
func round2(x float64) float64 { return math.Round(x*100) / 100 }

// FanOutFanIn is the seeds' fan-out, with its settings: FANOUT_WORK_* and
// FANOUT_FAIL_*.
func (Fanouts) FanOutFanIn(p *config.Parser) Registration {
	s := ReadSampleSettings(p)
	return func(e *fanout.Engine) error { return fanout.Register(e, Sample(s)) }
}
