package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

// fsEvent is one recorded file-system call.
type fsEvent struct{ op, path string }

// recordingFS passes every call to the real file system and records it in
// order, so a test can check what was durable before what.
type recordingFS struct {
	osFS
	mu     sync.Mutex
	events []fsEvent
}

func (r *recordingFS) log(op, p string) {
	r.mu.Lock()
	r.events = append(r.events, fsEvent{op, p})
	r.mu.Unlock()
}

func (r *recordingFS) Mkdir(name string, perm fs.FileMode) error {
	r.log("mkdir", name)
	return r.osFS.Mkdir(name, perm)
}

func (r *recordingFS) Create(name string) (outFile, error) {
	r.log("create", name)
	f, err := r.osFS.Create(name)
	if err != nil {
		return nil, err
	}
	return &recordingFile{f, r, name}, nil
}

func (r *recordingFS) Symlink(oldname, newname string) error {
	r.log("symlink", newname)
	return r.osFS.Symlink(oldname, newname)
}

func (r *recordingFS) Link(oldname, newname string) error {
	r.log("link", newname)
	return r.osFS.Link(oldname, newname)
}

func (r *recordingFS) RemoveAll(name string) error {
	r.log("remove", name)
	return r.osFS.RemoveAll(name)
}

func (r *recordingFS) SyncDir(name string) error {
	r.log("syncdir", name)
	return r.osFS.SyncDir(name)
}

type recordingFile struct {
	outFile
	fs   *recordingFS
	path string
}

func (f *recordingFile) Write(p []byte) (int, error) {
	f.fs.log("write", f.path)
	return f.outFile.Write(p)
}

func (f *recordingFile) Chown(uid, gid int) error {
	f.fs.log("chown", f.path)
	return f.outFile.Chown(uid, gid)
}

func (f *recordingFile) Sync() error {
	f.fs.log("sync", f.path)
	return f.outFile.Sync()
}

// withFile appends a regular file to a tar stream made by tarOf.
func withFile(t *testing.T, archive []byte, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		tw.WriteHeader(h)
		io.Copy(tw, tr)
	}
	tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(content))})
	tw.Write([]byte(content))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// storeBackup stores a complete backup whose archives are the given tar
// streams (name → content) and tablespaces.
func storeBackup(t *testing.T, repo *storage.Repository, id string, archives map[string][]byte, tablespaces []basebackup.Tablespace) {
	t.Helper()
	ctx := context.Background()
	meta := basebackup.Meta{FormatVersion: storage.FormatVersion, ID: id, StartTime: time.Now().UTC(), StopTime: time.Now().UTC(),
		StartLSN: "0/2000028", StopLSN: "0/2000100", Timeline: 1, StopTimeline: 1, Tablespaces: tablespaces}
	for name, content := range archives {
		w, err := repo.Create(ctx, storage.BackupKey(id, name))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(content)
		m, err := w.Close()
		if err != nil {
			t.Fatal(err)
		}
		meta.Objects = append(meta.Objects, basebackup.Object{Name: name, Key: storage.BackupKey(id, name) + repo.Codec().Ext(), Size: m.Size})
	}
	if err := repo.WriteJSON(ctx, storage.BackupMetaKey(id), meta); err != nil {
		t.Fatal(err)
	}
}

// splitTar cuts a tar archive before its n'th entry into two complete
// archives.
func splitTar(t *testing.T, archive []byte, n int) (first, second []byte) {
	t.Helper()
	var a, b bytes.Buffer
	ta, tb := tar.NewWriter(&a), tar.NewWriter(&b)
	tr := tar.NewReader(bytes.NewReader(archive))
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		tw := ta
		if i >= n {
			tw = tb
		}
		tw.WriteHeader(h)
		io.Copy(tw, tr)
	}
	ta.Close()
	tb.Close()
	return a.Bytes(), b.Bytes()
}

