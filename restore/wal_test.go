package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Unit tests of wal-fetch and wal-push against the in-memory backend, with
// 1 MiB segments to stay quick.

const (
	walTestSegSize = 1 << 20
	walTestSysID   = "7312345678901234567"
)

// walTestRepo returns a repository with walkeeper.json, its backend and a
// context.
func walTestRepo(t *testing.T) (*storage.Repository, *storage.Memory, context.Context) {
	t.Helper()
	mem := storage.NewMemory()
	repo := storage.NewRepository(mem, storage.CodecZstd)
	ctx := context.Background()
	if _, err := repo.Init(ctx, storage.Config{SystemIdentifier: walTestSysID, PGMajorVersion: 15, WALSegmentSize: walTestSegSize}); err != nil {
		t.Fatal(err)
	}
	return repo, mem, ctx
}

// walTestSegment returns segment content for name: a long page header as
// PostgreSQL writes it (system identifier, segment size, page address),
// then pseudo-random bytes from seed.
func walTestSegment(t *testing.T, name, sysid string, seed uint64) []byte {
	t.Helper()
	n, err := archive.ParseName(name, walTestSegSize)
	if err != nil {
		t.Fatal(err)
	}
	segno := n.Seg
	id, err := strconv.ParseUint(sysid, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, walTestSegSize)
	r := rand.New(rand.NewPCG(seed, segno))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	clear(data[:xlpLongHeaderSize])
	binary.NativeEndian.PutUint16(data[0:], 0xD110)
	binary.NativeEndian.PutUint16(data[xlpInfoOffset:], xlpLongHeaderFlag)
	binary.NativeEndian.PutUint32(data[4:], 1)
	binary.NativeEndian.PutUint64(data[xlpPageAddrOffset:], segno*walTestSegSize)
	binary.NativeEndian.PutUint64(data[xlpSysIDOffset:], id)
	binary.NativeEndian.PutUint32(data[xlpSegSizeOffset:], walTestSegSize)
	binary.NativeEndian.PutUint32(data[36:], 8192)
	return data
}

// walTestPut stores content under the WAL name with codec c.
func walTestPut(t *testing.T, mem *storage.Memory, name string, c storage.Codec, content []byte) string {
	t.Helper()
	repo := storage.NewRepository(mem, c)
	w, err := repo.Create(context.Background(), archive.Key(name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return archive.Key(name) + c.Ext()
}

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
	repo, mem, ctx := walTestRepo(t)
	seg := walTestSegment(t, "000000010000000000000003", walTestSysID, 1)
	walTestPut(t, mem, "000000010000000000000003", storage.CodecLZ4, seg) // any codec
	history := []byte("1\t0/3000000\tno recovery target specified\n")
	walTestPut(t, mem, "00000002.history", storage.CodecZstd, history)
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
	repo, mem, ctx := walTestRepo(t)
	walTestPut(t, mem, "000000010000000000000003", storage.CodecZstd, walTestSegment(t, "000000010000000000000003", walTestSysID, 1))
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
	repo, _, ctx := walTestRepo(t)
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
	partial := walTestSegment(t, name, walTestSysID, 2)[:300_000]
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
			repo, mem, ctx := walTestRepo(t)
			walTestPut(t, mem, name+".partial", storage.CodecZstd, partial)
			for _, o := range tc.others {
				walTestPut(t, mem, o, storage.CodecZstd, []byte("x"))
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
			if len(got) != walTestSegSize || !res.Partial || res.Size != walTestSegSize {
				t.Fatalf("%d bytes, result %+v; want the partial padded to %d", len(got), res, walTestSegSize)
			}
			if !bytes.Equal(got[:len(partial)], partial) || !bytes.Equal(got[len(partial):], make([]byte, walTestSegSize-len(partial))) {
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
		repo, mem, ctx := walTestRepo(t)
		seg := walTestSegment(t, name, walTestSysID, 2)
		walTestPut(t, mem, name+".partial", storage.CodecZstd, partial)
		walTestPut(t, mem, name, storage.CodecZstd, seg)
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
		repo, mem, ctx := walTestRepo(t)
		walTestPut(t, mem, name+".partial", storage.CodecZstd, make([]byte, walTestSegSize+1))
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
		walTestPut(t, mem, name+".partial", storage.CodecZstd, partial)
		_, err := FetchWAL(context.Background(), repo, name, filepath.Join(t.TempDir(), "x"), FetchOptions{})
		if err == nil || errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("error %v: an unknown segment size must be a failure, not the end of the archive", err)
		}
	})
}

