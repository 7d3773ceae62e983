package harness

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// HAProxy is a running haproxy process owned by one test.
type HAProxy struct {
	cfgFile string
	logFile string
	proc    *process
}

// StartHAProxy writes cfg to a file, checks it with `haproxy -c`, starts
// haproxy in the foreground (-db) as the current user, and waits until it
// accepts connections on 127.0.0.1 at every port in ports. It is stopped
// when the test ends; on failure its output is logged.
func StartHAProxy(t testing.TB, cfg string, ports ...int) *HAProxy {
	t.Helper()
	RequireHAProxy(t)
	bin, _ := HAProxyPath()
	dir := t.TempDir()
	h := &HAProxy{cfgFile: filepath.Join(dir, "haproxy.cfg"), logFile: filepath.Join(dir, "haproxy.log")}
	if err := os.WriteFile(h.cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if out, err := runCommand(context.Background(), nil, dir, os.Environ(), bin, "-c", "-f", h.cfgFile); err != nil {
		t.Fatalf("harness: haproxy -c: %v\n%s\nconfiguration:\n%s", err, out, cfg)
	}
	logf, err := os.Create(h.logFile)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-db", "-f", h.cfgFile)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if h.proc, err = startProcess(cmd, nil); err != nil {
		t.Fatalf("harness: start haproxy: %v", err)
	}
	t.Cleanup(func() {
		if err := h.proc.stop(syscall.SIGTERM, stopTimeout); err != nil {
			t.Errorf("harness: stop haproxy: %v", err)
		}
		if t.Failed() {
			t.Logf("harness: haproxy output:\n%s", tailFile(h.logFile, 40))
		}
	})
	deadline := time.Now().Add(startTimeout)
	for _, port := range ports {
		for {
			conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
			if err == nil {
				conn.Close()
				break
			}
			if h.proc.exited() || time.Now().After(deadline) {
				t.Fatalf("harness: haproxy does not listen on port %d: %v (exited: %v)\n%s", port, err, h.proc.exited(), tailFile(h.logFile, 40))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return h
}

// ConfigFile returns the path of the configuration haproxy runs with.
func (h *HAProxy) ConfigFile() string { return h.cfgFile }

// Stop stops haproxy (SIGTERM, then SIGKILL after a timeout).
func (h *HAProxy) Stop(t testing.TB) {
	t.Helper()
	if err := h.proc.stop(syscall.SIGTERM, stopTimeout); err != nil {
		t.Fatalf("harness: stop haproxy: %v", err)
	}
}
