// Package dtstest is a strict Durable Task Scheduler (DTS) conformance server for tests.
//
// It implements TaskHubSidecarService (method paths /TaskHubSidecarService/<Method>) in front of a
// real durabletask-go v0.6.0 sidecar, enforces what DTS enforces (task hub and bearer metadata,
// completion tokens, leases bound to the GetWorkItems stream, per-stream concurrency limits,
// message and payload sizes, history streaming, abandon, health pings) and records every protocol
// violation it sees. QueryInstances, which the v0.6.0 sidecar lacks, it answers itself (query.go).
// Messages are v0.6.0's generated types looked up in protoregistry.GlobalTypes;
// fields v0.6.0 lacks are read and written as unknown fields. No second copy of the proto is
// compiled in.
package dtstest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Defaults for Options.
const (
	DefaultMaxMessageBytes    = 4 * 1024 * 1024 // 4,194,304
	DefaultMaxPayloadBytes    = 1024 * 1024     // 1,048,576
	DefaultHistoryChunkEvents = 25

	// AbandonRedeliveryDelay is how long an abandoned work item waits before it is dispatched again.
	AbandonRedeliveryDelay = 100 * time.Millisecond

	// completionForwardTimeout bounds passing an accepted completion upstream.
	completionForwardTimeout = 30 * time.Second

	grpcRecvLimit = 64 * 1024 * 1024
	servicePrefix = "/TaskHubSidecarService/"
)

// Options configures a Server.
type Options struct {
	// Upstream is the address (host:port, plaintext) of a running durabletask-go v0.6.0 sidecar. Required.
	Upstream string
	// TaskHub is the value every call's `taskhub` header must have; otherwise NotFound "task hub not found". Required.
	TaskHub string
	// Token, when set, requires `authorization: Bearer <t>` with Token(t) true on every call; otherwise
	// Unauthenticated. nil: no authorization needed.
	Token func(string) bool
	// TLS makes the server serve TLS when set.
	TLS *tls.Config
	// MaxMessageBytes: requests larger than this are refused with ResourceExhausted and recorded.
	// Default 4 MiB (4,194,304).
	MaxMessageBytes int
	// MaxPayloadBytes: any single payload larger than this is refused with InvalidArgument and
	// recorded. Default 1 MiB (1,048,576).
	MaxPayloadBytes int
	// HistoryStreamingEvents: orchestrator work items whose pastEvents exceed this count are sent
	// without pastEvents and with requiresHistoryStreaming=true to workers that advertised
	// capability 1 (HISTORY_STREAMING). 0 = never.
	HistoryStreamingEvents int
	// HistoryChunkEvents is the number of events per HistoryChunk. Default 25.
	HistoryChunkEvents int
	// PingInterval: send a health ping (WorkItem field 4) on every open work-item stream this often. 0 = never.
	PingInterval time.Duration
	// DropFirstStreamAfter ends the first work-item stream ever opened with codes.Unavailable once this
	// many work items were dispatched on it (exactly once per server). 0 = never.
	DropFirstStreamAfter int
	// Logf is optional, e.g. t.Logf.
	Logf func(format string, args ...any)
}

// StreamInfo describes one GetWorkItems stream opened by a worker.
type StreamInfo struct {
	ID                 int // 1 for the first stream, then increasing
	WorkerID           string
	UserAgent          string
	MaxOrchestrations  int32 // GetWorkItemsRequest field 1 (0 if absent)
	MaxActivities      int32 // field 2
	MaxEntities        int32 // field 3
	Capabilities       []int32
	HasWorkItemFilters bool // field 11 present
}

// Stats are counters kept by a Server.
type Stats struct {
	Dispatched          int // work-item copies sent to workers (including redeliveries)
	Redelivered         int // dispatches of an item that had been dispatched before
	Completed           int // completions accepted (valid token)
	StaleCompletions    int // completion/abandon attempts with a token that had been retired (answered NotFound)
	Abandoned           int // abandons accepted
	HistoryStreams      int // StreamInstanceHistory calls served
	Queries             int // QueryInstances calls answered (not counting refused ones)
	Pings               int // health pings sent
	DroppedStreams      int // streams ended by DropFirstStreamAfter
	LargestRequestBytes int // largest request message seen (proto.Size)

	UpstreamWorkItems  int // work items received from the upstream sidecar
	UpstreamStreams    int // upstream GetWorkItems streams opened (>1 means it was reopened)
	UpstreamErrors     int // forwarded completions the upstream sidecar refused
	UpstreamDropped    int // queued/outstanding items dropped because the upstream stream they came on ended
	HistoryWithheld    int // orchestrator work items dispatched without pastEvents (requiresHistoryStreaming)
	StreamsOpened      int // GetWorkItems streams accepted
	StreamsEnded       int // GetWorkItems streams that ended (any reason)
	Requeued           int // outstanding items put back in the queue because their stream ended
	Refused            int // requests refused (metadata, size, payload, token)
	Violations         int // len(Violations())
	Queued             int // items waiting for dispatch now
	Outstanding        int // items leased to workers now
	PeakOutstandingOrc int // highest number of orchestration items outstanding on one stream
	PeakOutstandingAct int // highest number of activity items outstanding on one stream

	TraceContexts        int // well-formed trace contexts received (StartInstance, actions)
	TraceContextsRelayed int // trace contexts written into dispatched work items
}

