package main

// The handler as a child process, and what /proc says about processes.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"fanoutfanin/internal/servers"
)

// stopGrace is how long a child gets to exit after SIGTERM before it is
// killed: the handler drains its work for up to 10 s on SIGTERM.
const stopGrace = 15 * time.Second

// handler is the function app's handler running as a child process.
type handler struct {
	*servers.Process
	baseURL string
}

// stop sends SIGTERM, as the Functions host does, and kills the handler if
// it has not exited within stopGrace. Safe to call more than once.
func (h *handler) stop() { h.Terminate(stopGrace) }

// startHandler starts the handler in appRoot as the Functions host does: the
// app root as working directory and in FUNCTIONS_APP_ROOT_PATH, a free port
// in FUNCTIONS_CUSTOMHANDLER_PORT, and settings as app settings. It returns
// once GET / answers.
func startHandler(ctx context.Context, appRoot string, settings map[string]string) (*handler, error) {
	port, err := servers.FreePort()
	if err != nil {
		return nil, err
	}
	env := inheritedEnv()
	for k, v := range settings {
		env = append(env, k+"="+v)
	}
	env = append(env,
		"FUNCTIONS_CUSTOMHANDLER_PORT="+strconv.Itoa(port),
		"FUNCTIONS_APP_ROOT_PATH="+appRoot,
	)
	cmd := exec.Command(filepath.Join(appRoot, "handler"))
	cmd.Dir = appRoot
	cmd.Env = env
	p, err := servers.Launch("handler", cmd)
	if err != nil {
		return nil, err
	}
	h := &handler{Process: p, baseURL: fmt.Sprintf("http://127.0.0.1:%d", port)}
	if err := h.waitReady(ctx); err != nil {
		h.stop()
		return nil, err
	}
	return h, nil
}

// waitReady probes GET / every 25 ms, as the host does, until any answer,
// for at most 30 s (the host's initializationTimeout).
func (h *handler) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := h.Running(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.baseURL+"/", nil)
		if res, err := client.Do(req); err == nil {
			res.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the handler did not answer GET / within 30 s; its output:\n%s", h.Output())
		}
		if err := sleep(ctx, 25*time.Millisecond); err != nil {
			return err
		}
	}
}

// inheritedEnv is this process's environment without the app's own settings,
// so that a FANOUT_* or scheduler setting in the caller's shell cannot
// change what is measured.
func inheritedEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "FANOUT_") || strings.HasPrefix(name, "FUNCTIONS_") ||
			name == "DURABLE_TASK_SCHEDULER_CONNECTION_STRING" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// peakRSS is the process's peak resident set size in bytes (VmHWM).
func peakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("reading VmHWM of process %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// cpuUsage is a process's CPU time so far, in user mode and in the kernel.
type cpuUsage struct{ user, sys time.Duration }

func (c cpuUsage) total() time.Duration { return c.user + c.sys }

func (c cpuUsage) minus(d cpuUsage) cpuUsage { return cpuUsage{c.user - d.user, c.sys - d.sys} }

// cpuTime reads the process's CPU time so far (utime and stime in
// /proc/<pid>/stat, in clock ticks of clkTck a second).
func cpuTime(pid, clkTck int) (cpuUsage, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuUsage{}, err
	}
	// The command name, field 2, is in parentheses and may hold spaces, so
	// count fields after its closing parenthesis: state is field 3, utime
	// and stime are fields 14 and 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return cpuUsage{}, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, data)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return cpuUsage{}, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, data)
	}
	var ticks [2]int64
	for k, f := range fields[11:13] {
		if ticks[k], err = strconv.ParseInt(f, 10, 64); err != nil {
			return cpuUsage{}, fmt.Errorf("reading /proc/%d/stat: %w", pid, err)
		}
	}
	tick := time.Second / time.Duration(clkTck)
	return cpuUsage{user: time.Duration(ticks[0]) * tick, sys: time.Duration(ticks[1]) * tick}, nil
}

// clockTicks is the kernel's clock ticks a second as /proc reports them
// (USER_HZ), 100 on every Linux unless getconf says otherwise.
func clockTicks() int {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

// sleep waits d, or returns early with the context's error.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
