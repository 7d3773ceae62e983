package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

// closeFS is the real file system, counting the closes of the files it
// created.
type closeFS struct {
	osFS
	mu     sync.Mutex
	closed map[string]int
}

func (c *closeFS) Create(name string) (outFile, error) {
	f, err := c.osFS.Create(name)
	if err != nil {
		return nil, err
	}
	return &closeFile{f, c, name}, nil
}

func (c *closeFS) closes(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed[name]
}

type closeFile struct {
	outFile
	fs   *closeFS
	name string
}

func (f *closeFile) Close() error {
	f.fs.mu.Lock()
	if f.fs.closed == nil {
		f.fs.closed = map[string]int{}
	}
	f.fs.closed[f.name]++
	f.fs.mu.Unlock()
	return f.outFile.Close()
}

func partBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writePiece is one writer of a part: begin, write at its offset, end.
func writePiece(t *testing.T, ps *partFiles, dd *dataDir, p string, data []byte, off, n int64) (bool, error) {
	t.Helper()
	pf, err := ps.begin(dd, p, off, n, int64(len(data)))
	if err != nil {
		return false, err
	}
	_, err = pf.f.WriteAt(data[off:off+n], off)
	return ps.end(dd, p, pf, err)
}

// TestPartFilesOutOfOrder: parts begun and ended in any order make the
// file; only the end of the last one to finish reports it done, and it is
// committed (closed by the syncers) once.
func TestPartFilesOutOfOrder(t *testing.T) {
	fsys := &closeFS{}
	dd := newDataDir(fsys, nil, false)
	p := filepath.Join(t.TempDir(), "16384")
	data := partBytes(1, 4500)
	type piece struct{ off, n int64 }
	pieces := []piece{{0, 1000}, {1000, 1000}, {2000, 1000}, {3000, 1000}, {4000, 500}}
	var ps partFiles
	pfs := map[int]*partFile{}
	for _, i := range []int{3, 0, 4, 1, 2} {
		pf, err := ps.begin(dd, p, pieces[i].off, pieces[i].n, int64(len(data)))
		if err != nil {
			t.Fatalf("begin part %d: %v", i, err)
		}
		if _, err := pf.f.WriteAt(data[pieces[i].off:pieces[i].off+pieces[i].n], pieces[i].off); err != nil {
			t.Fatal(err)
		}
		pfs[i] = pf
	}
	for k, i := range []int{2, 4, 0, 3, 1} {
		done, err := ps.end(dd, p, pfs[i], nil)
		if err != nil {
			t.Fatalf("end part %d: %v", i, err)
		}
		if last := k == len(pieces)-1; done != last {
			t.Errorf("end of part %d (%d. to end): done %v, want %v", i, k+1, done, last)
		}
		if !done && fsys.closes(p) != 0 {
			t.Errorf("the file was closed before its last part ended")
		}
	}
	if err := dd.sync(); err != nil {
		t.Fatal(err)
	}
	if n := fsys.closes(p); n != 1 {
		t.Errorf("the file was closed %d times, want once (committed)", n)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
		t.Errorf("the file is %d bytes and differs from the %d written", len(got), len(data))
	}
	if err := ps.incomplete(dd); err != nil {
		t.Errorf("incomplete after every part: %v", err)
	}
}

// TestPartFilesConcurrent: the parts of several files written at once by
// goroutines, in a random order, reconstruct the files, and each file is
// reported done exactly once.
func TestPartFilesConcurrent(t *testing.T) {
	for round := range 20 {
		dd := newDataDir(osFS{}, nil, round%2 == 0)
		dir := t.TempDir()
		var ps partFiles
		files := map[string][]byte{}
		type job struct {
			p      string
			off, n int64
		}
		var jobs []job
		for i := range 3 {
			p := filepath.Join(dir, strconv.Itoa(i))
			data := partBytes(uint64(round*10+i), 8192*7+i*100)
			files[p] = data
			for off := int64(0); off < int64(len(data)); off += 8192 {
				jobs = append(jobs, job{p, off, min(8192, int64(len(data))-off)})
			}
		}
		rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
		var wg sync.WaitGroup
		start := make(chan struct{})
		var mu sync.Mutex
		done := map[string]int{}
		for _, j := range jobs {
			wg.Go(func() {
				<-start
				d, err := writePiece(t, &ps, dd, j.p, files[j.p], j.off, j.n)
				if err != nil {
					t.Errorf("%s at %d: %v", j.p, j.off, err)
				}
				if d {
					mu.Lock()
					done[j.p]++
					mu.Unlock()
				}
			})
		}
		close(start)
		wg.Wait()
		if err := ps.incomplete(dd); err != nil {
			t.Errorf("incomplete: %v", err)
		}
		if err := dd.sync(); err != nil {
			t.Fatal(err)
		}
		for p, data := range files {
			if done[p] != 1 {
				t.Errorf("round %d: %s reported done %d times", round, filepath.Base(p), done[p])
			}
			if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
				t.Errorf("round %d: %s is %d bytes and differs from the %d written", round, filepath.Base(p), len(got), len(data))
			}
		}
	}
}

