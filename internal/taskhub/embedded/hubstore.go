package embedded

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/rs/zerolog"
)

// maxWriteBatch bounds the writes one transaction makes.
const maxWriteBatch = 256

// errInstanceExists: a new instance's id is taken; the backend decides what
// that means.
var errInstanceExists = errors.New("an instance with this id exists")

// hubStore is this process's own connection to the embedded hub's file, for
// what durabletask-go's SQLite backend does too slowly or too loosely.
//
// Speed: the backend spends a write transaction on each activity item to
// take it and another to record its result, and one on each start, all on
// one connection; those transactions bound a fan-out's speed, and a start
// waits behind them. hubStore takes activity items in batches and records
// results, starts and events in batches, in the backend's own tables, so
// items it holds look, to every process sharing the file, like items the
// backend holds: locked until LockExpiration.
//
// Safety: the backend locks every item under one name per process, and
// task rows reuse the sequence number of a deleted row (a purge deletes
// some), so a late completion could delete another item that took the same
// number and record its own result instead. Every lock hubStore takes,
// activity items and orchestration work items alike, is a token of its own
// (lockToken), which the completion and the hand-back check; and hubStore
// renews its locks while their work runs (renew), so a lock held by a live
// process never expires, and a dead process's come back once they do.
type hubStore struct {
	db       *sql.DB
	log      zerolog.Logger
	owner    string // this process: LockedBy tokens start with it
	locks    atomic.Uint64
	lockFor  time.Duration
	capacity int // the activity worker's limit: never hold more than it runs

	mu        sync.Mutex
	ready     []*backend.ActivityWorkItem // taken, not yet handed to the worker
	tasks     map[string]int64            // lock token -> task row, from take to complete or hand-back
	instances map[string]api.InstanceID   // lock token -> instance, from take to complete or hand-back
	closed    bool                        // no more writes: a late start gets an error

	writes    chan write
	committed chan struct{} // closed when the committer has stopped
	stopRenew chan struct{}
	renewed   chan struct{} // closed when renew has stopped
}

// write is one activity's result to record, one instance to create, or one
// event to add to an instance.
type write struct {
	result *backend.ActivityWorkItem
	start  *backend.HistoryEvent
	event  *backend.HistoryEvent
	to     api.InstanceID // the event's instance
	done   chan error
}

func openHubStore(dsn string, lockFor time.Duration, capacity int, log zerolog.Logger) (*hubStore, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	// One connection: SQLite has one writer at a time anyway.
	db.SetMaxOpenConns(1)
	host, _ := os.Hostname()
	s := &hubStore{
		db:        db,
		log:       log,
		owner:     strings.Join([]string{host, strconv.Itoa(os.Getpid()), uuid.NewString()}, ","),
		lockFor:   lockFor,
		capacity:  capacity,
		tasks:     map[string]int64{},
		instances: map[string]api.InstanceID{},
		writes:    make(chan write, maxWriteBatch),
		committed: make(chan struct{}),
		stopRenew: make(chan struct{}),
		renewed:   make(chan struct{}),
	}
	go s.commit()
	go s.renewEvery(lockFor / 3)
	return s, nil
}

// lockToken returns a LockedBy value no lock ever had before: this
// process's name and a number it never hands out twice.
func (s *hubStore) lockToken() string {
	return s.owner + "/" + strconv.FormatUint(s.locks.Add(1), 10)
}

// next hands out an activity work item. The worker asks only when it has a
// free slot, so the batch it takes is as large as its free slots: no item
// waits long in ready while its lock runs.
func (s *hubStore) next(ctx context.Context) (*backend.ActivityWorkItem, error) {
	s.mu.Lock()
	if len(s.ready) > 0 {
		wi := s.ready[0]
		s.ready = s.ready[1:]
		s.mu.Unlock()
		return wi, nil
	}
	want := max(1, s.capacity-len(s.tasks))
	s.mu.Unlock()

	items, err := s.take(ctx, want)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, backend.ErrNoWorkItems
	}
	s.mu.Lock()
	for _, wi := range items {
		s.tasks[wi.LockedBy] = wi.SequenceNumber
	}
	s.ready = append(s.ready, items[1:]...)
	s.mu.Unlock()
	return items[0], nil
}

