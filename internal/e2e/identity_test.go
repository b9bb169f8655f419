package e2e

// End-to-end tests of the scheduler's authentication: the real handler
// binary takes its tokens from local stand-ins for the Azure identity
// services — an App Service managed identity endpoint and a Microsoft Entra
// authority for workload identity — and presents them over TLS to the strict
// DTS conformance server.

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"fanoutfanin/internal/dtstest"
)

// The scheduler's token audience, as a v1 resource (managed identity) and as
// a v2 scope (Entra).
const (
	dtsResource = "https://durabletask.io"
	dtsScope    = dtsResource + "/.default"
)

// ---------------------------------------------------------------------------
// Secrets

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func randomUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// fakeJWT is an opaque string shaped like the JWTs Entra issues.
func fakeJWT(claims map[string]any) string {
	enc := base64.RawURLEncoding
	head, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": randomHex(8)})
	claims["jti"] = randomHex(12)
	body, _ := json.Marshal(claims)
	sig := make([]byte, 64)
	rand.Read(sig)
	return enc.EncodeToString(head) + "." + enc.EncodeToString(body) + "." + enc.EncodeToString(sig)
}

// secretParts is what of a secret must not show anywhere: the whole of it,
// and its first and last 16 characters — of a JWT's signature, which is
// what no other string shares — so that a token cut short is caught too.
func secretParts(name, value string) map[string]string {
	parts := map[string]string{name: value}
	core := value
	if i := strings.LastIndex(value, "."); i > 0 {
		core = value[i+1:]
	}
	if len(core) >= 24 {
		parts[name+" (start)"] = core[:16]
		parts[name+" (end)"] = core[len(core)-16:]
	}
	return parts
}

// addSecret adds the parts of secret value, named name, to secrets.
func addSecret(secrets map[string]string, name, value string) {
	for k, v := range secretParts(name, value) {
		secrets[k] = v
	}
}

// checkNoSecrets fails if any line the handler wrote, on stdout or stderr,
// holds any of secrets (name → value).
func checkNoSecrets(t *testing.T, p *handlerProcess, secrets map[string]string) {
	t.Helper()
	stdout := p.stdout.String()
	if !strings.Contains(stdout, "task hub open") {
		t.Fatalf("the handler logged nothing to check: %q", stdout)
	}
	for _, out := range []struct{ name, text string }{{"stdout", stdout}, {"stderr", p.stderr.String()}} {
		sc := bufio.NewScanner(strings.NewReader(out.text))
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			for name, s := range secrets {
				if s != "" && strings.Contains(sc.Text(), s) {
					t.Errorf("handler %s line %d shows the %s", out.name, n, name)
				}
			}
		}
	}
}

// ---------------------------------------------------------------------------
// An App Service managed identity endpoint (IDENTITY_ENDPOINT and
// IDENTITY_HEADER, API version 2019-08-01), plain HTTP on loopback as in
// App Service. It answers only a well-formed request for a user-assigned
// identity's token for the scheduler.

type appServiceIdentity struct {
	endpoint string // IDENTITY_ENDPOINT
	header   string // IDENTITY_HEADER, a secret
	clientID string

	firstLifetime, lifetime time.Duration

	mu       sync.Mutex
	requests []identityRequest
	issued   []issuedToken
	refused  []string
}

type identityRequest struct {
	at     time.Time
	header string // X-IDENTITY-HEADER
	query  url.Values
}

type issuedToken struct {
	token     string
	at        time.Time
	expiresOn time.Time // as the response says it: whole seconds
}

const appServiceTokenPath = "/msi/token"

// startAppServiceIdentity serves tokens for clientID; the first lives
// firstLifetime, the others an hour.
func startAppServiceIdentity(t *testing.T, clientID string, firstLifetime time.Duration) *appServiceIdentity {
	t.Helper()
	a := &appServiceIdentity{header: randomHex(16), clientID: clientID, firstLifetime: firstLifetime, lifetime: time.Hour}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	a.endpoint = srv.URL + appServiceTokenPath
	return a
}

