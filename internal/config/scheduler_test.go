package config

import (
	"errors"
	"strings"
	"testing"
)

const testSetting = "MY_DTS"

func TestParseScheduler(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        Scheduler
		wantHub     string
	}{
		{
			name:    "the shipped local.settings.json (emulator)",
			value:   "Endpoint=http://localhost:8080;TaskHub=default;Authentication=None",
			want:    Scheduler{Endpoint: "http://localhost:8080", Host: "localhost", Address: "localhost:8080", TLS: false, Auth: AuthNone},
			wantHub: "default",
		},
		{
			name:  "Azure with a user-assigned identity",
			value: "Endpoint=https://my.westus.durabletask.io;Authentication=ManagedIdentity;ClientID=abc",
			want: Scheduler{Endpoint: "https://my.westus.durabletask.io", Host: "my.westus.durabletask.io", Address: "my.westus.durabletask.io:443",
				TLS: true, Auth: AuthManagedIdentity, ClientID: "abc"},
		},
		{
			name:  "keys and Authentication in any case",
			value: "endpoint=https://s.example;AUTHENTICATION=managedIDENTITY;clientid=abc;TASKHUB=hub",
			want: Scheduler{Endpoint: "https://s.example", Host: "s.example", Address: "s.example:443",
				TLS: true, Auth: AuthManagedIdentity, ClientID: "abc"},
			wantHub: "hub",
		},
		{
			name:    "keys and values trimmed",
			value:   "  Endpoint = https://s.example:8443 ;\tAuthentication =DefaultAzure\n; TaskHub = hub ",
			want:    Scheduler{Endpoint: "https://s.example:8443", Host: "s.example", Address: "s.example:8443", TLS: true, Auth: AuthDefaultAzure},
			wantHub: "hub",
		},
		{
			name:  "the last of a repeated key wins",
			value: "Endpoint=https://first.example;Authentication=None;ENDPOINT=https://second.example;authentication=AzureCli",
			want:  Scheduler{Endpoint: "https://second.example", Host: "second.example", Address: "second.example:443", TLS: true, Auth: AuthAzureCLI},
		},
		{
			name:  "trailing and doubled ';'",
			value: "Endpoint=https://s.example;;Authentication=Environment;",
			want:  Scheduler{Endpoint: "https://s.example", Host: "s.example", Address: "s.example:443", TLS: true, Auth: AuthEnvironment},
		},
		{
			name:  "no scheme is https",
			value: "Endpoint=my.westus.durabletask.io;Authentication=DefaultAzure",
			want:  Scheduler{Endpoint: "https://my.westus.durabletask.io", Host: "my.westus.durabletask.io", Address: "my.westus.durabletask.io:443", TLS: true, Auth: AuthDefaultAzure},
		},
		{
			name:  "no scheme with a port",
			value: "Endpoint=localhost:8443;Authentication=None",
			want:  Scheduler{Endpoint: "https://localhost:8443", Host: "localhost", Address: "localhost:8443", TLS: true, Auth: AuthNone},
		},
		{
			name:  "scheme and host in capitals, http default port",
			value: "Endpoint=HTTP://LocalHost/;Authentication=none",
			want:  Scheduler{Endpoint: "http://localhost", Host: "localhost", Address: "localhost:80", TLS: false, Auth: AuthNone},
		},
		{
			name:  "trailing slash",
			value: "Endpoint=https://s.example/;Authentication=None",
			want:  Scheduler{Endpoint: "https://s.example", Host: "s.example", Address: "s.example:443", TLS: true, Auth: AuthNone},
		},
		{
			name:  "IPv6 with a port",
			value: "Endpoint=http://[::1]:8080;Authentication=None",
			want:  Scheduler{Endpoint: "http://[::1]:8080", Host: "::1", Address: "[::1]:8080", TLS: false, Auth: AuthNone},
		},
		{
			name:  "IPv6 without a port",
			value: "Endpoint=https://[2001:DB8::1];Authentication=None",
			want:  Scheduler{Endpoint: "https://[2001:db8::1]", Host: "2001:db8::1", Address: "[2001:db8::1]:443", TLS: true, Auth: AuthNone},
		},
		{
			name:  "IPv4",
			value: "Endpoint=http://127.0.0.1:8080;Authentication=None",
			want:  Scheduler{Endpoint: "http://127.0.0.1:8080", Host: "127.0.0.1", Address: "127.0.0.1:8080", TLS: false, Auth: AuthNone},
		},
		{
			name:  "WorkloadIdentity with its keys",
			value: "Endpoint=https://s.example;Authentication=WorkloadIdentity;ClientID=c;TenantId=t;TokenFilePath=/var/run/token",
			want: Scheduler{Endpoint: "https://s.example", Host: "s.example", Address: "s.example:443", TLS: true, Auth: AuthWorkloadIdentity,
				ClientID: "c", TenantID: "t", TokenFilePath: "/var/run/token"},
		},
		{
			name:  "WorkloadIdentity from the environment",
			value: "Endpoint=https://s.example;Authentication=workloadidentity",
			want:  Scheduler{Endpoint: "https://s.example", Host: "s.example", Address: "s.example:443", TLS: true, Auth: AuthWorkloadIdentity},
		},
		{
			name:  "system-assigned identity: empty ClientID counts as absent",
			value: "Endpoint=https://s.example;Authentication=ManagedIdentity;ClientID=",
			want:  Scheduler{Endpoint: "https://s.example", Host: "s.example", Address: "s.example:443", TLS: true, Auth: AuthManagedIdentity},
		},
		{
			name:  "an identity key left empty with an Authentication that does not use it",
			value: "Endpoint=https://s.example;Authentication=None;ClientID= ",
			want:  Scheduler{Endpoint: "https://s.example", Host: "s.example", Address: "s.example:443", TLS: true, Auth: AuthNone},
		},
		{
			name:  "https with None (a TLS emulator)",
			value: "Endpoint=https://localhost:8443;Authentication=None",
			want:  Scheduler{Endpoint: "https://localhost:8443", Host: "localhost", Address: "localhost:8443", TLS: true, Auth: AuthNone},
		},
		{
			name:  "port with a leading zero",
			value: "Endpoint=http://localhost:08080;Authentication=None",
			want:  Scheduler{Endpoint: "http://localhost:8080", Host: "localhost", Address: "localhost:8080", TLS: false, Auth: AuthNone},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, hub, errs := parseScheduler(testSetting, tc.value)
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("parseScheduler(%q): unexpected error: %v", tc.value, err)
			}
			if s == nil {
				t.Fatalf("parseScheduler(%q): got nil Scheduler and no error", tc.value)
			}
			if got, want := *s, tc.want; got != want {
				t.Errorf("parseScheduler(%q):\n got %+v\nwant %+v", tc.value, got, want)
			}
			if got, want := hub, tc.wantHub; got != want {
				t.Errorf("parseScheduler(%q) task hub: got %q, want %q", tc.value, got, want)
			}
		})
	}
}

