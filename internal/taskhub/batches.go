package taskhub

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
)

// maxWriteBatch bounds the writes one transaction makes.
const maxWriteBatch = 256

// errInstanceExists: a new instance's id is taken; the backend decides what
// that means.
var errInstanceExists = errors.New("an instance with this id exists")

// activityBatches takes the embedded hub's activity work items from its file
// in batches, and records their results, and new instances, in batches.
// durabletask-go's SQLite backend spends a write transaction on each item to
// take it and another to record its result, and one on each start, all on
// one connection; those transactions bound a fan-out's speed, and a start
// waits behind them. This uses a connection of its own to the same file and
// the backend's own tables, so items it holds look, to every process sharing
// the file, like items the backend holds: locked until LockExpiration.
type activityBatches struct {
	db       *sql.DB
	owner    string // LockedBy of the items it takes
	lockFor  time.Duration
	capacity int // the activity worker's limit: never hold more than it runs

	mu     sync.Mutex
	ready  []*backend.ActivityWorkItem // taken, not yet handed to the worker
	held   int                         // taken and not yet completed or abandoned
	closed bool                        // no more writes: a late start gets an error

	writes    chan write
	committed chan struct{} // closed when the committer has stopped
}

// write is one activity's result to record, or one instance to create.
type write struct {
	result *backend.ActivityWorkItem
	start  *backend.HistoryEvent
	done   chan error
}

func openActivityBatches(dsn string, lockFor time.Duration, capacity int) (*activityBatches, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	// One connection: SQLite has one writer at a time anyway.
	db.SetMaxOpenConns(1)
	host, _ := os.Hostname()
	b := &activityBatches{
		db:        db,
		owner:     strings.Join([]string{host, strconv.Itoa(os.Getpid()), uuid.NewString()}, ","),
		lockFor:   lockFor,
		capacity:  capacity,
		writes:    make(chan write, maxWriteBatch),
		committed: make(chan struct{}),
	}
	go b.commit()
	return b, nil
}

// next hands out an activity work item. The worker asks only when it has a
// free slot, so the batch it takes is as large as its free slots: no item
// waits long in ready while its lock runs.
func (b *activityBatches) next(ctx context.Context) (*backend.ActivityWorkItem, error) {
	b.mu.Lock()
	if len(b.ready) > 0 {
		wi := b.ready[0]
		b.ready = b.ready[1:]
		b.mu.Unlock()
		return wi, nil
	}
	want := max(1, b.capacity-b.held)
	b.mu.Unlock()

	items, err := b.take(ctx, want)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, backend.ErrNoWorkItems
	}
	b.mu.Lock()
	b.held += len(items)
	b.ready = append(b.ready, items[1:]...)
	b.mu.Unlock()
	return items[0], nil
}

// take locks up to n available items in one statement, oldest first. The
// statement is short and runs to its end: database/sql closes the rows of a
// cancelled query from another goroutine, which the SQLite driver does not
// survive while it steps through them.
func (b *activityBatches) take(ctx context.Context, n int) ([]*backend.ActivityWorkItem, error) {
	ctx = context.WithoutCancel(ctx)
	now := time.Now().UTC()
	rows, err := b.db.QueryContext(ctx,
		`UPDATE NewTasks SET [LockedBy] = ?, [LockExpiration] = ?, [DequeueCount] = [DequeueCount] + 1
		WHERE [SequenceNumber] IN (
			SELECT [SequenceNumber] FROM NewTasks
			WHERE [LockExpiration] IS NULL OR [LockExpiration] < ?
			ORDER BY [SequenceNumber] LIMIT ?
		) RETURNING [SequenceNumber], [InstanceID], [EventPayload]`,
		b.owner, now.Add(b.lockFor), now, n)
	if err != nil {
		return nil, fmt.Errorf("taking activity work items: %w", err)
	}
	defer rows.Close()
	var items []*backend.ActivityWorkItem
	for rows.Next() {
		var seq int64
		var id string
		var payload []byte
		if err := rows.Scan(&seq, &id, &payload); err != nil {
			return nil, fmt.Errorf("taking activity work items: %w", err)
		}
		e, err := backend.UnmarshalHistoryEvent(payload)
		if err != nil {
			return nil, err
		}
		items = append(items, &backend.ActivityWorkItem{SequenceNumber: seq, InstanceID: api.InstanceID(id), NewEvent: e, LockedBy: b.owner})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("taking activity work items: %w", err)
	}
	slices.SortFunc(items, func(a, c *backend.ActivityWorkItem) int { return int(a.SequenceNumber - c.SequenceNumber) })
	return items, nil
}

// complete records an item's result, in one transaction with whatever other
// writes are waiting.
func (b *activityBatches) complete(wi *backend.ActivityWorkItem) error {
	err := b.write(write{result: wi})
	if err == nil {
		b.release() // on failure the worker hands it back, which releases it
	}
	return err
}

