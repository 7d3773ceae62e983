package basebackup

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Verify (walkeeper verify) re-reads the repository and reports what is
// wrong with it; docs/retention.md describes the checks and the report.

// Problem kinds.
const (
	ProblemCorrupt        = "corrupt"           // checksum, framing or decompression failed
	ProblemReadError      = "read-error"        // the backend failed to deliver the object
	ProblemMissingObject  = "missing-object"    // backup.json lists an object that is not stored
	ProblemMismatch       = "object-mismatch"   // size or SHA-256 differ from backup.json
	ProblemBadBackupJSON  = "bad-backup-json"   // backup.json cannot be read
	ProblemIncomplete     = "incomplete-backup" // a backup directory without backup.json
	ProblemBadManifest    = "bad-manifest"      // backup_manifest is not a manifest listing files
	ProblemBadChunk       = "bad-chunk"         // an archive chunk that is not a complete tar of the files backup.json counts
	ProblemMissingWAL     = "missing-wal"       // a gap in the WAL a backup needs
	ProblemMissingHistory = "missing-history"   // WAL on timeline T > 1 without T.history
	ProblemBadHistory     = "bad-history"       // a history file that does not parse
	ProblemHistory        = "history-conflict"  // history files disagree
	ProblemBrokenChain    = "broken-chain"      // an incremental backup whose chain has a missing, incomplete or damaged member
)

// Problem is one finding.
type Problem struct {
	Kind   string `json:"kind"`
	Key    string `json:"key"`
	Detail string `json:"detail"`
}

// VerifyReport is verify's result.
type VerifyReport struct {
	OK             bool      `json:"ok"`
	ObjectsChecked int       `json:"objects_checked"`
	BytesRead      int64     `json:"bytes_read"` // stored bytes read and checked
	Backups        int       `json:"backups_checked"`
	Problems       []Problem `json:"problems"`
	// Notes are things worth knowing that are not problems.
	Notes []string `json:"notes,omitempty"`
}

// VerifyOptions configure Verify.
type VerifyOptions struct {
	// Backup limits the check to one backup (an ID, or "latest": the newest
	// complete one) and the WAL it needs.
	Backup string
	// Parallel is how many objects are read at once (default 4).
	Parallel int
	Log      *slog.Logger
}

// ErrNoSuchBackup: VerifyOptions.Backup names no backup.
var ErrNoSuchBackup = errors.New("no such backup")

