// Command handler is an Azure Functions custom handler that runs durable
// fan-out/fan-in orchestrations. The Functions host starts it as host.json
// says; `make run` starts it standalone.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"fanoutfanin/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "handler:", err)
		os.Exit(1)
	}
}
