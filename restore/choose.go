package restore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Choosing the backup for a point in time.
//
// Recovery can only stop once it has passed the backup's end (its stop
// LSN): a target before that is refused by PostgreSQL with "requested
// recovery stop point is before consistent recovery point", after the whole
// backup was downloaded. So with --target-time or --target-lsn the newest
// complete backup whose end is at or before the target is taken:
//
//   - --target-lsn: the backup's stop LSN <= the target, and the backup's
//     stop position lies on the history of the timeline recovery follows
//     (an LSN only orders positions along one line of timelines);
//   - --target-time: the backup's stop time <= the target. The stop time is
//     walkeeper's clock when the backup was complete, at or after the
//     server's backup end, so every commit before the stop LSN has a
//     timestamp at or before it (with clocks in sync, as NTP keeps them).
//     The backup must lie on the timeline's history too.
//   - --target-xid, --target-name: no position is known before the WAL is
//     read (an xid is assigned long before it commits; a restore point is a
//     record anywhere in the WAL), so the newest backup on the timeline's
//     history is taken, as before; when PostgreSQL reports the stop point
//     before the consistent point, restore an older --backup.
//
// The timeline recovery follows is --target-timeline (a number), the newest
// timeline of the archive (latest, PostgreSQL's default), or each backup's
// own (current).

// target is what recovery aims at, as far as choosing a backup goes.
type target struct {
	time     time.Time // zero: no time target
	lsn      archive.LSN
	hasLSN   bool
	timeline string // as --target-timeline: "", latest, current or a number
	kind     string // the flag, for messages
	value    string
}

func (r Recovery) target() (target, error) {
	t := target{timeline: r.TargetTimeline}
	switch {
	case r.TargetTime != "":
		tm, err := ParseTargetTime(r.TargetTime)
		if err != nil {
			return t, err
		}
		t.time, t.kind, t.value = tm, "--target-time", r.TargetTime
	case r.TargetLSN != "":
		lsn, err := replication.ParseLSN(r.TargetLSN)
		if err != nil {
			return t, fmt.Errorf("--target-lsn: %w", err)
		}
		t.lsn, t.hasLSN, t.kind, t.value = lsn, true, "--target-lsn", r.TargetLSN
	case r.TargetXID != "":
		t.kind, t.value = "--target-xid", r.TargetXID
	case r.TargetName != "":
		t.kind, t.value = "--target-name", r.TargetName
	}
	return t, nil
}

// positioned reports whether the target can be placed against backups.
func (t target) positioned() bool { return !t.time.IsZero() || t.hasLSN }

// chooseBackup finds the backup to restore: only complete ones qualify, and
// for a point in time only one that can reach the target.
func chooseBackup(ctx context.Context, repo *storage.Repository, id string, rec Recovery) (*basebackup.Meta, string, error) {
	infos, err := basebackup.List(ctx, repo)
	if err != nil {
		return nil, "", err
	}
	var complete []*basebackup.Meta
	for _, i := range infos {
		if i.Complete {
			complete = append(complete, i.Meta)
		}
	}
	named := id != "" && id != "latest"
	if named {
		found := false
		for _, i := range infos {
			if i.ID != id {
				continue
			}
			if !i.Complete {
				return nil, "", fmt.Errorf("backup %s is incomplete (it has no backup.json) and cannot be restored: choose a complete one from walkeeper list", id)
			}
			found = true
		}
		if !found {
			return nil, "", fmt.Errorf("backup %s not found in %s: see walkeeper list", id, repo)
		}
	} else if len(complete) == 0 {
		return nil, "", fmt.Errorf("no complete backup in %s: take one with walkeeper backup", repo)
	}
	tg, err := rec.target()
	if err != nil {
		return nil, "", err
	}
	if tg.kind == "" {
		if named {
			return metaOf(complete, id), "", nil
		}
		return complete[len(complete)-1], "", nil
	}
	var graph *archive.Graph
	if tg.timeline != "current" {
		var extra []uint32
		if n, err := strconv.ParseUint(tg.timeline, 10, 32); err == nil {
			extra = append(extra, uint32(n))
		}
		if graph, err = archive.LoadGraph(ctx, repo, extra...); err != nil {
			return nil, "", err
		}
	}
	return choose(complete, id, tg, graph)
}

func metaOf(metas []*basebackup.Meta, id string) *basebackup.Meta {
	for _, m := range metas {
		if m.ID == id {
			return m
		}
	}
	return nil
}

