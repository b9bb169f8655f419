package dtstest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/backend"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	testHub      = "testhub"
	workerUA     = "dtstest-worker/1.0 (DurableTaskWorker)"
	clientUA     = "dtstest-client/1.0 (DurableTaskClient)"
	goodWorkerID = "testhost,4242,0123456789abcdef0123456789abcdef"
)

type env struct {
	t       *testing.T
	srv     *Server
	conn    *grpc.ClientConn // to the conformance server
	sidecar string
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	addr, _ := StartSidecar(t, 0, "")
	return newEnvUpstream(t, opts, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func newEnvUpstream(t *testing.T, opts Options, addr string, creds grpc.DialOption) *env {
	t.Helper()
	opts.Upstream = addr
	if opts.TaskHub == "" {
		opts.TaskHub = testHub
	}
	opts.Logf = t.Logf
	srv, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	conn, err := grpc.NewClient("passthrough:///"+srv.Addr(), creds,
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{t: t, srv: srv, conn: conn, sidecar: addr}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func clientCtx(ctx context.Context, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, append([]string{"taskhub", testHub, "x-user-agent", clientUA}, kv...)...)
}

func workerCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "taskhub", testHub, "x-user-agent", workerUA, "workerid", goodWorkerID)
}

func fromJSON(t *testing.T, name, js string) proto.Message {
	t.Helper()
	m := NewMessage(name)
	if err := protojson.Unmarshal([]byte(js), m); err != nil {
		t.Fatalf("%s from %s: %v", name, js, err)
	}
	return m
}

func (e *env) invoke(ctx context.Context, method string, req proto.Message, resp string) (proto.Message, error) {
	out := NewMessage(resp)
	err := e.conn.Invoke(ctx, servicePrefix+method, req, out)
	return out, err
}

func (e *env) startInstance(ctx context.Context, id, input string) error {
	js := fmt.Sprintf(`{"instanceId":%q,"name":"orch","input":%q}`, id, input)
	_, err := e.invoke(clientCtx(ctx), "StartInstance", fromJSON(e.t, "CreateInstanceRequest", js), "CreateInstanceResponse")
	return err
}

type instanceState struct {
	Exists             bool `json:"exists"`
	OrchestrationState struct {
		OrchestrationStatus string `json:"orchestrationStatus"`
		Output              string `json:"output"`
	} `json:"orchestrationState"`
}

func getInstance(t *testing.T, ctx context.Context, conn grpc.ClientConnInterface, method, id string) instanceState {
	t.Helper()
	resp := NewMessage("GetInstanceResponse")
	req := fromJSON(t, "GetInstanceRequest", fmt.Sprintf(`{"instanceId":%q,"getInputsAndOutputs":true}`, id))
	if err := conn.Invoke(ctx, servicePrefix+method, req, resp); err != nil {
		t.Fatalf("%s(%s): %v", method, id, err)
	}
	var st instanceState
	b, _ := protojson.Marshal(resp)
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// openStream opens a raw GetWorkItems stream advertising the given limits (fields 1 and 2) and
// capabilities (field 10, packed).
func (e *env) openStream(ctx context.Context, maxOrch, maxAct int32, caps ...int32) grpc.ClientStream {
	e.t.Helper()
	cs, err := e.conn.NewStream(workerCtx(ctx), &grpc.StreamDesc{ServerStreams: true}, servicePrefix+"GetWorkItems")
	if err != nil {
		e.t.Fatal(err)
	}
	req := NewMessage("GetWorkItemsRequest")
	AppendUnknownVarint(req, FieldGWIMaxOrchestrations, uint64(maxOrch))
	AppendUnknownVarint(req, FieldGWIMaxActivities, uint64(maxAct))
	if len(caps) > 0 {
		var packed []byte
		for _, c := range caps {
			packed = protowire.AppendVarint(packed, uint64(c))
		}
		AppendUnknownBytes(req, FieldGWICapabilities, packed)
	}
	if err := cs.SendMsg(req); err != nil {
		e.t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		e.t.Fatal(err)
	}
	return cs
}

// recvWork returns the next work item that is not a health ping.
func recvWork(t *testing.T, cs grpc.ClientStream) proto.Message {
	t.Helper()
	for {
		wi := NewMessage("WorkItem")
		if err := cs.RecvMsg(wi); err != nil {
			t.Fatalf("receiving a work item: %v", err)
		}
		if !IsHealthPing(wi) {
			return wi
		}
	}
}

func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

func hasViolation(vs []string, substrs ...string) bool {
	for _, v := range vs {
		ok := true
		for _, s := range substrs {
			if !strings.Contains(v, s) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func completeOrchestrationJSON(iid, result string) string {
	return fmt.Sprintf(`{"instanceId":%q,"actions":[{"id":0,"completeOrchestration":{"orchestrationStatus":"ORCHESTRATION_STATUS_COMPLETED","result":%q}}]}`, iid, result)
}

// completeOrch sends CompleteOrchestratorTask with the given token ("" = none).
func (e *env) completeOrch(ctx context.Context, js, token string) error {
	req := fromJSON(e.t, "OrchestratorResponse", js)
	if token != "" {
		AppendUnknownString(req, FieldOrchRespCompletionToken, token)
	}
	_, err := e.invoke(workerCtx(ctx), "CompleteOrchestratorTask", req, "CompleteTaskResponse")
	return err
}

func (e *env) completeActivity(ctx context.Context, iid string, taskID int32, result, token string) error {
	req := fromJSON(e.t, "ActivityResponse", fmt.Sprintf(`{"instanceId":%q,"taskId":%d,"result":%q}`, iid, taskID, result))
	if token != "" {
		AppendUnknownString(req, FieldActRespCompletionToken, token)
	}
	_, err := e.invoke(workerCtx(ctx), "CompleteActivityTask", req, "CompleteTaskResponse")
	return err
}

func (e *env) abandon(ctx context.Context, method, token string) error {
	req := &emptypb.Empty{}
	AppendUnknownString(req, FieldAbandonCompletionToken, token)
	_, err := e.invoke(workerCtx(ctx), method, req, "")
	return err
}

func orchInstance(wi proto.Message) string {
	kind, iid, _ := describeWorkItem(wi)
	if kind != kindOrchestration {
		return ""
	}
	return iid
}

// (a) metadata: task hub, bearer token, user agent, worker id, advertised limits.
func TestMetadata(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{Token: func(tok string) bool { return tok == "good-token" }})
	ctx := testCtx(t)
	hello := func(kv ...string) error {
		_, err := e.invoke(metadata.AppendToOutgoingContext(ctx, kv...), "Hello", &emptypb.Empty{}, "")
		return err
	}
	wantCode(t, hello("authorization", "Bearer good-token"), codes.NotFound, "Hello without taskhub")
	wantCode(t, hello("authorization", "Bearer good-token", "taskhub", "otherhub"), codes.NotFound, "Hello with wrong taskhub")
	wantCode(t, hello("taskhub", testHub), codes.Unauthenticated, "Hello without authorization")
	wantCode(t, hello("taskhub", testHub, "authorization", "Bearer bad-token"), codes.Unauthenticated, "Hello with a bad token")
	wantCode(t, hello("taskhub", testHub, "authorization", "Basic good-token"), codes.Unauthenticated, "Hello with a non-bearer scheme")
	if err := hello("taskhub", testHub, "authorization", "Bearer good-token"); err != nil {
		t.Fatalf("Hello with good metadata: %v", err)
	}

	// A work-item stream with the wrong task hub is refused on the first Recv.
	cs, err := e.conn.NewStream(metadata.AppendToOutgoingContext(ctx, "taskhub", "otherhub", "authorization", "Bearer good-token"),
		&grpc.StreamDesc{ServerStreams: true}, servicePrefix+"GetWorkItems")
	if err != nil {
		t.Fatal(err)
	}
	_ = cs.SendMsg(NewMessage("GetWorkItemsRequest"))
	_ = cs.CloseSend()
	wantCode(t, cs.RecvMsg(NewMessage("WorkItem")), codes.NotFound, "GetWorkItems with wrong taskhub")

	// Wrong role in x-user-agent, bad workerid, no limits: served, but recorded.
	_, err = e.invoke(metadata.AppendToOutgoingContext(ctx, "taskhub", testHub, "authorization", "Bearer good-token", "x-user-agent", workerUA),
		"GetInstance", fromJSON(t, "GetInstanceRequest", `{"instanceId":"nope"}`), "GetInstanceResponse")
	if err != nil {
		t.Fatalf("GetInstance with a worker user agent should be served: %v", err)
	}
	sctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "taskhub", testHub, "authorization", "Bearer good-token", "workerid", "justahost"))
	defer cancel()
	cs, err = e.conn.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true}, servicePrefix+"GetWorkItems")
	if err != nil {
		t.Fatal(err)
	}
	_ = cs.SendMsg(NewMessage("GetWorkItemsRequest")) // v0.6.0 style: no fields at all
	_ = cs.CloseSend()
	deadline := time.Now().Add(5 * time.Second)
	for len(e.srv.Streams()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()

	vs := e.srv.Violations()
	for _, want := range [][]string{
		{"Hello", "no taskhub header"},
		{"Hello", "taskhub header \"otherhub\""},
		{"Hello", "no authorization header"},
		{"Hello", "bearer token rejected"},
		{"GetWorkItems", "taskhub header \"otherhub\""},
		{"GetInstance", "x-user-agent", "(DurableTaskClient)"},
		{"GetWorkItems", "workerid \"justahost\""},
		{"GetWorkItems", "no x-user-agent"},
		{"GetWorkItems", "field 1"},
		{"GetWorkItems", "field 2"},
	} {
		if !hasViolation(vs, want...) {
			t.Errorf("no violation matching %q in:\n%s", want, strings.Join(vs, "\n"))
		}
	}
	if hasViolation(vs, "Hello", "x-user-agent") {
		t.Errorf("Hello must not need x-user-agent:\n%s", strings.Join(vs, "\n"))
	}
	if si := e.srv.Streams(); len(si) != 1 || si[0].WorkerID != "justahost" || si[0].MaxOrchestrations != 0 {
		t.Errorf("Streams() = %+v", si)
	}
}

// (b) StartInstance through the server reaches the sidecar.
func TestStartInstanceForwarded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ctx := testCtx(t)
	if err := e.startInstance(ctx, "inst-b", `"hello"`); err != nil {
		t.Fatal(err)
	}
	if st := getInstance(t, clientCtx(ctx), e.conn, "GetInstance", "inst-b"); !st.Exists {
		t.Fatalf("GetInstance through the server: %+v", st)
	}
	direct, err := grpc.NewClient("passthrough:///"+e.sidecar, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if st := getInstance(t, ctx, direct, "GetInstance", "inst-b"); !st.Exists {
		t.Fatalf("GetInstance on the sidecar itself: %+v", st)
	}
	if vs := e.srv.Violations(); len(vs) != 0 {
		t.Errorf("unexpected violations:\n%s", strings.Join(vs, "\n"))
	}
}

// (c) completion tokens: wrong → NotFound, missing → InvalidArgument, right → OK.
func TestCompletionTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ctx := testCtx(t)
	cs := e.openStream(ctx, 10, 10)
	if err := e.startInstance(ctx, "inst-c", `"in"`); err != nil {
		t.Fatal(err)
	}
	wi := recvWork(t, cs)
	if orchInstance(wi) != "inst-c" {
		t.Fatalf("want an orchestrator work item for inst-c, got %v", wi)
	}
	token := WorkItemToken(wi)
	if token == "" {
		t.Fatal("work item carries no completionToken (field 10)")
	}
	done := completeOrchestrationJSON("inst-c", `"out"`)
	wantCode(t, e.completeOrch(ctx, done, "not-a-token"), codes.NotFound, "complete with a wrong token")
	wantCode(t, e.completeOrch(ctx, done, ""), codes.InvalidArgument, "complete without a token")
	wantCode(t, e.completeOrch(ctx, completeOrchestrationJSON("other-instance", `"out"`), token), codes.NotFound, "complete naming another instance")
	if err := e.completeOrch(ctx, done, token); err != nil {
		t.Fatalf("complete with the right token: %v", err)
	}
	st := getInstance(t, clientCtx(ctx), e.conn, "WaitForInstanceCompletion", "inst-c")
	if st.OrchestrationState.OrchestrationStatus != "ORCHESTRATION_STATUS_COMPLETED" || st.OrchestrationState.Output != `"out"` {
		t.Fatalf("instance after completion: %+v", st)
	}
	vs := e.srv.Violations()
	for _, want := range [][]string{
		{"CompleteOrchestratorTask", "unknown completion token \"not-a-token\""},
		{"CompleteOrchestratorTask", "no completion token"},
		{"CompleteOrchestratorTask", "other-instance"},
	} {
		if !hasViolation(vs, want...) {
			t.Errorf("no violation matching %q in:\n%s", want, strings.Join(vs, "\n"))
		}
	}
	if len(vs) != 3 {
		t.Errorf("want exactly 3 violations, got:\n%s", strings.Join(vs, "\n"))
	}
	if s := e.srv.Stats(); s.Completed != 1 || s.Dispatched != 1 {
		t.Errorf("stats: %+v", s)
	}
}