// Verify checks the repository. Problems go into the report; an error means
// the check could not run (or was cancelled).
func Verify(ctx context.Context, repo *storage.Repository, opts VerifyOptions) (*VerifyReport, error) {
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	cfg, err := repo.Config(ctx)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("%s is not a walkeeper repository (no %s): check --repo", repo, storage.ConfigKey)
		}
		return nil, err
	}
	v := &verifier{repo: repo, opts: opts, seg: cfg.WALSegmentSize, seen: map[string]bool{},
		report: &VerifyReport{Problems: []Problem{}}}
	encrypted, canRead, err := repo.Encrypted(ctx)
	if err != nil {
		return nil, err
	}
	if v.storedOnly = encrypted && !canRead; v.storedOnly {
		// The public key (or no key) alone: every object's stored bytes
		// against its trailer's SHA-256, sizes and WAL continuity; content
		// (authentication, decompression, manifests, tar) needs the identity.
		v.report.Notes = append(v.report.Notes, "the repository is encrypted and no --identity-file was given: checked stored-byte "+
			"checksums, sizes and WAL continuity only; give --identity-file to also authenticate and decompress every object")
	}
	infos, err := List(ctx, repo)
	if err != nil {
		return nil, err
	}
	objects, err := backupObjects(ctx, repo)
	if err != nil {
		return nil, err
	}
	all := infos
	if opts.Backup != "" {
		var sel []Info
		for _, b := range infos {
			if b.ID == opts.Backup || opts.Backup == "latest" && b.Complete {
				sel = append(sel[:0], b)
			}
		}
		if len(sel) == 0 {
			return nil, fmt.Errorf("%w %q in %s: run 'walkeeper list' for the IDs", ErrNoSuchBackup, opts.Backup, repo)
		}
		// An incremental backup is checked with its chain.
		if m := sel[0].Meta; m != nil {
			for _, id := range m.Chain {
				for _, b := range infos {
					if b.ID == id {
						sel = append(sel, b)
					}
				}
			}
		}
		all = infos
		infos = sel
	}
	// One backup needs the WAL from its first segment on: list from there
	// (the whole archive otherwise).
	if from, ok := firstWALSegment(infos, v.seg); opts.Backup != "" && ok {
		v.wal, err = archive.LoadFrom(ctx, repo, v.seg, from)
	} else {
		v.wal, err = archive.Load(ctx, repo, v.seg)
	}
	if err != nil {
		return nil, err
	}
	var lock *storage.LockInfo
	var li storage.LockInfo
	if err := repo.ReadJSON(ctx, storage.LockKey("backup"), &li); err == nil && !li.Stale() {
		lock = &li
	}

	v.checkHistories()
	for _, o := range v.wal.Objects {
		if slices.Contains(v.wal.HistorySealed, o.Key) {
			v.need(readCheck{key: o.Key, size: o.Size})
		}
	}
	if len(v.wal.HistorySealed) > 0 {
		v.report.Notes = append(v.report.Notes, fmt.Sprintf("%d timeline history files are encrypted and were not read: "+
			"timelines are judged without them", len(v.wal.HistorySealed)))
	}
	for _, b := range infos {
		if err := v.checkBackup(ctx, b, objects[b.ID], lock); err != nil {
			return nil, err
		}
	}
	if opts.Backup == "" {
		v.checkTimelines(nil)
		for _, f := range v.wal.Objects {
			if f.Name.Kind != archive.History {
				v.need(readCheck{key: f.Key, size: f.Size})
			}
		}
	} else {
		v.checkTimelines(v.chainTLIs)
	}
	if err := v.readAll(ctx); err != nil {
		return nil, err
	}
	v.checkChains(infos, all)
	r := v.report
	sort.SliceStable(r.Problems, func(i, j int) bool { return r.Problems[i].Key < r.Problems[j].Key })
	r.OK = len(r.Problems) == 0
	return r, nil
}

type verifier struct {
	repo *storage.Repository
	opts VerifyOptions
	seg  uint64
	wal  *archive.Index
	// chainTLIs are the timelines the checked backups' WAL runs on.
	chainTLIs map[uint32]bool
	// storedOnly: an encrypted repository without the identity; objects
	// are checked by their stored bytes only.
	storedOnly bool

	mu     sync.Mutex
	report *VerifyReport
	seen   map[string]bool // problems by kind+key, and keys scheduled for reading
	reads  []readCheck
}

// readCheck is one object to read in full.
type readCheck struct {
	key      string
	size     int64   // stored size from the listing
	want     *Object // what backup.json says of it
	manifest bool
	// chunk: the object is a chunk of a tablespace archive (archive_layout
	// 2), read as a tar to its end.
	chunk bool
	// sysID is the backup's system identifier (backup.json), which a
	// version 2 manifest (PostgreSQL 17+) must repeat.
	sysID string
}

func (v *verifier) problem(kind, key, format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen[kind+" "+key] {
		return
	}
	v.seen[kind+" "+key] = true
	v.report.Problems = append(v.report.Problems, Problem{Kind: kind, Key: key, Detail: fmt.Sprintf(format, args...)})
}

func (v *verifier) need(c readCheck) {
	if v.seen["read "+c.key] {
		return
	}
	v.seen["read "+c.key] = true
	v.reads = append(v.reads, c)
}

