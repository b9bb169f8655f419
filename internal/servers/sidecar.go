// Package servers builds and starts the real servers, written by others,
// that the tests and make bench run against: the upstream durabletask-go
// sidecar (the main package of github.com/microsoft/durabletask-go, at the
// version go.mod requires), a gRPC task hub server for the scheduler path;
// and Jaeger (tools/jaeger), a trace backend. Each is built once and kept.
package servers

import (
	"net"
	"strconv"
)

const module = "github.com/microsoft/durabletask-go"

// BuildSidecar builds the sidecar, or finds it built, and returns the
// binary's path.
func BuildSidecar() (string, error) { return build("sidecar", ".", module) }

// StartSidecar starts the sidecar binary on 127.0.0.1:port (0: a free
// port) with its SQLite file at db ("": in memory), and returns once it
// accepts connections.
func StartSidecar(binary string, port int, db string) (*Process, error) {
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return start("sidecar", addr, binary, "-host", "127.0.0.1", "-port", strconv.Itoa(port), "-db", db)
}