// (d) a stream that ends with an item outstanding: redelivered with a new token; the old one is stale.
func TestLeaseBelongsToStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ctx := testCtx(t)
	sctx, cancelA := context.WithCancel(ctx)
	a := e.openStream(sctx, 1, 1)
	if err := e.startInstance(ctx, "inst-d", `null`); err != nil {
		t.Fatal(err)
	}
	wi1 := recvWork(t, a)
	old := WorkItemToken(wi1)
	cancelA() // the worker's stream ends with the item outstanding

	b := e.openStream(ctx, 1, 1)
	wi2 := recvWork(t, b)
	if orchInstance(wi2) != "inst-d" {
		t.Fatalf("redelivered item: %v", wi2)
	}
	fresh := WorkItemToken(wi2)
	if fresh == "" || fresh == old {
		t.Fatalf("redelivery token %q, old %q: want a new one", fresh, old)
	}
	done := completeOrchestrationJSON("inst-d", `"ok"`)
	wantCode(t, e.completeOrch(ctx, done, old), codes.NotFound, "complete with the token of the ended stream")
	if vs := e.srv.Violations(); len(vs) != 0 {
		t.Fatalf("a first stale completion is not a violation:\n%s", strings.Join(vs, "\n"))
	}
	if err := e.completeOrch(ctx, done, fresh); err != nil {
		t.Fatalf("complete with the new token: %v", err)
	}
	wantCode(t, e.completeOrch(ctx, done, old), codes.NotFound, "retry with the stale token")
	if vs := e.srv.Violations(); !hasViolation(vs, "retried after NotFound") {
		t.Fatalf("retrying a NotFound token must be a violation; got:\n%s", strings.Join(vs, "\n"))
	}
	s := e.srv.Stats()
	if s.Redelivered != 1 || s.StaleCompletions != 2 || s.Completed != 1 || s.Requeued != 1 {
		t.Errorf("stats: %+v", s)
	}
	if st := getInstance(t, clientCtx(ctx), e.conn, "WaitForInstanceCompletion", "inst-d"); st.OrchestrationState.OrchestrationStatus != "ORCHESTRATION_STATUS_COMPLETED" {
		t.Errorf("instance: %+v", st)
	}
}