const (
	roleNone = iota // Hello: taskhub/auth only
	roleClient
	roleWorker
)

type leaseState int

const (
	leaseOutstanding leaseState = iota
	leaseCompleted
	leaseAbandoned
	leaseStreamEnded
	leaseUpstreamLost
)

func (s leaseState) String() string {
	switch s {
	case leaseOutstanding:
		return "outstanding"
	case leaseCompleted:
		return "already completed"
	case leaseAbandoned:
		return "abandoned"
	case leaseStreamEnded:
		return "released because its work-item stream ended"
	case leaseUpstreamLost:
		return "lost because the upstream sidecar stream ended"
	}
	return "?"
}

// item is one work item received from upstream; wi is never mutated (dispatch sends clones).
type item struct {
	wi         proto.Message
	kind       int
	instanceID string
	taskID     int32
	gen        int // upstream stream generation
	notBefore  time.Time
	deliveries int
}

// lease is one dispatched copy of an item, identified by its completion token.
type lease struct {
	token          string
	item           *item // nil once retired
	stream         *dstream
	kind           int
	instanceID     string
	taskID         int32
	state          leaseState
	withheld       bool // sent without pastEvents
	historyFetched bool
	retiredTries   int // completion/abandon attempts after it was retired
}

type dstream struct {
	id            int
	info          StreamInfo
	histStreaming bool
	leases        map[string]*lease
	outstanding   [4]int
	assigned      int
	outbox        []proto.Message
	notify        chan struct{}
	drainThenDrop bool
	closed        bool // ended, or being dropped: takes no more work
}

// Server is a strict DTS stand-in. Create it with Start.
type Server struct {
	opts   Options
	lis    net.Listener
	gs     *grpc.Server
	up     *grpc.ClientConn
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{}

	bg        sync.WaitGroup // internal goroutines
	handlers  sync.WaitGroup // RPC handlers
	closeOnce sync.Once

	mu                  sync.Mutex
	closed              bool
	queue               []*item
	streams             []*dstream // open streams in open order (round-robin)
	rr                  int
	nextStreamID        int
	tokens              map[string]*lease
	upGen               int
	violations          []string
	streamInfos         []StreamInfo
	stats               Stats
	activityCompletions map[string]int
	instances           map[string]*knownInstance // what QueryInstances lists
	instanceSeq         uint64
	queryCursors        map[string]queryCursor // QueryInstances continuation tokens issued
	// traceContexts are the parents named for instances (by id) and for
	// activities (by instance/taskId), to relay (tracecontext.go).
	traceContexts map[string]proto.Message
}

// Start starts a server on 127.0.0.1:0 in front of opts.Upstream.
func Start(opts Options) (*Server, error) {
	if opts.Upstream == "" {
		return nil, errors.New("dtstest: Options.Upstream is required")
	}
	if opts.TaskHub == "" {
		return nil, errors.New("dtstest: Options.TaskHub is required")
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.MaxPayloadBytes <= 0 {
		opts.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if opts.HistoryChunkEvents <= 0 {
		opts.HistoryChunkEvents = DefaultHistoryChunkEvents
	}
	up, err := grpc.NewClient("passthrough:///"+opts.Upstream,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Reconnect quickly when a test restarts the sidecar (grpc's default starts at 1 s).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(grpcRecvLimit), grpc.MaxCallSendMsgSize(grpcRecvLimit)))
	if err != nil {
		return nil, fmt.Errorf("dtstest: dial upstream %s: %w", opts.Upstream, err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		up.Close()
		return nil, err
	}
	recv := grpcRecvLimit
	if 2*opts.MaxMessageBytes > recv {
		recv = 2 * opts.MaxMessageBytes
	}
	sopts := []grpc.ServerOption{grpc.MaxRecvMsgSize(recv)}
	if opts.TLS != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:                opts,
		lis:                 lis,
		gs:                  grpc.NewServer(sopts...),
		up:                  up,
		ctx:                 ctx,
		cancel:              cancel,
		wake:                make(chan struct{}, 1),
		tokens:              map[string]*lease{},
		activityCompletions: map[string]int{},
		instances:           map[string]*knownInstance{},
		traceContexts:       map[string]proto.Message{},
		queryCursors:        map[string]queryCursor{},
	}
	desc := s.serviceDesc()
	s.gs.RegisterService(&desc, s)
	s.bg.Add(3)
	go func() {
		defer s.bg.Done()
		_ = s.gs.Serve(lis)
	}()
	go s.upstreamLoop()
	go s.dispatchLoop()
	return s, nil
}

// Addr returns "127.0.0.1:port".
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops the server, ends every stream and waits for all its goroutines.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		s.gs.Stop()
		s.up.Close()
		s.handlers.Wait()
		s.bg.Wait()
	})
}

// Violations returns every protocol violation seen, in order.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// Streams returns every GetWorkItems stream opened, in order.
func (s *Server) Streams() []StreamInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]StreamInfo, len(s.streamInfos))
	for i, si := range s.streamInfos {
		si.Capabilities = append([]int32(nil), si.Capabilities...)
		out[i] = si
	}
	return out
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Violations = len(s.violations)
	st.Queued = len(s.queue)
	for _, ds := range s.streams {
		st.Outstanding += len(ds.leases)
	}
	return st
}

// ActivityCompletions returns "instanceId/taskId" -> completions accepted (valid token) for that activity.
func (s *Server) ActivityCompletions() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.activityCompletions))
	for k, v := range s.activityCompletions {
		out[k] = v
	}
	return out
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf("dtstest: "+format, args...)
	}
}