// take locks up to n available items in one statement, oldest first, each
// under a token of its own: one token for the statement, and the item's
// sequence number, which no other row has while this one exists. The
// statement is short and runs to its end: database/sql closes the rows of a
// cancelled query from another goroutine, which the SQLite driver does not
// survive while it steps through them.
func (s *hubStore) take(ctx context.Context, n int) ([]*backend.ActivityWorkItem, error) {
	ctx = context.WithoutCancel(ctx)
	now := time.Now().UTC()
	rows, err := s.db.QueryContext(ctx,
		`UPDATE NewTasks SET [LockedBy] = ? || [SequenceNumber], [LockExpiration] = ?, [DequeueCount] = [DequeueCount] + 1
		WHERE [SequenceNumber] IN (
			SELECT [SequenceNumber] FROM NewTasks
			WHERE [LockExpiration] IS NULL OR [LockExpiration] < ?
			ORDER BY [SequenceNumber] LIMIT ?
		) RETURNING [SequenceNumber], [InstanceID], [EventPayload], [LockedBy]`,
		s.lockToken()+"/", now.Add(s.lockFor), now, n)
	if err != nil {
		return nil, fmt.Errorf("taking activity work items: %w", err)
	}
	defer rows.Close()
	var items []*backend.ActivityWorkItem
	for rows.Next() {
		var seq int64
		var id, token string
		var payload []byte
		if err := rows.Scan(&seq, &id, &payload, &token); err != nil {
			return nil, fmt.Errorf("taking activity work items: %w", err)
		}
		e, err := backend.UnmarshalHistoryEvent(payload)
		if err != nil {
			return nil, err
		}
		items = append(items, &backend.ActivityWorkItem{SequenceNumber: seq, InstanceID: api.InstanceID(id), NewEvent: e, LockedBy: token})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("taking activity work items: %w", err)
	}
	slices.SortFunc(items, func(a, c *backend.ActivityWorkItem) int { return int(a.SequenceNumber - c.SequenceNumber) })
	return items, nil
}

// complete records an item's result, in one transaction with whatever other
// writes are waiting.
func (s *hubStore) complete(wi *backend.ActivityWorkItem) error {
	err := s.write(write{result: wi})
	if err == nil {
		s.release(wi) // on failure the worker hands it back, which releases it
	}
	return err
}

// create creates an instance from its ExecutionStarted event, in one
// transaction with whatever other writes are waiting. It returns
// errInstanceExists if the id is taken.
func (s *hubStore) create(e *backend.HistoryEvent) error {
	if e.GetExecutionStarted() == nil || e.Timestamp == nil {
		return errors.New("a new instance needs an ExecutionStarted event with a timestamp")
	}
	return s.write(write{start: e})
}

// addEvent adds e to instance id's new events, in one transaction with
// whatever other writes are waiting, if the instance exists: else it
// returns api.ErrInstanceNotFound, and no row is left for an instance
// that is gone.
func (s *hubStore) addEvent(id api.InstanceID, e *backend.HistoryEvent) error {
	if e.Timestamp == nil {
		return errors.New("an event needs a timestamp")
	}
	return s.write(write{event: e, to: id})
}

func (s *hubStore) write(w write) error {
	w.done = make(chan error, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("the embedded task hub is closed")
	}
	s.writes <- w // buffered: the committer drains it without the lock
	s.mu.Unlock()
	return <-w.done
}

// release forgets an item that was completed or handed back.
func (s *hubStore) release(wi *backend.ActivityWorkItem) {
	s.mu.Lock()
	delete(s.tasks, wi.LockedBy)
	s.mu.Unlock()
}

// commit makes the writes as they come, each transaction taking every write
// waiting when it starts: under load, many.
func (s *hubStore) commit() {
	defer close(s.committed)
	for w := range s.writes {
		batch := []write{w}
	gather:
		for len(batch) < maxWriteBatch {
			select {
			case w, ok := <-s.writes:
				if !ok {
					break gather
				}
				batch = append(batch, w)
			default:
				break gather
			}
		}
		errs := s.record(batch)
		for i, w := range batch {
			w.done <- errs[i]
		}
	}
}

// The statements of record, as the backend's own make the same changes.
const (
	deleteTask     = "DELETE FROM NewTasks WHERE [SequenceNumber] = ? AND [LockedBy] = ?"
	instanceExists = "SELECT EXISTS (SELECT 1 FROM Instances WHERE [InstanceID] = ?)"
	insertEvent    = "INSERT INTO NewEvents ([InstanceID], [EventPayload]) VALUES (?, ?)"
	insertInstance = `INSERT OR IGNORE INTO [Instances] ([Name], [Version], [InstanceID], [ExecutionID], [Input], [RuntimeStatus], [CreatedTime])
		VALUES (?, ?, ?, ?, ?, 'PENDING', ?)`
)