// (e) health pings arrive on an idle stream.
func TestHealthPings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{PingInterval: 20 * time.Millisecond})
	ctx := testCtx(t)
	cs := e.openStream(ctx, 1, 1)
	for i := 0; i < 3; i++ {
		wi := NewMessage("WorkItem")
		if err := cs.RecvMsg(wi); err != nil {
			t.Fatal(err)
		}
		if !IsHealthPing(wi) {
			t.Fatalf("message %d is not a health ping: %v (unknown %x)", i, wi, wi.ProtoReflect().GetUnknown())
		}
	}
	if s := e.srv.Stats(); s.Pings < 3 {
		t.Errorf("Stats.Pings = %d", s.Pings)
	}
}

// (f) oversized payloads and messages are refused and recorded.
func TestOversized(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ctx := testCtx(t)
	big := `"` + strings.Repeat("x", DefaultMaxPayloadBytes) + `"`
	wantCode(t, e.startInstance(ctx, "inst-big", big), codes.InvalidArgument, "StartInstance with a >1 MiB input")
	huge := `"` + strings.Repeat("x", DefaultMaxMessageBytes) + `"`
	err := e.startInstance(ctx, "inst-huge", huge)
	wantCode(t, err, codes.ResourceExhausted, "StartInstance with a >4 MiB message")
	if !strings.Contains(status.Convert(err).Message(), "received message larger than max") {
		t.Errorf("message: %v", err)
	}
	if st := getInstance(t, clientCtx(ctx), e.conn, "GetInstance", "inst-big"); st.Exists {
		t.Error("a refused StartInstance reached the sidecar")
	}

	// An oversized completion is refused before the token is looked at; the token stays valid.
	cs := e.openStream(ctx, 1, 1)
	if err := e.startInstance(ctx, "inst-f", `null`); err != nil {
		t.Fatal(err)
	}
	token := WorkItemToken(recvWork(t, cs))
	wantCode(t, e.completeOrch(ctx, completeOrchestrationJSON("inst-f", big), token), codes.InvalidArgument, "completion with a >1 MiB result")
	if err := e.completeOrch(ctx, completeOrchestrationJSON("inst-f", `"small"`), token); err != nil {
		t.Fatalf("completion after the refused one: %v", err)
	}
	vs := e.srv.Violations()
	for _, want := range [][]string{
		{"StartInstance", "payload input"},
		{"StartInstance", "request message is"},
		{"CompleteOrchestratorTask", "actions[0].completeOrchestration.result"},
	} {
		if !hasViolation(vs, want...) {
			t.Errorf("no violation matching %q in:\n%s", want, strings.Join(vs, "\n"))
		}
	}
	if s := e.srv.Stats(); s.LargestRequestBytes <= DefaultMaxMessageBytes {
		t.Errorf("LargestRequestBytes = %d", s.LargestRequestBytes)
	}
}