// violateLocked records a violation; s.mu must be held.
func (s *Server) violateLocked(method, format string, args ...any) {
	v := method + ": " + fmt.Sprintf(format, args...)
	s.violations = append(s.violations, v)
	s.logf("VIOLATION %s", v)
}

func (s *Server) violate(method, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violateLocked(method, format, args...)
}

// refuse records a violation, counts a refused request and returns the status error.
func (s *Server) refuse(method string, code codes.Code, msg string, format string, args ...any) error {
	s.mu.Lock()
	s.stats.Refused++
	s.violateLocked(method, format, args...)
	s.mu.Unlock()
	return status.Error(code, msg)
}

// enter registers an RPC handler; false once the server is closed.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.handlers.Add(1)
	return true
}

func (s *Server) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func newToken() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// ---------------------------------------------------------------------------------------------
// Service description and checks

type method struct {
	name      string
	req, resp string // registry names; "" = google.protobuf.Empty
	role      int
	payloads  func(proto.Message) []payload
	handle    func(s *Server, ctx context.Context, req proto.Message) (proto.Message, error) // nil: forward
}

type payload struct {
	label string
	size  int
}

func stringFieldPayloads(fields ...string) func(proto.Message) []payload {
	return func(m proto.Message) []payload {
		r := m.ProtoReflect()
		var out []payload
		for _, name := range fields {
			f := r.Descriptor().Fields().ByName(protoreflect.Name(name))
			if f == nil {
				continue
			}
			if v, ok := optString(r, f); ok {
				out = append(out, payload{name, len(v)})
			}
		}
		return out
	}
}

var actionPayloadFields = map[protoreflect.Name][]protoreflect.Name{
	"scheduleTask":           {"input"},
	"createSubOrchestration": {"input"},
	"sendEvent":              {"data"},
	"completeOrchestration":  {"result", "details"},
	"terminateOrchestration": {"reason"},
}

func orchestratorResponsePayloads(m proto.Message) []payload {
	r := m.ProtoReflect()
	var out []payload
	if v, ok := optString(r, orsCustomStatus); ok {
		out = append(out, payload{"customStatus", len(v)})
	}
	acts := r.Get(orsActions).List()
	for i := 0; i < acts.Len(); i++ {
		a := acts.Get(i).Message()
		oneofs := a.Descriptor().Oneofs()
		for j := 0; j < oneofs.Len(); j++ {
			f := a.WhichOneof(oneofs.Get(j))
			if f == nil || f.Message() == nil {
				continue
			}
			sub := a.Get(f).Message()
			for _, name := range actionPayloadFields[f.Name()] {
				sf := sub.Descriptor().Fields().ByName(name)
				if sf == nil {
					continue
				}
				if v, ok := optString(sub, sf); ok {
					out = append(out, payload{fmt.Sprintf("actions[%d].%s.%s", i, f.Name(), name), len(v)})
				}
			}
		}
	}
	return out
}

func activityResponsePayloads(m proto.Message) []payload {
	if v, ok := optString(m.ProtoReflect(), acrResult); ok {
		return []payload{{"result", len(v)}}
	}
	return nil
}

func (s *Server) methods() []*method {
	return []*method{
		{name: "Hello", role: roleNone},
		{name: "StartInstance", req: "CreateInstanceRequest", resp: "CreateInstanceResponse", role: roleClient, payloads: stringFieldPayloads("input"), handle: (*Server).startInstance},
		{name: "GetInstance", req: "GetInstanceRequest", resp: "GetInstanceResponse", role: roleClient},
		{name: "RewindInstance", req: "RewindInstanceRequest", resp: "RewindInstanceResponse", role: roleClient},
		{name: "WaitForInstanceStart", req: "GetInstanceRequest", resp: "GetInstanceResponse", role: roleClient},
		{name: "WaitForInstanceCompletion", req: "GetInstanceRequest", resp: "GetInstanceResponse", role: roleClient},
		{name: "RaiseEvent", req: "RaiseEventRequest", resp: "RaiseEventResponse", role: roleClient, payloads: stringFieldPayloads("input")},
		{name: "TerminateInstance", req: "TerminateRequest", resp: "TerminateResponse", role: roleClient, payloads: stringFieldPayloads("output")},
		{name: "SuspendInstance", req: "SuspendRequest", resp: "SuspendResponse", role: roleClient},
		{name: "ResumeInstance", req: "ResumeRequest", resp: "ResumeResponse", role: roleClient},
		{name: "QueryInstances", req: "QueryInstancesRequest", resp: "QueryInstancesResponse", role: roleClient, handle: (*Server).queryInstances},
		{name: "PurgeInstances", req: "PurgeInstancesRequest", resp: "PurgeInstancesResponse", role: roleClient},
		{name: "CreateTaskHub", req: "CreateTaskHubRequest", resp: "CreateTaskHubResponse", role: roleClient},
		{name: "DeleteTaskHub", req: "DeleteTaskHubRequest", resp: "DeleteTaskHubResponse", role: roleClient},
		{name: "SignalEntity", req: "SignalEntityRequest", resp: "SignalEntityResponse", role: roleClient, payloads: stringFieldPayloads("input")},
		{name: "GetEntity", req: "GetEntityRequest", resp: "GetEntityResponse", role: roleClient},
		{name: "QueryEntities", req: "QueryEntitiesRequest", resp: "QueryEntitiesResponse", role: roleClient},
		{name: "CleanEntityStorage", req: "CleanEntityStorageRequest", resp: "CleanEntityStorageResponse", role: roleClient},
		{name: "CompleteOrchestratorTask", req: "OrchestratorResponse", resp: "CompleteTaskResponse", role: roleWorker, payloads: orchestratorResponsePayloads, handle: (*Server).completeOrchestrator},
		{name: "CompleteActivityTask", req: "ActivityResponse", resp: "CompleteTaskResponse", role: roleWorker, payloads: activityResponsePayloads, handle: (*Server).completeActivity},
		{name: "CompleteEntityTask", req: "EntityBatchResult", resp: "CompleteTaskResponse", role: roleWorker, handle: (*Server).completeEntity},
		{name: "AbandonTaskOrchestratorWorkItem", role: roleWorker, handle: abandonHandler("AbandonTaskOrchestratorWorkItem", kindOrchestration)},
		{name: "AbandonTaskActivityWorkItem", role: roleWorker, handle: abandonHandler("AbandonTaskActivityWorkItem", kindActivity)},
		{name: "AbandonTaskEntityWorkItem", role: roleWorker, handle: abandonHandler("AbandonTaskEntityWorkItem", kindEntity)},
	}
}

