package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Options configure Run.
type Options struct {
	Repo *storage.Repository
	// TargetDir is the data directory to create.
	TargetDir string
	// BackupID is a backup ID, or "" / "latest" for the newest complete one.
	BackupID string
	// Force empties a non-empty target directory (and tablespace
	// locations) first.
	Force bool
	// Delta makes an existing data directory (and its tablespace
	// locations) equal to the backup, keeping the files whose size and
	// checksum match the backup's manifest (delta.go). Exclusive with
	// Force.
	Delta bool
	// Owner is the OS user the restored files belong to. When empty and
	// walkeeper runs as root, the owner of TargetDir's parent.
	Owner string
	// TablespaceMap relocates tablespaces: old location → new location.
	TablespaceMap map[string]string
	// Parallel is how many archives (chunks) are downloaded, decompressed
	// and extracted at once (default: the number of CPUs).
	Parallel int
	// Progress, when set, is called as the restore advances (from several
	// goroutines; it must be safe for that).
	Progress func(Progress)
	// Recovery is what to write into the data directory for startup.
	Recovery Recovery
	// RepoDir is a local repository's directory and Binary the walkeeper
	// binary that Recovery.RestoreCommand runs; before anything is written
	// restore checks that the restored server's OS user can use both ("":
	// not checked, e.g. S3 or a restore command of the operator's own).
	RepoDir, Binary string
	// KeyFiles are the files Recovery.RestoreCommand reads the key from
	// (--identity-file, --passphrase-file), checked like Binary.
	KeyFiles []string
	// NoSync skips every fsync (like pg_basebackup --no-sync): faster, but
	// a crash of the machine can leave a directory that starts and is
	// corrupt. For tests and throwaway copies.
	NoSync bool
	Log    *slog.Logger

	// fs is the file system the data directory is written through (nil:
	// the real one); tests record it.
	fs fileSystem
}

// ServerAccessError means the restored server's OS user could not run
// restore_command: the binary, a key file or the local repository is out
// of its reach. The setup is wrong, not the backup; nothing was written.
type ServerAccessError struct{ Err error }

func (e ServerAccessError) Error() string { return e.Err.Error() }
func (e ServerAccessError) Unwrap() error { return e.Err }

// Progress is how far a restore is: bytes of tar extracted and regular
// files written, of the totals. TotalFiles is 0 when the backup does not
// record it (archive_layout 1).
type Progress struct {
	Bytes, TotalBytes int64
	Files, TotalFiles int64
}

// Result describes a finished restore.
type Result struct {
	Backup      *basebackup.Meta
	Tablespaces map[string]string // OID → location
	// Wrote is what the restore wrote: files created, bytes written.
	Wrote WriteStats
	// Delta is what a delta restore kept and removed (nil otherwise).
	Delta *DeltaStats
}

// FailedMarker is the file a failed restore leaves in the target directory.
const FailedMarker = "WALKEEPER_RESTORE_FAILED"

// Workers is how many chunks a restore with Options.Parallel = parallel
// extracts at once: parallel, or the number of CPUs when it is 0 or less.
func Workers(parallel int) int {
	if parallel <= 0 {
		return runtime.NumCPU()
	}
	return parallel
}

