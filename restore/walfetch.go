package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// This file is the repository side of PostgreSQL's restore_command:
//
//	restore_command = '/usr/local/bin/walkeeper wal-fetch --repo ... %f %p'
//
// PostgreSQL runs it in the data directory and asks for one file at a time:
// a WAL segment ("000000010000000000000003"), a timeline history file
// ("00000002.history", often for timelines that do not exist, to find the
// newest one), occasionally something else. It expects exit status 0 with
// the file written to %p, or a non-zero status when the file is not there.
// The design is in docs/wal-fetch.md.
//
// # The .partial rule
//
// `walkeeper stream` stores the segment it is still receiving as
// "NAME.partial" (the bytes received so far, not padded) about every second,
// and removes it once the complete segment NAME is stored. When PostgreSQL
// asks for segment NAME and only NAME.partial is stored, FetchWAL serves the
// partial zero-padded to the segment size (archive.ForFetch decides, with
// two name lookups). Recovery replays it up to the zeros, where it stops as
// at the end of WAL: a replica seeded from the repository gets to within a
// second of the primary before it switches to streaming, and a
// point-in-time restore can reach the last transaction the stream stored.
// The last segment of a timeline that ended with a promotion is kept as
// .partial, so it is served: it is all the WAL that timeline has.

// PrefetchDirName is the prefetch spool's directory name, created next to
// restore_command's destination (so inside pg_wal). PostgreSQL ignores it:
// it only looks at WAL file names there.
const PrefetchDirName = ".walkeeper-prefetch"

// PrefetchDir returns the prefetch spool used for fetches into dest.
func PrefetchDir(dest string) string {
	return filepath.Join(filepath.Dir(dest), PrefetchDirName)
}

// ErrInvalidWALName marks a NAME that is not a plain file name; it is
// archive.ErrInvalidName.
var ErrInvalidWALName = archive.ErrInvalidName

// FetchOptions configures FetchWAL.
type FetchOptions struct {
	// Spool is the prefetch spool directory (PrefetchDir(dest)). A segment
	// found there is moved into place instead of being downloaded. Empty:
	// no spool.
	Spool string
}

// Fetched describes what FetchWAL wrote.
type Fetched struct {
	// Name is the requested name.
	Name string
	// Key is the object served; empty when the file came from the spool.
	Key string
	// Size is the number of bytes written to the destination.
	Size int64
	// FromSpool: the file was prefetched.
	FromSpool bool
	// Partial: segment Name was served from Name.partial, zero-padded.
	Partial bool
}

// CompleteSegment reports whether a complete segment was served (so the
// following segments are worth prefetching).
func (f Fetched) CompleteSegment() bool {
	return archive.KindOf(f.Name) == archive.Segment && !f.Partial
}

// FetchWAL writes the WAL file name from the repository to dest, the way
// restore_command must: atomically (a temporary file in dest's directory,
// fsync, rename over an existing dest, fsync of the directory), mode 0600,
// with the content verified while it is read. A corrupt object is an error
// and dest is left as it was. A name that is not stored (including names of
// no WAL kind) gives an error matching storage.ErrNotFound; a name that is
// not a plain file name gives ErrInvalidWALName. See the .partial rule above.
func FetchWAL(ctx context.Context, repo *storage.Repository, name, dest string, opts FetchOptions) (Fetched, error) {
	kind, err := archive.CheckFileName(name)
	if err != nil {
		return Fetched{}, err
	}
	res := Fetched{Name: name}
	if kind == archive.Other {
		return res, fmt.Errorf("%s: not a WAL file name walkeeper stores: %w", name, storage.ErrNotFound)
	}
	if kind == archive.Segment && opts.Spool != "" {
		ok, n, err := takeFromSpool(opts.Spool, name, dest)
		if err != nil {
			return res, err
		}
		if ok {
			res.FromSpool, res.Size = true, n
			trimSpool(opts.Spool, name)
			return res, nil
		}
	}
	// The partial may be replaced by the complete segment (and removed)
	// between the listing and the read: look again once.
	for attempt := 0; ; attempt++ {
		res, err = fetchFromRepository(ctx, repo, name, kind, dest)
		if err == nil || attempt > 0 || !errors.Is(err, errWALVanished) {
			break
		}
	}
	if errors.Is(err, errWALVanished) {
		err = fmt.Errorf("%s: %w", name, storage.ErrNotFound)
	}
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) && opts.Spool != "" {
			clearSpool(opts.Spool)
		}
		return res, err
	}
	if kind == archive.Segment && opts.Spool != "" {
		trimSpool(opts.Spool, name)
	}
	return res, nil
}

