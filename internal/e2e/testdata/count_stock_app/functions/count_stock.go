package functions

// count_stock, a fan-out of the status page's test (internal/e2e), added
// to a copy of the repository as functions/count_stock.go: each item is a
// count of one product on a shelf, and the summary has a field of each
// shape a summary may have: a number, a map, an object, a list of values
// and a list of objects.

import (
	"context"
	"fmt"
	"slices"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
)

// stockCount is one item: how many of a product a shelf holds.
type stockCount struct {
	SKU   string `json:"sku"`
	Shelf string `json:"shelf"`
	Qty   int    `json:"qty"`
}

// stockTally is the summary.
type stockTally struct {
	Units   int            `json:"units"`
	ByShelf map[string]int `json:"by_shelf"`
	Largest stockCount     `json:"largest"`
	Counted []string       `json:"counted"` // the SKUs, in item order
	Shelves []string       `json:"shelves"` // sorted, each once
	Empty   []stockCount   `json:"empty"`   // the counts of nothing
}

// CountStock is the count_stock fan-out. A negative count fails.
func (Fanouts) CountStock(*config.Parser) Registration {
	return func(e *fanout.Engine) error {
		return fanout.Register(e, fanout.Spec[stockCount, stockCount, stockTally]{
			Name: "count_stock",
			Work: func(_ context.Context, it fanout.Item[stockCount]) (stockCount, error) {
				if it.Value.Qty < 0 {
					return stockCount{}, fmt.Errorf("%s: a count cannot be negative", it.Value.SKU)
				}
				return it.Value, nil
			},
			Aggregate: fanout.Aggregate[stockCount, stockTally]{
				Add: func(s stockTally, c stockCount) stockTally {
					one := stockTally{Units: c.Qty, ByShelf: map[string]int{c.Shelf: c.Qty}, Largest: c,
						Counted: []string{c.SKU}, Shelves: []string{c.Shelf}}
					if c.Qty == 0 {
						one.Empty = []stockCount{c}
					}
					return mergeTallies(s, one)
				},
				Merge: mergeTallies,
			},
		})
	}
}

func mergeTallies(a, b stockTally) stockTally {
	out := stockTally{
		Units:   a.Units + b.Units,
		ByShelf: map[string]int{},
		Largest: a.Largest,
		Counted: slices.Concat(a.Counted, b.Counted),
		Shelves: slices.Compact(slices.Sorted(slices.Values(slices.Concat(a.Shelves, b.Shelves)))),
		Empty:   slices.Concat(a.Empty, b.Empty),
	}
	for _, m := range []map[string]int{a.ByShelf, b.ByShelf} {
		for shelf, n := range m {
			out.ByShelf[shelf] += n
		}
	}
	if b.Largest.Qty > a.Largest.Qty {
		out.Largest = b.Largest
	}
	return out
}
