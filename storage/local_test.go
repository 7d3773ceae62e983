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
