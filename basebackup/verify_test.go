package basebackup_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/basebackup/backuptest"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

func kinds(r *basebackup.VerifyReport) map[string][]string {
	out := map[string][]string{}
	for _, p := range r.Problems {
		out[p.Kind] = append(out[p.Kind], p.Key)
	}
	return out
}

func TestVerifyClean(t *testing.T) {
	repo := memRepo()
	ids, incomplete := backuptest.TimelineHistory(t, repo)
	backuptest.Replace(t, repo, "backups/"+incomplete+"/base.tar.zst", "x") // keep it readable
	// Without the old incomplete backup the repository is clean.
	for _, k := range backuptest.Keys(t, repo) {
		if strings.HasPrefix(k, "backups/"+incomplete+"/") {
			repo.Backend().Delete(context.Background(), k)
		}
	}
	r, err := basebackup.Verify(context.Background(), repo, basebackup.VerifyOptions{Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	// 4 backups x 2 archives, 7 + 6 segments, 2 partials, 1 backup label, 1 history.
	if !r.OK || r.Backups != 4 || r.ObjectsChecked != 8+13+2+1+1 || r.BytesRead == 0 {
		t.Fatalf("clean repository: %+v", r)
	}
	one, err := basebackup.Verify(context.Background(), repo, basebackup.VerifyOptions{Backup: ids[2]})
	if err != nil {
		t.Fatal(err)
	}
	// Its 2 archives, TL2 segments 10..13 and 14.partial, the history file.
	if !one.OK || one.Backups != 1 || one.ObjectsChecked != 2+5+1 {
		t.Fatalf("--backup %s: %+v", ids[2], one)
	}
	if _, err := basebackup.Verify(context.Background(), repo, basebackup.VerifyOptions{Backup: "nope"}); err == nil {
		t.Error("unknown backup: no error")
	}
}

// TestVerifyFindsFaults injects one fault at a time into the fabricated
// repository and expects exactly the matching problem.
func TestVerifyFindsFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject func(t *testing.T, repo *storage.Repository, ids []string)
		kind   string
		key    string
	}{
		{"missing segment", func(t *testing.T, repo *storage.Repository, ids []string) {
			repo.Backend().Delete(context.Background(), archivetest.WALKey("00000002000000000000000B")+".zst")
		}, basebackup.ProblemMissingWAL, archivetest.WALKey("00000002000000000000000B")},
		{"flipped WAL byte", func(t *testing.T, repo *storage.Repository, ids []string) {
			backuptest.FlipByte(t, repo, archivetest.WALKey("000000010000000000000005")+".zst", 20)
		}, basebackup.ProblemCorrupt, archivetest.WALKey("000000010000000000000005") + ".zst"},
		{"flipped archive byte", func(t *testing.T, repo *storage.Repository, ids []string) {
			backuptest.FlipByte(t, repo, "backups/"+ids[1]+"/base.tar.zst", -60)
		}, basebackup.ProblemCorrupt, "backups/" + ids1 + "/base.tar.zst"},
		{"missing backup.json", func(t *testing.T, repo *storage.Repository, ids []string) {
			repo.Backend().Delete(context.Background(), storage.BackupMetaKey(ids[3]))
		}, basebackup.ProblemIncomplete, "backups/" + ids3 + "/"},
		{"garbled backup.json", func(t *testing.T, repo *storage.Repository, ids []string) {
			if err := repo.Backend().Put(context.Background(), storage.BackupMetaKey(ids[3]), strings.NewReader("{not json")); err != nil {
				t.Fatal(err)
			}
		}, basebackup.ProblemBadBackupJSON, "backups/" + ids3 + "/backup.json"},
		// Timeline 2 now begins in segment 6: its segments 6 and 7 are
		// missing, and timeline 1's segments 6 and 7 do not fill the hole.
		{"history contradicts segments", func(t *testing.T, repo *storage.Repository, ids []string) {
			backuptest.Replace(t, repo, "wal/00000002.history.zst", "1\t0/6000000\tno recovery target specified\n")
		}, basebackup.ProblemMissingWAL, archivetest.WALKey("000000020000000000000006")},
		{"history missing", func(t *testing.T, repo *storage.Repository, ids []string) {
			repo.Backend().Delete(context.Background(), "wal/00000002.history.zst")
		}, basebackup.ProblemMissingHistory, "wal/00000002.history"},
		{"archive missing", func(t *testing.T, repo *storage.Repository, ids []string) {
			repo.Backend().Delete(context.Background(), "backups/"+ids[0]+"/backup_manifest.zst")
		}, basebackup.ProblemMissingObject, "backups/" + ids0 + "/backup_manifest.zst"},
		{"bad manifest", func(t *testing.T, repo *storage.Repository, ids []string) {
			replaceListed(t, repo, ids[0], "backup_manifest", `{"Files": []}`)
		}, basebackup.ProblemBadManifest, "backups/" + ids0 + "/backup_manifest.zst"},
		{"archive replaced", func(t *testing.T, repo *storage.Repository, ids []string) {
			backuptest.Replace(t, repo, "backups/"+ids[0]+"/base.tar.zst", "other content")
		}, basebackup.ProblemMismatch, "backups/" + ids0 + "/base.tar.zst"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := memRepo()
			ids, incomplete := backuptest.TimelineHistory(t, repo)
			for _, k := range backuptest.Keys(t, repo) {
				if strings.HasPrefix(k, "backups/"+incomplete+"/") {
					repo.Backend().Delete(context.Background(), k)
				}
			}
			tc.inject(t, repo, ids)
			r, err := basebackup.Verify(context.Background(), repo, basebackup.VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got := kinds(r)
			if r.OK || len(got[tc.kind]) == 0 || got[tc.kind][0] != tc.key {
				t.Fatalf("want %s %s, got %+v", tc.kind, tc.key, r.Problems)
			}
			for _, p := range r.Problems {
				t.Logf("%s %s: %s", p.Kind, p.Key, p.Detail)
			}
		})
	}
}

