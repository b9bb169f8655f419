// Package hubfile reads an embedded task hub's SQLite file directly, to
// check from outside what the hub recorded (the tests use it after killing
// or stopping the handler).
package hubfile

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

func events(file, query, id string) ([]*backend.HistoryEvent, error) {
	db, err := sql.Open("sqlite", "file:"+file)
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
