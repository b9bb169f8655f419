// Package hubtest helps tests of the task hub and of what runs on it: an
// embedded hub in a temporary file, waiting for an instance, and reading a
// hub's file directly. Only tests import it.
package hubtest

import (
	"context"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/taskhub"
	"fanoutfanin/internal/taskhub/embedded"
)

// Config is an embedded task hub in file, with small limits.
func Config(file string) config.TaskHub {
	return config.TaskHub{
		Name:                        "test",
		ConnectionSetting:           config.DefaultConnectionSetting,
		EmbeddedFile:                file,
		LockTimeout:                 30 * time.Second,
		MaxConcurrentActivities:     8,
		MaxConcurrentOrchestrations: 4,
		MaxPayloadBytes:             config.DefaultMaxPayloadBytes,
		MaxStepBytes:                config.DefaultMaxStepBytes,
	}
}

// Open opens the embedded hub cfg names, running registry, and closes it
// when the test ends; a close that fails or takes over 10 s fails the test.
func Open(t testing.TB, cfg config.TaskHub, registry *task.TaskRegistry) *taskhub.Hub {
	t.Helper()
	hub, err := embedded.Open(context.Background(), cfg, registry, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hub.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return hub
}

// Wait polls instance id until done says so, or it has finished if done is
// nil, and returns its state; it fails the test after within.
func Wait(t testing.TB, c taskhub.Client, id api.InstanceID, within time.Duration, done func(*api.OrchestrationMetadata) bool) *api.OrchestrationMetadata {
	t.Helper()
	if done == nil {
		done = (*api.OrchestrationMetadata).IsComplete
	}
	deadline := time.Now().Add(within)
	for {
		md, err := c.FetchOrchestrationMetadata(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if done(md) {
			return md
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s: still %v after %s; custom status %s", id, md.RuntimeStatus, within, md.SerializedCustomStatus)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
