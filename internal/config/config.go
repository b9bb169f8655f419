// Package config reads and validates, once at start, everything the handler
// is configured by: host.json (as Durable Functions users write it) and the
// app settings, which the Functions host passes as environment variables.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"fanoutfanin/internal/jsonfile"
)

// Config is the validated configuration of one handler process.
type Config struct {
	AppRoot     string // folder holding host.json and the function folders
	Port        int    // 0 picks a free port
	RoutePrefix string // "api" unless host.json says otherwise; no slashes
	LogFormat   string // "json" or "console"
	LogLevel    zerolog.Level
	Limits      Limits
	// ItemTimeout bounds each attempt at an item.
	ItemTimeout time.Duration
	Retry       Retry
	TaskHub     TaskHub
	Telemetry   Telemetry

	// ShutdownGrace is all the time a stop signal leaves the handler: to
	// finish the calls and the work in flight, then hand back the rest.
	ShutdownGrace time.Duration
}

// Limits bound what one start request may ask for, and how its work is
// split.
type Limits struct {
	MaxWorkItems  int
	MaxItemLength int // in characters
	MaxBodyBytes  int64
	PartitionSize int // items one orchestration runs itself
	// ItemsPerActivity is how many items one work activity runs unless a
	// start says otherwise; BatchConcurrency how many of them at once.
	ItemsPerActivity, BatchConcurrency int
}

// Retry is how a failed item is tried again: up to
// MaxAttempts attempts in all, the first retry after FirstDelay, each
// later one Backoff times longer than the one before, never more than
// MaxDelay.
type Retry struct {
	MaxAttempts int
	FirstDelay  time.Duration
	Backoff     float64
	MaxDelay    time.Duration
}

// TaskHub says which durable task hub to run on and how hard to drive it.
type TaskHub struct {
	Name string
	// ConnectionSetting names the app setting holding the scheduler connection
	// string; Scheduler is what it says, nil when it is empty, which selects
	// the embedded hub. The string itself may hold a secret and is not kept.
	ConnectionSetting string
	Scheduler         *Scheduler
	// EmbeddedFile is the SQLite file of the embedded hub.
	EmbeddedFile string
	// LockTimeout is how long a work item stays locked to a process that
	// stopped renewing it: a live process renews its locks while the work
	// runs, however long; after a crash the work resumes once they expire.
	LockTimeout                 time.Duration
	MaxConcurrentActivities     int
	MaxConcurrentOrchestrations int
	// The scheduler's limits on each payload and each orchestrator step:
	// the worker never sends more, and larger inputs are split.
	MaxPayloadBytes, MaxStepBytes int
}

// Embedded reports whether the hub runs in-process on SQLite.
func (t TaskHub) Embedded() bool { return t.Scheduler == nil }

// The app settings this package reads, besides the connection string whose
// name host.json gives.
const (
	SettingPort          = "FUNCTIONS_CUSTOMHANDLER_PORT"
	SettingAppRoot       = "FUNCTIONS_APP_ROOT_PATH"
	SettingLogFormat     = "FANOUT_LOG_FORMAT"
	SettingLogLevel      = "FANOUT_LOG_LEVEL"
	SettingMaxWorkItems  = "FANOUT_MAX_WORK_ITEMS"
	SettingMaxItemLength = "FANOUT_MAX_ITEM_LENGTH"
	SettingMaxBodyBytes  = "FANOUT_MAX_BODY_BYTES"
	SettingPartitionSize = "FANOUT_PARTITION_SIZE"
	SettingItemsPerAct   = "FANOUT_ITEMS_PER_ACTIVITY"
	SettingBatchConc     = "FANOUT_BATCH_CONCURRENCY"
	SettingMaxPayload    = "FANOUT_SCHEDULER_MAX_PAYLOAD_BYTES"
	SettingMaxStep       = "FANOUT_SCHEDULER_MAX_STEP_BYTES"
	SettingItemTimeout   = "FANOUT_ITEM_TIMEOUT"
	SettingMaxAttempts   = "FANOUT_ITEM_MAX_ATTEMPTS"
	SettingRetryDelay    = "FANOUT_ITEM_RETRY_DELAY"
	SettingRetryBackoff  = "FANOUT_ITEM_RETRY_BACKOFF"
	SettingRetryMaxDelay = "FANOUT_ITEM_RETRY_MAX_DELAY"
	SettingEmbeddedDir   = "FANOUT_EMBEDDED_DIR"
	SettingLockTimeout   = "FANOUT_EMBEDDED_LOCK_TIMEOUT"
	SettingShutdownGrace = "FANOUT_SHUTDOWN_GRACE"
)

