package scheduler

import (
	"errors"
	"fmt"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"fanoutfanin/internal/taskhub"
)

// durabletask-go v0.6.0 keeps its generated protobuf types internal, and a
// second generated copy of the same .proto in one binary panics at start. So
// the messages are made from the types v0.6.0 registers globally, and the
// fields that came to the protocol after v0.6.0 (completion tokens, health
// pings, history streaming, abandon) travel as unknown fields, which
// protobuf-go keeps on receipt and writes on send.

// method is the full gRPC path of a TaskHubSidecarService method.
func method(name string) string { return "/TaskHubSidecarService/" + name }

// Field numbers of the protocol that v0.6.0's generated code lacks
// (durabletask-protobuf orchestrator_service.proto).
const (
	fieldWorkItemHealthPing      protowire.Number = 4  // WorkItem.healthPing
	fieldWorkItemEntityV2        protowire.Number = 5  // WorkItem.entityRequestV2
	fieldWorkItemToken           protowire.Number = 10 // WorkItem.completionToken
	fieldOrchestratorNeedHistory protowire.Number = 6  // OrchestratorRequest.requiresHistoryStreaming
	fieldOrchestratorRespToken   protowire.Number = 4  // OrchestratorResponse.completionToken
	fieldActivityRespToken       protowire.Number = 5  // ActivityResponse.completionToken
	fieldAbandonToken            protowire.Number = 1  // Abandon*Request.completionToken
	fieldMaxOrchestrations       protowire.Number = 1  // GetWorkItemsRequest.maxConcurrentOrchestrationWorkItems
	fieldMaxActivities           protowire.Number = 2  // GetWorkItemsRequest.maxConcurrentActivityWorkItems
	fieldCapabilities            protowire.Number = 10 // GetWorkItemsRequest.capabilities
	fieldHistoryInstanceID       protowire.Number = 1  // StreamInstanceHistoryRequest.instanceId
	fieldHistoryExecutionID      protowire.Number = 2  // StreamInstanceHistoryRequest.executionId
	fieldHistoryForWorkItem      protowire.Number = 3  // StreamInstanceHistoryRequest.forWorkItemProcessing
	fieldHistoryChunkEvents      protowire.Number = 1  // HistoryChunk.events
	fieldActivityTraceContext    protowire.Number = 6  // ActivityRequest.parentTraceContext
	fieldActionTraceContext      protowire.Number = 5  // ScheduleTaskAction and CreateSubOrchestrationAction.parentTraceContext
	fieldOrchestratorRespTrace   protowire.Number = 6  // OrchestratorResponse.orchestrationTraceContext
	fieldCreateTraceContext      protowire.Number = 9  // CreateInstanceRequest.parentTraceContext

	capabilityHistoryStreaming = 1 // WorkerCapability.WORKER_CAPABILITY_HISTORY_STREAMING
)

// Field numbers v0.6.0 has too, for reading work items field by field
// (TestFieldNumbersAreV060s checks them against its descriptors).
const (
	fieldWorkItemOrchestrator protowire.Number = 1 // WorkItem.orchestratorRequest
	fieldOrchestratorPast     protowire.Number = 3 // OrchestratorRequest.pastEvents
	fieldOrchestratorNew      protowire.Number = 4 // OrchestratorRequest.newEvents
)

// newMessage returns an empty message of the type v0.6.0 registered as name.
func newMessage(name protoreflect.FullName) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err != nil {
		// Every name used here is in v0.6.0's proto, which go.mod pins.
		panic(fmt.Sprintf("durabletask protocol message %s is not registered: %v", name, err))
	}
	return mt.New().Interface()
}

// fields reads and sets the known fields of a message by their proto names.
type fields struct{ m protoreflect.Message }

func fieldsOf(m proto.Message) fields { return fields{m.ProtoReflect()} }

func (f fields) fd(name protoreflect.Name) protoreflect.FieldDescriptor {
	fd := f.m.Descriptor().Fields().ByName(name)
	if fd == nil {
		panic(fmt.Sprintf("durabletask protocol message %s has no field %s", f.m.Descriptor().FullName(), name))
	}
	return fd
}

