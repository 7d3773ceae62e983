package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Local is a Backend on a local directory. Objects are regular files (mode
// 0600) under the root, in directories (mode 0700) that mirror the key's
// slashes.
type Local struct {
	root string
}

// NewLocal returns a backend rooted at dir, creating dir (0700) if needed.
// dir must be an absolute path.
func NewLocal(dir string) (*Local, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("local repository path %q is not absolute: give a full path such as /var/lib/walkeeper/repo", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, Permanent(fmt.Errorf("create repository directory: %w", err))
	}
	return &Local{root: filepath.Clean(dir)}, nil
}

func (l *Local) String() string { return l.root }

func (l *Local) path(key string) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", Permanent(err)
	}
	return filepath.Join(l.root, filepath.FromSlash(key)), nil
}

// classify marks filesystem errors that retrying cannot fix as permanent.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, fs.ErrPermission) ||
		errors.Is(err, syscall.EROFS) {
		return Permanent(err)
	}
	return err
}

// copyBuffers serve Put's copy loop. 256 KiB writes cost a third of the
// system time of 1 MiB ones here: the kernel's copy reads a buffer that
// still sits in the CPU cache.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// Put writes to a temporary file beside the target, checks the byte count,
// fsyncs, renames into place and fsyncs the directory: the one place where
// local durability happens (through create and commit).
func (l *Local) Put(ctx context.Context, key string, r io.Reader) error {
	o, err := l.create(ctx, key)
	if err != nil {
		return err
	}
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	if _, err := io.CopyBuffer(o, ctxReader{ctx: ctx, r: r}, *buf); err != nil {
		o.abort()
		if o.err != nil {
			return o.err
		}
		return classify(fmt.Errorf("write %s: %w", key, err))
	}
	return o.commit()
}

// localObject is an object being written: a temporary file beside its
// final name, invisible under the key until commit renames it there.
type localObject struct {
	ctx       context.Context
	key       string
	tmp, path string
	f         *os.File
	n         int64
	started   int64 // bytes whose writeback was started
	err       error
}

// writebackAfter is how many bytes an object gets before the writeback of
// what it holds is started (StartWriteback).
const writebackAfter = 8 << 20