// Defaults, where neither host.json nor an app setting says otherwise.
const (
	DefaultPort              = 7071
	DefaultRoutePrefix       = "api"
	DefaultHubName           = "default"
	DefaultConnectionSetting = "DURABLE_TASK_SCHEDULER_CONNECTION_STRING"
	DefaultEmbeddedDir       = ".durabletask"
	DefaultMaxItemLength     = 256
	DefaultMaxBodyBytes      = 1 << 20
	DefaultLockTimeout       = 30 * time.Second
	DefaultItemTimeout       = 5 * time.Minute
	DefaultMaxAttempts       = 3
	DefaultRetryDelay        = time.Second
	DefaultRetryBackoff      = 2.0
	DefaultRetryMaxDelay     = time.Minute
	MaxAttempts              = 100

	// DefaultShutdownGrace lets the default simulated work (2 s at most)
	// finish with room to spare.
	DefaultShutdownGrace = 10 * time.Second
	// MinShutdownGrace leaves time to hand back the work still running.
	MinShutdownGrace = time.Second

	DefaultMaxWorkItems = 100_000
	MaxWorkItems        = 1_000_000
	// bodyBytesPerItem grows the default body limit with the item limit:
	// room for items of a few dozen characters.
	bodyBytesPerItem = 64

	// DefaultPartitionSize: see fanout.DefaultPartitionSize. At most
	// MaxPartitionSize, as the embedded SQLite backend fails to schedule
	// much more than 10,900 activities in one step.
	DefaultPartitionSize = 1000
	MaxPartitionSize     = 10_000

	// Items per work activity: see fanout.MaxItemsPerActivity and
	// fanout.DefaultBatchConcurrency.
	MaxItemsPerActivity     = 1000
	DefaultBatchConcurrency = 16

	// The Durable Task Scheduler's limits: each payload, and each
	// orchestrator step's completion message (the official SDKs' bound,
	// below DTS's 4 MB).
	DefaultMaxPayloadBytes = 1 << 20
	DefaultMaxStepBytes    = 4_089_446

	// MaxConcurrency bounds the host.json concurrency limits; each unit is a
	// goroutine that may hold a work item.
	MaxConcurrency = 10000
)

// DefaultConcurrency is the default for both host.json limits: what Durable
// Functions uses on Premium and Dedicated plans, 10 per processor.
func DefaultConcurrency() int { return 10 * runtime.GOMAXPROCS(0) }

