package restore

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
)

// fileSystem is every change the data-directory writer makes to the file
// system. osFS is the real one; a test records the calls to prove the
// order of creation and syncing.
type fileSystem interface {
	Mkdir(name string, perm fs.FileMode) error
	// Create makes a new regular file (mode 0600) for writing, never
	// through a symbolic link, replacing an existing file.
	Create(name string) (outFile, error)
	// OpenWrite opens an existing regular file for writing in place
	// (blocks of an incremental backup's older members), never through a
	// symbolic link.
	OpenWrite(name string) (outFile, error)
	Symlink(oldname, newname string) error
	Link(oldname, newname string) error
	Lchown(name string, uid, gid int) error
	Chmod(name string, mode fs.FileMode) error
	RemoveAll(name string) error
	// SyncDir fsyncs a directory: its entries survive a crash.
	SyncDir(name string) error
	// OpenRead opens an existing regular file for reading (and fsync),
	// never through a symbolic link: a file a delta restore keeps.
	OpenRead(name string) (inFile, error)
}

// inFile is an existing file a delta restore reads to compare, and
// fsyncs when it keeps it.
type inFile interface {
	io.Reader
	Sync() error
	Close() error
}

// outFile is a file being written.
type outFile interface {
	io.Writer
	io.WriterAt
	Truncate(size int64) error
	Chown(uid, gid int) error
	Sync() error
	Close() error
}

type osFS struct{}

func (osFS) Mkdir(name string, perm fs.FileMode) error { return os.Mkdir(name, perm) }
func (osFS) Create(name string) (outFile, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
}
func (osFS) OpenWrite(name string) (outFile, error) {
	return os.OpenFile(name, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
}
func (osFS) OpenRead(name string) (inFile, error) {
	return os.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}
func (osFS) Symlink(oldname, newname string) error     { return os.Symlink(oldname, newname) }
func (osFS) Link(oldname, newname string) error        { return os.Link(oldname, newname) }
func (osFS) Lchown(name string, uid, gid int) error    { return os.Lchown(name, uid, gid) }
func (osFS) Chmod(name string, mode fs.FileMode) error { return os.Chmod(name, mode) }
func (osFS) RemoveAll(name string) error               { return os.RemoveAll(name) }
func (osFS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// owner is who restored files belong to (nil: the current user).
type owner struct{ uid, gid int }

// dataDir writes everything a restore puts on disk (the archives' files,
// directories and links, tablespace links, backup_manifest, the recovery
// settings and last pg_control): each entry is owned by the restored
// server's OS user, and, unless noSync, durable before pg_control is
// written. Confinement to the roots is the extractor's job, before it asks
// for a change.
//
// Durability happens here and only here: commit hands each written file to
// a pool of syncers (fsync, then close) while extraction goes on; every
// directory whose entries changed is remembered; sync waits for the file
// syncs and fsyncs those directories; writePGControl calls sync, then writes
// pg_control, fsyncs it and fsyncs global/. A crash at any moment before
// pg_control is durable leaves a directory PostgreSQL refuses to start; a
// crash after it leaves one whose every file is on disk.
type dataDir struct {
	fs     fileSystem
	owner  *owner
	noSync bool

	queue chan pendingSync // nil once sync has run
	wg    sync.WaitGroup

	mu    sync.Mutex
	err   error           // the first failed file sync
	dirty map[string]bool // directories whose entries changed

	// wroteFiles counts the files created, wroteBytes every byte written
	// into files: what a restore cost the disk (Result.Wrote).
	wroteFiles, wroteBytes atomic.Int64
}

// countedFile adds the bytes written through it to the writer's count.
type countedFile struct {
	outFile
	n *atomic.Int64
}

func (f countedFile) Write(p []byte) (int, error) {
	n, err := f.outFile.Write(p)
	f.n.Add(int64(n))
	return n, err
}

func (f countedFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.outFile.WriteAt(p, off)
	f.n.Add(int64(n))
	return n, err
}

type pendingSync struct {
	f    outFile
	path string
}

// syncers is how many files are fsynced at once: fsyncs of different files
// overlap in the device queue and share journal commits.
const syncers = 8

func newDataDir(fsys fileSystem, own *owner, noSync bool) *dataDir {
	if fsys == nil {
		fsys = osFS{}
	}
	d := &dataDir{fs: fsys, owner: own, noSync: noSync, dirty: map[string]bool{}}
	if !noSync {
		d.queue = make(chan pendingSync, 4*syncers)
		for range syncers {
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				for p := range d.queue {
					d.fail(p.f.Sync(), "fsync", p.path)
					d.fail(p.f.Close(), "close", p.path)
				}
			}()
		}
	}
	return d
}

// stopWorkers ends the syncers once every file handed to them is done.
func (d *dataDir) stopWorkers() {
	if d.queue == nil {
		return
	}
	close(d.queue)
	d.wg.Wait()
	d.queue = nil
}

func (d *dataDir) fail(err error, op, path string) {
	if err == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err == nil {
		d.err = fmt.Errorf("%s %s: %w", op, path, err)
	}
}

func (d *dataDir) failed() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// changed notes that dir's entries changed: sync fsyncs it.
func (d *dataDir) changed(dir string) {
	d.mu.Lock()
	d.dirty[dir] = true
	d.mu.Unlock()
}

func (d *dataDir) chown(p string) error {
	if d.owner == nil {
		return nil
	}
	return d.fs.Lchown(p, d.owner.uid, d.owner.gid)
}

// mkdir creates one directory (mode 0700) whose parent exists.
func (d *dataDir) mkdir(p string) error {
	if err := d.fs.Mkdir(p, 0o700); err != nil {
		return err
	}
	d.changed(filepath.Dir(p))
	d.changed(p) // a new directory's own inode, even when it stays empty
	return d.chown(p)
}

// mkdirAll creates p and its missing parents (mode 0700; only what it
// creates is chowned).
func (d *dataDir) mkdirAll(p string) error {
	if st, err := os.Stat(p); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", p)
		}
		return nil
	}
	if parent := filepath.Dir(p); parent != p {
		if err := d.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := d.mkdir(p); err != nil && !os.IsExist(err) {
		return err
	}
	return nil
}

