package config

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

const minimalHostJSON = `{"version":"2.0"}`

// appRoot returns a temporary app root holding hostJSON as its host.json.
func appRoot(t *testing.T, hostJSON string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "host.json"), []byte(hostJSON), 0o644); err != nil {
		t.Fatalf("writing host.json: %v", err)
	}
	return root
}

// fakeEnv returns a getenv reading settings, with the app root set to root.
func fakeEnv(root string, settings map[string]string) func(string) string {
	env := map[string]string{SettingAppRoot: root}
	for k, v := range settings {
		env[k] = v
	}
	return func(name string) string { return env[name] }
}

// load runs Load on an app root holding hostJSON, with settings.
func load(t *testing.T, hostJSON string, settings map[string]string) (Config, string, error) {
	t.Helper()
	root := appRoot(t, hostJSON)
	cfg, err := Load(nil, fakeEnv(root, settings))
	return cfg, root, err
}

// mustLoad is load for a configuration that must be valid.
func mustLoad(t *testing.T, hostJSON string, settings map[string]string) (Config, string) {
	t.Helper()
	cfg, root, err := load(t, hostJSON, settings)
	if err != nil {
		t.Fatalf("Load: unexpected error: %v", err)
	}
	return cfg, root
}

// wantErr checks that err is set and its message holds every one of parts.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Load: got no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("Load error does not contain %q:\n%v", p, err)
		}
	}
}

func TestLoadDefaults(t *testing.T) {
	cfg, root := mustLoad(t, minimalHostJSON, nil)

	if got, want := cfg.AppRoot, root; got != want {
		t.Errorf("AppRoot: got %v, want %v", got, want)
	}
	if got, want := cfg.Port, 7071; got != want {
		t.Errorf("Port: got %v, want %v", got, want)
	}
	if got, want := cfg.RoutePrefix, "api"; got != want {
		t.Errorf("RoutePrefix: got %q, want %q", got, want)
	}
	if got, want := cfg.LogFormat, "json"; got != want {
		t.Errorf("LogFormat: got %q, want %q", got, want)
	}
	if got, want := cfg.LogLevel, zerolog.InfoLevel; got != want {
		t.Errorf("LogLevel: got %v, want %v", got, want)
	}
	// The body limit grows with the item limit: 64 bytes an item.
	if got, want := cfg.Limits, (Limits{MaxWorkItems: 100_000, MaxItemLength: 256, MaxBodyBytes: 6_400_000, PartitionSize: 1000, ItemsPerActivity: 1, BatchConcurrency: 16}); got != want {
		t.Errorf("Limits: got %+v, want %+v", got, want)
	}
	if got, want := cfg.ItemTimeout, 5*time.Minute; got != want {
		t.Errorf("ItemTimeout: got %v, want %v", got, want)
	}
	if got, want := cfg.ShutdownGrace, 10*time.Second; got != want {
		t.Errorf("ShutdownGrace: got %v, want %v", got, want)
	}
	if got, want := cfg.Retry, (Retry{MaxAttempts: 3, FirstDelay: time.Second, Backoff: 2, MaxDelay: time.Minute}); got != want {
		t.Errorf("Retry: got %+v, want %+v", got, want)
	}

	hub := cfg.TaskHub
	if got, want := hub.Name, "default"; got != want {
		t.Errorf("TaskHub.Name: got %q, want %q", got, want)
	}
	if got, want := hub.ConnectionSetting, "DURABLE_TASK_SCHEDULER_CONNECTION_STRING"; got != want {
		t.Errorf("TaskHub.ConnectionSetting: got %q, want %q", got, want)
	}
	if hub.Scheduler != nil {
		t.Errorf("TaskHub.Scheduler: got %+v, want nil", *hub.Scheduler)
	}
	if got, want := hub.Embedded(), true; got != want {
		t.Errorf("TaskHub.Embedded(): got %v, want %v", got, want)
	}
	if got, want := hub.EmbeddedFile, filepath.Join(root, ".durabletask", "default.sqlite"); got != want {
		t.Errorf("TaskHub.EmbeddedFile: got %q, want %q", got, want)
	}
	if got, want := hub.LockTimeout, 30*time.Second; got != want {
		t.Errorf("TaskHub.LockTimeout: got %v, want %v", got, want)
	}
	if got, want := hub.MaxConcurrentActivities, DefaultConcurrency(); got != want {
		t.Errorf("TaskHub.MaxConcurrentActivities: got %v, want %v", got, want)
	}
	if got, want := hub.MaxConcurrentOrchestrations, DefaultConcurrency(); got != want {
		t.Errorf("TaskHub.MaxConcurrentOrchestrations: got %v, want %v", got, want)
	}
	if got, want := [2]int{hub.MaxPayloadBytes, hub.MaxStepBytes}, [2]int{1 << 20, 4_089_446}; got != want {
		t.Errorf("TaskHub payload and step limits: got %v, want the scheduler's %v", got, want)
	}
	if got, want := DefaultConcurrency(), 10*runtime.GOMAXPROCS(0); got != want {
		t.Errorf("DefaultConcurrency(): got %d, want 10 per processor, %d", got, want)
	}
}

