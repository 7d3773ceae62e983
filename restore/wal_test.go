package restore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

// Unit tests of wal-fetch and wal-push against the in-memory backend, with
// 1 MiB segments to stay quick.

// walTestDirNames lists a directory.
func walTestDirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestFetchWALSegmentAndHistory(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	seg := archivetest.Segment(t, "000000010000000000000003", archivetest.SysID, 1)
	archivetest.Put(t, mem, "000000010000000000000003", storage.CodecLZ4, seg) // any codec
	history := []byte("1\t0/3000000\tno recovery target specified\n")
	archivetest.Put(t, mem, "00000002.history", storage.CodecZstd, history)
	// PostgreSQL runs restore_command in the data directory with a
	// relative %p, and expects an existing file to be replaced.
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.Mkdir("pg_wal", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("pg_wal/RECOVERYXLOG", []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		want []byte
	}{{"000000010000000000000003", seg}, {"00000002.history", history}} {
		res, err := FetchWAL(ctx, repo, tc.name, "pg_wal/RECOVERYXLOG", FetchOptions{})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "pg_wal/RECOVERYXLOG"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%s: content differs (%d bytes, want %d)", tc.name, len(got), len(tc.want))
		}
		if res.Size != int64(len(tc.want)) || res.Partial || res.FromSpool {
			t.Errorf("%s: result %+v", tc.name, res)
		}
		st, _ := os.Stat("pg_wal/RECOVERYXLOG")
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", tc.name, st.Mode().Perm())
		}
		if names := walTestDirNames(t, "pg_wal"); !slices.Equal(names, []string{"RECOVERYXLOG"}) {
			t.Errorf("%s: pg_wal holds %v: temporary files left behind", tc.name, names)
		}
	}
}

func TestFetchWALNotFound(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	archivetest.Put(t, mem, "000000010000000000000003", storage.CodecZstd, archivetest.Segment(t, "000000010000000000000003", archivetest.SysID, 1))
	dir := t.TempDir()
	dest := filepath.Join(dir, "RECOVERYXLOG")
	for _, name := range []string{
		"000000010000000000000004",                 // the next segment
		"000000020000000000000003",                 // the same segment on another timeline
		"00000003.history",                         // a timeline that does not exist
		"000000010000000000000004.partial",         // partial asked for explicitly
		"000000010000000000000003.00000028.backup", // backup history file not stored
		"00000001.backup",                          // no WAL kind at all
		"RECOVERYHISTORY",                          // idem
	} {
		_, err := FetchWAL(ctx, repo, name, dest, FetchOptions{})
		if !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s: error %v, want not found", name, err)
		}
		if errors.Is(err, ErrInvalidWALName) {
			t.Errorf("%s: reported as invalid", name)
		}
	}
	if names := walTestDirNames(t, dir); len(names) != 0 {
		t.Errorf("files written: %v", names)
	}
}

func TestFetchWALInvalidNames(t *testing.T) {
	repo, _, ctx := archivetest.Repo(t)
	dir := t.TempDir()
	for _, name := range []string{"", ".", "..", "../x", "../000000010000000000000003", "a/b", ".hidden", "x y", "000000010000000000000003\n", "é"} {
		_, err := FetchWAL(ctx, repo, name, filepath.Join(dir, "out"), FetchOptions{})
		if !errors.Is(err, ErrInvalidWALName) {
			t.Errorf("%q: error %v, want ErrInvalidWALName", name, err)
		}
	}
	if names := walTestDirNames(t, dir); len(names) != 0 {
		t.Errorf("files written: %v", names)
	}
}

