package taskhub

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Query selects instances to list, newest first.
type Query struct {
	Statuses     []api.OrchestrationStatus // any of these; none: any status
	CreatedFrom  time.Time                 // created at or after; zero: no bound
	CreatedTo    time.Time                 // created at or before; zero: no bound
	IDPrefix     string                    // instance ids starting with this
	ExcludeNames []string                  // orchestrations of these names are left out
	PageSize     int
	FetchInput   bool
	// ContinuationToken is the previous page's; "" for the first page.
	ContinuationToken string
}

// Page is one page of a listing.
type Page struct {
	Instances []*api.OrchestrationMetadata
	// ContinuationToken asks for the next page; "" when this is the last.
	ContinuationToken string
}

// ErrListUnsupported is returned by ListInstances when the backend cannot
// list instances.
var ErrListUnsupported = errors.New("this task hub backend cannot list instances")

// ErrBadContinuationToken is returned by ListInstances for a continuation
// token it did not issue.
var ErrBadContinuationToken = errors.New("the continuation token is not one this task hub issued")

// pageBytes bounds the payloads of one page, which can be large: a page
// ends early, with a continuation token, once it holds this much.
const pageBytes = 8 << 20

// payloadBytes is what an instance's payloads add to a page.
func payloadBytes(md *api.OrchestrationMetadata) int {
	return len(md.SerializedInput) + len(md.SerializedOutput) + len(md.SerializedCustomStatus)
}

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

func (l *instanceLister) list(ctx context.Context, q Query) (Page, error) {
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
			return Page{}, ErrBadContinuationToken
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
		return Page{}, fmt.Errorf("listing instances: %w", err)
	}
	defer rows.Close()
	var page Page
	size := 0
	for rows.Next() {
		if len(page.Instances) == q.PageSize || size > pageBytes {
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
			return Page{}, fmt.Errorf("listing instances: %w", err)
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
				return Page{}, fmt.Errorf("listing instances: the failure details of %s: %w", id, err)
			}
		}
		size += payloadBytes(md)
		page.Instances = append(page.Instances, md)
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("listing instances: %w", err)
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

func (e embeddedClient) ListInstances(ctx context.Context, q Query) (Page, error) {
	return e.lister.list(ctx, q)
}

// listFor bounds how long ListInstances on the gRPC backend goes on
// fetching pages that hold only instances it leaves out.
const listFor = 3 * time.Second

// ListInstances calls QueryInstances, in the scheduler's order. The
// scheduler cannot leave out orchestrations by name, so a page of ours may
// take several of its pages; each is taken whole, so that its continuation
// token stays right, and no larger than what our page still has room for.
func (g grpcClient) ListInstances(ctx context.Context, q Query) (Page, error) {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	var page Page
	token, size, deadline := q.ContinuationToken, 0, time.Now().Add(listFor)
	for {
		want := q.PageSize - len(page.Instances)
		states, next, err := g.queryInstances(ctx, q, want, token)
		if err != nil {
			return Page{}, err
		}
		for _, md := range states {
			if !slices.Contains(q.ExcludeNames, md.Name) {
				page.Instances = append(page.Instances, md)
				size += payloadBytes(md)
			}
		}
		token = next
		if token == "" || len(page.Instances) == q.PageSize || size > pageBytes || time.Now().After(deadline) {
			page.ContinuationToken = token
			return page, nil
		}
	}
}

// queryInstances asks for at most n instances, and no more than one
// message can hold.
func (g grpcClient) queryInstances(ctx context.Context, q Query, n int, token string) ([]*api.OrchestrationMetadata, string, error) {
	req := newMessage("QueryInstancesRequest")
	query := fieldsOf(req).mutable("query")
	statuses := query.m.Mutable(query.fd("runtimeStatus")).List()
	for _, s := range q.Statuses {
		statuses.Append(protoreflect.ValueOfEnum(protoreflect.EnumNumber(s)))
	}
	if !q.CreatedFrom.IsZero() {
		query.set("createdTimeFrom", timestamppb.New(q.CreatedFrom))
	}
	if !q.CreatedTo.IsZero() {
		query.set("createdTimeTo", timestamppb.New(q.CreatedTo))
	}
	if q.IDPrefix != "" {
		query.set("instanceIdPrefix", wrapperspb.String(q.IDPrefix))
	}
	if token != "" {
		query.set("continuationToken", wrapperspb.String(token))
	}
	// Outputs hold the summaries; inputs come along with them.
	query.set("fetchInputsAndOutputs", true)
	query.set("maxInstanceCount", int32(min(n, g.queryBatch)))
	res := newMessage("QueryInstancesResponse")
	if err := g.conn.Invoke(ctx, method("QueryInstances"), req, res); err != nil {
		// The upstream v0.6.0 sidecar answers with a plain error.
		code, msg := status.Code(err), status.Convert(err).Message()
		switch {
		case code == codes.Unimplemented || code == codes.Unknown && msg == "unimplemented":
			return nil, "", fmt.Errorf("%w: the scheduler at %s does not implement QueryInstances", ErrListUnsupported, g.endpoint)
		case code == codes.InvalidArgument && token != "":
			return nil, "", fmt.Errorf("%w (%s)", ErrBadContinuationToken, msg)
		}
		return nil, "", g.unavailable(ctx, err)
	}
	f := fieldsOf(res)
	list := f.m.Get(f.fd("orchestrationState")).List()
	states := make([]*api.OrchestrationMetadata, list.Len())
	for i := range states {
		states[i] = orchestrationMetadata(fields{list.Get(i).Message()})
	}
	return states, stringValue(f, "continuationToken"), nil
}

// queryBatch is how many instances one QueryInstances asks for, so that
// the answer fits the gRPC message we take even if each instance's input,
// output and custom status are as large as a payload may be.
func queryBatch(maxPayloadBytes int) int {
	return max(1, maxReceiveBytes/(3*maxPayloadBytes+64<<10))
}
