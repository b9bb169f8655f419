package embedded

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/backend/sqlite"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/logging"
)

// storeOnFile opens a hub file's schema through the SQLite backend, and a
// hubStore on it whose locks last lockFor; no worker runs.
func storeOnFile(t *testing.T, file string, lockFor time.Duration) (*hubStore, backend.Backend) {
	t.Helper()
	ctx := context.Background()
	be := sqlite.NewSqliteBackend(sqlite.NewSqliteOptions(embeddedDSN(file)), logging.DurableTask{Log: zerolog.Nop()})
	if err := createTaskHub(ctx, be); err != nil {
		t.Fatal(err)
	}
	s, err := openHubStore(embeddedDSN(file), lockFor, 10, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.close(ctx) })
	return s, be
}

// startInstance creates instance id, and returns its ExecutionStarted
// event, which the tests use as any payload.
func startInstance(t *testing.T, s *hubStore, be backend.Backend, id string) *backend.HistoryEvent {
	t.Helper()
	if _, err := backend.NewTaskHubClient(be).ScheduleNewOrchestration(context.Background(), "orchestrator", api.WithInstanceID(api.InstanceID(id))); err != nil {
		t.Fatal(err)
	}
	var payload []byte
	if err := s.db.QueryRow("SELECT EventPayload FROM NewEvents WHERE InstanceID = ?", id).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	e, err := backend.UnmarshalHistoryEvent(payload)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func addTask(t *testing.T, s *hubStore, id string, e *backend.HistoryEvent) int64 {
	t.Helper()
	payload, err := backend.MarshalHistoryEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.db.Exec("INSERT INTO NewTasks (InstanceID, EventPayload) VALUES (?, ?)", id, payload)
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := res.LastInsertId()
	return seq
}

func count(t *testing.T, s *hubStore, query string, args ...any) int {
	t.Helper()
	var n int
	if err := s.db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The task row of a purged instance's running activity is deleted, and the
// next task takes its sequence number. The purged instance's late result
// is dropped: it neither deletes the new task nor leaves a row; the new
// task's own result is recorded.
func TestLateResultOfAPurgedInstanceTakesNoOtherTasksPlace(t *testing.T) {
	ctx := context.Background()
	s, be := storeOnFile(t, filepath.Join(t.TempDir(), "hub.sqlite"), time.Minute)
	e := startInstance(t, s, be, "a")
	startInstance(t, s, be, "b")

	seq := addTask(t, s, "a", e)
	stale, err := s.next(ctx)
	if err != nil || stale.InstanceID != "a" {
		t.Fatalf("taking a's task: %v %v", stale, err)
	}
	if _, err := s.db.Exec("UPDATE Instances SET RuntimeStatus = 'TERMINATED' WHERE InstanceID = 'a'"); err != nil {
		t.Fatal(err)
	}
	if err := be.PurgeOrchestrationState(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := addTask(t, s, "b", e); got != seq {
		t.Fatalf("b's task has sequence number %d, not the purged task's %d: the test's premise no longer holds", got, seq)
	}
	fresh, err := s.next(ctx)
	if err != nil || fresh.InstanceID != "b" || fresh.SequenceNumber != seq {
		t.Fatalf("taking b's task: %v %v", fresh, err)
	}

	stale.Result = e
	if err := s.complete(stale); err != nil {
		t.Errorf("completing the purged instance's task: %v, want it dropped", err)
	}
	if n := count(t, s, "SELECT COUNT(*) FROM NewTasks WHERE InstanceID = 'b' AND LockedBy = ?", fresh.LockedBy); n != 1 {
		t.Errorf("b's task, still locked to its worker: %d rows, want 1", n)
	}
	if n := count(t, s, "SELECT COUNT(*) FROM NewEvents WHERE InstanceID = 'a'"); n != 0 {
		t.Errorf("the purged instance has %d new events, want none", n)
	}
	fresh.Result = e
	if err := s.complete(fresh); err != nil {
		t.Fatalf("completing b's task: %v", err)
	}
	if n := count(t, s, "SELECT COUNT(*) FROM NewTasks"); n != 0 {
		t.Errorf("%d tasks left, want none", n)
	}
	if n := count(t, s, "SELECT COUNT(*) FROM NewEvents WHERE InstanceID = 'b'"); n != 2 {
		t.Errorf("b's new events: %d, want its start and its task's result", n)
	}
}

// An orchestration work item whose lock expired, and which was taken again,
// can no longer be handed back: its hand-back fails, and the new holder
// keeps the instance and its events locked.
func TestStaleOrchestrationWorkItemCannotUnlockItsSuccessor(t *testing.T) {
	ctx := context.Background()
	s, be := storeOnFile(t, filepath.Join(t.TempDir(), "hub.sqlite"), time.Minute)
	startInstance(t, s, be, "o")
	stale, err := s.takeOrchestration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec("UPDATE Instances SET LockExpiration = ? WHERE InstanceID = 'o'", time.Now().UTC().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	fresh, err := s.takeOrchestration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.LockedBy == stale.LockedBy || len(fresh.NewEvents) != 1 {
		t.Fatalf("taken again: lock %q (was %q), %d events", fresh.LockedBy, stale.LockedBy, len(fresh.NewEvents))
	}
	if err := be.AbandonOrchestrationWorkItem(ctx, stale); !errors.Is(err, backend.ErrWorkItemLockLost) {
		t.Errorf("handing back the stale work item: %v, want the lock lost", err)
	}
	if n := count(t, s, "SELECT COUNT(*) FROM Instances WHERE InstanceID = 'o' AND LockedBy = ? AND LockExpiration IS NOT NULL", fresh.LockedBy); n != 1 {
		t.Error("the instance is no longer locked to the work item that took it last")
	}
	if n := count(t, s, "SELECT COUNT(*) FROM NewEvents WHERE InstanceID = 'o' AND LockedBy = ?", fresh.LockedBy); n != 1 {
		t.Error("the instance's event is no longer locked to the work item that took it last")
	}
}

// Locks held past their timeout stay held while the store renews them: a
// second process on the file finds nothing to take. Once released, the
// work is there for it.
func TestHeldLocksAreRenewed(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "hub.sqlite")
	s, be := storeOnFile(t, file, time.Second)
	other, _ := storeOnFile(t, file, time.Second)
	e := startInstance(t, s, be, "r")
	addTask(t, s, "r", e)
	wi, err := s.takeOrchestration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := s.next(ctx)
	if err != nil {
		t.Fatal(err)
	}

	time.Sleep(2500 * time.Millisecond) // two and a half lock timeouts
	if _, err := other.takeOrchestration(ctx); !errors.Is(err, backend.ErrNoWorkItems) {
		t.Errorf("another process took the locked instance: %v", err)
	}
	if items, err := other.take(ctx, 10); err != nil || len(items) != 0 {
		t.Errorf("another process took %d locked tasks (%v)", len(items), err)
	}

	s.unlocked(wi)
	s.release(task)
	time.Sleep(1500 * time.Millisecond) // no longer renewed: expired
	if _, err := other.takeOrchestration(ctx); err != nil {
		t.Errorf("the instance is not taken once its lock is no longer renewed: %v", err)
	}
	if items, err := other.take(ctx, 10); err != nil || len(items) != 1 {
		t.Errorf("tasks taken once their lock is no longer renewed: %d (%v), want 1", len(items), err)
	}
}