func (a *appServiceIdentity) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests = append(a.requests, identityRequest{at: time.Now(), header: r.Header.Get("X-IDENTITY-HEADER"), query: r.URL.Query()})
	refuse := func(code int, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		a.refused = append(a.refused, msg)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]any{"statusCode": code, "message": msg})
	}
	body, _ := io.ReadAll(r.Body)
	q := r.URL.Query()
	switch {
	case r.Method != http.MethodGet:
		refuse(http.StatusMethodNotAllowed, "method %s, want GET", r.Method)
		return
	case r.URL.Path != appServiceTokenPath:
		refuse(http.StatusNotFound, "path %q, want %q", r.URL.Path, appServiceTokenPath)
		return
	case len(body) != 0:
		refuse(http.StatusBadRequest, "a %d-byte body", len(body))
		return
	case len(r.Header.Values("X-IDENTITY-HEADER")) != 1 || r.Header.Get("X-IDENTITY-HEADER") != a.header:
		refuse(http.StatusBadRequest, "X-IDENTITY-HEADER missing or wrong")
		return
	}
	want := map[string]string{"api-version": "2019-08-01", "resource": dtsResource, "client_id": a.clientID}
	for k, v := range q {
		if wantV, ok := want[k]; !ok {
			refuse(http.StatusBadRequest, "unexpected parameter %q", k)
			return
		} else if len(v) != 1 || v[0] != wantV {
			refuse(http.StatusBadRequest, "parameter %s is %q, want %q", k, v, wantV)
			return
		}
	}
	for k := range want {
		if !q.Has(k) {
			refuse(http.StatusBadRequest, "no parameter %s", k)
			return
		}
	}

	lifetime := a.lifetime
	if len(a.issued) == 0 {
		lifetime = a.firstLifetime
	}
	now := time.Now()
	tok := issuedToken{
		token:     fakeJWT(map[string]any{"aud": dtsResource, "appid": a.clientID, "n": len(a.issued) + 1}),
		at:        now,
		expiresOn: time.Unix(now.Add(lifetime).Unix(), 0),
	}
	a.issued = append(a.issued, tok)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	json.NewEncoder(w).Encode(map[string]string{
		"access_token": tok.token,
		"expires_on":   strconv.FormatInt(tok.expiresOn.Unix(), 10),
		"resource":     dtsResource,
		"token_type":   "Bearer",
		"client_id":    a.clientID,
	})
}

// valid reports whether token was issued here and has not expired.
func (a *appServiceIdentity) valid(token string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, it := range a.issued {
		if it.token == token {
			return time.Now().Before(it.expiresOn)
		}
	}
	return false
}

func (a *appServiceIdentity) snapshot() (requests []identityRequest, issued []issuedToken, refused []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.requests), slices.Clone(a.issued), slices.Clone(a.refused)
}

// checkRequests checks every request the endpoint had asked for the
// scheduler's token as the configured identity, with the right header.
func (a *appServiceIdentity) checkRequests(t *testing.T) {
	t.Helper()
	requests, _, refused := a.snapshot()
	for _, r := range refused {
		t.Errorf("the identity endpoint refused a request: %s", r)
	}
	for i, r := range requests {
		if r.query.Get("client_id") != a.clientID || r.query.Get("resource") != dtsResource || r.header != a.header {
			t.Errorf("identity request %d: client_id ok %v, resource %q, identity header ok %v",
				i+1, r.query.Get("client_id") == a.clientID, r.query.Get("resource"), r.header == a.header)
		}
	}
}

// ---------------------------------------------------------------------------
// What the conformance server was shown.

type bearerCall struct {
	token string
	at    time.Time
	ok    bool
}

type bearerLog struct {
	mu    sync.Mutex
	calls []bearerCall
}

// gate is a dtstest Token func that records every token it is shown.
func (b *bearerLog) gate(accept func(string) bool) func(string) bool {
	return func(token string) bool {
		ok := accept(token)
		b.mu.Lock()
		b.calls = append(b.calls, bearerCall{token: token, at: time.Now(), ok: ok})
		b.mu.Unlock()
		return ok
	}
}

func (b *bearerLog) snapshot() []bearerCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