func TestLoadRepositoryHostJSON(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "host.json"))
	if err != nil {
		t.Fatalf("reading the repository's host.json: %v", err)
	}
	cfg, _ := mustLoad(t, string(data), nil)
	if got, want := cfg.TaskHub.Name, "default"; got != want {
		t.Errorf("TaskHub.Name: got %q, want %q", got, want)
	}
	if got, want := cfg.RoutePrefix, "api"; got != want {
		t.Errorf("RoutePrefix: got %q, want %q", got, want)
	}
	if got, want := cfg.TaskHub.ConnectionSetting, "DURABLE_TASK_SCHEDULER_CONNECTION_STRING"; got != want {
		t.Errorf("TaskHub.ConnectionSetting: got %q, want %q", got, want)
	}
	if got, want := cfg.TaskHub.Embedded(), true; got != want {
		t.Errorf("TaskHub.Embedded(): got %v, want %v", got, want)
	}
}

func TestLoadSettingsOverrideDefaults(t *testing.T) {
	cfg, _ := mustLoad(t, minimalHostJSON, map[string]string{
		SettingPort:          "0",
		SettingLogFormat:     " Console ",
		SettingLogLevel:      "DEBUG",
		SettingMaxWorkItems:  "10000",
		SettingMaxItemLength: "12",
		SettingMaxBodyBytes:  "4096",
		SettingPartitionSize: "250",
		SettingItemsPerAct:   "100",
		SettingBatchConc:     "4",
		SettingLockTimeout:   "1s",
		SettingShutdownGrace: "2500ms",
		SettingItemTimeout:   "30s",
		SettingMaxAttempts:   "5",
		SettingRetryDelay:    "100ms",
		SettingRetryBackoff:  "1.5",
		SettingRetryMaxDelay: "2s",
	})
	if got, want := cfg.Port, 0; got != want {
		t.Errorf("Port: got %v, want %v", got, want)
	}
	if got, want := cfg.LogFormat, "console"; got != want {
		t.Errorf("LogFormat: got %q, want %q", got, want)
	}
	if got, want := cfg.LogLevel, zerolog.DebugLevel; got != want {
		t.Errorf("LogLevel: got %v, want %v", got, want)
	}
	if got, want := cfg.Limits, (Limits{MaxWorkItems: 10000, MaxItemLength: 12, MaxBodyBytes: 4096, PartitionSize: 250, ItemsPerActivity: 100, BatchConcurrency: 4}); got != want {
		t.Errorf("Limits: got %+v, want %+v", got, want)
	}
	if got, want := cfg.ItemTimeout, 30*time.Second; got != want {
		t.Errorf("ItemTimeout: got %v, want %v", got, want)
	}
	if got, want := cfg.Retry, (Retry{MaxAttempts: 5, FirstDelay: 100 * time.Millisecond, Backoff: 1.5, MaxDelay: 2 * time.Second}); got != want {
		t.Errorf("Retry: got %+v, want %+v", got, want)
	}
	if got, want := cfg.TaskHub.LockTimeout, time.Second; got != want {
		t.Errorf("TaskHub.LockTimeout: got %v, want %v", got, want)
	}
	if got, want := cfg.ShutdownGrace, 2500*time.Millisecond; got != want {
		t.Errorf("ShutdownGrace: got %v, want %v", got, want)
	}
}

