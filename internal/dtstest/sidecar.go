package dtstest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"fanoutfanin/internal/tailbuf"
)

const sidecarModule = "github.com/microsoft/durabletask-go"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// BuildSidecar builds the upstream durabletask-go sidecar (the `main` package of
// github.com/microsoft/durabletask-go, at the version the main module requires) once per test
// process and returns the binary path.
//
// The binary is kept in a cache directory (os.UserCacheDir()/fanoutfanin-dtstest, else the temp
// dir) under a name derived from the Go version and the main module's go.mod/go.sum, so test
// processes share it instead of leaving a copy each; `go build` itself is incremental.
func BuildSidecar(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() { buildPath, buildErr = buildSidecar() })
	if buildErr != nil {
		tb.Fatalf("dtstest: building the durabletask-go sidecar: %v", buildErr)
	}
	return buildPath
}

func buildSidecar() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module")
	}
	root := filepath.Dir(gomod)
	h := sha256.New()
	gover, _ := exec.Command("go", "env", "GOVERSION", "GOOS", "GOARCH").Output()
	h.Write(gover)
	for _, f := range []string{"go.mod", "go.sum"} {
		b, _ := os.ReadFile(filepath.Join(root, f))
		h.Write(b)
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "fanoutfanin-dtstest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	final := filepath.Join(dir, "sidecar-"+hex.EncodeToString(h.Sum(nil))[:16])
	if fi, err := os.Stat(final); err == nil && fi.Mode().IsRegular() {
		return final, nil
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "sidecar")
	cmd := exec.Command("go", "build", "-o", bin, sidecarModule)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", sidecarModule, err, b)
	}
	// Atomic: concurrent test processes may race here; the last rename wins, all copies are equal.
	if err := os.Rename(bin, final); err != nil {
		return "", err
	}
	// Best effort: remove binaries built for other go.mod/go.sum states, once they are an hour old.
	if old, _ := filepath.Glob(filepath.Join(dir, "sidecar-*")); len(old) > 0 {
		for _, p := range old {
			if fi, err := os.Stat(p); err == nil && p != final && time.Since(fi.ModTime()) > time.Hour {
				_ = os.Remove(p)
			}
		}
	}
	return final, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("dtstest: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartSidecar starts the durabletask-go v0.6.0 sidecar on 127.0.0.1:port (0 = a free port) with
// -db dbFile ("" = in-memory SQLite), waits until it accepts connections, kills it at tb.Cleanup,
// and returns its address and a stop func (idempotent) so a test can stop it early, or start it
// again later on the same fixed port. On test failure the tail of its log is written to tb.Log.
func StartSidecar(tb testing.TB, port int, dbFile string) (addr string, stop func()) {
	tb.Helper()
	bin := BuildSidecar(tb)
	if port == 0 {
		port = FreePort(tb)
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logs := &tailbuf.Buffer{Max: 64 << 10}
	cmd := exec.Command(bin, "-host", "127.0.0.1", "-port", strconv.Itoa(port), "-db", dbFile)
	cmd.Stdout = logs
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		tb.Fatalf("dtstest: starting sidecar: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
	}
	tb.Cleanup(func() {
		stop()
		if tb.Failed() {
			tb.Logf("dtstest: sidecar %s log tail:\n%s", addr, logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			tb.Fatalf("dtstest: sidecar exited before accepting connections on %s:\n%s", addr, logs.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return addr, stop
		}
		if time.Now().After(deadline) {
			stop()
			tb.Fatalf("dtstest: sidecar did not listen on %s within 30s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