// The fixture's IDs, in start order.
const (
	ids0 = "20250101T000000Z"
	ids1 = "20250102T000000Z"
	ids3 = "20250104T000000Z"
)

// replaceListed stores content as the backup's object name and updates
// backup.json to match, so only the content itself is wrong.
func replaceListed(t *testing.T, repo *storage.Repository, id, name, content string) {
	t.Helper()
	ctx := context.Background()
	var m basebackup.Meta
	if err := repo.ReadJSON(ctx, storage.BackupMetaKey(id), &m); err != nil {
		t.Fatal(err)
	}
	for i, o := range m.Objects {
		if o.Name == name {
			repo.Backend().Delete(ctx, o.Key)
			key, em := backuptest.Put(t, repo, storage.BackupKey(id, name), []byte(content))
			m.Objects[i] = basebackup.Object{Name: name, Key: key, Size: em.Size, StoredSize: em.StoredSize, SHA256: em.Hex()}
		}
	}
	if err := repo.WriteJSON(ctx, storage.BackupMetaKey(id), &m); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyIncludeModeBackup: a backup that carries its WAL needs the
// repository's WAL only from its stop on; none at all is fine.
func TestVerifyIncludeModeBackup(t *testing.T) {
	repo := memRepo()
	backuptest.Init(t, repo)
	backuptest.Backup{ID: "20250101T000000Z", Start: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Timeline: 1,
		StartLSN: "0/2000028", StopLSN: "0/3000100", WAL: basebackup.WALInclude, Complete: true}.Write(t, repo)
	r, err := basebackup.Verify(context.Background(), repo, basebackup.VerifyOptions{})
	if err != nil || !r.OK {
		t.Fatalf("%v %+v", err, r)
	}
	backuptest.Segments(t, repo, 1, 5, 6) // the stream started later: 3 and 4 are missing
	r, err = basebackup.Verify(context.Background(), repo, basebackup.VerifyOptions{})
	if err != nil || r.OK || kinds(r)[basebackup.ProblemMissingWAL][0] != archivetest.WALKey("000000010000000000000003") ||
		!strings.Contains(r.Problems[0].Detail, "2 segments") {
		t.Fatalf("%v %+v", err, r)
	}
}

// TestVerifyRunningBackup: the incomplete backup the live holder of the
// backup lock writes is a note, not a problem; once the lock is gone it is
// reported.
func TestVerifyRunningBackup(t *testing.T) {
	ctx := context.Background()
	repo := memRepo()
	backuptest.Init(t, repo)
	now := time.Now().UTC()
	id := now.Format("20060102T150405Z")
	backuptest.Backup{ID: id, Start: now, Timeline: 1, StartLSN: "0/2000028"}.Write(t, repo)
	lock, err := repo.Lock(ctx, "backup", "backup")
	if err != nil {
		t.Fatal(err)
	}
	r, err := basebackup.Verify(ctx, repo, basebackup.VerifyOptions{})
	if err != nil || !r.OK || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], id) {
		t.Fatalf("with the lock held: %v %+v", err, r)
	}
	lock.Release(ctx)
	r, err = basebackup.Verify(ctx, repo, basebackup.VerifyOptions{})
	if err != nil || r.OK || kinds(r)[basebackup.ProblemIncomplete][0] != "backups/"+id+"/" {
		t.Fatalf("without the lock: %v %+v", err, r)
	}
}

