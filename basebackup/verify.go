package basebackup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
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
	ProblemMissingWAL     = "missing-wal"       // a gap in the WAL a backup needs
	ProblemMissingHistory = "missing-history"   // WAL on timeline T > 1 without T.history
	ProblemBadHistory     = "bad-history"       // a history file that does not parse
	ProblemHistory        = "history-conflict"  // history files disagree
	ProblemAfterSwitch    = "wal-after-switch"  // a segment after its timeline's end per a history file
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
		report: &VerifyReport{Problems: []Problem{}}, hist: map[uint32][]replication.HistoryEntry{}, ends: map[uint32]tlEnd{}}
	infos, err := List(ctx, repo)
	if err != nil {
		return nil, err
	}
	objects, err := backupObjects(ctx, repo)
	if err != nil {
		return nil, err
	}
	if v.wal, err = listWAL(ctx, repo, v.seg); err != nil {
		return nil, err
	}
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
		infos = sel
	}
	var lock *storage.LockInfo
	var li storage.LockInfo
	if err := repo.ReadJSON(ctx, storage.LockKey("backup"), &li); err == nil && !li.Stale() {
		lock = &li
	}

	if err := v.readHistories(ctx); err != nil {
		return nil, err
	}
	for _, b := range infos {
		v.checkBackup(b, objects[b.ID], lock)
	}
	if opts.Backup == "" {
		v.checkTimelines(nil)
		for _, f := range v.wal.files {
			if f.kind != storage.WALHistory {
				v.need(readCheck{key: f.Key, size: f.Size})
			}
		}
	} else {
		v.checkTimelines(v.chainTLIs)
	}
	if err := v.readAll(ctx); err != nil {
		return nil, err
	}
	r := v.report
	sort.SliceStable(r.Problems, func(i, j int) bool { return r.Problems[i].Key < r.Problems[j].Key })
	r.OK = len(r.Problems) == 0
	return r, nil
}

type tlEnd struct {
	end  replication.LSN
	from string // the history file that says so
}

type verifier struct {
	repo *storage.Repository
	opts VerifyOptions
	seg  uint64
	wal  *walIndex
	hist map[uint32][]replication.HistoryEntry // parsed history files by timeline
	ends map[uint32]tlEnd                      // where each ancestor timeline ended
	// chainTLIs are the timelines the checked backups' WAL runs on.
	chainTLIs map[uint32]bool

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

// readHistories reads every history file (they are small) and checks that
// they agree on where each timeline ended.
func (v *verifier) readHistories(ctx context.Context) error {
	for _, tli := range sortedTimelines(v.wal.histories) {
		f := v.wal.histories[tli]
		content, err := v.readSmall(ctx, f.Key)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			v.readProblem(f.Key, err)
			continue
		}
		h, err := replication.ParseHistory(content)
		if err == nil && len(h) > 0 && h[len(h)-1].TLI >= tli {
			err = fmt.Errorf("it names timeline %d as an ancestor of timeline %d", h[len(h)-1].TLI, tli)
		}
		if err != nil {
			v.problem(ProblemBadHistory, f.Key, "%v", err)
			continue
		}
		v.hist[tli] = h
		for _, e := range h {
			if prev, ok := v.ends[e.TLI]; ok && prev.end != e.Switchpoint {
				v.problem(ProblemHistory, f.Key, "says timeline %d ended at %s, %s says %s", e.TLI, e.Switchpoint, prev.from, prev.end)
				continue
			}
			v.ends[e.TLI] = tlEnd{end: e.Switchpoint, from: f.name}
		}
	}
	return nil
}