func TestFetchWALCorruptObject(t *testing.T) {
	repo, mem, ctx := walTestRepo(t)
	const name = "000000010000000000000003"
	key := walTestPut(t, mem, name, storage.CodecZstd, walTestSegment(t, name, walTestSysID, 1))
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
	repo, mem, ctx := walTestRepo(t)
	segs := map[string][]byte{}
	// Segments 3..7 and 9 on timeline 1 (8 is missing), 6.partial is stale.
	for _, n := range []string{"000000010000000000000003", "000000010000000000000004", "000000010000000000000005",
		"000000010000000000000006", "000000010000000000000007", "000000010000000000000009"} {
		segs[n] = walTestSegment(t, n, walTestSysID, 3)
		walTestPut(t, mem, n, storage.CodecZstd, segs[n])
	}
	walTestPut(t, mem, "000000010000000000000008.partial", storage.CodecZstd, []byte("partial"))
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
	os.WriteFile(filepath.Join(spool, "000000010000000000000002"), make([]byte, walTestSegSize), 0o600)
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
	mem.Delete(ctx, archive.Key("000000010000000000000005")+".zst") // proves the spool was used
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
	key := archive.Key("000000010000000000000004") + ".zst"
	info, _ := mem.Stat(ctx, key)
	mem.Corrupt(key, int(info.Size/2))
	if _, err := Prefetch(ctx, repo, PrefetchOptions{After: "000000010000000000000003", Count: 1, Spool: spool}); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("error %v, want ErrCorrupt", err)
	}
	if got := walTestDirNames(t, spool); len(got) != 0 {
		t.Fatalf("spool holds %v after a corrupt download", got)
	}
}

func TestPushWAL(t *testing.T) {
	repo, mem, ctx := walTestRepo(t)
	dir := t.TempDir()
	t.Chdir(dir)
	os.Mkdir("pg_wal", 0o700)
	const name = "000000010000000000000003"
	seg := walTestSegment(t, name, walTestSysID, 4)
	os.WriteFile("pg_wal/"+name, seg, 0o600)
	walTestPut(t, mem, name+".partial", storage.CodecZstd, seg[:1000]) // superseded by the push

	res, err := PushWAL(ctx, repo, "pg_wal/"+name)
	if err != nil || res.AlreadyStored {
		t.Fatalf("%+v, %v", res, err)
	}
	stored := storedWAL(t, repo, name)
	if !bytes.Equal(stored, seg) {
		t.Fatal("stored content differs")
	}
	if s, _ := archive.LookupSegment(ctx, repo, name); s.HasPartial {
		t.Errorf("superseded partial %s not removed", s.Partial.Key)
	}
	// Again (PostgreSQL retries after a crash): success, nothing written.
	if res, err := PushWAL(ctx, repo, "pg_wal/"+name); err != nil || !res.AlreadyStored {
		t.Fatalf("second push: %+v, %v", res, err)
	}
	// Same content stored with another codec: still the same.
	other := storage.NewRepository(mem, storage.CodecGzip)
	if res, err := PushWAL(ctx, other, "pg_wal/"+name); err != nil || !res.AlreadyStored {
		t.Fatalf("push with another codec: %+v, %v", res, err)
	}
	// Different content under the same name: refused, stored object intact.
	changed := slices.Clone(seg)
	changed[len(changed)/2] ^= 0xFF
	os.WriteFile("pg_wal/"+name, changed, 0o600)
	if _, err := PushWAL(ctx, repo, "pg_wal/"+name); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("error %v, want ErrExists", err)
	}
	if !bytes.Equal(storedWAL(t, repo, name), seg) {
		t.Fatal("stored object changed")
	}
	// Round trip through wal-fetch.
	if _, err := FetchWAL(ctx, repo, name, "pg_wal/RECOVERYXLOG", FetchOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile("pg_wal/RECOVERYXLOG"); !bytes.Equal(got, seg) {
		t.Fatal("fetched content differs from the pushed file")
	}

	// History and backup history files.
	for _, n := range []string{"00000002.history", "000000010000000000000003.00000028.backup"} {
		content := []byte("content of " + n + "\n")
		os.WriteFile("pg_wal/"+n, content, 0o600)
		if res, err := PushWAL(ctx, repo, "pg_wal/"+n); err != nil || res.AlreadyStored {
			t.Fatalf("%s: %+v, %v", n, res, err)
		}
		if res, err := PushWAL(ctx, repo, "pg_wal/"+n); err != nil || !res.AlreadyStored {
			t.Fatalf("%s again: %+v, %v", n, res, err)
		}
		os.WriteFile("pg_wal/"+n, []byte("other\n"), 0o600)
		if _, err := PushWAL(ctx, repo, "pg_wal/"+n); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("%s changed: error %v, want ErrExists", n, err)
		}
		if got := storedWAL(t, repo, n); !bytes.Equal(got, content) {
			t.Fatalf("%s: stored object changed", n)
		}
		if _, err := FetchWAL(ctx, repo, n, "pg_wal/RECOVERYHISTORY", FetchOptions{}); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile("pg_wal/RECOVERYHISTORY"); !bytes.Equal(got, content) {
			t.Fatalf("%s: fetched content differs", n)
		}
	}
}