func TestLoadHostJSONConcurrency(t *testing.T) {
	cfg, _ := mustLoad(t, `{"version":"2.0","extensions":{"durableTask":{
		"maxConcurrentActivityFunctions": 3,
		"maxConcurrentOrchestratorFunctions": 4}}}`, nil)
	if got, want := cfg.TaskHub.MaxConcurrentActivities, 3; got != want {
		t.Errorf("MaxConcurrentActivities: got %v, want %v", got, want)
	}
	if got, want := cfg.TaskHub.MaxConcurrentOrchestrations, 4; got != want {
		t.Errorf("MaxConcurrentOrchestrations: got %v, want %v", got, want)
	}
}

func TestLoadHubName(t *testing.T) {
	t.Run("app setting reference", func(t *testing.T) {
		cfg, root := mustLoad(t, `{"version":"2.0","extensions":{"durableTask":{"hubName":"%TASKHUB_NAME%"}}}`,
			map[string]string{"TASKHUB_NAME": "myhub"})
		if got, want := cfg.TaskHub.Name, "myhub"; got != want {
			t.Errorf("TaskHub.Name: got %q, want %q", got, want)
		}
		if got, want := cfg.TaskHub.EmbeddedFile, filepath.Join(root, ".durabletask", "myhub.sqlite"); got != want {
			t.Errorf("TaskHub.EmbeddedFile: got %q, want %q", got, want)
		}
	})
	t.Run("unset app setting", func(t *testing.T) {
		_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"hubName":"%TASKHUB_NAME%"}}}`, nil)
		wantErr(t, err, "TASKHUB_NAME", "hubName")
	})
	t.Run("literal", func(t *testing.T) {
		cfg, _ := mustLoad(t, `{"version":"2.0","extensions":{"durableTask":{"hubName":"Hub_1-a"}}}`, nil)
		if got, want := cfg.TaskHub.Name, "Hub_1-a"; got != want {
			t.Errorf("TaskHub.Name: got %q, want %q", got, want)
		}
	})
	for _, name := range []string{"../x", "a b", "-leading", strings.Repeat("h", 65)} {
		t.Run("invalid "+name, func(t *testing.T) {
			_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"hubName":"`+name+`"}}}`, nil)
			wantErr(t, err, "valid task hub name", `"`+name+`"`)
		})
	}
	// The error names where the name came from, never an app setting's
	// value: a mistyped %SETTING% may name a secret.
	t.Run("invalid after expansion", func(t *testing.T) {
		secret := "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=SECRETKEY=="
		_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"hubName":"%AzureWebJobsStorage%"}}}`,
			map[string]string{"AzureWebJobsStorage": secret})
		wantErr(t, err, "valid task hub name", `"%AzureWebJobsStorage%"`)
		if strings.Contains(err.Error(), "SECRETKEY") {
			t.Errorf("the error shows the setting's value: %v", err)
		}
	})
	t.Run("empty", func(t *testing.T) {
		_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"hubName":""}}}`, nil)
		wantErr(t, err, "hubName is empty")
	})
}

func TestLoadRoutePrefix(t *testing.T) {
	for _, tc := range []struct{ name, prefix, want string }{
		{"empty", "", ""},
		{"slash", "/", ""},
		{"slashes around", "/v1/", "v1"},
		{"plain", "v1", "v1"},
		{"two segments", "api/v2", "api/v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := mustLoad(t, `{"version":"2.0","extensions":{"http":{"routePrefix":"`+tc.prefix+`"}}}`, nil)
			if got, want := cfg.RoutePrefix, tc.want; got != want {
				t.Errorf("RoutePrefix for %q: got %q, want %q", tc.prefix, got, want)
			}
		})
	}
	for _, prefix := range []string{"{x}", "api//v1", "a b"} {
		t.Run("invalid "+prefix, func(t *testing.T) {
			_, _, err := load(t, `{"version":"2.0","extensions":{"http":{"routePrefix":"`+prefix+`"}}}`, nil)
			wantErr(t, err, "routePrefix", `"`+prefix+`"`)
		})
	}
}