// checkHistories reports the history files the archive index could not
// read or parse, and those that disagree on where a timeline ended; the
// ones it read count as checked.
func (v *verifier) checkHistories() {
	for _, t := range v.wal.Graph.Timelines() {
		if o, ok := v.wal.HistoryObject(t); ok && v.wal.HistoryErrors[o.Key] == nil {
			v.report.ObjectsChecked++
			v.report.BytesRead += o.Size
		}
	}
	for key, err := range v.wal.HistoryErrors {
		if errors.Is(err, archive.ErrBadHistory) {
			v.problem(ProblemBadHistory, key, "%v", err)
		} else {
			v.readProblem(key, err)
		}
	}
	for _, c := range v.wal.Graph.Conflicts {
		key := v.wal.Layout.Key(c.File)
		if o, ok := v.wal.HistoryObject(c.FileTLI); ok {
			key = o.Key
		}
		v.problem(ProblemHistory, key, "%s", c)
	}
}

func (v *verifier) readProblem(key string, err error) {
	switch {
	case errors.Is(err, storage.ErrCorrupt):
		v.problem(ProblemCorrupt, key, "%v", err)
	case errors.Is(err, storage.ErrNotFound):
		v.problem(ProblemMissingObject, key, "listed but gone when read: %v", err)
	default:
		v.problem(ProblemReadError, key, "%v", err)
	}
}

// checkBackup checks one backup's objects against backup.json and the WAL
// it needs; reads are scheduled for readAll.
func (v *verifier) checkBackup(ctx context.Context, b Info, objs []storage.ObjectInfo, lock *storage.LockInfo) error {
	stored := map[string]storage.ObjectInfo{}
	for _, o := range objs {
		stored[o.Key] = o
	}
	prefix := storage.BackupsPrefix + b.ID + "/"
	listed := map[string]bool{storage.BackupMetaKey(b.ID): true, prefix + startedName: true}
	if !b.Complete {
		if lock != nil && !b.StartTime().Before(lock.Started.Add(-time.Minute)) {
			v.report.Notes = append(v.report.Notes, fmt.Sprintf("backup %s has no backup.json yet; it is probably running (the backup lock is held)", b.ID))
		} else if _, ok := stored[storage.BackupMetaKey(b.ID)]; ok {
			detail := "backup.json cannot be read"
			if b.Damaged != "" {
				detail = b.Damaged
			}
			v.problem(ProblemBadBackupJSON, storage.BackupMetaKey(b.ID), "%s", detail)
		} else {
			v.problem(ProblemIncomplete, prefix, "no backup.json: the backup did not finish (or lost its commit marker); restore ignores it, 'walkeeper delete' removes it once it is old")
		}
	} else {
		v.report.Backups++
		if err := b.Meta.CheckLayout(); err != nil {
			v.problem(ProblemBadBackupJSON, storage.BackupMetaKey(b.ID), "%v", err)
			return nil
		}
		for i := range b.Meta.Objects {
			o := &b.Meta.Objects[i]
			listed[o.Key] = true
			info, ok := stored[o.Key]
			if !ok {
				v.problem(ProblemMissingObject, o.Key, "backup %s lists %s, but it is not stored", b.ID, o.Name)
				continue
			}
			v.need(readCheck{key: o.Key, size: info.Size, want: o, manifest: o.Name == "backup_manifest",
				chunk: o.Archive != "" && b.Meta.Chunked(), sysID: b.Meta.SystemIdentifier})
		}
		v.checkChunkList(b)
		if err := v.checkBackupWAL(ctx, b); err != nil {
			return err
		}
	}
	for _, o := range objs {
		if !listed[o.Key] {
			v.need(readCheck{key: o.Key, size: o.Size})
		}
	}
	return nil
}