// create opens a new temporary file for key, making its directories.
func (l *Local) create(ctx context.Context, key string) (*localObject, error) {
	p, err := l.path(key)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(p)
	if err := l.mkdirs(dir); err != nil {
		return nil, classify(fmt.Errorf("create directory for %s: %w", key, err))
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+filepath.Base(p)+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		// DeleteMany removed the directory, empty, after mkdirs saw it.
		if err := l.mkdirs(dir); err != nil {
			return nil, classify(fmt.Errorf("create directory for %s: %w", key, err))
		}
		f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if err != nil {
		return nil, classify(fmt.Errorf("create %s: %w", tmp, err))
	}
	return &localObject{ctx: ctx, key: key, tmp: tmp, path: p, f: f}, nil
}

// Write appends p to the temporary file; it fails once the context ends.
func (o *localObject) Write(p []byte) (int, error) {
	if o.err != nil {
		return 0, o.err
	}
	if err := o.ctx.Err(); err != nil {
		o.err = err
		return 0, err
	}
	n, err := o.f.Write(p)
	o.n += int64(n)
	if err != nil {
		o.err = classify(fmt.Errorf("write %s: %w", o.key, err))
		return n, o.err
	}
	if o.n-o.started >= writebackAfter {
		StartWriteback(o.f, o.started, o.n-o.started)
		o.started = o.n
	}
	return n, nil
}

// commit checks the byte count, fsyncs the file, renames it to its key and
// fsyncs the directory. On any failure nothing is left under the key.
func (o *localObject) commit() (err error) {
	defer func() {
		if err != nil {
			o.abort()
		}
	}()
	if o.err != nil {
		return o.err
	}
	st, err := o.f.Stat()
	if err != nil {
		return classify(err)
	}
	if st.Size() != o.n {
		return fmt.Errorf("write %s: wrote %d bytes but file has %d", o.key, o.n, st.Size())
	}
	if err := o.f.Sync(); err != nil {
		return classify(fmt.Errorf("fsync %s: %w", o.key, err))
	}
	if err := o.f.Close(); err != nil {
		return classify(fmt.Errorf("close %s: %w", o.key, err))
	}
	if err := o.ctx.Err(); err != nil {
		return err
	}
	if err := os.Rename(o.tmp, o.path); err != nil {
		return classify(fmt.Errorf("rename %s: %w", o.key, err))
	}
	o.tmp = ""
	return classify(syncDir(filepath.Dir(o.path)))
}

// abort removes the temporary file; it is safe after commit.
func (o *localObject) abort() {
	if o.tmp == "" {
		return
	}
	o.f.Close()
	os.Remove(o.tmp)
	o.tmp = ""
}

// PutIfAbsent stores small data under key only if no object is there,
// atomically: the file is written and synced under a temporary name and
// hard-linked to its final name, which fails if that name exists.
func (l *Local) PutIfAbsent(ctx context.Context, key string, data []byte) (Version, error) {
	p, err := l.path(key)
	if err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	dir := filepath.Dir(p)
	if err := l.mkdirs(dir); err != nil {
		return "", classify(err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(p)+".tmp-")
	if err != nil {
		return "", classify(err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return "", classify(err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", classify(err)
	}
	if err := f.Close(); err != nil {
		return "", classify(err)
	}
	if err := os.Link(f.Name(), p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("create %s: %w: it exists", key, ErrPrecondition)
		}
		return "", classify(err)
	}
	return contentVersion(data), classify(syncDir(dir))
}

// casLockName is the file in a directory whose flock serialises the
// compare-and-swap operations (PutIfMatch, DeleteIfMatch) on its objects.
// PutIfAbsent needs no lock: it never changes an existing object, and the
// others keep the object present between their check and their write.
const casLockName = ".cas.lock"

// withCASLock runs fn holding the directory's compare-and-swap lock. It
// reports found=false, without running fn, when the directory is missing
// (so is the object).
func (l *Local) withCASLock(ctx context.Context, dir string, fn func() error) (found bool, err error) {
	f, err := os.OpenFile(filepath.Join(dir, casLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, classify(err)
	}
	defer f.Close()
	// Holders keep the lock for one small write; poll so ctx still ends
	// the wait behind a stuck one.
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return false, fmt.Errorf("lock %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return true, fn()
}

// currentVersion reads the object at p; ok is false when it is missing.
func currentVersion(p string) (v Version, ok bool, err error) {
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, classify(err)
	}
	return contentVersion(data), true, nil
}

// PutIfMatch replaces the object, durably as Put does, if its content has
// version v.
func (l *Local) PutIfMatch(ctx context.Context, key string, data []byte, v Version) (Version, error) {
	p, err := l.path(key)
	if err != nil {
		return "", err
	}
	found, err := l.withCASLock(ctx, filepath.Dir(p), func() error {
		cur, ok, err := currentVersion(p)
		if err != nil {
			return err
		}
		if !ok || cur != v {
			return fmt.Errorf("replace %s: %w: it is missing or was changed", key, ErrPrecondition)
		}
		return l.Put(ctx, key, bytes.NewReader(data))
	})
	if err == nil && !found {
		err = fmt.Errorf("replace %s: %w: it is missing", key, ErrPrecondition)
	}
	if err != nil {
		return "", err
	}
	return contentVersion(data), nil
}

// DeleteIfMatch removes the object if its content has version v.
func (l *Local) DeleteIfMatch(ctx context.Context, key string, v Version) error {
	p, err := l.path(key)
	if err != nil {
		return err
	}
	_, err = l.withCASLock(ctx, filepath.Dir(p), func() error {
		cur, ok, err := currentVersion(p)
		if err != nil || !ok {
			return err
		}
		if cur != v {
			return fmt.Errorf("delete %s: %w: it was changed", key, ErrPrecondition)
		}
		return l.Delete(ctx, key)
	})
	return err
}

// GetVersioned reads the whole file; files are replaced by rename, so the
// bytes read are one version.
func (l *Local) GetVersioned(ctx context.Context, key string) ([]byte, Version, error) {
	rc, err := l.Get(ctx, key, 0, maxVersioned+1)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, "", classify(fmt.Errorf("read %s: %w", key, err))
	}
	if len(data) > maxVersioned {
		return nil, "", fmt.Errorf("read %s: larger than %d bytes", key, maxVersioned)
	}
	return data, contentVersion(data), nil
}

// mkdirs creates dir and its missing parents with mode 0700, fsyncing each
// parent so a new directory entry survives a crash.
func (l *Local) mkdirs(dir string) error {
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	if err := l.mkdirs(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(filepath.Dir(dir))
}

// SyncDir fsyncs a directory so that a new or renamed entry in it survives
// a crash.
func SyncDir(dir string) error { return syncDir(dir) }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// Get opens the file and returns a reader limited to the requested range.
func (l *Local) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	p, err := l.path(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, classify(fmt.Errorf("open %s: %w", key, err))
	}
	if off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			return nil, classify(err)
		}
	}
	var r io.Reader = f
	if length >= 0 {
		r = io.LimitReader(f, length)
	}
	return readCloser{Reader: ctxReader{ctx: ctx, r: r}, Closer: f}, nil
}

// Stat returns the file's size and modification time.
func (l *Local) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	p, err := l.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return ObjectInfo{}, classify(fmt.Errorf("stat %s: %w", key, err))
	}
	if !st.Mode().IsRegular() {
		return ObjectInfo{}, fmt.Errorf("stat %s: %w: not a regular file", key, ErrNotFound)
	}
	return ObjectInfo{Key: key, Size: st.Size(), ModTime: st.ModTime()}, nil
}

