package servers

import (
	"fmt"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"fanoutfanin/internal/tailbuf"
)

// Process is a running server, or any child process started by Launch.
type Process struct {
	Addr    string // host:port it listens on; "" for a process Launch started
	name    string
	cmd     *exec.Cmd
	output  *tailbuf.Buffer
	exited  chan struct{}
	waitErr error // set before exited is closed
	once    sync.Once
}

// Launch starts cmd, called name in messages, with its output kept (the
// last 64 KiB). It runs in its own process group, so that a Ctrl-C at the
// terminal reaches only its parent, which stops it in order; and it dies
// with the process that started it, so that a parent killed outright
// leaves none behind.
func Launch(name string, cmd *exec.Cmd) (*Process, error) {
	p := &Process{name: name, cmd: cmd, output: &tailbuf.Buffer{Max: 64 << 10}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.output, p.output
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the %s: %w", name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// start launches a server, name, and returns once it accepts connections
// on addr.
func start(name, addr, binary string, args ...string) (*Process, error) {
	p, err := Launch(name, exec.Command(binary, args...))
	if err != nil {
		return nil, err
	}
	p.Addr = addr
	if err := waitListening(p, addr); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// waitListening returns once addr accepts connections, or with an error,
// with p's output, if p exits first or 30 s pass.
func waitListening(p *Process, addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("the %s exited (%v) before it accepted connections on %s; its output:\n%s", p.name, p.waitErr, addr, p.output)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the %s did not listen on %s within 30 s; its output:\n%s", p.name, addr, p.output)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output is the last of what the process wrote.
func (p *Process) Output() string { return p.output.String() }

// Running returns an error, with the process's last output, once it has
// exited.
func (p *Process) Running() error {
	select {
	case <-p.exited:
		return fmt.Errorf("the %s exited unexpectedly (%v); its last output:\n%s", p.name, p.waitErr, p.output)
	default:
		return nil
	}
}

// Stop kills the server and waits for it to exit. Safe to call more than
// once, and after Terminate.
func (p *Process) Stop() { p.Terminate(0) }

// Terminate sends SIGTERM, as the Functions host does, and kills the
// process if it has not exited within grace (at once if grace is 0); then
// waits for it to exit. Safe to call more than once.
func (p *Process) Terminate(grace time.Duration) {
	p.once.Do(func() {
		if grace > 0 {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
				return
			case <-time.After(grace):
			}
		}
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
