package e2e

// End-to-end tests that nothing secret reaches the handler's output on the
// paths where it would most easily slip out: a connection string refused at
// start because a secret sits where it does not belong, and a running
// handler that cannot get a token and says why.

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"fanoutfanin/internal/dtstest"
)

const connectionSetting = "DURABLE_TASK_SCHEDULER_CONNECTION_STRING"

// checkOutputHides fails if any line the handler wrote, on stdout or
// stderr, holds any of secrets (name → value), whole or, for long ones, in
// part (see secretParts).
func checkOutputHides(t *testing.T, p *handlerProcess, secrets map[string]string) {
	t.Helper()
	parts := map[string]string{}
	for name, s := range secrets {
		addSecret(parts, name, s)
	}
	for _, out := range []struct{ name, text string }{{"stdout", p.stdout.String()}, {"stderr", p.stderr.String()}} {
		sc := bufio.NewScanner(strings.NewReader(out.text))
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			for name, s := range parts {
				if s != "" && strings.Contains(sc.Text(), s) {
					t.Errorf("handler %s line %d shows the %s: %s", out.name, n, name, sc.Text())
				}
			}
		}
	}
}

// A secret put where the connection string does not take one — a key the
// string does not have, a segment of its own, the endpoint's user info or
// query, an identity key the Authentication does not use — stops the
// handler with a message that names the problem and shows none of it.
// Complements TestBadConnectionStringsStopTheHandler, which covers a
// ClientID among bad keys and Authentication values.
func TestRefusedConnectionStringsShowNoSecret(t *testing.T) {
	// Shaped like what gets pasted by mistake: an Entra client secret
	// (with its '~'), base64 with padding that reads as '=', a UUID.
	clientSecret := "Q8x~" + randomHex(18)
	key := make([]byte, 32)
	rand.Read(key)
	base64Secret := base64.StdEncoding.EncodeToString(key) // 44 characters, the last '='
	uuid := randomUUID()
	const endpoint = "Endpoint=https://x.westus.durabletask.io"
	for _, tc := range []struct {
		name, value string
		want        []string
	}{
		{"ClientSecret, a key the string does not have",
			endpoint + ";Authentication=Environment;ClientSecret=" + clientSecret,
			[]string{`unknown key "ClientSecret"`}},
		{"secret pasted as a segment",
			endpoint + ";Authentication=ManagedIdentity;" + clientSecret,
			[]string{"segment 3 has no '='"}},
		{"base64 secret pasted as a segment",
			endpoint + ";Authentication=ManagedIdentity;" + base64Secret,
			[]string{"segment 3 has an unknown key"}},
		{"secret as the value of an empty key",
			endpoint + ";Authentication=ManagedIdentity;=" + clientSecret,
			[]string{"segment 3 has no key"}},
		{"password in the endpoint's user info",
			"Endpoint=https://app:" + clientSecret + "@x.westus.durabletask.io;Authentication=ManagedIdentity",
			[]string{`Endpoint (host "x.westus.durabletask.io") may not have user info`}},
		{"key in the endpoint's query",
			"Endpoint=https://x.westus.durabletask.io/?code=" + clientSecret + ";Authentication=ManagedIdentity",
			[]string{"may not have a query"}},
		{"secret as the endpoint's port",
			"Endpoint=https://x.westus.durabletask.io:" + clientSecret + ";Authentication=ManagedIdentity",
			[]string{"Endpoint is not a valid URL"}},
		{"ClientID with Authentication=None",
			"Endpoint=http://localhost:8080;Authentication=None;ClientID=" + uuid,
			[]string{"ClientID does not apply to Authentication=None"}},
		{"TenantId with ManagedIdentity",
			endpoint + ";Authentication=ManagedIdentity;TenantId=" + uuid,
			[]string{"TenantId does not apply to Authentication=ManagedIdentity"}},
		{"TokenFilePath with Environment",
			endpoint + ";Authentication=Environment;TokenFilePath=/var/run/" + clientSecret,
			[]string{"TokenFilePath does not apply to Authentication=Environment"}},
		{"secret as a task hub name",
			endpoint + ";Authentication=ManagedIdentity;TaskHub=" + clientSecret,
			[]string{"TaskHub is not a valid task hub name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := newAppRoot(t, nil)
			p := startHandler(t, root, withSettings(localSettings(t), connectionSetting, tc.value))
			if err := p.waitExit(t, 15*time.Second); err == nil {
				t.Fatal("handler exited 0")
			}
			stderr := p.stderr.String()
			for _, want := range append(tc.want, connectionSetting) {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q: %s", want, stderr)
				}
			}
			checkOutputHides(t, p, map[string]string{"client secret": clientSecret, "base64 secret": base64Secret, "client id": uuid})
		})
	}
}