func (f fields) str(name protoreflect.Name) string   { return f.m.Get(f.fd(name)).String() }
func (f fields) boolean(name protoreflect.Name) bool { return f.m.Get(f.fd(name)).Bool() }
func (f fields) int32(name protoreflect.Name) int32  { return int32(f.m.Get(f.fd(name)).Int()) }
func (f fields) has(name protoreflect.Name) bool     { return f.m.Has(f.fd(name)) }
func (f fields) msg(name protoreflect.Name) fields   { return fields{f.m.Get(f.fd(name)).Message()} }
func (f fields) mutable(name protoreflect.Name) fields {
	return fields{f.m.Mutable(f.fd(name)).Message()}
}

func (f fields) set(name protoreflect.Name, v any) fields {
	var pv protoreflect.Value
	switch v := v.(type) {
	case string:
		pv = protoreflect.ValueOfString(v)
	case bool:
		pv = protoreflect.ValueOfBool(v)
	case int32:
		pv = protoreflect.ValueOfInt32(v)
	case protoreflect.EnumNumber:
		pv = protoreflect.ValueOfEnum(v)
	case proto.Message:
		pv = protoreflect.ValueOfMessage(v.ProtoReflect())
	default:
		panic(fmt.Sprintf("unsupported field value %T", v))
	}
	f.m.Set(f.fd(name), pv)
	return f
}

// eachField calls fn with every field encoded in b, in order.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, value []byte)) error {
	for len(b) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(b)
		if tagLen < 0 {
			return protowire.ParseError(tagLen)
		}
		valLen := protowire.ConsumeFieldValue(num, typ, b[tagLen:])
		if valLen < 0 {
			return protowire.ParseError(valLen)
		}
		fn(num, typ, b[tagLen:tagLen+valLen])
		b = b[tagLen+valLen:]
	}
	return nil
}

// unknown reads the last occurrence of field num among m's unknown fields,
// as protobuf does for a repeated scalar: the last one wins.
func unknown(m proto.Message, num protowire.Number) (typ protowire.Type, value []byte, ok bool) {
	err := eachField(m.ProtoReflect().GetUnknown(), func(n protowire.Number, t protowire.Type, v []byte) {
		if n == num {
			typ, value, ok = t, v, true
		}
	})
	if err != nil {
		return 0, nil, false
	}
	return typ, value, ok
}

// unknownString reads a string field from m's unknown fields.
func unknownString(m proto.Message, num protowire.Number) string {
	typ, v, ok := unknown(m, num)
	if !ok || typ != protowire.BytesType {
		return ""
	}
	s, n := protowire.ConsumeBytes(v)
	if n < 0 {
		return ""
	}
	return string(s)
}

// unknownBool reads a bool field from m's unknown fields.
func unknownBool(m proto.Message, num protowire.Number) bool {
	typ, v, ok := unknown(m, num)
	if !ok || typ != protowire.VarintType {
		return false
	}
	x, n := protowire.ConsumeVarint(v)
	return n > 0 && x != 0
}

// hasUnknown reports whether field num is among m's unknown fields.
func hasUnknown(m proto.Message, num protowire.Number) bool {
	_, _, ok := unknown(m, num)
	return ok
}

