package dtstest

// QueryInstances. The upstream v0.6.0 sidecar answers it with Unimplemented, so the server answers
// it itself: it lists the instances it saw created (StartInstance answers and the
// createSubOrchestration actions of accepted orchestrator completions), reads each one's current
// state from the sidecar with GetInstance, and filters, orders and pages them.
//
// The rules, strict where DTS is strict and documented where it leaves a choice:
//   - query (field 1) is required; taskHubNames (field 4) must be empty, since DTS selects the task
//     hub with the taskhub header; maxInstanceCount (field 5) must be 1..MaxQueryInstanceCount;
//     every runtimeStatus must be an OrchestrationStatus value; createdTimeFrom and createdTimeTo
//     must be valid timestamps, from not after to. Anything else is refused with InvalidArgument
//     and recorded as a violation.
//   - Filters: runtimeStatus (empty = any), createdTimeFrom <= created <= createdTimeTo (both
//     bounds inclusive, as in the Azure Storage and Netherite providers), instanceIdPrefix
//     (empty = any).
//   - Order: newest first (createdTimestamp descending), then instanceId ascending.
//   - Paging: at most maxInstanceCount states, and no more than fit in MaxMessageBytes; a
//     continuationToken is returned exactly when matching states remain. The token is opaque (32
//     hex digits) and stands for a server-side keyset cursor, the (createdTimestamp, instanceId)
//     of the last state returned and the query's filters; the next page starts after that key, so
//     instances created after the first page (newer, hence sorting first) never shift later pages:
//     nothing is returned twice or skipped. A token may be sent again (a retried page), but only
//     with the same filters (maxInstanceCount and fetchInputsAndOutputs may change); a token this
//     server did not issue, or one sent with other filters, is refused. An empty token string
//     counts as none. One exception the keyset cannot cover: continue-as-new restarts an
//     instance's createdTimestamp, so an instance that continues as new while a client is paging
//     moves to the front and is not in the later pages.
//   - Without fetchInputsAndOutputs, states carry no input, output, customStatus or
//     failureDetails, as the v0.6.0 sidecar's GetInstance leaves them out.
//   - Instances the sidecar had and no longer has (purged) are forgotten; sub-orchestrations it has
//     not created yet are left out until it has.
//   - Only instances created through this server are listed; the sidecar may hold others.

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// MaxQueryInstanceCount is the largest InstanceQuery.maxInstanceCount accepted. DTS SDKs ask for
// 100 per page by default.
const MaxQueryInstanceCount = 1000

const (
	// queryTokenReserve is the room kept in a QueryInstancesResponse for its continuationToken
	// (tag, lengths and 32 hex digits come to 36 bytes).
	queryTokenReserve = 64
	// queryFetchConcurrency bounds the upstream GetInstance calls of one query in flight at a time.
	queryFetchConcurrency = 8
)

var (
	iqDesc           = msgType("InstanceQuery").Descriptor()
	iqRuntimeStatus  = fd(iqDesc, "runtimeStatus")
	iqCreatedFrom    = fd(iqDesc, "createdTimeFrom")
	iqCreatedTo      = fd(iqDesc, "createdTimeTo")
	iqTaskHubNames   = fd(iqDesc, "taskHubNames")
	iqMaxCount       = fd(iqDesc, "maxInstanceCount")
	iqToken          = fd(iqDesc, "continuationToken")
	iqPrefix         = fd(iqDesc, "instanceIdPrefix")
	iqFetchIO        = fd(iqDesc, "fetchInputsAndOutputs")
	qiqQuery         = fd(msgType("QueryInstancesRequest").Descriptor(), "query")
	qisStates        = fd(msgType("QueryInstancesResponse").Descriptor(), "orchestrationState")
	qisToken         = fd(msgType("QueryInstancesResponse").Descriptor(), "continuationToken")
	osCreated        = fd(msgType("OrchestrationState").Descriptor(), "createdTimestamp")
	osStatus         = fd(msgType("OrchestrationState").Descriptor(), "orchestrationStatus")
	giqInstanceID    = fd(msgType("GetInstanceRequest").Descriptor(), "instanceId")
	giqInputsOutputs = fd(msgType("GetInstanceRequest").Descriptor(), "getInputsAndOutputs")
	girExists        = fd(msgType("GetInstanceResponse").Descriptor(), "exists")
	girState         = fd(msgType("GetInstanceResponse").Descriptor(), "orchestrationState")
	cirInstanceID    = fd(msgType("CreateInstanceResponse").Descriptor(), "instanceId")
	csoInstanceID    = fd(msgType("CreateSubOrchestrationAction").Descriptor(), "instanceId")
	actCreateSubOrch = fd(msgType("OrchestratorAction").Descriptor(), "createSubOrchestration")
)