// When no token can be had, the handler runs, answers 503 and logs why. The
// reason comes from Azure Identity's errors, which show the token file's
// path, the authority's URL with the tenant in it, and what the identity
// service answered, client id included: the line keeps what went wrong but
// shows none of those values, nor a token or the identity header.
func TestNoTokenShowsNoSecret(t *testing.T) {
	type setup struct {
		cs      string            // the connection string
		env     []string          // more app settings
		secrets map[string]string // name → value
		why     string            // what the logged error must still say
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, ca *dtstest.CA, scheduler string) setup
	}{
		{"managed identity refused", func(t *testing.T, ca *dtstest.CA, scheduler string) setup {
			// The endpoint serves another identity; its 400 quotes the
			// client id it was asked for.
			clientID := randomUUID()
			mi := startAppServiceIdentity(t, randomUUID(), time.Hour)
			return setup{
				cs:      fmt.Sprintf("Endpoint=https://%s;Authentication=ManagedIdentity;ClientID=%s", scheduler, clientID),
				env:     []string{"IDENTITY_ENDPOINT", mi.endpoint, "IDENTITY_HEADER", mi.header},
				secrets: map[string]string{"client id": clientID, "IDENTITY_HEADER value": mi.header},
				why:     "RESPONSE 400",
			}
		}},
		{"workload identity token file missing", func(t *testing.T, ca *dtstest.CA, scheduler string) setup {
			clientID, tenant, dir := randomUUID(), randomUUID(), "sa-"+randomHex(12)
			authority, proxyURL := startEntraAuthority(t, ca, tenant, clientID, "never read")
			return setup{
				cs: fmt.Sprintf("Endpoint=https://%s;Authentication=WorkloadIdentity;ClientID=%s;TenantId=%s;TokenFilePath=%s",
					scheduler, clientID, tenant, filepath.Join(t.TempDir(), dir, "token")),
				env:     []string{"AZURE_AUTHORITY_HOST", "https://" + authority.host, "HTTPS_PROXY", proxyURL},
				secrets: map[string]string{"client id": clientID, "tenant id": tenant, "token file path": dir},
				why:     "no such file or directory",
			}
		}},
		{"workload identity refused by the authority", func(t *testing.T, ca *dtstest.CA, scheduler string) setup {
			// The authority knows another client id: it refuses with a
			// 401 whose body, like Entra's, repeats the URL with the tenant.
			clientID, tenant := randomUUID(), randomUUID()
			assertion := fakeJWT(map[string]any{"sub": "system:serviceaccount:default:fanoutfanin", "aud": "api://AzureADTokenExchange"})
			tokenFile := filepath.Join(t.TempDir(), "token")
			if err := os.WriteFile(tokenFile, []byte(assertion), 0o600); err != nil {
				t.Fatal(err)
			}
			authority, proxyURL := startEntraAuthority(t, ca, tenant, randomUUID(), assertion)
			return setup{
				cs: fmt.Sprintf("Endpoint=https://%s;Authentication=WorkloadIdentity;ClientID=%s;TenantId=%s;TokenFilePath=%s",
					scheduler, clientID, tenant, tokenFile),
				env:     []string{"AZURE_AUTHORITY_HOST", "https://" + authority.host, "HTTPS_PROXY", proxyURL},
				secrets: map[string]string{"client id": clientID, "tenant id": tenant, "federated assertion": assertion},
				why:     "RESPONSE 401",
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ca := dtstest.NewCA(t)
			root := newAppRoot(t, nil)
			srv := startSecureScheduler(t, root, ca.ServerTLS(t, "127.0.0.1"), func(string) bool { return true })
			s := tc.setup(t, ca, srv.Addr())
			// At trace level, so that every line the handler can write about
			// the failure is checked.
			p := startHandler(t, root, identitySettings(t, ca, s.cs, append(s.env, "FANOUT_LOG_LEVEL", "trace")...))
			p.waitReady(t)

			code, _, body := p.forward(t, "POST", "/api/fan_out_fan_in", `{"workItems": ["a"]}`)
			msg, _ := body["error"].(string)
			if code != http.StatusServiceUnavailable || !strings.Contains(msg, "no token could be had") {
				t.Errorf("start without a token: got %d %v, want 503 saying no token could be had", code, body)
			}
			for name, v := range s.secrets {
				if strings.Contains(msg, v) {
					t.Errorf("the 503 shows the %s: %s", name, msg)
				}
			}

			const outage = "the scheduler cannot be used; retrying until it can"
			waitLog(t, p, outage, 1, 20*time.Second)
			for _, l := range logLines(t, p.stdout.String()) {
				if errText, _ := l["error"].(string); l["message"] == outage && !strings.Contains(errText, s.why) {
					t.Errorf("outage line: %v, want its error to still say %q", l, s.why)
				}
			}
			secrets := map[string]string{}
			for name, v := range s.secrets {
				addSecret(secrets, name, v)
			}
			checkNoSecrets(t, p, secrets)
		})
	}
}