// create creates an instance from its ExecutionStarted event, in one
// transaction with whatever other writes are waiting. It returns
// errInstanceExists if the id is taken.
func (b *activityBatches) create(e *backend.HistoryEvent) error {
	if e.GetExecutionStarted() == nil || e.Timestamp == nil {
		return errors.New("a new instance needs an ExecutionStarted event with a timestamp")
	}
	return b.write(write{start: e})
}

func (b *activityBatches) write(w write) error {
	w.done = make(chan error, 1)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errors.New("the embedded task hub is closed")
	}
	b.writes <- w // buffered: the committer drains it without the lock
	b.mu.Unlock()
	return <-w.done
}

// release forgets an item that was completed or handed back.
func (b *activityBatches) release() {
	b.mu.Lock()
	b.held--
	b.mu.Unlock()
}

// commit makes the writes as they come, each transaction taking every write
// waiting when it starts: under load, many.
func (b *activityBatches) commit() {
	defer close(b.committed)
	for w := range b.writes {
		batch := []write{w}
	gather:
		for len(batch) < maxWriteBatch {
			select {
			case w, ok := <-b.writes:
				if !ok {
					break gather
				}
				batch = append(batch, w)
			default:
				break gather
			}
		}
		errs := b.record(batch)
		for i, w := range batch {
			w.done <- errs[i]
		}
	}
}

// The statements of record, as the backend's own make the same changes.
const (
	deleteTask     = "DELETE FROM NewTasks WHERE [SequenceNumber] = ? AND [LockedBy] = ?"
	insertEvent    = "INSERT INTO NewEvents ([InstanceID], [EventPayload]) VALUES (?, ?)"
	insertInstance = `INSERT OR IGNORE INTO [Instances] ([Name], [Version], [InstanceID], [ExecutionID], [Input], [RuntimeStatus], [CreatedTime])
		VALUES (?, ?, ?, ?, ?, 'PENDING', ?)`
)

// record makes a batch of writes in one transaction. An activity's task is
// deleted and, if it was still this process's, its result added to the
// instance's new events; a new instance is added with its ExecutionStarted
// event, unless its id is taken.
func (b *activityBatches) record(batch []write) []error {
	errs := make([]error, len(batch))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = fmt.Errorf("writing to the embedded task hub: %w", err)
		}
		return errs
	}
	// Not cancellable: a result half-recorded is worse than a late one.
	ctx := context.Background()
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return fail(err)
	}
	defer tx.Rollback()
	stmts := map[string]*sql.Stmt{}
	exec := func(query string, args ...any) (sql.Result, error) {
		st, ok := stmts[query]
		if !ok {
			if st, err = tx.PrepareContext(ctx, query); err != nil {
				return nil, err
			}
			stmts[query] = st
		}
		return st.ExecContext(ctx, args...)
	}
	for i, w := range batch {
		var gone bool
		var id string
		var event *backend.HistoryEvent
		if w.result != nil {
			res, err := exec(deleteTask, w.result.SequenceNumber, w.result.LockedBy)
			if err != nil {
				return fail(err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fail(err)
			}
			gone, id, event = n == 0, string(w.result.InstanceID), w.result.Result
			errs[i] = backend.ErrWorkItemLockLost // another process has it now
		} else {
			es := w.start.GetExecutionStarted()
			id = es.GetOrchestrationInstance().GetInstanceId()
			res, err := exec(insertInstance, es.GetName(), es.GetVersion().GetValue(), id,
				es.GetOrchestrationInstance().GetExecutionId().GetValue(), es.GetInput().GetValue(), w.start.GetTimestamp().AsTime())
			if err != nil {
				return fail(err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fail(err)
			}
			gone, event = n == 0, w.start
			errs[i] = errInstanceExists
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
		errs[i] = nil
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
func (b *activityBatches) close(ctx context.Context) (checkpointed bool, err error) {
	b.mu.Lock()
	b.closed = true
	close(b.writes)
	b.mu.Unlock()
	<-b.committed
	b.mu.Lock()
	ready := b.ready
	b.ready = nil
	b.mu.Unlock()
	var errs []error
	for _, wi := range ready {
		if _, err := b.db.ExecContext(ctx, "UPDATE NewTasks SET [LockedBy] = NULL, [LockExpiration] = NULL WHERE [SequenceNumber] = ? AND [LockedBy] = ?", wi.SequenceNumber, wi.LockedBy); err != nil {
			errs = append(errs, err)
		}
	}
	// The library's connection stays open until the process ends, so SQLite
	// never checkpoints on its own close; without this, a copy of the main
	// file would lack what was recorded since the last automatic checkpoint.
	var busy, logFrames, copied int
	if err := b.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &copied); err != nil {
		errs = append(errs, fmt.Errorf("checkpointing the write-ahead log: %w", err))
	}
	return busy == 0, errors.Join(append(errs, b.db.Close())...)
}