// knownInstance is an instance ID the server saw created.
type knownInstance struct {
	// seq changes each time the ID is learned again, so that a query that found the instance
	// missing just before it was created again does not forget it.
	seq uint64
	// seen: the sidecar has had it. Sub-orchestrations are created by the sidecar some time after
	// the completion that asks for them is accepted; until then they are skipped, not forgotten.
	seen bool
}

// learnInstance records an instance ID; exists says the sidecar has it already.
func (s *Server) learnInstance(id string, exists bool) {
	if id == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.instanceSeq++
	s.instances[id] = &knownInstance{seq: s.instanceSeq, seen: exists}
}

func (s *Server) startInstance(ctx context.Context, req proto.Message) (proto.Message, error) {
	// Kept before the sidecar has the instance, which it may dispatch at
	// once; an instance without an id gets one from the sidecar.
	tc := s.readTraceContext("StartInstance", "CreateInstanceRequest", req, FieldCreateParentTrace)
	keep := func(iid string) {
		if tc != nil && iid != "" {
			s.mu.Lock()
			s.traceContexts[iid] = tc
			s.mu.Unlock()
		}
	}
	keep(req.ProtoReflect().Get(fd(req.ProtoReflect().Descriptor(), "instanceId")).String())
	resp, err := s.forward(ctx, "StartInstance", req, "CreateInstanceResponse")
	if err != nil {
		return nil, err
	}
	// v0.6.0 creates the instance before it answers.
	iid := resp.ProtoReflect().Get(cirInstanceID).String()
	s.learnInstance(iid, true)
	keep(iid)
	return resp, nil
}

// learnSubOrchestrations records the instances an accepted OrchestratorResponse creates.
func (s *Server) learnSubOrchestrations(or proto.Message) {
	acts := or.ProtoReflect().Get(orsActions).List()
	for i := 0; i < acts.Len(); i++ {
		if a := acts.Get(i).Message(); a.Has(actCreateSubOrch) {
			s.learnInstance(a.Get(actCreateSubOrch).Message().Get(csoInstanceID).String(), false)
		}
	}
}

// queryCursor is what a continuation token stands for.
type queryCursor struct {
	created time.Time // sort key of the last state returned
	id      string
	filter  string // instanceQuery.filter of the query that issued it
}

// instanceQuery is a validated InstanceQuery.
type instanceQuery struct {
	statuses map[int32]bool // empty: any
	from, to time.Time      // zero: unbounded; both inclusive
	prefix   string
	max      int
	fetchIO  bool
	filter   string       // the filters in words, to tie tokens to them
	after    *queryCursor // nil: first page
}

