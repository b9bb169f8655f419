// Package app assembles the handler from its configuration: task hub,
// functions and host protocol, served over HTTP.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/functions"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/customhandler"
	"fanoutfanin/internal/logging"
	"fanoutfanin/internal/taskhub"
)

// shutdownGrace is how long in-flight requests and work items get to finish
// when the handler is asked to stop.
const shutdownGrace = 10 * time.Second

// gcPercent is the garbage collector's target unless GOGC says otherwise;
// see BENCHMARKS.md.
const gcPercent = 400

// Run runs the handler until ctx ends: it reads the configuration through
// getenv, opens the task hub, and serves the functions on the configured port.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := config.Load(args, getenv)
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

	a, err := Open(ctx, cfg, log, logOut)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		if err := a.Close(closeCtx); err != nil {
			log.Warn().Err(err).Msg("closing the task hub")
		}
	}()

	srv := &http.Server{Handler: a.Handler, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info().Int("port", port).Str("url", fmt.Sprintf("http://localhost:%d/%s", port, cfg.RoutePrefix)).Msg("listening")

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info().Msg("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutting down the server: %w", err)
	}
	return nil
}

// App is the handler's HTTP surface over an open task hub.
type App struct {
	Handler http.Handler
	hub     *taskhub.Hub
}

// Close stops the task hub's worker.
func (a *App) Close(ctx context.Context) error { return a.hub.Close(ctx) }

// Open reads the function definitions, opens the task hub and builds the
// router. log writes to logOut.
func Open(ctx context.Context, cfg config.Config, log zerolog.Logger, logOut io.Writer) (*App, error) {
	fns, err := customhandler.LoadFunctions(cfg.AppRoot)
	if err != nil {
		return nil, err
	}
	registry := task.NewTaskRegistry()
	if err := functions.Register(registry, cfg.Work, log); err != nil {
		return nil, err
	}
	hub, err := taskhub.Open(ctx, cfg.TaskHub, registry, log)
	if err != nil {
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
	for _, f := range functions.HTTP(hub.Client, functions.Settings{Limits: cfg.Limits, Retry: cfg.Retry, Bounds: hub.Bounds, StatusURL: statusURL}) {
		handlers = append(handlers, customhandler.Handler{Name: f.Name, RouteParams: f.RouteParams, Handler: f.Handler})
	}
	router, err := customhandler.NewRouter(fns, handlers, customhandler.Options{
		RoutePrefix: cfg.RoutePrefix,
		Log:         log,
		LogWriter:   logOut,
		// The body travels as a JSON string, where escaping can grow it sixfold.
		MaxPayloadBytes: 6*cfg.Limits.MaxBodyBytes + 64<<10,
	})
	if err != nil {
		hub.Close(ctx)
		return nil, err
	}
	return &App{Handler: router, hub: hub}, nil
}
