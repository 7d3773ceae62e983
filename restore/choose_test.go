package restore

import (
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage/archive"
)

func TestChooseBackupForTarget(t *testing.T) {
	at := func(hhmm string) time.Time {
		tm, err := time.Parse("2006-01-02 15:04", "2026-11-26 "+hhmm)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	meta := func(id string, tli uint32, stop, end string) *basebackup.Meta {
		return &basebackup.Meta{ID: id, Timeline: tli, StopTimeline: tli, StopLSN: stop, StopTime: at(end)}
	}
	// One timeline: B1 ends at 0/3000100 (10:00), B2 at 0/6000100 (11:00).
	line := []*basebackup.Meta{meta("B1", 1, "0/3000100", "10:00"), meta("B2", 1, "0/6000100", "11:00")}
	// Timeline 2 forked from timeline 1 at 0/5000000. B2 ends on the part of
	// timeline 1 that timeline 2 abandoned; B3 is on timeline 2.
	forked := []*basebackup.Meta{meta("B1", 1, "0/3000100", "10:00"), meta("B2", 1, "0/5800000", "10:40"), meta("B3", 2, "0/7000000", "11:00")}
	graph := archive.NewGraph()
	if err := graph.Add(2, []archive.HistoryEntry{{TLI: 1, Switchpoint: 0x5000000}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		backups []*basebackup.Meta
		graph   *archive.Graph
		id      string
		rec     Recovery
		want    string // backup ID, or a part of the error
		wantErr bool
	}{
		{"lsn between", line, nil, "", Recovery{TargetLSN: "0/4000000"}, "B1", false},
		{"lsn at the first end", line, nil, "", Recovery{TargetLSN: "0/3000100"}, "B1", false},
		{"lsn after both", line, nil, "latest", Recovery{TargetLSN: "0/7000000"}, "B2", false},
		{"lsn before both", line, nil, "", Recovery{TargetLSN: "0/2000000"}, "oldest complete backup that could reach it, B1 (it ended at 2026-11-26T10:00:00Z, LSN 0/3000100)", true},
		{"time between", line, nil, "", Recovery{TargetTime: "2026-11-26 10:30:00+00"}, "B1", false},
		{"time in another zone", line, nil, "", Recovery{TargetTime: "2026-11-26 11:30:00+01"}, "B1", false},
		{"time after both", line, nil, "", Recovery{TargetTime: "2026-11-26T11:30:00Z"}, "B2", false},
		{"time before both", line, nil, "", Recovery{TargetTime: "2026-11-26 09:00:00 UTC"}, "B1 (it ended at 2026-11-26T10:00:00Z", true},
		{"named, reaches", line, nil, "B1", Recovery{TargetLSN: "0/4000000"}, "B1", false},
		{"named, ends after the target", line, nil, "B2", Recovery{TargetLSN: "0/4000000"}, "backup B2 ends at LSN 0/6000100, after --target-lsn 0/4000000", true},
		{"named, ends after the time", line, nil, "B2", Recovery{TargetTime: "2026-11-26 10:30:00+00"}, "backup B2 ends at 2026-11-26T11:00:00Z, after --target-time", true},
		{"xid takes the newest", line, nil, "", Recovery{TargetXID: "1234"}, "B2", false},
		{"name takes the newest", line, nil, "", Recovery{TargetName: "before_migration"}, "B2", false},
		// Along timeline 2 (latest), B2's end is not on the path.
		{"latest skips the abandoned timeline", forked, graph, "", Recovery{TargetLSN: "0/6000000"}, "B1", false},
		{"latest, after the fork", forked, graph, "", Recovery{TargetLSN: "0/7500000"}, "B3", false},
		{"latest, by time", forked, graph, "", Recovery{TargetTime: "2026-11-26 10:50:00+00"}, "B1", false},
		{"timeline 1 keeps it", forked, graph, "", Recovery{TargetLSN: "0/6000000", TargetTimeline: "1"}, "B2", false},
		{"current keeps it", forked, graph, "", Recovery{TargetLSN: "0/6000000", TargetTimeline: "current"}, "B2", false},
		{"named off the path", forked, graph, "B2", Recovery{TargetLSN: "0/6000000"}, "backup B2 ends on timeline 1 at 0/5800000, which is not on the history of timeline 2", true},
		{"unknown timeline: no path check", forked, graph, "", Recovery{TargetLSN: "0/6000000", TargetTimeline: "7"}, "B2", false},
		{"xid along latest", forked[:2], graph, "", Recovery{TargetXID: "99"}, "B1", false},
		{"nothing on the path", forked[1:2], graph, "", Recovery{TargetLSN: "0/6000000"}, "no complete backup can reach --target-lsn 0/6000000: the oldest, B2, ends on timeline 1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg, err := tc.rec.target()
			if err != nil {
				t.Fatal(err)
			}
			m, why, err := choose(tc.backups, tc.id, tg, tc.graph)
			switch {
			case tc.wantErr && err == nil:
				t.Fatalf("chose %s (%s), want an error containing %q", m.ID, why, tc.want)
			case tc.wantErr && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			case !tc.wantErr && err != nil:
				t.Fatal(err)
			case !tc.wantErr && m.ID != tc.want:
				t.Fatalf("chose %s (%s), want %s", m.ID, why, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestParseTargetTimeNeedsZone(t *testing.T) {
	for in, want := range map[string]string{
		"2026-11-26 14:30:00+00":        "2026-11-26T14:30:00Z",
		"2026-11-26 14:30:00.123456+00": "2026-11-26T14:30:00.123456Z",
		"2026-11-26 16:30:00+02:00":     "2026-11-26T14:30:00Z",
		"2026-11-26 20:00:00+0530":      "2026-11-26T14:30:00Z",
		"2026-11-26T14:30:00Z":          "2026-11-26T14:30:00Z",
		"2026-11-26 14:30:00 UTC":       "2026-11-26T14:30:00Z",
	} {
		got, err := ParseTargetTime(in)
		if err != nil || got.UTC().Format(time.RFC3339Nano) != want {
			t.Errorf("%q: %v %v, want %s", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"2026-11-26 14:30:00":     "has no time zone: add one, such as 2026-11-26 14:30:00+00",
		"2026-11-26 14:30:00 CET": "numeric time zone",
		"yesterday":               "numeric time zone",
	} {
		if _, err := ParseTargetTime(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", in, err, want)
		}
	}
}
