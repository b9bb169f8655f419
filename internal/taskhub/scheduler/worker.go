package scheduler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/telemetry"
)

// Timings of the work-item stream. The first four are the official SDKs';
// the SDKs retry a completion up to 10 times, but a completion that keeps
// failing here is handed back sooner, to be done again.
const (
	helloTimeout       = 30 * time.Second
	silentTimeout      = 120 * time.Second // no message, not even a health ping: the stream is dead
	reconnectBase      = time.Second
	reconnectMax       = 30 * time.Second
	completionAttempts = 5
	completionBackoff  = 200 * time.Millisecond
	completionTimeout  = 30 * time.Second
	abandonAttempts    = 3
	historyTimeout     = 2 * time.Minute
)

type workKind string

const (
	orchestrationWork workKind = "orchestration"
	activityWork      workKind = "activity"
	entityWork        workKind = "entity"
)

var abandonMethods = map[workKind]string{
	orchestrationWork: method("AbandonTaskOrchestratorWorkItem"),
	activityWork:      method("AbandonTaskActivityWorkItem"),
	entityWork:        method("AbandonTaskEntityWorkItem"),
}

// grpcWorker runs orchestrators and activities for a durabletask gRPC
// backend (the Durable Task Scheduler, or the durabletask sidecar). It keeps
// one work-item stream open, reconnecting whenever it ends, runs each item in
// its own goroutine within the host.json limits, and completes it with the
// completion token it came with.
type grpcWorker struct {
	conn     *grpc.ClientConn
	exec     backend.Executor
	log      zerolog.Logger
	endpoint string // scheduler host, for messages
	hub      string

	orchestrationSlots, activitySlots chan struct{} // their capacities are the host.json limits
	history                           *historyCache
	// The scheduler's limits on each payload (an orchestration's input,
	// output and custom status, an activity's input and result, an event's
	// data) and on each completion. A message it refuses would be refused
	// again on every redelivery, so the worker never sends one.
	maxPayloadBytes, maxStepBytes int

	// Changed only by tests.
	silentTimeout time.Duration
	reconnectBase time.Duration

	// intake ends when the worker starts stopping: no reconnects, no new
	// items. leases ends when it has stopped: closing the stream hands the
	// scheduler back whatever is still leased on it. work ends at the close
	// of the shutdown grace period, cancelling activities still running.
	intake, leases          context.Context
	stopIntake, stopLeases  context.CancelFunc
	stopWork                context.CancelFunc
	mu                      sync.Mutex // orders inflight.Add before stop's Wait; guards endSession
	inflight                sync.WaitGroup
	endSession              context.CancelCauseFunc // closes the current stream
	done                    chan struct{}
	noAbandon, noStreamHist atomic.Bool // the backend lacks these RPCs; said once
	outage, everReceived    bool        // run's own: an outage is logged once
}

// newGRPCWorker returns a worker for the task hub cfg describes, on conn.
// stopWork cancels the work context of exec.
func newGRPCWorker(conn *grpc.ClientConn, exec backend.Executor, stopWork context.CancelFunc, log zerolog.Logger, cfg config.TaskHub) *grpcWorker {
	w := &grpcWorker{
		conn: conn, exec: exec, log: log, endpoint: cfg.Scheduler.Host, hub: cfg.Name,
		orchestrationSlots: make(chan struct{}, cfg.MaxConcurrentOrchestrations),
		activitySlots:      make(chan struct{}, cfg.MaxConcurrentActivities),
		history:            newHistoryCache(historyCacheBytes),
		maxPayloadBytes:    cfg.MaxPayloadBytes,
		maxStepBytes:       cfg.MaxStepBytes,
		silentTimeout:      silentTimeout,
		reconnectBase:      reconnectBase,
		stopWork:           stopWork,
		done:               make(chan struct{}),
	}
	w.leases, w.stopLeases = context.WithCancel(context.Background())
	w.intake, w.stopIntake = context.WithCancel(w.leases)
	return w
}

// start runs the worker until stop.
func (w *grpcWorker) start() {
	go func() {
		defer close(w.done)
		w.run()
	}()
}