// checkChunkList checks that every tablespace's chunks are objects of the
// backup, and every chunk belongs to the tablespace that lists it.
func (v *verifier) checkChunkList(b Info) {
	m := b.Meta
	byName := map[string]*Object{}
	for i := range m.Objects {
		byName[m.Objects[i].Name] = &m.Objects[i]
	}
	key := storage.BackupMetaKey(b.ID)
	listed := map[string]bool{}
	for _, ts := range m.Tablespaces {
		names := ts.Chunks
		if m.Layout() == LayoutSingle {
			names = []string{ts.Archive}
		} else if len(names) == 0 {
			v.problem(ProblemBadBackupJSON, key, "tablespace archive %s lists no chunks", ts.Archive)
		}
		for _, n := range names {
			o, ok := byName[n]
			switch {
			case !ok:
				v.problem(ProblemBadBackupJSON, key, "tablespace archive %s names %s, which is not among the backup's objects", ts.Archive, n)
			case m.Chunked() && o.Archive != ts.Archive:
				v.problem(ProblemBadBackupJSON, key, "chunk %s belongs to %q, but tablespace archive %s lists it", n, o.Archive, ts.Archive)
			}
			listed[n] = true
		}
	}
	for _, o := range m.Objects {
		if o.Archive != "" && !listed[o.Name] {
			v.problem(ProblemBadBackupJSON, key, "chunk %s of %s is listed by no tablespace: restore would leave its files out", o.Name, o.Archive)
		}
	}
}

// firstWALSegment is the first segment the complete backups among infos
// read from the archive.
func firstWALSegment(infos []Info, segSize uint64) (uint64, bool) {
	var from uint64
	found := false
	for _, b := range infos {
		if b.Meta == nil {
			continue
		}
		seg, err := archiveStart(b.Meta, segSize)
		if err != nil {
			return 0, false
		}
		if !found || seg < from {
			from, found = seg, true
		}
	}
	return from, found
}

// archiveStart is the first segment recovery from the backup reads from
// the archive: the one holding its start, or, for a backup that carries its
// own WAL, the one holding its stop.
func archiveStart(m *Meta, segSize uint64) (uint64, error) {
	at := m.StartLSN
	if m.WAL == WALInclude {
		at = m.StopLSN
	}
	lsn, err := replication.ParseLSN(at)
	return uint64(lsn) / segSize, err
}

// checkBackupWAL checks that the WAL the backup needs has no gap along the
// path recovery takes from it: from its start (or, when the backup carries
// its own WAL, its stop) to where the archive must reach on the newest
// timeline that descends from the backup (archive.Index.Target).
func (v *verifier) checkBackupWAL(ctx context.Context, b Info) error {
	m := b.Meta
	start, err1 := replication.ParseLSN(m.StartLSN)
	stop, err2 := replication.ParseLSN(m.StopLSN)
	if err := errors.Join(err1, err2); err != nil {
		v.problem(ProblemBadBackupJSON, storage.BackupMetaKey(b.ID), "%v", err)
		return nil
	}
	tli := max(m.Timeline, 1)
	g := v.wal.Graph
	if !g.Known(tli) {
		v.problem(ProblemMissingHistory, archive.HistoryKey(tli), "backup %s is on timeline %d, whose history file is missing or unreadable", b.ID, tli)
	}
	path := g.Path(g.NewestFrom(tli, start))
	if v.chainTLIs == nil {
		v.chainTLIs = map[uint32]bool{}
	}
	for _, s := range path {
		v.chainTLIs[s.TLI] = true
	}
	first, _ := archiveStart(m, v.seg) // both LSNs parsed above
	reach, err := v.wal.Target(ctx, v.repo, path)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		v.readProblem(reach.Newest.Object.Key, err)
	}
	end, haveEnd := reach.Seg, reach.Found
	if m.WAL != WALInclude && stop > 0 {
		if last := uint64(stop-1) / v.seg; !haveEnd || last > end {
			end, haveEnd = last, true
		}
	}
	if !haveEnd || end < first {
		return nil
	}
	for _, gap := range v.wal.Gaps(path, first, end, 0) {
		firstName, _ := gap.Names(v.seg)
		detail := fmt.Sprintf("%s missing: recovery from backup %s (start %s, timeline %d) stops before the gap",
			gap.Describe(v.seg), b.ID, m.StartLSN, m.Timeline)
		if reach.Tail && gap.LastTLI == path.Last().TLI {
			detail = fmt.Sprintf("%s missing: timeline %d began at %s, and the archive holds none of its WAL but the WAL of an older timeline past that point; "+
				"a restore of backup %s to the latest timeline would replay that abandoned WAL; take a new base backup on timeline %d",
				gap.Describe(v.seg), path.Last().TLI, path.Last().Begin, b.ID, path.Last().TLI)
		}
		v.problem(ProblemMissingWAL, v.wal.Layout.Key(firstName), "%s", detail)
	}
	for seg := first; seg <= end; seg++ {
		t := path.Owner(seg, v.seg)
		if f, ok := v.wal.Segment(t, seg); ok {
			v.need(readCheck{key: f.Key, size: f.Size})
		} else if f, ok := v.wal.PartialOf(t, seg); ok && seg == end {
			if f.Name.Kind == archive.Partial {
				v.need(readCheck{key: f.Key, size: f.Size})
			}
			for _, r := range f.Ranges {
				v.need(readCheck{key: r.Key, size: r.Size})
			}
		}
	}
	return nil
}