// create opens a new file for writing; commit finishes it.
func (d *dataDir) create(p string) (outFile, error) {
	if err := d.failed(); err != nil {
		return nil, err
	}
	f, err := d.fs.Create(p)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", p, err)
	}
	d.changed(filepath.Dir(p))
	d.wroteFiles.Add(1)
	return countedFile{f, &d.wroteBytes}, nil
}

// openWrite opens a file written before for more writes; commit finishes
// it again.
func (d *dataDir) openWrite(p string) (outFile, error) {
	if err := d.failed(); err != nil {
		return nil, err
	}
	f, err := d.fs.OpenWrite(p)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	return countedFile{f, &d.wroteBytes}, nil
}

// commit gives a fully written file to its owner and hands it to the
// syncers, which close it. The file must not be used afterwards.
func (d *dataDir) commit(f outFile, p string) error {
	if d.owner != nil {
		if err := f.Chown(d.owner.uid, d.owner.gid); err != nil {
			f.Close()
			return fmt.Errorf("chown %s: %w", p, err)
		}
	}
	if d.noSync {
		return f.Close()
	}
	if d.queue == nil {
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("fsync %s: %w", p, err)
		}
		return nil
	}
	d.queue <- pendingSync{f, p}
	return d.failed()
}

// abort closes a file that could not be written completely.
func (d *dataDir) abort(f outFile) { f.Close() }

// writeFile creates p with data.
func (d *dataDir) writeFile(p string, data []byte) error {
	f, err := d.create(p)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		d.abort(f)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return d.commit(f, p)
}

// symlink creates newname pointing at oldname.
func (d *dataDir) symlink(oldname, newname string) error {
	if err := d.fs.Symlink(oldname, newname); err != nil {
		return err
	}
	d.changed(filepath.Dir(newname))
	return d.chown(newname)
}

// link creates the hard link newname to the file oldname.
func (d *dataDir) link(oldname, newname string) error {
	if err := d.fs.Link(oldname, newname); err != nil {
		return err
	}
	d.changed(filepath.Dir(newname))
	return nil
}