// stop stops taking work, lets the items in flight finish while their
// stream stays open (see taskhub.Drain), hands back what is left, then closes the
// stream.
func (w *grpcWorker) stop(ctx context.Context) error {
	w.mu.Lock()
	w.stopIntake()
	w.mu.Unlock()

	finished := make(chan struct{})
	go func() {
		w.inflight.Wait()
		close(finished)
	}()
	// Past the deadline, closing the stream hands back the rest.
	err, _ := taskhub.Drain(ctx, finished, w.stopWork)
	w.stopLeases()
	w.stopWork()
	<-w.done
	return err
}

// run keeps a work-item stream open until the worker stops, reconnecting
// with jittered exponential backoff whenever the stream ends, whatever the
// reason: DTS ends streams to rebalance, to restart, or when a token expires.
func (w *grpcWorker) run() {
	attempt := 0
	for w.intake.Err() == nil {
		delivered, err := w.session()
		if w.intake.Err() != nil {
			return
		}
		if delivered {
			attempt = 0
		}
		// A stream that brought nothing failed to connect, unless it was
		// only quiet (a backend that sends no health pings).
		var reason string
		if !delivered && !errors.Is(err, errSilent) {
			if reason = unusableReason(err, w.hub); reason == "" {
				reason = "failed"
			}
		}
		switch {
		case reason != "" && !w.outage:
			w.outage = true
			w.log.Warn().Err(err).Str("scheduler", w.endpoint).Str("reason", reason).Msg("the scheduler cannot be used; retrying until it can")
		case reason != "":
			w.log.Debug().Err(err).Str("scheduler", w.endpoint).Msg("the scheduler still cannot be used")
		case delivered:
			w.log.Info().Err(err).Str("scheduler", w.endpoint).Msg("work-item stream ended; reconnecting")
		default:
			w.log.Debug().Err(err).Str("scheduler", w.endpoint).Msg("quiet work-item stream replaced")
		}
		// Full jitter, so that many workers do not reconnect in step.
		ceiling := min(reconnectMax, w.reconnectBase<<min(attempt, 10))
		attempt++
		taskhub.Sleep(w.intake, rand.N(ceiling)+time.Millisecond)
	}
}

var errSilent = errors.New("no message from the scheduler, not even a health ping, for too long")

// session says hello, opens one work-item stream and runs what it
// delivers until it ends. delivered reports whether the stream brought
// anything, a health ping included.
func (w *grpcWorker) session() (delivered bool, err error) {
	ctx, cancel := context.WithCancelCause(w.leases)
	defer cancel(nil)
	w.mu.Lock()
	w.endSession = cancel
	w.mu.Unlock()

	hello, helloDone := context.WithTimeout(ctx, helloTimeout)
	err = w.conn.Invoke(hello, method("Hello"), &emptypb.Empty{}, &emptypb.Empty{})
	helloDone()
	if err != nil {
		return false, fmt.Errorf("hello: %w", err)
	}
	stream, err := w.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method("GetWorkItems"))
	if err != nil {
		return false, fmt.Errorf("opening the work-item stream: %w", err)
	}
	if err := stream.SendMsg(getWorkItemsRequest(cap(w.orchestrationSlots), cap(w.activitySlots))); err != nil {
		return false, fmt.Errorf("asking for work items: %w", err)
	}
	if err := stream.CloseSend(); err != nil {
		return false, fmt.Errorf("asking for work items: %w", err)
	}

	silent := time.AfterFunc(w.silentTimeout, func() { cancel(errSilent) })
	defer silent.Stop()
	for {
		// Received undecoded: the history is decoded apart, through the
		// cache, in the item's own goroutine.
		var received rawMessage
		err := stream.RecvMsg(&received)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				err = cause
			}
			if err == io.EOF {
				err = errors.New("the scheduler closed the stream")
			}
			return delivered, err
		}
		if !delivered && (w.outage || !w.everReceived) {
			w.log.Info().Str("scheduler", w.endpoint).
				Int("maxConcurrentOrchestrations", cap(w.orchestrationSlots)).Int("maxConcurrentActivities", cap(w.activitySlots)).
				Msg("receiving work from the scheduler")
			w.outage, w.everReceived = false, true
		}
		delivered = true
		silent.Reset(w.silentTimeout)
		item, history, err := splitWorkItem(received)
		if err != nil {
			return delivered, err
		}
		w.dispatch(item, history)
	}
}