// Each refusal says what is wrong and never shows the string's values but
// the endpoint's host and the TaskHub: anything else may be a secret, or part
// of one pasted in the wrong place.
func TestParseSchedulerRefusals(t *testing.T) {
	const clientID = "secret-client-id-123"
	for _, tc := range []struct {
		name, value string
		want        []string // parts of the error
		secrets     []string // what the error must not show
	}{
		{
			name:    "unknown key",
			value:   "Endpoint=https://s.example;Authentication=None;Foo=secret-foo-value",
			want:    []string{`unknown key "Foo"`, "(the keys are Endpoint, Authentication, TaskHub, ClientID, TenantId, TokenFilePath)"},
			secrets: []string{"secret-foo-value"},
		},
		{
			// A base64 secret pasted as a segment: its padding reads as '='.
			name:    "secret pasted as a segment",
			value:   "Endpoint=https://s.example;Authentication=None;c2VjcmV0LXNlY3JldC1zZWNyZXQ==",
			want:    []string{"segment 3 has an unknown key"},
			secrets: []string{"c2VjcmV0LXNlY3JldC1zZWNyZXQ"},
		},
		{
			name:    "unknown key that .NET accepts",
			value:   "Endpoint=https://s.example;Authentication=WorkloadIdentity;AdditionallyAllowedTenants=secret-tenant",
			want:    []string{`unknown key "AdditionallyAllowedTenants"`},
			secrets: []string{"secret-tenant"},
		},
		{
			name:    "unknown Authentication",
			value:   "Endpoint=https://s.example;Authentication=secret-auth-xyz;ClientID=" + clientID,
			want:    []string{"Authentication must be one of None, DefaultAzure, ManagedIdentity, WorkloadIdentity, Environment, AzureCli"},
			secrets: []string{"secret-auth-xyz", clientID},
		},
		{
			name:    "Authentication the .NET SDK accepts",
			value:   "Endpoint=https://s.example;Authentication=AzurePowerShell",
			want:    []string{"Authentication must be one of None, DefaultAzure, ManagedIdentity, WorkloadIdentity, Environment, AzureCli"},
			secrets: []string{"AzurePowerShell"},
		},
		{
			name:  "empty Authentication",
			value: "Endpoint=https://s.example;Authentication=",
			want:  []string{"Authentication must be one of"},
		},
		{
			name:    "missing Endpoint",
			value:   "Authentication=ManagedIdentity;ClientID=" + clientID,
			want:    []string{"no Endpoint", "Endpoint=https://"},
			secrets: []string{clientID},
		},
		{
			name:  "empty Endpoint",
			value: "Endpoint= ;Authentication=None",
			want:  []string{"Endpoint is empty"},
		},
		{
			name:    "missing Authentication",
			value:   "Endpoint=https://s.example;ClientID=" + clientID,
			want:    []string{"no Authentication", "None, DefaultAzure"},
			secrets: []string{clientID},
		},
		{
			name:    "token over http",
			value:   "Endpoint=http://localhost:8080;Authentication=ManagedIdentity;ClientID=" + clientID,
			want:    []string{`http://localhost with Authentication=ManagedIdentity`, "in clear", "use https://"},
			secrets: []string{clientID},
		},
		{
			name:  "token over http with DefaultAzure",
			value: "Endpoint=HTTP://s.example;Authentication=DefaultAzure",
			want:  []string{"in clear"},
		},
		{
			name:    "ClientID with None",
			value:   "Endpoint=https://s.example;Authentication=None;ClientID=" + clientID,
			want:    []string{"ClientID does not apply to Authentication=None", "ManagedIdentity and WorkloadIdentity"},
			secrets: []string{clientID},
		},
		{
			name:    "ClientID with DefaultAzure",
			value:   "Endpoint=https://s.example;Authentication=DefaultAzure;clientid=" + clientID,
			want:    []string{"ClientID does not apply to Authentication=DefaultAzure"},
			secrets: []string{clientID},
		},
		{
			name:    "TenantId with ManagedIdentity",
			value:   "Endpoint=https://s.example;Authentication=ManagedIdentity;TenantId=secret-tenant-id",
			want:    []string{"TenantId does not apply to Authentication=ManagedIdentity", "only WorkloadIdentity"},
			secrets: []string{"secret-tenant-id"},
		},
		{
			name:    "TokenFilePath with Environment",
			value:   "Endpoint=https://s.example;Authentication=Environment;TokenFilePath=/secret/token/path",
			want:    []string{"TokenFilePath does not apply to Authentication=Environment"},
			secrets: []string{"/secret/token/path"},
		},
		{
			name:    "segment without '='",
			value:   "Endpoint=https://s.example;secret-segment-value;Authentication=None",
			want:    []string{"segment 2 has no '='"},
			secrets: []string{"secret-segment-value"},
		},
		{
			name:    "segments counted with empty ones",
			value:   ";Endpoint=https://s.example;;secret-segment-value;Authentication=None",
			want:    []string{"segment 4 has no '='"},
			secrets: []string{"secret-segment-value"},
		},
		{
			name:    "segment without a key",
			value:   "Endpoint=https://s.example; =secret-keyless;Authentication=None",
			want:    []string{"segment 2 has no key"},
			secrets: []string{"secret-keyless"},
		},
		{
			name:    "endpoint with a path",
			value:   "Endpoint=https://s.example/secret-path;Authentication=ManagedIdentity;ClientID=" + clientID,
			want:    []string{`Endpoint (host "s.example") may not have a path`},
			secrets: []string{"secret-path", clientID},
		},
		{
			name:    "endpoint with a query",
			value:   "Endpoint=https://s.example?code=secret-query;Authentication=None",
			want:    []string{`Endpoint (host "s.example") may not have a query`},
			secrets: []string{"secret-query"},
		},
		{
			name:  "endpoint with an empty query",
			value: "Endpoint=https://s.example?;Authentication=None",
			want:  []string{"may not have a query"},
		},
		{
			name:    "endpoint with a fragment",
			value:   "Endpoint=https://s.example#secret-fragment;Authentication=None",
			want:    []string{"may not have a fragment"},
			secrets: []string{"secret-fragment"},
		},
		{
			name:    "endpoint with user info",
			value:   "Endpoint=https://admin:secret-password@s.example;Authentication=None",
			want:    []string{`Endpoint (host "s.example") may not have user info`},
			secrets: []string{"secret-password", "admin"},
		},
		{
			name:    "endpoint with another scheme",
			value:   "Endpoint=grpc://s.example;Authentication=None",
			want:    []string{"Endpoint must start with https://, http:// or the host name"},
			secrets: []string{"grpc"},
		},
		{
			name:  "endpoint without a host",
			value: "Endpoint=https://:8080;Authentication=None",
			want:  []string{"Endpoint has no host"},
		},
		{
			name:  "endpoint port out of range",
			value: "Endpoint=https://s.example:99999;Authentication=None",
			want:  []string{`Endpoint (host "s.example") has port "99999": it must be from 1 to 65535`},
		},
		{
			name:  "endpoint port zero",
			value: "Endpoint=https://s.example:0;Authentication=None",
			want:  []string{`has port "0"`},
		},
		{
			name:    "endpoint port not a number",
			value:   "Endpoint=https://s.example:secret-port;Authentication=None",
			want:    []string{"Endpoint is not a valid URL"},
			secrets: []string{"secret-port"},
		},
		{
			name:  "endpoint colon without a port",
			value: "Endpoint=https://s.example:;Authentication=None",
			want:  []string{`Endpoint (host "s.example") has ':' but no port`},
		},
		{
			name:    "endpoint host that is no host name",
			value:   "Endpoint=https://secret!host*;Authentication=None",
			want:    []string{"Endpoint does not have a valid host name"},
			secrets: []string{"secret!host"},
		},
		{
			name:  "IPv6 without brackets",
			value: "Endpoint=https://2001:db8::1;Authentication=None",
			want:  []string{"IPv6 address in brackets"},
		},
		{
			name:    "invalid TaskHub",
			value:   "Endpoint=https://s.example;Authentication=None;TaskHub=secret/../hub",
			want:    []string{"TaskHub is not a valid task hub name"},
			secrets: []string{"secret/../hub"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _, errs := parseScheduler(testSetting, tc.value)
			if s != nil {
				t.Errorf("parseScheduler(%q): got %+v, want nil", tc.value, *s)
			}
			err := errors.Join(errs...)
			if err == nil {
				t.Fatalf("parseScheduler(%q): got no error, want one containing %q", tc.value, tc.want)
			}
			for _, e := range errs {
				if got, want := e.Error(), testSetting+": "; !strings.HasPrefix(got, want) {
					t.Errorf("error does not start with the setting's name %q: %v", want, got)
				}
			}
			for _, part := range tc.want {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error does not contain %q:\n%v", part, err)
				}
			}
			for _, secret := range tc.secrets {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error shows %q from the connection string:\n%v", secret, err)
				}
			}
		})
	}
}

