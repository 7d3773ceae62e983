package walstream

import (
	"context"
	"fmt"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// startPoint is where a session starts streaming.
type startPoint struct {
	tli uint32
	lsn LSN // always a segment boundary
	why string
	// partial is the stored .partial of the start segment and its length
	// (empty when none).
	partial    string
	partialLen int
	// hole is set when the start continues the archive: the segments the
	// archive lacks from lsn on, for the error when the server no longer
	// has them ("segment X on", or "segments X .. Y").
	hole string
}

// archiveEnd reads what the stream needs of the archive to decide where to
// start: the server's timeline path, the newest complete backup on it (the
// anchor) and an index of the WAL from the anchor on.
func archiveEnd(ctx context.Context, repo *storage.Repository, segSize uint64, path archive.Path) (archive.Continue, error) {
	backups, err := basebackup.List(ctx, repo)
	if err != nil {
		return archive.Continue{}, fmt.Errorf("list backups: %w", err)
	}
	var anchor uint64
	for _, b := range backups {
		if b.Meta == nil {
			continue
		}
		lsn, err := replication.ParseLSN(b.Meta.StartLSN)
		if err != nil || !path.Covers(max(b.Meta.Timeline, 1), lsn) {
			continue
		}
		anchor = max(anchor, uint64(lsn)/segSize)
	}
	tlis := make([]uint32, len(path))
	for i, s := range path {
		tlis[i] = s.TLI
	}
	ix, err := archive.LoadFrom(ctx, repo, segSize, anchor, tlis...)
	if err != nil {
		return archive.Continue{}, err
	}
	return ix.ContinueAt(path, anchor), nil
}

// chooseStart decides where to stream from. srvTLI/srvPos come from
// IDENTIFY_SYSTEM, c is where the archive continues along the server's
// timeline path (archive.Index.ContinueAt), slotLSN/slotTLI the slot's
// restart position (0 if none).
//
// When the archive holds WAL along the server's path, streaming starts at
// the first segment the archive lacks there, on the timeline that owns it:
// after a failover that is the new timeline's segment holding the switch
// point, whatever the old timeline's WAL past it. Only when the archive
// holds nothing along the path (from the newest backup on) does the slot's
// restart position, else the server's position, decide.
func chooseStart(c archive.Continue, srvTLI uint32, srvPos LSN, slotTLI uint32, slotLSN LSN, segSize uint64) (startPoint, error) {
	if c.Found {
		sp := startPoint{tli: c.TLI, lsn: LSN(c.Seg * segSize), why: "repository"}
		if c.TLI != srvTLI {
			sp.why = "repository, ancestor timeline"
		}
		if c.TLI == srvTLI && sp.lsn > segStart(srvPos, segSize) {
			return startPoint{}, fmt.Errorf("the repository holds WAL up to %s on timeline %d but the server is only at %s: "+
				"is this the right server (or was it restored from a backup)? use a new --repo for a new history", sp.lsn, c.TLI, srvPos)
		}
		first := archive.SegmentName(c.TLI, c.Seg, segSize)
		sp.hole = "segment " + first + " on"
		if c.HasNext {
			sp.hole = "segments " + first + " .. " + archive.SegmentName(c.HoleLastTLI, c.HoleLast, segSize)
		}
		if c.Partial != nil {
			sp.partial = c.Partial.File
		}
		return sp, nil
	}
	if slotLSN != 0 {
		tli := slotTLI
		if tli == 0 {
			tli = srvTLI
		}
		return startPoint{tli: tli, lsn: segStart(slotLSN, segSize), why: "slot restart_lsn"}, nil
	}
	return startPoint{tli: srvTLI, lsn: segStart(srvPos, segSize), why: "server position"}, nil
}
