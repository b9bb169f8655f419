// Package app assembles the handler from its configuration: the fan-out
// engine, the task hub (openHub is the one place the backend is chosen),
// the functions and the host protocol, served over HTTP.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"

	"fanoutfanin/functions"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/customhandler"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/logging"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/embedded"
	"fanoutfanin/internal/taskhub/scheduler"
	"fanoutfanin/internal/telemetry"
)

// ErrStoppedAtOnce is Run's error when a second signal cut the graceful stop
// short.
var ErrStoppedAtOnce = errors.New("stopped at once by a second signal")

// gcPercent is the garbage collector's target unless GOGC says otherwise;
// see BENCHMARKS.md.
const gcPercent = 400

// Run runs the handler: it reads the configuration through getenv, opens the
// task hub, and serves the functions on the configured port until a signal
// arrives on stop. It then stops within the shutdown grace period (see
// shutdown); a second signal makes it return ErrStoppedAtOnce at once.
func Run(stop <-chan os.Signal, args []string, getenv func(string) string, stdout io.Writer) error {
	var fanouts []functions.Registration
	cfg, err := config.Load(args, getenv, func(p *config.Parser) { fanouts = functions.ReadFanouts(p) })
	if err != nil {
		return err
	}
	if getenv("GOGC") == "" {
		// Every orchestrator step replays its history: much is allocated and
		// little kept. Collecting less eagerly than Go's default (100) cuts
		// the worker's CPU by a third to a half, for some tens of MB more.
		debug.SetGCPercent(gcPercent)
	}
	logOut := logging.Writer(stdout, cfg.LogFormat)
	log := logging.New(logOut, cfg.LogLevel)

	// Loopback only: the Functions host always calls 127.0.0.1, and a port
	// reachable from elsewhere would bypass the host's function keys.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("listening on port %d (set %s to use another): %w", cfg.Port, config.SettingPort, err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	ctx := context.Background()
	a, err := Open(ctx, cfg, fanouts, log, logOut)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: a.Handler, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info().Int("port", port).Str("url", fmt.Sprintf("http://localhost:%d/%s", port, cfg.RoutePrefix)).Msg("listening")

	select {
	case err := <-served:
		closeCtx, cancel := context.WithTimeout(ctx, cfg.ShutdownGrace)
		defer cancel()
		return errors.Join(err, a.Close(closeCtx))
	case sig := <-stop:
		log.Info().Str("signal", sig.String()).Str("gracePeriod", cfg.ShutdownGrace.String()).
			Msg("shutting down: finishing the work in flight (a second signal stops at once)")
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		shutdown(srv, a, cfg.ShutdownGrace, log)
	}()
	select {
	case <-stopped:
		log.Info().Msg("stopped")
		return nil
	case sig := <-stop:
		// Nothing is handed back: the process ends now, and its work runs
		// again once its locks expire (the scheduler's: once its stream
		// closes).
		log.Warn().Str("signal", sig.String()).Msg("second signal: stopping at once; work in flight is not handed back")
		return ErrStoppedAtOnce
	}
}

// shutdown stops srv taking calls, lets the calls and the work in flight
// finish, then hands back what is left, all within grace. Calls have three
// quarters of it at most, so that a call that hangs leaves the task hub time
// to hand its work back.
func shutdown(srv *http.Server, a *App, grace time.Duration, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	calls, cancelCalls := context.WithTimeout(ctx, grace*3/4)
	defer cancelCalls()
	if err := srv.Shutdown(calls); err != nil {
		log.Warn().Err(err).Msg("calls still running in the shutdown grace period were cut off")
		srv.Close()
	}
	if err := a.Close(ctx); err != nil {
		log.Warn().Err(err).Msg("stopping the task hub and exporting the last spans")
	}
}

// App is the handler's HTTP surface over an open task hub.
type App struct {
	Handler http.Handler
	hub     *taskhub.Hub
	tracing *telemetry.Tracing
}

// flushTime is the part of a stop's time kept, at its end, for exporting
// the spans still buffered.
const flushTime = time.Second