// record makes a batch of writes in one transaction. An activity's task is
// deleted and, if it was still this item's, its result added to the
// instance's new events; a result whose instance is gone is dropped. A new
// instance is added with its ExecutionStarted event, unless its id is
// taken; an event is added to an instance that exists.
func (s *hubStore) record(batch []write) []error {
	errs := make([]error, len(batch))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = fmt.Errorf("writing to the embedded task hub: %w", err)
		}
		return errs
	}
	// Not cancellable: a result half-recorded is worse than a late one.
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fail(err)
	}
	defer tx.Rollback()
	stmts := map[string]*sql.Stmt{}
	prepared := func(query string) (*sql.Stmt, error) {
		st, ok := stmts[query]
		if !ok {
			if st, err = tx.PrepareContext(ctx, query); err != nil {
				return nil, err
			}
			stmts[query] = st
		}
		return st, nil
	}
	// exec runs a statement and says how many rows it changed.
	exec := func(query string, args ...any) (int64, error) {
		st, err := prepared(query)
		if err != nil {
			return 0, err
		}
		res, err := st.ExecContext(ctx, args...)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	}
	exists := func(id string) (found bool, err error) {
		st, err := prepared(instanceExists)
		if err == nil {
			err = st.QueryRowContext(ctx, id).Scan(&found)
		}
		return found, err
	}
	for i, w := range batch {
		var gone bool
		var id string
		var event *backend.HistoryEvent
		switch {
		case w.result != nil:
			id, event = string(w.result.InstanceID), w.result.Result
			n, err := exec(deleteTask, w.result.SequenceNumber, w.result.LockedBy)
			if err != nil {
				return fail(err)
			}
			if gone = n == 0; gone {
				found, err := exists(id)
				if err != nil {
					return fail(err)
				}
				if found {
					errs[i] = backend.ErrWorkItemLockLost // another worker has it now
				} else {
					s.log.Debug().Str("instanceId", id).Str("activity", w.result.NewEvent.GetTaskScheduled().GetName()).
						Msg("dropped the result of an activity whose instance was purged while it ran")
				}
			}
		case w.start != nil:
			es := w.start.GetExecutionStarted()
			id, event = es.GetOrchestrationInstance().GetInstanceId(), w.start
			n, err := exec(insertInstance, es.GetName(), es.GetVersion().GetValue(), id,
				es.GetOrchestrationInstance().GetExecutionId().GetValue(), es.GetInput().GetValue(), w.start.GetTimestamp().AsTime())
			if err != nil {
				return fail(err)
			}
			if gone = n == 0; gone {
				errs[i] = errInstanceExists
			}
		default:
			id, event = string(w.to), w.event
			found, err := exists(id)
			if err != nil {
				return fail(err)
			}
			if gone = !found; gone {
				errs[i] = api.ErrInstanceNotFound
			}
		}
		if gone {
			continue
		}
		payload, err := backend.MarshalHistoryEvent(event)
		if err != nil {
			return fail(err)
		}
		if _, err := exec(insertEvent, id, payload); err != nil {
			return fail(err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fail(err)
	}
	return errs
}

// close hands back the items taken but never started, checkpoints the
// write-ahead log into the main file, and closes the connection; all by ctx's
// deadline. The worker must have stopped: nothing completes after this.
// checkpointed is false when other processes using the file kept part of
// the log from being copied.
func (s *hubStore) close(ctx context.Context) (checkpointed bool, err error) {
	close(s.stopRenew)
	<-s.renewed
	s.mu.Lock()
	s.closed = true
	close(s.writes)
	s.mu.Unlock()
	<-s.committed
	s.mu.Lock()
	ready := s.ready
	s.ready = nil
	s.mu.Unlock()
	var errs []error
	for _, wi := range ready {
		if _, err := s.db.ExecContext(ctx, "UPDATE NewTasks SET [LockedBy] = NULL, [LockExpiration] = NULL WHERE [SequenceNumber] = ? AND [LockedBy] = ?", wi.SequenceNumber, wi.LockedBy); err != nil {
			errs = append(errs, err)
		}
	}
	// The library's connection stays open until the process ends, so SQLite
	// never checkpoints on its own close; without this, a copy of the main
	// file would lack what was recorded since the last automatic checkpoint.
	var busy, logFrames, copied int
	if err := s.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &copied); err != nil {
		errs = append(errs, fmt.Errorf("checkpointing the write-ahead log: %w", err))
	}
	return busy == 0, errors.Join(append(errs, s.db.Close())...)
}