func (s *Server) serviceDesc() grpc.ServiceDesc {
	desc := grpc.ServiceDesc{
		ServiceName: "TaskHubSidecarService",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{
			{StreamName: "GetWorkItems", Handler: s.getWorkItems, ServerStreams: true},
			{StreamName: "StreamInstanceHistory", Handler: s.streamInstanceHistory, ServerStreams: true},
		},
		Metadata: "orchestrator_service.proto",
	}
	for _, m := range s.methods() {
		desc.Methods = append(desc.Methods, grpc.MethodDesc{MethodName: m.name, Handler: s.unary(m)})
	}
	return desc
}

func (s *Server) unary(m *method) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		if !s.enter() {
			return nil, status.Error(codes.Unavailable, "server shutting down")
		}
		defer s.handlers.Done()
		req := NewMessage(m.req)
		if err := dec(req); err != nil {
			return nil, err
		}
		if err := s.checkCall(ctx, m.name, m.role, req); err != nil {
			return nil, err
		}
		if m.payloads != nil {
			for _, p := range m.payloads(req) {
				if p.size > s.opts.MaxPayloadBytes {
					return nil, s.refuse(m.name, codes.InvalidArgument,
						fmt.Sprintf("payload %s is %d bytes, larger than the %d-byte limit", p.label, p.size, s.opts.MaxPayloadBytes),
						"payload %s is %d bytes (limit %d)", p.label, p.size, s.opts.MaxPayloadBytes)
				}
			}
		}
		if m.handle != nil {
			return m.handle(s, ctx, req)
		}
		return s.forward(ctx, m.name, req, m.resp)
	}
}

func firstMD(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// checkCall applies the message-size and metadata checks every RPC gets.
func (s *Server) checkCall(ctx context.Context, method string, role int, req proto.Message) error {
	size := proto.Size(req)
	s.mu.Lock()
	if size > s.stats.LargestRequestBytes {
		s.stats.LargestRequestBytes = size
	}
	s.mu.Unlock()
	if size > s.opts.MaxMessageBytes {
		return s.refuse(method, codes.ResourceExhausted,
			fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", size, s.opts.MaxMessageBytes),
			"request message is %d bytes, larger than the %d-byte limit", size, s.opts.MaxMessageBytes)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if s.opts.Token != nil {
		auth := firstMD(md, "authorization")
		if auth == "" {
			return s.refuse(method, codes.Unauthenticated, "missing authorization header", "no authorization header")
		}
		scheme, tok, _ := strings.Cut(auth, " ")
		if !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return s.refuse(method, codes.Unauthenticated, "authorization must be a bearer token", "authorization header is not \"Bearer <token>\"")
		}
		if !s.opts.Token(tok) {
			return s.refuse(method, codes.Unauthenticated, "invalid bearer token", "bearer token rejected")
		}
	}
	if hub := md.Get("taskhub"); len(hub) == 0 {
		return s.refuse(method, codes.NotFound, "task hub not found", "no taskhub header")
	} else if hub[0] != s.opts.TaskHub {
		return s.refuse(method, codes.NotFound, "task hub not found", "taskhub header %q, want %q", hub[0], s.opts.TaskHub)
	}
	var suffix string
	switch role {
	case roleWorker:
		suffix = " (DurableTaskWorker)"
	case roleClient:
		suffix = " (DurableTaskClient)"
	default:
		return nil
	}
	if ua := md.Get("x-user-agent"); len(ua) == 0 {
		s.violate(method, "no x-user-agent header (want \"<sdk>/<version>%s\")", suffix)
	} else if !strings.HasSuffix(ua[0], suffix) {
		s.violate(method, "x-user-agent %q does not end in %q", ua[0], suffix)
	}
	return nil
}

func validWorkerID(id string) bool {
	parts := strings.Split(id, ",")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if strings.TrimSpace(p) == "" {
			return false
		}
	}
	pid, err := strconv.Atoi(parts[1])
	return err == nil && pid > 0
}