// TestPartFilesRefuseDamage: a part seen twice, parts disagreeing on the
// file's length, and parts holding more than the file fail.
func TestPartFilesRefuseDamage(t *testing.T) {
	dd := newDataDir(osFS{}, nil, true)
	dir := t.TempDir()
	data := partBytes(2, 3000)
	t.Run("same offset twice", func(t *testing.T) {
		var ps partFiles
		p := filepath.Join(dir, "twice")
		pf, err := ps.begin(dd, p, 0, 1000, 3000)
		if err != nil {
			t.Fatal(err)
		}
		// While the first is written, and after it ended.
		if _, err := ps.begin(dd, p, 0, 1000, 3000); err == nil || !strings.Contains(err.Error(), "twice") {
			t.Errorf("second begin at 0 while the first is written: %v", err)
		}
		if _, err := ps.end(dd, p, pf, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := ps.begin(dd, p, 0, 1000, 3000); err == nil || !strings.Contains(err.Error(), "twice") {
			t.Errorf("begin at 0 after the part at 0 ended: %v", err)
		}
		if _, err := writePiece(t, &ps, dd, p, data, 1000, 1000); err != nil {
			t.Errorf("the next part after the refused one: %v", err)
		}
	})
	t.Run("lengths disagree", func(t *testing.T) {
		var ps partFiles
		p := filepath.Join(dir, "lengths")
		if _, err := writePiece(t, &ps, dd, p, data, 0, 1000); err != nil {
			t.Fatal(err)
		}
		if _, err := ps.begin(dd, p, 1000, 1000, 4000); err == nil || !strings.Contains(err.Error(), "disagree") {
			t.Errorf("a part saying the file is 4000 bytes, the first 3000: %v", err)
		}
	})
	t.Run("more than the file", func(t *testing.T) {
		var ps partFiles
		p := filepath.Join(dir, "more")
		if _, err := writePiece(t, &ps, dd, p, data, 0, 2000); err != nil {
			t.Fatal(err)
		}
		if _, err := ps.begin(dd, p, 1000, 1500, 3000); err == nil || !strings.Contains(err.Error(), "more than") {
			t.Errorf("1500 more bytes of a 3000 byte file with 2000 written: %v", err)
		}
		if err := ps.incomplete(dd); err == nil || !strings.Contains(err.Error(), "lacks parts") {
			t.Errorf("incomplete: %v", err)
		}
	})
	t.Run("overlap", func(t *testing.T) {
		// Parts claiming overlapping ranges would add up to the length
		// and leave a hole.
		var ps partFiles
		p := filepath.Join(dir, "overlap")
		if _, err := writePiece(t, &ps, dd, p, data, 0, 1000); err != nil {
			t.Fatal(err)
		}
		if _, err := ps.begin(dd, p, 500, 1000, 3000); err == nil || !strings.Contains(err.Error(), "overlaps") {
			t.Errorf("a part at 500 over the one at 0: %v", err)
		}
		pf, err := ps.begin(dd, p, 1000, 1000, 3000)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ps.begin(dd, p, 1500, 1000, 3000); err == nil || !strings.Contains(err.Error(), "overlaps") {
			t.Errorf("a part at 1500 over the one at 1000 being written: %v", err)
		}
		ps.end(dd, p, pf, nil)
		if err := ps.incomplete(dd); err == nil || !strings.Contains(err.Error(), "lacks parts") {
			t.Errorf("incomplete with [2000, 3000) missing: %v", err)
		}
	})
	t.Run("part after complete", func(t *testing.T) {
		var ps partFiles
		p := filepath.Join(dir, "after")
		for _, off := range []int64{0, 1000, 2000} {
			if _, err := writePiece(t, &ps, dd, p, data, off, 1000); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := ps.begin(dd, p, 1000, 1000, 3000); err == nil || !strings.Contains(err.Error(), "complete") {
			t.Errorf("a part of a complete file: %v", err)
		}
		if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
			t.Errorf("the complete file changed: %d bytes", len(got))
		}
		if err := ps.incomplete(dd); err != nil {
			t.Errorf("incomplete: %v", err)
		}
	})
	t.Run("create fails", func(t *testing.T) {
		var ps partFiles
		p := filepath.Join(dir, "missing-dir", "f")
		if _, err := ps.begin(dd, p, 0, 1000, 3000); err == nil {
			t.Fatal("begin in a missing directory succeeded")
		}
		if err := ps.incomplete(dd); err != nil {
			t.Errorf("a file never created is not incomplete: %v", err)
		}
	})
}

// TestPartFilesIncomplete: incomplete names a file still missing a part
// (the first by name, with the count) and closes it; nil when every file
// is complete.
func TestPartFilesIncomplete(t *testing.T) {
	fsys := &closeFS{}
	dd := newDataDir(fsys, nil, true)
	dir := t.TempDir()
	data := partBytes(3, 3000)
	var ps partFiles
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	for _, off := range []int64{0, 2000} { // b lacks its middle part
		if _, err := writePiece(t, &ps, dd, b, data, off, 1000); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := writePiece(t, &ps, dd, c, data, 1000, 1000); err != nil { // c lacks two
		t.Fatal(err)
	}
	for _, off := range []int64{1000, 0, 2000} { // a is complete
		if _, err := writePiece(t, &ps, dd, a, data, off, 1000); err != nil {
			t.Fatal(err)
		}
	}
	err := ps.incomplete(dd)
	if err == nil || !strings.Contains(err.Error(), b+" lacks parts") || !strings.Contains(err.Error(), "2 files in all") {
		t.Errorf("incomplete: %v, want %s named, 2 files", err, b)
	}
	for _, p := range []string{a, b, c} {
		if n := fsys.closes(p); n != 1 {
			t.Errorf("%s closed %d times, want once", filepath.Base(p), n)
		}
	}
	if err := ps.incomplete(dd); err != nil {
		t.Errorf("incomplete a second time: %v", err)
	}

	var whole partFiles
	for _, off := range []int64{2000, 0, 1000} {
		if _, err := writePiece(t, &whole, dd, a, data, off, 1000); err != nil {
			t.Fatal(err)
		}
	}
	if err := whole.incomplete(dd); err != nil {
		t.Errorf("incomplete with every file complete: %v", err)
	}
}

// TestPartFilesFailedWriter: a part whose writer fails fails its file: the
// file is closed once its last writer ends, later parts are refused, and
// incomplete leaves it to the error already reported.
func TestPartFilesFailedWriter(t *testing.T) {
	fsys := &closeFS{}
	dd := newDataDir(fsys, nil, true)
	p := filepath.Join(t.TempDir(), "f")
	var ps partFiles
	first, err := ps.begin(dd, p, 0, 1000, 3000)
	if err != nil {
		t.Fatal(err)
	}
	second, err := ps.begin(dd, p, 1000, 1000, 3000)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	if done, err := ps.end(dd, p, first, boom); done || !errors.Is(err, boom) {
		t.Errorf("end of the failed part: done %v, %v", done, err)
	}
	if n := fsys.closes(p); n != 0 {
		t.Errorf("the file was closed while a part was still written")
	}
	if done, err := ps.end(dd, p, second, nil); done || err != nil {
		t.Errorf("end of the other part: done %v, %v", done, err)
	}
	if n := fsys.closes(p); n != 1 {
		t.Errorf("the failed file closed %d times, want once", n)
	}
	if _, err := ps.begin(dd, p, 2000, 1000, 3000); err == nil || !strings.Contains(err.Error(), "another part failed") {
		t.Errorf("begin after a part failed: %v", err)
	}
	if err := ps.incomplete(dd); err != nil {
		t.Errorf("incomplete names the failed file: %v", err)
	}
	if n := fsys.closes(p); n != 1 {
		t.Errorf("the failed file closed %d times, want once", n)
	}
}

func TestPartOf(t *testing.T) {
	rec := func(off, size string) map[string]string {
		m := map[string]string{}
		if off != "-" {
			m[basebackup.PartOffsetRecord] = off
		}
		if size != "-" {
			m[basebackup.FileSizeRecord] = size
		}
		return m
	}
	for _, tc := range []struct {
		name      string
		records   map[string]string
		size      int64
		ok        bool
		wantOff   int64
		wantTotal int64
	}{
		{"first part", rec("0", "3000"), 1000, true, 0, 3000},
		{"last part", rec("2000", "3000"), 1000, true, 2000, 3000},
		{"the whole file", rec("0", "3000"), 3000, true, 0, 3000},
		{"no file size", rec("0", "-"), 1000, false, 0, 0},
		{"negative offset", rec("-1000", "3000"), 1000, false, 0, 0},
		{"past the end", rec("2500", "3000"), 1000, false, 0, 0},
		{"offset past the end", rec("4000", "3000"), 1, false, 0, 0},
		{"offset overflows", rec("9223372036854775807", "3000"), 1000, false, 0, 0},
		{"offset not a number", rec("1k", "3000"), 1000, false, 0, 0},
		{"size not a number", rec("0", "0x1000"), 1000, false, 0, 0},
		{"empty offset", rec("", "3000"), 1000, false, 0, 0},
		{"empty part", rec("0", "3000"), 0, false, 0, 0},
		{"empty file", rec("0", "0"), 0, false, 0, 0},
		{"negative file size", rec("0", "-3000"), 1000, false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &tar.Header{Name: "base/1/16384", Typeflag: tar.TypeReg, Size: tc.size, PAXRecords: tc.records}
			off, total, ok, err := partOf(h)
			if tc.ok {
				if err != nil || !ok || off != tc.wantOff || total != tc.wantTotal {
					t.Errorf("partOf: %d, %d, %v, %v; want %d, %d, a part", off, total, ok, err, tc.wantOff, tc.wantTotal)
				}
				return
			}
			if err == nil || ok {
				t.Errorf("partOf: %d, %d, %v, %v; want it refused", off, total, ok, err)
			} else if !strings.Contains(err.Error(), "base/1/16384") || !strings.Contains(err.Error(), "damaged") {
				t.Errorf("partOf: %v, want the file named and the backup damaged", err)
			}
		})
	}
	for _, records := range []map[string]string{nil, {}, {"comment": "x"}} {
		h := &tar.Header{Name: "base/1/1259", Typeflag: tar.TypeReg, Size: 1000, PAXRecords: records}
		if _, _, ok, err := partOf(h); ok || err != nil {
			t.Errorf("records %v: partOf %v, %v; want an ordinary entry", records, ok, err)
		}
	}
}

// partsBackup stores a backup (backup.json archive_layout layout) whose file base/1/16384
// is in three parts, each starting a chunk; skip leaves one chunk out.
func partsBackup(t *testing.T, repo *storage.Repository, id string, big []byte, skip string, layout int) {
	t.Helper()
	type entry struct {
		h    tar.Header
		data []byte
	}
	mk := func(es ...entry) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range es {
			e.h.Size, e.h.Mode = int64(len(e.data)), 0o600
			if e.h.Typeflag == tar.TypeDir {
				e.h.Mode = 0o700
			}
			if err := tw.WriteHeader(&e.h); err != nil {
				t.Fatal(err)
			}
			tw.Write(e.data)
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	part := func(off, n int) entry {
		return entry{tar.Header{Name: "base/1/16384", Typeflag: tar.TypeReg, Format: tar.FormatPAX, PAXRecords: map[string]string{
			basebackup.PartOffsetRecord: strconv.Itoa(off), basebackup.FileSizeRecord: strconv.Itoa(len(big))}}, big[off : off+n]}
	}
	reg := func(name string, data []byte) entry {
		return entry{tar.Header{Name: name, Typeflag: tar.TypeReg}, data}
	}
	chunks := map[string][]byte{
		"base.00000.tar": mk(entry{tar.Header{Name: "global/", Typeflag: tar.TypeDir}, nil}, reg("PG_VERSION", []byte("17\n")),
			reg("global/pg_control", controlFile(archivetest.SysID)), reg("base/1/2600", partBytes(5, 8192))),
		"base.00001.tar": mk(part(0, 32768)),
		"base.00002.tar": mk(part(32768, 32768)),
		"base.00003.tar": mk(part(65536, len(big)-65536), reg("base/1/2601", partBytes(6, 100))),
	}
	names := []string{"base.00000.tar", "base.00001.tar", "base.00002.tar", "base.00003.tar"}
	if skip != "" {
		delete(chunks, skip)
		names = strings.Fields(strings.Replace(strings.Join(names, " "), skip, "", 1))
	}
	storeChunkedBackup(t, repo, id, chunks, []basebackup.Tablespace{{Archive: "base.tar", Chunks: names}})
	var meta basebackup.Meta
	if err := repo.ReadJSON(context.Background(), storage.BackupMetaKey(id), &meta); err != nil {
		t.Fatal(err)
	}
	meta.ArchiveLayout = layout
	if err := repo.WriteJSON(context.Background(), storage.BackupMetaKey(id), meta); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreFileStoredAsParts: a backup with a file in parts in three
// chunks restores it whole, sequentially and in parallel, counting it as
// one file; a backup that lacks a part fails and has no pg_control.
func TestRestoreFileStoredAsParts(t *testing.T) {
	big := partBytes(4, 100000) // parts of 32768, 32768 and 34464 bytes
	for _, parallel := range []int{1, 3} {
		t.Run("parallel="+strconv.Itoa(parallel), func(t *testing.T) {
			repo, _, ctx := archivetest.Repo(t)
			partsBackup(t, repo, "20260101T000000Z", big, "", basebackup.LayoutParts)
			target := filepath.Join(t.TempDir(), "data")
			var files atomic.Int64
			_, err := Run(ctx, Options{Repo: repo, TargetDir: target, Parallel: parallel,
				Progress: func(p Progress) {
					for old := files.Load(); p.Files > old && !files.CompareAndSwap(old, p.Files); old = files.Load() {
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(filepath.Join(target, "base", "1", "16384")); !bytes.Equal(got, big) {
				t.Errorf("base/1/16384 is %d bytes and differs from the %d stored as parts", len(got), len(big))
			}
			if got, _ := os.ReadFile(filepath.Join(target, "base", "1", "2601")); !bytes.Equal(got, partBytes(6, 100)) {
				t.Errorf("base/1/2601, after the last part in its chunk, is %q", got)
			}
			if _, err := os.Stat(filepath.Join(target, "global", "pg_control")); err != nil {
				t.Error(err)
			}
			if n := files.Load(); n != 5 {
				t.Errorf("%d files counted, want 5 (the file in parts once)", n)
			}
		})
	}
	t.Run("parts in layout 2", func(t *testing.T) {
		// Layout 2 never has parts: such an entry is damage, not a file.
		repo, _, ctx := archivetest.Repo(t)
		partsBackup(t, repo, "20260101T000000Z", big, "", basebackup.LayoutChunked)
		_, err := Run(ctx, Options{Repo: repo, TargetDir: filepath.Join(t.TempDir(), "data"), Parallel: 2})
		if err == nil || !strings.Contains(err.Error(), "whose layout has none") {
			t.Fatalf("restore of parts in a layout 2 backup: %v", err)
		}
	})
	t.Run("a newer layout", func(t *testing.T) {
		repo, _, ctx := archivetest.Repo(t)
		partsBackup(t, repo, "20260101T000000Z", big, "", basebackup.LayoutNewest+1)
		target := filepath.Join(t.TempDir(), "data")
		_, err := Run(ctx, Options{Repo: repo, TargetDir: target, Parallel: 2})
		if err == nil || !strings.Contains(err.Error(), "newer walkeeper") {
			t.Fatalf("restore of a backup of a newer layout: %v", err)
		}
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Errorf("the target was created: %v", err)
		}
	})
	t.Run("a part missing", func(t *testing.T) {
		repo, _, ctx := archivetest.Repo(t)
		partsBackup(t, repo, "20260101T000000Z", big, "base.00002.tar", basebackup.LayoutParts)
		target := filepath.Join(t.TempDir(), "data")
		_, err := Run(ctx, Options{Repo: repo, TargetDir: target, Parallel: 3})
		if err == nil || !strings.Contains(err.Error(), "lacks parts") || !strings.Contains(err.Error(), "16384") {
			t.Fatalf("restore of a backup lacking a part: %v", err)
		}
		if _, err := os.Stat(filepath.Join(target, "global", "pg_control")); !os.IsNotExist(err) {
			t.Errorf("global/pg_control after the failed restore: %v", err)
		}
		if _, err := os.Stat(filepath.Join(target, FailedMarker)); err != nil {
			t.Errorf("no failure note: %v", err)
		}
	})
}
