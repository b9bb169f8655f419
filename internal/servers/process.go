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

// Process is a running server.
type Process struct {
	Addr    string // host:port it listens on
	name    string
	cmd     *exec.Cmd
	output  *tailbuf.Buffer
	exited  chan struct{}
	waitErr error // set before exited is closed
	once    sync.Once
}

// start starts a server, name, and returns once it accepts connections on
// addr. It runs in its own process group, and dies with the process that
// started it, so that neither a Ctrl-C nor a killed parent leaves it
// behind.
func start(name, addr, binary string, args ...string) (*Process, error) {
	p := &Process{
		Addr:   addr,
		name:   name,
		cmd:    exec.Command(binary, args...),
		output: &tailbuf.Buffer{Max: 64 << 10},
		exited: make(chan struct{}),
	}
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the %s: %w", p.name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
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

// Pid is the server's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output is the last of what the server wrote.
func (p *Process) Output() string { return p.output.String() }

// Running returns an error, with the server's last output, once it has
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
