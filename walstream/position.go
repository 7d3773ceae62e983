package walstream

import (
	"context"
	"fmt"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
)

// repoEnd describes the newest WAL in the repository.
type repoEnd struct {
	found bool
	tli   uint32
	end   LSN // LSN just after the newest stored byte
	// partial is set when the newest WAL is a .partial object: its name
	// and how many bytes it holds.
	partial    string
	partialLen int
}

// newestWAL scans the repository's wal/ objects for the one that ends
// latest (complete segments and partials; ties go to the higher timeline).
func newestWAL(ctx context.Context, repo *storage.Repository, segSize uint64) (repoEnd, error) {
	var best repoEnd
	var bestPartialKey string
	err := repo.Backend().List(ctx, storage.WALPrefix, func(o storage.ObjectInfo) error {
		name := storage.WALNameOf(o.Key)
		kind, seg := storage.ParseWALName(name)
		partial := kind == storage.WALPartial
		if kind != storage.WALSegment && !partial {
			return nil // history files, backup labels and anything else
		}
		tli, segno, err := storage.ParseSegmentName(seg, segSize)
		if err != nil {
			return nil
		}
		end := LSN((segno + 1) * segSize)
		if partial {
			end = LSN(segno*segSize) + 1 // refined below for the winner
		}
		if !best.found || end > best.end || end == best.end && tli > best.tli {
			best = repoEnd{found: true, tli: tli, end: end}
			bestPartialKey = ""
			if partial {
				best.partial, bestPartialKey = name, o.Key
			}
		}
		return nil
	})
	if err != nil || bestPartialKey == "" {
		return best, err
	}
	m, err := repo.Meta(ctx, bestPartialKey)
	if err != nil {
		return best, fmt.Errorf("read newest partial segment: %w", err)
	}
	best.partialLen = int(m.Size)
	best.end = segStart(best.end, segSize) + LSN(m.Size)
	return best, nil
}

// historyEntry is one line of a timeline history file: timeline tli ended
// at switchpoint, where its child timeline began.
type historyEntry struct {
	tli         uint32
	switchpoint LSN
}

// parseHistory parses a timeline history file ("1\t0/3000000\treason").
func parseHistory(content []byte) ([]historyEntry, error) {
	entries, err := replication.ParseHistory(content)
	out := make([]historyEntry, len(entries))
	for i, e := range entries {
		out[i] = historyEntry{tli: e.TLI, switchpoint: e.Switchpoint}
	}
	return out, err
}

// startPoint is where a session starts streaming.
type startPoint struct {
	tli uint32
	lsn LSN // always a segment boundary
	why string
}

// chooseStart decides where to stream from. srvTLI/srvPos come from
// IDENTIFY_SYSTEM, history is the server timeline's history (nil on
// timeline 1), slotLSN/slotTLI the slot's restart position (0 if none).
//
// The repository's end is used when it continues the server's history: it
// is on the server's timeline and not ahead of the server, or on an
// ancestor timeline at or before the point where that timeline ended. Then
// streaming starts at the segment holding the repository's end, on the
// timeline that segment belongs to (the server ends that timeline at its
// switch point and walstream follows). Otherwise the slot, else the server's
// position.
func chooseStart(r repoEnd, srvTLI uint32, srvPos LSN, history []historyEntry, slotTLI uint32, slotLSN LSN, segSize uint64) (startPoint, error) {
	if r.found {
		switch {
		case r.tli == srvTLI && r.end <= srvPos:
			return startPoint{tli: srvTLI, lsn: segStart(r.end, segSize), why: "repository"}, nil
		case r.tli == srvTLI:
			return startPoint{}, fmt.Errorf("the repository holds WAL up to %s on timeline %d but the server is only at %s: "+
				"is this the right server (or was it restored from a backup)? use a new --repo for a new history", r.end, r.tli, srvPos)
		case r.tli < srvTLI:
			for i, h := range history {
				if h.tli != r.tli {
					continue
				}
				if r.end > h.switchpoint {
					break // the repository went past the fork: another history
				}
				start := segStart(r.end, segSize)
				if r.end == h.switchpoint {
					next := srvTLI
					if i+1 < len(history) {
						next = history[i+1].tli
					}
					return startPoint{tli: next, lsn: start, why: "repository, next timeline"}, nil
				}
				return startPoint{tli: r.tli, lsn: start, why: "repository, ancestor timeline"}, nil
			}
		}
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