// storeChunkedBackup is storeBackup for archive_layout 2: the archives
// are chunks named <stem>.<seq>.tar, listed by the tablespaces.
func storeChunkedBackup(t *testing.T, repo *storage.Repository, id string, archives map[string][]byte, tablespaces []basebackup.Tablespace) {
	t.Helper()
	storeBackup(t, repo, id, archives, tablespaces)
	var meta basebackup.Meta
	if err := repo.ReadJSON(context.Background(), storage.BackupMetaKey(id), &meta); err != nil {
		t.Fatal(err)
	}
	meta.ArchiveLayout = basebackup.LayoutChunked
	for i, o := range meta.Objects {
		for _, ts := range tablespaces {
			if slices.Contains(ts.Chunks, o.Name) {
				meta.Objects[i].Archive = ts.Archive
			}
		}
	}
	if err := repo.WriteJSON(context.Background(), storage.BackupMetaKey(id), meta); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreCrashAfterCompleteLosesNothing: a restore makes every file it
// writes, and every directory whose entries it changed, durable before it
// creates global/pg_control, then makes pg_control and global/ durable. A
// crash after "restore complete" cannot leave pg_control beside files the
// page cache never wrote. Every entry in the restored tree went through the
// recorded writer, so nothing escapes the check.
func TestRestoreCrashAfterCompleteLosesNothing(t *testing.T) {
	t.Run("one-tar-per-tablespace", func(t *testing.T) { crashSafeRestore(t, false) })
	t.Run("chunked", func(t *testing.T) { crashSafeRestore(t, true) })
}

// crashSafeRestore is TestRestoreCrashAfterCompleteLosesNothing for one
// archive layout: chunked cuts base.tar into two chunks restored in
// parallel.
func crashSafeRestore(t *testing.T, chunked bool) {
	repo, _, ctx := archivetest.Repo(t)
	parent := t.TempDir()
	target := filepath.Join(parent, "new", "data") // two levels to create
	oldTS, newTS := "/srv/old-ts", filepath.Join(parent, "ts", "loc")
	base := tarOf(t,
		tar.Header{Name: "PG_VERSION", Typeflag: tar.TypeReg},
		tar.Header{Name: "backup_label", Typeflag: tar.TypeReg, Size: 200},
		tar.Header{Name: "postgresql.auto.conf", Typeflag: tar.TypeReg, Size: 10},
		tar.Header{Name: "global/", Typeflag: tar.TypeDir},
		tar.Header{Name: "global/1262", Typeflag: tar.TypeReg, Size: 8192},
		tar.Header{Name: "global/pg_control", Typeflag: tar.TypeReg, Size: 8192},
		tar.Header{Name: "base/", Typeflag: tar.TypeDir},
		tar.Header{Name: "base/1/", Typeflag: tar.TypeDir},
		tar.Header{Name: "base/1/1259", Typeflag: tar.TypeReg, Size: 300 << 10},
		tar.Header{Name: "base/1/1259_fsm", Typeflag: tar.TypeReg, Size: 0},
		tar.Header{Name: "base/5/2600", Typeflag: tar.TypeReg, Size: 8192}, // parent only implied
		tar.Header{Name: "pg_wal/", Typeflag: tar.TypeDir},
		tar.Header{Name: "pg_wal/archive_status/", Typeflag: tar.TypeDir}, // stays empty
		tar.Header{Name: "pg_tblspc/", Typeflag: tar.TypeDir},
		tar.Header{Name: "pg_logical/snapshots/", Typeflag: tar.TypeDir},
		tar.Header{Name: "base/1/hard", Typeflag: tar.TypeLink, Linkname: "base/1/1259"},
		tar.Header{Name: "base/soft", Typeflag: tar.TypeSymlink, Linkname: "1"},
	)
	base = withFile(t, base, "tablespace_map", "16385 "+oldTS+"\n")
	ts := tarOf(t,
		tar.Header{Name: "PG_15_202209061/", Typeflag: tar.TypeDir},
		tar.Header{Name: "PG_15_202209061/5/", Typeflag: tar.TypeDir},
		tar.Header{Name: "PG_15_202209061/5/16390", Typeflag: tar.TypeReg, Size: 64 << 10},
	)
	if chunked {
		// The base archive in two chunks cut at an entry; the second
		// holds files of directories the first creates.
		first, second := splitTar(t, base, 4)
		storeChunkedBackup(t, repo, "20260101T000000Z",
			map[string][]byte{"base.00000.tar": first, "base.00001.tar": second, "16385.00000.tar": ts, "backup_manifest": []byte("{}")},
			[]basebackup.Tablespace{{Archive: "base.tar", Chunks: []string{"base.00000.tar", "base.00001.tar"}},
				{OID: "16385", Location: oldTS, Archive: "16385.tar", Chunks: []string{"16385.00000.tar"}}})
	} else {
		storeBackup(t, repo, "20260101T000000Z", map[string][]byte{"base.tar": base, "16385.tar": ts, "backup_manifest": []byte("{}")},
			[]basebackup.Tablespace{{Archive: "base.tar"}, {OID: "16385", Location: oldTS, Archive: "16385.tar"}})
	}

	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingFS{}
	_, err = Run(ctx, Options{Repo: repo, TargetDir: target, Owner: me.Username, TablespaceMap: map[string]string{oldTS: newTS},
		Recovery: Recovery{RestoreCommand: "true"}, Parallel: 3, fs: rec})
	if err != nil {
		t.Fatal(err)
	}
	ev := rec.events
	pgControl := filepath.Join(target, "global", "pg_control")
	created := -1
	for i, e := range ev {
		if e.op == "create" && e.path == pgControl {
			created = i
		}
	}
	if created < 0 {
		t.Fatal("global/pg_control was never created")
	}
	// lastIn returns the index of the last event op on p in [from, to), or -1.
	lastIn := func(op, p string, from, to int) int {
		found := -1
		for i := from; i < to; i++ {
			if ev[i].op == op && ev[i].path == p {
				found = i
			}
		}
		return found
	}

	// Every file written before pg_control was fsynced after its last write
	// (and its chown) and before pg_control was created.
	files := map[string]bool{}
	dirs := map[string]int{} // directory → index of its last change before pg_control
	for i, e := range ev[:created] {
		switch e.op {
		case "create":
			files[e.path] = true
			dirs[filepath.Dir(e.path)] = i
		case "mkdir":
			dirs[e.path] = max(dirs[e.path], i)
			dirs[filepath.Dir(e.path)] = i
		case "symlink", "link", "remove":
			dirs[filepath.Dir(e.path)] = i
		}
	}
	for _, f := range slices.Sorted(maps.Keys(files)) {
		last := max(lastIn("write", f, 0, created), lastIn("chown", f, 0, created), lastIn("create", f, 0, created))
		if s := lastIn("sync", f, last, created); s < 0 {
			t.Errorf("%s was not fsynced after its last write and before global/pg_control was created", rel(parent, f))
		}
	}
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		changed := dirs[d]
		if s := lastIn("syncdir", d, changed, created); s < 0 {
			t.Errorf("directory %s was not fsynced after its last change and before global/pg_control was created", rel(parent, d))
		}
	}
	// pg_control itself, then global/.
	if w, s := lastIn("write", pgControl, created, len(ev)), lastIn("sync", pgControl, created, len(ev)); w < 0 || s < w {
		t.Errorf("global/pg_control was not fsynced after it was written (write at %d, fsync at %d)", w, s)
	}
	if s := lastIn("syncdir", filepath.Join(target, "global"), created, len(ev)); s < 0 {
		t.Error("global/ was not fsynced after global/pg_control was created")
	}

	// Nothing in the restored tree bypassed the writer.
	made := map[string]bool{}
	for _, e := range ev {
		switch e.op {
		case "create", "mkdir", "symlink", "link":
			made[e.path] = true
		}
	}
	for _, root := range []string{target, newTS} {
		filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				t.Error(err)
				return nil
			}
			if !made[p] {
				t.Errorf("%s was written without the data-directory writer", rel(parent, p))
			}
			return nil
		})
	}
	if len(files) < 10 || len(dirs) < 10 {
		t.Fatalf("only %d files and %d directories recorded: the fixture is not exercised", len(files), len(dirs))
	}
}

