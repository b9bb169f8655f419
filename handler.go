// Command handler is an Azure Functions custom handler that runs durable
// fan-out/fan-in orchestrations. The Functions host starts it as host.json
// says; `make run` starts it standalone.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"fanoutfanin/internal/app"
)

func main() {
	// The first SIGINT or SIGTERM stops the handler gracefully, a second one
	// at once (app.Run): room for both, as they may come close together.
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	if err := app.Run(stop, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "handler:", err)
		os.Exit(1)
	}
}
