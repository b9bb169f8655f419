package taskhub

import (
	"fmt"
	"reflect"
	"slices"
	"sync"
	"unsafe"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// What Sessions and the engine read inside durabletask-go v0.6.0, which
// keeps it in unexported fields. The fields are found by name and checked,
// once, to be there with the types expected, so that a durabletask-go that
// changes them fails every test at once instead of misbehaving.

// contextFields are the OrchestrationContext's fields a step needs.
var contextFields = sync.OnceValue(func() map[string]reflect.StructField {
	t := reflect.TypeFor[task.OrchestrationContext]()
	events := reflect.TypeFor[[]*backend.HistoryEvent]()
	want := map[string]func(reflect.Type) bool{
		"oldEvents":      func(ft reflect.Type) bool { return ft == events },
		"newEvents":      func(ft reflect.Type) bool { return ft == events },
		"historyIndex":   func(ft reflect.Type) bool { return ft.Kind() == reflect.Int },
		"isSuspended":    func(ft reflect.Type) bool { return ft.Kind() == reflect.Bool },
		"customStatus":   func(ft reflect.Type) bool { return ft.Kind() == reflect.String },
		"pendingActions": func(ft reflect.Type) bool { return ft.Kind() == reflect.Map && ft.Key().Kind() == reflect.Int32 },
	}
	fields := make(map[string]reflect.StructField)
	for name, ok := range want {
		f, found := t.FieldByName(name)
		if !found || len(f.Index) != 1 || !ok(f.Type) {
			panic(fmt.Sprintf("durabletask-go's OrchestrationContext has no field %s of the type expected: Sessions need v0.6.0's", name))
		}
		fields[name] = f
	}
	return fields
})

// field points to ctx's unexported field name.
func field[T any](ctx *task.OrchestrationContext, name string) *T {
	return (*T)(unsafe.Add(unsafe.Pointer(ctx), contextFields()[name].Offset))
}

func contextEvents(ctx *task.OrchestrationContext) (old, new *[]*backend.HistoryEvent) {
	return field[[]*backend.HistoryEvent](ctx, "oldEvents"), field[[]*backend.HistoryEvent](ctx, "newEvents")
}

func setContextEvents(ctx *task.OrchestrationContext, old, new []*backend.HistoryEvent) {
	o, n := contextEvents(ctx)
	*o, *n = old, new
}

// contextIndex is how many events ctx has read.
func contextIndex(ctx *task.OrchestrationContext) int { return *field[int](ctx, "historyIndex") }

// results are a parked orchestration's step results, as v0.6.0's executor
// makes them when its orchestrator blocks: the actions not yet matched by
// the history (none while suspended), in order, and the custom status.
func results(id api.InstanceID, ctx *task.OrchestrationContext) *backend.ExecutionResults {
	res := &backend.ExecutionResults{}
	rv := reflect.ValueOf(res).Elem().FieldByName("Response")
	rv.Set(reflect.New(rv.Type().Elem()))
	m := rv.Interface().(proto.Message).ProtoReflect()
	fields := m.Descriptor().Fields()
	m.Set(fields.ByName("instanceId"), protoreflect.ValueOfString(string(id)))
	m.Set(fields.ByName("customStatus"), protoreflect.ValueOfMessage(wrapperspb.String(*field[string](ctx, "customStatus")).ProtoReflect()))
	if *field[bool](ctx, "isSuspended") {
		return res
	}
	pending := reflect.NewAt(contextFields()["pendingActions"].Type, unsafe.Pointer(field[byte](ctx, "pendingActions"))).Elem()
	ids := make([]int32, 0, pending.Len())
	for _, k := range pending.MapKeys() {
		ids = append(ids, int32(k.Int()))
	}
	slices.Sort(ids)
	actions := m.Mutable(fields.ByName("actions")).List()
	for _, k := range ids {
		// A copy: the worker adds to the actions it sends, and the
		// context keeps them until the history records them.
		a := proto.Clone(pending.MapIndex(reflect.ValueOf(k)).Interface().(proto.Message))
		actions.Append(protoreflect.ValueOfMessage(a.ProtoReflect()))
	}
	return res
}

// taskCompleted is where a v0.6.0 task (completableTask, what CallActivity,
// CreateTimer and the like return) says it has completed.
var taskCompleted = sync.OnceValue(func() struct {
	typ    reflect.Type
	offset uintptr
} {
	// A wait with no time to wait is a task made without a running
	// orchestration's state.
	t := reflect.TypeOf(task.NewOrchestrationContext(task.NewTaskRegistry(), "", nil, nil).WaitForSingleEvent("", 0))
	if t.Kind() != reflect.Pointer {
		panic("durabletask-go's tasks are not pointers: the engine needs v0.6.0's")
	}
	f, ok := t.Elem().FieldByName("isCompleted")
	if !ok || len(f.Index) != 1 || f.Type.Kind() != reflect.Bool {
		panic("durabletask-go's tasks have no field isCompleted of the type expected: the engine needs v0.6.0's")
	}
	return struct {
		typ    reflect.Type
		offset uintptr
	}{t, f.Offset}
})

// Completed reports whether t, one of v0.6.0's own tasks, has completed
// (or failed) by the events read so far; known is false for any other
// task. Unlike an Await, it reads no event and never blocks.
func Completed(t task.Task) (done, known bool) {
	c := taskCompleted()
	v := reflect.ValueOf(t)
	if !v.IsValid() || v.Type() != c.typ {
		return false, false
	}
	return *(*bool)(unsafe.Add(v.UnsafePointer(), c.offset)), true
}
