package dtstest

import (
	"fmt"

	"github.com/microsoft/durabletask-go/backend" // registers orchestrator_service.proto (v0.6.0) in protoregistry.GlobalTypes
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Field numbers of the current durabletask-protobuf (67a2f1d) that v0.6.0's generated code lacks.
// They travel as unknown fields.
const (
	FieldWorkItemHealthPing          protowire.Number = 4  // WorkItem.healthPing (HealthPing{})
	FieldWorkItemCompletionToken     protowire.Number = 10 // WorkItem.completionToken
	FieldOrchReqRequiresHistStream   protowire.Number = 6  // OrchestratorRequest.requiresHistoryStreaming
	FieldOrchRespCompletionToken     protowire.Number = 4  // OrchestratorResponse.completionToken
	FieldActRespCompletionToken      protowire.Number = 5  // ActivityResponse.completionToken
	FieldEntityResultCompletionToken protowire.Number = 5  // EntityBatchResult.completionToken
	FieldAbandonCompletionToken      protowire.Number = 1  // Abandon*Request.completionToken
	FieldGWIMaxOrchestrations        protowire.Number = 1  // GetWorkItemsRequest.maxConcurrentOrchestrationWorkItems
	FieldGWIMaxActivities            protowire.Number = 2  // GetWorkItemsRequest.maxConcurrentActivityWorkItems
	FieldGWIMaxEntities              protowire.Number = 3  // GetWorkItemsRequest.maxConcurrentEntityWorkItems
	FieldGWICapabilities             protowire.Number = 10 // GetWorkItemsRequest.capabilities (repeated enum)
	FieldGWIFilters                  protowire.Number = 11 // GetWorkItemsRequest.workItemFilters
	FieldSIHInstanceID               protowire.Number = 1  // StreamInstanceHistoryRequest.instanceId
	FieldSIHExecutionID              protowire.Number = 2  // StreamInstanceHistoryRequest.executionId (StringValue)
	FieldSIHForWorkItemProcessing    protowire.Number = 3  // StreamInstanceHistoryRequest.forWorkItemProcessing
	FieldHistoryChunkEvents          protowire.Number = 1  // HistoryChunk.events

	// CapabilityHistoryStreaming is WORKER_CAPABILITY_HISTORY_STREAMING.
	CapabilityHistoryStreaming int32 = 1
)

// msgType returns the v0.6.0 message type registered under an (unqualified) proto name.
// "" and "google.protobuf.Empty" give emptypb.Empty.
func msgType(name string) protoreflect.MessageType {
	if name == "" || name == "google.protobuf.Empty" {
		return (&emptypb.Empty{}).ProtoReflect().Type()
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		panic(fmt.Sprintf("dtstest: message %q not registered by durabletask-go v0.6.0: %v", name, err))
	}
	return mt
}

// NewMessage returns a new, empty instance of the durabletask-go v0.6.0 message with the given
// proto name (e.g. "WorkItem", "OrchestratorResponse"), taken from protoregistry.GlobalTypes.
func NewMessage(name string) proto.Message { return msgType(name).New().Interface() }

func fd(md protoreflect.MessageDescriptor, name string) protoreflect.FieldDescriptor {
	f := md.Fields().ByName(protoreflect.Name(name))
	if f == nil {
		panic(fmt.Sprintf("dtstest: %s has no field %q", md.FullName(), name))
	}
	return f
}

// Field descriptors used on hot paths, resolved once.
var (
	wiDesc         = msgType("WorkItem").Descriptor()
	wiOrchestrator = fd(wiDesc, "orchestratorRequest")
	wiActivity     = fd(wiDesc, "activityRequest")
	wiEntity       = fd(wiDesc, "entityRequest")

	orqDesc        = msgType("OrchestratorRequest").Descriptor()
	orqInstanceID  = fd(orqDesc, "instanceId")
	orqExecutionID = fd(orqDesc, "executionId")
	orqPastEvents  = fd(orqDesc, "pastEvents")

	arqDesc     = msgType("ActivityRequest").Descriptor()
	arqInstance = fd(arqDesc, "orchestrationInstance")
	arqTaskID   = fd(arqDesc, "taskId")

	oiInstanceID  = fd(msgType("OrchestrationInstance").Descriptor(), "instanceId")
	ebrInstanceID = fd(msgType("EntityBatchRequest").Descriptor(), "instanceId")

	orsDesc         = msgType("OrchestratorResponse").Descriptor()
	orsInstanceID   = fd(orsDesc, "instanceId")
	orsActions      = fd(orsDesc, "actions")
	orsCustomStatus = fd(orsDesc, "customStatus")

	acrDesc       = msgType("ActivityResponse").Descriptor()
	acrInstanceID = fd(acrDesc, "instanceId")
	acrTaskID     = fd(acrDesc, "taskId")
	acrResult     = fd(acrDesc, "result")
)

// walkUnknown reads the unknown fields of a message encoded with protowire, invoking fn per field.
// v is the varint for varint fields, b the bytes for length-delimited ones.
func walkUnknown(raw []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, b []byte)) error {
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return protowire.ParseError(n)
		}
		raw = raw[n:]
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(raw)
			if m < 0 {
				return protowire.ParseError(m)
			}
			fn(num, typ, v, nil)
			raw = raw[m:]
		case protowire.BytesType:
			b, m := protowire.ConsumeBytes(raw)
			if m < 0 {
				return protowire.ParseError(m)
			}
			fn(num, typ, 0, b)
			raw = raw[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, raw)
			if m < 0 {
				return protowire.ParseError(m)
			}
			fn(num, typ, 0, nil)
			raw = raw[m:]
		}
	}
	return nil
}

