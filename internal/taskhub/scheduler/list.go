package scheduler

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"fanoutfanin/internal/taskhub"
)

// listFor bounds how long ListInstances on the gRPC backend goes on
// fetching pages that hold only instances it leaves out.
const listFor = 3 * time.Second

// ListInstances calls QueryInstances, in the scheduler's order. The
// scheduler cannot leave out orchestrations by name, so a page of ours may
// take several of its pages; each is taken whole, so that its continuation
// token stays right, and no larger than what our page still has room for.
func (g grpcClient) ListInstances(ctx context.Context, q taskhub.Query) (taskhub.Page, error) {
	ctx, cancel := context.WithTimeout(ctx, clientCallTimeout)
	defer cancel()
	var page taskhub.Page
	token, size, deadline := q.ContinuationToken, 0, time.Now().Add(listFor)
	for {
		want := q.PageSize - len(page.Instances)
		states, next, err := g.queryInstances(ctx, q, want, token)
		if err != nil {
			return taskhub.Page{}, err
		}
		for _, md := range states {
			if !slices.Contains(q.ExcludeNames, md.Name) {
				page.Instances = append(page.Instances, md)
				size += taskhub.PayloadBytes(md)
			}
		}
		token = next
		if token == "" || len(page.Instances) == q.PageSize || size > taskhub.PageBytes || time.Now().After(deadline) {
			page.ContinuationToken = token
			return page, nil
		}
	}
}

// queryInstances asks for at most n instances, and no more than one
// message can hold.
func (g grpcClient) queryInstances(ctx context.Context, q taskhub.Query, n int, token string) ([]*api.OrchestrationMetadata, string, error) {
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
			return nil, "", fmt.Errorf("%w: the scheduler at %s does not implement QueryInstances", taskhub.ErrListUnsupported, g.endpoint)
		case code == codes.InvalidArgument && token != "":
			return nil, "", fmt.Errorf("%w (%s)", taskhub.ErrBadContinuationToken, msg)
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
