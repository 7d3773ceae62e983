package test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/basebackup/backuptest"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
	"github.com/walkeeper/walkeeper/test/harness"
)

// runVerify runs `walkeeper verify --json` and decodes its report.
func runVerify(t *testing.T, target repoTarget, wantCode int, args ...string) basebackup.VerifyReport {
	t.Helper()
	stdout, stderr, code := runWalkeeper(t, target.env, append([]string{"verify", "--json", "--repo", target.url}, args...)...)
	if code != wantCode {
		t.Fatalf("verify %v: exit %d, want %d\n%s%s", args, code, wantCode, stdout, stderr)
	}
	var r basebackup.VerifyReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, stdout)
	}
	return r
}

func hasProblem(r basebackup.VerifyReport, kind, key string) bool {
	for _, p := range r.Problems {
		if p.Kind == kind && p.Key == key {
			return true
		}
	}
	return false
}

// TestVerifyFindsInjectedFaults injects one fault at a time into a
// fabricated repository on both backends and expects `walkeeper verify` to
// name it and exit 5; after each fault is undone verify passes again.
func TestVerifyFindsInjectedFaults(t *testing.T) {
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			ctx := context.Background()
			repo := target.open(t)
			ids, incomplete := backuptest.TimelineHistory(t, repo)
			for _, k := range backuptest.Keys(t, repo) {
				if strings.HasPrefix(k, storage.BackupsPrefix+incomplete+"/") {
					repo.Backend().Delete(ctx, k)
				}
			}
			clean := runVerify(t, target, 0)
			if !clean.OK || clean.Backups != 4 || clean.ObjectsChecked != 25 {
				t.Fatalf("clean repository: %+v", clean)
			}
			ext := repo.Codec().Ext()
			for _, f := range []struct {
				name     string
				key      string // the object the fault touches; restored after
				inject   func(key string)
				kind, at string
			}{
				{"missing segment", archivetest.WALKey("00000002000000000000000B") + ext,
					func(k string) { repo.Backend().Delete(ctx, k) },
					basebackup.ProblemMissingWAL, archivetest.WALKey("00000002000000000000000B")},
				{"flipped WAL byte", archivetest.WALKey("000000010000000000000004") + ext,
					func(k string) { backuptest.FlipByte(t, repo, k, 20) },
					basebackup.ProblemCorrupt, archivetest.WALKey("000000010000000000000004") + ext},
				{"flipped archive byte", storage.BackupKey(ids[2], "base.tar") + ext,
					func(k string) { backuptest.FlipByte(t, repo, k, -60) },
					basebackup.ProblemCorrupt, storage.BackupKey(ids[2], "base.tar") + ext},
				{"missing backup.json", storage.BackupMetaKey(ids[1]),
					func(k string) { repo.Backend().Delete(ctx, k) },
					basebackup.ProblemIncomplete, storage.BackupsPrefix + ids[1] + "/"},
				{"history contradicts segments", "wal/00000002.history" + ext,
					func(k string) { backuptest.Replace(t, repo, k, "1\t0/6000000\tno recovery target specified\n") },
					basebackup.ProblemMissingWAL, archivetest.WALKey("000000020000000000000006")},
			} {
				saved := rawObject(t, repo, f.key)
				f.inject(f.key)
				r := runVerify(t, target, 5)
				if r.OK || !hasProblem(r, f.kind, f.at) {
					t.Errorf("%s: want %s %s, got %+v", f.name, f.kind, f.at, r.Problems)
				}
				stdout, _, _ := runWalkeeper(t, target.env, "verify", "--repo", target.url)
				if !strings.Contains(stdout, "PROBLEM "+f.kind+" "+f.at+": ") {
					t.Errorf("%s: text report lacks the problem:\n%s", f.name, stdout)
				}
				if err := repo.Backend().Put(ctx, f.key, bytes.NewReader(saved)); err != nil {
					t.Fatal(err)
				}
			}
			runVerify(t, target, 0)
			runVerify(t, target, 0, "--backup", ids[2], "--parallel", "1")
			if _, stderr, code := runWalkeeper(t, target.env, "verify", "--repo", target.url, "--backup", "nope"); code != 1 || !strings.Contains(stderr, "no such backup") {
				t.Errorf("unknown backup: exit %d %s", code, stderr)
			}
		})
	}
}

func rawObject(t *testing.T, repo *storage.Repository, key string) []byte {
	t.Helper()
	rc, err := repo.Backend().Get(context.Background(), key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestVerifyAndDeleteRealRepository streams a real cluster's WAL and takes
// two backups into each backend: verify passes; delete --retain 1 removes
// the first backup and the WAL before the second's start, and verify still
// passes (the kept backup has everything it needs).
func TestVerifyAndDeleteRealRepository(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "verify"})
	c.Pgbench(t, "-i", "-s", "1", "-q")
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			repo := target.open(t)
			wk := startWalkeeper(t, target.env, "stream", "--repo", target.url, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "verify_"+target.name)
			waitFor(t, time.Minute, "the stream heartbeat", func() bool {
				s, _ := repo.Streams(context.Background())
				return len(s) == 1 && s[0].Live(time.Now())
			})
			first := runBackup(t, target.env, target.url, c.DSN(harness.ReplicationUser))
			c.Pgbench(t, "-t", "200")
			switchAndWait(t, c)
			switchAndWait(t, c)
			second := runBackup(t, target.env, target.url, c.DSN(harness.ReplicationUser))
			last := switchAndWait(t, c)
			waitFor(t, time.Minute, "walkeeper to store "+last, func() bool {
				_, ok := walObjects(t, repo)[last]
				return ok
			})
			if code := wk.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("stream exit %d:\n%s", code, wk.output())
			}
			r := runVerify(t, target, 0)
			if r.Backups != 2 || r.ObjectsChecked < 8 {
				t.Errorf("verify: %+v", r)
			}
			stdout, stderr, code := runWalkeeper(t, target.env, "delete", "--repo", target.url, "--retain", "1")
			if code != 0 || !strings.Contains(stdout, "deleted backup "+first) {
				t.Fatalf("delete: exit %d\n%s%s", code, stdout, stderr)
			}
			meta := readMeta(t, repo, second)
			startSeg := archive.SegmentName(meta.Timeline, lsnOf(t, meta.StartLSN)/segSize, segSize)
			for name := range walObjects(t, repo) {
				if (archive.KindOf(name) == archive.Segment) && name < startSeg {
					t.Errorf("%s, before the kept backup's start segment %s, is still there", name, startSeg)
				}
			}
			if _, ok := walObjects(t, repo)[startSeg]; !ok {
				t.Errorf("the kept backup's start segment %s was deleted", startSeg)
			}
			r = runVerify(t, target, 0)
			if r.Backups != 1 {
				t.Errorf("verify after delete: %+v", r)
			}
			t.Logf("verify read %d objects (%d bytes); kept backup %s from segment %s", r.ObjectsChecked, r.BytesRead, second, startSeg)
		})
	}
}
