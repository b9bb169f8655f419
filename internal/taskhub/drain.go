package taskhub

import (
	"context"
	"fmt"
	"time"
)

// handBackTime is the part of a stop's time kept, at its end, for handing
// back the work still running (cancelled, it is released at once rather
// than when its lock or lease expires) and, on the embedded hub, for
// checkpointing the file: a few statements, which may wait behind another
// process's write.
const handBackTime = time.Second

// Drain is how both backends stop their work: the work in flight may
// finish until shortly before ctx's deadline (handBackTime before it, or a
// quarter of the time left if that is less); then cancel stops what still
// runs, whose workers hand it back, and Drain waits for them until ctx
// ends. stopped closes once no work is left. handedBack says, as an error,
// that work was handed back; late, that ctx ended before the work did.
func Drain(ctx context.Context, stopped <-chan struct{}, cancel func()) (handedBack error, late bool) {
	finishBy, stop := context.WithCancel(ctx)
	if deadline, ok := ctx.Deadline(); ok {
		finishBy, stop = context.WithDeadline(ctx, deadline.Add(-min(handBackTime, time.Until(deadline)/4)))
	}
	defer stop()
	select {
	case <-stopped:
		return nil, false
	case <-finishBy.Done():
	}
	cancel()
	handedBack = fmt.Errorf("work still running when the shutdown grace period ended was handed back: %w", finishBy.Err())
	select {
	case <-stopped:
		return handedBack, false
	case <-ctx.Done():
		return handedBack, true
	}
}

// Sleep waits for d, or until ctx ends: how both backends wait between
// tries.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