// UnknownString returns the last occurrence of string field num among m's unknown fields.
func UnknownString(m proto.Message, num protowire.Number) (string, bool) {
	var s string
	var ok bool
	_ = walkUnknown(m.ProtoReflect().GetUnknown(), func(n protowire.Number, typ protowire.Type, _ uint64, b []byte) {
		if n == num && typ == protowire.BytesType {
			s, ok = string(b), true
		}
	})
	return s, ok
}

// UnknownVarint returns the last occurrence of varint field num among m's unknown fields.
func UnknownVarint(m proto.Message, num protowire.Number) (uint64, bool) {
	var v uint64
	var ok bool
	_ = walkUnknown(m.ProtoReflect().GetUnknown(), func(n protowire.Number, typ protowire.Type, x uint64, _ []byte) {
		if n == num && typ == protowire.VarintType {
			v, ok = x, true
		}
	})
	return v, ok
}

// HasUnknownField reports whether field num occurs among m's unknown fields.
func HasUnknownField(m proto.Message, num protowire.Number) bool {
	found := false
	_ = walkUnknown(m.ProtoReflect().GetUnknown(), func(n protowire.Number, _ protowire.Type, _ uint64, _ []byte) {
		if n == num {
			found = true
		}
	})
	return found
}

// AppendUnknownString appends string field num to m's unknown fields.
func AppendUnknownString(m proto.Message, num protowire.Number, s string) {
	r := m.ProtoReflect()
	b := protowire.AppendTag(r.GetUnknown(), num, protowire.BytesType)
	r.SetUnknown(protowire.AppendString(b, s))
}

// AppendUnknownVarint appends varint field num to m's unknown fields.
func AppendUnknownVarint(m proto.Message, num protowire.Number, v uint64) {
	r := m.ProtoReflect()
	b := protowire.AppendTag(r.GetUnknown(), num, protowire.VarintType)
	r.SetUnknown(protowire.AppendVarint(b, v))
}

// AppendUnknownBytes appends length-delimited field num (e.g. an embedded message) to m's unknown fields.
func AppendUnknownBytes(m proto.Message, num protowire.Number, v []byte) {
	r := m.ProtoReflect()
	b := protowire.AppendTag(r.GetUnknown(), num, protowire.BytesType)
	r.SetUnknown(protowire.AppendBytes(b, v))
}

// WorkItemToken returns WorkItem.completionToken (field 10).
func WorkItemToken(wi proto.Message) string {
	s, _ := UnknownString(wi, FieldWorkItemCompletionToken)
	return s
}

// IsHealthPing reports whether a WorkItem is a health ping (field 4, no request set).
func IsHealthPing(wi proto.Message) bool {
	r := wi.ProtoReflect()
	return r.WhichOneof(wiOrchestrator.ContainingOneof()) == nil && HasUnknownField(wi, FieldWorkItemHealthPing)
}

