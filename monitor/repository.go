package monitor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// maxGaps bounds the gaps a report lists.
const maxGaps = 100

// collectRepository fills the repository section. It asks the archive
// model for the WAL from the oldest complete backup's first segment on
// (archive.LoadFrom), so its cost follows the WAL the kept backups need,
// not the objects older than them; gaps are judged along the timeline path
// from each complete backup to where the archive must reach on the newest
// timeline that descends from it.
func collectRepository(ctx context.Context, repo *storage.Repository, now time.Time, out *RepositoryStatus) error {
	out.Location = repo.String()
	out.WALGaps = []WALGap{}
	cfg, err := repo.Config(ctx)
	switch {
	case err == nil:
		out.Initialized = true
		out.SystemIdentifier, out.PGMajorVersion, out.WALSegmentSize = cfg.SystemIdentifier, cfg.PGMajorVersion, cfg.WALSegmentSize
	case errors.Is(err, storage.ErrNotFound):
	default:
		return fmt.Errorf("read the repository %s: %w", repo, err)
	}
	segSize := out.WALSegmentSize
	if segSize == 0 {
		segSize = 16 << 20
	}

	backups, err := basebackup.List(ctx, repo)
	if err != nil {
		return fmt.Errorf("list backups: %w", err)
	}
	type need struct {
		id    string
		tli   uint32
		start replication.LSN
		first uint64 // first segment recovery from it reads from the archive
		stop  replication.LSN
	}
	var needs []need
	var newest *basebackup.Meta
	for _, b := range backups {
		out.Objects += b.Objects
		out.StoredBytes += b.StoredSize
		if b.Meta == nil {
			out.BackupsIncomplete++
			continue
		}
		out.BackupsComplete++
		if newest == nil || b.Meta.StopTime.After(newest.StopTime) {
			newest = b.Meta
		}
		start, err1 := replication.ParseLSN(b.Meta.StartLSN)
		stop, err2 := replication.ParseLSN(b.Meta.StopLSN)
		if err1 != nil || err2 != nil {
			continue
		}
		n := need{id: b.ID, tli: max(b.Meta.Timeline, 1), start: start, first: uint64(start) / segSize, stop: stop}
		if b.Meta.WAL == basebackup.WALInclude && stop > 0 {
			n.first = uint64(stop-1)/segSize + 1
		}
		needs = append(needs, n)
	}
	if newest != nil {
		out.NewestBackup = &BackupSummary{
			ID: newest.ID, StartTime: newest.StartTime, StopTime: newest.StopTime, AgeSeconds: seconds(now.Sub(newest.StopTime)),
			StartLSN: newest.StartLSN, StopLSN: newest.StopLSN, Timeline: newest.Timeline,
		}
	}
	var from uint64
	for i, n := range needs {
		if i == 0 || n.first < from {
			from = n.first
		}
	}
	ix, err := archive.LoadFrom(ctx, repo, segSize, from)
	if err != nil {
		return fmt.Errorf("read the repository %s: %w", repo, err)
	}
	for _, o := range ix.Objects {
		out.Objects++
		out.StoredBytes += o.Size
	}
	out.WALSegments, out.WALPartials = ix.Counts()

	g := ix.Graph
	newestPath := g.Path(g.Newest())
	end := ix.EndOn(newestPath)
	if !end.Found {
		// Nothing along the newest timeline's path (only an abandoned
		// tail, say): show the newest WAL object there is.
		for _, o := range ix.Objects {
			if k := o.Name.Kind; k.HoldsWAL() {
				if !end.Found || o.Name.Seg > end.Seg || o.Name.Seg == end.Seg && o.Name.TLI >= end.TLI {
					if k != archive.Segment {
						o, _ = ix.PartialOf(o.Name.TLI, o.Name.Seg)
					}
					end = archive.End{Found: true, TLI: o.Name.TLI, Seg: o.Name.Seg, Partial: k != archive.Segment, Object: o}
				}
			}
		}
	}
	if !end.Found && len(needs) == 0 {
		return nil
	}
	if end.Found {
		if err := describeNewest(ctx, repo, ix, end, now, out); err != nil {
			return err
		}
	}
	if len(needs) == 0 {
		// No backup: judge the WAL along the newest timeline's path from
		// the oldest segment stored on it.
		first, _ := ix.FirstOn(newestPath, 0)
		needs = append(needs, need{tli: newestPath[0].TLI, first: first})
		for _, s := range newestPath {
			if uint64(s.Begin)/segSize <= first {
				needs[0].tli, needs[0].start = s.TLI, replication.LSN(first*segSize)
			}
		}
	}
	seen := map[string]bool{}
	for i, n := range needs {
		path := g.Path(g.NewestFrom(n.tli, n.start))
		reach, err := ix.Target(ctx, repo, path)
		if err != nil {
			return fmt.Errorf("read the repository %s: %w", repo, err)
		}
		to := reach.Seg
		if n.stop > 0 && (!reach.Found || uint64(n.stop-1)/segSize > to) {
			to, reach.Found = uint64(n.stop-1)/segSize, true
		}
		if i == 0 {
			out.WALGapsFrom = archive.SegmentName(path.Owner(n.first, segSize), n.first, segSize)
		}
		if !reach.Found || to < n.first {
			continue
		}
		for _, gap := range ix.Gaps(path, n.first, to, maxGaps) {
			first, last := gap.Names(segSize)
			if seen[first] || len(out.WALGaps) == maxGaps {
				continue
			}
			seen[first] = true
			out.WALGaps = append(out.WALGaps, WALGap{First: first, Last: last, Count: gap.Count()})
		}
	}
	return nil
}

// describeNewest fills NewestWAL from the newest WAL along the newest
// timeline's path. A partial can be replaced by its complete segment
// between the listing and reading its trailer; then the complete segment
// is the newest.
func describeNewest(ctx context.Context, repo *storage.Repository, ix *archive.Index, end archive.End, now time.Time, out *RepositoryStatus) error {
	segSize := ix.SegSize
	o := end.Object
	endLSN := replication.LSN((end.Seg + 1) * segSize)
	name := archive.SegmentName(end.TLI, end.Seg, segSize)
	if end.Partial {
		e, err := archive.PartialEnd(ctx, repo, o, segSize)
		switch {
		case err == nil:
			endLSN = e
			name += ".partial"
		case errors.Is(err, storage.ErrNotFound):
			info, ferr := archive.Find(ctx, repo, name)
			if ferr != nil {
				return fmt.Errorf("read %s: %w", o.Key, err)
			}
			o.ObjectInfo, end.Partial = info, false
		default:
			return fmt.Errorf("read %s: %w", o.Key, err)
		}
	}
	out.NewestWAL = &WALSummary{
		Name: name, Timeline: end.TLI, Partial: end.Partial, EndLSN: endLSN.String(),
		Modified: o.ModTime.UTC(), AgeSeconds: seconds(now.Sub(o.ModTime)),
	}
	return nil
}
