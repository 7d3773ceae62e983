package basebackup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Retention (walkeeper delete). The rules, also in docs/retention.md:
//
//   - Complete backups go oldest first by start time, never by ID, so the
//     deleted ones are always the oldest: Retain keeps the newest N, Before
//     deletes those that started before a time; with both, a backup goes
//     only when both rules say so.
//   - Deleting every complete backup needs Force.
//   - Chains stay whole: a kept incremental backup keeps the backups of its
//     chain (and so every backup newer than its full one).
//   - A backup's backup.json goes first, so a half-deleted backup is
//     incomplete, never a complete one with missing parts.
//   - An incomplete backup goes when it started before the oldest kept
//     complete backup (with none kept: before the newest deleted one), its
//     newest object is older than IncompleteAge, and it is not the one the
//     live holder of the backup lock may be writing.
//   - WAL goes when its segment number is below the start segment of every
//     kept complete backup (recovery only reads forward from a backup's
//     start, whatever the timeline) and its timeline is not newer than the
//     newest kept backup's timeline. History files and names walkeeper does
//     not know stay. With no complete backup kept, no WAL is deleted.
//
// A running stream only adds WAL newer than any backup; a running backup is
// newer than every complete one. Neither is touched by these rules, so
// delete can run next to them; the retention lock keeps two deletes apart.

// DefaultIncompleteAge is how old an incomplete backup must be before
// delete removes it: one that may still be running is left alone.
const DefaultIncompleteAge = 24 * time.Hour

// RetentionOptions configure Retention.
type RetentionOptions struct {
	// Retain keeps the newest Retain complete backups; negative: no count rule.
	Retain int
	// Before deletes complete backups that started before it; zero: no time rule.
	Before time.Time
	// Force allows deleting every complete backup.
	Force bool
	// DryRun plans and reports without changing anything (no lock either).
	DryRun bool
	// IncompleteAge (default DefaultIncompleteAge).
	IncompleteAge time.Duration
	// Now is the current time (default time.Now).
	Now time.Time
	Log *slog.Logger
}