// RequiresHistoryStreaming reports OrchestratorRequest.requiresHistoryStreaming (field 6) of an
// orchestrator WorkItem.
func RequiresHistoryStreaming(wi proto.Message) bool {
	r := wi.ProtoReflect()
	if !r.Has(wiOrchestrator) {
		return false
	}
	v, _ := UnknownVarint(r.Get(wiOrchestrator).Message().Interface(), FieldOrchReqRequiresHistStream)
	return v != 0
}

// Work-item kinds.
const (
	kindOther = iota
	kindOrchestration
	kindActivity
	kindEntity
)

func kindName(k int) string {
	switch k {
	case kindOrchestration:
		return "orchestration"
	case kindActivity:
		return "activity"
	case kindEntity:
		return "entity"
	}
	return "other"
}

// describeWorkItem returns the kind, instance ID and task ID of a WorkItem.
func describeWorkItem(wi proto.Message) (kind int, instanceID string, taskID int32) {
	r := wi.ProtoReflect()
	switch {
	case r.Has(wiOrchestrator):
		return kindOrchestration, r.Get(wiOrchestrator).Message().Get(orqInstanceID).String(), 0
	case r.Has(wiActivity):
		a := r.Get(wiActivity).Message()
		return kindActivity, a.Get(arqInstance).Message().Get(oiInstanceID).String(), int32(a.Get(arqTaskID).Int())
	case r.Has(wiEntity):
		return kindEntity, r.Get(wiEntity).Message().Get(ebrInstanceID).String(), 0
	}
	return kindOther, "", 0
}

// pastEvents returns the pastEvents of an orchestrator WorkItem.
func pastEvents(wi proto.Message) []*backend.HistoryEvent {
	r := wi.ProtoReflect()
	if !r.Has(wiOrchestrator) {
		return nil
	}
	l := r.Get(wiOrchestrator).Message().Get(orqPastEvents).List()
	out := make([]*backend.HistoryEvent, 0, l.Len())
	for i := 0; i < l.Len(); i++ {
		out = append(out, l.Get(i).Message().Interface().(*backend.HistoryEvent))
	}
	return out
}

// executionID returns OrchestratorRequest.executionId of an orchestrator WorkItem ("" if unset).
func executionID(wi proto.Message) string {
	r := wi.ProtoReflect()
	if !r.Has(wiOrchestrator) {
		return ""
	}
	o := r.Get(wiOrchestrator).Message()
	if !o.Has(orqExecutionID) {
		return ""
	}
	return wrappedString(o.Get(orqExecutionID).Message())
}

// wrappedString returns the value of a google.protobuf.StringValue.
func wrappedString(m protoreflect.Message) string {
	return m.Get(m.Descriptor().Fields().ByNumber(1)).String()
}

// optString returns a StringValue field's value and whether it is set.
func optString(m protoreflect.Message, f protoreflect.FieldDescriptor) (string, bool) {
	if !m.Has(f) {
		return "", false
	}
	return wrappedString(m.Get(f).Message()), true
}

// EncodeHistoryChunk encodes HistoryChunk{events} as an emptypb.Empty carrying unknown bytes.
func EncodeHistoryChunk(events []*backend.HistoryEvent) (*emptypb.Empty, error) {
	var b []byte
	for _, e := range events {
		eb, err := proto.Marshal(e)
		if err != nil {
			return nil, err
		}
		b = protowire.AppendTag(b, FieldHistoryChunkEvents, protowire.BytesType)
		b = protowire.AppendBytes(b, eb)
	}
	m := &emptypb.Empty{}
	m.ProtoReflect().SetUnknown(b)
	return m, nil
}

// DecodeHistoryChunk decodes the events of a HistoryChunk received as an emptypb.Empty.
func DecodeHistoryChunk(m proto.Message) ([]*backend.HistoryEvent, error) {
	var out []*backend.HistoryEvent
	var firstErr error
	err := walkUnknown(m.ProtoReflect().GetUnknown(), func(n protowire.Number, typ protowire.Type, _ uint64, b []byte) {
		if n != FieldHistoryChunkEvents || typ != protowire.BytesType {
			return
		}
		e := &backend.HistoryEvent{}
		if err := proto.Unmarshal(b, e); err != nil && firstErr == nil {
			firstErr = err
		}
		out = append(out, e)
	})
	if err != nil {
		return nil, err
	}
	return out, firstErr
}