func TestLoadConnectionString(t *testing.T) {
	const custom = `{"version":"2.0","extensions":{"durableTask":{"storageProvider":{"type":"azureManaged","connectionStringName":"MY_DTS"}}}}`
	const value = "Endpoint=https://x.durabletask.io;Authentication=ManagedIdentity"

	for _, tc := range []struct {
		name         string
		hostJSON     string
		settings     map[string]string
		wantSetting  string
		wantEndpoint string // "" for the embedded hub
	}{
		{
			name:        "default setting unset",
			hostJSON:    minimalHostJSON,
			wantSetting: DefaultConnectionSetting,
		},
		{
			name:         "default setting set",
			hostJSON:     minimalHostJSON,
			settings:     map[string]string{DefaultConnectionSetting: value},
			wantSetting:  DefaultConnectionSetting,
			wantEndpoint: "https://x.durabletask.io",
		},
		{
			name:         "custom setting set",
			hostJSON:     custom,
			settings:     map[string]string{"MY_DTS": "  " + value + "\n", DefaultConnectionSetting: "other"},
			wantSetting:  "MY_DTS",
			wantEndpoint: "https://x.durabletask.io",
		},
		{
			name:        "custom setting unset ignores the default one",
			hostJSON:    custom,
			settings:    map[string]string{DefaultConnectionSetting: value},
			wantSetting: "MY_DTS",
		},
		{
			name:        "custom setting whitespace only",
			hostJSON:    custom,
			settings:    map[string]string{"MY_DTS": " \t\n"},
			wantSetting: "MY_DTS",
		},
		{
			name:         "storage provider type in another case",
			hostJSON:     `{"version":"2.0","extensions":{"durableTask":{"storageProvider":{"type":"AzureManaged"}}}}`,
			settings:     map[string]string{DefaultConnectionSetting: value},
			wantSetting:  DefaultConnectionSetting,
			wantEndpoint: "https://x.durabletask.io",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := mustLoad(t, tc.hostJSON, tc.settings)
			hub := cfg.TaskHub
			if got, want := hub.ConnectionSetting, tc.wantSetting; got != want {
				t.Errorf("ConnectionSetting: got %q, want %q", got, want)
			}
			if got, want := hub.Embedded(), tc.wantEndpoint == ""; got != want {
				t.Errorf("Embedded(): got %v, want %v", got, want)
			}
			if got, want := hub.Embedded(), hub.Scheduler == nil; got != want {
				t.Errorf("Embedded(): got %v, want %v (Scheduler == nil)", got, want)
			}
			if hub.Scheduler == nil {
				return
			}
			if got, want := hub.Scheduler.Endpoint, tc.wantEndpoint; got != want {
				t.Errorf("Scheduler.Endpoint: got %q, want %q", got, want)
			}
			if got, want := hub.Scheduler.Auth, AuthManagedIdentity; got != want {
				t.Errorf("Scheduler.Auth: got %q, want %q", got, want)
			}
		})
	}
}

func TestLoadEmbeddedDir(t *testing.T) {
	t.Run("relative", func(t *testing.T) {
		cfg, root := mustLoad(t, minimalHostJSON, map[string]string{SettingEmbeddedDir: filepath.Join("data", "hub")})
		if got, want := cfg.TaskHub.EmbeddedFile, filepath.Join(root, "data", "hub", "default.sqlite"); got != want {
			t.Errorf("EmbeddedFile: got %q, want %q", got, want)
		}
	})
	t.Run("absolute", func(t *testing.T) {
		dir := t.TempDir()
		cfg, _ := mustLoad(t, minimalHostJSON, map[string]string{SettingEmbeddedDir: dir})
		if got, want := cfg.TaskHub.EmbeddedFile, filepath.Join(dir, "default.sqlite"); got != want {
			t.Errorf("EmbeddedFile: got %q, want %q", got, want)
		}
	})
	for _, dir := range []string{"state?mode=memory", "state#x", "state%20x"} {
		t.Run("rejects "+dir, func(t *testing.T) {
			_, _, err := load(t, minimalHostJSON, map[string]string{SettingEmbeddedDir: dir})
			wantErr(t, err, SettingEmbeddedDir, dir, "may not contain '?', '#' or '%'")
		})
	}
}

func TestLoadRelativeAppRoot(t *testing.T) {
	root := appRoot(t, minimalHostJSON)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, root)
	if err != nil {
		t.Skipf("temp dir not reachable relative to %s: %v", wd, err)
	}
	cfg, err := Load(nil, fakeEnv(rel, nil))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := cfg.AppRoot, root; got != want {
		t.Errorf("AppRoot: got %q, want %q", got, want)
	}
}

