package scheduler

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"fanoutfanin/internal/config"
)

// tokens hands out token-1, token-2, … each valid for life, and records the
// scopes it was asked for.
type tokens struct {
	mu     sync.Mutex
	now    func() time.Time
	life   time.Duration
	issued int
	scopes []string
	err    error
}

func (c *tokens) GetToken(_ context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.scopes = append(c.scopes, opts.Scopes...)
	if c.err != nil {
		return azcore.AccessToken{}, c.err
	}
	c.issued++
	return azcore.AccessToken{Token: "token-" + string(rune('0'+c.issued)), ExpiresOn: c.now().Add(c.life)}, nil
}

func TestBearerKeepsATokenUntilFiveMinutesBeforeItExpires(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	cred := &tokens{now: clock, life: time.Hour}
	b := newBearer(cred)
	b.now = clock

	header := func() string {
		t.Helper()
		md, err := b.GetRequestMetadata(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return md["authorization"]
	}
	if got, want := header(), "Bearer token-1"; got != want {
		t.Fatalf("first call: got %q, want %q", got, want)
	}
	now = now.Add(54 * time.Minute) // 6 minutes left
	if got, want := header(), "Bearer token-1"; got != want {
		t.Errorf("with 6 minutes left: got %q, want the cached %q", got, want)
	}
	now = now.Add(2 * time.Minute) // 4 minutes left
	if got, want := header(), "Bearer token-2"; got != want {
		t.Errorf("with 4 minutes left: got %q, want a new token %q", got, want)
	}
	if got, want := strings.Join(cred.scopes, " "), config.TokenScope+" "+config.TokenScope; got != want {
		t.Errorf("scopes asked for: got %q, want %q", got, want)
	}
	if !b.RequireTransportSecurity() {
		t.Error("a bearer token must never travel in clear")
	}
}

// A credential that fails makes the call fail as Unavailable, which the
// worker retries, rather than as something final.
func TestBearerFailureIsRetriable(t *testing.T) {
	b := newBearer(&tokens{now: time.Now, err: errors.New("no identity endpoint")})
	_, err := b.GetRequestMetadata(context.Background())
	if got, want := status.Code(err), codes.Unavailable; got != want {
		t.Errorf("got %v (%v), want %v", got, err, want)
	}
}

func TestWorkerIDNamesHostProcessAndInstance(t *testing.T) {
	a, b := newWorkerID(), newWorkerID()
	parts := strings.Split(a, ",")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || len(parts[2]) != 32 {
		t.Errorf("worker id %q: want host,pid,32-hex-digit id", a)
	}
	if a == b {
		t.Errorf("two workers got the same id %q", a)
	}
}

// slowFailing fails every token request after a delay, counting them.
type slowFailing struct {
	mu    sync.Mutex
	calls int
}

func (c *slowFailing) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	time.Sleep(time.Second) // long enough for every caller to be waiting
	return azcore.AccessToken{}, errors.New("identity endpoint unreachable")
}

// Calls that need a token while one is being fetched wait for that fetch
// and share its outcome, instead of fetching again one after another.
func TestBearerCallsShareOneFetch(t *testing.T) {
	cred := &slowFailing{}
	b := newBearer(cred)
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.GetRequestMetadata(context.Background())
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil || !strings.Contains(err.Error(), "identity endpoint unreachable") {
			t.Errorf("got %v, want the shared fetch's failure", err)
		}
	}
	if cred.calls != 1 {
		t.Errorf("token requests for 5 waiting calls: %d, want 1", cred.calls)
	}
}

// A credential may hand back a token that is already due for replacement
// (MSAL returns a cached one when a refresh fails): it is sent while it is
// valid, never an empty bearer.
func TestBearerSendsANewTokenEvenIfDueForReplacement(t *testing.T) {
	b := newBearer(&tokens{now: time.Now, life: 4 * time.Minute})
	for _, want := range []string{"Bearer token-1", "Bearer token-2"} {
		md, err := b.GetRequestMetadata(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got := md["authorization"]; got != want {
			t.Errorf("got %q, want %q (each call fetches again, as the token is within 5 minutes of expiring)", got, want)
		}
	}
}
