package scheduler

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"fanoutfanin/internal/config"
)

const (
	// maxReceiveBytes raises gRPC's 4 MiB default: a work item carries the
	// orchestration's history. (Microsoft's Go SDK uses the same.)
	maxReceiveBytes = 64 << 20

	// Fixed HTTP/2 flow-control windows, for each stream and for the
	// connection. Without them gRPC starts at 64 KiB and probes for larger
	// ones, sending a ping (and a window update) after every message that
	// arrives on an idle connection: with work items arriving one at a
	// time, that is an extra write, an extra read and extra wake-ups for
	// every item. 4 MiB lets a step's largest message arrive in one go
	// (128 MB/s at a 30 ms round trip).
	streamWindowBytes = 4 << 20
	connWindowBytes   = 16 << 20

	// tokenRefreshMargin: a token is replaced this long before it expires,
	// so no call carries one that expires in flight.
	tokenRefreshMargin = 5 * time.Minute

	// tokenTimeout bounds getting a token, which azidentity retries for a
	// while when the identity endpoint is down, so that a call fails saying
	// there is no token rather than that the scheduler did not answer.
	tokenTimeout = 10 * time.Second
)

// Roles in the x-user-agent header, as the official SDKs send them.
const (
	roleWorker = "DurableTaskWorker"
	roleClient = "DurableTaskClient"
)

// dial opens a connection to the scheduler. Every call on it carries the
// headers in md (key, value, …) and, with a token, a bearer token. The
// connection is made lazily and remade on failure, so dial does not fail
// when the scheduler is down.
func dial(s *config.Scheduler, token credentials.PerRPCCredentials, md ...string) (*grpc.ClientConn, error) {
	transport := insecure.NewCredentials()
	if s.TLS {
		transport = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, ServerName: s.Host})
	}
	buffers := &unclearedPool{}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReceiveBytes), grpc.ForceCodecV2(protoCodec{buffers})),
		grpc.WithInitialWindowSize(streamWindowBytes),
		grpc.WithInitialConnWindowSize(connWindowBytes),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, md...), method, req, reply, cc, opts...)
		}),
		grpc.WithChainUnaryInterceptor(withCreateTraceContext),
		experimental.WithBufferPool(buffers),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, md...), desc, cc, method, opts...)
		}),
		// gRPC's own reconnect backoff grows to 2 minutes; a scheduler that
		// comes back should be used within seconds.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 10 * time.Second},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if token != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(token))
	}
	// passthrough: the address as it is, as grpc.Dial took it.
	return grpc.NewClient("passthrough:///"+s.Address, opts...)
}

// unclearedPool holds what a connection reads and writes. gRPC's own pool
// clears each buffer it hands out, and hands out a megabyte for anything
// over 32 kB: for the histories that orchestrator work items carry,
// clearing took a tenth of the worker's CPU. These are not cleared, as
// nothing reads a buffer before it is filled (so gRPC 1.83 uses them: its
// framer reads whole frames into them, and the codec decodes what it
// copied in; check again when upgrading gRPC); and they come in every power
// of two up to the largest message the worker takes.
type unclearedPool struct {
	tiers [bits.UintSize]sync.Pool
}

func (p *unclearedPool) Get(length int) *[]byte {
	tier := bits.Len(uint(max(length, 1) - 1))
	if b, ok := p.tiers[tier].Get().(*[]byte); ok {
		*b = (*b)[:length]
		return b
	}
	b := make([]byte, length, 1<<tier)
	return &b
}

func (p *unclearedPool) Put(b *[]byte) {
	c := cap(*b)
	if c == 0 || c&(c-1) != 0 || c > maxReceiveBytes {
		return // not one of ours
	}
	p.tiers[bits.Len(uint(c))-1].Put(b)
}

// rawMessage is a message received as it came, to be read apart: a work
// item, whose history is split without being decoded (splitWorkItem).
type rawMessage []byte

// protoCodec is gRPC's proto codec with the connection's buffers: gRPC's
// own takes the buffer a message is decoded from, and encoded into, from
// its default pool.
type protoCodec struct{ buffers mem.BufferPool }

func (protoCodec) Name() string { return "proto" }

func (c protoCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("cannot encode a %T", v)
	}
	size := proto.Size(m)
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := proto.Marshal(m)
		return mem.BufferSlice{mem.SliceBuffer(b)}, err
	}
	b := c.buffers.Get(size)
	if _, err := (proto.MarshalOptions{UseCachedSize: true}).MarshalAppend((*b)[:0], m); err != nil {
		c.buffers.Put(b)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(b, c.buffers)}, nil
}

func (c protoCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if raw, ok := v.(*rawMessage); ok {
		*raw = data.Materialize()
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("cannot decode into a %T", v)
	}
	b := data.MaterializeToBuffer(c.buffers)
	defer b.Free()
	return proto.Unmarshal(b.ReadOnlyData(), m)
}

// userAgent is sent as x-user-agent: gRPC reserves user-agent for itself.
func userAgent(role string) string {
	version := "dev"
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		version = info.Main.Version
	}
	return fmt.Sprintf("fanoutfanin/%s (%s)", version, role)
}

// newWorkerID names this worker process to the scheduler as the official
// SDKs do: host, process id and a random id.
func newWorkerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return strings.Join([]string{host, strconv.Itoa(os.Getpid()), strings.ReplaceAll(uuid.NewString(), "-", "")}, ",")
}

