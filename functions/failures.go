package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
)

// Failures say which items fail on purpose, to try retries and partial
// failures: those whose whole text Items matches (a string item's own, any
// other's JSON), on their first Attempts attempts, or on every one if
// Attempts is 0. Nil Items: none.
type Failures struct {
	Items    *regexp.Regexp
	Attempts int
}

// ReadFailures reads FANOUT_FAIL_ITEMS and FANOUT_FAIL_ATTEMPTS through p.
func ReadFailures(p *config.Parser) Failures {
	return Failures{
		Items:    p.Pattern(SettingFailItems),
		Attempts: p.Int(SettingFailAttempts, 0, 0, fanout.MaxAttempts),
	}
}

// Failing gives any work the failures f: a chosen item's attempt fails
// before work runs.
func Failing[I, R any](work fanout.Work[I, R], f Failures) fanout.Work[I, R] {
	if f.Items == nil {
		return work
	}
	return func(ctx context.Context, it fanout.Item[I]) (R, error) {
		text := itemText(it.Value)
		if f.Items.MatchString(text) && (f.Attempts == 0 || it.Attempt <= f.Attempts) {
			it.Log.Warn().Str("item", text).Int("attempt", it.Attempt).Msg("failing work item on purpose")
			var zero R
			return zero, fmt.Errorf("attempt %d at %q failed on purpose: %s matches it", it.Attempt, text, SettingFailItems)
		}
		return work(ctx, it)
	}
}

// itemText is a string item itself, any other item its JSON.
func itemText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}