// readSmall reads a small object in full, verifying it.
func (v *verifier) readSmall(ctx context.Context, key string) ([]byte, error) {
	r, err := v.repo.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err == nil {
		_, err = io.Copy(io.Discard, r)
	}
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	v.report.ObjectsChecked++
	if info, err := v.repo.Backend().Stat(ctx, key); err == nil {
		v.report.BytesRead += info.Size
	}
	v.mu.Unlock()
	return data, nil
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
func (v *verifier) checkBackup(b Info, objs []storage.ObjectInfo, lock *storage.LockInfo) {
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
		for i := range b.Meta.Objects {
			o := &b.Meta.Objects[i]
			listed[o.Key] = true
			info, ok := stored[o.Key]
			if !ok {
				v.problem(ProblemMissingObject, o.Key, "backup %s lists %s, but it is not stored", b.ID, o.Name)
				continue
			}
			v.need(readCheck{key: o.Key, size: info.Size, want: o, manifest: o.Name == "backup_manifest"})
		}
		v.checkBackupWAL(b)
	}
	for _, o := range objs {
		if !listed[o.Key] {
			v.need(readCheck{key: o.Key, size: o.Size})
		}
	}
}

// checkBackupWAL checks that the WAL the backup needs, from its start (or,
// when the backup carries its own WAL, its stop) to the newest WAL stored
// on its line of timelines, has no gap.
func (v *verifier) checkBackupWAL(b Info) {
	m := b.Meta
	start, err1 := replication.ParseLSN(m.StartLSN)
	stop, err2 := replication.ParseLSN(m.StopLSN)
	if err := errors.Join(err1, err2); err != nil {
		v.problem(ProblemBadBackupJSON, storage.BackupMetaKey(b.ID), "%v", err)
		return
	}
	tli := max(m.Timeline, 1)
	// Follow the newest timeline that branched from the backup's timeline
	// at or after its start: that is where recovery goes (latest).
	target := tli
	for t, h := range v.hist {
		if t <= target {
			continue
		}
		for _, e := range h {
			if e.TLI == tli && e.Switchpoint >= start {
				target = t
			}
		}
	}
	if tli > 1 && v.hist[tli] == nil {
		v.problem(ProblemMissingHistory, storage.WALKey(storage.HistoryName(tli)), "backup %s is on timeline %d, whose history file is missing or unreadable", b.ID, tli)
	}
	chain := timelineChain(target, v.hist[target])
	if v.chainTLIs == nil {
		v.chainTLIs = map[uint32]bool{}
	}
	for _, s := range chain {
		v.chainTLIs[s.tli] = true
	}
	first := uint64(start) / v.seg
	if m.WAL == WALInclude {
		first = uint64(stop) / v.seg
	}
	var end uint64
	haveEnd := false
	for _, f := range v.wal.files {
		if (f.kind != storage.WALSegment && f.kind != storage.WALPartial) || f.segno < first {
			continue
		}
		for _, s := range chain {
			if f.tli == s.tli && f.segno >= uint64(s.begin)/v.seg && (s.open || f.segno <= uint64(s.end)/v.seg) {
				if !haveEnd || f.segno > end {
					end, haveEnd = f.segno, true
				}
			}
		}
	}
	if m.WAL != WALInclude && stop > 0 {
		if last := uint64(stop-1) / v.seg; !haveEnd || last > end {
			end, haveEnd = last, true
		}
	}
	if !haveEnd {
		return
	}
	var gapFrom string
	gapLen := 0
	flush := func(last string) {
		if gapLen == 0 {
			return
		}
		what := fmt.Sprintf("segment %s is", gapFrom)
		if gapLen > 1 {
			what = fmt.Sprintf("%d segments %s .. %s are", gapLen, gapFrom, last)
		}
		v.problem(ProblemMissingWAL, storage.WALKey(gapFrom), "%s missing: recovery from backup %s (start %s, timeline %d) stops before the gap",
			what, b.ID, m.StartLSN, m.Timeline)
		gapLen = 0
	}
	var lastMissing string
	for segno := first; segno <= end; segno++ {
		t := tliForSegment(chain, segno, v.seg)
		if f, ok := v.wal.segments[segID{t, segno}]; ok {
			flush(lastMissing)
			v.need(readCheck{key: f.Key, size: f.Size})
			continue
		}
		if f, ok := v.wal.partials[segID{t, segno}]; ok && segno == end {
			flush(lastMissing)
			v.need(readCheck{key: f.Key, size: f.Size})
			continue
		}
		name := storage.SegmentName(t, segno, v.seg)
		if gapLen == 0 {
			gapFrom = name
		}
		gapLen++
		lastMissing = name
	}
	flush(lastMissing)
}