func TestFetchWALPartialRule(t *testing.T) {
	const name = "000000010000000000000005"
	partial := archivetest.Segment(t, name, archivetest.SysID, 2)[:300_000]
	for _, tc := range []struct {
		desc   string
		others []string // other objects stored next to NAME.partial
		served bool
	}{
		{"newest of its timeline", []string{"000000010000000000000003", "000000010000000000000004", "00000001.history"}, true},
		{"last segment of a timeline that was promoted", []string{"000000010000000000000004", "000000020000000000000005", "000000020000000000000006", "00000002.history"}, true},
		// A leftover partial beside later WAL (a hole at NAME) is served
		// too: it is a prefix of NAME's WAL, and recovery stops at the
		// hole either way (docs/wal-fetch.md).
		{"a later complete segment on the same timeline", []string{"000000010000000000000004", "000000010000000000000006"}, true},
		{"a later partial on the same timeline", []string{"000000010000000000000004", "000000010000000000000009.partial"}, true},
		{"a later segment in a higher log file", []string{"000000010000000100000000"}, true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			repo, mem, ctx := archivetest.Repo(t)
			archivetest.Put(t, mem, name+".partial", storage.CodecZstd, partial)
			for _, o := range tc.others {
				archivetest.Put(t, mem, o, storage.CodecZstd, []byte("x"))
			}
			dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
			res, err := FetchWAL(ctx, repo, name, dest, FetchOptions{})
			if !tc.served {
				if !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("error %v, want not found", err)
				}
				if _, err := os.Stat(dest); err == nil {
					t.Fatal("destination written")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(dest)
			if len(got) != archivetest.SegSize || !res.Partial || res.Size != archivetest.SegSize {
				t.Fatalf("%d bytes, result %+v; want the partial padded to %d", len(got), res, archivetest.SegSize)
			}
			if !bytes.Equal(got[:len(partial)], partial) || !bytes.Equal(got[len(partial):], make([]byte, archivetest.SegSize-len(partial))) {
				t.Fatal("padded partial is not the partial followed by zeros")
			}
			if res.CompleteSegment() {
				t.Error("a padded partial counts as a complete segment (would start prefetching)")
			}
			// Asked for by its own name, the partial is served as stored.
			if _, err := FetchWAL(ctx, repo, name+".partial", dest, FetchOptions{}); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, partial) {
				t.Fatalf("%s.partial: %d bytes, want the %d stored", name, len(got), len(partial))
			}
		})
	}

	t.Run("complete segment wins over its partial", func(t *testing.T) {
		repo, mem, ctx := archivetest.Repo(t)
		seg := archivetest.Segment(t, name, archivetest.SysID, 2)
		archivetest.Put(t, mem, name+".partial", storage.CodecZstd, partial)
		archivetest.Put(t, mem, name, storage.CodecZstd, seg)
		dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		res, err := FetchWAL(ctx, repo, name, dest, FetchOptions{})
		if err != nil || res.Partial {
			t.Fatalf("%+v, %v", res, err)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, seg) {
			t.Fatal("content differs from the complete segment")
		}
	})

	t.Run("partial longer than a segment", func(t *testing.T) {
		repo, mem, ctx := archivetest.Repo(t)
		archivetest.Put(t, mem, name+".partial", storage.CodecZstd, make([]byte, archivetest.SegSize+1))
		dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		if _, err := FetchWAL(ctx, repo, name, dest, FetchOptions{}); err == nil || errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("error %v, want a failure", err)
		}
		if names := walTestDirNames(t, filepath.Dir(dest)); len(names) != 0 {
			t.Errorf("files left: %v", names)
		}
	})

	t.Run("no walkeeper.json", func(t *testing.T) {
		mem := storage.NewMemory()
		repo := storage.NewRepository(mem, storage.CodecZstd)
		archivetest.Put(t, mem, name+".partial", storage.CodecZstd, partial)
		_, err := FetchWAL(context.Background(), repo, name, filepath.Join(t.TempDir(), "x"), FetchOptions{})
		if err == nil || errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("error %v: an unknown segment size must be a failure, not the end of the archive", err)
		}
	})
}

func TestFetchWALCorruptObject(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	const name = "000000010000000000000003"
	key := archivetest.Put(t, mem, name, storage.CodecZstd, archivetest.Segment(t, name, archivetest.SysID, 1))
	info, _ := mem.Stat(ctx, key)
	mem.Corrupt(key, int(info.Size/2))
	dir := t.TempDir()
	_, err := FetchWAL(ctx, repo, name, filepath.Join(dir, "fresh"), FetchOptions{})
	if !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("error %v, want ErrCorrupt", err)
	}
	// An existing destination keeps its content.
	old := filepath.Join(dir, "RECOVERYXLOG")
	os.WriteFile(old, []byte("previous"), 0o600)
	if _, err := FetchWAL(ctx, repo, name, old, FetchOptions{}); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("error %v, want ErrCorrupt", err)
	}
	if names := walTestDirNames(t, dir); !slices.Equal(names, []string{"RECOVERYXLOG"}) {
		t.Errorf("directory holds %v: the corrupt object was written somewhere", names)
	}
	if got, _ := os.ReadFile(old); string(got) != "previous" {
		t.Errorf("destination changed to %d bytes", len(got))
	}
}