// errWALVanished: an object listed a moment ago is gone.
var errWALVanished = errors.New("object vanished")

func fetchFromRepository(ctx context.Context, repo *storage.Repository, name string, kind archive.Kind, dest string) (Fetched, error) {
	res := Fetched{Name: name}
	f, err := archive.ForFetch(ctx, repo, name)
	if err != nil {
		return res, err
	}
	if u := f.Unfinished; u != nil {
		// The prefix the partial and ranges hold; a segment is padded.
		var padTo int64
		if f.Partial {
			padTo, res.Partial = int64(f.SegSize), true
		}
		n, err := walWriteAtomic(dest, padTo, func(w *os.File) (int64, error) {
			return u.WriteTo(ctx, repo, w)
		})
		if errors.Is(err, storage.ErrNotFound) {
			return res, errWALVanished // consolidated meanwhile: look again
		}
		if err != nil {
			return res, err
		}
		res.Key, res.Size = u.Key(), n
		return res, nil
	}
	obj, err := repo.Open(ctx, f.Object.Key)
	if errors.Is(err, storage.ErrNotFound) {
		return res, errWALVanished
	}
	if err != nil {
		return res, err
	}
	defer obj.Close()
	n, err := walWriteAtomic(dest, 0, func(w *os.File) (int64, error) {
		return io.CopyBuffer(w, obj, make([]byte, 1<<20))
	})
	if err != nil {
		return res, err
	}
	res.Key, res.Size = f.Object.Key, n
	return res, nil
}