// checkTimelines checks the WAL against the history files: WAL on a
// timeline above 1 needs its history file, and no segment may lie after
// the point where a history file says its timeline ended. only limits the
// check to those timelines (nil: all).
func (v *verifier) checkTimelines(only map[uint32]bool) {
	for _, f := range v.wal.files {
		if f.kind != storage.WALSegment && f.kind != storage.WALPartial && f.kind != storage.WALBackupLabel {
			continue
		}
		if only != nil && !only[f.tli] {
			continue
		}
		if f.tli > 1 {
			if _, ok := v.wal.histories[f.tli]; !ok {
				v.problem(ProblemMissingHistory, storage.WALKey(storage.HistoryName(f.tli)), "WAL on timeline %d is stored (%s), but not its history file", f.tli, f.name)
			}
		}
		if e, ok := v.ends[f.tli]; ok && f.segno > uint64(e.end)/v.seg {
			v.problem(ProblemAfterSwitch, f.Key, "%s says timeline %d ended at %s, but this WAL lies after that point", e.from, f.tli, e.end)
		}
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
	r, err := v.repo.Open(ctx, c.key)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if base, _, _ := storage.SplitExt(c.key); errors.Is(err, storage.ErrNotFound) && strings.HasSuffix(base, ".partial") {
			return nil // a running stream replaced it by the complete segment
		}
		v.readProblem(c.key, err)
		return nil
	}
	defer r.Close()
	if c.manifest {
		files, err := manifestFiles(r)
		if err != nil {
			if errors.Is(err, storage.ErrCorrupt) || r.CheckStored() != nil {
				v.readProblem(c.key, fmt.Errorf("%s: %w: %w", c.key, storage.ErrCorrupt, err))
			} else if ctx.Err() == nil {
				v.problem(ProblemBadManifest, c.key, "not a backup manifest: %v", err)
			}
			return ctx.Err()
		}
		if files == 0 {
			v.problem(ProblemBadManifest, c.key, "the manifest lists no files")
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
	if w := c.want; w != nil {
		m := r.Meta()
		var diffs []string
		if m.Size != w.Size {
			diffs = append(diffs, fmt.Sprintf("size %d, backup.json says %d", m.Size, w.Size))
		}
		if m.Hex() != w.SHA256 {
			diffs = append(diffs, fmt.Sprintf("sha256 %s, backup.json says %s", m.Hex(), w.SHA256))
		}
		if c.size != w.StoredSize {
			diffs = append(diffs, fmt.Sprintf("stored size %d, backup.json says %d", c.size, w.StoredSize))
		}
		if len(diffs) > 0 {
			v.problem(ProblemMismatch, c.key, "%s", strings.Join(diffs, "; "))
		}
	}
	return nil
}

// manifestFiles reads a backup_manifest as a token stream (it can be large)
// and returns how many files it lists.
func manifestFiles(r io.Reader) (int, error) {
	dec := json.NewDecoder(r)
	if err := expectDelim(dec, '{'); err != nil {
		return 0, err
	}
	files, version := 0, false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return 0, err
		}
		switch tok {
		case "PostgreSQL-Backup-Manifest-Version":
			var n int
			if err := dec.Decode(&n); err != nil {
				return 0, err
			}
			version = true
		case "Files":
			if err := expectDelim(dec, '['); err != nil {
				return 0, err
			}
			for dec.More() {
				var f struct {
					Path        string `json:"Path"`
					EncodedPath string `json:"Encoded-Path"`
					Size        *int64 `json:"Size"`
				}
				if err := dec.Decode(&f); err != nil {
					return 0, err
				}
				if f.Path == "" && f.EncodedPath == "" || f.Size == nil {
					return 0, fmt.Errorf("file entry %d has no path or size", files+1)
				}
				files++
			}
			if err := expectDelim(dec, ']'); err != nil {
				return 0, err
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return 0, err
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return 0, err
	}
	if !version {
		return 0, errors.New("no PostgreSQL-Backup-Manifest-Version")
	}
	return files, nil
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