// appendUnknown adds encoded fields to m's unknown fields, to be sent with it.
func appendUnknown(m proto.Message, b []byte) {
	r := m.ProtoReflect()
	r.SetUnknown(append(r.GetUnknown(), b...))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// getWorkItemsRequest asks for work within the worker's limits and says it
// can fetch long histories itself.
func getWorkItemsRequest(maxOrchestrations, maxActivities int) proto.Message {
	req := newMessage("GetWorkItemsRequest")
	var b []byte
	b = appendVarint(b, fieldMaxOrchestrations, uint64(maxOrchestrations))
	b = appendVarint(b, fieldMaxActivities, uint64(maxActivities))
	b = protowire.AppendTag(b, fieldCapabilities, protowire.BytesType)
	b = protowire.AppendBytes(b, protowire.AppendVarint(nil, capabilityHistoryStreaming))
	appendUnknown(req, b)
	return req
}

// abandonRequest is an Abandon*WorkItem request, which v0.6.0 lacks: one
// field, the completion token.
func abandonRequest(token string) proto.Message {
	req := &emptypb.Empty{}
	appendUnknown(req, appendString(nil, fieldAbandonToken, token))
	return req
}

// streamHistoryRequest asks for an instance's history, for replay.
func streamHistoryRequest(instanceID string, executionID *wrapperspb.StringValue) (proto.Message, error) {
	b := appendString(nil, fieldHistoryInstanceID, instanceID)
	if executionID != nil {
		id, err := proto.Marshal(executionID)
		if err != nil {
			return nil, err
		}
		b = protowire.AppendTag(b, fieldHistoryExecutionID, protowire.BytesType)
		b = protowire.AppendBytes(b, id)
	}
	b = appendVarint(b, fieldHistoryForWorkItem, 1)
	req := &emptypb.Empty{}
	appendUnknown(req, b)
	return req, nil
}

// historyChunkEvents returns the encoded events of a HistoryChunk received
// as an empty message with unknown fields.
func historyChunkEvents(chunk proto.Message) ([][]byte, error) {
	var events [][]byte
	err := eachField(chunk.ProtoReflect().GetUnknown(), func(n protowire.Number, t protowire.Type, v []byte) {
		if n == fieldHistoryChunkEvents && t == protowire.BytesType {
			e, _ := protowire.ConsumeBytes(v)
			events = append(events, e)
		}
	})
	return events, err
}

// encodedHistory is an orchestrator work item's history, its events as
// they were encoded: decoding them is most of the cost of receiving the
// item, and most of them came in the instance's previous step too
// (historyCache). The past events come as the region of the message that
// holds them back to back, as a work item has them (pastRegion), or one by
// one (past), as a streamed history has them; the new events one by one.
type encodedHistory struct {
	pastRegion []byte
	past, new  [][]byte
}

// splitWorkItem decodes a work item as received (the whole message), all
// but the history events of an orchestrator request, which it returns
// still encoded, in order.
func splitWorkItem(raw []byte) (proto.Message, encodedHistory, error) {
	var h encodedHistory
	var rest []byte // the work item without its history events
	split := false
	var splitErr error
	err := eachField(raw, func(num protowire.Number, typ protowire.Type, v []byte) {
		if num != fieldWorkItemOrchestrator || typ != protowire.BytesType {
			rest = append(protowire.AppendTag(rest, num, typ), v...)
			return
		}
		split = true
		req, _ := protowire.ConsumeBytes(v)
		var reqRest []byte
		if reqRest, h, splitErr = splitRequest(req); splitErr != nil {
			return
		}
		rest = protowire.AppendBytes(protowire.AppendTag(rest, num, typ), reqRest)
	})
	if err = errors.Join(err, splitErr); err != nil {
		return nil, h, fmt.Errorf("decoding a work item: %w", err)
	}
	if !split {
		rest = raw
	}
	item := newMessage("WorkItem")
	if err := proto.Unmarshal(rest, item); err != nil {
		return nil, h, fmt.Errorf("decoding a work item: %w", err)
	}
	return item, h, nil
}

// splitRequest takes an orchestrator request's history events out of it:
// the past events as the region that holds them, if they are back to back
// (as protobuf writes a repeated field), the new ones one by one.
func splitRequest(req []byte) (rest []byte, h encodedHistory, err error) {
	from, to := -1, -1 // the past events' region
	apart := false
	for at := 0; at < len(req); {
		num, typ, tagLen := protowire.ConsumeTag(req[at:])
		if tagLen < 0 {
			return nil, h, protowire.ParseError(tagLen)
		}
		valLen := protowire.ConsumeFieldValue(num, typ, req[at+tagLen:])
		if valLen < 0 {
			return nil, h, protowire.ParseError(valLen)
		}
		field, value := req[at:at+tagLen+valLen], req[at+tagLen:at+tagLen+valLen]
		switch {
		case typ == protowire.BytesType && num == fieldOrchestratorPast:
			if from < 0 {
				from = at
			} else if at != to {
				apart = true
			}
			to = at + len(field)
		case typ == protowire.BytesType && num == fieldOrchestratorNew:
			e, _ := protowire.ConsumeBytes(value)
			h.new = append(h.new, e)
		default:
			rest = append(rest, field...)
		}
		at += len(field)
	}
	switch {
	case from < 0:
	case apart:
		err = eachField(req, func(n protowire.Number, t protowire.Type, v []byte) {
			if t == protowire.BytesType && n == fieldOrchestratorPast {
				e, _ := protowire.ConsumeBytes(v)
				h.past = append(h.past, e)
			}
		})
	default:
		h.pastRegion = req[from:to]
	}
	return rest, h, err
}

// splitRegion splits a region of past events, back to back, into each
// event's encoding.
func splitRegion(region []byte) ([][]byte, error) {
	var events [][]byte
	for len(region) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(region)
		if tagLen < 0 {
			return nil, protowire.ParseError(tagLen)
		}
		e, n := protowire.ConsumeBytes(region[tagLen:])
		if n < 0 || num != fieldOrchestratorPast || typ != protowire.BytesType {
			return nil, errors.New("the past events are not one after the other")
		}
		events = append(events, e)
		region = region[tagLen+n:]
	}
	return events, nil
}