func TestPushWALPartial(t *testing.T) {
	repo, mem, ctx := walTestRepo(t)
	dir := t.TempDir()
	const name = "000000010000000000000007.partial"
	seg := walTestSegment(t, "000000010000000000000007", walTestSysID, 5)
	// The stream stored the first bytes; PostgreSQL archives the whole file
	// at promotion: the longer version of the same WAL replaces it.
	walTestPut(t, mem, name, storage.CodecLZ4, seg[:5000])
	p := filepath.Join(dir, name)
	os.WriteFile(p, seg, 0o600)
	res, err := PushWAL(ctx, repo, p)
	if err != nil || !res.Replaced {
		t.Fatalf("%+v, %v", res, err)
	}
	if !bytes.Equal(storedWAL(t, repo, name), seg) {
		t.Fatal("partial not replaced")
	}
	if objs := walTestKeys(t, mem, archive.Key(name)); len(objs) != 1 {
		t.Fatalf("objects %v: the old version (other codec) must go", objs)
	}
	// A shorter or different partial is refused.
	os.WriteFile(p, seg[:4000], 0o600)
	if _, err := PushWAL(ctx, repo, p); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("shorter partial: %v, want ErrExists", err)
	}
	if !bytes.Equal(storedWAL(t, repo, name), seg) {
		t.Fatal("stored partial changed")
	}
}

func TestPushWALRefusals(t *testing.T) {
	repo, mem, ctx := walTestRepo(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const name = "000000010000000000000003"
	seg := walTestSegment(t, name, walTestSysID, 6)
	for _, tc := range []struct {
		desc, path string
		is         error
	}{
		{"not a WAL name", write("postmaster.pid", []byte("1")), ErrInvalidWALName},
		{"dot file", write(".000000010000000000000003", seg), ErrInvalidWALName},
		{"archive_status file", write("000000010000000000000003.ready", nil), ErrInvalidWALName},
		{"another cluster's segment", write(name, walTestSegment(t, name, "6999999999999999999", 6)), storage.ErrWrongCluster},
		{"renamed segment", write("000000010000000000000004", seg), nil},
		{"short segment", write("000000010000000000000005", seg[:4096]), nil},
		{"no page header", write("000000010000000000000006", make([]byte, walTestSegSize)), nil},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := PushWAL(ctx, repo, tc.path)
			if err == nil || tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %v", err, tc.is)
			}
			if keys := walTestKeys(t, mem, storage.WALPrefix); len(keys) != 0 {
				t.Fatalf("stored %v", keys)
			}
		})
	}
	t.Run("repository without walkeeper.json", func(t *testing.T) {
		mem := storage.NewMemory()
		bare := storage.NewRepository(mem, storage.CodecZstd)
		_, err := PushWAL(ctx, bare, write(name, seg))
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte("walkeeper backup")) {
			t.Fatalf("error %v, want a hint to run walkeeper backup or stream", err)
		}
		if keys := walTestKeys(t, mem, ""); len(keys) != 0 {
			t.Fatalf("stored %v", keys)
		}
	})
}

// storedWAL reads a stored WAL object, verified.
func storedWAL(t *testing.T, repo *storage.Repository, name string) []byte {
	t.Helper()
	info, err := repo.Find(context.Background(), archive.Key(name))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), info.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func walTestKeys(t *testing.T, b storage.Backend, prefix string) []string {
	t.Helper()
	var keys []string
	err := b.List(context.Background(), prefix, func(o storage.ObjectInfo) error {
		if o.Key != storage.ConfigKey {
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestPushWALOverCorruptObject(t *testing.T) {
	repo, mem, ctx := walTestRepo(t)
	const name = "000000010000000000000003"
	seg := walTestSegment(t, name, walTestSysID, 7)
	key := walTestPut(t, mem, name, storage.CodecZstd, seg)
	info, _ := mem.Stat(ctx, key)
	mem.Corrupt(key, int(info.Size/2))
	before, _ := mem.Get(ctx, key, 0, -1)
	want, _ := io.ReadAll(before)
	p := filepath.Join(t.TempDir(), name)
	os.WriteFile(p, seg, 0o600)
	if _, err := PushWAL(ctx, repo, p); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("error %v, want ErrCorrupt", err)
	}
	after, _ := mem.Get(ctx, key, 0, -1)
	if got, _ := io.ReadAll(after); !bytes.Equal(got, want) {
		t.Fatal("the damaged object was replaced")
	}
}