// Activities, abandon and history streaming, through a two-turn orchestration.
func TestActivityAbandonAndHistoryStreaming(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{HistoryStreamingEvents: 1, HistoryChunkEvents: 2})
	ctx := testCtx(t)
	cs := e.openStream(ctx, 2, 2, CapabilityHistoryStreaming)
	if err := e.startInstance(ctx, "inst-h", `"in"`); err != nil {
		t.Fatal(err)
	}

	// Turn 1: schedule one activity.
	wi := recvWork(t, cs)
	if orchInstance(wi) != "inst-h" || RequiresHistoryStreaming(wi) {
		t.Fatalf("turn 1: %v", wi)
	}
	schedule := `{"instanceId":"inst-h","actions":[{"id":0,"scheduleTask":{"name":"act","input":"\"a\""}}]}`
	if err := e.completeOrch(ctx, schedule, WorkItemToken(wi)); err != nil {
		t.Fatal(err)
	}

	// The activity: abandon it once, then complete the redelivery.
	act := recvWork(t, cs)
	if kind, iid, tid := describeWorkItem(act); kind != kindActivity || iid != "inst-h" || tid != 0 {
		t.Fatalf("activity work item: %v", act)
	}
	a1 := WorkItemToken(act)
	wantCode(t, e.abandon(ctx, "AbandonTaskOrchestratorWorkItem", a1), codes.NotFound, "abandoning an activity token as an orchestration")
	abandonedAt := time.Now()
	if err := e.abandon(ctx, "AbandonTaskActivityWorkItem", a1); err != nil {
		t.Fatalf("abandon: %v", err)
	}
	act2 := recvWork(t, cs)
	if d := time.Since(abandonedAt); d < AbandonRedeliveryDelay/2 {
		t.Errorf("redelivered %v after the abandon", d)
	}
	a2 := WorkItemToken(act2)
	if a2 == a1 || a2 == "" {
		t.Fatalf("redelivered activity token %q (old %q)", a2, a1)
	}
	wantCode(t, e.abandon(ctx, "AbandonTaskActivityWorkItem", a1), codes.NotFound, "abandon with a stale token")
	if err := e.completeActivity(ctx, "inst-h", 0, `"r"`, a2); err != nil {
		t.Fatalf("complete activity: %v", err)
	}
	if got := e.srv.ActivityCompletions(); got["inst-h/0"] != 1 || len(got) != 1 {
		t.Errorf("ActivityCompletions = %v", got)
	}

	// Turn 2: its past events are over the threshold, so they are withheld.
	wi = recvWork(t, cs)
	if orchInstance(wi) != "inst-h" || !RequiresHistoryStreaming(wi) || len(pastEvents(wi)) != 0 {
		t.Fatalf("turn 2 should come without pastEvents and requiresHistoryStreaming: %v", wi)
	}
	history := func(instanceID string, forWIP bool) ([]int, int, error) {
		req := &emptypb.Empty{}
		AppendUnknownString(req, FieldSIHInstanceID, instanceID)
		if forWIP {
			AppendUnknownVarint(req, FieldSIHForWorkItemProcessing, 1)
		}
		hs, err := e.conn.NewStream(workerCtx(ctx), &grpc.StreamDesc{ServerStreams: true}, servicePrefix+"StreamInstanceHistory")
		if err != nil {
			return nil, 0, err
		}
		if err := hs.SendMsg(req); err != nil {
			return nil, 0, err
		}
		_ = hs.CloseSend()
		var sizes []int
		started := 0
		for {
			chunk := &emptypb.Empty{}
			if err := hs.RecvMsg(chunk); err != nil {
				if errors.Is(err, io.EOF) {
					return sizes, started, nil
				}
				return sizes, started, err
			}
			evs, err := DecodeHistoryChunk(chunk)
			if err != nil {
				return nil, 0, err
			}
			sizes = append(sizes, len(evs))
			for _, ev := range evs {
				if ev.GetExecutionStarted().GetName() == "orch" {
					started++
				}
			}
		}
	}
	_, _, err := history("no-such-instance", true)
	wantCode(t, err, codes.NotFound, "history of an unknown instance")
	sizes, started, err := history("inst-h", true)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range sizes {
		if n < 1 || n > 2 {
			t.Errorf("chunk sizes %v: want 1..2 events each", sizes)
		}
		total += n
	}
	if total < 2 || started != 1 {
		t.Fatalf("streamed history: chunks %v, %d ExecutionStarted", sizes, started)
	}
	if _, _, err := history("inst-h", false); err != nil {
		t.Fatal(err)
	}
	if err := e.completeOrch(ctx, completeOrchestrationJSON("inst-h", `"done"`), WorkItemToken(wi)); err != nil {
		t.Fatal(err)
	}
	if st := getInstance(t, clientCtx(ctx), e.conn, "WaitForInstanceCompletion", "inst-h"); st.OrchestrationState.Output != `"done"` {
		t.Errorf("instance: %+v", st)
	}
	vs := e.srv.Violations()
	if !hasViolation(vs, "AbandonTaskOrchestratorWorkItem", "activity work item inst-h/0") ||
		!hasViolation(vs, "StreamInstanceHistory", "forWorkItemProcessing") || len(vs) != 2 {
		t.Errorf("violations:\n%s", strings.Join(vs, "\n"))
	}
	s := e.srv.Stats()
	if s.Abandoned != 1 || s.HistoryWithheld != 1 || s.HistoryStreams != 2 || s.Completed != 3 || s.StaleCompletions != 1 {
		t.Errorf("stats: %+v", s)
	}
}

// A completion the server accepted reaches the sidecar even when the worker
// is gone before it is passed on (killed, say): its lease is retired, so
// nothing would ever deliver the item again.
func TestAcceptedCompletionOutlivesItsWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ctx := testCtx(t)
	cs := e.openStream(ctx, 1, 1)
	if err := e.startInstance(ctx, "inst-gone", `"in"`); err != nil {
		t.Fatal(err)
	}
	wi := recvWork(t, cs)
	schedule := `{"instanceId":"inst-gone","actions":[{"id":0,"scheduleTask":{"name":"act","input":"\"a\""}}]}`
	if err := e.completeOrch(ctx, schedule, WorkItemToken(wi)); err != nil {
		t.Fatal(err)
	}
	act := recvWork(t, cs)
	req := fromJSON(t, "ActivityResponse", `{"instanceId":"inst-gone","taskId":0,"result":"\"r\""}`)
	AppendUnknownString(req, FieldActRespCompletionToken, WorkItemToken(act))
	gone, cancel := context.WithCancel(ctx)
	cancel() // the worker's call ended as the server read it
	if _, err := e.srv.completeActivity(gone, req); err != nil {
		t.Fatalf("accepted completion of a worker that went away: %v", err)
	}
	// The orchestrator's next turn comes only if the sidecar has the result.
	wi = recvWork(t, cs)
	if orchInstance(wi) != "inst-gone" {
		t.Fatalf("next work item: %v", wi)
	}
	if err := e.completeOrch(ctx, completeOrchestrationJSON("inst-gone", `"done"`), WorkItemToken(wi)); err != nil {
		t.Fatal(err)
	}
	if st := getInstance(t, clientCtx(ctx), e.conn, "WaitForInstanceCompletion", "inst-gone"); st.OrchestrationState.Output != `"done"` {
		t.Errorf("instance: %+v", st)
	}
}