func (s *Server) forward(ctx context.Context, name string, req proto.Message, resp string) (proto.Message, error) {
	out := NewMessage(resp)
	// A fresh outgoing context: the worker's headers are not passed on (the sidecar needs none);
	// the deadline and cancellation are.
	if err := s.up.Invoke(metadata.NewOutgoingContext(ctx, metadata.MD{}), servicePrefix+name, req, out); err != nil {
		return nil, err
	}
	return out, nil
}

// ---------------------------------------------------------------------------------------------
// Completions and abandons

var errWorkItemNotFound = status.Error(codes.NotFound, "work item not found")

// claim validates a completion token and, if valid, retires the lease (completed or abandoned).
func (s *Server) claim(method, token string, kind int, instanceID string, taskID int32, checkIdentity, abandon bool) (*lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token == "" {
		s.stats.Refused++
		s.violateLocked(method, "no completion token (echo WorkItem.completionToken=10 in the request)")
		return nil, status.Error(codes.InvalidArgument, "completionToken is required")
	}
	l := s.tokens[token]
	if l == nil {
		s.stats.Refused++
		s.violateLocked(method, "unknown completion token %q (never issued)", token)
		return nil, errWorkItemNotFound
	}
	if l.state != leaseOutstanding {
		l.retiredTries++
		s.stats.StaleCompletions++
		if l.retiredTries > 1 {
			s.violateLocked(method, "attempt #%d with stale token %q (%s %s, %s): the worker retried after NotFound",
				l.retiredTries, token, kindName(l.kind), workKey(l.kind, l.instanceID, l.taskID), l.state)
		} else {
			s.logf("%s: stale token %q for %s %s (%s) -> NotFound", method, token, kindName(l.kind), workKey(l.kind, l.instanceID, l.taskID), l.state)
		}
		return nil, errWorkItemNotFound
	}
	if l.kind != kind {
		s.stats.Refused++
		s.violateLocked(method, "token %q belongs to %s work item %s, not to an %s work item",
			token, kindName(l.kind), workKey(l.kind, l.instanceID, l.taskID), kindName(kind))
		return nil, errWorkItemNotFound
	}
	if checkIdentity && (l.instanceID != instanceID || (kind == kindActivity && l.taskID != taskID)) {
		s.stats.Refused++
		s.violateLocked(method, "token %q belongs to %s, but the request names %s",
			token, workKey(kind, l.instanceID, l.taskID), workKey(kind, instanceID, taskID))
		return nil, errWorkItemNotFound
	}
	if !abandon && l.withheld && !l.historyFetched {
		s.violateLocked(method, "completed %s, which was sent with requiresHistoryStreaming=true, without calling StreamInstanceHistory", workKey(kind, l.instanceID, 0))
	}
	st := l.stream
	delete(st.leases, token)
	st.outstanding[l.kind]--
	it := l.item
	l.item = nil
	if abandon {
		l.state = leaseAbandoned
		s.stats.Abandoned++
		it.notBefore = time.Now().Add(AbandonRedeliveryDelay)
		s.queue = append(s.queue, it)
	} else {
		l.state = leaseCompleted
		s.stats.Completed++
		if kind == kindActivity {
			s.activityCompletions[workKey(kind, l.instanceID, l.taskID)]++
		}
	}
	s.kick()
	return l, nil
}

func workKey(kind int, instanceID string, taskID int32) string {
	if kind == kindActivity {
		return instanceID + "/" + strconv.Itoa(int(taskID))
	}
	return instanceID
}

func (s *Server) completeOrchestrator(ctx context.Context, req proto.Message) (proto.Message, error) {
	const name = "CompleteOrchestratorTask"
	token, _ := UnknownString(req, FieldOrchRespCompletionToken)
	iid := req.ProtoReflect().Get(orsInstanceID).String()
	if _, err := s.claim(name, token, kindOrchestration, iid, 0, true, false); err != nil {
		return nil, err
	}
	// Before the sidecar has it: it may dispatch what the step schedules
	// at once.
	s.learnTraceContexts(req)
	resp, err := s.forwardCompletion(ctx, name, req, iid)
	if err == nil {
		s.learnSubOrchestrations(req)
	}
	return resp, err
}

func (s *Server) completeActivity(ctx context.Context, req proto.Message) (proto.Message, error) {
	const name = "CompleteActivityTask"
	token, _ := UnknownString(req, FieldActRespCompletionToken)
	r := req.ProtoReflect()
	iid, tid := r.Get(acrInstanceID).String(), int32(r.Get(acrTaskID).Int())
	if _, err := s.claim(name, token, kindActivity, iid, tid, true, false); err != nil {
		return nil, err
	}
	return s.forwardCompletion(ctx, name, req, workKey(kindActivity, iid, tid))
}

func (s *Server) completeEntity(ctx context.Context, req proto.Message) (proto.Message, error) {
	const name = "CompleteEntityTask"
	token, _ := UnknownString(req, FieldEntityResultCompletionToken)
	if _, err := s.claim(name, token, kindEntity, "", 0, false, false); err != nil {
		return nil, err
	}
	return s.forwardCompletion(ctx, name, req, "entity")
}