// takeOrchestration locks an instance that has new events ready, and those
// events, under a token of their own, as the backend's GetOrchestrationWorkItem
// does under its one name per process.
func (s *hubStore) takeOrchestration(ctx context.Context) (*backend.OrchestrationWorkItem, error) {
	ctx = context.WithoutCancel(ctx) // see take
	token := s.lockToken()
	now := time.Now().UTC()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("taking an orchestration work item: %w", err)
	}
	defer tx.Rollback()
	var id string
	err = tx.QueryRowContext(ctx,
		`UPDATE Instances SET [LockedBy] = ?, [LockExpiration] = ?
		WHERE [rowid] = (
			SELECT [rowid] FROM Instances I
			WHERE (I.[LockExpiration] IS NULL OR I.[LockExpiration] < ?) AND EXISTS (
				SELECT 1 FROM NewEvents E
				WHERE E.[InstanceID] = I.[InstanceID] AND (E.[VisibleTime] IS NULL OR E.[VisibleTime] < ?)
			)
			LIMIT 1
		) RETURNING [InstanceID]`,
		token, now.Add(s.lockFor), now, now).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, backend.ErrNoWorkItems
	}
	if err != nil {
		return nil, fmt.Errorf("taking an orchestration work item: %w", err)
	}
	rows, err := tx.QueryContext(ctx,
		`UPDATE NewEvents SET [DequeueCount] = [DequeueCount] + 1, [LockedBy] = ? WHERE rowid IN (
			SELECT rowid FROM NewEvents
			WHERE [InstanceID] = ? AND ([VisibleTime] IS NULL OR [VisibleTime] <= ?)
			LIMIT 1000
		) RETURNING [SequenceNumber], [EventPayload], [DequeueCount]`,
		token, id, now)
	if err != nil {
		return nil, fmt.Errorf("taking an orchestration work item: %w", err)
	}
	defer rows.Close()
	type received struct {
		seq   int64
		event *backend.HistoryEvent
	}
	var events []received
	var dequeued int32
	for rows.Next() {
		var r received
		var payload []byte
		var n int32
		if err := rows.Scan(&r.seq, &payload, &n); err != nil {
			return nil, fmt.Errorf("taking an orchestration work item: %w", err)
		}
		if r.event, err = backend.UnmarshalHistoryEvent(payload); err != nil {
			return nil, err
		}
		events = append(events, r)
		dequeued = max(dequeued, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("taking an orchestration work item: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("taking an orchestration work item: %w", err)
	}
	// The events in the order they arrived, which RETURNING does not promise.
	slices.SortFunc(events, func(a, b received) int { return cmp.Compare(a.seq, b.seq) })
	wi := &backend.OrchestrationWorkItem{InstanceID: api.InstanceID(id), LockedBy: token, RetryCount: dequeued - 1}
	for _, r := range events {
		wi.NewEvents = append(wi.NewEvents, r.event)
	}
	s.mu.Lock()
	s.instances[token] = wi.InstanceID
	s.mu.Unlock()
	return wi, nil
}

// unlocked forgets an orchestration work item that was completed or handed
// back.
func (s *hubStore) unlocked(wi *backend.OrchestrationWorkItem) {
	s.mu.Lock()
	delete(s.instances, wi.LockedBy)
	s.mu.Unlock()
}

// purged reports whether instance id is gone from the hub. A failed look
// says it is not, so that the error it explains is not hidden.
func (s *hubStore) purged(id api.InstanceID) bool {
	var found bool
	err := s.db.QueryRowContext(context.Background(), instanceExists, string(id)).Scan(&found)
	return err == nil && !found
}

// renewEvery renews the locks of the work this process holds every period,
// until close: a lock held by a live process never expires, however long
// its activity or step runs, while a dead process's locks expire within
// lockFor, and another process takes their work.
func (s *hubStore) renewEvery(period time.Duration) {
	defer close(s.renewed)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-s.stopRenew:
			return
		case <-t.C:
			if err := s.renew(); err != nil {
				s.log.Warn().Err(err).Msg("renewing the locks of the work in flight failed; retrying")
			}
		}
	}
}

// renew extends every lock this process holds by lockFor from now. A lock
// no longer held (completed, handed back, taken over after it expired) is
// left as it is: each statement names the lock's token, and an instance
// whose step was recorded has no expiration to extend.
func (s *hubStore) renew() error {
	s.mu.Lock()
	tasks, instances := maps.Clone(s.tasks), maps.Clone(s.instances)
	s.mu.Unlock()
	if len(tasks)+len(instances) == 0 {
		return nil
	}
	ctx := context.Background()
	until := time.Now().UTC().Add(s.lockFor)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for token, seq := range tasks {
		if _, err := tx.ExecContext(ctx, "UPDATE NewTasks SET [LockExpiration] = ? WHERE [SequenceNumber] = ? AND [LockedBy] = ?", until, seq, token); err != nil {
			return err
		}
	}
	for token, id := range instances {
		if _, err := tx.ExecContext(ctx, "UPDATE Instances SET [LockExpiration] = ? WHERE [InstanceID] = ? AND [LockedBy] = ? AND [LockExpiration] IS NOT NULL", until, string(id), token); err != nil {
			return err
		}
	}
	return tx.Commit()
}