func TestLoadHostJSONErrors(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		root := t.TempDir()
		_, err := Load(nil, fakeEnv(root, nil))
		wantErr(t, err, "host.json", root, SettingAppRoot)
	})
	t.Run("invalid JSON", func(t *testing.T) {
		_, _, err := load(t, "{\n  \"version\": \"2.0\",\n  \"extensions\": {\n    \"http\": {\"routePrefix\": \"api\",}\n  }\n}\n", nil)
		wantErr(t, err, "host.json line 4:")
	})
	t.Run("invalid JSON on the first line", func(t *testing.T) {
		_, _, err := load(t, `{"version": 2.0,,}`, nil)
		wantErr(t, err, "host.json line 1:")
	})
	t.Run("truncated", func(t *testing.T) {
		_, _, err := load(t, "{\n  \"version\": \"2.0\",\n", nil)
		wantErr(t, err, "host.json")
	})
	t.Run("maxConcurrentActivityFunctions as a string", func(t *testing.T) {
		_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"maxConcurrentActivityFunctions":"8"}}}`, nil)
		wantErr(t, err, "maxConcurrentActivityFunctions", "whole number", "string")
	})
	t.Run("maxConcurrentOrchestratorFunctions zero", func(t *testing.T) {
		_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"maxConcurrentOrchestratorFunctions":0}}}`, nil)
		wantErr(t, err, "maxConcurrentOrchestratorFunctions is 0", "from 1 to 10000")
	})
	t.Run("maxConcurrentActivityFunctions negative", func(t *testing.T) {
		_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"maxConcurrentActivityFunctions":-2}}}`, nil)
		wantErr(t, err, "maxConcurrentActivityFunctions is -2", "from 1 to 10000")
	})
	// Past int32, the value would wrap when handed to the worker.
	t.Run("maxConcurrentActivityFunctions huge", func(t *testing.T) {
		_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"maxConcurrentActivityFunctions":3000000000}}}`, nil)
		wantErr(t, err, "maxConcurrentActivityFunctions is 3000000000", "from 1 to 10000")
	})
	t.Run("storage provider AzureStorage", func(t *testing.T) {
		_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{"storageProvider":{"type":"AzureStorage"}}}}`, nil)
		wantErr(t, err, "storageProvider.type", `"AzureStorage"`, "azureManaged")
	})
}

// The lock timeout bounds only how long a dead process's items wait: work
// that runs longer than it, simulated or not, is no reason to refuse it.
func TestLockTimeoutShorterThanTheWorkIsAccepted(t *testing.T) {
	cfg, _ := mustLoad(t, minimalHostJSON, map[string]string{
		SettingLockTimeout: "1s",
		SettingItemTimeout: "20s",
	})
	if got, want := cfg.TaskHub.LockTimeout, time.Second; got != want {
		t.Errorf("TaskHub.LockTimeout: got %v, want %v", got, want)
	}
}

func TestLoadSettingErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings map[string]string
		want     []string
	}{
		{"max work items zero", map[string]string{SettingMaxWorkItems: "0"},
			[]string{SettingMaxWorkItems, `"0"`, "from 1 to 1000000"}},
		{"max work items above the ceiling", map[string]string{SettingMaxWorkItems: "1000001"},
			[]string{SettingMaxWorkItems, `"1000001"`, "from 1 to 1000000"}},
		{"partition size above what one step can schedule", map[string]string{SettingPartitionSize: "10001"},
			[]string{SettingPartitionSize, `"10001"`, "from 1 to 10000"}},
		{"scheduler payload limit too small", map[string]string{SettingMaxPayload: "1000"},
			[]string{SettingMaxPayload, "from 16384"}},
		{"max work items not a number", map[string]string{SettingMaxWorkItems: "abc"},
			[]string{SettingMaxWorkItems, `"abc"`, "whole number"}},
		{"max body bytes too small", map[string]string{SettingMaxBodyBytes: "1"},
			[]string{SettingMaxBodyBytes, `"1"`}},
		{"item timeout not a duration", map[string]string{SettingItemTimeout: "soon"},
			[]string{SettingItemTimeout, `"soon"`, "duration"}},
		{"negative item timeout", map[string]string{SettingItemTimeout: "-1s"},
			[]string{SettingItemTimeout, `"-1s"`}},
		{"lock timeout under a second", map[string]string{SettingLockTimeout: "500ms"},
			[]string{SettingLockTimeout, "at least 1s"}},
		{"shutdown grace under a second", map[string]string{SettingShutdownGrace: "500ms"},
			[]string{SettingShutdownGrace, "500ms", "at least 1s"}},
		{"shutdown grace not a duration", map[string]string{SettingShutdownGrace: "10"},
			[]string{SettingShutdownGrace, `"10"`, "duration"}},
		{"item timeout zero", map[string]string{SettingItemTimeout: "0"},
			[]string{SettingItemTimeout, "is 0"}},
		{"no attempts", map[string]string{SettingMaxAttempts: "0"},
			[]string{SettingMaxAttempts, `"0"`, "from 1 to 100"}},
		{"backoff below one", map[string]string{SettingRetryBackoff: "0.5"},
			[]string{SettingRetryBackoff, `"0.5"`, "from 1 to 10"}},
		{"backoff not a number", map[string]string{SettingRetryBackoff: "NaN"},
			[]string{SettingRetryBackoff, `"NaN"`}},
		{"first retry after the longest", map[string]string{SettingRetryDelay: "2m"},
			[]string{SettingRetryDelay, SettingRetryMaxDelay, "is longer than"}},
		{"log format xml", map[string]string{SettingLogFormat: "xml"},
			[]string{SettingLogFormat, `"xml"`, "json, console"}},
		{"log level fatal", map[string]string{SettingLogLevel: "fatal"},
			[]string{SettingLogLevel, `"fatal"`, "trace, debug, info, warn, error"}},
		{"log level loud", map[string]string{SettingLogLevel: "loud"},
			[]string{SettingLogLevel, `"loud"`, "trace, debug, info, warn, error"}},
		{"port out of range", map[string]string{SettingPort: "70000"},
			[]string{SettingPort, `"70000"`, "from 0 to 65535"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := load(t, minimalHostJSON, tc.settings)
			wantErr(t, err, tc.want...)
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, _, err := load(t, `{"version":"2.0","extensions":{"durableTask":{
		"hubName": "../x",
		"maxConcurrentOrchestratorFunctions": 0,
		"storageProvider": {"type": "AzureStorage"}}}}`,
		map[string]string{
			SettingPort:         "70000",
			SettingLogFormat:    "xml",
			SettingLogLevel:     "loud",
			SettingMaxWorkItems: "abc",
			SettingEmbeddedDir:  "a?b",
		})
	wantErr(t, err,
		"invalid configuration",
		SettingPort,
		SettingLogFormat,
		SettingLogLevel,
		SettingMaxWorkItems,
		SettingEmbeddedDir,
		"task hub name",
		"maxConcurrentOrchestratorFunctions",
		"azureManaged",
	)
	if err != nil {
		if got, want := strings.Count(err.Error(), "\n"), 8; got != want {
			t.Errorf("lines in the error: got %d, want %d (a heading and one per problem):\n%v", got, want, err)
		}
	}
}

func TestLoadUnexpectedArguments(t *testing.T) {
	root := appRoot(t, minimalHostJSON)
	_, err := Load([]string{"--port", "8080"}, fakeEnv(root, nil))
	wantErr(t, err, "unexpected arguments", "--port", "app settings")
}

// The app's own settings, read through the Parser Load hands it, are
// reported in the one list of problems.
func TestAppSettingsAreReportedWithTheRest(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "host.json"), []byte(minimalHostJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{SettingAppRoot: dir, SettingPort: "70000", "APP_PATTERN": "a[", "APP_DELAY": "2s"}
	var delay time.Duration
	_, err := Load(nil, func(k string) string { return env[k] }, func(p *Parser) {
		p.Pattern("APP_PATTERN")
		delay = p.Duration("APP_DELAY", time.Second)
		if n := p.Int("APP_COUNT", 3, 1, 5); n != 3 {
			p.Fail("APP_COUNT is %d, want the default", n)
		}
	})
	wantErr(t, err, SettingPort, "APP_PATTERN", `"a["`, "regular expression")
	if delay != 2*time.Second {
		t.Errorf("APP_DELAY read as %v", delay)
	}
}