// forwardCompletion passes an accepted completion to the sidecar. Like a
// scheduler, it commits what it accepted even if the worker goes away before
// hearing the answer: the lease is retired, so nothing would deliver the item
// again.
func (s *Server) forwardCompletion(ctx context.Context, name string, req proto.Message, what string) (proto.Message, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), completionForwardTimeout)
	defer cancel()
	resp, err := s.forward(ctx, name, req, "CompleteTaskResponse")
	if err != nil {
		s.mu.Lock()
		s.stats.UpstreamErrors++
		s.mu.Unlock()
		s.logf("%s %s: upstream sidecar refused the accepted completion: %v", name, what, err)
	}
	return resp, err
}

func abandonHandler(name string, kind int) func(*Server, context.Context, proto.Message) (proto.Message, error) {
	return func(s *Server, _ context.Context, req proto.Message) (proto.Message, error) {
		token, _ := UnknownString(req, FieldAbandonCompletionToken)
		l, err := s.claim(name, token, kind, "", 0, false, true)
		if err != nil {
			return nil, err
		}
		s.logf("%s: %s %s abandoned; redelivery in %v", name, kindName(kind), workKey(kind, l.instanceID, l.taskID), AbandonRedeliveryDelay)
		return &emptypb.Empty{}, nil
	}
}

// ---------------------------------------------------------------------------------------------
// Upstream work items and dispatch

func (s *Server) upstreamLoop() {
	defer s.bg.Done()
	for {
		err := s.upstreamOnce()
		if s.ctx.Err() != nil {
			return
		}
		s.logf("upstream GetWorkItems stream ended: %v; reopening", err)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *Server) upstreamOnce() error {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	stream, err := s.up.NewStream(ctx, &grpc.StreamDesc{StreamName: "GetWorkItems", ServerStreams: true},
		servicePrefix+"GetWorkItems", grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	if err := stream.SendMsg(NewMessage("GetWorkItemsRequest")); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	s.mu.Lock()
	s.upGen++
	gen := s.upGen
	s.stats.UpstreamStreams++
	s.mu.Unlock()
	defer s.upstreamLost(gen)
	for {
		wi := NewMessage("WorkItem")
		if err := stream.RecvMsg(wi); err != nil {
			return err
		}
		kind, iid, tid := describeWorkItem(wi)
		if kind == kindOther {
			s.logf("ignoring upstream work item of unknown kind")
			continue
		}
		s.mu.Lock()
		s.stats.UpstreamWorkItems++
		s.queue = append(s.queue, &item{wi: wi, kind: kind, instanceID: iid, taskID: tid, gen: gen})
		s.mu.Unlock()
		s.kick()
	}
}

// upstreamLost drops everything that came from upstream stream generation gen: the v0.6.0 sidecar
// aborts every work item it had sent on a stream when that stream ends (and re-sends them later).
func (s *Server) upstreamLost(gen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue[:0]
	dropped := 0
	for _, it := range s.queue {
		if it.gen == gen {
			dropped++
			continue
		}
		q = append(q, it)
	}
	for i := len(q); i < len(s.queue); i++ {
		s.queue[i] = nil
	}
	s.queue = q
	for _, st := range s.streams {
		for tok, l := range st.leases {
			if l.item.gen == gen {
				l.state = leaseUpstreamLost
				l.item = nil
				delete(st.leases, tok)
				st.outstanding[l.kind]--
				dropped++
			}
		}
	}
	s.stats.UpstreamDropped += dropped
	if dropped > 0 {
		s.logf("upstream stream %d ended: %d queued/outstanding work item(s) dropped", gen, dropped)
	}
}

func (s *Server) dispatchLoop() {
	defer s.bg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
		next := s.dispatch()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		if next.IsZero() {
			timer.Reset(time.Hour)
		} else {
			timer.Reset(time.Until(next))
		}
	}
}

func (st *dstream) limit(kind int) int32 {
	switch kind {
	case kindOrchestration:
		return st.info.MaxOrchestrations
	case kindActivity:
		return st.info.MaxActivities
	case kindEntity:
		return st.info.MaxEntities
	}
	return 0
}

func (st *dstream) canTake(kind int) bool {
	if st.drainThenDrop || st.closed {
		return false
	}
	max := st.limit(kind)
	// A missing or non-positive limit is recorded as a violation when the stream opens; dispatch
	// is then unbounded for that kind (what the upstream sidecar does anyway).
	return max <= 0 || int32(st.outstanding[kind]) < max
}

// dispatch assigns ready queued items to streams; it returns the earliest future notBefore.
func (s *Server) dispatch() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var next time.Time
	var full [4]bool
	q := s.queue[:0]
	for _, it := range s.queue {
		if it.notBefore.After(now) {
			if next.IsZero() || it.notBefore.Before(next) {
				next = it.notBefore
			}
			q = append(q, it)
			continue
		}
		var st *dstream
		if !full[it.kind] {
			st = s.pickStreamLocked(it.kind)
		}
		if st == nil {
			full[it.kind] = true
			q = append(q, it)
			continue
		}
		s.assignLocked(st, it)
	}
	for i := len(q); i < len(s.queue); i++ {
		s.queue[i] = nil
	}
	s.queue = q
	return next
}

func (s *Server) pickStreamLocked(kind int) *dstream {
	n := len(s.streams)
	for i := 0; i < n; i++ {
		idx := (s.rr + i) % n
		if st := s.streams[idx]; st.canTake(kind) {
			s.rr = (idx + 1) % n
			return st
		}
	}
	return nil
}

