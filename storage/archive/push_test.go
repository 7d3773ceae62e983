package archive_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

// Unit tests of wal-push (archive.PushWAL) against the in-memory backend.

// fetched reads what the wal-fetch lookup serves for name.
func fetched(t *testing.T, repo *storage.Repository, name string) []byte {
	t.Helper()
	f, err := archive.ForFetch(context.Background(), repo, name)
	if err != nil {
		t.Fatal(err)
	}
	if f.Unfinished == nil {
		return archivetest.ReadKey(t, repo, f.Object.Key)
	}
	w, err := os.CreateTemp(t.TempDir(), "prefix")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := f.Unfinished.WriteTo(context.Background(), repo, w); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(w.Name())
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestPushWAL(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	dir := t.TempDir()
	t.Chdir(dir)
	os.Mkdir("pg_wal", 0o700)
	const name = "000000010000000000000003"
	seg := archivetest.Segment(t, name, archivetest.SysID, 4)
	os.WriteFile("pg_wal/"+name, seg, 0o600)
	archivetest.Put(t, mem, name+".partial", storage.CodecZstd, seg[:1000]) // superseded by the push

	res, err := archive.PushWAL(ctx, repo, "pg_wal/"+name)
	if err != nil || res.AlreadyStored {
		t.Fatalf("%+v, %v", res, err)
	}
	stored := archivetest.Read(t, repo, name)
	if !bytes.Equal(stored, seg) {
		t.Fatal("stored content differs")
	}
	if f, err := archive.ForFetch(ctx, repo, name+".partial"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("superseded partial not removed: %+v, %v", f, err)
	}
	// Again (PostgreSQL retries after a crash): success, nothing written.
	if res, err := archive.PushWAL(ctx, repo, "pg_wal/"+name); err != nil || !res.AlreadyStored {
		t.Fatalf("second push: %+v, %v", res, err)
	}
	// Same content stored with another codec: still the same.
	other := storage.NewRepository(mem, storage.CodecGzip)
	if res, err := archive.PushWAL(ctx, other, "pg_wal/"+name); err != nil || !res.AlreadyStored {
		t.Fatalf("push with another codec: %+v, %v", res, err)
	}
	// Different content under the same name: refused, stored object intact.
	changed := slices.Clone(seg)
	changed[len(changed)/2] ^= 0xFF
	os.WriteFile("pg_wal/"+name, changed, 0o600)
	if _, err := archive.PushWAL(ctx, repo, "pg_wal/"+name); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("error %v, want ErrExists", err)
	}
	if !bytes.Equal(archivetest.Read(t, repo, name), seg) {
		t.Fatal("stored object changed")
	}
	// Round trip through the wal-fetch lookup.
	if got := fetched(t, repo, name); !bytes.Equal(got, seg) {
		t.Fatal("fetched content differs from the pushed file")
	}

	// History and backup history files.
	for _, n := range []string{"00000002.history", "000000010000000000000003.00000028.backup"} {
		content := []byte("content of " + n + "\n")
		os.WriteFile("pg_wal/"+n, content, 0o600)
		if res, err := archive.PushWAL(ctx, repo, "pg_wal/"+n); err != nil || res.AlreadyStored {
			t.Fatalf("%s: %+v, %v", n, res, err)
		}
		if res, err := archive.PushWAL(ctx, repo, "pg_wal/"+n); err != nil || !res.AlreadyStored {
			t.Fatalf("%s again: %+v, %v", n, res, err)
		}
		os.WriteFile("pg_wal/"+n, []byte("other\n"), 0o600)
		if _, err := archive.PushWAL(ctx, repo, "pg_wal/"+n); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("%s changed: error %v, want ErrExists", n, err)
		}
		if got := archivetest.Read(t, repo, n); !bytes.Equal(got, content) {
			t.Fatalf("%s: stored object changed", n)
		}
		if got := fetched(t, repo, n); !bytes.Equal(got, content) {
			t.Fatalf("%s: fetched content differs", n)
		}
	}
}