// choose applies the rules above to the complete backups (oldest first);
// id "" or "latest" picks, another id is checked. It returns the backup and
// a sentence saying why it was taken.
func choose(complete []*basebackup.Meta, id string, tg target, graph *archive.Graph) (*basebackup.Meta, string, error) {
	// path is the line of timelines recovery from m follows (nil: not
	// known from the archive, which the timeline check then skips).
	path := func(m *basebackup.Meta) archive.Path {
		switch {
		case tg.timeline == "current":
			return archive.PathTo(m.Timeline, nil)
		case graph == nil:
			return nil
		case tg.timeline == "" || tg.timeline == "latest":
			return graph.Path(graph.Newest())
		}
		n, _ := strconv.ParseUint(tg.timeline, 10, 32)
		if !graph.Known(uint32(n)) {
			return nil
		}
		return graph.Path(uint32(n))
	}
	// why says why m cannot reach the target ("" when it can); offPath
	// marks a backup that is not on the timeline's history at all.
	why := func(m *basebackup.Meta) (reason string, offPath bool, err error) {
		stop, err := replication.ParseLSN(m.StopLSN)
		if err != nil {
			return "", false, fmt.Errorf("backup %s: stop LSN %q: %w", m.ID, m.StopLSN, err)
		}
		stopTLI := m.StopTimeline
		if stopTLI == 0 {
			stopTLI = m.Timeline
		}
		if p := path(m); p != nil && !p.Covers(stopTLI, stop) {
			return fmt.Sprintf("ends on timeline %d at %s, which is not on the history of timeline %d that recovery follows", stopTLI, stop, p.Last().TLI), true, nil
		}
		switch {
		case tg.hasLSN && stop > tg.lsn:
			return fmt.Sprintf("ends at LSN %s, after %s %s", stop, tg.kind, tg.value), false, nil
		case !tg.time.IsZero() && m.StopTime.After(tg.time):
			return fmt.Sprintf("ends at %s, after %s %s", m.StopTime.UTC().Format(time.RFC3339Nano), tg.kind, tg.value), false, nil
		}
		return "", false, nil
	}
	unplaced := ""
	if !tg.positioned() {
		unplaced = fmt.Sprintf("; %s cannot be placed against backups before the WAL is read: if PostgreSQL reports the stop point before the consistent recovery point, restore an older --backup", tg.kind)
	}
	if id != "" && id != "latest" {
		m := metaOf(complete, id)
		reason, _, err := why(m)
		if err != nil {
			return nil, "", err
		}
		if reason != "" {
			return nil, "", fmt.Errorf("backup %s %s: recovery cannot stop before a backup's end; choose an older backup (walkeeper list) or leave out --backup", id, reason)
		}
		return m, "named with --backup" + unplaced, nil
	}
	var oldest *basebackup.Meta
	var oldestWhy string
	anyOnPath := false
	for i := len(complete) - 1; i >= 0; i-- {
		m := complete[i]
		reason, offPath, err := why(m)
		if err != nil {
			return nil, "", err
		}
		if reason == "" {
			if !tg.positioned() {
				return m, "the newest backup on the timeline's history" + unplaced, nil
			}
			return m, fmt.Sprintf("the newest backup that ends before %s %s", tg.kind, tg.value), nil
		}
		if !offPath {
			anyOnPath = true
			oldest, oldestWhy = m, reason
		} else if !anyOnPath {
			oldest, oldestWhy = m, reason
		}
	}
	if !anyOnPath {
		return nil, "", fmt.Errorf("no complete backup can reach %s %s: the oldest, %s, %s; give --target-timeline or restore a backup of that timeline", tg.kind, tg.value, oldest.ID, oldestWhy)
	}
	return nil, "", fmt.Errorf("%s %s is before the end of the oldest complete backup that could reach it, %s (it %s, LSN %s): no backup can recover to it; give a later target",
		tg.kind, tg.value, oldest.ID, endOf(oldest), oldest.StopLSN)
}

// endOf describes when a backup ended.
func endOf(m *basebackup.Meta) string {
	return "ended at " + m.StopTime.UTC().Format(time.RFC3339Nano)
}

// Choose returns the backup Run would restore for id ("" or "latest": the
// newest complete one that can reach rec's target), so that a caller can
// look at it first (restore drills pick the server binaries and move the
// tablespaces by it).
func Choose(ctx context.Context, repo *storage.Repository, id string, rec Recovery) (*basebackup.Meta, error) {
	m, _, err := chooseBackup(ctx, repo, id, rec)
	return m, err
}
