package storage_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/storagetest"
)

func TestLocalConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := storage.NewLocal(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestMemoryConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return storage.NewMemory() })
}

func TestLocalPermissionsAndNoTempFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	b, err := storage.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(context.Background(), "wal/x/obj", bytes.NewReader([]byte("data"))); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "wal"): 0o700,
		filepath.Join(dir, "wal/x"): 0o700, filepath.Join(dir, "wal/x/obj"): 0o600} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "wal/x"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
	if _, err := storage.NewLocal("relative/path"); err == nil {
		t.Error("relative repository path accepted")
	}
}

// TestLocalDeleteManyRemovesEmptiedDirectories: deleting the last objects
// of a group of WAL segments (or of a backup) removes its directory, so
// listings stop reading it; a directory still holding objects, and the
// top-level directories, stay; a later Put recreates the directory.
func TestLocalDeleteManyRemovesEmptiedDirectories(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := storage.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"wal/0000000100000000/a", "wal/0000000100000000/b", "wal/0000000100000001/c", "backups/X/deep/f"} {
		if err := b.Put(ctx, k, bytes.NewReader([]byte("data"))); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.DeleteMany(ctx, []string{"wal/0000000100000000/a", "wal/0000000100000000/b", "wal/0000000100000001/c", "backups/X/deep/f"}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"wal/0000000100000000", "wal/0000000100000001", "backups/X"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s: still there after its last object was deleted (%v)", gone, err)
		}
	}
	for _, kept := range []string{"wal", "backups"} {
		if _, err := os.Stat(filepath.Join(dir, kept)); err != nil {
			t.Errorf("top-level directory %s removed: %v", kept, err)
		}
	}
	if err := b.Put(ctx, "wal/0000000100000000/d", bytes.NewReader([]byte("data"))); err != nil {
		t.Fatalf("Put after its directory was removed: %v", err)
	}
	if err := b.DeleteMany(ctx, []string{"wal/0000000100000001/none"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "wal/0000000100000000/d")); err != nil {
		t.Error(err)
	}
}