// RetentionResult is what Retention deleted, or would delete in a dry run.
type RetentionResult struct {
	DryRun  bool            `json:"dry_run"`
	Backups []RemovedBackup `json:"backups"`
	// Kept lists the complete backups that stay, oldest first.
	Kept []string   `json:"kept"`
	WAL  WALRemoval `json:"wal"`
	// Objects and Bytes total everything deleted (stored bytes).
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`
	// Notes explain what was left alone and why.
	Notes []string `json:"notes,omitempty"`
}

// RemovedBackup is one deleted backup.
type RemovedBackup struct {
	ID        string    `json:"id"`
	Complete  bool      `json:"complete"`
	StartTime time.Time `json:"start_time"`
	Objects   int       `json:"objects"`
	Bytes     int64     `json:"bytes"`

	keys []string // backup.json first
}

// WALRemoval describes the deleted WAL objects.
type WALRemoval struct {
	// Cutoff is the first segment number kept, as a segment name on the
	// oldest kept backup's timeline; empty when no WAL is deleted.
	Cutoff string `json:"cutoff,omitempty"`
	// First and Last name the lowest and highest deleted objects.
	First   string `json:"first,omitempty"`
	Last    string `json:"last,omitempty"`
	Objects int    `json:"objects"`
	Bytes   int64  `json:"bytes"`

	keys []string
}

// ErrWouldDeleteAll refuses to delete every complete backup without Force.
var ErrWouldDeleteAll = errors.New("refusing to delete every complete backup")

// Retention deletes what opts select (see the rules above) and returns what
// it deleted. It holds the repository's "retention" lock while it plans and
// deletes; a dry run takes no lock and changes nothing.
func Retention(ctx context.Context, repo *storage.Repository, opts RetentionOptions) (*RetentionResult, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	if opts.IncompleteAge <= 0 {
		opts.IncompleteAge = DefaultIncompleteAge
	}
	if opts.Retain < 0 && opts.Before.IsZero() {
		return nil, errors.New("nothing selected: give a number of backups to retain or a time to delete before")
	}
	cfg, err := repo.Config(ctx)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("%s is not a walkeeper repository (no %s): check --repo", repo, storage.ConfigKey)
		}
		return nil, err
	}
	if opts.DryRun {
		return retention(ctx, repo, cfg, opts)
	}
	lock, err := repo.Lock(ctx, "retention", "delete")
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	// Deleting stops when the lock is lost: another delete may run.
	res, err := retention(lock.Context(), repo, cfg, opts)
	if lerr := lock.Err(); err != nil && lerr != nil {
		return res, fmt.Errorf("%w (run delete again to finish)", lerr)
	}
	return res, err
}

func retention(ctx context.Context, repo *storage.Repository, cfg *storage.Config, opts RetentionOptions) (*RetentionResult, error) {
	in, err := readRetentionInput(ctx, repo, cfg.WALSegmentSize)
	if err != nil {
		return nil, err
	}
	res, err := planRetention(in, opts)
	if err != nil {
		return nil, err
	}
	if opts.DryRun {
		return res, nil
	}
	log := opts.Log
	for _, b := range res.Backups {
		rest := b.keys
		if b.Complete && len(rest) > 0 {
			// backup.json alone and first: from here on the backup is
			// incomplete, never a complete one with missing parts.
			if err := repo.Backend().Delete(ctx, rest[0]); err != nil {
				return res, fmt.Errorf("delete backup %s: %w (nothing of it was deleted; run delete again)", b.ID, err)
			}
			rest = rest[1:]
		}
		if err := repo.Backend().DeleteMany(ctx, rest); err != nil {
			return res, fmt.Errorf("delete backup %s: %w (run delete again to finish; the backup is incomplete now)", b.ID, err)
		}
		log.Info("deleted backup", "backup", b.ID, "complete", b.Complete, "objects", b.Objects, "bytes", b.Bytes)
	}
	if err := repo.Backend().DeleteMany(ctx, res.WAL.keys); err != nil {
		return res, fmt.Errorf("delete WAL: %w (run delete again to finish)", err)
	}
	if res.WAL.Objects > 0 {
		log.Info("deleted WAL", "objects", res.WAL.Objects, "bytes", res.WAL.Bytes, "first", res.WAL.First, "last", res.WAL.Last)
	}
	return res, nil
}

// retentionInput is the repository as retention planning sees it.
type retentionInput struct {
	backups []Info
	objects map[string][]storage.ObjectInfo // by backup ID
	wal     *archive.Index
	lock    *storage.LockInfo // the backup lock, if held
}

func readRetentionInput(ctx context.Context, repo *storage.Repository, segSize uint64) (retentionInput, error) {
	var in retentionInput
	var err error
	if in.backups, err = List(ctx, repo); err != nil {
		return in, err
	}
	if in.objects, err = backupObjects(ctx, repo); err != nil {
		return in, err
	}
	if in.wal, err = archive.Load(ctx, repo, segSize); err != nil {
		return in, err
	}
	var li storage.LockInfo
	switch err := repo.ReadJSON(ctx, storage.LockKey("backup"), &li); {
	case err == nil:
		if !li.Stale() {
			in.lock = &li
		}
	case errors.Is(err, storage.ErrNotFound):
	case errors.Is(err, storage.ErrCorrupt):
		in.lock = &storage.LockInfo{} // unreadable: assume a backup runs
	default:
		return in, err
	}
	return in, nil
}

// backupObjects lists backups/ by backup ID.
func backupObjects(ctx context.Context, repo *storage.Repository) (map[string][]storage.ObjectInfo, error) {
	out := map[string][]storage.ObjectInfo{}
	err := repo.Backend().List(ctx, storage.BackupsPrefix, func(o storage.ObjectInfo) error {
		id, _, ok := strings.Cut(strings.TrimPrefix(o.Key, storage.BackupsPrefix), "/")
		if ok {
			out[id] = append(out[id], o)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backups: %w", err)
	}
	return out, nil
}

// planRetention decides; it changes nothing.
func planRetention(in retentionInput, opts RetentionOptions) (*RetentionResult, error) {
	res := &RetentionResult{DryRun: opts.DryRun, Backups: []RemovedBackup{}, Kept: []string{}}
	var complete []Info
	for _, b := range in.backups {
		if b.Complete {
			complete = append(complete, b)
		}
	}
	var kept []Info
	var newestDeleted time.Time
	for i, b := range complete {
		byCount := opts.Retain >= 0 && i < len(complete)-opts.Retain
		byTime := !opts.Before.IsZero() && b.StartTime().Before(opts.Before)
		del := byCount || byTime
		if opts.Retain >= 0 && !opts.Before.IsZero() {
			del = byCount && byTime
		}
		if !del || len(kept) > 0 {
			// Only a prefix of the oldest goes, whatever the rules say of a
			// newer backup.
			kept = append(kept, b)
			res.Kept = append(res.Kept, b.ID)
			continue
		}
		res.Backups = append(res.Backups, removal(b, in.objects[b.ID]))
		newestDeleted = b.StartTime()
	}
	// Whole chains go together: a kept incremental backup keeps every
	// backup it is restored with, and with them every newer one (only a
	// prefix of the oldest goes).
	if len(kept) > 0 && len(res.Backups) > 0 {
		needed := map[string]bool{}
		for _, b := range kept {
			for _, id := range b.Meta.Chain {
				needed[id] = true
			}
		}
		cut := len(res.Backups)
		for i, rb := range res.Backups {
			if needed[rb.ID] {
				cut = i
				break
			}
		}
		if back := res.Backups[cut:]; len(back) > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("%d older backups stay because kept incremental backups are restored with them (from %s on)", len(back), back[0].ID))
			byID := map[string]Info{}
			for _, b := range complete {
				byID[b.ID] = b
			}
			var again []Info
			for _, rb := range back {
				again = append(again, byID[rb.ID])
			}
			kept = append(again, kept...)
			res.Kept = nil
			for _, b := range kept {
				res.Kept = append(res.Kept, b.ID)
			}
			res.Backups = res.Backups[:cut]
			newestDeleted = time.Time{}
			if cut > 0 {
				newestDeleted = res.Backups[cut-1].StartTime
			}
		}
	}
	if len(complete) > 0 && len(kept) == 0 && !opts.Force {
		return nil, fmt.Errorf("%w (%d): add --force to delete them all, or keep one with --retain 1", ErrWouldDeleteAll, len(complete))
	}

	// Incomplete backups older than everything kept.
	ref := newestDeleted
	if len(kept) > 0 {
		ref = kept[0].StartTime()
	}
	for _, b := range in.backups {
		if b.Complete {
			continue
		}
		start := b.StartTime()
		last := start
		for _, o := range in.objects[b.ID] {
			if o.ModTime.After(last) {
				last = o.ModTime
			}
		}
		switch {
		case start.IsZero():
			res.Notes = append(res.Notes, fmt.Sprintf("backups/%s/ is not named like a walkeeper backup: left alone", b.ID))
		case ref.IsZero() || !start.Before(ref):
			// newer than what is kept: not ours to judge
		case opts.Now.Sub(last) < opts.IncompleteAge:
			res.Notes = append(res.Notes, fmt.Sprintf("incomplete backup %s was written to less than %s ago (it may still run): left alone", b.ID, opts.IncompleteAge))
		case in.lock != nil && !start.Before(in.lock.Started.Add(-time.Minute)):
			res.Notes = append(res.Notes, fmt.Sprintf("incomplete backup %s may be the one the backup lock's holder writes: left alone", b.ID))
		default:
			res.Backups = append(res.Backups, removal(b, in.objects[b.ID]))
		}
	}

	if err := planWAL(in.wal, kept, res); err != nil {
		return nil, err
	}
	for _, b := range res.Backups {
		res.Objects += b.Objects
		res.Bytes += b.Bytes
	}
	res.Objects += res.WAL.Objects
	res.Bytes += res.WAL.Bytes
	return res, nil
}

func removal(b Info, objs []storage.ObjectInfo) RemovedBackup {
	r := RemovedBackup{ID: b.ID, Complete: b.Complete, StartTime: b.StartTime()}
	meta := storage.BackupMetaKey(b.ID)
	r.keys = append(r.keys, meta) // deleting a missing key is no error
	for _, o := range objs {
		r.Objects++
		r.Bytes += o.Size
		if o.Key != meta {
			r.keys = append(r.keys, o.Key)
		}
	}
	if !b.Complete {
		r.keys = r.keys[1:]
	}
	return r
}

// planWAL picks the WAL objects below every kept backup's start segment.
func planWAL(wal *archive.Index, kept []Info, res *RetentionResult) error {
	if len(kept) == 0 {
		res.Notes = append(res.Notes, "no complete backup is kept: WAL is left as it is")
		return nil
	}
	var cutoff uint64
	var cutoffTLI, maxTLI uint32
	for i, b := range kept {
		lsn, err := replication.ParseLSN(b.Meta.StartLSN)
		if err != nil {
			return fmt.Errorf("backup %s: start LSN: %w; no WAL can be judged, nothing was deleted", b.ID, err)
		}
		seg := uint64(lsn) / wal.SegSize
		if i == 0 || seg < cutoff {
			cutoff, cutoffTLI = seg, b.Meta.Timeline
		}
		maxTLI = max(maxTLI, b.Meta.Timeline)
	}
	res.WAL.Cutoff = archive.SegmentName(max(cutoffTLI, 1), cutoff, wal.SegSize)
	skippedNewer := 0
	for _, f := range wal.Objects {
		switch f.Name.Kind {
		case archive.Segment, archive.Partial, archive.Range, archive.BackupLabel:
		default:
			continue // history files and unknown names stay
		}
		if f.Name.Seg >= cutoff {
			continue
		}
		if f.Name.TLI > maxTLI {
			skippedNewer++
			continue
		}
		res.WAL.keys = append(res.WAL.keys, f.Key)
		res.WAL.Objects++
		res.WAL.Bytes += f.Size
		if res.WAL.First == "" || f.File < res.WAL.First {
			res.WAL.First = f.File
		}
		if f.File > res.WAL.Last {
			res.WAL.Last = f.File
		}
	}
	if skippedNewer > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%d WAL objects below the cutoff are on a timeline newer than every kept backup's: left alone", skippedNewer))
	}
	return nil
}
