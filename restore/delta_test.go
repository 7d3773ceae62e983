package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

// deltaFile is one regular file of the delta fixture.
type deltaFile struct {
	oid, name, content string
}

// deltaFixture is a chunked backup with a tablespace whose manifest lists
// every file with its CRC-32C, as PostgreSQL writes it.
type deltaFixture struct {
	repo           *storage.Repository
	ctx            context.Context
	parent         string
	target, tsLoc  string
	oldTS          string
	files          []deltaFile
	opts           func(fsys fileSystem) Options
	sysID          string
	pgControlBytes []byte
}

func controlFile(sysID string) []byte {
	id, _ := strconv.ParseUint(sysID, 10, 64)
	b := make([]byte, 8192)
	binary.NativeEndian.PutUint64(b, id)
	return b
}

func newDeltaFixture(t *testing.T) *deltaFixture {
	t.Helper()
	repo, _, ctx := archivetest.Repo(t)
	f := &deltaFixture{repo: repo, ctx: ctx, parent: t.TempDir(), oldTS: "/srv/old-ts", sysID: archivetest.SysID}
	f.target = filepath.Join(f.parent, "data")
	f.tsLoc = filepath.Join(f.parent, "ts")
	f.pgControlBytes = controlFile(f.sysID)
	big := strings.Repeat("relation page ", 20000) // ~280 kB
	f.files = []deltaFile{
		{"", "backup_label", "START WAL LOCATION: 0/2000028\n"},
		{"", "PG_VERSION", "15\n"},
		{"", "postgresql.conf", "port = 5432\n"},
		{"", "postgresql.auto.conf", "# auto\n"},
		{"", "global/1262", strings.Repeat("g", 8192)},
		{"", "base/1/1259", big},
		{"", "base/1/1249", strings.Repeat("a", 16384)},
		{"", "base/1/2600", strings.Repeat("b", 8192)},
		{"", "base/1/16400_init", ""},
		{"", "base/5/2601", strings.Repeat("c", 8192)},
		{"16385", "PG_15_202209061/5/16390", strings.Repeat("t", 65536)},
		{"16385", "PG_15_202209061/5/16391", strings.Repeat("u", 8192)},
	}
	var first, second []tar.Header
	var content = map[string]string{}
	add := func(list *[]tar.Header, h tar.Header) { *list = append(*list, h) }
	add(&first, tar.Header{Name: "global/", Typeflag: tar.TypeDir})
	add(&first, tar.Header{Name: "base/", Typeflag: tar.TypeDir})
	add(&first, tar.Header{Name: "base/1/", Typeflag: tar.TypeDir})
	add(&first, tar.Header{Name: "base/5/", Typeflag: tar.TypeDir})
	add(&first, tar.Header{Name: "pg_wal/", Typeflag: tar.TypeDir})
	add(&first, tar.Header{Name: "pg_wal/archive_status/", Typeflag: tar.TypeDir})
	add(&first, tar.Header{Name: "pg_replslot/", Typeflag: tar.TypeDir})
	add(&first, tar.Header{Name: "pg_tblspc/", Typeflag: tar.TypeDir})
	var ts []tar.Header
	add(&ts, tar.Header{Name: "PG_15_202209061/", Typeflag: tar.TypeDir})
	add(&ts, tar.Header{Name: "PG_15_202209061/5/", Typeflag: tar.TypeDir})
	var manifest strings.Builder
	manifest.WriteString("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n")
	line := func(p string, data []byte) {
		fmt.Fprintf(&manifest, "%s,\n", manifestFile{Path: p, Size: int64(len(data)), LastModified: "2026-01-01 00:00:00 GMT",
			Algorithm: "CRC32C", Checksum: crc32cHex(crc32.Checksum(data, castagnoli))}.line())
	}
	for i, df := range f.files {
		h := tar.Header{Name: df.name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(df.content))}
		content[df.oid+"/"+df.name] = df.content
		switch {
		case df.oid != "":
			add(&ts, h)
		case i < 5:
			add(&first, h)
		default:
			add(&second, h)
		}
		line(manifestPath(df.oid, df.name), []byte(df.content))
	}
	tsMap := "16385 " + f.oldTS + "\n"
	add(&first, tar.Header{Name: "tablespace_map", Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(tsMap))})
	content["/tablespace_map"] = tsMap
	line("tablespace_map", []byte(tsMap))
	add(&second, tar.Header{Name: "global/pg_control", Typeflag: tar.TypeReg, Mode: 0o600, Size: 8192})
	line("global/pg_control", f.pgControlBytes)
	manifest.WriteString("{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"x\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"" +
		crc32cHex(crc32.Checksum([]byte("15\n"), castagnoli)) + "\" }\n],\n\"Manifest-Checksum\": \"00\"}\n")
	mk := func(oid string, hs []tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range hs {
			if h.Mode == 0 {
				h.Mode = 0o700
			}
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				if h.Name == "global/pg_control" {
					tw.Write(f.pgControlBytes)
				} else {
					tw.Write([]byte(content[oid+"/"+h.Name]))
				}
			}
		}
		tw.Close()
		return buf.Bytes()
	}
	const id = "20260101T000000Z"
	storeChunkedBackup(t, repo, id, map[string][]byte{
		"base.00000.tar": mk("", first), "base.00001.tar": mk("", second), "16385.00000.tar": mk("16385", ts),
		"backup_manifest": []byte(manifest.String()),
	}, []basebackup.Tablespace{{Archive: "base.tar", Chunks: []string{"base.00000.tar", "base.00001.tar"}},
		{OID: "16385", Location: f.oldTS, Archive: "16385.tar", Chunks: []string{"16385.00000.tar"}}})
	var meta basebackup.Meta
	if err := repo.ReadJSON(ctx, storage.BackupMetaKey(id), &meta); err != nil {
		t.Fatal(err)
	}
	meta.SystemIdentifier = f.sysID
	if err := repo.WriteJSON(ctx, storage.BackupMetaKey(id), meta); err != nil {
		t.Fatal(err)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	f.opts = func(fsys fileSystem) Options {
		return Options{Repo: repo, Owner: me.Username, TargetDir: f.target, TablespaceMap: map[string]string{f.oldTS: f.tsLoc},
			Recovery: Recovery{RestoreCommand: "true", AsReplica: true}, Parallel: 3, Delta: true, fs: fsys}
	}
	return f
}

