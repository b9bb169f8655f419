package dtstest

import (
	"sync"
	"testing"

	"fanoutfanin/internal/servers"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// BuildSidecar builds the upstream durabletask-go sidecar once per test
// process (see servers.BuildSidecar) and returns the binary's path.
func BuildSidecar(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() { buildPath, buildErr = servers.BuildSidecar() })
	if buildErr != nil {
		tb.Fatalf("dtstest: building the durabletask-go sidecar: %v", buildErr)
	}
	return buildPath
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	port, err := servers.FreePort()
	if err != nil {
		tb.Fatalf("dtstest: %v", err)
	}
	return port
}

// StartSidecar starts the durabletask-go v0.6.0 sidecar on 127.0.0.1:port (0 = a free port) with
// -db dbFile ("" = in-memory SQLite), waits until it accepts connections, kills it at tb.Cleanup,
// and returns its address and a stop func (idempotent) so a test can stop it early, or start it
// again later on the same fixed port. On test failure the tail of its log is written to tb.Log.
func StartSidecar(tb testing.TB, port int, dbFile string) (addr string, stop func()) {
	tb.Helper()
	p, err := servers.StartSidecar(BuildSidecar(tb), port, dbFile)
	if err != nil {
		tb.Fatalf("dtstest: %v", err)
	}
	tb.Cleanup(func() {
		p.Stop()
		if tb.Failed() {
			tb.Logf("dtstest: sidecar %s log tail:\n%s", p.Addr, p.Output())
		}
	})
	return p.Addr, p.Stop
}
