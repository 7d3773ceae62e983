package archive_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"slices"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

func TestLayoutKeys(t *testing.T) {
	flat, grouped := archive.LayoutFor(1), archive.LayoutFor(2)
	for _, tc := range []struct{ name, flat, grouped string }{
		{"000000010000000500000003", "wal/000000010000000500000003", "wal/0000000100000005/000000010000000500000003"},
		{"000000010000000500000003.partial", "wal/000000010000000500000003.partial", "wal/0000000100000005/000000010000000500000003.partial"},
		{"000000010000000500000003.00000028.backup", "wal/000000010000000500000003.00000028.backup", "wal/0000000100000005/000000010000000500000003.00000028.backup"},
		{"00000002.history", "wal/00000002.history", "wal/00000002.history"},
	} {
		if got := flat.Key(tc.name); got != tc.flat {
			t.Errorf("format 1 %s: %s, want %s", tc.name, got, tc.flat)
		}
		if got := grouped.Key(tc.name); got != tc.grouped {
			t.Errorf("format 2 %s: %s, want %s", tc.name, got, tc.grouped)
		}
		for _, key := range []string{tc.flat, tc.grouped, tc.grouped + ".zst"} {
			if got := archive.NameOfKey(key); got != tc.name {
				t.Errorf("NameOfKey(%s) = %s, want %s", key, got, tc.name)
			}
		}
	}
	// Keys sort as names do, so a listing is in WAL order.
	names := []string{"00000001000000FF000000FF", "000000010000010000000000", "000000010000010000000000.partial",
		"000000010000010000000001", "00000002.history", "000000020000000000000000"}
	var keys []string
	for _, n := range names {
		keys = append(keys, grouped.Key(n))
	}
	if !slices.IsSorted(keys) {
		t.Errorf("grouped keys out of name order: %v", keys)
	}
}

// formatOneRepo is a repository a walkeeper of format 1 made: walkeeper.json
// says format 1 and every WAL file is directly under wal/.
func formatOneRepo(t *testing.T) (*storage.Repository, *storage.Memory) {
	t.Helper()
	mem := storage.NewMemory()
	cfg, _ := json.Marshal(storage.Config{FormatVersion: 1, SystemIdentifier: archivetest.SysID, PGMajorVersion: 15,
		WALSegmentSize: archivetest.SegSize})
	if err := mem.Put(context.Background(), storage.ConfigKey, bytes.NewReader(cfg)); err != nil {
		t.Fatal(err)
	}
	return storage.NewRepository(mem, storage.CodecZstd), mem
}

// TestFormatOneRepository: a repository of format 1 is read where it keeps
// its files, and written there too (the layout is the repository's, not
// this walkeeper's), so an old archive stays whole.
func TestFormatOneRepository(t *testing.T) {
	repo, mem := formatOneRepo(t)
	ctx := context.Background()
	const size = archivetest.SegSize
	old := archive.LayoutFor(1)
	for s := uint64(2); s <= 4; s++ {
		name := archive.SegmentName(1, s, size)
		if k := archivetest.Put(t, mem, name, storage.CodecZstd, archivetest.Segment(t, name, archivetest.SysID, s)); k != old.Key(name)+".zst" {
			t.Fatalf("stored at %s, want the flat key", k)
		}
	}
	archivetest.Put(t, mem, archive.SegmentName(1, 5, size)+".partial", storage.CodecZstd, []byte("part"))

	if l, err := archive.LayoutOf(ctx, repo); err != nil || l.Grouped() {
		t.Fatalf("layout of a format 1 repository: grouped=%v, %v", l.Grouped(), err)
	}
	ix, err := archive.LoadFrom(ctx, repo, size, 3)
	if err != nil {
		t.Fatal(err)
	}
	if n, p := ix.Counts(); n != 2 || p != 1 {
		t.Errorf("LoadFrom(3): %d segments, %d partials; want 2 and 1", n, p)
	}
	if end := ix.EndOn(archive.PathTo(1, nil)); end.Seg != 5 {
		t.Errorf("end of timeline 1: %+v, want segment 5", end)
	}
	if f, err := archive.ForFetch(ctx, repo, archive.SegmentName(1, 5, size)); err != nil || !f.Partial {
		t.Errorf("ForFetch of the partial's segment: %+v, %v", f, err)
	}

	dir := t.TempDir()
	name := archive.SegmentName(1, 6, size)
	if err := os.WriteFile(dir+"/"+name, archivetest.Segment(t, name, archivetest.SysID, 6), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := archive.PushWAL(ctx, repo, dir+"/"+name)
	if err != nil || res.Key != old.Key(name)+".zst" {
		t.Fatalf("wal-push into format 1: %+v, %v; want key %s.zst", res, err, old.Key(name))
	}
}

// TestStrayKeyIsNotASegment: a WAL name stored where the repository's
// layout does not keep it (a flat key in a format 2 repository) is not
// counted as stored, since no lookup would find it.
func TestStrayKeyIsNotASegment(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	name := archive.SegmentName(1, 3, archivetest.SegSize)
	if err := mem.Put(ctx, archive.LayoutFor(1).Key(name)+".zst", bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	ix, err := archive.Load(ctx, repo, archivetest.SegSize)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := ix.Counts(); n != 0 {
		t.Errorf("a flat key in a format %d repository counted as a segment", storage.FormatVersion)
	}
	if _, err := archive.Find(ctx, repo, name); err == nil {
		t.Error("Find found the stray key")
	}
}
