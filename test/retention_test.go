package test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/basebackup/backuptest"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// TestDeleteFabricatedHistory runs `walkeeper delete` over a fabricated
// history on both backends: four backups across a timeline switch, where
// the timeline 2 backup whose ID sorts first started third. --retain 2
// must keep it (start-time order, not ID order), delete the WAL below the
// oldest kept start on both timelines and keep the history file; the dry
// run must change nothing; deleting every backup needs --force.
func TestDeleteFabricatedHistory(t *testing.T) {
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			repo := target.open(t)
			ids, incomplete := backuptest.TimelineHistory(t, repo)
			before := backuptest.Keys(t, repo)
			run := func(wantCode int, args ...string) string {
				t.Helper()
				stdout, stderr, code := runWalkeeper(t, target.env, append([]string{"delete", "--repo", target.url}, args...)...)
				if code != wantCode {
					t.Fatalf("delete %v: exit %d, want %d\n%s%s", args, code, wantCode, stdout, stderr)
				}
				return stdout + stderr
			}

			// Usage errors change nothing.
			run(2)
			run(2, "--before", "last tuesday")
			run(2, "--retain", "-1")

			out := run(0, "--retain", "2", "--dry-run", "--json")
			var plan basebackup.RetentionResult
			if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "}")+1]), &plan); err != nil {
				t.Fatalf("--json: %v\n%s", err, out)
			}
			if !plan.DryRun || len(plan.Backups) != 2 || plan.Backups[0].ID != ids[0] || plan.Backups[1].ID != ids[1] ||
				plan.WAL.Objects != 11 || !slices.Equal(plan.Kept, ids[2:]) {
				t.Errorf("dry run plan: %+v", plan)
			}
			if after := backuptest.Keys(t, repo); !slices.Equal(before, after) {
				t.Fatalf("the dry run changed the repository:\nbefore %v\nafter  %v", before, after)
			}

			out = run(0, "--retain", "2")
			for _, want := range []string{"deleted backup " + ids[0], "deleted backup " + ids[1],
				"deleted WAL 000000010000000000000001 .. 000000020000000000000009: 11 objects", "incomplete backup " + incomplete} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			var want []string
			for _, k := range before {
				name := archive.NameOfKey(k)
				switch {
				case strings.HasPrefix(k, storage.BackupsPrefix+ids[0]+"/"), strings.HasPrefix(k, storage.BackupsPrefix+ids[1]+"/"):
				case strings.HasPrefix(k, storage.WALPrefix) && !strings.HasSuffix(name, ".history") && name[:24] < "00000002000000000000000A" && name[8:24] < "000000000000000A":
				default:
					want = append(want, k)
				}
			}
			got := backuptest.Keys(t, repo)
			if !slices.Equal(got, want) {
				t.Errorf("after delete --retain 2:\ngot  %v\nwant %v", got, want)
			}
			if !slices.Contains(got, "wal/00000002.history"+repo.Codec().Ext()) || !slices.Contains(got, storage.BackupMetaKey(ids[2])) {
				t.Errorf("history file or the first-sorting backup was deleted: %v", got)
			}

			// Every complete backup: refused without --force, nothing deleted.
			out = run(1, "--before", "1d")
			if !strings.Contains(out, "--force") || !slices.Equal(backuptest.Keys(t, repo), got) {
				t.Errorf("delete of every backup without --force: %s", out)
			}
			run(0, "--retain", "1")
			left := backuptest.Keys(t, repo)
			out = run(1, "--retain", "0")
			if !strings.Contains(out, "refusing to delete every complete backup (1)") || !slices.Equal(backuptest.Keys(t, repo), left) {
				t.Errorf("deleting the only backup without --force: %s", out)
			}
			out = run(0, "--retain", "0", "--force")
			infos, err := basebackup.List(context.Background(), repo)
			if err != nil {
				t.Fatal(err)
			}
			if len(infos) != 1 || infos[0].ID != incomplete || !strings.Contains(out, "deleted backup "+ids[3]) {
				t.Errorf("after --force: %+v\n%s", infos, out)
			}
		})
	}
}