func TestPushWALPartial(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	dir := t.TempDir()
	const name = "000000010000000000000007.partial"
	seg := archivetest.Segment(t, "000000010000000000000007", archivetest.SysID, 5)
	// The stream stored the first bytes; PostgreSQL archives the whole file
	// at promotion: the longer version of the same WAL replaces it.
	archivetest.Put(t, mem, name, storage.CodecLZ4, seg[:5000])
	p := filepath.Join(dir, name)
	os.WriteFile(p, seg, 0o600)
	res, err := archive.PushWAL(ctx, repo, p)
	if err != nil || !res.Replaced {
		t.Fatalf("%+v, %v", res, err)
	}
	if !bytes.Equal(archivetest.Read(t, repo, name), seg) {
		t.Fatal("partial not replaced")
	}
	if objs := archivetest.Keys(t, mem, archivetest.WALKey(name)); len(objs) != 1 {
		t.Fatalf("objects %v: the old version (other codec) must go", objs)
	}
	// A shorter or different partial is refused.
	os.WriteFile(p, seg[:4000], 0o600)
	if _, err := archive.PushWAL(ctx, repo, p); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("shorter partial: %v, want ErrExists", err)
	}
	if !bytes.Equal(archivetest.Read(t, repo, name), seg) {
		t.Fatal("stored partial changed")
	}
}

func TestPushWALRefusals(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const name = "000000010000000000000003"
	seg := archivetest.Segment(t, name, archivetest.SysID, 6)
	for _, tc := range []struct {
		desc, path string
		is         error
	}{
		{"not a WAL name", write("postmaster.pid", []byte("1")), archive.ErrInvalidName},
		{"dot file", write(".000000010000000000000003", seg), archive.ErrInvalidName},
		{"archive_status file", write("000000010000000000000003.ready", nil), archive.ErrInvalidName},
		{"another cluster's segment", write(name, archivetest.Segment(t, name, "6999999999999999999", 6)), storage.ErrWrongCluster},
		{"PostgreSQL 16 segment in a PostgreSQL 15 repository", write(name, withMagic(seg, 0xD113)), storage.ErrWrongCluster},
		{"unknown page magic", write(name, withMagic(seg, 0x1234)), storage.ErrWrongCluster},
		{"renamed segment", write("000000010000000000000004", seg), nil},
		{"short segment", write("000000010000000000000005", seg[:4096]), nil},
		{"no page header", write("000000010000000000000006", make([]byte, archivetest.SegSize)), nil},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := archive.PushWAL(ctx, repo, tc.path)
			if err == nil || tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %v", err, tc.is)
			}
			if keys := archivetest.Keys(t, mem, storage.WALPrefix); len(keys) != 0 {
				t.Fatalf("stored %v", keys)
			}
		})
	}
	t.Run("repository without walkeeper.json", func(t *testing.T) {
		mem := storage.NewMemory()
		bare := storage.NewRepository(mem, storage.CodecZstd)
		_, err := archive.PushWAL(ctx, bare, write(name, seg))
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte("walkeeper backup")) {
			t.Fatalf("error %v, want a hint to run walkeeper backup or stream", err)
		}
		if keys := archivetest.Keys(t, mem, ""); len(keys) != 0 {
			t.Fatalf("stored %v", keys)
		}
	})
}

// withMagic returns a copy of seg whose first page has another magic.
func withMagic(seg []byte, magic uint16) []byte {
	out := bytes.Clone(seg)
	binary.NativeEndian.PutUint16(out, magic)
	return out
}

func TestWALPageMagic(t *testing.T) {
	for major := 15; major <= 18; major++ {
		m, ok := archive.WALPageMagic(major)
		if !ok {
			t.Fatalf("no page magic for PostgreSQL %d", major)
		}
		if back, ok := archive.MajorOfWALPageMagic(m); !ok || back != major {
			t.Errorf("MajorOfWALPageMagic(0x%04X) = %d, %v; want %d", m, back, ok, major)
		}
	}
	if _, ok := archive.WALPageMagic(14); ok {
		t.Error("PostgreSQL 14 has a page magic")
	}
}

func TestPushWALOverCorruptObject(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	const name = "000000010000000000000003"
	seg := archivetest.Segment(t, name, archivetest.SysID, 7)
	key := archivetest.Put(t, mem, name, storage.CodecZstd, seg)
	info, _ := mem.Stat(ctx, key)
	mem.Corrupt(key, int(info.Size/2))
	before, _ := mem.Get(ctx, key, 0, -1)
	want, _ := io.ReadAll(before)
	p := filepath.Join(t.TempDir(), name)
	os.WriteFile(p, seg, 0o600)
	if _, err := archive.PushWAL(ctx, repo, p); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("error %v, want ErrCorrupt", err)
	}
	after, _ := mem.Get(ctx, key, 0, -1)
	if got, _ := io.ReadAll(after); !bytes.Equal(got, want) {
		t.Fatal("the damaged object was replaced")
	}
}