// DropFirstStreamAfter ends the first stream with Unavailable; its item is redelivered.
func TestDropFirstStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{DropFirstStreamAfter: 1})
	ctx := testCtx(t)
	a := e.openStream(ctx, 1, 1)
	if err := e.startInstance(ctx, "inst-x", `null`); err != nil {
		t.Fatal(err)
	}
	old := WorkItemToken(recvWork(t, a))
	wantCode(t, a.RecvMsg(NewMessage("WorkItem")), codes.Unavailable, "first stream after one work item")
	b := e.openStream(ctx, 1, 1)
	wi := recvWork(t, b)
	if orchInstance(wi) != "inst-x" || WorkItemToken(wi) == old {
		t.Fatalf("redelivery: %v", wi)
	}
	done := completeOrchestrationJSON("inst-x", `1`)
	wantCode(t, e.completeOrch(ctx, done, old), codes.NotFound, "token from the dropped stream")
	if err := e.completeOrch(ctx, done, WorkItemToken(wi)); err != nil {
		t.Fatal(err)
	}
	if s := e.srv.Stats(); s.DroppedStreams != 1 || s.Redelivered != 1 || s.StreamsOpened != 2 {
		t.Errorf("stats: %+v", s)
	}
	if vs := e.srv.Violations(); len(vs) != 0 {
		t.Errorf("violations:\n%s", strings.Join(vs, "\n"))
	}
}

// The upstream sidecar restarts (file DB, fixed port): items leased from the old upstream stream
// become NotFound, the server reopens its upstream stream, and new work flows on the same worker stream.
func TestUpstreamRestart(t *testing.T) {
	t.Parallel()
	port := FreePort(t)
	db := filepath.Join(t.TempDir(), "hub.db")
	addr, stop := StartSidecar(t, port, db)
	e := newEnvUpstream(t, Options{}, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	ctx := testCtx(t)
	cs := e.openStream(ctx, 1, 1)
	if err := e.startInstance(ctx, "inst-r1", `null`); err != nil {
		t.Fatal(err)
	}
	old := WorkItemToken(recvWork(t, cs))
	stop()
	for e.srv.Stats().UpstreamDropped == 0 {
		if ctx.Err() != nil {
			t.Fatal("the server did not notice the upstream stream ending")
		}
		time.Sleep(10 * time.Millisecond)
	}
	wantCode(t, e.completeOrch(ctx, completeOrchestrationJSON("inst-r1", `1`), old), codes.NotFound, "token leased from the dead upstream")

	StartSidecar(t, port, db)
	for {
		err := e.startInstance(ctx, "inst-r2", `null`)
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			t.Fatalf("StartInstance after the restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// inst-r1 stays locked in the SQLite file for the sidecar's 2-minute lock timeout, so the
	// next item on the worker stream is inst-r2.
	wi := recvWork(t, cs)
	if orchInstance(wi) != "inst-r2" {
		t.Fatalf("after restart: %v", wi)
	}
	if err := e.completeOrch(ctx, completeOrchestrationJSON("inst-r2", `2`), WorkItemToken(wi)); err != nil {
		t.Fatal(err)
	}
	if st := getInstance(t, clientCtx(ctx), e.conn, "WaitForInstanceCompletion", "inst-r2"); st.OrchestrationState.Output != "2" {
		t.Errorf("inst-r2: %+v", st)
	}
	if st := getInstance(t, clientCtx(ctx), e.conn, "GetInstance", "inst-r1"); !st.Exists {
		t.Errorf("inst-r1 did not survive the restart: %+v", st)
	}
	if s := e.srv.Stats(); s.UpstreamStreams < 2 || s.StaleCompletions != 1 {
		t.Errorf("stats: %+v", s)
	}
}

// TLS and a bearer token together.
func TestTLS(t *testing.T) {
	t.Parallel()
	ca := NewCA(t)
	addr, _ := StartSidecar(t, 0, "")
	e := newEnvUpstream(t, Options{
		TLS:   ca.ServerTLS(t, "127.0.0.1"),
		Token: func(tok string) bool { return tok == "t0k" },
	}, addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool()})))
	ctx := testCtx(t)
	if err := e.startInstance(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer t0k"), "inst-tls", `null`); err != nil {
		t.Fatalf("StartInstance over TLS: %v", err)
	}
	wantCode(t, e.startInstance(ctx, "inst-tls2", `null`), codes.Unauthenticated, "StartInstance over TLS without a token")

	plain, err := grpc.NewClient("passthrough:///"+e.srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	err = plain.Invoke(clientCtx(ctx, "authorization", "Bearer t0k"), servicePrefix+"Hello", &emptypb.Empty{}, &emptypb.Empty{})
	wantCode(t, err, codes.Unavailable, "plaintext call to a TLS server")
}

// queryPage is a QueryInstancesResponse, read through protojson.
type queryPage struct {
	States []queriedState `json:"orchestrationState"`
	Token  *string        `json:"continuationToken"`
	size   int            // proto.Size of the response
}

type queriedState struct {
	InstanceID     string    `json:"instanceId"`
	Status         string    `json:"orchestrationStatus"`
	Created        time.Time `json:"createdTimestamp"`
	Input          *string   `json:"input"`
	Output         *string   `json:"output"`
	CustomStatus   *string   `json:"customStatus"`
	FailureDetails *struct {
		ErrorMessage string `json:"errorMessage"`
	} `json:"failureDetails"`
}

func (p queryPage) ids() []string {
	out := []string{}
	for _, s := range p.States {
		out = append(out, s.InstanceID)
	}
	return out
}

func (p queryPage) state(t *testing.T, id string) queriedState {
	t.Helper()
	for _, s := range p.States {
		if s.InstanceID == id {
			return s
		}
	}
	t.Fatalf("no state for %s in %v", id, p.ids())
	return queriedState{}
}

// queryRaw sends a QueryInstancesRequest given as JSON.
func (e *env) queryRaw(ctx context.Context, req proto.Message) (queryPage, error) {
	e.t.Helper()
	resp, err := e.invoke(clientCtx(ctx), "QueryInstances", req, "QueryInstancesResponse")
	if err != nil {
		return queryPage{}, err
	}
	b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		e.t.Fatal(err)
	}
	var p queryPage
	if err := json.Unmarshal(b, &p); err != nil {
		e.t.Fatalf("%s: %v", b, err)
	}
	p.size = proto.Size(resp)
	return p, nil
}

// query sends QueryInstances with the given InstanceQuery JSON and fails the test on an error.
func (e *env) query(ctx context.Context, queryJSON string) queryPage {
	e.t.Helper()
	p, err := e.queryRaw(ctx, fromJSON(e.t, "QueryInstancesRequest", `{"query":`+queryJSON+`}`))
	if err != nil {
		e.t.Fatalf("QueryInstances %s: %v", queryJSON, err)
	}
	return p
}