func (s *Server) assignLocked(st *dstream, it *item) {
	s.relayTraceContextsLocked(it)
	token := newToken()
	cp := proto.Clone(it.wi)
	withheld := false
	if it.kind == kindOrchestration && s.opts.HistoryStreamingEvents > 0 && st.histStreaming {
		r := cp.ProtoReflect()
		orq := r.Mutable(wiOrchestrator).Message()
		if orq.Get(orqPastEvents).List().Len() > s.opts.HistoryStreamingEvents {
			orq.Clear(orqPastEvents)
			b := protowire.AppendTag(orq.GetUnknown(), FieldOrchReqRequiresHistStream, protowire.VarintType)
			orq.SetUnknown(protowire.AppendVarint(b, 1))
			withheld = true
			s.stats.HistoryWithheld++
		}
	}
	AppendUnknownString(cp, FieldWorkItemCompletionToken, token)
	l := &lease{token: token, item: it, stream: st, kind: it.kind, instanceID: it.instanceID, taskID: it.taskID, withheld: withheld}
	s.tokens[token] = l
	st.leases[token] = l
	st.outstanding[it.kind]++
	switch it.kind {
	case kindOrchestration:
		s.stats.PeakOutstandingOrc = max(s.stats.PeakOutstandingOrc, st.outstanding[it.kind])
	case kindActivity:
		s.stats.PeakOutstandingAct = max(s.stats.PeakOutstandingAct, st.outstanding[it.kind])
	}
	it.deliveries++
	if it.deliveries > 1 {
		s.stats.Redelivered++
	}
	s.stats.Dispatched++
	st.assigned++
	if s.opts.DropFirstStreamAfter > 0 && st.id == 1 && st.assigned >= s.opts.DropFirstStreamAfter {
		st.drainThenDrop = true
	}
	st.outbox = append(st.outbox, cp)
	select {
	case st.notify <- struct{}{}:
	default:
	}
	s.logf("dispatch %s %s (delivery %d, history withheld %v) to stream %d", kindName(it.kind), workKey(it.kind, it.instanceID, it.taskID), it.deliveries, withheld, st.id)
}

// ---------------------------------------------------------------------------------------------
// GetWorkItems

func (s *Server) getWorkItems(_ any, ss grpc.ServerStream) error {
	if !s.enter() {
		return status.Error(codes.Unavailable, "server shutting down")
	}
	defer s.handlers.Done()
	const name = "GetWorkItems"
	ctx := ss.Context()
	req := NewMessage("GetWorkItemsRequest")
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	if err := s.checkCall(ctx, name, roleWorker, req); err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	info := StreamInfo{WorkerID: firstMD(md, "workerid"), UserAgent: firstMD(md, "x-user-agent")}
	seen := map[protowire.Number]bool{}
	err := walkUnknown(req.ProtoReflect().GetUnknown(), func(n protowire.Number, typ protowire.Type, v uint64, b []byte) {
		seen[n] = true
		switch {
		case n == FieldGWIMaxOrchestrations && typ == protowire.VarintType:
			info.MaxOrchestrations = int32(v)
		case n == FieldGWIMaxActivities && typ == protowire.VarintType:
			info.MaxActivities = int32(v)
		case n == FieldGWIMaxEntities && typ == protowire.VarintType:
			info.MaxEntities = int32(v)
		case n == FieldGWICapabilities && typ == protowire.VarintType:
			info.Capabilities = append(info.Capabilities, int32(v))
		case n == FieldGWICapabilities && typ == protowire.BytesType: // packed
			for len(b) > 0 {
				x, m := protowire.ConsumeVarint(b)
				if m < 0 {
					break
				}
				info.Capabilities = append(info.Capabilities, int32(x))
				b = b[m:]
			}
		case n == FieldGWIFilters:
			info.HasWorkItemFilters = true
		}
	})
	if err != nil {
		return s.refuse(name, codes.InvalidArgument, "malformed GetWorkItemsRequest", "malformed GetWorkItemsRequest: %v", err)
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "server shutting down")
	}
	if !validWorkerID(info.WorkerID) {
		s.violateLocked(name, "workerid %q is not \"<host>,<pid>,<uuid>\"", info.WorkerID)
	}
	if !seen[FieldGWIMaxOrchestrations] || info.MaxOrchestrations <= 0 {
		s.violateLocked(name, "maxConcurrentOrchestrationWorkItems (field 1) missing or <= 0 (%d)", info.MaxOrchestrations)
	}
	if !seen[FieldGWIMaxActivities] || info.MaxActivities <= 0 {
		s.violateLocked(name, "maxConcurrentActivityWorkItems (field 2) missing or <= 0 (%d)", info.MaxActivities)
	}
	s.nextStreamID++
	info.ID = s.nextStreamID
	st := &dstream{id: info.ID, info: info, leases: map[string]*lease{}, notify: make(chan struct{}, 1)}
	for _, c := range info.Capabilities {
		if c == CapabilityHistoryStreaming {
			st.histStreaming = true
		}
	}
	s.streams = append(s.streams, st)
	s.streamInfos = append(s.streamInfos, info)
	s.stats.StreamsOpened++
	s.mu.Unlock()
	s.logf("work-item stream %d opened: workerid=%q user-agent=%q limits=%d/%d/%d capabilities=%v",
		info.ID, info.WorkerID, info.UserAgent, info.MaxOrchestrations, info.MaxActivities, info.MaxEntities, info.Capabilities)
	s.kick()

	var why error
	defer func() { s.closeStream(st, why) }()

	var pings <-chan time.Time
	if s.opts.PingInterval > 0 {
		t := time.NewTicker(s.opts.PingInterval)
		defer t.Stop()
		pings = t.C
	}
	for {
		select {
		case <-ctx.Done():
			why = ctx.Err()
			return status.FromContextError(ctx.Err()).Err()
		case <-s.ctx.Done():
			why = errors.New("server shutting down")
			return status.Error(codes.Unavailable, "server shutting down")
		case <-pings:
			ping := NewMessage("WorkItem")
			AppendUnknownBytes(ping, FieldWorkItemHealthPing, nil)
			if err := ss.SendMsg(ping); err != nil {
				why = err
				return err
			}
			s.mu.Lock()
			s.stats.Pings++
			s.mu.Unlock()
		case <-st.notify:
			s.mu.Lock()
			out := st.outbox
			st.outbox = nil
			s.mu.Unlock()
			for _, m := range out {
				if err := ss.SendMsg(m); err != nil {
					why = err
					return err
				}
			}
			s.mu.Lock()
			drop := st.drainThenDrop && len(st.outbox) == 0 && !st.closed
			if drop {
				st.closed = true
				s.stats.DroppedStreams++
			}
			s.mu.Unlock()
			if drop {
				why = errors.New("DropFirstStreamAfter")
				return status.Error(codes.Unavailable, "dtstest: work-item stream dropped by the server (DropFirstStreamAfter)")
			}
		}
	}
}