// startSecureScheduler starts the conformance server over TLS, in front of
// an upstream sidecar, taking the tokens token accepts.
func startSecureScheduler(t *testing.T, root string, tlsConfig *tls.Config, token func(string) bool) *dtstest.Server {
	t.Helper()
	upstream, _ := dtstest.StartSidecar(t, 0, filepath.Join(root, "sidecar.sqlite"))
	srv, err := dtstest.Start(dtstest.Options{Upstream: upstream, TaskHub: "default", Token: token, TLS: tlsConfig, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// identitySettings are the app settings for a run against the scheduler
// with connection string cs, trusting the test CA and nothing in the
// environment that would change how tokens are got, then extra.
func identitySettings(t *testing.T, ca *dtstest.CA, cs string, extra ...string) map[string]string {
	t.Helper()
	s := withSettings(localSettings(t),
		"DURABLE_TASK_SCHEDULER_CONNECTION_STRING", cs,
		"SSL_CERT_FILE", ca.PEMFile,
		"FANOUT_WORK_MIN_DELAY", "0", "FANOUT_WORK_MAX_DELAY", "0")
	for _, name := range []string{
		"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
		"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST",
		"AZURE_REGIONAL_AUTHORITY_NAME", "MSAL_FORCE_REGION",
		"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
	} {
		s[name] = ""
	}
	return withSettings(s, extra...)
}

// runFanOut runs a fan-out of n items through the handler to Completed.
func runFanOut(t *testing.T, p *handlerProcess, n int) {
	t.Helper()
	items, body := workItems(n)
	code, _, res := p.forward(t, "POST", "/api/fan_out_fan_in", body)
	if code != http.StatusAccepted {
		t.Fatalf("start: got %d %v, want 202", code, res)
	}
	checkSummary(t, pollStatus(t, p, res["id"].(string), "Completed"), items)
}

func checkNoViolations(t *testing.T, srv *dtstest.Server) {
	t.Helper()
	for _, v := range srv.Violations() {
		t.Errorf("protocol violation: %s", v)
	}
}

// ---------------------------------------------------------------------------

// With Authentication=ManagedIdentity the handler takes the user-assigned
// identity's token from the App Service identity endpoint, keeps it until it
// comes within five minutes of expiring, then takes a new one; the scheduler
// sees each on the calls of its time. No token, nor the endpoint's secret
// header, nor the client id shows in the handler's output.
func TestManagedIdentity(t *testing.T) {
	t.Parallel()
	const firstLifetime = 5*time.Minute + 3*time.Second // replaced after about 3 s
	ca := dtstest.NewCA(t)
	clientID := randomUUID()
	mi := startAppServiceIdentity(t, clientID, firstLifetime)
	seen := &bearerLog{}
	root := newAppRoot(t, nil)
	srv := startSecureScheduler(t, root, ca.ServerTLS(t, "127.0.0.1"), seen.gate(mi.valid))

	cs := fmt.Sprintf("Endpoint=https://%s;Authentication=ManagedIdentity;ClientID=%s", srv.Addr(), clientID)
	p := startHandler(t, root, identitySettings(t, ca, cs,
		"IDENTITY_ENDPOINT", mi.endpoint,
		"IDENTITY_HEADER", mi.header,
		"FANOUT_LOG_LEVEL", "trace")) // everything it would ever log
	p.waitReady(t)

	runFanOut(t, p, 4)
	_, issued, _ := mi.snapshot()
	if len(issued) == 0 {
		t.Fatal("the fan-out completed without a token from the identity endpoint")
	}
	first := issued[0]
	// The handler replaces a token within five minutes of its expiry.
	replaceAt := first.expiresOn.Add(-5 * time.Minute)
	time.Sleep(time.Until(replaceAt) + 100*time.Millisecond)
	secondStart := time.Now()
	runFanOut(t, p, 4)

	requests, issued, _ := mi.snapshot()
	mi.checkRequests(t)
	if len(requests) != 2 || len(issued) != 2 {
		t.Fatalf("the identity endpoint was asked %d times and issued %d tokens; want 2 and 2: one at the start and one when the first came near expiry (calls: %d)",
			len(requests), len(issued), len(seen.snapshot()))
	}
	second := issued[1]
	if second.at.Before(replaceAt) {
		t.Errorf("the first token was replaced %s before it came within 5 minutes of expiry", replaceAt.Sub(second.at))
	}

	calls := seen.snapshot()
	count := map[string]int{}
	var firstAfter, secondAfter int
	for _, c := range calls {
		count[c.token]++
		if !c.ok {
			t.Errorf("the scheduler was shown a token the endpoint never issued, or an expired one, at %s", c.at.Format(time.StampMilli))
		}
		if c.at.After(secondStart) {
			switch c.token {
			case first.token:
				firstAfter++
			case second.token:
				secondAfter++
			}
		}
	}
	t.Logf("scheduler calls: %d with the first token, %d with the replacement (%d of them after the near-expiry point)", count[first.token], count[second.token], secondAfter)
	if count[first.token] == 0 {
		t.Error("the scheduler never saw the first token")
	}
	if count[second.token] == 0 || secondAfter == 0 {
		t.Error("the scheduler never saw the replacement token")
	}
	if firstAfter != 0 {
		t.Errorf("%d calls after the near-expiry point still carried the first token", firstAfter)
	}

	checkNoViolations(t, srv)
	secrets := map[string]string{}
	addSecret(secrets, "IDENTITY_HEADER value", mi.header)
	addSecret(secrets, "client id", clientID)
	for i, it := range issued {
		addSecret(secrets, fmt.Sprintf("token %d", i+1), it.token)
	}
	checkNoSecrets(t, p, secrets)
}

// ---------------------------------------------------------------------------
// A Microsoft Entra authority for workload identity, over TLS. It serves
// what MSAL asks an authority for: instance discovery (which MSAL sends to
// login.microsoftonline.com for any host it does not know, so that name is
// routed here through an HTTPS proxy), the tenant's OpenID configuration,
// and the token endpoint, which issues a token for the client credentials
// grant with the federated assertion only.

const loginHost = "login.microsoftonline.com"

type entraAuthority struct {
	host      string // 127.0.0.1:port, as in AZURE_AUTHORITY_HOST
	tenant    string
	clientID  string
	assertion string // the token file's contents

	mu       sync.Mutex
	requests []string // "kind" of every request answered
	tokenReq []url.Values
	issued   []string
	refused  []string
	connects []string // CONNECT targets the proxy was asked for
}

func (a *entraAuthority) url(path string) string { return "https://" + a.host + path }

func (a *entraAuthority) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	refuse := func(code int, format string, args ...any) {
		msg := fmt.Sprintf("%s https://%s%s: %s", r.Method, r.Host, r.URL.Path, fmt.Sprintf(format, args...))
		a.refused = append(a.refused, msg)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]any{"error": "invalid_request", "error_description": msg, "error_codes": []int{900144}})
	}
	answer := func(kind string, v any) {
		a.requests = append(a.requests, kind)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		json.NewEncoder(w).Encode(v)
	}
	body, _ := io.ReadAll(r.Body)
	tenantPath := "/" + a.tenant

	switch {
	case r.Host == loginHost || r.Host == loginHost+":443":
		if r.TLS == nil || r.TLS.ServerName != loginHost {
			refuse(http.StatusMisdirectedRequest, "reached without TLS for %s", loginHost)
			return
		}
		want := url.Values{"api-version": {"1.1"}, "authorization_endpoint": {a.url(tenantPath + "/oauth2/v2.0/authorize")}}
		switch {
		case r.Method != http.MethodGet || r.URL.Path != "/common/discovery/instance":
			refuse(http.StatusNotFound, "not the instance discovery endpoint")
		case len(body) != 0:
			refuse(http.StatusBadRequest, "a body on a GET")
		case !equalValues(r.URL.Query(), want):
			refuse(http.StatusBadRequest, "query %v, want %v", r.URL.Query(), want)
		default:
			answer("instance discovery", map[string]any{
				"tenant_discovery_endpoint": a.url(tenantPath + "/v2.0/.well-known/openid-configuration"),
				"api-version":               "1.1",
				"metadata":                  []any{map[string]any{"preferred_network": a.host, "preferred_cache": a.host, "aliases": []string{a.host}}},
			})
		}

	case r.Host != a.host:
		refuse(http.StatusMisdirectedRequest, "unknown host")

	case r.URL.Path == tenantPath+"/v2.0/.well-known/openid-configuration":
		switch {
		case r.Method != http.MethodGet || len(body) != 0 || r.URL.RawQuery != "":
			refuse(http.StatusBadRequest, "want a plain GET")
		default:
			answer("openid configuration", map[string]any{
				"issuer":                                a.url(tenantPath + "/v2.0"),
				"authorization_endpoint":                a.url(tenantPath + "/oauth2/v2.0/authorize"),
				"token_endpoint":                        a.url(tenantPath + "/oauth2/v2.0/token"),
				"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
				"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
				"tenant_region_scope":                   "NA",
			})
		}

	case r.URL.Path == tenantPath+"/oauth2/v2.0/token":
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if r.Method != http.MethodPost || mt != "application/x-www-form-urlencoded" || r.URL.RawQuery != "" {
			refuse(http.StatusBadRequest, "want a form POST (got %s %q, query %q)", r.Method, mt, r.URL.RawQuery)
			return
		}
		form, err := url.ParseQuery(string(body))
		if err != nil {
			refuse(http.StatusBadRequest, "form: %v", err)
			return
		}
		a.tokenReq = append(a.tokenReq, form)
		want := map[string]func(string) bool{
			"grant_type":            func(v string) bool { return v == "client_credentials" },
			"client_assertion_type": func(v string) bool { return v == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" },
			"client_assertion":      func(v string) bool { return v == a.assertion },
			"client_id":             func(v string) bool { return v == a.clientID },
			"scope":                 validScope,
			"client_info":           func(v string) bool { return v == "1" }, // optional
		}
		for k, v := range form {
			if check, ok := want[k]; !ok {
				refuse(http.StatusBadRequest, "unexpected parameter %q", k)
				return
			} else if len(v) != 1 || !check(v[0]) {
				refuse(http.StatusUnauthorized, "parameter %s is wrong", k)
				return
			}
		}
		for k := range want {
			if !form.Has(k) && k != "client_info" {
				refuse(http.StatusBadRequest, "no parameter %s", k)
				return
			}
		}
		tok := fakeJWT(map[string]any{"aud": dtsResource, "tid": a.tenant, "appid": a.clientID})
		a.issued = append(a.issued, tok)
		answer("token", map[string]any{"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": tok})

	default:
		refuse(http.StatusNotFound, "no such endpoint")
	}
}

// validScope: the scheduler's scope, and any of the OpenID scopes MSAL adds.
func validScope(v string) bool {
	has := false
	for _, s := range strings.Fields(v) {
		switch s {
		case dtsScope:
			has = true
		case "openid", "offline_access", "profile":
		default:
			return false
		}
	}
	return has
}

func equalValues(a, b url.Values) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func (a *entraAuthority) issuedToken(token string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.issued, token)
}