func wantIDs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s: got %v, want %v", what, got, want)
	}
}

// QueryInstances: filters, order, inputs and outputs, sub-orchestrations, purge.
func TestQueryInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ctx := testCtx(t)
	for _, id := range []string{"q-a1", "q-a2", "q-b1", "q-b2"} {
		if err := e.startInstance(ctx, id, `"in-`+id+`"`); err != nil {
			t.Fatal(err)
		}
	}
	// q-a1 completes, q-b1 fails, q-a2 starts a sub-orchestration and runs on, q-b2 stays pending.
	// The sidecar runs one orchestration at a time, in the order created: holding q-b2 keeps
	// q-a2-sub pending too.
	turns := map[string]string{
		"q-a1": `{"instanceId":"q-a1","customStatus":"\"cs\"","actions":[{"id":0,"completeOrchestration":{"orchestrationStatus":"ORCHESTRATION_STATUS_COMPLETED","result":"\"out\""}}]}`,
		"q-a2": `{"instanceId":"q-a2","actions":[{"id":0,"createSubOrchestration":{"instanceId":"q-a2-sub","name":"sub","input":"\"x\""}}]}`,
		"q-b1": `{"instanceId":"q-b1","actions":[{"id":0,"completeOrchestration":{"orchestrationStatus":"ORCHESTRATION_STATUS_FAILED","failureDetails":{"errorType":"E","errorMessage":"boom"}}}]}`,
	}
	cs := e.openStream(ctx, 10, 10)
	for {
		wi := recvWork(t, cs)
		id := orchInstance(wi)
		if id == "q-b2" {
			break
		}
		js, ok := turns[id]
		if !ok {
			t.Fatalf("unexpected work item %v", wi)
		}
		if err := e.completeOrch(ctx, js, WorkItemToken(wi)); err != nil {
			t.Fatalf("completing %s: %v", id, err)
		}
	}
	// The sidecar applies completions, and creates the sub-orchestration, after it answers.
	want := map[string]string{
		"q-a2-sub": "ORCHESTRATION_STATUS_PENDING",
		"q-b2":     "ORCHESTRATION_STATUS_PENDING",
		"q-b1":     "ORCHESTRATION_STATUS_FAILED",
		"q-a2":     "ORCHESTRATION_STATUS_RUNNING",
		"q-a1":     "ORCHESTRATION_STATUS_COMPLETED",
	}
	var all queryPage
	for {
		all = e.query(ctx, `{"maxInstanceCount":100}`)
		got := map[string]string{}
		for _, s := range all.States {
			got[s.InstanceID] = s.Status
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("instances: got %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Validate: newest first; no inputs, outputs, custom status or failure details unless asked.
	wantIDs(t, "all instances", all.ids(), "q-a2-sub", "q-b2", "q-b1", "q-a2", "q-a1")
	for i, s := range all.States {
		if i > 0 && !s.Created.Before(all.States[i-1].Created) {
			t.Errorf("%s created %v, not before %s's %v", s.InstanceID, s.Created, all.States[i-1].InstanceID, all.States[i-1].Created)
		}
		if s.Input != nil || s.Output != nil || s.CustomStatus != nil || s.FailureDetails != nil {
			t.Errorf("%s without fetchInputsAndOutputs: %+v", s.InstanceID, s)
		}
	}
	if all.Token != nil {
		t.Errorf("continuation token %q on the only page", *all.Token)
	}
	full := e.query(ctx, `{"maxInstanceCount":100,"fetchInputsAndOutputs":true}`)
	a1, b1 := full.state(t, "q-a1"), full.state(t, "q-b1")
	if a1.Input == nil || *a1.Input != `"in-q-a1"` || a1.Output == nil || *a1.Output != `"out"` || a1.CustomStatus == nil || *a1.CustomStatus != `"cs"` {
		t.Errorf("q-a1 with fetchInputsAndOutputs: %+v", a1)
	}
	if b1.FailureDetails == nil || b1.FailureDetails.ErrorMessage != "boom" {
		t.Errorf("q-b1 with fetchInputsAndOutputs: %+v", b1)
	}

	created := func(id string) string { return all.state(t, id).Created.Format(time.RFC3339Nano) }
	for _, c := range []struct {
		query string
		want  []string
	}{
		{`{"maxInstanceCount":100,"runtimeStatus":["ORCHESTRATION_STATUS_COMPLETED","ORCHESTRATION_STATUS_FAILED"]}`, []string{"q-b1", "q-a1"}},
		{`{"maxInstanceCount":100,"runtimeStatus":["ORCHESTRATION_STATUS_PENDING"]}`, []string{"q-a2-sub", "q-b2"}},
		{`{"maxInstanceCount":100,"runtimeStatus":["ORCHESTRATION_STATUS_RUNNING"]}`, []string{"q-a2"}},
		{`{"maxInstanceCount":100,"runtimeStatus":["ORCHESTRATION_STATUS_TERMINATED"]}`, nil},
		{`{"maxInstanceCount":100,"instanceIdPrefix":"q-a2"}`, []string{"q-a2-sub", "q-a2"}},
		{`{"maxInstanceCount":100,"instanceIdPrefix":"q-b","runtimeStatus":["ORCHESTRATION_STATUS_PENDING"]}`, []string{"q-b2"}},
		{`{"maxInstanceCount":100,"instanceIdPrefix":""}`, []string{"q-a2-sub", "q-b2", "q-b1", "q-a2", "q-a1"}},
		// Both bounds are inclusive.
		{fmt.Sprintf(`{"maxInstanceCount":100,"createdTimeFrom":%q,"createdTimeTo":%q}`, created("q-a2"), created("q-b1")), []string{"q-b1", "q-a2"}},
		{fmt.Sprintf(`{"maxInstanceCount":100,"createdTimeFrom":%q,"createdTimeTo":%q}`, created("q-b1"), created("q-b1")), []string{"q-b1"}},
		{fmt.Sprintf(`{"maxInstanceCount":100,"createdTimeFrom":%q}`, created("q-b2")), []string{"q-a2-sub", "q-b2"}},
		{fmt.Sprintf(`{"maxInstanceCount":100,"createdTimeTo":%q}`, created("q-a2")), []string{"q-a2", "q-a1"}},
	} {
		wantIDs(t, c.query, e.query(ctx, c.query).ids(), c.want...)
	}

	// A purged instance disappears, and the server forgets it.
	if _, err := e.invoke(clientCtx(ctx), "PurgeInstances", fromJSON(t, "PurgeInstancesRequest", `{"instanceId":"q-a1"}`), "PurgeInstancesResponse"); err != nil {
		t.Fatalf("purging q-a1: %v", err)
	}
	before := e.srv.Stats().Queries
	wantIDs(t, "after purging q-a1", e.query(ctx, `{"maxInstanceCount":100}`).ids(), "q-a2-sub", "q-b2", "q-b1", "q-a2")
	e.srv.mu.Lock()
	_, known := e.srv.instances["q-a1"]
	e.srv.mu.Unlock()
	if known {
		t.Error("the server still lists the purged q-a1")
	}
	if got := e.srv.Stats().Queries; got != before+1 {
		t.Errorf("Stats.Queries went from %d to %d over one query", before, got)
	}
	if vs := e.srv.Violations(); len(vs) != 0 {
		t.Errorf("violations:\n%s", strings.Join(vs, "\n"))
	}
}

// QueryInstances pages: a keyset cursor, so instances created between pages change nothing; pages
// also end before MaxMessageBytes.
func TestQueryInstancesPaging(t *testing.T) {
	t.Parallel()
	const limit = 4096
	e := newEnv(t, Options{MaxMessageBytes: limit})
	ctx := testCtx(t)
	input := `"` + strings.Repeat("x", 1000) + `"`
	for i := 1; i <= 5; i++ {
		if err := e.startInstance(ctx, fmt.Sprintf("p-%d", i), input); err != nil {
			t.Fatal(err)
		}
	}

	// Page by count, creating p-6 after the first page.
	page := e.query(ctx, `{"maxInstanceCount":2}`)
	wantIDs(t, "page 1", page.ids(), "p-5", "p-4")
	if page.Token == nil {
		t.Fatal("page 1 has no continuation token")
	}
	first := *page.Token
	if err := e.startInstance(ctx, "p-6", input); err != nil {
		t.Fatal(err)
	}
	page = e.query(ctx, fmt.Sprintf(`{"maxInstanceCount":2,"continuationToken":%q}`, first))
	wantIDs(t, "page 2", page.ids(), "p-3", "p-2")
	if page.Token == nil {
		t.Fatal("page 2 has no continuation token")
	}
	again := e.query(ctx, fmt.Sprintf(`{"maxInstanceCount":2,"continuationToken":%q}`, first))
	wantIDs(t, "page 2 asked again", again.ids(), "p-3", "p-2")
	page = e.query(ctx, fmt.Sprintf(`{"maxInstanceCount":2,"continuationToken":%q}`, *page.Token))
	wantIDs(t, "page 3", page.ids(), "p-1")
	if page.Token != nil {
		t.Errorf("last page has continuation token %q", *page.Token)
	}
	wantIDs(t, "a new query", e.query(ctx, `{"maxInstanceCount":2}`).ids(), "p-6", "p-5")

	// A token belongs to its query's filters.
	_, err := e.queryRaw(ctx, fromJSON(t, "QueryInstancesRequest", fmt.Sprintf(`{"query":{"maxInstanceCount":2,"instanceIdPrefix":"p-","continuationToken":%q}}`, first)))
	wantCode(t, err, codes.InvalidArgument, "a token sent with other filters")

	// Page by size: six states of over 1,000 bytes each do not fit in 4,096 bytes.
	var got []string
	pages := 0
	token := ""
	for {
		q := `{"maxInstanceCount":100,"fetchInputsAndOutputs":true}`
		if token != "" {
			q = fmt.Sprintf(`{"maxInstanceCount":100,"fetchInputsAndOutputs":true,"continuationToken":%q}`, token)
		}
		page := e.query(ctx, q)
		if pages++; pages > 6 {
			t.Fatalf("more than six pages for six instances: %v so far", got)
		}
		if page.size > limit {
			t.Errorf("page %d is %d bytes, over the %d-byte limit", pages, page.size, limit)
		}
		if len(page.States) == 0 {
			t.Fatalf("page %d is empty", pages)
		}
		got = append(got, page.ids()...)
		if page.Token == nil {
			break
		}
		token = *page.Token
	}
	if pages < 2 {
		t.Errorf("%d page(s) for six states of over 1,000 bytes each", pages)
	}
	wantIDs(t, "paged by size", got, "p-6", "p-5", "p-4", "p-3", "p-2", "p-1")

	vs := e.srv.Violations()
	if len(vs) != 1 || !hasViolation(vs, "QueryInstances", "was issued for") {
		t.Errorf("violations:\n%s", strings.Join(vs, "\n"))
	}
}

// Invalid QueryInstances requests are refused with InvalidArgument and recorded.
func TestQueryInstancesRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ctx := testCtx(t)
	if err := e.startInstance(ctx, "r-1", `null`); err != nil {
		t.Fatal(err)
	}
	badTime := fromJSON(t, "QueryInstancesRequest", `{"query":{"maxInstanceCount":10}}`)
	q := badTime.ProtoReflect().Mutable(qiqQuery).Message()
	q.Set(iqCreatedFrom, protoreflect.ValueOfMessage((&timestamppb.Timestamp{Nanos: -1}).ProtoReflect()))
	cases := []struct {
		req       proto.Message
		violation string
	}{
		{fromJSON(t, "QueryInstancesRequest", `{}`), "no query"},
		{fromJSON(t, "QueryInstancesRequest", `{"query":{}}`), "maxInstanceCount (field 5) is 0"},
		{fromJSON(t, "QueryInstancesRequest", `{"query":{"maxInstanceCount":-1}}`), "maxInstanceCount (field 5) is -1"},
		{fromJSON(t, "QueryInstancesRequest", `{"query":{"maxInstanceCount":1001}}`), "maxInstanceCount (field 5) is 1001"},
		{fromJSON(t, "QueryInstancesRequest", `{"query":{"maxInstanceCount":10,"taskHubNames":["testhub"]}}`), "taskHubNames"},
		{fromJSON(t, "QueryInstancesRequest", `{"query":{"maxInstanceCount":10,"runtimeStatus":[99]}}`), "holds 99"},
		{fromJSON(t, "QueryInstancesRequest", `{"query":{"maxInstanceCount":10,"createdTimeFrom":"2025-01-02T00:00:00Z","createdTimeTo":"2025-01-01T00:00:00Z"}}`), "is after createdTimeTo"},
		{badTime, "createdTimeFrom (field 2)"},
		{fromJSON(t, "QueryInstancesRequest", `{"query":{"maxInstanceCount":10,"continuationToken":"bogus"}}`), `unknown continuationToken "bogus"`},
	}
	for _, c := range cases {
		_, err := e.queryRaw(ctx, c.req)
		wantCode(t, err, codes.InvalidArgument, c.violation)
		if vs := e.srv.Violations(); !hasViolation(vs, "QueryInstances", c.violation) {
			t.Errorf("no violation matching %q in:\n%s", c.violation, strings.Join(vs, "\n"))
		}
	}
	// The bounds themselves, and an empty token (none), are fine.
	wantIDs(t, "maxInstanceCount 1, empty token", e.query(ctx, `{"maxInstanceCount":1,"continuationToken":""}`).ids(), "r-1")
	wantIDs(t, "maxInstanceCount 1000", e.query(ctx, `{"maxInstanceCount":1000}`).ids(), "r-1")
	s := e.srv.Stats()
	if s.Refused != len(cases) || s.Violations != len(cases) || s.Queries != 2 {
		t.Errorf("stats: %+v", s)
	}
}

// Trace context named at the start and in each scheduling action reaches
// the work items that follow, as the scheduler relays it; one that is not a
// traceparent is a violation.
func TestTraceContextIsRelayed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	ctx := testCtx(t)
	cs := e.openStream(ctx, 1, 1)
	traceContext := func(tp string) []byte {
		tc := NewMessage("TraceContext")
		tc.ProtoReflect().Set(fd(tc.ProtoReflect().Descriptor(), "traceParent"), protoreflect.ValueOfString(tp))
		b, _ := proto.Marshal(tc)
		return b
	}
	const client = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	const orchestration = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
	req := fromJSON(t, "CreateInstanceRequest", `{"instanceId":"inst-t","name":"orch","input":"\"in\""}`)
	AppendUnknownBytes(req, FieldCreateParentTrace, traceContext(client))
	if _, err := e.invoke(clientCtx(ctx), "StartInstance", req, "CreateInstanceResponse"); err != nil {
		t.Fatal(err)
	}
	parentOf := func(e *backend.HistoryEvent) string {
		if es := e.GetExecutionStarted(); es != nil {
			return es.GetParentTraceContext().GetTraceParent()
		}
		return e.GetTaskScheduled().GetParentTraceContext().GetTraceParent()
	}
	events := func(wi proto.Message) []*backend.HistoryEvent {
		o := wi.ProtoReflect().Get(wiOrchestrator).Message()
		var out []*backend.HistoryEvent
		for _, f := range []protoreflect.FieldDescriptor{orqPastEvents, fd(orqDesc, "newEvents")} {
			l := o.Get(f).List()
			for i := range l.Len() {
				out = append(out, l.Get(i).Message().Interface().(*backend.HistoryEvent))
			}
		}
		return out
	}

	wi := recvWork(t, cs)
	started := 0
	for _, ev := range events(wi) {
		if ev.GetExecutionStarted() != nil {
			started++
			if got := parentOf(ev); got != client {
				t.Errorf("ExecutionStarted.parentTraceContext = %q, want %q", got, client)
			}
		}
	}
	if started != 1 {
		t.Fatalf("first work item: %d ExecutionStarted events", started)
	}
	res := fromJSON(t, "OrchestratorResponse", `{"instanceId":"inst-t","actions":[{"id":0,"scheduleTask":{"name":"act","input":"\"a\""}},{"id":1,"scheduleTask":{"name":"act","input":"\"b\""}}]}`)
	acts := res.ProtoReflect().Get(orsActions).List()
	AppendUnknownBytes(acts.Get(0).Message().Get(fd(acts.Get(0).Message().Descriptor(), "scheduleTask")).Message().Interface(), FieldActionParentTrace, traceContext(orchestration))
	AppendUnknownBytes(acts.Get(1).Message().Get(fd(acts.Get(1).Message().Descriptor(), "scheduleTask")).Message().Interface(), FieldActionParentTrace, traceContext("not-a-traceparent"))
	AppendUnknownString(res, FieldOrchRespCompletionToken, WorkItemToken(wi))
	if _, err := e.invoke(workerCtx(ctx), "CompleteOrchestratorTask", res, "CompleteTaskResponse"); err != nil {
		t.Fatal(err)
	}

	// Two activities: task 0 carries the orchestration's context, task 1 none.
	for range 2 {
		act := recvWork(t, cs)
		_, _, tid := describeWorkItem(act)
		a := act.ProtoReflect().Get(wiActivity).Message().Interface()
		b, ok := UnknownString(a, FieldActivityParentTrace)
		switch {
		case tid == 0 && !ok:
			t.Error("activity 0: no parentTraceContext")
		case tid == 0:
			tc := NewMessage("TraceContext")
			if err := proto.Unmarshal([]byte(b), tc); err != nil || tc.ProtoReflect().Get(fd(tc.ProtoReflect().Descriptor(), "traceParent")).String() != orchestration {
				t.Errorf("activity 0: parentTraceContext %v (%v), want %s", tc, err, orchestration)
			}
		case ok:
			t.Errorf("activity %d: a parentTraceContext relayed from a malformed one", tid)
		}
		if err := e.completeActivity(ctx, "inst-t", tid, `"r"`, WorkItemToken(act)); err != nil {
			t.Fatal(err)
		}
	}
	// The orchestrator's next turn: its TaskScheduled event for task 0 has
	// the context too.
	wi = recvWork(t, cs)
	for _, ev := range events(wi) {
		if ev.GetTaskScheduled() != nil && ev.GetEventId() == 0 && parentOf(ev) != orchestration {
			t.Errorf("TaskScheduled 0: parentTraceContext %q, want %q", parentOf(ev), orchestration)
		}
	}
	if err := e.completeOrch(ctx, completeOrchestrationJSON("inst-t", `"done"`), WorkItemToken(wi)); err != nil {
		t.Fatal(err)
	}
	if vs := e.srv.Violations(); !hasViolation(vs, "not-a-traceparent") || len(vs) != 1 {
		t.Errorf("violations:\n%s", strings.Join(vs, "\n"))
	}
	if s := e.srv.Stats(); s.TraceContexts != 2 || s.TraceContextsRelayed < 3 {
		t.Errorf("stats: %d trace contexts received, %d relayed; want 2, at least 3", s.TraceContexts, s.TraceContextsRelayed)
	}
}