// closeStream releases every lease held by a stream that ended: its items go back to the queue
// (redelivered with new tokens) and the old tokens become stale.
func (s *Server) closeStream(st *dstream, why error) {
	s.mu.Lock()
	for i, x := range s.streams {
		if x == st {
			s.streams = append(s.streams[:i], s.streams[i+1:]...)
			if s.rr > i {
				s.rr--
			}
			break
		}
	}
	if len(s.streams) == 0 || s.rr >= len(s.streams) {
		s.rr = 0
	}
	st.closed = true
	now := time.Now()
	n := 0
	for tok, l := range st.leases {
		l.state = leaseStreamEnded
		it := l.item
		l.item = nil
		it.notBefore = now
		s.queue = append(s.queue, it)
		delete(st.leases, tok)
		n++
	}
	st.outstanding = [4]int{}
	st.outbox = nil
	s.stats.Requeued += n
	s.stats.StreamsEnded++
	s.mu.Unlock()
	s.logf("work-item stream %d ended (%v): %d outstanding item(s) requeued", st.id, why, n)
	s.kick()
}

// ---------------------------------------------------------------------------------------------
// StreamInstanceHistory

func (s *Server) streamInstanceHistory(_ any, ss grpc.ServerStream) error {
	if !s.enter() {
		return status.Error(codes.Unavailable, "server shutting down")
	}
	defer s.handlers.Done()
	const name = "StreamInstanceHistory"
	ctx := ss.Context()
	req := &emptypb.Empty{}
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	if err := s.checkCall(ctx, name, roleWorker, req); err != nil {
		return err
	}
	var iid, execID string
	var forWIP bool
	err := walkUnknown(req.ProtoReflect().GetUnknown(), func(n protowire.Number, typ protowire.Type, v uint64, b []byte) {
		switch {
		case n == FieldSIHInstanceID && typ == protowire.BytesType:
			iid = string(b)
		case n == FieldSIHExecutionID && typ == protowire.BytesType:
			_ = walkUnknown(b, func(n protowire.Number, typ protowire.Type, _ uint64, b []byte) {
				if n == 1 && typ == protowire.BytesType {
					execID = string(b)
				}
			})
		case n == FieldSIHForWorkItemProcessing && typ == protowire.VarintType:
			forWIP = v != 0
		}
	})
	if err != nil {
		return s.refuse(name, codes.InvalidArgument, "malformed StreamInstanceHistoryRequest", "malformed request: %v", err)
	}
	if iid == "" {
		return s.refuse(name, codes.InvalidArgument, "instanceId is required", "no instanceId (field 1)")
	}
	s.mu.Lock()
	if !forWIP {
		s.violateLocked(name, "forWorkItemProcessing (field 3) is not true for instance %q", iid)
	}
	var found *lease
	for _, st := range s.streams {
		for _, l := range st.leases {
			if l.kind == kindOrchestration && l.instanceID == iid && (found == nil || (l.withheld && !found.withheld)) {
				found = l
			}
		}
	}
	if found == nil {
		s.stats.Refused++
		s.mu.Unlock()
		s.logf("%s: no outstanding orchestration work item for %q -> NotFound", name, iid)
		return status.Errorf(codes.NotFound, "instance '%s' not found", iid)
	}
	wi := found.item.wi
	if x := executionID(wi); execID != "" && x != "" && x != execID {
		s.stats.Refused++
		s.mu.Unlock()
		return status.Errorf(codes.NotFound, "execution '%s' of instance '%s' not found", execID, iid)
	}
	found.historyFetched = true
	s.stats.HistoryStreams++
	s.mu.Unlock()

	events := pastEvents(wi)
	n := s.opts.HistoryChunkEvents
	for i := 0; i < len(events); i += n {
		chunk, err := EncodeHistoryChunk(events[i:min(i+n, len(events))])
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if err := ss.SendMsg(chunk); err != nil {
			return err
		}
	}
	s.logf("%s: served %d past event(s) of %q in chunks of %d", name, len(events), iid, n)
	return nil
}
