// Package sidecar builds and starts the upstream durabletask-go sidecar (the
// main package of github.com/microsoft/durabletask-go, at the version go.mod
// requires): a real gRPC task hub server, run by the tests and by make bench
// as the scheduler path's backend.
package sidecar

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
	"syscall"
	"time"

	"fanoutfanin/internal/tailbuf"
)

const module = "github.com/microsoft/durabletask-go"

// Build builds the sidecar, or finds it built, and returns the binary's
// path. The binary is kept in a cache folder (os.UserCacheDir()/
// fanoutfanin-dtstest, else the temporary folder) under a name derived from
// the Go version and this module's go.mod and go.sum, so processes share
// it; `go build` itself is incremental.
func Build() (string, error) {
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
	cmd := exec.Command("go", "build", "-o", bin, module)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", module, err, b)
	}
	// Atomic: concurrent processes may race here; the last rename wins, all copies are equal.
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

// Process is a running sidecar.
type Process struct {
	Addr    string // host:port it listens on
	cmd     *exec.Cmd
	output  *tailbuf.Buffer
	exited  chan struct{}
	waitErr error // set before exited is closed
	once    sync.Once
}

// Start starts binary on 127.0.0.1:port (0: a free port) with its SQLite
// file at db ("": in memory), and returns once it accepts connections. It
// runs in its own process group, and dies with the process that started
// it, so that neither a Ctrl-C nor a killed parent leaves it behind.
func Start(binary string, port int, db string) (*Process, error) {
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	p := &Process{
		Addr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		cmd:    exec.Command(binary, "-host", "127.0.0.1", "-port", strconv.Itoa(port), "-db", db),
		output: &tailbuf.Buffer{Max: 64 << 10},
		exited: make(chan struct{}),
	}
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the sidecar: %w", err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("the sidecar exited (%v) before it accepted connections on %s; its output:\n%s", p.waitErr, p.Addr, p.output)
		default:
		}
		if c, err := net.DialTimeout("tcp", p.Addr, 200*time.Millisecond); err == nil {
			c.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("the sidecar did not listen on %s within 30 s; its output:\n%s", p.Addr, p.output)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pid is the sidecar's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output is the last of what the sidecar wrote.
func (p *Process) Output() string { return p.output.String() }

// Running returns an error, with the sidecar's last output, once it has
// exited.
func (p *Process) Running() error {
	select {
	case <-p.exited:
		return fmt.Errorf("the sidecar exited unexpectedly (%v); its last output:\n%s", p.waitErr, p.output)
	default:
		return nil
	}
}

// Stop kills the sidecar and waits for it to exit. Safe to call more than
// once.
func (p *Process) Stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