// checkTimelines checks the WAL against the history files: WAL on a
// timeline above 1 needs its history file. WAL of a timeline past the
// point where a history file says it ended is the abandoned tail of a
// failover: normal, and one note per timeline. only limits the check to
// those timelines (nil: all).
func (v *verifier) checkTimelines(only map[uint32]bool) {
	tails := map[uint32]int{}
	for _, f := range v.wal.Objects {
		n := f.Name
		if !n.Kind.HoldsWAL() && n.Kind != archive.BackupLabel {
			continue
		}
		if only != nil && !only[n.TLI] {
			continue
		}
		if n.TLI > 1 && !v.wal.Graph.Known(n.TLI) {
			if _, ok := v.wal.HistoryObject(n.TLI); !ok {
				v.problem(ProblemMissingHistory, archive.HistoryKey(n.TLI), "WAL on timeline %d is stored (%s), but not its history file", n.TLI, f.File)
			}
		}
		if end, _, ok := v.wal.Graph.EndOf(n.TLI); ok && n.Seg > uint64(end)/v.seg {
			tails[n.TLI]++
		}
	}
	for _, t := range slices.Sorted(maps.Keys(tails)) {
		end, from, _ := v.wal.Graph.EndOf(t)
		v.report.Notes = append(v.report.Notes, fmt.Sprintf("timeline %d: %d WAL objects lie past its end at %s (where timeline %d began): "+
			"the old primary's WAL after a failover, which no restore to a newer timeline reads; 'walkeeper delete' removes them with the backups that precede them",
			t, tails[t], end, from))
	}
}

// readAll reads the scheduled objects in parallel, each streamed to its
// end, so memory stays bounded whatever their size.
func (v *verifier) readAll(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.opts.Parallel)
	for _, c := range v.reads {
		g.Go(func() error { return v.read(gctx, c) })
	}
	return g.Wait()
}

