package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Timeouts used by the harness. Every wait is bounded by one of these.
const (
	// startTimeout bounds waiting for a server to accept connections.
	startTimeout = 60 * time.Second
	// stopTimeout bounds a graceful (fast) shutdown before SIGKILL.
	stopTimeout = 30 * time.Second
	// killTimeout bounds waiting for processes to vanish after SIGKILL.
	killTimeout = 10 * time.Second
	// sqlTimeout bounds a single harness SQL call.
	sqlTimeout = 2 * time.Minute
	// commandTimeout bounds a single short-lived command (initdb,
	// pg_basebackup, pgbench, ...).
	commandTimeout = 5 * time.Minute
	// replicationTimeout bounds waiting for a standby to stream or for a
	// promotion to finish.
	replicationTimeout = 60 * time.Second
)

// setChildAttrs prepares cmd to run as u, in its own process group, and to
// be SIGKILLed if the thread that starts it dies.
func setChildAttrs(cmd *exec.Cmd, u *osUser) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if u != nil && u.cred != nil {
		c := *u.cred
		cmd.SysProcAttr.Credential = &c
	}
}

// startLocked starts cmd with the calling goroutine locked to its OS thread.
// Pdeathsig fires when the forking *thread* exits; locking guarantees the
// fork happens on one thread, and unlocking afterwards returns that thread
// to the runtime's pool, where it lives on.
func startLocked(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Start()
}

// process is a long-running child (postmaster, versitygw).
type process struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{}
	err  error // exit status; valid once done is closed
}

// startProcess starts cmd as a long-running child. It sets Setpgid and
// Pdeathsig (and the credentials of u when not nil).
func startProcess(cmd *exec.Cmd, u *osUser) (*process, error) {
	setChildAttrs(cmd, u)
	if err := startLocked(cmd); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited (and been reaped).
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitErr returns the exit status; only meaningful once exited() is true.
func (p *process) exitErr() error {
	<-p.done
	return p.err
}

// wait waits up to timeout for the process to exit.
func (p *process) wait(timeout time.Duration) bool {
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	select {
	case <-p.done:
		return true
	case <-tm.C:
		return false
	}
}

// signal sends sig to the process itself (not its group).
func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	err := syscall.Kill(p.pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// killGroup kills the process and all its descendants with SIGKILL and
// waits (bounded) until the process is reaped and none of them is alive.
//
// Killing the process group alone is not enough: postgres backends and
// auxiliary processes call setsid() and live in their own groups. So the
// leader is stopped (SIGSTOP, so that it cannot fork while its descendants
// are collected), its descendants are collected from /proc, and then the
// leader's group, the descendants and their own groups are SIGKILLed.
func (p *process) killGroup() error {
	if !p.exited() {
		_ = syscall.Kill(p.pid, syscall.SIGSTOP)
	}
	victims := descendants(p.pid)
	err := syscall.Kill(-p.pid, syscall.SIGKILL)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill process group %d: %w", p.pid, err)
	}
	for _, pid := range victims {
		_ = syscall.Kill(-pid, syscall.SIGKILL) // its own group, if it leads one
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if !p.wait(killTimeout) {
		return fmt.Errorf("process %d did not exit within %v of SIGKILL", p.pid, killTimeout)
	}
	deadline := time.Now().Add(killTimeout)
	for {
		ps := procTable()
		alive := ps.groupAlive(p.pid)
		for _, pid := range victims {
			if pi, ok := ps[pid]; ok && pi.live() {
				alive = true
			}
		}
		if !alive {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("descendants of process %d still alive %v after SIGKILL", p.pid, killTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// errKilled is stop's error when the process had to be, and was, killed.
var errKilled = errors.New("killed")

// stop sends sig, waits up to timeout for a clean exit and falls back to
// killGroup. It returns an error if the fallback was needed (errKilled) or
// failed.
func (p *process) stop(sig syscall.Signal, timeout time.Duration) error {
	if err := p.signal(sig); err != nil {
		return errors.Join(fmt.Errorf("signal %v to %d: %w", sig, p.pid, err), p.killGroup())
	}
	if p.wait(timeout) {
		return nil
	}
	if err := p.killGroup(); err != nil {
		return fmt.Errorf("process %d did not exit within %v of %v, and killing it failed: %w", p.pid, timeout, sig, err)
	}
	return fmt.Errorf("process %d did not exit within %v of %v: %w", p.pid, timeout, sig, errKilled)
}

// procInfo is what the harness needs from /proc/PID/stat.
type procInfo struct {
	ppid, pgid int
	state      string
}

// live reports whether the process is neither a zombie nor dead. Zombies
// matter because the init process of a container may never reap orphans.
func (pi procInfo) live() bool { return pi.state != "Z" && pi.state != "X" }

// procs maps pid to procInfo.
type procs map[int]procInfo

// procTable reads all processes from /proc (empty if /proc is unreadable).
func procTable() procs {
	out := procs{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Format: pid (comm) state ppid pgrp ...; comm may contain spaces
		// and parentheses, so parse from the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 {
			continue
		}
		ppid, err1 := strconv.Atoi(f[1])
		pgid, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		out[pid] = procInfo{ppid: ppid, pgid: pgid, state: f[0]}
	}
	return out
}

// groupAlive reports whether a live process belongs to process group pgid.
func (ps procs) groupAlive(pgid int) bool {
	for _, pi := range ps {
		if pi.pgid == pgid && pi.live() {
			return true
		}
	}
	return false
}

// descendants returns the live descendants of pid.
func descendants(pid int) []int {
	ps := procTable()
	children := map[int][]int{}
	for p, pi := range ps {
		if pi.live() {
			children[pi.ppid] = append(children[pi.ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, c := range children[cur] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// runCommand runs a short-lived command to completion with a timeout and
// returns its combined stdout and stderr. The command runs as u (when not
// nil), in its own process group which is SIGKILLed on timeout.
func runCommand(ctx context.Context, u *osUser, dir string, env []string, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := newCommand(ctx, u, dir, env, bin, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := startLocked(cmd); err != nil {
		return "", fmt.Errorf("start %s: %w", bin, err)
	}
	err := cmd.Wait()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return out.String(), fmt.Errorf("%s %s: %w", filepath.Base(bin), strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// newCommand builds an exec.Cmd for a short-lived child running as u. When
// ctx is done the child's whole process group is SIGKILLed; WaitDelay makes
// sure Wait returns even if grandchildren keep output pipes open.
func newCommand(ctx context.Context, u *osUser, dir string, env []string, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	setChildAttrs(cmd, u)
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// tailFile returns roughly the last n lines of path (for failure logs).
func tailFile(path string, n int) string {
	const maxBytes = 64 << 10
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot stat %s: %v)", path, err)
	}
	off := max(fi.Size()-maxBytes, 0)
	buf := make([]byte, fi.Size()-off)
	nr, _ := f.ReadAt(buf, off)
	lines := strings.Split(strings.TrimRight(string(buf[:nr]), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