// Close stops the task hub's worker, then exports the spans still
// buffered, all until ctx ends.
func (a *App) Close(ctx context.Context) error {
	hubCtx := ctx
	if deadline, ok := ctx.Deadline(); ok && a.tracing.Recording() {
		var cancel context.CancelFunc
		hubCtx, cancel = context.WithDeadline(ctx, deadline.Add(-min(flushTime, time.Until(deadline)/4)))
		defer cancel()
	}
	err := a.hub.Close(hubCtx)
	if ferr := a.tracing.Shutdown(ctx); ferr != nil {
		err = errors.Join(err, fmt.Errorf("exporting the last spans: %w", ferr))
	}
	return err
}

// openHub is the one place that chooses the backend: the embedded hub when
// no scheduler is configured, else the scheduler's. Either runs the
// engine's orchestrators and activities.
func openHub(ctx context.Context, cfg config.TaskHub, engine *fanout.Engine, log zerolog.Logger, tracer trace.Tracer) (*taskhub.Hub, error) {
	if cfg.Embedded() {
		return embedded.Open(ctx, cfg, engine.Registry(), log, tracer)
	}
	return scheduler.Open(cfg, engine.Registry(), engine.Sessions(), log, tracer)
}

// Open reads the function definitions, registers the fan-outs, opens the
// task hub and builds the router. log writes to logOut.
func Open(ctx context.Context, cfg config.Config, fanouts []functions.Registration, log zerolog.Logger, logOut io.Writer) (*App, error) {
	fns, err := customhandler.LoadFunctions(cfg.AppRoot)
	if err != nil {
		return nil, err
	}
	tracing, err := telemetry.Open(ctx, cfg.Telemetry, log)
	if err != nil {
		return nil, err
	}
	if cfg.Telemetry.Enabled() {
		log.Info().Str("protocol", cfg.Telemetry.Protocol).Str("serviceName", cfg.Telemetry.ServiceName).Msg("tracing: exporting spans over OTLP")
	}
	retry := fanout.NewRetryPolicy(cfg.Retry.MaxAttempts, cfg.Retry.FirstDelay, cfg.Retry.Backoff, cfg.Retry.MaxDelay)
	engine := fanout.New(fanout.Options{
		Tracer:           tracing.Tracer,
		Log:              log,
		PartitionSize:    cfg.Limits.PartitionSize,
		ItemsPerActivity: cfg.Limits.ItemsPerActivity,
		BatchConcurrency: cfg.Limits.BatchConcurrency,
		Retry:            &retry,
		ItemTimeout:      cfg.ItemTimeout,
		MaxItems:         cfg.Limits.MaxWorkItems,
		MaxItemLength:    cfg.Limits.MaxItemLength,
	})
	if err := functions.Register(engine, fanouts); err != nil {
		tracing.Shutdown(ctx)
		return nil, err
	}
	hub, err := openHub(ctx, cfg.TaskHub, engine, log, tracing.Tracer)
	if err != nil {
		tracing.Shutdown(ctx)
		return nil, err
	}

	var status customhandler.Function // NewRouter fails below if there is none
	for _, fn := range fns {
		if fn.Name == "status" {
			status = fn
		}
	}
	statusURL := func(r *http.Request, instanceID string) string {
		return customhandler.BaseURL(r) + status.Path(cfg.RoutePrefix, map[string]string{"instanceId": instanceID})
	}
	var handlers []customhandler.Handler
	client := engine.Client(hub.Client, hub.Bounds)
	for _, f := range functions.HTTP(client, engine.Names(), functions.Settings{MaxBodyBytes: cfg.Limits.MaxBodyBytes, MaxItems: cfg.Limits.MaxWorkItems, StatusURL: statusURL}) {
		handlers = append(handlers, customhandler.Handler{Name: f.Name, RouteParams: f.RouteParams, Handler: f.Handler})
	}
	router, err := customhandler.NewRouter(fns, handlers, customhandler.Options{
		RoutePrefix: cfg.RoutePrefix,
		Log:         log,
		LogWriter:   logOut,
		// The body travels as a JSON string, where escaping can grow it sixfold.
		MaxPayloadBytes: 6*cfg.Limits.MaxBodyBytes + 64<<10,
		MaxBodyBytes:    cfg.Limits.MaxBodyBytes,
	})
	if err != nil {
		hub.Close(ctx)
		tracing.Shutdown(ctx)
		return nil, err
	}
	return &App{Handler: router, hub: hub, tracing: tracing}, nil
}