func rel(base, p string) string {
	r, err := filepath.Rel(base, p)
	if err != nil || strings.HasPrefix(r, "..") {
		return p
	}
	return r
}

// TestRestoreNoSyncSkipsFsync: --no-sync makes no fsync call at all.
func TestRestoreNoSyncSkipsFsync(t *testing.T) {
	repo, _, ctx := archivetest.Repo(t)
	storeBackup(t, repo, "20260101T000000Z", map[string][]byte{"base.tar": tarOf(t,
		tar.Header{Name: "PG_VERSION", Typeflag: tar.TypeReg},
		tar.Header{Name: "global/pg_control", Typeflag: tar.TypeReg, Size: 8192})},
		[]basebackup.Tablespace{{Archive: "base.tar"}})
	rec := &recordingFS{}
	target := filepath.Join(t.TempDir(), "data")
	if _, err := Run(ctx, Options{Repo: repo, TargetDir: target, NoSync: true, fs: rec}); err != nil {
		t.Fatal(err)
	}
	for _, e := range rec.events {
		if e.op == "sync" || e.op == "syncdir" {
			t.Errorf("--no-sync: %s %s", e.op, rel(target, e.path))
		}
	}
	if _, err := os.Stat(filepath.Join(target, "global", "pg_control")); err != nil {
		t.Fatal(err)
	}
}

func (r *recordingFS) OpenRead(name string) (inFile, error) {
	f, err := r.osFS.OpenRead(name)
	if err != nil {
		return nil, err
	}
	return &recordingIn{f, r, name}, nil
}

// recordingIn is a file a delta restore reads; its fsync is recorded.
type recordingIn struct {
	inFile
	fs   *recordingFS
	path string
}

func (f *recordingIn) Sync() error {
	f.fs.log("sync", f.path)
	return f.inFile.Sync()
}