// parseQuery validates a QueryInstancesRequest; errors are refusals, already recorded.
func (s *Server) parseQuery(name string, req proto.Message) (*instanceQuery, error) {
	invalid := func(msg, format string, args ...any) error {
		return s.refuse(name, codes.InvalidArgument, msg, format, args...)
	}
	r := req.ProtoReflect()
	if !r.Has(qiqQuery) {
		return nil, invalid("query is required", "no query (field %d)", qiqQuery.Number())
	}
	m := r.Get(qiqQuery).Message()
	q := &instanceQuery{statuses: map[int32]bool{}, fetchIO: m.Get(iqFetchIO).Bool()}
	if hubs := m.Get(iqTaskHubNames).List(); hubs.Len() > 0 {
		names := make([]string, hubs.Len())
		for i := range names {
			names[i] = wrappedString(hubs.Get(i).Message())
		}
		return nil, invalid("taskHubNames is not supported: the taskhub header selects the task hub",
			"taskHubNames (field %d) set to %q; DTS selects the task hub with the taskhub header", iqTaskHubNames.Number(), names)
	}
	q.max = int(m.Get(iqMaxCount).Int())
	if q.max < 1 || q.max > MaxQueryInstanceCount {
		return nil, invalid(fmt.Sprintf("maxInstanceCount must be between 1 and %d", MaxQueryInstanceCount),
			"maxInstanceCount (field %d) is %d, want 1..%d", iqMaxCount.Number(), q.max, MaxQueryInstanceCount)
	}
	sts := m.Get(iqRuntimeStatus).List()
	for i := 0; i < sts.Len(); i++ {
		v := sts.Get(i).Enum()
		if iqRuntimeStatus.Enum().Values().ByNumber(v) == nil {
			return nil, invalid(fmt.Sprintf("runtimeStatus %d is not an OrchestrationStatus", v),
				"runtimeStatus (field %d) holds %d, which is not an OrchestrationStatus value", iqRuntimeStatus.Number(), v)
		}
		q.statuses[int32(v)] = true
	}
	for _, b := range []struct {
		f protoreflect.FieldDescriptor
		t *time.Time
	}{{iqCreatedFrom, &q.from}, {iqCreatedTo, &q.to}} {
		if !m.Has(b.f) {
			continue
		}
		ts := m.Get(b.f).Message().Interface().(*timestamppb.Timestamp)
		if err := ts.CheckValid(); err != nil {
			return nil, invalid(fmt.Sprintf("%s is not a valid timestamp", b.f.Name()), "%s (field %d): %v", b.f.Name(), b.f.Number(), err)
		}
		*b.t = ts.AsTime()
	}
	if !q.from.IsZero() && !q.to.IsZero() && q.from.After(q.to) {
		return nil, invalid("createdTimeFrom is after createdTimeTo", "createdTimeFrom %s is after createdTimeTo %s",
			q.from.Format(time.RFC3339Nano), q.to.Format(time.RFC3339Nano))
	}
	q.prefix, _ = optString(m, iqPrefix)
	q.filter = q.describeFilter()
	if token, _ := optString(m, iqToken); token != "" {
		s.mu.Lock()
		c, ok := s.queryCursors[token]
		s.mu.Unlock()
		if !ok {
			return nil, invalid("continuationToken was not issued by this server", "unknown continuationToken %q", token)
		}
		if c.filter != q.filter {
			return nil, invalid("continuationToken belongs to a query with other filters",
				"continuationToken %q was issued for %s, sent with %s", token, c.filter, q.filter)
		}
		q.after = &c
	}
	return q, nil
}

func (q *instanceQuery) describeFilter() string {
	var sts []int32
	for v := range q.statuses {
		sts = append(sts, v)
	}
	slices.Sort(sts)
	names := make([]string, len(sts))
	for i, v := range sts {
		names[i] = string(iqRuntimeStatus.Enum().Values().ByNumber(protoreflect.EnumNumber(v)).Name())
	}
	bound := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("{statuses %v, created %s..%s, prefix %q}", names, bound(q.from), bound(q.to), q.prefix)
}

func (q *instanceQuery) matches(st *listedState) bool {
	return (len(q.statuses) == 0 || q.statuses[st.status]) &&
		(q.from.IsZero() || !st.created.Before(q.from)) &&
		(q.to.IsZero() || !st.created.After(q.to))
}

// listedState is one instance's state read from the sidecar.
type listedState struct {
	id      string
	created time.Time
	status  int32
	msg     protoreflect.Message // OrchestrationState
}

// compareStates orders newest first, then by instance ID.
func compareStates(aCreated time.Time, aID string, bCreated time.Time, bID string) int {
	if c := bCreated.Compare(aCreated); c != 0 {
		return c
	}
	return cmp.Compare(aID, bID)
}

