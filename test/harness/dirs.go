package harness

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// MakeDir creates a fresh directory that the PostgreSQL programs can enter
// and write: it lives directly under os.TempDir(), has mode 0755 and, when
// running as root, is owned by the postgres OS user. name is only used to
// make the path recognizable. The directory and everything in it is removed
// by t.Cleanup.
//
// Cleanups run in reverse order of registration, so a process started after
// MakeDir (and stopped by its own cleanup) is gone before the directory is
// removed.
func MakeDir(t testing.TB, name string) string {
	t.Helper()
	u := mustPostgresUser(t)
	base := os.TempDir()
	if u.cred != nil {
		if err := checkTraversable(base); err != nil {
			t.Fatalf("harness: temporary directory unusable for OS user %s: %v (set TMPDIR to a world-traversable directory such as /tmp)", u.name, err)
		}
	}
	dir, err := os.MkdirTemp(base, "walkeeper-"+sanitizeName(name)+"-")
	if err != nil {
		t.Fatalf("harness: create directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("harness: remove %s: %v", dir, err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("harness: chmod %s: %v", dir, err)
	}
	if err := u.chown(dir); err != nil {
		t.Fatalf("harness: chown %s to %s: %v", dir, u.name, err)
	}
	return dir
}

// checkTraversable verifies that every component of the absolute path dir
// can be entered by any user (the "others" execute bit is set).
func checkTraversable(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %v) cannot be entered by other users", p, fi.Mode().Perm())
		}
		if parent := filepath.Dir(p); parent == p {
			return nil
		}
	}
}

// sanitizeName keeps a short, path- and socket-friendly form of name.
func sanitizeName(name string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
		if b.Len() >= 20 {
			break
		}
	}
	if b.Len() == 0 {
		return "x"
	}
	return b.String()
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago: it
// listens on port 0, reads the port the kernel chose and closes the
// listener. Ports are never handed out twice by one test binary, so
// parallel tests do not collide with each other; another process may still
// grab the port in between (an unavoidable, small race).
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("harness: find free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if err := l.Close(); err != nil {
			t.Fatalf("harness: close probe listener: %v", err)
		}
		if !portsUsed[port] {
			portsUsed[port] = true
			return port
		}
	}
	t.Fatalf("harness: no unused free port found")
	return 0
}