// startEntraAuthority starts the authority over TLS, and an HTTPS proxy
// (plain HTTP CONNECT) that tunnels login.microsoftonline.com to it and
// refuses anything else. It returns the authority and the proxy's URL.
func startEntraAuthority(t *testing.T, ca *dtstest.CA, tenant, clientID, assertion string) (*entraAuthority, string) {
	t.Helper()
	a := &entraAuthority{tenant: tenant, clientID: clientID, assertion: assertion}
	srv := httptest.NewUnstartedServer(a)
	srv.TLS = ca.ServerTLS(t, "127.0.0.1", loginHost)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	a.host = srv.Listener.Addr().String()

	var (
		mu      sync.Mutex
		tunnels []net.Conn
		wg      sync.WaitGroup
	)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.connects = append(a.connects, r.Method+" "+r.Host)
		ok := r.Method == http.MethodConnect && r.Host == loginHost+":443"
		if !ok {
			a.refused = append(a.refused, fmt.Sprintf("proxy: %s %s", r.Method, r.Host))
		}
		a.mu.Unlock()
		if !ok {
			http.Error(w, "this proxy only reaches "+loginHost, http.StatusForbidden)
			return
		}
		up, err := net.Dial("tcp", a.host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		down, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			up.Close()
			return
		}
		mu.Lock()
		tunnels = append(tunnels, up, down)
		mu.Unlock()
		io.WriteString(down, "HTTP/1.1 200 Connection established\r\n\r\n")
		wg.Add(2)
		go func() { defer wg.Done(); io.Copy(up, rw.Reader); up.Close() }()
		go func() { defer wg.Done(); io.Copy(down, up); down.Close() }()
	}))
	t.Cleanup(func() {
		proxy.Close()
		mu.Lock()
		for _, c := range tunnels {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return a, proxy.URL
}

// With Authentication=WorkloadIdentity the handler exchanges the federated
// token in its token file for the scheduler's token at the Entra authority
// (AZURE_AUTHORITY_HOST) of its tenant, as its client id, and the scheduler
// sees that token. Neither token shows in the handler's output.
func TestWorkloadIdentity(t *testing.T) {
	t.Parallel()
	ca := dtstest.NewCA(t)
	tenant, clientID := randomUUID(), randomUUID()
	assertion := fakeJWT(map[string]any{"iss": "https://oidc.example.test/" + randomHex(8), "sub": "system:serviceaccount:default:fanoutfanin", "aud": "api://AzureADTokenExchange"})
	tokenFile := filepath.Join(t.TempDir(), "azure-identity-token")
	if err := os.WriteFile(tokenFile, []byte(assertion), 0o600); err != nil {
		t.Fatal(err)
	}
	authority, proxyURL := startEntraAuthority(t, ca, tenant, clientID, assertion)
	seen := &bearerLog{}
	root := newAppRoot(t, nil)
	srv := startSecureScheduler(t, root, ca.ServerTLS(t, "127.0.0.1"), seen.gate(authority.issuedToken))

	cs := fmt.Sprintf("Endpoint=https://%s;Authentication=WorkloadIdentity;ClientID=%s;TenantId=%s;TokenFilePath=%s", srv.Addr(), clientID, tenant, tokenFile)
	p := startHandler(t, root, identitySettings(t, ca, cs,
		"AZURE_AUTHORITY_HOST", "https://"+authority.host,
		// MSAL validates any authority it does not know with
		// login.microsoftonline.com; this proxy takes that name to the
		// local authority. Loopback addresses are never proxied.
		"HTTPS_PROXY", proxyURL,
		"FANOUT_LOG_LEVEL", "trace"))
	p.waitReady(t)
	runFanOut(t, p, 4)

	authority.mu.Lock()
	requests, tokenReqs, issued := slices.Clone(authority.requests), slices.Clone(authority.tokenReq), slices.Clone(authority.issued)
	refused, connects := slices.Clone(authority.refused), slices.Clone(authority.connects)
	authority.mu.Unlock()
	t.Logf("authority requests: %q; proxy: %q", requests, connects)
	for _, r := range refused {
		t.Errorf("the authority refused a request: %s", r)
	}
	if len(tokenReqs) != 1 || len(issued) != 1 {
		t.Fatalf("token requests: %d, tokens issued: %d; want one of each", len(tokenReqs), len(issued))
	}
	form := tokenReqs[0]
	if form.Get("client_assertion") != assertion || form.Get("client_id") != clientID || !validScope(form.Get("scope")) {
		t.Errorf("token request: assertion from the file %v, client id %v, scope %q",
			form.Get("client_assertion") == assertion, form.Get("client_id") == clientID, form.Get("scope"))
	}
	if !slices.Contains(requests, "openid configuration") {
		t.Errorf("the tenant's OpenID configuration (/%s/v2.0/.well-known/openid-configuration) was never asked for", tenant)
	}

	calls := seen.snapshot()
	if len(calls) == 0 {
		t.Fatal("the scheduler saw no calls")
	}
	for _, c := range calls {
		if c.token != issued[0] {
			t.Errorf("a call at %s carried a token the authority did not issue", c.at.Format(time.StampMilli))
		}
	}
	checkNoViolations(t, srv)
	secrets := map[string]string{}
	addSecret(secrets, "client id", clientID)
	addSecret(secrets, "tenant id", tenant)
	addSecret(secrets, "scheduler token", issued[0])
	addSecret(secrets, "federated assertion", assertion)
	checkNoSecrets(t, p, secrets)
}

// ---------------------------------------------------------------------------

// A scheduler that refuses the app's token: a start request is a 503 with a
// JSON error that says so (and holds no token), and the worker, which keeps
// retrying, logs the refusal once.
func TestRefusedToken(t *testing.T) {
	t.Parallel()
	const outageMessage = "the scheduler cannot be used; retrying until it can"
	ca := dtstest.NewCA(t)
	clientID := randomUUID()
	mi := startAppServiceIdentity(t, clientID, time.Hour)
	seen := &bearerLog{}
	root := newAppRoot(t, nil)
	srv := startSecureScheduler(t, root, ca.ServerTLS(t, "127.0.0.1"), seen.gate(func(string) bool { return false }))

	cs := fmt.Sprintf("Endpoint=https://%s;Authentication=ManagedIdentity;ClientID=%s", srv.Addr(), clientID)
	p := startHandler(t, root, identitySettings(t, ca, cs, "IDENTITY_ENDPOINT", mi.endpoint, "IDENTITY_HEADER", mi.header))
	p.waitReady(t)

	start := func() {
		t.Helper()
		code, hdr, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a", "b"]}`)
		raw, _ := json.Marshal(body)
		msg, _ := body["error"].(string)
		if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || !strings.Contains(msg, "refused") || !strings.Contains(msg, "credentials") {
			t.Errorf("start with a refused token: got %d (Retry-After %q) %s, want 503 with Retry-After and an error saying the credentials were refused", code, hdr.Get("Retry-After"), raw)
		}
		if _, issued, _ := mi.snapshot(); len(issued) > 0 && strings.Contains(string(raw), issued[0].token) {
			t.Error("the 503 shows the token")
		}
	}
	start()

	// Let the worker be refused a few times.
	deadline := time.Now().Add(20 * time.Second)
	for {
		hellos := 0
		for _, v := range srv.Violations() {
			if strings.HasPrefix(v, "Hello:") {
				hellos++
			}
		}
		if hellos >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker said hello %d times in 20 s; want retries", hellos)
		}
		time.Sleep(50 * time.Millisecond)
	}
	start()

	var refusals []map[string]any
	for _, l := range logLines(t, p.stdout.String()) {
		if l["message"] == outageMessage {
			refusals = append(refusals, l)
		}
	}
	if len(refusals) != 1 {
		t.Errorf("the refusal was logged %d times, want once: %v", len(refusals), refusals)
	} else if errText, _ := refusals[0]["error"].(string); refusals[0]["level"] != "warn" || !strings.Contains(errText, "Unauthenticated") || refusals[0]["reason"] != "refused this app's credentials" {
		t.Errorf("refusal log line: %v, want a warning whose error says Unauthenticated and whose reason says the credentials were refused", refusals[0])
	}
	if n := strings.Count(p.stdout.String()+p.stderr.String(), "Unauthenticated"); n != 1 {
		t.Errorf("%d log lines mention Unauthenticated, want 1", n)
	}

	requests, issued, _ := mi.snapshot()
	mi.checkRequests(t)
	if len(requests) != 1 {
		t.Errorf("the identity endpoint was asked %d times, want once: the token is kept, refused or not", len(requests))
	}
	calls := seen.snapshot()
	for _, c := range calls {
		if len(issued) == 0 || c.token != issued[0].token {
			t.Errorf("the scheduler was shown a token the endpoint did not issue")
			break
		}
	}
	for _, v := range srv.Violations() {
		if !strings.HasSuffix(v, ": bearer token rejected") {
			t.Errorf("protocol violation other than the refused token: %s", v)
		}
	}
	t.Logf("the scheduler refused %d calls", len(calls))
	secrets := map[string]string{}
	addSecret(secrets, "IDENTITY_HEADER value", mi.header)
	addSecret(secrets, "client id", clientID)
	for _, it := range issued {
		addSecret(secrets, "token", it.token)
	}
	checkNoSecrets(t, p, secrets)
}

// When no token can be had (the identity endpoint is down), the scheduler is
// never called: a start request is a 503 that says so, and the worker logs
// it once with that reason.
func TestNoTokenIsA503ThatSaysWhy(t *testing.T) {
	t.Parallel()
	ca := dtstest.NewCA(t)
	root := newAppRoot(t, nil)
	srv := startSecureScheduler(t, root, ca.ServerTLS(t, "127.0.0.1"), func(string) bool { return true })
	deadIdentity := fmt.Sprintf("http://127.0.0.1:%d/msi/token", freePort(t))
	cs := fmt.Sprintf("Endpoint=https://%s;Authentication=ManagedIdentity", srv.Addr())
	p := startHandler(t, root, identitySettings(t, ca, cs, "IDENTITY_ENDPOINT", deadIdentity, "IDENTITY_HEADER", "h"))
	p.waitReady(t)

	code, _, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a"]}`)
	if msg, _ := body["error"].(string); code != http.StatusServiceUnavailable || !strings.Contains(msg, "no token could be had for this app's identity") {
		t.Errorf("start without a token: got %d %v, want 503 saying no token could be had", code, body)
	}
	waitLog(t, p, "the scheduler cannot be used; retrying until it can", 1, 20*time.Second)
	for _, l := range logLines(t, p.stdout.String()) {
		if l["message"] == "the scheduler cannot be used; retrying until it can" && l["reason"] != "cannot be called: no token could be had for this app's identity" {
			t.Errorf("outage line: %v, want the reason to say no token could be had", l)
		}
	}
	if got := srv.Stats().StreamsOpened; got != 0 {
		t.Errorf("work-item streams opened without a token: %d", got)
	}
}