func (s *Server) queryInstances(ctx context.Context, req proto.Message) (proto.Message, error) {
	const name = "QueryInstances"
	q, err := s.parseQuery(name, req)
	if err != nil {
		return nil, err
	}
	states, err := s.readStates(ctx, q.prefix, q.fetchIO)
	if err != nil {
		return nil, err
	}
	var match []*listedState
	for _, st := range states {
		if q.matches(st) && (q.after == nil || compareStates(q.after.created, q.after.id, st.created, st.id) < 0) {
			match = append(match, st)
		}
	}
	slices.SortFunc(match, func(a, b *listedState) int { return compareStates(a.created, a.id, b.created, b.id) })

	resp := NewMessage("QueryInstancesResponse")
	list := resp.ProtoReflect().Mutable(qisStates).List()
	limit := s.opts.MaxMessageBytes - queryTokenReserve
	size, n := 0, 0
	for n < len(match) && n < q.max {
		st := match[n]
		sz := protowire.SizeTag(qisStates.Number()) + protowire.SizeBytes(proto.Size(st.msg.Interface()))
		if size+sz > limit {
			if n == 0 {
				return nil, status.Errorf(codes.ResourceExhausted,
					"the state of instance '%s' is %d bytes, more than fits in a %d-byte message", st.id, sz, s.opts.MaxMessageBytes)
			}
			break
		}
		list.Append(protoreflect.ValueOfMessage(st.msg))
		size += sz
		n++
	}
	var token string
	if n < len(match) {
		token = newToken()
		resp.ProtoReflect().Set(qisToken, protoreflect.ValueOfMessage(wrapperspb.String(token).ProtoReflect()))
	}
	s.mu.Lock()
	if token != "" {
		last := match[n-1]
		s.queryCursors[token] = queryCursor{created: last.created, id: last.id, filter: q.filter}
	}
	s.stats.Queries++
	s.mu.Unlock()
	s.logf("%s %s: %d of %d instance(s) match, %d returned, continuation token %q", name, q.filter, len(match), len(states), n, token)
	return resp, nil
}

// readStates reads the current state of every known instance whose ID starts with prefix from
// the sidecar; instances it no longer has are forgotten.
func (s *Server) readStates(ctx context.Context, prefix string, fetchIO bool) ([]*listedState, error) {
	type candidate struct {
		id   string
		seq  uint64
		resp protoreflect.Message
		err  error
	}
	s.mu.Lock()
	var cands []*candidate
	for id, k := range s.instances {
		if strings.HasPrefix(id, prefix) {
			cands = append(cands, &candidate{id: id, seq: k.seq})
		}
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	sem := make(chan struct{}, queryFetchConcurrency)
	for _, c := range cands {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req := NewMessage("GetInstanceRequest")
			req.ProtoReflect().Set(giqInstanceID, protoreflect.ValueOfString(c.id))
			req.ProtoReflect().Set(giqInputsOutputs, protoreflect.ValueOfBool(fetchIO))
			resp, err := s.forward(ctx, "GetInstance", req, "GetInstanceResponse")
			if err == nil {
				c.resp = resp.ProtoReflect()
			}
			c.err = err
		}()
	}
	wg.Wait()

	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*listedState
	var forgotten []string
	for _, c := range cands {
		if c.err != nil {
			return nil, c.err
		}
		k := s.instances[c.id]
		if !c.resp.Get(girExists).Bool() {
			if k != nil && k.seq == c.seq && k.seen {
				delete(s.instances, c.id)
				forgotten = append(forgotten, c.id)
			}
			continue
		}
		if k != nil {
			k.seen = true
		}
		st := c.resp.Get(girState).Message()
		out = append(out, &listedState{
			id:      c.id,
			created: st.Get(osCreated).Message().Interface().(*timestamppb.Timestamp).AsTime(),
			status:  int32(st.Get(osStatus).Enum()),
			msg:     st,
		})
	}
	if len(forgotten) > 0 {
		s.logf("QueryInstances: the sidecar no longer has %q; forgotten", forgotten)
	}
	return out, nil
}