// walWriteAtomic fills a temporary file in dest's directory with fill,
// appends zeros up to padTo bytes (when padTo > 0), fsyncs it, renames it
// to dest (replacing a file there) and fsyncs the directory. On any error,
// including one from fill, dest is untouched and the temporary file
// removed. It returns the size written.
func walWriteAtomic(dest string, padTo int64, fill func(*os.File) (int64, error)) (n int64, err error) {
	dir := filepath.Dir(dest)
	f, err := os.CreateTemp(dir, "."+filepath.Base(dest)+".walkeeper-*.tmp")
	if err != nil {
		return 0, fmt.Errorf("create file next to %s: %w", dest, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	n, err = fill(f)
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", dest, err)
	}
	if padTo > 0 {
		if n > padTo {
			return 0, fmt.Errorf("write %s: %w: the partial segment has %d bytes, more than the segment size %d",
				dest, storage.ErrCorrupt, n, padTo)
		}
		buf := make([]byte, 1<<20)
		for n < padTo {
			m, err := f.Write(buf[:min(int64(len(buf)), padTo-n)])
			n += int64(m)
			if err != nil {
				return 0, fmt.Errorf("write %s: %w", dest, err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), dest); err != nil {
		return 0, fmt.Errorf("rename to %s: %w", dest, err)
	}
	return n, storage.SyncDir(dir)
}

// The prefetch spool.
//
// PostgreSQL runs restore_command for one segment at a time and replays it
// before asking for the next, so every request pays the repository's
// latency. wal-fetch --prefetch N therefore starts, after serving a
// complete segment S, one background process (if none is running) that
// downloads the complete segments S+1 … S+N of S's timeline into the spool
// directory PrefetchDir(dest). The next wal-fetch finds its segment there
// and only renames it into place.
//
// The spool never makes wal-fetch serve wrong data:
//   - a file counts only under its exact segment name, and a file gets that
//     name only by a rename after it was read completely from the
//     repository (checksums verified), checked to be exactly one segment
//     long and fsynced; temporary files start with a dot;
//   - segments in the repository are written once and never change, so a
//     prefetched copy stays right;
//   - one prefetcher at a time, by an flock(2) on the spool's lock file,
//     which the prefetcher holds until it exits.
//
// Files at or before a served segment are removed as the fetches move on,
// and the whole spool is removed when a fetch finds nothing (the end of the
// archive, or the history file probe after a promotion), so at most N
// segments stay behind in pg_wal.

const spoolLockName = ".lock"

// LockSpool creates the spool directory when missing and takes its lock
// without waiting. ok is false when another process holds it. The lock is
// held until the returned file is closed, also by processes that inherit
// the file.
func LockSpool(spool string) (f *os.File, ok bool, err error) {
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, false, err
	}
	f, err = os.OpenFile(filepath.Join(spool, spoolLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := LockFile(f); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return f, true, nil
}

// LockFile takes an exclusive flock on f without waiting; it fails with
// EWOULDBLOCK when another open file description holds it. Taking it again
// through the same description (an inherited descriptor) succeeds.
func LockFile(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			return err
		}
	}
}

// takeFromSpool moves a prefetched segment into dest. ok is false when the
// spool does not hold it (or holds something implausible, which is
// removed); the caller then fetches from the repository.
func takeFromSpool(spool, name, dest string) (ok bool, size int64, err error) {
	p := filepath.Join(spool, name)
	st, err := os.Lstat(p)
	if err != nil {
		return false, 0, nil
	}
	if !st.Mode().IsRegular() || !plausibleSegmentSize(st.Size()) {
		os.Remove(p)
		return false, 0, nil
	}
	if err := os.Rename(p, dest); err != nil {
		return false, 0, nil
	}
	if err := storage.SyncDir(filepath.Dir(dest)); err != nil {
		return false, 0, err
	}
	return true, st.Size(), nil
}

// plausibleSegmentSize: wal_segment_size is a power of two from 1 MB to 1 GB.
func plausibleSegmentSize(n int64) bool {
	return n >= 1<<20 && n <= 1<<30 && n&(n-1) == 0
}

// trimSpool removes prefetched segments at or before name: PostgreSQL has
// moved past them. Errors are ignored; the spool is only a cache.
func trimSpool(spool, name string) {
	entries, err := os.ReadDir(spool)
	if err != nil {
		return
	}
	for _, e := range entries {
		if archive.KindOf(e.Name()) == archive.Segment && e.Name() <= name {
			os.Remove(filepath.Join(spool, e.Name()))
		}
	}
}

// clearSpool removes the spool directory unless a prefetcher is running.
func clearSpool(spool string) {
	if _, err := os.Lstat(spool); err != nil {
		return
	}
	lock, ok, err := LockSpool(spool)
	if err != nil || !ok {
		return
	}
	defer lock.Close()
	entries, _ := os.ReadDir(spool)
	for _, e := range entries {
		if e.Name() != spoolLockName {
			os.Remove(filepath.Join(spool, e.Name()))
		}
	}
	os.Remove(filepath.Join(spool, spoolLockName))
	os.Remove(spool)
}

// PrefetchOptions configures Prefetch.
type PrefetchOptions struct {
	// After is the segment just served; the segments after it on its
	// timeline are prefetched.
	After string
	// Count is how many segments after After to have in the spool.
	Count int
	// Spool is the spool directory (PrefetchDir of the fetch destination).
	Spool string
	// Parallel is the number of concurrent downloads (default 4).
	Parallel int
}

// Prefetch downloads the complete segments After+1 … After+Count of After's
// timeline that are not in the spool yet into the spool, stopping at the
// first one the repository does not have complete. The caller holds the
// spool's lock (LockSpool). It returns the number of segments downloaded.
func Prefetch(ctx context.Context, repo *storage.Repository, opts PrefetchOptions) (int, error) {
	if archive.KindOf(opts.After) != archive.Segment {
		return 0, fmt.Errorf("%w %q: prefetch needs a segment name", ErrInvalidWALName, opts.After)
	}
	cfg, err := repo.Config(ctx)
	if err != nil {
		return 0, err
	}
	segSize := cfg.WALSegmentSize
	after, err := archive.ParseName(opts.After, segSize)
	if err != nil {
		return 0, err
	}
	tli, segno := after.TLI, after.Seg
	if err := os.MkdirAll(opts.Spool, 0o700); err != nil {
		return 0, err
	}
	// Housekeeping, safe because the caller holds the lock: temporary files
	// of a killed prefetcher, and segments PostgreSQL has moved past.
	have := map[string]bool{}
	entries, err := os.ReadDir(opts.Spool)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp"):
			os.Remove(filepath.Join(opts.Spool, name))
		case archive.KindOf(name) == archive.Segment && name <= opts.After:
			os.Remove(filepath.Join(opts.Spool, name))
		case archive.KindOf(name) == archive.Segment:
			have[name] = true
		}
	}
	maxSegno := uint64(0xFFFFFFFF) * (uint64(0x100000000) / segSize)
	var names []string
	for i := uint64(1); i <= uint64(max(opts.Count, 0)) && segno+i <= maxSegno; i++ {
		names = append(names, archive.SegmentName(tli, segno+i, segSize))
	}
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = 4
	}
	// Look all of them up first, so nothing past a gap is downloaded:
	// recovery stops at the gap and would never use it.
	keys := make([]string, len(names))
	errs := make([]error, len(names))
	forEachParallel(len(names), parallel, func(i int) {
		if !have[names[i]] {
			var info storage.ObjectInfo
			info, errs[i] = archive.Find(ctx, repo, names[i])
			keys[i] = info.Key
		}
	})
	var todo []int
	for i := range names {
		if errors.Is(errs[i], storage.ErrNotFound) {
			break
		}
		if errs[i] != nil {
			return 0, errs[i]
		}
		if !have[names[i]] {
			todo = append(todo, i)
		}
	}
	var mu sync.Mutex
	var firstErr error
	downloaded := 0
	forEachParallel(len(todo), parallel, func(j int) {
		i := todo[j]
		err := prefetchOne(ctx, repo, names[i], keys[i], opts.Spool, int64(segSize))
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			downloaded++
		} else if firstErr == nil {
			firstErr = err
		}
	})
	return downloaded, firstErr
}

// forEachParallel calls fn(0) … fn(n-1), at most parallel at a time.
func forEachParallel(n, parallel int, fn func(i int)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			fn(i)
		}()
	}
	wg.Wait()
}

// prefetchOne downloads the complete segment name (stored as key) into the
// spool.
func prefetchOne(ctx context.Context, repo *storage.Repository, name, key, spool string, segSize int64) error {
	obj, err := repo.Open(ctx, key)
	if err != nil {
		return err
	}
	defer obj.Close()
	_, err = walWriteAtomic(filepath.Join(spool, name), 0, func(w *os.File) (int64, error) {
		return io.CopyBuffer(w, &exactSizeReader{r: obj, name: name, want: segSize}, make([]byte, 1<<20))
	})
	return err
}

// exactSizeReader fails unless r yields exactly want bytes.
type exactSizeReader struct {
	r    io.Reader
	name string
	want int64
	n    int64
}

func (e *exactSizeReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n += int64(n)
	if e.n > e.want || err == io.EOF && e.n != e.want {
		return n, fmt.Errorf("%s: %w: %d bytes, but segments are %d bytes", e.name, storage.ErrCorrupt, e.n, e.want)
	}
	return n, err
}