// errAbandonFailed ends a stream whose work items could not be handed back
// otherwise: a closed stream's leases go back to the scheduler.
var errAbandonFailed = errors.New("a work item could neither be completed nor handed back")

// Work items as v0.6.0's generated types have them (reached through their
// methods, since the types themselves are internal to it).
type orchestratorRequest interface {
	proto.Message
	GetInstanceId() string
	GetExecutionId() *wrapperspb.StringValue
}

type activityRequest interface {
	proto.Message
	GetName() string
	GetInput() *wrapperspb.StringValue
	GetTaskId() int32
}

// dispatch starts work on one item, whose history, if it has one, is still
// encoded; or hands it straight back when the worker is stopping. Health
// pings need nothing: their arrival was enough.
func (w *grpcWorker) dispatch(item proto.Message, history encodedHistory) {
	token := unknownString(item, fieldWorkItemToken)
	f := fieldsOf(item)
	var kind workKind
	var run func()
	switch {
	case f.has("orchestratorRequest"):
		req := f.msg("orchestratorRequest").m.Interface().(orchestratorRequest)
		kind, run = orchestrationWork, func() { w.runOrchestrator(req, history, token) }
	case f.has("activityRequest"):
		req := f.msg("activityRequest").m.Interface().(activityRequest)
		kind, run = activityWork, func() { w.runActivity(req, token) }
	case hasUnknown(item, fieldWorkItemHealthPing):
		return
	case f.has("entityRequest") || hasUnknown(item, fieldWorkItemEntityV2):
		// This app defines no entities; another app on the same task hub may.
		w.log.Warn().Msg("received an entity work item, which this app cannot run; handing it back")
		w.abandon(entityWork, token)
		return
	default:
		w.log.Warn().Msg("received a work item of an unknown kind; ignoring it")
		return
	}

	w.mu.Lock()
	if w.intake.Err() != nil {
		w.mu.Unlock()
		w.abandon(kind, token)
		return
	}
	w.inflight.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.inflight.Done()
		run()
	}()
}

// acquire takes one of slots, or fails when the worker starts stopping
// first. The scheduler sends no more than the limits asked for; this holds
// them whatever a backend does.
func (w *grpcWorker) acquire(slots chan struct{}) bool {
	select {
	case slots <- struct{}{}:
		return true
	case <-w.intake.Done():
		return false
	}
}