// taskScheduledEvent is the history event an activity executor runs from;
// parent, if not nil, is the TraceContext of the span that scheduled it.
func taskScheduledEvent(taskID int32, name string, input *wrapperspb.StringValue, parent proto.Message) *backend.HistoryEvent {
	e := &backend.HistoryEvent{EventId: taskID}
	ts := fieldsOf(e).mutable("taskScheduled").set("name", name)
	if input != nil {
		ts.set("input", input)
	}
	if parent != nil {
		ts.set("parentTraceContext", parent)
	}
	return e
}

// activityResponse reports an activity's outcome, as the executor returned it
// in a TaskCompleted or TaskFailed event.
func activityResponse(instanceID api.InstanceID, taskID int32, outcome *backend.HistoryEvent) proto.Message {
	res := newMessage("ActivityResponse")
	f := fieldsOf(res).set("instanceId", string(instanceID)).set("taskId", taskID)
	if failed := outcome.GetTaskFailed(); failed != nil {
		f.set("failureDetails", failed.GetFailureDetails())
	} else if result := outcome.GetTaskCompleted().GetResult(); result != nil {
		f.set("result", result)
	}
	return res
}

// failedActivityResponse reports that an activity failed with message.
func failedActivityResponse(instanceID api.InstanceID, taskID int32, errorType, message string) proto.Message {
	res := newMessage("ActivityResponse")
	fieldsOf(res).set("instanceId", string(instanceID)).set("taskId", taskID).
		set("failureDetails", &backend.TaskFailureDetails{ErrorType: errorType, ErrorMessage: message, IsNonRetriable: true})
	return res
}

// failOrchestration replaces the actions of an orchestrator response with
// one that fails the orchestration with message. The custom status goes too:
// it may be what was too large.
func failOrchestration(res proto.Message, errorType, message string) {
	taskhub.EndOrchestration(res, api.RUNTIME_STATUS_FAILED, nil, &backend.TaskFailureDetails{ErrorType: errorType, ErrorMessage: message, IsNonRetriable: true})
	f := fieldsOf(res)
	f.m.Clear(f.fd("customStatus"))
}

// largestPayload returns the size of the largest payload in m (any
// google.protobuf.StringValue: inputs, results, custom status, event data)
// and the path of the field holding it, such as "actions.scheduleTask.input".
func largestPayload(m proto.Message) (size int, path string) {
	var walk func(m protoreflect.Message, at string)
	walk = func(m protoreflect.Message, at string) {
		if m.Descriptor().FullName() == "google.protobuf.StringValue" {
			if n := len(m.Get(m.Descriptor().Fields().ByNumber(1)).String()); n > size {
				size, path = n, at
			}
			return
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
				return true
			}
			name := string(fd.Name())
			if at != "" {
				name = at + "." + name
			}
			if fd.IsList() {
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message(), name)
				}
			} else {
				walk(v.Message(), name)
			}
			return true
		})
	}
	walk(m.ProtoReflect(), "")
	return size, path
}