// removeAll removes p and everything below it.
func (d *dataDir) removeAll(p string) error {
	if err := d.fs.RemoveAll(p); err != nil {
		return err
	}
	d.changed(filepath.Dir(p))
	return nil
}

// removeNow removes p and makes the removal durable at once (fsync of its
// directory), before anything else changes: how a delta restore takes
// pg_control away first.
func (d *dataDir) removeNow(p string) error {
	if err := d.fs.RemoveAll(p); err != nil {
		return err
	}
	if d.noSync {
		return nil
	}
	if err := d.fs.SyncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("fsync directory %s: %w", filepath.Dir(p), err)
	}
	return nil
}

// writeFileNow writes p with data and makes it durable at once (the file,
// then its directory), outside the syncer pool: the marker a delta
// restore leaves while it runs.
func (d *dataDir) writeFileNow(p string, data []byte) error {
	f, err := d.fs.Create(p)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", p, err)
	}
	if d.owner != nil {
		if err := f.Chown(d.owner.uid, d.owner.gid); err != nil {
			f.Close()
			return fmt.Errorf("chown %s: %w", p, err)
		}
	}
	if !d.noSync {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("fsync %s: %w", p, err)
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if d.noSync {
		return nil
	}
	return d.fs.SyncDir(filepath.Dir(p))
}

// What prepareRoot does with a root that holds entries.
type nonEmpty int

const (
	refuseNonEmpty nonEmpty = iota // a new directory: refuse
	emptyNonEmpty                  // --force: remove them
	keepNonEmpty                   // --delta: the directory to resync
)

// prepareRoot makes root a directory (mode 0700, owned), creating it when
// missing; what it already holds is refused, removed or kept.
func (d *dataDir) prepareRoot(root string, what nonEmpty) error {
	entries, err := os.ReadDir(root)
	switch {
	case os.IsNotExist(err):
		if err := d.mkdirAll(root); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("target %s: %w", root, err)
	case len(entries) == 0 || what == keepNonEmpty:
	case what == refuseNonEmpty:
		return fmt.Errorf("%s is not empty: restore into an empty directory, pass --delta to resync it (a data directory of the same cluster), or --force to replace its contents", root)
	default:
		for _, e := range entries {
			if err := d.removeAll(filepath.Join(root, e.Name())); err != nil {
				return fmt.Errorf("--force: empty %s: %w", root, err)
			}
		}
	}
	if err := d.fs.Chmod(root, 0o700); err != nil {
		return err
	}
	d.changed(root)
	return d.chown(root)
}

// sync waits until every committed file is fsynced and fsyncs every
// directory whose entries changed. Files committed later are fsynced at
// once.
func (d *dataDir) sync() error {
	d.stopWorkers()
	if err := d.failed(); err != nil {
		return err
	}
	if d.noSync {
		return nil
	}
	d.mu.Lock()
	dirs := make([]string, 0, len(d.dirty))
	for dir := range d.dirty {
		dirs = append(dirs, dir)
	}
	clear(d.dirty)
	d.mu.Unlock()
	sem := make(chan struct{}, syncers)
	var wg sync.WaitGroup
	for _, dir := range dirs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d.fail(d.fs.SyncDir(dir), "fsync directory", dir)
		}()
	}
	wg.Wait()
	return d.failed()
}

// writePGControl makes everything written so far durable, then writes
// global/pg_control below target and makes it durable: the last write of a
// restore.
func (d *dataDir) writePGControl(target string, data []byte) error {
	p := filepath.Join(target, "global", "pg_control")
	if err := d.mkdirAll(filepath.Dir(p)); err != nil {
		return err
	}
	if err := d.sync(); err != nil {
		return err
	}
	if err := d.writeFile(p, data); err != nil {
		return err
	}
	return d.sync()
}

// discard stops the syncers of a restore that failed and forgets what they
// would have synced; errors are dropped (the restore already failed). The
// writer can still write the failure note.
func (d *dataDir) discard() {
	d.stopWorkers()
	d.mu.Lock()
	d.err = nil
	clear(d.dirty)
	d.mu.Unlock()
}
