package scheduler

import (
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/taskhub"
)

// OpenWith opens the task hub on the scheduler cfg names, as Open does,
// with the worker's executor wrapped by wrap: for tests that watch what the
// worker runs.
func OpenWith(cfg config.TaskHub, r *task.TaskRegistry, sessions *taskhub.Sessions, wrap func(backend.Executor) backend.Executor) (*taskhub.Hub, error) {
	return open(cfg, r, sessions, zerolog.Nop(), nil, wrap)
}