var (
	hubNamePattern     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	routePrefixPattern = regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$`)
)

// Load reads host.json from the app root (FUNCTIONS_APP_ROOT_PATH, else the
// working directory) and the app settings through getenv. Every problem found
// is reported, not just the first.
//
// app reads the app's own settings through the same Parser, so that their
// problems are reported with the rest.
func Load(args []string, getenv func(string) string, app ...func(*Parser)) (Config, error) {
	if len(args) > 0 {
		return Config{}, fmt.Errorf("unexpected arguments %q: the handler is configured by host.json and app settings (environment variables), see docs/configuration.md", args)
	}
	root, err := findAppRoot(getenv)
	if err != nil {
		return Config{}, err
	}
	host, err := readHostJSON(filepath.Join(root, "host.json"))
	if err != nil {
		return Config{}, err
	}
	p := Parser{getenv: getenv}
	cfg := Config{
		AppRoot:       root,
		Port:          p.Int(SettingPort, DefaultPort, 0, 65535),
		LogFormat:     p.oneOf(SettingLogFormat, "json", "json", "console"),
		LogLevel:      p.level(SettingLogLevel),
		Limits:        p.limits(),
		ItemTimeout:   p.itemTimeout(),
		Retry:         p.retry(),
		ShutdownGrace: p.shutdownGrace(),
		RoutePrefix:   p.routePrefix(host),
		TaskHub:       p.taskHub(host.Extensions.DurableTask, root),
		Telemetry:     p.telemetry(),
	}
	for _, read := range app {
		read(&p)
	}
	if err := errors.Join(p.errs...); err != nil {
		return Config{}, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

// findAppRoot is FUNCTIONS_APP_ROOT_PATH, else the working directory.
func findAppRoot(getenv func(string) string) (string, error) {
	root := getenv(SettingAppRoot)
	if root == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("finding the app root: %w", err)
		}
		root = wd
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return "", fmt.Errorf("finding the app root: %w", err)
	}
	return root, nil
}

// limits reads what one start may ask for, and how its work is split.
func (p *Parser) limits() Limits {
	l := Limits{
		MaxWorkItems:     p.Int(SettingMaxWorkItems, DefaultMaxWorkItems, 1, MaxWorkItems),
		MaxItemLength:    p.Int(SettingMaxItemLength, DefaultMaxItemLength, 1, 1<<16),
		PartitionSize:    p.Int(SettingPartitionSize, DefaultPartitionSize, 1, MaxPartitionSize),
		ItemsPerActivity: p.Int(SettingItemsPerAct, 1, 1, MaxItemsPerActivity),
		BatchConcurrency: p.Int(SettingBatchConc, DefaultBatchConcurrency, 1, MaxItemsPerActivity),
	}
	l.MaxBodyBytes = int64(p.Int(SettingMaxBodyBytes, max(DefaultMaxBodyBytes, bodyBytesPerItem*l.MaxWorkItems), 2, 1<<30))
	return l
}

// itemTimeout reads how long one attempt at an item may take.
func (p *Parser) itemTimeout() time.Duration {
	d := p.Duration(SettingItemTimeout, DefaultItemTimeout)
	if d == 0 {
		p.Fail("%s is 0: an attempt needs some time; give a duration such as 30s", SettingItemTimeout)
	}
	return d
}

// retry reads how failed items are tried again.
func (p *Parser) retry() Retry {
	r := Retry{
		MaxAttempts: p.Int(SettingMaxAttempts, DefaultMaxAttempts, 1, MaxAttempts),
		FirstDelay:  p.Duration(SettingRetryDelay, DefaultRetryDelay),
		Backoff:     p.float(SettingRetryBackoff, DefaultRetryBackoff, 1, 10),
		MaxDelay:    p.Duration(SettingRetryMaxDelay, DefaultRetryMaxDelay),
	}
	if r.FirstDelay > r.MaxDelay {
		p.Fail("%s (%s) is longer than %s (%s)", SettingRetryDelay, r.FirstDelay, SettingRetryMaxDelay, r.MaxDelay)
	}
	return r
}

// shutdownGrace reads how long a stop signal leaves the handler.
func (p *Parser) shutdownGrace() time.Duration {
	d := p.Duration(SettingShutdownGrace, DefaultShutdownGrace)
	if d < MinShutdownGrace {
		p.Fail("%s is %s: it must be at least %s", SettingShutdownGrace, d, MinShutdownGrace)
	}
	return d
}

// routePrefix reads host.json's extensions.http.routePrefix.
func (p *Parser) routePrefix(host hostJSON) string {
	prefix := host.Extensions.HTTP.RoutePrefix
	if prefix == nil {
		return DefaultRoutePrefix
	}
	trimmed := strings.Trim(*prefix, "/")
	if trimmed != "" && !routePrefixPattern.MatchString(trimmed) {
		p.Fail("host.json extensions.http.routePrefix %q: use letters, digits, '-', '_' and '.' between slashes", *prefix)
	}
	return trimmed
}

// taskHub reads which task hub to run on, from host.json's
// extensions.durableTask (dt) and the app settings; root is the app root.
func (p *Parser) taskHub(dt durableTaskJSON, root string) TaskHub {
	hub := TaskHub{
		Name:                        DefaultHubName,
		ConnectionSetting:           DefaultConnectionSetting,
		LockTimeout:                 p.Duration(SettingLockTimeout, DefaultLockTimeout),
		MaxConcurrentActivities:     DefaultConcurrency(),
		MaxConcurrentOrchestrations: DefaultConcurrency(),
		MaxPayloadBytes:             p.Int(SettingMaxPayload, DefaultMaxPayloadBytes, 16<<10, 64<<20),
		MaxStepBytes:                p.Int(SettingMaxStep, DefaultMaxStepBytes, 64<<10, 256<<20),
	}
	hubNameValid := false // host.json gives a hub name, and a valid one
	if dt.HubName != nil {
		if *dt.HubName == "" {
			p.Fail("host.json extensions.durableTask.hubName is empty")
		}
		hub.Name = p.expandSettings("host.json extensions.durableTask.hubName", *dt.HubName)
		hubNameValid = hubNamePattern.MatchString(hub.Name)
		if hub.Name != "" && !hubNameValid {
			// Not the value: an app setting it came from may hold a secret.
			p.Fail("host.json extensions.durableTask.hubName %q does not give a valid task hub name: use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit", *dt.HubName)
		}
	}
	if t := dt.StorageProvider.Type; t != "" && !strings.EqualFold(t, "azureManaged") {
		p.Fail("host.json extensions.durableTask.storageProvider.type is %q: this app runs on the Durable Task Scheduler (\"azureManaged\"), or on its embedded task hub when the connection string is empty", t)
	}
	if name := dt.StorageProvider.ConnectionStringName; name != "" {
		hub.ConnectionSetting = name
	}
	connection := p.scheduler(&hub, dt, hubNameValid)
	if n := dt.MaxConcurrentActivityFunctions; n != nil {
		hub.MaxConcurrentActivities = p.limit("host.json extensions.durableTask.maxConcurrentActivityFunctions", *n)
	}
	if n := dt.MaxConcurrentOrchestratorFunctions; n != nil {
		hub.MaxConcurrentOrchestrations = p.limit("host.json extensions.durableTask.maxConcurrentOrchestratorFunctions", *n)
	}
	dir := p.getenv(SettingEmbeddedDir)
	if dir == "" {
		dir = DefaultEmbeddedDir
	}
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(root, dir)
	}
	if connection == "" && strings.ContainsAny(dir, "?#%") {
		// The path becomes part of a SQLite URI, where '?' and '#' end the
		// path and '%' starts an escape.
		p.Fail("%s %q: the path may not contain '?', '#' or '%%'", SettingEmbeddedDir, dir)
	}
	hub.EmbeddedFile = filepath.Join(dir, hub.Name+".sqlite")
	// Embedded only: the scheduler's leases belong to the worker's stream.
	if connection == "" {
		// A live worker renews its locks while the work runs, so the
		// timeout bounds only how long a dead worker's items wait; it is
		// renewed every third of it.
		if hub.LockTimeout < time.Second {
			p.Fail("%s is %s: it must be at least 1s", SettingLockTimeout, hub.LockTimeout)
		}
	}
	return hub
}

// scheduler reads the connection string that host.json names, if set, into
// hub, and returns it.
func (p *Parser) scheduler(hub *TaskHub, dt durableTaskJSON, hubNameValid bool) string {
	connection := strings.TrimSpace(p.getenv(hub.ConnectionSetting))
	if connection != "" {
		var taskHub string
		var errs []error
		hub.Scheduler, taskHub, errs = parseScheduler(hub.ConnectionSetting, connection)
		p.errs = append(p.errs, errs...)
		// Durable Functions writes the string without TaskHub and takes the
		// hub from host.json; the SDKs take it from the string. Either may
		// name it, but two different names would leave the user guessing
		// which hub the app runs on.
		switch {
		case taskHub == "":
			// Absent (or invalid, and reported): host.json's name stands.
		case dt.HubName == nil:
			hub.Name = taskHub
		case hubNameValid && !strings.EqualFold(taskHub, hub.Name):
			from := ""
			if *dt.HubName != hub.Name {
				from = fmt.Sprintf(" (%q)", *dt.HubName)
			}
			p.Fail("%s: the connection string's TaskHub is %q but host.json extensions.durableTask.hubName%s gives %q: make them the same or remove TaskHub from the connection string",
				hub.ConnectionSetting, taskHub, from, hub.Name)
		}
	}
	return connection
}

// hostJSON is the part of host.json this app reads. Property names match
// case-insensitively, as the Functions host matches them.
type hostJSON struct {
	Extensions struct {
		HTTP struct {
			RoutePrefix *string `json:"routePrefix"`
		} `json:"http"`
		DurableTask durableTaskJSON `json:"durableTask"`
	} `json:"extensions"`
}

// durableTaskJSON is host.json's extensions.durableTask.
type durableTaskJSON struct {
	HubName         *string `json:"hubName"`
	StorageProvider struct {
		Type                 string `json:"type"`
		ConnectionStringName string `json:"connectionStringName"`
	} `json:"storageProvider"`
	MaxConcurrentActivityFunctions     *int `json:"maxConcurrentActivityFunctions"`
	MaxConcurrentOrchestratorFunctions *int `json:"maxConcurrentOrchestratorFunctions"`
}

func readHostJSON(path string) (hostJSON, error) {
	var h hostJSON
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return h, fmt.Errorf("no host.json in %s: run the handler from the function app's folder or set %s", filepath.Dir(path), SettingAppRoot)
	} else if err != nil {
		return h, fmt.Errorf("reading host.json: %w", err)
	}
	return h, jsonfile.Decode("host.json", data, &h)
}

// Parser reads app settings, collecting every error instead of stopping at
// one.
type Parser struct {
	getenv func(string) string
	errs   []error
}

// Fail reports a problem.
func (p *Parser) Fail(format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf(format, args...))
}

// Int reads a whole number from min to max; def if unset.
func (p *Parser) Int(name string, def, min, max int) int {
	s := strings.TrimSpace(p.getenv(name))
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > max {
		p.Fail("%s is %q: it must be a whole number from %d to %d", name, s, min, max)
		return def
	}
	return n
}

func (p *Parser) limit(what string, n int) int {
	if n < 1 || n > MaxConcurrency {
		p.Fail("%s is %d: it must be from 1 to %d", what, n, MaxConcurrency)
	}
	return n
}

// Duration reads a duration of 0 or more; def if unset.
func (p *Parser) Duration(name string, def time.Duration) time.Duration {
	s := strings.TrimSpace(p.getenv(name))
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		p.Fail("%s is %q: it must be a duration such as 500ms, 2s or 0", name, s)
		return def
	}
	return d
}

func (p *Parser) float(name string, def, min, max float64) float64 {
	s := strings.TrimSpace(p.getenv(name))
	if s == "" {
		return def
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f >= min && f <= max) {
		p.Fail("%s is %q: it must be a number from %g to %g", name, s, min, max)
		return def
	}
	return f
}

// Pattern reads a regular expression that must match a whole string; nil
// if unset.
func (p *Parser) Pattern(name string) *regexp.Regexp {
	s := p.getenv(name)
	if s == "" {
		return nil
	}
	re, err := regexp.Compile(`^(?:` + s + `)$`)
	if err != nil {
		p.Fail("%s is %q: it must be a regular expression (Go syntax): %v", name, s, err)
		return nil
	}
	return re
}

func (p *Parser) oneOf(name, def string, allowed ...string) string {
	s := strings.ToLower(strings.TrimSpace(p.getenv(name)))
	if s == "" {
		return def
	}
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	p.Fail("%s is %q: it must be one of %s", name, s, strings.Join(allowed, ", "))
	return def
}

func (p *Parser) level(name string) zerolog.Level {
	l, _ := zerolog.ParseLevel(p.oneOf(name, "info", "trace", "debug", "info", "warn", "error"))
	return l
}

var settingRef = regexp.MustCompile(`%([^%]+)%`)

// expandSettings replaces each %NAME% in s with the app setting NAME, as the
// Functions host does in host.json.
func (p *Parser) expandSettings(what, s string) string {
	return settingRef.ReplaceAllStringFunc(s, func(ref string) string {
		name := strings.Trim(ref, "%")
		v := p.getenv(name)
		if v == "" {
			p.Fail("%s is %q, but app setting %s is not set", what, s, name)
		}
		return v
	})
}