// newCredential returns the Azure credential the connection string asks
// for, or nil for Authentication=None. Neither it nor its tokens' errors
// name the connection string's identity values (see identityHider).
func newCredential(s *config.Scheduler) (azcore.TokenCredential, error) {
	hide := identityHider(s)
	cred, err := azureCredential(s)
	if err != nil || cred == nil {
		return nil, hide(err)
	}
	return hidingCredential{cred: cred, hide: hide}, nil
}

// hidingCredential is an Azure credential whose errors go through hide.
type hidingCredential struct {
	cred azcore.TokenCredential
	hide func(error) error
}

func (h hidingCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	token, err := h.cred.GetToken(ctx, opts)
	return token, h.hide(err)
}

// identityHider returns a function that replaces the connection string's
// ClientID, TenantId and TokenFilePath in an error's text with the key's
// name: Azure Identity's errors show the token file's path ("open ...") and
// the authority's URL (which holds the tenant), and identity services echo
// the client id. The error is logged; what went wrong still shows. Values
// under 4 characters are left alone: no real one is that short, and
// replacing them would garble every message.
func identityHider(s *config.Scheduler) func(error) error {
	names := map[string]string{}
	var values []string
	for key, v := range map[string]string{"ClientID": s.ClientID, "TenantId": s.TenantID, "TokenFilePath": s.TokenFilePath} {
		if len(v) >= 4 {
			names[strings.ToLower(v)] = "[" + key + "]"
			values = append(values, regexp.QuoteMeta(v))
		}
	}
	if len(values) == 0 {
		return func(err error) error { return err }
	}
	// Longest first, so that a value holding another is replaced whole.
	slices.SortFunc(values, func(a, b string) int { return len(b) - len(a) })
	pattern := regexp.MustCompile("(?i)" + strings.Join(values, "|"))
	return func(err error) error {
		if err == nil {
			return nil
		}
		return errors.New(pattern.ReplaceAllStringFunc(err.Error(), func(v string) string {
			if name, ok := names[strings.ToLower(v)]; ok {
				return name
			}
			return "[hidden]" // matched under a case folding ToLower does not make
		}))
	}
}

// azureCredential builds the credential newCredential returns.
func azureCredential(s *config.Scheduler) (azcore.TokenCredential, error) {
	switch s.Auth {
	case config.AuthNone:
		return nil, nil
	case config.AuthDefaultAzure:
		return azidentity.NewDefaultAzureCredential(nil)
	case config.AuthManagedIdentity:
		var opts *azidentity.ManagedIdentityCredentialOptions
		if s.ClientID != "" {
			opts = &azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(s.ClientID)}
		}
		return azidentity.NewManagedIdentityCredential(opts)
	case config.AuthWorkloadIdentity:
		return azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientID: s.ClientID, TenantID: s.TenantID, TokenFilePath: s.TokenFilePath,
		})
	case config.AuthEnvironment:
		return azidentity.NewEnvironmentCredential(nil)
	case config.AuthAzureCLI:
		return azidentity.NewAzureCLICredential(nil)
	}
	return nil, fmt.Errorf("authentication %q is not supported", s.Auth)
}

// tokenFailure starts the message of a call that failed for want of a token.
const tokenFailure = "getting a token for the scheduler"

// bearer puts a scheduler token on every call. It keeps the token until it
// comes within tokenRefreshMargin of expiring. One fetch runs at a time, and
// every call waiting for a token shares its outcome, so an identity endpoint
// that is down costs each call one wait, not one per caller in turn.
type bearer struct {
	cred azcore.TokenCredential
	now  func() time.Time

	mu       sync.Mutex
	token    azcore.AccessToken
	err      error         // the last fetch's failure
	fetching chan struct{} // closed when the fetch in flight ends; nil when none is
}

func newBearer(cred azcore.TokenCredential) *bearer {
	return &bearer{cred: cred, now: time.Now}
}

func (b *bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token, err := b.get(ctx)
	if err != nil {
		// Unavailable: the caller retries, as it does when the scheduler is
		// down, and a credential that starts working is picked up.
		return nil, status.Errorf(codes.Unavailable, "%s: %v", tokenFailure, err)
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity: a token never travels in clear.
func (b *bearer) RequireTransportSecurity() bool { return true }

func (b *bearer) get(ctx context.Context) (string, error) {
	b.mu.Lock()
	if b.fresh() {
		defer b.mu.Unlock()
		return b.token.Token, nil
	}
	if b.fetching == nil {
		b.fetching = make(chan struct{})
		go b.fetch(b.fetching)
	}
	fetched := b.fetching
	b.mu.Unlock()

	select {
	case <-fetched:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return "", b.err
	}
	// Just fetched: usable until it expires, even if the credential gave
	// one that is already due for replacement.
	if b.token.Token == "" || !b.now().Before(b.token.ExpiresOn) {
		return "", errors.New("the credential gave an expired token")
	}
	return b.token.Token, nil
}

// fetch gets a new token, under a context of its own: one caller giving up
// does not fail the others waiting.
func (b *bearer) fetch(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), tokenTimeout)
	defer cancel()
	token, err := b.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{config.TokenScope}})
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		b.token = token
	}
	b.err = err
	b.fetching = nil
	close(done)
}

// fresh reports whether the token held may still be sent. b.mu is held.
func (b *bearer) fresh() bool {
	now := b.now()
	return b.token.Token != "" && now.Add(tokenRefreshMargin).Before(b.token.ExpiresOn) &&
		(b.token.RefreshOn.IsZero() || now.Before(b.token.RefreshOn))
}