func (w *grpcWorker) runOrchestrator(req orchestratorRequest, history encodedHistory, token string) {
	if !w.acquire(w.orchestrationSlots) {
		w.abandon(orchestrationWork, token)
		return
	}
	defer func() { <-w.orchestrationSlots }()
	id := api.InstanceID(req.GetInstanceId())
	log := w.log.With().Str("instanceId", string(id)).Logger()

	streamed := unknownBool(req, fieldOrchestratorNeedHistory)
	if streamed {
		var err error
		history.pastRegion = nil
		if history.past, err = w.streamHistory(id, req.GetExecutionId()); err != nil {
			log.Warn().Err(err).Msg("fetching the orchestration's history failed; handing the work item back")
			w.abandon(orchestrationWork, token)
			return
		}
	}
	past, newEvents, err := w.history.decode(id, history)
	if err == nil && streamed && !slices.ContainsFunc(past, isExecutionStarted) && !slices.ContainsFunc(newEvents, isExecutionStarted) {
		err = errors.New("the streamed history has no ExecutionStarted event")
	}
	if err != nil {
		log.Warn().Err(err).Msg("reading the orchestration's history failed; handing the work item back")
		w.history.forget(id)
		w.abandon(orchestrationWork, token)
		return
	}
	results, err := w.exec.ExecuteOrchestrator(w.leases, id, past, newEvents)
	if err != nil {
		log.Warn().Err(err).Msg("running the orchestrator failed; handing the work item back")
		w.abandon(orchestrationWork, token)
		return
	}
	res := results.Response
	if _, _, ends := taskhub.Ending(results); ends {
		w.history.forget(id)
	}
	if started := taskhub.ExecutionStarted(past, newEvents); started != nil {
		if sc, ok := telemetry.Orchestration(started, string(id)); ok {
			traceActions(res, sc, started.GetTimestamp().AsTime())
		}
	}
	withToken(res, fieldOrchestratorRespToken, token)
	if size, path := largestPayload(res); size > w.maxPayloadBytes {
		msg := fmt.Sprintf("the orchestrator produced a %d-byte payload (%s), over the scheduler's limit of %d bytes per payload: pass less data between steps, for example with fewer items per partition or shorter items", size, path, w.maxPayloadBytes)
		log.Error().Msg(msg)
		failOrchestration(res, "PayloadTooLarge", msg)
	} else if size := proto.Size(res); size > w.maxStepBytes {
		msg := fmt.Sprintf("the orchestrator's step is %d bytes, over the scheduler's limit of %d bytes per step: schedule less at once, for example with fewer items per partition", size, w.maxStepBytes)
		log.Error().Msg(msg)
		failOrchestration(res, "OrchestratorResponseTooLarge", msg)
	}
	w.complete(orchestrationWork, method("CompleteOrchestratorTask"), res, token, log)
}

func (w *grpcWorker) runActivity(req activityRequest, token string) {
	if !w.acquire(w.activitySlots) {
		w.abandon(activityWork, token)
		return
	}
	defer func() { <-w.activitySlots }()
	id := api.InstanceID(fieldsOf(req).msg("orchestrationInstance").str("instanceId"))
	taskID := req.GetTaskId()
	log := w.log.With().Str("instanceId", string(id)).Str("activity", req.GetName()).Int32("taskId", taskID).Logger()

	outcome, err := w.exec.ExecuteActivity(w.leases, id, taskScheduledEvent(taskID, req.GetName(), req.GetInput(), activityParent(req)))
	if err != nil {
		// Stopped by shutdown: hand it back rather than record a failure.
		log.Info().Err(err).Msg("activity not finished; handing it back")
		w.abandon(activityWork, token)
		return
	}
	res := activityResponse(id, taskID, outcome)
	if size := len(outcome.GetTaskCompleted().GetResult().GetValue()); size > w.maxPayloadBytes {
		msg := fmt.Sprintf("activity %s returned %d bytes, over the scheduler's limit of %d bytes per payload", req.GetName(), size, w.maxPayloadBytes)
		log.Error().Msg(msg)
		res = failedActivityResponse(id, taskID, "PayloadTooLarge", msg)
	}
	withToken(res, fieldActivityRespToken, token)
	w.complete(activityWork, method("CompleteActivityTask"), res, token, log)
}

// withToken adds the completion token, if the item came with one, to its
// result.
func withToken(res proto.Message, field protowire.Number, token string) {
	if token != "" {
		appendUnknown(res, appendString(nil, field, token))
	}
}

// complete sends a finished item's result. A NotFound answer means the item
// is no longer ours (its stream ended, and it was or will be delivered
// again): that is dropped, not retried. Other transient failures are retried
// a few times, then the item is handed back.
func (w *grpcWorker) complete(kind workKind, rpc string, res proto.Message, token string, log zerolog.Logger) {
	err := w.invokeRetrying(rpc, res, newMessage("CompleteTaskResponse"), completionAttempts, func(err error, attempt int) {
		log.Debug().Err(err).Int("attempt", attempt).Msg("completing the work item failed; retrying")
	})
	switch {
	case err == nil:
		return
	case w.leases.Err() != nil:
		log.Debug().Err(err).Msg("worker stopped before the result was sent; the closed stream handed the item back")
		return
	case status.Code(err) == codes.NotFound:
		log.Info().Str("work", string(kind)).Msg("the scheduler no longer holds this work item (its stream ended); it is delivered again, so this result is dropped")
		return
	}
	log.Warn().Err(err).Str("work", string(kind)).Msg("completing the work item failed; handing it back")
	w.abandon(kind, token)
}

