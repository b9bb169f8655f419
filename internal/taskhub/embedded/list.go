package embedded

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"fanoutfanin/internal/taskhub"
)

// instanceLister reads the embedded hub's instance table through its own
// read-only connection: in the write-ahead log's mode a reader neither
// waits for the workers' writes nor holds them up.
type instanceLister struct{ db *sql.DB }

func openInstanceLister(file string) (*instanceLister, error) {
	db, err := sql.Open("sqlite", "file:"+file+"?_pragma=busy_timeout(5000)&_pragma=query_only(1)")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(2)
	return &instanceLister{db: db}, nil
}

// cursor is where a page of the embedded hub's listing ended: the
// newest-first order is by creation time, then instance id, and the next
// page starts after this one. Instances created meanwhile sort before it,
// so they never shift a later page.
type cursor struct {
	Created time.Time `json:"c"`
	ID      string    `json:"i"`
}

func (l *instanceLister) list(ctx context.Context, q taskhub.Query) (taskhub.Page, error) {
	var where []string
	var args []any
	if len(q.Statuses) > 0 {
		marks := make([]string, len(q.Statuses))
		for i, s := range q.Statuses {
			marks[i] = "?"
			// The backend stores ORCHESTRATION_STATUS_RUNNING as RUNNING.
			args = append(args, strings.TrimPrefix(s.String(), "ORCHESTRATION_STATUS_"))
		}
		where = append(where, "[RuntimeStatus] IN ("+strings.Join(marks, ",")+")")
	}
	// Times are stored as the driver writes a UTC time.Time, text that
	// sorts as the times do; arguments are written the same way.
	if !q.CreatedFrom.IsZero() {
		where, args = append(where, "[CreatedTime] >= ?"), append(args, q.CreatedFrom.UTC())
	}
	if !q.CreatedTo.IsZero() {
		where, args = append(where, "[CreatedTime] <= ?"), append(args, q.CreatedTo.UTC())
	}
	if q.IDPrefix != "" {
		where = append(where, "substr([InstanceID], 1, ?) = ?")
		args = append(args, utf8.RuneCountInString(q.IDPrefix), q.IDPrefix)
	}
	for _, name := range q.ExcludeNames {
		where, args = append(where, "[Name] <> ?"), append(args, name)
	}
	if q.ContinuationToken != "" {
		var c cursor
		raw, err := base64.RawURLEncoding.DecodeString(q.ContinuationToken)
		if err != nil || json.Unmarshal(raw, &c) != nil || c.Created.IsZero() || c.ID == "" {
			return taskhub.Page{}, taskhub.ErrBadContinuationToken
		}
		where = append(where, "([CreatedTime] < ? OR ([CreatedTime] = ? AND [InstanceID] > ?))")
		args = append(args, c.Created.UTC(), c.Created.UTC(), c.ID)
	}
	input := "NULL"
	if q.FetchInput {
		input = "[Input]"
	}
	query := "SELECT [InstanceID], [Name], [RuntimeStatus], [CreatedTime], [LastUpdatedTime], " + input + ", [Output], [CustomStatus], [FailureDetails] FROM Instances"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	// One row more than the page tells whether another page follows.
	query += " ORDER BY [CreatedTime] DESC, [InstanceID] LIMIT ?"
	args = append(args, q.PageSize+1)

	rows, err := l.db.QueryContext(ctx, query, args...)
	if err != nil {
		return taskhub.Page{}, fmt.Errorf("listing instances: %w", err)
	}
	defer rows.Close()
	var page taskhub.Page
	size := 0
	for rows.Next() {
		if len(page.Instances) == q.PageSize || size > taskhub.PageBytes {
			last := page.Instances[len(page.Instances)-1]
			token, _ := json.Marshal(cursor{Created: last.CreatedAt, ID: string(last.InstanceID)})
			page.ContinuationToken = base64.RawURLEncoding.EncodeToString(token)
			break
		}
		var id, name, runtimeStatus string
		var created, updated time.Time
		var in, out, custom sql.NullString
		var failure []byte
		if err := rows.Scan(&id, &name, &runtimeStatus, &created, &updated, &in, &out, &custom, &failure); err != nil {
			return taskhub.Page{}, fmt.Errorf("listing instances: %w", err)
		}
		md := &api.OrchestrationMetadata{
			InstanceID:             api.InstanceID(id),
			Name:                   name,
			RuntimeStatus:          storedStatus(runtimeStatus),
			CreatedAt:              created,
			LastUpdatedAt:          updated,
			SerializedInput:        in.String,
			SerializedOutput:       out.String,
			SerializedCustomStatus: custom.String,
		}
		if len(failure) > 0 {
			md.FailureDetails = &backend.TaskFailureDetails{}
			if err := proto.Unmarshal(failure, md.FailureDetails); err != nil {
				return taskhub.Page{}, fmt.Errorf("listing instances: the failure details of %s: %w", id, err)
			}
		}
		size += taskhub.PayloadBytes(md)
		page.Instances = append(page.Instances, md)
	}
	if err := rows.Err(); err != nil {
		return taskhub.Page{}, fmt.Errorf("listing instances: %w", err)
	}
	return page, nil
}

// storedStatus reads a status as the embedded hub stores it: RUNNING for
// ORCHESTRATION_STATUS_RUNNING.
func storedStatus(s string) api.OrchestrationStatus {
	v := api.RUNTIME_STATUS_RUNNING.Descriptor().Values().ByName(protoreflect.Name("ORCHESTRATION_STATUS_" + s))
	if v == nil {
		return api.OrchestrationStatus(-1)
	}
	return api.OrchestrationStatus(v.Number())
}

func (l *instanceLister) close() error { return l.db.Close() }

func (e embeddedClient) ListInstances(ctx context.Context, q taskhub.Query) (taskhub.Page, error) {
	return e.lister.list(ctx, q)
}