func TestPrefetchSpool(t *testing.T) {
	repo, mem, ctx := archivetest.Repo(t)
	segs := map[string][]byte{}
	// Segments 3..7 and 9 on timeline 1 (8 is missing), 6.partial is stale.
	for _, n := range []string{"000000010000000000000003", "000000010000000000000004", "000000010000000000000005",
		"000000010000000000000006", "000000010000000000000007", "000000010000000000000009"} {
		segs[n] = archivetest.Segment(t, n, archivetest.SysID, 3)
		archivetest.Put(t, mem, n, storage.CodecZstd, segs[n])
	}
	archivetest.Put(t, mem, "000000010000000000000008.partial", storage.CodecZstd, []byte("partial"))
	pgwal := t.TempDir()
	dest := filepath.Join(pgwal, "RECOVERYXLOG")
	spool := PrefetchDir(dest)
	if spool != filepath.Join(pgwal, ".walkeeper-prefetch") {
		t.Fatalf("spool %s", spool)
	}
	lock, ok, err := LockSpool(spool)
	if err != nil || !ok {
		t.Fatalf("LockSpool: %v, %v", ok, err)
	}
	if _, ok2, err := LockSpool(spool); ok2 || err != nil {
		t.Fatalf("second LockSpool: ok %v, %v; want refused", ok2, err)
	}
	// Stale leftovers: a temporary file and a segment before the window.
	os.WriteFile(filepath.Join(spool, ".000000010000000000000004.walkeeper-1.tmp"), []byte("junk"), 0o600)
	os.WriteFile(filepath.Join(spool, "000000010000000000000002"), make([]byte, archivetest.SegSize), 0o600)
	n, err := Prefetch(ctx, repo, PrefetchOptions{After: "000000010000000000000003", Count: 8, Spool: spool, Parallel: 3})
	lock.Close()
	if err != nil {
		t.Fatal(err)
	}
	// 4..7 exist; 8 is only a partial, which stops the prefetch.
	want := []string{".lock", "000000010000000000000004", "000000010000000000000005", "000000010000000000000006", "000000010000000000000007"}
	if got := walTestDirNames(t, spool); n != 4 || !slices.Equal(got, want) {
		t.Fatalf("prefetched %d, spool %v; want 4, %v", n, got, want)
	}
	// A second run downloads nothing new.
	if n, err := Prefetch(ctx, repo, PrefetchOptions{After: "000000010000000000000003", Count: 8, Spool: spool}); n != 0 || err != nil {
		t.Fatalf("second prefetch: %d, %v", n, err)
	}

	// wal-fetch takes segment 5 from the spool and drops 4 and 5.
	mem.Delete(ctx, archivetest.WALKey("000000010000000000000005")+".zst") // proves the spool was used
	res, err := FetchWAL(ctx, repo, "000000010000000000000005", dest, FetchOptions{Spool: spool})
	if err != nil || !res.FromSpool || !res.CompleteSegment() {
		t.Fatalf("%+v, %v", res, err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, segs["000000010000000000000005"]) {
		t.Fatal("segment from the spool differs")
	}
	want = []string{".lock", "000000010000000000000006", "000000010000000000000007"}
	if got := walTestDirNames(t, spool); !slices.Equal(got, want) {
		t.Fatalf("spool %v, want %v", got, want)
	}
	// A spool file of implausible size is not served.
	os.WriteFile(filepath.Join(spool, "000000010000000000000006"), []byte("short"), 0o600)
	res, err = FetchWAL(ctx, repo, "000000010000000000000006", dest, FetchOptions{Spool: spool})
	if err != nil || res.FromSpool {
		t.Fatalf("%+v, %v", res, err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, segs["000000010000000000000006"]) {
		t.Fatal("segment differs")
	}
	// The end of the archive removes the spool.
	if _, err := FetchWAL(ctx, repo, "00000001000000000000000A", dest, FetchOptions{Spool: spool}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("error %v, want not found", err)
	}
	if _, err := os.Stat(spool); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spool still there: %v", walTestDirNames(t, spool))
	}
	// Prefetch stops at a corrupt segment with an error and leaves nothing.
	key := archivetest.WALKey("000000010000000000000004") + ".zst"
	info, _ := mem.Stat(ctx, key)
	mem.Corrupt(key, int(info.Size/2))
	if _, err := Prefetch(ctx, repo, PrefetchOptions{After: "000000010000000000000003", Count: 1, Spool: spool}); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("error %v, want ErrCorrupt", err)
	}
	if got := walTestDirNames(t, spool); len(got) != 0 {
		t.Fatalf("spool holds %v after a corrupt download", got)
	}
}