// invokeRetrying makes the call rpc, within completionTimeout, again after
// a transient failure (first completionBackoff later, then twice as long
// each time), up to attempts calls in all, and not once the worker has
// stopped. retrying, if given, hears of each failure that is retried. It
// returns the last call's error.
func (w *grpcWorker) invokeRetrying(rpc string, req, res proto.Message, attempts int, retrying func(err error, attempt int)) error {
	delay := completionBackoff
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(w.leases, completionTimeout)
		err := w.conn.Invoke(ctx, rpc, req, res)
		cancel()
		if err == nil || w.leases.Err() != nil || !transient(err) || attempt >= attempts {
			return err
		}
		if retrying != nil {
			retrying(err, attempt)
		}
		taskhub.Sleep(w.leases, delay)
		delay *= 2
	}
}

// transient reports whether a failed call may succeed if made again.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Internal, codes.Unknown, codes.Aborted:
		return true
	case codes.ResourceExhausted:
		return !strings.Contains(status.Convert(err).Message(), "larger than max")
	}
	return false
}

// abandon hands a work item back so that it is delivered again soon. A
// backend without the abandon RPCs (the v0.6.0 sidecar) takes it back when
// the stream closes instead. If it cannot be handed back, the stream is
// closed, so the item's lease does not sit with this worker until the stream
// ends by itself, which can take hours.
func (w *grpcWorker) abandon(kind workKind, token string) {
	if token == "" || w.noAbandon.Load() {
		return
	}
	err := w.invokeRetrying(abandonMethods[kind], abandonRequest(token), &emptypb.Empty{}, abandonAttempts, nil)
	switch {
	case err == nil, status.Code(err) == codes.NotFound: // handed back, or no longer ours anyway
		return
	case w.leases.Err() != nil: // stopped: closing the stream handed it back
		return
	case status.Code(err) == codes.Unimplemented:
		if !w.noAbandon.Swap(true) {
			w.log.Info().Msg("the backend cannot take work items back; unfinished ones are delivered again when the work-item stream closes")
		}
		return
	}
	w.log.Warn().Err(err).Str("work", string(kind)).Msg("handing a work item back failed; closing the work-item stream so the scheduler takes it back")
	if w.intake.Err() == nil { // while stopping, the stream closes anyway
		w.mu.Lock()
		w.endSession(errAbandonFailed)
		w.mu.Unlock()
	}
}

// streamHistory fetches an orchestration's history, which the scheduler
// leaves out of work items whose history is too large to send inline. The
// events come encoded, for the history cache to decode.
func (w *grpcWorker) streamHistory(id api.InstanceID, executionID *wrapperspb.StringValue) ([][]byte, error) {
	if w.noStreamHist.Load() {
		return nil, errors.New("the backend cannot stream histories")
	}
	req, err := streamHistoryRequest(string(id), executionID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(w.leases, historyTimeout)
	defer cancel()
	stream, err := w.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method("StreamInstanceHistory"))
	if err != nil {
		return nil, err
	}
	if err := stream.SendMsg(req); err != nil {
		return nil, err
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	var events [][]byte
	for {
		chunk := &emptypb.Empty{}
		err := stream.RecvMsg(chunk)
		if err == io.EOF {
			break
		}
		if status.Code(err) == codes.Unimplemented && !w.noStreamHist.Swap(true) {
			w.log.Error().Msg("the backend asked this worker to fetch histories but cannot stream them")
		}
		if err != nil {
			return nil, err
		}
		chunkEvents, err := historyChunkEvents(chunk)
		if err != nil {
			return nil, err
		}
		events = append(events, chunkEvents...)
	}
	return events, nil
}

func isExecutionStarted(e *backend.HistoryEvent) bool { return e.GetExecutionStarted() != nil }