// List walks the directory tree below the deepest directory named by prefix.
func (l *Local) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return l.ListFrom(ctx, prefix, "", fn)
}

// ListFrom reads directory entries by name only (no stat of each file),
// keeps the keys that start with prefix and sort after after, sorts those
// and stats only them. A lookup of one name in a directory of 100,000 files
// therefore costs one pass over the names, not 100,000 stats.
func (l *Local) ListFrom(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error {
	dirKey, namePrefix := "", prefix
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dirKey, namePrefix = prefix[:i+1], prefix[i+1:]
	}
	var keys []ObjectInfo
	var walk func(dir, keyDir, need string) error
	walk = func(dir, keyDir, need string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := os.Open(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil
			}
			return err
		}
		// Names only: no stat of the entries that cannot match.
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		for _, name := range names {
			if strings.HasPrefix(name, ".") || !strings.HasPrefix(name, need) {
				continue
			}
			key := keyDir + name
			// A file counts when it sorts after after; a directory when
			// some key below it (all start with key+"/") can.
			if after != "" && key <= after && key+"/" <= after && !strings.HasPrefix(after, key+"/") {
				continue
			}
			st, err := os.Lstat(filepath.Join(dir, name))
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue // deleted while listing
				}
				return err
			}
			switch {
			case st.IsDir():
				if err := walk(filepath.Join(dir, name), key+"/", ""); err != nil {
					return err
				}
			case st.Mode().IsRegular() && key > after:
				keys = append(keys, ObjectInfo{Key: key, Size: st.Size(), ModTime: st.ModTime()})
			}
		}
		return nil
	}
	if err := walk(filepath.Join(l.root, filepath.FromSlash(dirKey)), dirKey, namePrefix); err != nil {
		return classify(fmt.Errorf("list %s: %w", prefix, err))
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Key < keys[j].Key })
	for _, info := range keys {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// DeleteMany deletes the keys one by one, fsyncing each directory once.
func (l *Local) DeleteMany(ctx context.Context, keys []string) error {
	dirs := map[string]bool{}
	for _, key := range keys {
		p, err := l.path(key)
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return classify(fmt.Errorf("delete %s: %w", key, err))
		}
		dirs[filepath.Dir(p)] = true
	}
	for d := range dirs {
		if err := syncDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return classify(err)
		}
	}
	// Directories left empty (a group of WAL segments, a deleted backup's)
	// go too, so that listings do not read them forever. A writer racing
	// with this retries (Put). The top-level directories stay.
	for d := range dirs {
		l.removeEmpty(d)
	}
	return nil
}

// removeEmpty removes dir and then its parents while they are empty and
// below a top-level directory of the repository (wal/, backups/, ...).
func (l *Local) removeEmpty(dir string) {
	for {
		rel, err := filepath.Rel(l.root, dir)
		if err != nil || rel == "." || !strings.ContainsRune(rel, filepath.Separator) {
			return
		}
		if err := os.Remove(dir); err != nil {
			return // not empty (ENOTEMPTY, EEXIST), or gone
		}
		parent := filepath.Dir(dir)
		_ = syncDir(parent)
		dir = parent
	}
}

// Delete removes the file and fsyncs its directory.
func (l *Local) Delete(ctx context.Context, key string) error {
	p, err := l.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return classify(fmt.Errorf("delete %s: %w", key, err))
	}
	return classify(syncDir(filepath.Dir(p)))
}

// ctxReader stops a copy loop when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type readCloser struct {
	io.Reader
	io.Closer
}