func TestParseSchedulerReportsEveryProblem(t *testing.T) {
	_, _, errs := parseScheduler(testSetting, "Foo=1;Bar=2;secret")
	for _, want := range []string{`unknown key "Foo"`, `unknown key "Bar"`, "segment 3 has no '='", "no Endpoint", "no Authentication"} {
		found := false
		for _, e := range errs {
			found = found || strings.Contains(e.Error(), want)
		}
		if !found {
			t.Errorf("no error contains %q: %v", want, errors.Join(errs...))
		}
	}
	if got, want := len(errs), 5; got != want {
		t.Errorf("errors: got %d, want %d: %v", got, want, errors.Join(errs...))
	}
}

// The hub name may come from host.json, the connection string, or both if
// they agree.
func TestLoadSchedulerTaskHub(t *testing.T) {
	const conn = "Endpoint=https://s.example;Authentication=ManagedIdentity;ClientID=secret-client-id-123"
	hostJSON := func(hubName string) string {
		return `{"version":"2.0","extensions":{"durableTask":{"hubName":"` + hubName + `"}}}`
	}
	for _, tc := range []struct {
		name, hostJSON, taskHub string
		settings                map[string]string
		wantName                string
	}{
		{name: "neither: the default", hostJSON: minimalHostJSON, wantName: "default"},
		{name: "host.json only", hostJSON: hostJSON("fromhost"), wantName: "fromhost"},
		{name: "connection string only", hostJSON: minimalHostJSON, taskHub: "fromconn", wantName: "fromconn"},
		{name: "both the same", hostJSON: hostJSON("hub1"), taskHub: "hub1", wantName: "hub1"},
		{name: "both the same but for case: host.json's spelling", hostJSON: hostJSON("Hub1"), taskHub: "hub1", wantName: "Hub1"},
		{name: "both the same after expansion", hostJSON: hostJSON("%TASKHUB_NAME%"), taskHub: "hub1",
			settings: map[string]string{"TASKHUB_NAME": "hub1"}, wantName: "hub1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			value := conn
			if tc.taskHub != "" {
				value += ";TaskHub=" + tc.taskHub
			}
			settings := map[string]string{DefaultConnectionSetting: value}
			for k, v := range tc.settings {
				settings[k] = v
			}
			cfg, _ := mustLoad(t, tc.hostJSON, settings)
			if got, want := cfg.TaskHub.Name, tc.wantName; got != want {
				t.Errorf("TaskHub.Name: got %q, want %q", got, want)
			}
			if cfg.TaskHub.Scheduler == nil {
				t.Fatal("TaskHub.Scheduler: got nil")
			}
			if got, want := cfg.TaskHub.Scheduler.Host, "s.example"; got != want {
				t.Errorf("Scheduler.Host: got %q, want %q", got, want)
			}
		})
	}

	t.Run("different", func(t *testing.T) {
		_, _, err := load(t, hostJSON("b"), map[string]string{DefaultConnectionSetting: conn + ";TaskHub=a"})
		wantErr(t, err, DefaultConnectionSetting+`: the connection string's TaskHub is "a" but host.json extensions.durableTask.hubName gives "b"`,
			"make them the same or remove TaskHub from the connection string")
		if strings.Contains(err.Error(), "secret-client-id-123") {
			t.Errorf("the error shows the ClientID: %v", err)
		}
	})
	t.Run("different after expansion", func(t *testing.T) {
		_, _, err := load(t, hostJSON("%TASKHUB_NAME%"), map[string]string{DefaultConnectionSetting: conn + ";TaskHub=a", "TASKHUB_NAME": "b"})
		wantErr(t, err, `TaskHub is "a"`, `hubName ("%TASKHUB_NAME%") gives "b"`)
	})
	// A bad host.json name is reported once, not again as a mismatch.
	t.Run("invalid host.json name", func(t *testing.T) {
		_, _, err := load(t, hostJSON("../x"), map[string]string{DefaultConnectionSetting: conn + ";TaskHub=a"})
		wantErr(t, err, "valid task hub name")
		if strings.Contains(err.Error(), "make them the same") {
			t.Errorf("a bad hubName is also reported as a mismatch: %v", err)
		}
	})
}