// tree maps every entry below root to its content ("dir", "-> dest" or
// the file's bytes).
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		r, _ := filepath.Rel(root, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			dest, _ := os.Readlink(p)
			out[r] = "-> " + dest
		case d.IsDir():
			out[r] = "dir"
		default:
			b, _ := os.ReadFile(p)
			out[r] = string(b)
		}
		return nil
	})
	return out
}

// withoutAutoConf drops the lines restore appends (they carry a time).
func withoutAutoConf(m map[string]string) map[string]string {
	for k, v := range m {
		if path.Base(k) == "postgresql.auto.conf" {
			m[k], _, _ = strings.Cut(v, "\n# Added by walkeeper restore")
		}
	}
	return m
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDeltaRestoreMakesTheDirectoryEqual: a resync of a directory that
// ran on (changed files of the same and of another size, a missing file,
// WAL, slots, temporary files, a stale postmaster.pid, a dropped
// database, standby.signal) leaves exactly what a fresh restore of the
// backup leaves, keeps the unchanged files, and writes less.
func TestDeltaRestoreMakesTheDirectoryEqual(t *testing.T) {
	f := newDeltaFixture(t)
	fresh := f.opts(nil)
	fresh.Delta = false
	fresh.TargetDir = filepath.Join(f.parent, "fresh")
	fresh.TablespaceMap = map[string]string{f.oldTS: filepath.Join(f.parent, "fresh-ts")}
	full, err := Run(f.ctx, fresh)
	if err != nil {
		t.Fatal(err)
	}
	if full.Delta != nil {
		t.Error("a full restore reports delta stats")
	}

	// The directory to resync: restored once, then run on.
	if _, err := Run(f.ctx, f.opts(nil)); err != nil {
		t.Fatal(err)
	}
	d := func(p string) string { return filepath.Join(f.target, filepath.FromSlash(p)) }
	ts := func(p string) string { return filepath.Join(f.tsLoc, filepath.FromSlash(p)) }
	writeFile(t, d("base/1/1249"), strings.Repeat("A", 16384))            // same size, other content
	writeFile(t, d("base/1/2600"), strings.Repeat("b", 16384))            // grown
	os.Remove(d("base/5/2601"))                                           // missing
	writeFile(t, ts("PG_15_202209061/5/16391"), strings.Repeat("v", 100)) // tablespace file changed
	extra := []string{
		"pg_wal/000000010000000000000003", "pg_wal/archive_status/000000010000000000000002.done",
		"postmaster.pid", "postmaster.opts", "pg_replslot/replica1/state", "base/1/pgsql_tmp/pgsql_tmp123.0",
		"base/1/t3_16500", "base/1/16400", "base/1/16400_vm", "global/pg_internal.init", "base/16999/1259", "base/16999/PG_VERSION",
		"backup_label.old", "pg_stat_tmp/global.stat",
	}
	for _, p := range extra {
		writeFile(t, d(p), "stale")
	}
	writeFile(t, d("postmaster.pid"), "999999999\n/data\n") // no such process
	writeFile(t, ts("PG_15_202209061/5/16999"), "dropped")
	writeFile(t, ts("PG_16_202307071/5/1"), "another server's") // not this backup's
	os.Symlink("/nowhere", d("base/1/stray-link"))

	res, err := Run(f.ctx, f.opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	if res.Delta == nil {
		t.Fatal("no delta stats")
	}
	got, want := withoutAutoConf(tree(t, f.target)), withoutAutoConf(tree(t, fresh.TargetDir))
	// The tablespace link points at each restore's own location.
	for _, m := range []map[string]string{got, want} {
		for k, v := range m {
			if strings.HasPrefix(k, "pg_tblspc/") || k == "tablespace_map" {
				m[k] = strings.NewReplacer(f.tsLoc, "TS", filepath.Join(f.parent, "fresh-ts"), "TS").Replace(v)
			}
		}
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		seen := map[string]bool{}
		for k := range got {
			seen[k] = true
		}
		for k := range want {
			seen[k] = true
		}
		for k := range seen {
			if !yield(k) {
				return
			}
		}
	}) {
		if g, w := got[k], want[k]; g != w {
			t.Errorf("%s: after delta %.40q, fresh restore %.40q", k, g, w)
		}
	}
	gotTS, wantTS := tree(t, f.tsLoc), tree(t, filepath.Join(f.parent, "fresh-ts"))
	if gotTS["PG_16_202307071/5/1"] != "another server's" {
		t.Error("the other server's version directory in the tablespace location was touched")
	}
	delete(gotTS, "PG_16_202307071/5/1")
	delete(gotTS, "PG_16_202307071/5")
	delete(gotTS, "PG_16_202307071")
	if fmt.Sprint(gotTS) != fmt.Sprint(wantTS) {
		t.Errorf("tablespace after delta %v, fresh %v", gotTS, wantTS)
	}

	// Kept: every listed file (the fixture's, tablespace_map and
	// pg_control) but the four changed ones, pg_control (removed first,
	// always written), and the two restore rewrites itself:
	// tablespace_map (relocated) and postgresql.auto.conf (settings
	// appended).
	listed := int64(len(f.files) + 2)
	if want := listed - 3 - 4; res.Delta.KeptFiles != want {
		t.Errorf("kept %d files, want %d", res.Delta.KeptFiles, want)
	}
	if res.Delta.KeptBytes < 280000 {
		t.Errorf("kept %d bytes, want the big relation file among them", res.Delta.KeptBytes)
	}
	if res.Wrote.Bytes >= full.Wrote.Bytes/2 {
		t.Errorf("delta wrote %d bytes, a full restore %d: want far less", res.Wrote.Bytes, full.Wrote.Bytes)
	}
	if res.Delta.Removed < int64(len(extra)) {
		t.Errorf("removed %d entries, want at least %d", res.Delta.Removed, len(extra))
	}
	t.Log(res.Delta.Summary(res.Wrote), "; full restore wrote", full.Wrote.Files, "files,", full.Wrote.Bytes, "bytes")

	// A second resync of an equal directory keeps every file.
	again, err := Run(f.ctx, f.opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	if again.Delta.KeptFiles != listed-3 {
		t.Errorf("second resync kept %d files, want all %d but the three restore writes itself", again.Delta.KeptFiles, listed-3)
	}
}

// TestDeltaRestoreRefuses: a directory a live server runs, one of another
// cluster, one whose cluster cannot be told, --force with --delta and an
// incremental backup are refused before anything is written.
func TestDeltaRestoreRefuses(t *testing.T) {
	f := newDeltaFixture(t)
	if _, err := Run(f.ctx, f.opts(nil)); err != nil {
		t.Fatal(err)
	}
	pgControl := filepath.Join(f.target, "global", "pg_control")
	untouched := func(t *testing.T) {
		t.Helper()
		if _, err := os.Stat(pgControl); err != nil {
			t.Errorf("the refused directory lost global/pg_control: %v", err)
		}
		if _, err := os.Stat(filepath.Join(f.target, FailedMarker)); err == nil {
			t.Error("the refused directory got a marker")
		}
	}
	refuse := func(t *testing.T, opts Options, want string) {
		t.Helper()
		_, err := Run(f.ctx, opts)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want one containing %q", err, want)
		}
	}
	t.Run("live postmaster.pid", func(t *testing.T) {
		pid := filepath.Join(f.target, "postmaster.pid")
		writeFile(t, pid, strconv.Itoa(os.Getpid())+"\n"+f.target+"\n")
		defer os.Remove(pid)
		refuse(t, f.opts(nil), "running server")
		untouched(t)
	})
	t.Run("another cluster", func(t *testing.T) {
		orig, _ := os.ReadFile(pgControl)
		defer os.WriteFile(pgControl, orig, 0o600)
		os.WriteFile(pgControl, controlFile("7000000000000000001"), 0o600)
		refuse(t, f.opts(nil), "belongs to another cluster (system identifier 7000000000000000001")
		if b, _ := os.ReadFile(pgControl); !bytes.Equal(b, controlFile("7000000000000000001")) {
			t.Error("pg_control of the refused directory changed")
		}
	})
	t.Run("force", func(t *testing.T) {
		o := f.opts(nil)
		o.Force = true
		refuse(t, o, "give one of them")
		untouched(t)
	})
	t.Run("no pg_control and no marker", func(t *testing.T) {
		orig, _ := os.ReadFile(pgControl)
		defer os.WriteFile(pgControl, orig, 0o600)
		os.Remove(pgControl)
		refuse(t, f.opts(nil), "cannot tell which cluster")
	})
	t.Run("incremental", func(t *testing.T) {
		err := deltaBackup(&basebackup.Meta{ID: "b2", Kind: basebackup.KindIncremental, Parent: "b1", Chain: []string{"b1"}, SystemIdentifier: "1"})
		if err == nil || !strings.Contains(err.Error(), "--backup b1") {
			t.Errorf("incremental backup: %v", err)
		}
	})
}

// failingFS fails the creation of one file: a resync interrupted there.
type failingFS struct {
	recordingFS
	fail string
}

func (f *failingFS) Create(name string) (outFile, error) {
	if name == f.fail {
		return nil, errors.New("injected failure")
	}
	return f.recordingFS.Create(name)
}

// TestDeltaRestoreInterruptedIsNeverStartable: a resync removes
// global/pg_control (durably) before it changes anything else and writes
// it last, after every kept and written file and every changed directory
// is durable; interrupted, it leaves no pg_control and a marker naming the
// cluster, and running it again finishes the job.
func TestDeltaRestoreInterruptedIsNeverStartable(t *testing.T) {
	f := newDeltaFixture(t)
	if _, err := Run(f.ctx, f.opts(nil)); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(f.target, "base/1/1249"), strings.Repeat("A", 16384))
	writeFile(t, filepath.Join(f.target, "pg_wal/000000010000000000000003"), "stale")
	pgControl := filepath.Join(f.target, "global", "pg_control")

	// Interrupted while writing a changed file.
	bad := &failingFS{fail: filepath.Join(f.target, "base/1/1249")}
	if _, err := Run(f.ctx, f.opts(bad)); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("interrupted resync: err = %v", err)
	}
	if _, err := os.Stat(pgControl); !os.IsNotExist(err) {
		t.Fatalf("an interrupted resync left global/pg_control (%v): the directory would start", err)
	}
	note, err := os.ReadFile(filepath.Join(f.target, FailedMarker))
	if err != nil || !strings.Contains(string(note), "system_identifier: "+f.sysID) || !strings.Contains(string(note), "injected failure") {
		t.Fatalf("marker: %v\n%s", err, note)
	}
	if _, err := os.Stat(filepath.Join(f.target, "base/1/1259")); err != nil {
		t.Errorf("an interrupted resync removed files it had kept: %v", err)
	}
	first := -1
	for i, e := range bad.events {
		if inside(f.target, e.path) || inside(f.tsLoc, e.path) {
			first = i
			break
		}
	}
	if first < 0 || bad.events[first] != (fsEvent{"remove", pgControl}) || bad.events[first+1] != (fsEvent{"syncdir", filepath.Dir(pgControl)}) {
		t.Fatalf("the first changes were %v, want pg_control removed and global/ fsynced", bad.events[max(first, 0):min(max(first, 0)+2, len(bad.events))])
	}

	// Run again: it finishes, keeping what is equal.
	rec := &recordingFS{}
	res, err := Run(f.ctx, f.opts(rec))
	if err != nil {
		t.Fatal(err)
	}
	if res.Delta.KeptFiles < int64(len(f.files))-2 {
		t.Errorf("the second run kept %d files", res.Delta.KeptFiles)
	}
	if _, err := os.Stat(filepath.Join(f.target, FailedMarker)); !os.IsNotExist(err) {
		t.Errorf("the marker is still there after the resync finished: %v", err)
	}
	if b, _ := os.ReadFile(pgControl); !bytes.Equal(b, f.pgControlBytes) {
		t.Error("pg_control is not the backup's")
	}
	ev := rec.events
	created := slices.Index(ev, fsEvent{"create", pgControl})
	if created < 0 {
		t.Fatal("pg_control was never created")
	}
	for _, e := range ev[created+1:] {
		if e.op != "write" && e.op != "chown" && e.op != "sync" && e.op != "syncdir" {
			t.Errorf("after pg_control was created: %s %s", e.op, rel(f.parent, e.path))
		}
	}
	// Every file of the result was fsynced (written or kept) and every
	// directory fsynced before pg_control was created.
	synced, dirs := map[string]bool{}, map[string]bool{}
	for _, e := range ev[:created] {
		switch e.op {
		case "sync":
			synced[e.path] = true
		case "syncdir":
			dirs[e.path] = true
		}
	}
	for _, root := range []string{f.target, filepath.Join(f.tsLoc, "PG_15_202209061")} {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			switch {
			case err != nil || p == pgControl:
			case d.IsDir() && !dirs[p]:
				t.Errorf("directory %s not fsynced before pg_control", rel(f.parent, p))
			case d.Type().IsRegular() && !synced[p]:
				t.Errorf("%s not fsynced before pg_control", rel(f.parent, p))
			}
			return nil
		})
	}
}
