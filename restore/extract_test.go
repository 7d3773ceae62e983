package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func tarOf(t *testing.T, entries ...tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = 3
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestExtractSafe(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	os.Mkdir(root, 0o700)
	var held []string
	x := &extractor{root: root, dd: newDataDir(nil, nil, false), hold: func(name string, r io.Reader) (bool, error) {
		if name == "global/pg_control" {
			held = append(held, name)
			io.Copy(io.Discard, r)
			return true, nil
		}
		return false, nil
	}}
	data := tarOf(t,
		tar.Header{Name: "base/", Typeflag: tar.TypeDir},
		tar.Header{Name: "base/1/1259", Typeflag: tar.TypeReg, Size: 10},
		tar.Header{Name: "./PG_VERSION", Typeflag: tar.TypeReg},
		tar.Header{Name: "global/pg_control", Typeflag: tar.TypeReg},
		tar.Header{Name: "pg_wal/", Typeflag: tar.TypeDir},
		tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "base/1"},
		tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: "PG_VERSION"},
		tar.Header{Name: "a/b/../c", Typeflag: tar.TypeReg},
	)
	if err := x.extract(context.Background(), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{"base": 0o700, "base/1": 0o700, "base/1/1259": 0o600, "PG_VERSION": 0o600, "a/c": 0o600} {
		st, err := os.Lstat(filepath.Join(root, p))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v, want %v", p, err, st.Mode().Perm(), mode)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "global/pg_control")); err == nil || len(held) != 1 {
		t.Error("pg_control was not held back")
	}
	if l, _ := os.Readlink(filepath.Join(root, "link")); l != "base/1" {
		t.Errorf("link -> %q", l)
	}
}

func TestExtractRefusesEscapes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []tar.Header
	}{
		{"dot-dot", []tar.Header{{Name: "../x", Typeflag: tar.TypeReg}}},
		{"dot-dot inside", []tar.Header{{Name: "a/../../x", Typeflag: tar.TypeReg}}},
		{"absolute", []tar.Header{{Name: "/tmp/x", Typeflag: tar.TypeReg}}},
		{"symlink up", []tar.Header{{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../.."}}},
		{"symlink absolute outside", []tar.Header{{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc"}}},
		{"through link", []tar.Header{{Name: "d/", Typeflag: tar.TypeDir}, {Name: "l", Typeflag: tar.TypeSymlink, Linkname: "d"}, {Name: "l/x", Typeflag: tar.TypeReg}}},
		{"dir through link", []tar.Header{{Name: "d/", Typeflag: tar.TypeDir}, {Name: "l", Typeflag: tar.TypeSymlink, Linkname: "d"}, {Name: "l/sub/", Typeflag: tar.TypeDir}}},
		{"hard link outside", []tar.Header{{Name: "h", Typeflag: tar.TypeLink, Linkname: "../secret"}}},
		{"hard link to missing", []tar.Header{{Name: "h", Typeflag: tar.TypeLink, Linkname: "nothing"}}},
		{"device", []tar.Header{{Name: "dev", Typeflag: tar.TypeChar}}},
		{"file over link", []tar.Header{{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "x"}, {Name: "l", Typeflag: tar.TypeReg}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			os.Mkdir(root, 0o700)
			os.WriteFile(filepath.Join(parent, "secret"), []byte("s"), 0o600)
			x := &extractor{root: root, dd: newDataDir(nil, nil, false)}
			err := x.extract(context.Background(), bytes.NewReader(tarOf(t, tc.entries...)))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrUnsafeArchive) && tc.name != "file over link" {
				t.Errorf("err = %v, want ErrUnsafeArchive", err)
			}
			entries, _ := os.ReadDir(parent)
			if len(entries) != 2 {
				t.Errorf("something was written beside the root: %v", entries)
			}
		})
	}
}
