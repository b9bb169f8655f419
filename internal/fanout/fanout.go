// Package fanout is a durable fan-out/fan-in engine on durabletask-go. A
// fan-out runs the user's Work once for every item of a start (fan-out),
// waits for every one (fan-in), and folds their results into a summary with
// the user's Aggregate. The engine owns everything else: the plan, the
// partitions and their window, retries, the per-attempt timeout, progress,
// starts too large for one payload, the record of failed items, and the
// client calls that start, watch and manage fan-outs. It knows nothing of
// what the work does.
//
// A fan-out of more than one partition's worth of items runs in partitions,
// each a sub-orchestration doing the same for its share (instance
// "<id>:p<k>"), and merges their summaries: no orchestration's history, step
// or payload grows with the whole fan-out.
package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"

	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/telemetry"
)

// Item is one work item as Work sees it.
type Item[I any] struct {
	Value I
	// Index is the item's place in the whole fan-out, from 0; -1 for an
	// attempt scheduled by a version that did not record it.
	Index int
	// Attempt counts the attempts at this item, from 1.
	Attempt int
	// Log carries the instance, the activity and the index.
	Log zerolog.Logger
}

// Work processes one item. Its ctx ends when the attempt times out or the
// worker stops; an error fails the attempt, which is retried as the
// fan-out's retry policy says, and once attempts run out the item is listed
// among the summary's failed items. R must encode as JSON.
type Work[I, R any] func(ctx context.Context, item Item[I]) (R, error)

// Aggregate folds results into a summary S, which must be a struct: its
// JSON fields become the fan-out's output, beside the engine's own
// (ReservedKeys). All functions must be pure: they may run again on replay.
type Aggregate[R, S any] struct {
	// Add folds one item's result into a summary, starting from S's zero
	// value; results come in item order.
	Add func(S, R) S
	// Merge combines two summaries, the earlier items' first; it must be
	// associative, so that how the items are partitioned does not matter.
	Merge func(S, S) S
	// Finish, if given, completes every summary the aggregation returns
	// (an average from totals, say). Merge gets finished summaries.
	Finish func(S) S
	// Trim, if given, makes a summary smaller when it would not fit one
	// payload (drop a list, keep its count). Without it such a fan-out
	// fails with a message that says so.
	Trim func(S) S
}

// Spec is one kind of fan-out.
type Spec[I, R, S any] struct {
	// Name is the HTTP function that starts it and the stem of its task
	// names: Name_orchestrator, Name_partition, Name_work, Name_aggregate
	// unless given below. The task names are a contract with the task hub:
	// renaming one strands the instances already running.
	Name                                                     string
	Orchestrator, Partition, WorkActivity, AggregateActivity string

	Work      Work[I, R]
	Aggregate Aggregate[R, S]

	// Validate, if given, checks each item of a start; its error is the
	// caller's 400.
	Validate func(I) error
	// Generate, if given, makes item n (from 0) of a start by count.
	Generate func(n int) I
	// DefaultItems, if given, are processed when a start names none.
	DefaultItems []I
}

// ReservedKeys are the output's fields that the engine writes; a summary
// may not use them.
var ReservedKeys = []string{"total_items_failed", "failed_items", "failed_items_omitted", "success", "partitions"}

// Options are how the engine runs every fan-out.
type Options struct {
	Log zerolog.Logger
	// PartitionSize is how many items one orchestration runs itself; 0:
	// DefaultPartitionSize.
	PartitionSize int
	// Retry is the policy of the fan-outs this process starts; nil:
	// DefaultRetry. It travels with each instance.
	Retry *RetryPolicy
	// ItemTimeout bounds each attempt; 0: DefaultItemTimeout.
	ItemTimeout time.Duration
	// MaxItems bounds a start's items (0: MaxItems) and MaxItemLength
	// each item's length in characters: a string's own, other values'
	// JSON text (0: no bound).
	MaxItems, MaxItemLength int
	// Tracer records the span of each start (create_orchestration); nil:
	// none.
	Tracer trace.Tracer
	// ItemsPerActivity is how many items one work activity runs unless a
	// start says otherwise; 0: 1. BatchConcurrency is how many of a batch's
	// items run at once; 0: DefaultBatchConcurrency.
	ItemsPerActivity, BatchConcurrency int
}

// Defaults and bounds of the engine.
const (
	DefaultPartitionSize = 1000
	MaxPartitionSize     = 10_000
	MaxItems             = 1_000_000
	DefaultItemTimeout   = 5 * time.Minute
	// MaxItemsPerActivity bounds a batch; DefaultBatchConcurrency is how
	// many of its items run at once unless Options say otherwise.
	MaxItemsPerActivity     = 1000
	DefaultBatchConcurrency = 16
)

// Engine holds the kinds of fan-out this process runs, and the task
// registry that runs them.
type Engine struct {
	opts     Options
	registry *task.TaskRegistry
	sessions *taskhub.Sessions
	kinds    []*kind
}

// New returns an engine with no fan-out yet; see Register.
func New(opts Options) *Engine {
	if opts.PartitionSize <= 0 {
		opts.PartitionSize = DefaultPartitionSize
	}
	if opts.Retry == nil {
		opts.Retry = &DefaultRetry
	}
	if opts.ItemTimeout <= 0 {
		opts.ItemTimeout = DefaultItemTimeout
	}
	if opts.Tracer == nil {
		opts.Tracer = telemetry.Off().Tracer
	}
	if opts.ItemsPerActivity <= 0 {
		opts.ItemsPerActivity = 1
	}
	if opts.BatchConcurrency <= 0 {
		opts.BatchConcurrency = DefaultBatchConcurrency
	}
	if opts.MaxItems <= 0 {
		opts.MaxItems = MaxItems
	}
	return &Engine{opts: opts, registry: task.NewTaskRegistry(), sessions: taskhub.NewSessions(taskhub.DefaultSessions)}
}

