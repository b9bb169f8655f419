package taskhub

import (
	"context"
	"time"

	"github.com/microsoft/durabletask-go/task"
	"github.com/rs/zerolog"

	"fanoutfanin/internal/config"
)

// OpenEmbeddedPolling opens the embedded hub as Open does, its workers
// looking in the file for work no wake-up announced only every interval.
func OpenEmbeddedPolling(ctx context.Context, cfg config.TaskHub, r *task.TaskRegistry, log zerolog.Logger, interval time.Duration) (*Hub, error) {
	return openEmbeddedPolling(ctx, cfg, r, log, polling{interval, interval})
}
