package taskhub

import (
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
)

// OpenSchedulerWith opens the task hub on the scheduler cfg names, as Open
// does, with the worker's executor wrapped by wrap: for tests that watch
// what the worker runs.
func OpenSchedulerWith(cfg config.TaskHub, r *task.TaskRegistry, log zerolog.Logger, wrap func(backend.Executor) backend.Executor) (*Hub, error) {
	return openScheduler(cfg, wrap(task.NewTaskExecutor(r)), log)
}