// Run restores a backup into opts.TargetDir.
func Run(ctx context.Context, opts Options) (*Result, error) {
	opts.Parallel = Workers(opts.Parallel)
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	target, err := filepath.Abs(opts.TargetDir)
	if err != nil {
		return nil, err
	}
	if err := opts.Recovery.Validate(); err != nil {
		return nil, err
	}
	if opts.Delta && opts.Force {
		return nil, errors.New("--delta keeps what is equal and --force empties the directory first: give one of them")
	}
	meta, why, err := chooseBackup(ctx, opts.Repo, opts.BackupID, opts.Recovery)
	if err != nil {
		return nil, err
	}
	if err := meta.CheckLayout(); err != nil {
		return nil, err
	}
	if opts.Delta {
		if err := deltaBackup(meta); err != nil {
			return nil, err
		}
		if err := checkDeltaTarget(target, meta.SystemIdentifier); err != nil {
			return nil, err
		}
	}
	own, err := resolveOwner(opts.Owner, target)
	if err != nil {
		return nil, err
	}
	if err := checkServerAccess(own, opts.RepoDir, opts.Binary, opts.KeyFiles, firstWALFiles(opts.RepoDir, meta)); err != nil {
		return nil, ServerAccessError{err}
	}
	// Every root the restore writes into, checked before anything is written.
	roots := map[string]string{"": target}
	locations := map[string]string{}
	for _, ts := range meta.Tablespaces {
		if ts.OID == "" {
			continue
		}
		loc := ts.Location
		if n, ok := opts.TablespaceMap[loc]; ok {
			loc = n
		}
		if !filepath.IsAbs(loc) {
			return nil, fmt.Errorf("tablespace %s location %q is not absolute: give --tablespace-map %s=/abs/path", ts.OID, loc, ts.Location)
		}
		if inside(target, loc) || inside(loc, target) {
			return nil, fmt.Errorf("tablespace %s location %s overlaps the target directory %s: relocate it with --tablespace-map", ts.OID, loc, target)
		}
		roots[ts.OID], locations[ts.OID] = loc, loc
	}
	dd := newDataDir(opts.fs, own, opts.NoSync)
	defer dd.discard()
	var manifest *backupManifest
	if opts.Delta {
		// Read before anything changes: a backup without a usable
		// manifest is refused with the directory untouched.
		if manifest, err = loadManifest(ctx, opts.Repo, meta); err != nil {
			return nil, err
		}
	}
	what := refuseNonEmpty
	switch {
	case opts.Delta:
		what = keepNonEmpty
	case opts.Force:
		what = emptyNonEmpty
	}
	for _, root := range roots {
		if err := dd.prepareRoot(root, what); err != nil {
			return nil, err
		}
	}
	log := opts.Log.With("backup", meta.ID, "target", target)
	if why != "" {
		log.Info("chose backup", "because", why)
	}
	log.Info("restoring", "start_lsn", meta.StartLSN, "stop_lsn", meta.StopLSN, "size", meta.Size, "tablespaces", len(locations))
	r := &restorer{opts: opts, meta: meta, target: target, roots: roots, locations: locations, dd: dd, log: log}
	if opts.Delta {
		r.delta = &delta{}
		if err := r.deltaBegin(ctx, manifest); err != nil {
			r.fail(err)
			return nil, err
		}
	}
	if err := r.run(ctx); err != nil {
		r.fail(err)
		return nil, err
	}
	res := &Result{Backup: meta, Tablespaces: locations, Wrote: WriteStats{Files: dd.wroteFiles.Load(), Bytes: dd.wroteBytes.Load()}}
	if r.delta != nil {
		res.Delta = &r.delta.stats
		log.Info("restore complete", "kept_files", res.Delta.KeptFiles, "kept_bytes", res.Delta.KeptBytes,
			"wrote_files", res.Wrote.Files, "wrote_bytes", res.Wrote.Bytes, "removed", res.Delta.Removed)
	} else {
		log.Info("restore complete", "wrote_files", res.Wrote.Files, "wrote_bytes", res.Wrote.Bytes)
	}
	return res, nil
}

// firstWALFiles are the stored files, in a local repository, of the first
// segment recovery from meta fetches.
func firstWALFiles(repoDir string, meta *basebackup.Meta) []string {
	start, err := replication.ParseLSN(meta.StartLSN)
	if repoDir == "" || err != nil || meta.WALSegmentSize == 0 {
		return nil
	}
	name := archive.SegmentName(meta.Timeline, uint64(start)/meta.WALSegmentSize, meta.WALSegmentSize)
	var files []string
	for _, format := range []int{1, storage.FormatVersion} { // where either layout keeps it
		base := filepath.Join(repoDir, filepath.FromSlash(archive.LayoutFor(format).Key(name)))
		found, _ := filepath.Glob(base + ".*") // any codec's extension
		files = append(files, found...)
		if _, err := os.Stat(base); err == nil {
			files = append(files, base) // --compression none
		}
	}
	return files
}

