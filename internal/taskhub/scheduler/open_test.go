package scheduler_test

import (
	"context"
	"errors"
	"testing"

	"github.com/microsoft/durabletask-go/api"
	"github.com/rs/zerolog"

	"fanoutfanin/functions"
	"fanoutfanin/internal/config"
	"fanoutfanin/internal/fanout"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/hubtest"
	"fanoutfanin/internal/taskhub/scheduler"
)

// registry runs the app's fan-out, its items taking no time.
func engine(t testing.TB) *fanout.Engine {
	t.Helper()
	e := fanout.New(fanout.Options{Log: zerolog.Nop()})
	if err := fanout.Register(e, functions.Sample(functions.SampleSettings{})); err != nil {
		t.Fatal(err)
	}
	return e
}

// Open does not wait for the scheduler, and a client call while it is down
// says so.
func TestOpensWhileTheSchedulerIsDown(t *testing.T) {
	cfg := hubtest.Config("")
	cfg.Scheduler = &config.Scheduler{Endpoint: "http://127.0.0.1:1", Host: "127.0.0.1", Address: "127.0.0.1:1", Auth: config.AuthNone}
	e := engine(t)
	hub, err := scheduler.Open(cfg, e.Registry(), e.Sessions(), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close(context.Background())
	_, err = hub.Client.ScheduleNewOrchestration(context.Background(), functions.OrchestratorName, api.WithInput([]string{"a"}))
	var unavailable *taskhub.UnavailableError
	if !errors.As(err, &unavailable) || unavailable.Endpoint != "127.0.0.1" {
		t.Errorf("scheduling while the scheduler is down: got %v, want an UnavailableError naming 127.0.0.1", err)
	}
}
