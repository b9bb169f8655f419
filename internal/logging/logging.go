// Package logging builds the app's zerolog logger and adapts it to the
// logger interface durabletask-go expects.
package logging

import (
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"
)

// Writer returns where log lines go: JSON lines (what the Functions host
// collects from stdout) or, for people at a terminal, console lines.
func Writer(out io.Writer, format string) io.Writer {
	if format == "console" {
		return zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly}
	}
	return out
}

// New returns the process logger writing to w at the given level.
func New(w io.Writer, level zerolog.Level) zerolog.Logger {
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}

// DurableTask adapts log to durabletask-go's backend.Logger. The engine logs
// every poll and work item at Info and Debug, so those go to Debug and Trace:
// its warnings and errors stay visible at the default level, its chatter does not.
type DurableTask struct{ Log zerolog.Logger }

func (l DurableTask) Debug(v ...any)                 { print(l.Log.Trace(), v) }
func (l DurableTask) Debugf(format string, v ...any) { l.Log.Trace().Msgf(format, v...) }
func (l DurableTask) Info(v ...any)                  { print(l.Log.Debug(), v) }
func (l DurableTask) Infof(format string, v ...any)  { l.Log.Debug().Msgf(format, v...) }
func (l DurableTask) Warn(v ...any)                  { print(l.Log.Warn(), v) }
func (l DurableTask) Warnf(format string, v ...any)  { l.Log.Warn().Msgf(format, v...) }
func (l DurableTask) Error(v ...any)                 { print(l.Log.Error(), v) }
func (l DurableTask) Errorf(format string, v ...any) { l.Log.Error().Msgf(format, v...) }

// print formats v only when the level is on (Msgf already does this).
func print(e *zerolog.Event, v []any) {
	if e.Enabled() {
		e.Msg(fmt.Sprint(v...))
	}
}