func (v *verifier) read(ctx context.Context, c readCheck) error {
	if v.storedOnly {
		return v.readStored(ctx, c)
	}
	r, err := v.repo.Open(ctx, c.key)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if base, _, _ := storage.SplitExt(c.key); errors.Is(err, storage.ErrNotFound) &&
			(strings.HasSuffix(base, ".partial") || archive.KindOf(archive.NameOfKey(c.key)) == archive.Range) {
			return nil // a running stream replaced it by the complete segment, or consolidated it
		}
		v.readProblem(c.key, err)
		return nil
	}
	defer r.Close()
	if c.manifest {
		m, err := readManifest(r)
		if err != nil {
			if errors.Is(err, storage.ErrCorrupt) || r.CheckStored() != nil {
				v.readProblem(c.key, fmt.Errorf("%s: %w: %w", c.key, storage.ErrCorrupt, err))
			} else if ctx.Err() == nil {
				v.problem(ProblemBadManifest, c.key, "not a backup manifest: %v", err)
			}
			return ctx.Err()
		}
		if m.files == 0 {
			v.problem(ProblemBadManifest, c.key, "the manifest lists no files")
		}
		if m.sysID != "" && c.sysID != "" && m.sysID != c.sysID {
			v.problem(ProblemBadManifest, c.key, "the manifest names system %s, backup.json system %s: the manifest of another cluster",
				m.sysID, c.sysID)
		}
	}
	if c.chunk {
		files, err := tarFiles(r)
		if err != nil {
			if errors.Is(err, storage.ErrCorrupt) || r.CheckStored() != nil {
				v.readProblem(c.key, fmt.Errorf("%s: %w: %w", c.key, storage.ErrCorrupt, err))
			} else if ctx.Err() == nil {
				v.problem(ProblemBadChunk, c.key, "not a complete tar archive: %v", err)
			}
			return ctx.Err()
		}
		if files != c.want.Files {
			v.problem(ProblemBadChunk, c.key, "holds %d files, backup.json says %d", files, c.want.Files)
		}
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		v.readProblem(c.key, err)
		return nil
	}
	v.mu.Lock()
	v.report.ObjectsChecked++
	v.report.BytesRead += c.size
	v.mu.Unlock()
	m := r.Meta()
	v.compareRecorded(c, m.Size, m.Hex(), c.size)
	return nil
}

// compareRecorded reports where an object read as c differs from what
// backup.json recorded of it (c.want, when it is a backup's object).
func (v *verifier) compareRecorded(c readCheck, size int64, sha string, stored int64) {
	w := c.want
	if w == nil {
		return
	}
	var diffs []string
	if size != w.Size {
		diffs = append(diffs, fmt.Sprintf("size %d, backup.json says %d", size, w.Size))
	}
	if sha != w.SHA256 {
		diffs = append(diffs, fmt.Sprintf("sha256 %s, backup.json says %s", sha, w.SHA256))
	}
	if stored != w.StoredSize {
		diffs = append(diffs, fmt.Sprintf("stored size %d, backup.json says %d", stored, w.StoredSize))
	}
	if len(diffs) > 0 {
		v.problem(ProblemMismatch, c.key, "%s", strings.Join(diffs, "; "))
	}
}

// readStored checks one object of an encrypted repository without the
// identity: its stored bytes against the trailer, and the trailer and
// stored size against backup.json.
func (v *verifier) readStored(ctx context.Context, c readCheck) error {
	m, err := v.repo.CheckStored(ctx, c.key)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if base, _, _ := storage.SplitExt(c.key); errors.Is(err, storage.ErrNotFound) &&
			(strings.HasSuffix(base, ".partial") || archive.KindOf(archive.NameOfKey(c.key)) == archive.Range) {
			return nil
		}
		v.readProblem(c.key, err)
		return nil
	}
	if !m.Encrypted {
		v.problem(ProblemCorrupt, c.key, "not encrypted, in an encrypted repository")
	}
	v.mu.Lock()
	v.report.ObjectsChecked++
	v.report.BytesRead += c.size
	v.mu.Unlock()
	v.compareRecorded(c, m.Size, m.Hex(), m.StoredSize)
	return nil
}

// tarFiles reads a tar archive to its end and counts its regular files
// (with the backup's own rule: typeflags '0', NUL and '7'; a file stored
// as parts counts in the chunk of its first part).
func tarFiles(r io.Reader) (int, error) {
	tr := tar.NewReader(r)
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if off, ok := h.PAXRecords[PartOffsetRecord]; (h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeCont) && (!ok || off == "0") {
			n++
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return n, err
		}
	}
}

// manifestSummary is what verify reads from a backup_manifest.
type manifestSummary struct {
	version int
	files   int
	// sysID is the System-Identifier of a version 2 manifest (PostgreSQL
	// 17+); "" for version 1.
	sysID string
}