// resolveOwner decides who the restored files belong to.
func resolveOwner(name, target string) (*owner, error) {
	if name != "" {
		u, err := user.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("--owner %s: %w", name, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &owner{uid, gid}, nil
	}
	if os.Geteuid() != 0 {
		return nil, nil
	}
	st, err := os.Stat(filepath.Dir(target))
	if err != nil {
		return nil, fmt.Errorf("target directory's parent: %w", err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	return &owner{int(sys.Uid), int(sys.Gid)}, nil
}

type restorer struct {
	opts      Options
	meta      *basebackup.Meta
	target    string
	roots     map[string]string // OID ("" for base) → directory
	locations map[string]string // OID → tablespace location
	dd        *dataDir
	log       *slog.Logger

	mu            sync.Mutex
	pgControl     []byte
	tablespaceMap []byte // nil when base.tar has none
	backupLabel   []byte // held for an incremental backup only

	// chain is set when the backup is incremental: members are its chain,
	// oldest first, itself last.
	chain   *chainState
	members []*basebackup.Meta

	// delta is set for a delta restore (delta.go).
	delta *delta

	// parts are the files stored as parts being written (parts.go).
	parts partFiles

	progress             Progress // totals; the counts are below
	bytesDone, filesDone atomic.Int64
}

// job is one tar archive to extract: a whole tablespace (archive_layout
// 1) or one chunk of it.
type job struct {
	obj  basebackup.Object
	root string
	oid  string // "" for the main data directory
}

// jobs lists the archives to extract, largest first, so the pool does not
// end waiting for one big archive started last.
func (r *restorer) jobs(objects map[string]basebackup.Object) ([]job, error) {
	var jobs []job
	for _, ts := range r.meta.Tablespaces {
		names := []string{ts.Archive}
		if r.meta.Chunked() {
			names = ts.Chunks
			if len(names) == 0 {
				return nil, fmt.Errorf("backup %s lists tablespace archive %s without chunks: backup.json is damaged", r.meta.ID, ts.Archive)
			}
		}
		for _, name := range names {
			obj, ok := objects[name]
			if !ok {
				return nil, fmt.Errorf("backup %s lists tablespace archive %s but has no such object", r.meta.ID, name)
			}
			jobs = append(jobs, job{obj: obj, root: r.roots[ts.OID], oid: ts.OID})
		}
	}
	slices.SortStableFunc(jobs, func(a, b job) int { return int(min(max(b.obj.Size-a.obj.Size, -1), 1)) })
	return jobs, nil
}

func (r *restorer) report() {
	if r.opts.Progress == nil {
		return
	}
	p := r.progress
	p.Bytes, p.Files = r.bytesDone.Load(), r.filesDone.Load()
	r.opts.Progress(p)
}

func (r *restorer) run(ctx context.Context) error {
	objects := map[string]basebackup.Object{}
	for _, o := range r.meta.Objects {
		objects[o.Name] = o
	}
	jobs, err := r.jobs(objects)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		r.progress.TotalBytes += j.obj.Size
	}
	if r.meta.IsIncremental() {
		if r.members, err = loadChain(ctx, r.opts.Repo, r.meta); err != nil {
			return err
		}
		older := r.members[:len(r.members)-1]
		if err := checkMembersStored(ctx, r.opts.Repo, older); err != nil {
			return err
		}
		for _, m := range older {
			for _, o := range m.Objects {
				if o.Archive != "" {
					r.progress.TotalBytes += o.Size
				}
			}
		}
		r.chain = &chainState{pending: map[string]*pending{}, rebuilt: map[string]string{}}
		r.log.Info("restoring an incremental backup from its chain", "chain", strings.Join(r.meta.Members(), ","))
	}
	if r.meta.Chunked() {
		r.progress.TotalFiles = r.meta.Files()
	}
	r.report()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Parallel)
	for _, j := range jobs {
		g.Go(func() error { return r.archive(gctx, j.obj, j.root, j.oid) })
	}
	err = g.Wait()
	if perr := r.parts.incomplete(r.dd); err == nil {
		err = perr
	}
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.chain != nil {
		if err := r.olderMembers(ctx, r.members[:len(r.members)-1]); err != nil {
			return err
		}
	}
	r.report()
	if r.pgControl == nil {
		return fmt.Errorf("backup %s has no global/pg_control in base.tar", r.meta.ID)
	}
	if err := r.tablespaceLinks(); err != nil {
		return err
	}
	if r.chain != nil {
		if r.backupLabel == nil {
			return fmt.Errorf("incremental backup %s has no backup_label in base.tar", r.meta.ID)
		}
		label := fullLabel(r.backupLabel)
		if err := r.dd.writeFile(filepath.Join(r.target, "backup_label"), label); err != nil {
			return err
		}
		m, ok := objects["backup_manifest"]
		if !ok {
			return fmt.Errorf("incremental backup %s has no backup_manifest", r.meta.ID)
		}
		if err := r.writeFullManifest(ctx, m, label); err != nil {
			return err
		}
	} else if m, ok := objects["backup_manifest"]; ok {
		if err := r.copyObject(ctx, m.Key, filepath.Join(r.target, "backup_manifest")); err != nil {
			return err
		}
	}
	if err := r.opts.Recovery.write(r.dd, r.target); err != nil {
		return err
	}
	if r.delta != nil {
		// Durable before pg_control (writePGControl syncs the directory).
		if err := r.dd.removeAll(filepath.Join(r.target, FailedMarker)); err != nil {
			return err
		}
	}
	// Last, once everything else is durable: with pg_control in place the
	// directory can start.
	return r.dd.writePGControl(r.target, r.pgControl)
}

// archive restores one tablespace archive into root.
func (r *restorer) archive(ctx context.Context, obj basebackup.Object, root, oid string) error {
	base := oid == ""
	start := time.Now()
	rd, err := r.opts.Repo.Open(ctx, obj.Key)
	if err != nil {
		return fmt.Errorf("open %s: %w", obj.Key, err)
	}
	defer rd.Close()
	x := &extractor{root: root, dd: r.dd, wrote: func() {
		r.filesDone.Add(1)
		r.report()
	}}
	if r.meta.Layout() >= basebackup.LayoutParts {
		x.parts = &r.parts
	}
	if base {
		x.hold = func(name string, content io.Reader) (bool, error) {
			var dst *[]byte
			switch name {
			case "global/pg_control":
				dst = &r.pgControl
			case "tablespace_map":
				dst = &r.tablespaceMap
			case "backup_label":
				if r.chain == nil {
					return false, nil
				}
				dst = &r.backupLabel
			default:
				return false, nil
			}
			data, err := io.ReadAll(io.LimitReader(content, 1<<20))
			if data == nil {
				data = []byte{} // present, even if empty
			}
			r.mu.Lock()
			*dst = data
			r.mu.Unlock()
			return true, err
		}
	}
	if r.delta != nil {
		x.keep = func(rel string) bool { return r.delta.kept(oid, rel) }
	}
	if r.chain != nil {
		x.incremental = func(rel string, size int64, content io.Reader) (bool, error) {
			if _, ok := basebackup.IncrementalTarget(rel); !ok {
				return false, nil
			}
			return true, r.writeIncremental(x, oid, rel, size, content)
		}
	}
	if err := x.extract(ctx, &countingReader{r: rd, n: &r.bytesDone, report: r.report}); err != nil {
		if ctx.Err() == nil {
			// Damage can surface as a bad tar header before the checksum
			// is reached; name it as corruption when that is what it is.
			if cerr := rd.CheckStored(); cerr != nil {
				return fmt.Errorf("restore %s: %w", obj.Key, cerr)
			}
		}
		return fmt.Errorf("restore %s: %w", obj.Key, err)
	}
	if err := finishObject(rd, obj, r.meta.ID); err != nil {
		return err
	}
	r.log.Debug("restored archive", "name", obj.Name, "into", root, "size", obj.Size, "duration", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// finishObject reads rd, an object of backup id, to its end so the
// checksum in the trailer is checked, and compares it with what
// backup.json recorded of it (obj): an object intact in itself but not the
// one the backup wrote is damage too.
func finishObject(rd *storage.Reader, obj basebackup.Object, id string) error {
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return fmt.Errorf("restore %s: %w", obj.Key, err)
	}
	if m := rd.Meta(); obj.SHA256 != "" && (m.Hex() != obj.SHA256 || m.Size != obj.Size) {
		return fmt.Errorf("restore %s: %w: the object is not the one backup %s stored (sha256 %s, size %d; backup.json says %s, %d)",
			obj.Key, storage.ErrCorrupt, id, m.Hex(), m.Size, obj.SHA256, obj.Size)
	}
	return nil
}

// tablespaceLinks writes tablespace_map (relocated) and creates the
// pg_tblspc links it describes, so the directory is complete before
// PostgreSQL starts (and pg_verifybackup can follow the links).
func (r *restorer) tablespaceLinks() error {
	if r.tablespaceMap == nil {
		return nil
	}
	var out bytes.Buffer
	for _, line := range strings.Split(strings.TrimRight(string(r.tablespaceMap), "\n"), "\n") {
		if line == "" {
			continue
		}
		oid, loc, ok := strings.Cut(line, " ")
		if !ok {
			return fmt.Errorf("tablespace_map: unexpected line %q", line)
		}
		newLoc, ok := r.locations[oid]
		if !ok {
			return fmt.Errorf("tablespace_map names tablespace %s that the backup has no archive for", oid)
		}
		fmt.Fprintf(&out, "%s %s\n", oid, newLoc)
		link := filepath.Join(r.target, "pg_tblspc", oid)
		if err := r.dd.mkdirAll(filepath.Dir(link)); err != nil {
			return err
		}
		if err := r.dd.symlink(newLoc, link); err != nil {
			return fmt.Errorf("link tablespace %s: %w", oid, err)
		}
		if newLoc != loc {
			r.log.Info("relocated tablespace", "oid", oid, "from", loc, "to", newLoc)
		}
	}
	content := r.tablespaceMap
	if !bytes.Equal(out.Bytes(), r.tablespaceMap) {
		content = out.Bytes()
	}
	return r.dd.writeFile(filepath.Join(r.target, "tablespace_map"), content)
}

func (r *restorer) copyObject(ctx context.Context, key, dest string) error {
	rd, err := r.opts.Repo.Open(ctx, key)
	if err != nil {
		return err
	}
	defer rd.Close()
	f, err := r.dd.create(dest)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, rd); err != nil {
		r.dd.abort(f)
		return fmt.Errorf("restore %s: %w", key, err)
	}
	return r.dd.commit(f, dest)
}

// fail removes what the restore wrote and leaves a note saying why. A
// delta restore removes nothing (what is equal stays for the next run):
// once it took pg_control away it leaves the note; before, it changed
// nothing and leaves nothing.
func (r *restorer) fail(cause error) {
	r.dd.discard()
	if r.delta != nil {
		if r.delta.started {
			r.dd.writeFileNow(filepath.Join(r.target, FailedMarker), r.deltaMarker(cause))
		}
		return
	}
	for _, root := range r.roots {
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			r.dd.removeAll(filepath.Join(root, e.Name()))
		}
	}
	note := fmt.Sprintf("walkeeper restore of backup %s failed at %s:\n%v\nThis directory is not a usable data directory. Fix the cause and restore again (--force replaces this file).\n",
		r.meta.ID, time.Now().UTC().Format(time.RFC3339), cause)
	r.dd.writeFile(filepath.Join(r.target, FailedMarker), []byte(note))
	r.dd.sync()
}

// countingReader adds the bytes read to n and reports progress.
type countingReader struct {
	r      io.Reader
	n      *atomic.Int64
	report func()
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n.Add(int64(n))
		c.report()
	}
	return n, err
}
