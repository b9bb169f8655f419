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

// maxCompletionBatch bounds the activity results one transaction records.
const maxCompletionBatch = 256

// activityBatches takes the embedded hub's activity work items from its file
// in batches, and records their results in batches. durabletask-go's SQLite
// backend spends a write transaction on each item to take it and another to
// record its result, all on one connection; those transactions bound a
// fan-out's speed. This uses a connection of its own to the same file and
// the backend's own tables, so items it holds look, to every process sharing
// the file, like items the backend holds: locked until LockExpiration.
type activityBatches struct {
	db       *sql.DB
	owner    string // LockedBy of the items it takes
	lockFor  time.Duration
	capacity int // the activity worker's limit: never hold more than it runs

	mu    sync.Mutex
	ready []*backend.ActivityWorkItem // taken, not yet handed to the worker
	held  int                         // taken and not yet completed or abandoned

	completions chan completion
	committed   chan struct{} // closed when the committer has stopped
}

type completion struct {
	item *backend.ActivityWorkItem
	done chan error
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
		db:          db,
		owner:       strings.Join([]string{host, strconv.Itoa(os.Getpid()), uuid.NewString()}, ","),
		lockFor:     lockFor,
		capacity:    capacity,
		completions: make(chan completion, maxCompletionBatch),
		committed:   make(chan struct{}),
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

// take locks up to n available items in one statement, oldest first.
func (b *activityBatches) take(ctx context.Context, n int) ([]*backend.ActivityWorkItem, error) {
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
// results are waiting.
func (b *activityBatches) complete(wi *backend.ActivityWorkItem) error {
	c := completion{item: wi, done: make(chan error, 1)}
	b.completions <- c
	err := <-c.done
	b.release()
	return err
}

// release forgets an item that was completed or handed back.
func (b *activityBatches) release() {
	b.mu.Lock()
	b.held--
	b.mu.Unlock()
}

// commit records results as they come, each transaction taking every result
// waiting when it starts: under load, many.
func (b *activityBatches) commit() {
	defer close(b.committed)
	for c := range b.completions {
		batch := []completion{c}
	gather:
		for len(batch) < maxCompletionBatch {
			select {
			case c, ok := <-b.completions:
				if !ok {
					break gather
				}
				batch = append(batch, c)
			default:
				break gather
			}
		}
		errs := b.record(batch)
		for i, c := range batch {
			c.done <- errs[i]
		}
	}
}

// record writes a batch of results: each item's task is deleted, and, if it
// was still this process's, its result added to the instance's new events.
func (b *activityBatches) record(batch []completion) []error {
	errs := make([]error, len(batch))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
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
	del, err := tx.PrepareContext(ctx, "DELETE FROM NewTasks WHERE [SequenceNumber] = ? AND [LockedBy] = ?")
	if err != nil {
		return fail(err)
	}
	ins, err := tx.PrepareContext(ctx, "INSERT INTO NewEvents ([InstanceID], [EventPayload]) VALUES (?, ?)")
	if err != nil {
		return fail(err)
	}
	for i, c := range batch {
		res, err := del.ExecContext(ctx, c.item.SequenceNumber, c.item.LockedBy)
		if err != nil {
			return fail(fmt.Errorf("recording activity results: %w", err))
		}
		if n, err := res.RowsAffected(); err != nil {
			return fail(err)
		} else if n == 0 {
			errs[i] = backend.ErrWorkItemLockLost // another process has it now
			continue
		}
		payload, err := backend.MarshalHistoryEvent(c.item.Result)
		if err != nil {
			errs[i] = err
			continue
		}
		if _, err := ins.ExecContext(ctx, string(c.item.InstanceID), payload); err != nil {
			return fail(fmt.Errorf("recording activity results: %w", err))
		}
	}
	if err := tx.Commit(); err != nil {
		return fail(fmt.Errorf("recording activity results: %w", err))
	}
	return errs
}

// close hands back the items taken but never started, and closes the
// connection. The worker must have stopped: nothing completes after this.
func (b *activityBatches) close(ctx context.Context) error {
	close(b.completions)
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
	return errors.Join(append(errs, b.db.Close())...)
}
