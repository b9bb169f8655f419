package dtstest

import (
	"regexp"
	"strconv"

	"github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Trace context, as the scheduler relays it. The parent a client names in
// StartInstance, and the parent a worker names in each action that
// schedules an activity or a sub-orchestration, reach the work items that
// follow: ExecutionStartedEvent.parentTraceContext in every orchestrator
// work item's history, TaskScheduledEvent.parentTraceContext, and
// ActivityRequest.parentTraceContext. The v0.6.0 sidecar keeps none of them,
// so the server keeps them, in memory, and writes them into the work items
// it dispatches. A trace context that is not a W3C traceparent is a
// violation.

// Field numbers of trace context that v0.6.0's generated code lacks.
const (
	FieldCreateParentTrace   protowire.Number = 9 // CreateInstanceRequest.parentTraceContext
	FieldActionParentTrace   protowire.Number = 5 // ScheduleTaskAction and CreateSubOrchestrationAction.parentTraceContext
	FieldActivityParentTrace protowire.Number = 6 // ActivityRequest.parentTraceContext
	FieldOrchRespTrace       protowire.Number = 6 // OrchestratorResponse.orchestrationTraceContext
)

var (
	traceparent = regexp.MustCompile(`^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)
	spanID      = regexp.MustCompile(`^[0-9a-f]{16}$`)
)

// readTraceContext returns field num of m, a TraceContext, as v0.6.0's
// message; nil if m has none. A malformed one is recorded as a violation of
// method, about what.
func (s *Server) readTraceContext(method, what string, m proto.Message, num protowire.Number) proto.Message {
	b, ok := UnknownString(m, num)
	if !ok {
		return nil
	}
	tc := NewMessage("TraceContext")
	if err := proto.Unmarshal([]byte(b), tc); err != nil {
		s.violate(method, "%s: field %d is not a TraceContext: %v", what, num, err)
		return nil
	}
	if tp := tc.ProtoReflect().Get(fd(tc.ProtoReflect().Descriptor(), "traceParent")).String(); !traceparent.MatchString(tp) {
		s.violate(method, "%s: traceParent %q is not a W3C traceparent", what, tp)
		return nil
	}
	s.mu.Lock()
	s.stats.TraceContexts++
	s.mu.Unlock()
	return tc
}

// learnTraceContexts keeps the parents an accepted OrchestratorResponse
// names for what it schedules.
func (s *Server) learnTraceContexts(or proto.Message) {
	const name = "CompleteOrchestratorTask"
	iid := or.ProtoReflect().Get(orsInstanceID).String()
	if b, ok := UnknownString(or, FieldOrchRespTrace); ok {
		// OrchestrationTraceContext{StringValue spanID = 1; Timestamp spanStartTime = 2}
		_ = walkUnknown([]byte(b), func(n protowire.Number, typ protowire.Type, _ uint64, v []byte) {
			if n == 1 {
				_ = walkUnknown(v, func(n protowire.Number, _ protowire.Type, _ uint64, id []byte) {
					if n == 1 && !spanID.Match(id) {
						s.violate(name, "%s: orchestrationTraceContext.spanID %q is not 16 hex digits", iid, id)
					}
				})
			}
		})
	}
	acts := or.ProtoReflect().Get(orsActions).List()
	for i := 0; i < acts.Len(); i++ {
		a := acts.Get(i).Message()
		id := a.Get(fd(a.Descriptor(), "id")).Int()
		for _, kind := range []protoreflect.Name{"scheduleTask", "createSubOrchestration"} {
			f := a.Descriptor().Fields().ByName(kind)
			if !a.Has(f) {
				continue
			}
			action := a.Get(f).Message()
			tc := s.readTraceContext(name, iid+" "+string(kind), action.Interface(), FieldActionParentTrace)
			if tc == nil {
				continue
			}
			s.mu.Lock()
			if kind == "scheduleTask" {
				s.traceContexts[workKey(kindActivity, iid, int32(id))] = tc
			} else {
				s.traceContexts[action.Get(csoInstanceID).String()] = tc
			}
			s.mu.Unlock()
		}
	}
}

// relayTraceContextsLocked writes the trace contexts the server keeps into a
// work item from upstream, where they are missing.
func (s *Server) relayTraceContextsLocked(it *item) {
	r := it.wi.ProtoReflect()
	switch it.kind {
	case kindActivity:
		a := r.Mutable(wiActivity).Message().Interface()
		if tc := s.traceContexts[workKey(kindActivity, it.instanceID, it.taskID)]; tc != nil && !HasUnknownField(a, FieldActivityParentTrace) {
			b, _ := proto.Marshal(tc)
			AppendUnknownBytes(a, FieldActivityParentTrace, b)
			s.stats.TraceContextsRelayed++
		}
	case kindOrchestration:
		o := r.Mutable(wiOrchestrator).Message()
		for _, list := range []protoreflect.List{o.Mutable(orqPastEvents).List(), o.Mutable(fd(orqDesc, "newEvents")).List()} {
			for i := 0; i < list.Len(); i++ {
				s.relayToEventLocked(it.instanceID, list.Get(i).Message().Interface().(*backend.HistoryEvent))
			}
		}
	}
}

func (s *Server) relayToEventLocked(iid string, e *backend.HistoryEvent) {
	var key string
	var kind protoreflect.Name
	switch {
	case e.GetExecutionStarted() != nil:
		key, kind = iid, "executionStarted"
	case e.GetTaskScheduled() != nil:
		key, kind = iid+"/"+strconv.Itoa(int(e.GetEventId())), "taskScheduled"
	default:
		return
	}
	tc := s.traceContexts[key]
	if tc == nil {
		return
	}
	ev := e.ProtoReflect().Mutable(fd(e.ProtoReflect().Descriptor(), string(kind))).Message()
	if f := fd(ev.Descriptor(), "parentTraceContext"); !ev.Has(f) {
		ev.Set(f, protoreflect.ValueOfMessage(proto.Clone(tc).ProtoReflect()))
		s.stats.TraceContextsRelayed++
	}
}
