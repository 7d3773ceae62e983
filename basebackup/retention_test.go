package basebackup_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/basebackup/backuptest"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

func memRepo() *storage.Repository {
	return storage.NewRepository(storage.NewMemory(), storage.CodecZstd)
}

func walNames(keys []string) []string {
	var out []string
	for _, k := range keys {
		if strings.HasPrefix(k, storage.WALPrefix) {
			out = append(out, archive.NameOfKey(k))
		}
	}
	return out
}

func backupIDs(t *testing.T, repo *storage.Repository) []string {
	t.Helper()
	infos, err := basebackup.List(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, i := range infos {
		out = append(out, i.ID)
	}
	return out
}

// TestRetentionFollowsStartTimeAcrossTimelines: the timeline 2 backup whose
// ID sorts first is kept, because by start time it is among the newest two;
// WAL below the oldest kept start goes on both timelines, history stays.
func TestRetentionFollowsStartTimeAcrossTimelines(t *testing.T) {
	later := time.Now().Add(48 * time.Hour) // the incomplete backup is old enough
	for _, tc := range []struct {
		name string
		opts basebackup.RetentionOptions
	}{
		{"retain", basebackup.RetentionOptions{Retain: 2}},
		{"before", basebackup.RetentionOptions{Retain: -1, Before: time.Date(2025, 1, 2, 12, 0, 0, 0, time.UTC)}},
		{"both", basebackup.RetentionOptions{Retain: 1, Before: time.Date(2025, 1, 2, 12, 0, 0, 0, time.UTC)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			repo := memRepo()
			ids, incomplete := backuptest.TimelineHistory(t, repo)
			before := backuptest.Keys(t, repo)

			opts := tc.opts
			opts.Now, opts.DryRun = later, true
			plan, err := basebackup.Retention(ctx, repo, opts)
			if err != nil {
				t.Fatal(err)
			}
			if after := backuptest.Keys(t, repo); !slices.Equal(before, after) {
				t.Fatalf("dry run changed the repository:\n%v\n%v", before, after)
			}
			opts.DryRun = false
			res, err := basebackup.Retention(ctx, repo, opts)
			if err != nil {
				t.Fatal(err)
			}
			plan.DryRun = false
			if plan.Objects != res.Objects || plan.Bytes != res.Bytes || len(plan.Backups) != len(res.Backups) {
				t.Errorf("dry run planned %d objects %d bytes, the run deleted %d objects %d bytes", plan.Objects, plan.Bytes, res.Objects, res.Bytes)
			}
			var deleted []string
			for _, b := range res.Backups {
				deleted = append(deleted, b.ID)
			}
			if want := []string{ids[0], ids[1], incomplete}; !slices.Equal(deleted, want) {
				t.Errorf("deleted %v, want %v", deleted, want)
			}
			if want := []string{ids[2], ids[3]}; !slices.Equal(res.Kept, want) || !slices.Equal(backupIDs(t, repo), want) {
				t.Errorf("kept %v, repository has %v, want %v", res.Kept, backupIDs(t, repo), want)
			}
			wantWAL := []string{"00000002.history", "00000002000000000000000A", "00000002000000000000000B",
				"00000002000000000000000C", "00000002000000000000000D", "00000002000000000000000E.partial"}
			if got := walNames(backuptest.Keys(t, repo)); !slices.Equal(got, wantWAL) {
				t.Errorf("WAL left: %v\nwant %v", got, wantWAL)
			}
			// 7 + partial + backup label on TL1, 8 and 9 on TL2.
			if res.WAL.Objects != 11 || res.WAL.Cutoff != "00000002000000000000000A" || res.WAL.First != "000000010000000000000001" || res.WAL.Last != "000000020000000000000009" {
				t.Errorf("WAL summary %+v", res.WAL)
			}
			if res.Objects != res.WAL.Objects+4+4+3 || res.Bytes == 0 {
				t.Errorf("summary: %d objects, %d bytes", res.Objects, res.Bytes)
			}
			rep, err := basebackup.Verify(ctx, repo, basebackup.VerifyOptions{})
			if err != nil || !rep.OK {
				t.Errorf("verify after delete: %v %+v", err, rep)
			}
		})
	}
}

// TestRetentionKeepsRecentIncomplete: an incomplete backup written to
// recently, or younger than the backup lock, may still run: it stays.
func TestRetentionKeepsRecentIncomplete(t *testing.T) {
	ctx := context.Background()
	repo := memRepo()
	ids, incomplete := backuptest.TimelineHistory(t, repo)
	res, err := basebackup.Retention(ctx, repo, basebackup.RetentionOptions{Retain: 2, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Backups) != 2 || res.Backups[1].ID != ids[1] || len(res.Notes) == 0 || !strings.Contains(res.Notes[0], incomplete) {
		t.Errorf("plan %+v", res)
	}
	// An incomplete backup newer than the oldest kept one is never judged.
	backuptest.Backup{ID: "20250103T120000Z", Start: time.Date(2025, 1, 3, 12, 0, 0, 0, time.UTC), Timeline: 2, StartLSN: "0/B000028"}.Write(t, repo)
	res, err = basebackup.Retention(ctx, repo, basebackup.RetentionOptions{Retain: 2, Now: time.Now().Add(72 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if got := backupIDs(t, repo); !slices.Equal(got, []string{ids[2], "20250103T120000Z", ids[3]}) {
		t.Errorf("backups left: %v", got)
	}
}

// TestRetentionReadsBothIDFormats: an old incomplete backup is judged by
// the start time in its ID, in the millisecond format as in the one before
// it; a name that is no backup ID is left alone.
func TestRetentionReadsBothIDFormats(t *testing.T) {
	ctx := context.Background()
	repo := memRepo()
	ids, incomplete := backuptest.TimelineHistory(t, repo)
	const newFormat = "20241202T000000.250Z-0a1b2c"
	backuptest.Backup{ID: newFormat, Start: time.Date(2024, 12, 2, 0, 0, 0, 250e6, time.UTC), Timeline: 1, StartLSN: "0/1000028"}.Write(t, repo)
	backuptest.Backup{ID: "nightly", Start: time.Date(2024, 12, 3, 0, 0, 0, 0, time.UTC), Timeline: 1, StartLSN: "0/1000028"}.Write(t, repo)
	res, err := basebackup.Retention(ctx, repo, basebackup.RetentionOptions{Retain: 4, Now: time.Now().Add(72 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var deleted []string
	for _, b := range res.Backups {
		deleted = append(deleted, b.ID)
	}
	if want := []string{incomplete, newFormat}; !slices.Equal(deleted, want) {
		t.Errorf("deleted %v, want the old incomplete backups %v", deleted, want)
	}
	if got, want := backupIDs(t, repo), append(slices.Clone(ids), "nightly"); !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
		t.Errorf("backups left: %v, want %v", got, want)
	}
}

// TestRetentionRefusesToDeleteEverything: the only backup stays without
// Force, and nothing is deleted; with Force it goes and WAL stays.
func TestRetentionRefusesToDeleteEverything(t *testing.T) {
	ctx := context.Background()
	repo := memRepo()
	backuptest.Init(t, repo)
	backuptest.Backup{ID: "20250101T000000Z", Start: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Timeline: 1, StartLSN: "0/2000028", Complete: true}.Write(t, repo)
	backuptest.Segments(t, repo, 1, 1, 3)
	before := backuptest.Keys(t, repo)
	for _, opts := range []basebackup.RetentionOptions{{Retain: 0}, {Retain: -1, Before: time.Now()}} {
		_, err := basebackup.Retention(ctx, repo, opts)
		if !errors.Is(err, basebackup.ErrWouldDeleteAll) || !strings.Contains(err.Error(), "--force") {
			t.Errorf("%+v: %v", opts, err)
		}
		if after := backuptest.Keys(t, repo); !slices.Equal(before, after) {
			t.Fatalf("refused delete changed the repository: %v", after)
		}
	}
	res, err := basebackup.Retention(ctx, repo, basebackup.RetentionOptions{Retain: 0, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Backups) != 1 || res.WAL.Objects != 0 || len(backupIDs(t, repo)) != 0 {
		t.Errorf("forced: %+v", res)
	}
	if got := walNames(backuptest.Keys(t, repo)); len(got) != 3 {
		t.Errorf("WAL after deleting the only backup: %v", got)
	}
}

// TestRetentionLeavesNewerTimelines: WAL below the cutoff on a timeline
// newer than every kept backup's (a branch from the past) stays.
func TestRetentionLeavesNewerTimelines(t *testing.T) {
	ctx := context.Background()
	repo := memRepo()
	ids, _ := backuptest.TimelineHistory(t, repo)
	backuptest.WAL(t, repo, archive.HistoryName(3), "1\t0/3000000\tbranch\n")
	backuptest.Segments(t, repo, 3, 3, 4)
	res, err := basebackup.Retention(ctx, repo, basebackup.RetentionOptions{Retain: 2})
	if err != nil {
		t.Fatal(err)
	}
	names := walNames(backuptest.Keys(t, repo))
	for _, n := range []string{"000000030000000000000003", "000000030000000000000004", "00000003.history"} {
		if !slices.Contains(names, n) {
			t.Errorf("%s was deleted", n)
		}
	}
	if len(res.Kept) != 2 || res.Kept[0] != ids[2] || len(res.Notes) == 0 {
		t.Errorf("result %+v", res)
	}
}

func TestRetentionNeedsARule(t *testing.T) {
	repo := memRepo()
	backuptest.Init(t, repo)
	if _, err := basebackup.Retention(context.Background(), repo, basebackup.RetentionOptions{Retain: -1}); err == nil {
		t.Error("no rule: no error")
	}
}
