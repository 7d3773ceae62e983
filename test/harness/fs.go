package harness

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SmallFilesystem mounts a tmpfs of size bytes on a fresh directory and
// returns the directory, for tests that fill a disk (FillFilesystem) or
// make it read-only (Remount). It is unmounted when the test ends, after
// the processes started later are stopped (cleanups run in reverse order).
// Mounting needs root: without it the test is skipped, or failed under
// CI=true, as for any missing dependency.
func SmallFilesystem(t testing.TB, name string, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		missingDependency(t, "mounting a tmpfs for a full-disk test needs root")
		return ""
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0755", size),
		"walkeeper-"+sanitizeName(name), dir).CombinedOutput(); err != nil {
		missingDependency(t, "mount a tmpfs on %s: %v %s", dir, err, strings.TrimSpace(string(out)))
		return ""
	}
	t.Cleanup(func() {
		// Lazy: a process the test killed may still hold a file open.
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("harness: unmount %s: %v", dir, err)
		}
	})
	return dir
}

// FillFilesystem writes the file path until the filesystem holding it has
// only leave bytes free, and returns how much it wrote. Deleting the file
// gives the space back.
func FillFilesystem(t testing.TB, path string, leave int64) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(path[:strings.LastIndexByte(path, '/')+1], &st); err != nil {
		t.Fatalf("harness: statfs: %v", err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	n := free - leave
	if n <= 0 {
		return 0
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	defer f.Close()
	// Real bytes: a sparse file would not take the space.
	if _, err := io.CopyN(f, zeros{}, n); err != nil {
		t.Fatalf("harness: fill %s: %v", path, err)
	}
	return n
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// Remount remounts the filesystem mounted at dir with options such as
// "ro" or "rw". Remounting read-only fails while a file is open for
// writing, so it is retried for up to 30 seconds.
func Remount(t testing.TB, dir, options string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command("mount", "-o", "remount,"+options, dir).CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness: remount %s %s: %v %s", dir, options, err, strings.TrimSpace(string(out)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