func TestLoadScheduler(t *testing.T) {
	t.Run("the shipped local.settings.json", func(t *testing.T) {
		cfg, _ := mustLoad(t, minimalHostJSON, map[string]string{
			DefaultConnectionSetting: "Endpoint=http://localhost:8080;TaskHub=default;Authentication=None",
		})
		hub := cfg.TaskHub
		if got, want := hub.Embedded(), false; got != want {
			t.Errorf("Embedded(): got %v, want %v", got, want)
		}
		if hub.Scheduler == nil {
			t.Fatal("Scheduler: got nil")
		}
		if got, want := *hub.Scheduler, (Scheduler{Endpoint: "http://localhost:8080", Host: "localhost", Address: "localhost:8080", Auth: AuthNone}); got != want {
			t.Errorf("Scheduler:\n got %+v\nwant %+v", got, want)
		}
		if got, want := hub.Name, "default"; got != want {
			t.Errorf("Name: got %q, want %q", got, want)
		}
	})
	// The embedded hub's folder is not used, so its name does not matter.
	t.Run("embedded dir not checked", func(t *testing.T) {
		mustLoad(t, minimalHostJSON, map[string]string{
			DefaultConnectionSetting: "Endpoint=http://localhost:8080;Authentication=None",
			SettingEmbeddedDir:       "state?mode=memory",
		})
	})
	// Nor is its lock timeout: the scheduler's leases last as long as the
	// worker's stream, so long work needs no longer lock.
	t.Run("lock timeout not checked", func(t *testing.T) {
		mustLoad(t, minimalHostJSON, map[string]string{
			DefaultConnectionSetting: "Endpoint=http://localhost:8080;Authentication=None",
			SettingLockTimeout:       "2s",
			SettingItemTimeout:       "10s",
		})
	})
	// A string that was meant for the scheduler but is broken is an error,
	// never a quiet fall back to the embedded hub.
	t.Run("invalid, with other problems", func(t *testing.T) {
		_, _, err := load(t, minimalHostJSON, map[string]string{
			DefaultConnectionSetting: "Endpoint=http://localhost:8080;Authentication=Managed;ClientID=secret-client-id-123",
			SettingPort:              "70000",
			SettingEmbeddedDir:       "a?b",
		})
		wantErr(t, err, "invalid configuration", SettingPort, DefaultConnectionSetting+": Authentication must be one of")
		if err == nil {
			return
		}
		if strings.Contains(err.Error(), "secret-client-id-123") {
			t.Errorf("the error shows the ClientID: %v", err)
		}
		if strings.Contains(err.Error(), SettingEmbeddedDir) {
			t.Errorf("the embedded hub's folder is checked though the scheduler is asked for: %v", err)
		}
		if got, want := strings.Count(err.Error(), "\n"), 2; got != want {
			t.Errorf("lines in the error: got %d, want %d (a heading and one per problem):\n%v", got, want, err)
		}
	})
	t.Run("custom setting name prefixes errors", func(t *testing.T) {
		_, _, err := load(t,
			`{"version":"2.0","extensions":{"durableTask":{"storageProvider":{"type":"azureManaged","connectionStringName":"MY_DTS"}}}}`,
			map[string]string{"MY_DTS": "Endpoint=https://s.example;Authentication=None;Foo=bar"})
		wantErr(t, err, `MY_DTS: unknown key "Foo" (the keys are Endpoint, Authentication, TaskHub, ClientID, TenantId, TokenFilePath)`)
	})
}