// readManifest reads a backup_manifest as a token stream (it can be
// large). Versions 1 (PostgreSQL 13-16) and 2 (17+, with
// System-Identifier) differ only in that key; a newer version is read the
// same way, as the format only ever added keys.
func readManifest(r io.Reader) (manifestSummary, error) {
	var m manifestSummary
	dec := json.NewDecoder(r)
	dec.UseNumber() // System-Identifier does not fit a float64
	if err := expectDelim(dec, '{'); err != nil {
		return m, err
	}
	version := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return m, err
		}
		switch tok {
		case "PostgreSQL-Backup-Manifest-Version":
			if err := dec.Decode(&m.version); err != nil {
				return m, err
			}
			if m.version < 1 {
				return m, fmt.Errorf("PostgreSQL-Backup-Manifest-Version %d", m.version)
			}
			version = true
		case "System-Identifier":
			var n json.Number
			if err := dec.Decode(&n); err != nil {
				return m, fmt.Errorf("System-Identifier: %w", err)
			}
			if _, err := strconv.ParseUint(n.String(), 10, 64); err != nil {
				return m, fmt.Errorf("System-Identifier %q is not a system identifier", n)
			}
			m.sysID = n.String()
		case "Files":
			if err := expectDelim(dec, '['); err != nil {
				return m, err
			}
			for dec.More() {
				var f struct {
					Path        string `json:"Path"`
					EncodedPath string `json:"Encoded-Path"`
					Size        *int64 `json:"Size"`
				}
				if err := dec.Decode(&f); err != nil {
					return m, err
				}
				if f.Path == "" && f.EncodedPath == "" || f.Size == nil {
					return m, fmt.Errorf("file entry %d has no path or size", m.files+1)
				}
				m.files++
			}
			if err := expectDelim(dec, ']'); err != nil {
				return m, err
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return m, err
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return m, err
	}
	if !version {
		return m, errors.New("no PostgreSQL-Backup-Manifest-Version")
	}
	if m.version >= 2 && m.sysID == "" {
		return m, fmt.Errorf("a version %d manifest without System-Identifier", m.version)
	}
	return m, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("unexpected %v, want %v", tok, want)
	}
	return nil
}

// checkChains reports every incremental backup among infos whose chain (in
// all) has a member that is missing, incomplete, not linked to the next
// one, or has problems of its own: restore would refuse it.
func (v *verifier) checkChains(infos, all []Info) {
	byID := map[string]Info{}
	for _, b := range all {
		byID[b.ID] = b
	}
	damaged := map[string]string{}
	for _, p := range v.report.Problems {
		if rest, ok := strings.CutPrefix(p.Key, storage.BackupsPrefix); ok {
			if id, _, ok := strings.Cut(rest, "/"); ok && damaged[id] == "" {
				damaged[id] = p.Kind + " " + p.Key
			}
		}
	}
	for _, b := range infos {
		m := b.Meta
		if m == nil || !m.IsIncremental() {
			continue
		}
		key := storage.BackupMetaKey(b.ID)
		if len(m.Chain) == 0 || m.Chain[len(m.Chain)-1] != m.Parent {
			v.problem(ProblemBrokenChain, key, "incremental backup %s records no chain ending at its parent %q", b.ID, m.Parent)
			continue
		}
		for i, id := range m.Chain {
			member, ok := byID[id]
			switch {
			case !ok:
				v.problem(ProblemBrokenChain, key, "backup %s needs backup %s of its chain, which is not in the repository: it cannot be restored", b.ID, id)
			case member.Meta == nil:
				v.problem(ProblemBrokenChain, key, "backup %s needs backup %s of its chain, which is incomplete or has a damaged backup.json: it cannot be restored", b.ID, id)
			case i == 0 && member.Meta.IsIncremental(), i > 0 && member.Meta.Parent != m.Chain[i-1]:
				v.problem(ProblemBrokenChain, key, "backup %s: chain member %s does not follow the member before it: the chains disagree", b.ID, id)
			case damaged[id] != "":
				v.problem(ProblemBrokenChain, key, "backup %s needs backup %s of its chain, which is damaged (%s): it cannot be restored", b.ID, id, damaged[id])
			default:
				continue
			}
			break
		}
	}
}
