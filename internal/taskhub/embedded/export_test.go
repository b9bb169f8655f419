package embedded

import (
	"context"
	"time"

	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
	"fanoutfanin/internal/taskhub"
)

// OpenPolling opens the embedded hub as Open does, its workers
// looking in the file for work no wake-up announced only every interval.
func OpenPolling(ctx context.Context, cfg config.TaskHub, r *task.TaskRegistry, log zerolog.Logger, interval time.Duration) (*taskhub.Hub, error) {
	return open(ctx, cfg, r, log, nil, polling{interval, interval})
}
