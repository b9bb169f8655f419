package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// durabletask-go's Info chatter is hidden at the default level; its warnings
// and errors are not.
func TestDurableTaskLevels(t *testing.T) {
	var buf bytes.Buffer
	l := DurableTask{Log: New(&buf, zerolog.InfoLevel)}
	l.Debugf("poll %d", 1)
	l.Info("worker started")
	l.Infof("%s: waiting for new work items", "activity-processor")
	l.Warnf("abandoning work item %s", "x")
	l.Error("failed to complete work item")

	var got []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var e struct{ Level, Message string }
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		got = append(got, e.Level+" "+e.Message)
	}
	want := []string{"warn abandoning work item x", "error failed to complete work item"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("at info level: got %q, want %q", got, want)
	}

	buf.Reset()
	DurableTask{Log: New(&buf, zerolog.DebugLevel)}.Info("worker started")
	if !strings.Contains(buf.String(), `"level":"debug"`) {
		t.Errorf("at debug level, Info should appear as debug: %q", buf.String())
	}
}

func TestConsoleWriter(t *testing.T) {
	var buf bytes.Buffer
	log := New(Writer(&buf, "console"), zerolog.InfoLevel)
	log.Info().Str("instanceId", "abc").Msg("started orchestration")
	if out := buf.String(); !strings.Contains(out, "started orchestration") || !strings.Contains(out, "instanceId=") || strings.HasPrefix(out, "{") {
		t.Errorf("console line: %q", out)
	}
}