// manifestV2 is a PostgreSQL 17+ manifest (version 2, System-Identifier
// as a JSON number too large for a float64) of system sysID.
func manifestV2(sysID string) string {
	return `{ "PostgreSQL-Backup-Manifest-Version": 2,
"System-Identifier": ` + sysID + `,
"Files": [
{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2025-01-01 00:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "00000000" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "0000" }
`
}

// TestVerifyManifestVersions: version 1 (PostgreSQL 15, 16) and version 2
// (17+) manifests pass; a version 2 manifest must name the backup's system
// (backup.json's 7000000000000000001, which differs from ...002 only past
// a float64's precision) and must have System-Identifier at all.
func TestVerifyManifestVersions(t *testing.T) {
	for _, tc := range []struct {
		name, manifest string
		ok             bool
	}{
		{"version 2 of this system", manifestV2("7000000000000000001"), true},
		{"version 3 of this system", strings.Replace(manifestV2("7000000000000000001"), `Version": 2`, `Version": 3`, 1), true},
		{"version 2 of another system", manifestV2("7000000000000000002"), false},
		{"version 2 without System-Identifier", strings.Replace(manifestV2("7000000000000000001"), `"System-Identifier": 7000000000000000001,`, "", 1), false},
		{"System-Identifier not a number", strings.Replace(manifestV2("7000000000000000001"), `7000000000000000001`, `"x"`, 1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := memRepo()
			backuptest.Init(t, repo)
			const id = "20250101T000000Z"
			backuptest.Backup{ID: id, Start: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Timeline: 1,
				StartLSN: "0/2000028", StopLSN: "0/3000100", WAL: basebackup.WALInclude, Complete: true}.Write(t, repo)
			replaceListed(t, repo, id, "backup_manifest", tc.manifest)
			r, err := basebackup.Verify(context.Background(), repo, basebackup.VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if tc.ok {
				if !r.OK {
					t.Fatalf("want no problem, got %+v", r.Problems)
				}
				return
			}
			if r.OK || kinds(r)[basebackup.ProblemBadManifest][0] != "backups/"+id+"/backup_manifest.zst" {
				t.Fatalf("want %s, got %+v", basebackup.ProblemBadManifest, r.Problems)
			}
			t.Log(r.Problems[0].Detail)
		})
	}
}