// Registry is what a task hub worker runs: every registered fan-out's
// orchestrators and activities.
func (e *Engine) Registry() *task.TaskRegistry { return e.registry }

// Sessions keep the engine's orchestrations waiting between their steps in
// a worker that runs them in Sessions, instead of replaying each step.
func (e *Engine) Sessions() *taskhub.Sessions { return e.sessions }

// Names are the registered fan-outs' names, in the order registered.
func (e *Engine) Names() []string {
	names := make([]string, len(e.kinds))
	for i, k := range e.kinds {
		names[i] = k.Name
	}
	return names
}

// names are a fan-out's task names.
type names struct {
	Name, Orchestrator, Partition, Work, Aggregate string
}

// kind is what the engine keeps of a Spec beyond its tasks: what the client
// calls need, whatever the item, result and summary types.
type kind struct {
	names
	// item checks item i of a start and returns it as compact JSON.
	item      func(i int, raw json.RawMessage) (json.RawMessage, error)
	itemsAre  string // "strings", …: what a list of items must hold
	generated bool
	defaults  []json.RawMessage
}

// Register adds a kind of fan-out to e.
func Register[I, R, S any](e *Engine, s Spec[I, R, S]) error {
	n := names{s.Name, s.Orchestrator, s.Partition, s.WorkActivity, s.AggregateActivity}
	for p, suffix := range map[*string]string{&n.Orchestrator: "_orchestrator", &n.Partition: "_partition", &n.Work: "_work", &n.Aggregate: "_aggregate"} {
		if *p == "" {
			*p = s.Name + suffix
		}
	}
	if err := s.check(e); err != nil {
		return fmt.Errorf("fan-out %q: %w", s.Name, err)
	}
	f := &runner[I, R, S]{spec: s, names: n, opts: e.opts, sessions: e.sessions}
	k := &kind{names: n, itemsAre: describe(reflect.TypeFor[I]()), generated: s.Generate != nil, item: f.checkItem}
	for _, item := range s.DefaultItems {
		b, err := json.Marshal(item)
		if err != nil {
			return fmt.Errorf("fan-out %q: default item %v: %w", s.Name, item, err)
		}
		k.defaults = append(k.defaults, b)
	}
	if err := errors.Join(
		e.registry.AddOrchestratorN(n.Orchestrator, failOnPanic(f.orchestrate)),
		e.registry.AddOrchestratorN(n.Partition, failOnPanic(f.partition)),
		e.registry.AddActivityN(n.Work, f.work),
		e.registry.AddActivityN(n.Aggregate, f.aggregate),
	); err != nil {
		return fmt.Errorf("fan-out %q: %w", s.Name, err)
	}
	e.kinds = append(e.kinds, k)
	return nil
}

// check says what is wrong with s, if anything.
func (s Spec[I, R, S]) check(e *Engine) error {
	var errs []error
	if s.Name == "" {
		errs = append(errs, errors.New("it has no name"))
	}
	for _, k := range e.kinds {
		if k.Name == s.Name {
			errs = append(errs, errors.New("a fan-out of that name is registered already"))
		}
	}
	if s.Work == nil {
		errs = append(errs, errors.New("it has no Work"))
	}
	if s.Aggregate.Add == nil || s.Aggregate.Merge == nil {
		errs = append(errs, errors.New("its Aggregate needs both Add and Merge"))
	}
	st := reflect.TypeFor[S]()
	if st.Kind() != reflect.Struct {
		errs = append(errs, fmt.Errorf("its summary is a %s: it must be a struct, whose fields are the output's", st))
	} else {
		for i := range st.NumField() {
			name := jsonName(st.Field(i))
			for _, r := range ReservedKeys {
				if strings.EqualFold(name, r) {
					errs = append(errs, fmt.Errorf("its summary's field %s is named %q, which the engine writes: rename it", st.Field(i).Name, name))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// jsonName is the key encoding/json gives field f ("" if left out).
func jsonName(f reflect.StructField) string {
	tag := f.Tag.Get("json")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	if name, _, _ := strings.Cut(tag, ","); name != "" {
		return name
	}
	return f.Name
}

// describe says what a list of items of type t holds, for an error.
func describe(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "strings"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return "numbers"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct, reflect.Map:
		return "objects"
	case reflect.Slice, reflect.Array:
		return "arrays"
	}
	return "JSON values"
}

// runner runs one kind of fan-out: its orchestrators and activities.
type runner[I, R, S any] struct {
	spec     Spec[I, R, S]
	names    names
	opts     Options
	sessions *taskhub.Sessions
}

// failOnPanic makes a panic in orchestrator o, such as v0.6.0's on a
// history it cannot replay, fail the instance with a message saying so:
// v0.6.0 passes such panics on, which would stop the worker and leave the
// instance Running. task.ErrTaskBlocked is how a step normally ends.
func failOnPanic(o task.Orchestrator) task.Orchestrator {
	return func(ctx *task.OrchestrationContext) (out any, err error) {
		defer func() {
			if p := recover(); p != nil {
				if p == task.ErrTaskBlocked {
					panic(p)
				}
				out, err = nil, fmt.Errorf("the orchestrator failed: %v", p)
			}
		}()
		return o(ctx)
	}
}
