package hubtest

// Reading an embedded hub's SQLite file directly, to check from outside what
// the hub recorded (after killing or stopping the handler, say).

import (
	"database/sql"
	"fmt"

	"github.com/microsoft/durabletask-go/backend"
	_ "modernc.org/sqlite"
)

// History returns the events recorded in instance id's history, in order.
func History(file, id string) ([]*backend.HistoryEvent, error) {
	return events(file, "SELECT EventPayload FROM History WHERE InstanceID = ? ORDER BY SequenceNumber", id)
}

// Pending returns the events waiting for instance id's next orchestrator step.
func Pending(file, id string) ([]*backend.HistoryEvent, error) {
	return events(file, "SELECT EventPayload FROM NewEvents WHERE InstanceID = ? ORDER BY SequenceNumber", id)
}

// Instances counts the orchestration instances in the hub.
func Instances(file string) (int, error) {
	return count(file, "SELECT COUNT(*) FROM Instances")
}

// Locked counts the activity work items and the instances that some worker
// holds locked.
func Locked(file string) (workItems, instances int, err error) {
	if workItems, err = count(file, "SELECT COUNT(*) FROM NewTasks WHERE LockExpiration IS NOT NULL"); err != nil {
		return 0, 0, err
	}
	instances, err = count(file, "SELECT COUNT(*) FROM Instances WHERE LockExpiration IS NOT NULL")
	return workItems, instances, err
}

func count(file, query string, args ...any) (int, error) {
	db, err := sql.Open("sqlite", dsn(file))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("reading %s: %w", file, err)
	}
	return n, nil
}

func events(file, query, id string) ([]*backend.HistoryEvent, error) {
	db, err := sql.Open("sqlite", dsn(file))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.Query(query, id)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	defer rows.Close()
	var events []*backend.HistoryEvent
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			return nil, err
		}
		e, err := backend.UnmarshalHistoryEvent(payload)
		if err != nil {
			return nil, err
		}
		events = append(events, e)
	}
	return events, rows.Err()
}

// Rows counts, table by table, the rows an instance and its partitions
// (ids id:p0, id:p1, …) have in the hub: what a purge must leave at zero.
func Rows(file, id string) (map[string]int, error) {
	rows := map[string]int{}
	for _, table := range []string{"Instances", "History", "NewEvents", "NewTasks"} {
		n, err := count(file, "SELECT COUNT(*) FROM "+table+" WHERE InstanceID = ? OR substr(InstanceID, 1, ?) = ?", id, len(id)+2, id+":p")
		if err != nil {
			return nil, err
		}
		rows[table] = n
	}
	return rows, nil
}

// dsn opens file read-only and waits for a live handler's or sidecar's write
// to finish instead of failing with SQLITE_BUSY.
func dsn(file string) string {
	return "file:" + file + "?_pragma=busy_timeout(10000)&_pragma=query_only(1)"
}
