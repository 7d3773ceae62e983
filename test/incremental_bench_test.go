package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// BenchmarkIncremental (issue 14) compares an incremental backup with a
// full one of the same state on PostgreSQL 17: a pgbench database of at
// least 1 GB (scale 75) and a full backup, then 5% of pgbench_accounts'
// rows updated and, of that state, an incremental backup (parent: the full
// one) and a full one. It does it twice: with the updated rows spread over
// the table (every 20th aid, so nearly every heap page and many index
// pages change: the worst case for block-level incrementals) and with
// them together (a run of 5% of the aids, a twentieth of the pages). For
// each it records the bytes the server sent (backup.json size: the
// uncompressed tar stream), the bytes stored (zstd), the backup's wall time,
// and the wall time of restoring the full backup and the incremental on it
// against restoring the full backup of the same state (the median of
// three restores each, alternating). Autovacuum is off, so what changed is
// what the updates changed. Every command runs after `sync`, into a local
// repository; pgbench rows are mostly blank filler, so zstd stores a
// twentieth of what the server sends.
//
//	make bench   (or: go test -run '^$' -bench Incremental -benchtime 1x ./test/)
func BenchmarkIncremental(b *testing.B) {
	harness.RequireServer(b, 17)
	bin := filepath.Join(harness.MakeDir(b, "bench-incr-bin"), "walkeeper")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/walkeeper").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	c := harness.StartCluster(b, harness.ClusterOptions{Name: "bench-incr", Major: 17, ExtraConf: map[string]string{
		"summarize_wal": "on", "autovacuum": "off", "max_wal_size": "4GB", "checkpoint_timeout": "30min", "shared_buffers": "256MB",
	}})
	const scale = 75
	c.Pgbench(b, "-i", "-s", strconv.Itoa(scale), "-q")
	c.Exec(b, "CHECKPOINT")
	dbSize, _ := strconv.ParseInt(c.QueryString(b, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database"), 10, 64)
	if dbSize < 1e9 {
		b.Fatalf("the databases hold %d bytes, want at least 1 GB", dbSize)
	}
	rows := int64(scale) * 100000
	b.Logf("databases: %.0f MB, pgbench_accounts %d rows", float64(dbSize)/1e6, rows)
	repoDir := filepath.Join(harness.MakeDir(b, "bench-incr-repo"), "repo")
	repo := func() *storage.Repository {
		r, err := storage.Open(context.Background(), storage.Options{Repo: repoDir})
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	syncAll := func() {
		if out, err := exec.Command("sync").CombinedOutput(); err != nil {
			b.Fatalf("sync: %v %s", err, out)
		}
	}
	backup := func(label string, extra ...string) (*basebackup.Meta, time.Duration) {
		syncAll()
		args := append([]string{"backup", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--wal", "include", "--log-level", "warn"}, extra...)
		cmd := exec.Command(bin, args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		began := time.Now()
		out, err := cmd.Output()
		wall := time.Since(began)
		if err != nil {
			b.Fatalf("backup %s: %v\n%s", label, err, stderr.String())
		}
		var m basebackup.Meta
		if err := repo().ReadJSON(context.Background(), storage.BackupMetaKey(strings.TrimSpace(string(out))), &m); err != nil {
			b.Fatal(err)
		}
		return &m, wall
	}
	restore := func(label, id string) time.Duration {
		parent := harness.MakeDir(b, "bench-incr-restore")
		defer os.RemoveAll(parent)
		giveToPostgres(b, repoDir) // the restored server's restore_command reads it
		syncAll()
		cmd := exec.Command(bin, "restore", "--repo", repoDir, "--target-dir", filepath.Join(parent, "data"), "--backup", id, "--log-level", "warn")
		began := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("restore %s: %v\n%s", label, err, out)
		}
		return time.Since(began)
	}

	b.ResetTimer()
	for range b.N {
		base, _ := backup("the first full")
		for _, sc := range []struct {
			name, where string
		}{
			{"spread", "aid % 20 = 0"},
			{"clustered", "aid <= " + strconv.FormatInt(rows/20, 10)},
		} {
			c.Exec(b, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE "+sc.where)
			incr, incrWall := backup(sc.name+" incremental", "--incremental")
			if incr.Kind != basebackup.KindIncremental || incr.Parent != base.ID {
				b.Fatalf("%s: backup %s is %s on %q, want incremental on %s", sc.name, incr.ID, incr.KindName(), incr.Parent, base.ID)
			}
			full, fullWall := backup(sc.name + " full")
			// Restores repeat (three rounds, each starting with the other
			// one): the median of each.
			var incrRuns, fullRuns []time.Duration
			for round := range 3 {
				if round%2 == 0 {
					incrRuns = append(incrRuns, restore(sc.name+" full+incremental", incr.ID))
				}
				fullRuns = append(fullRuns, restore(sc.name+" full", full.ID))
				if round%2 == 1 {
					incrRuns = append(incrRuns, restore(sc.name+" full+incremental", incr.ID))
				}
			}
			restoreIncr, restoreFull := medianDuration(incrRuns), medianDuration(fullRuns)
			b.Logf("%s restores: full+incremental %v, full %v", sc.name, incrRuns, fullRuns)
			for _, r := range []struct {
				tool          string
				m             *basebackup.Meta
				backup, restr time.Duration
			}{
				{"incremental-" + sc.name, incr, incrWall, restoreIncr},
				{"full-" + sc.name, full, fullWall, restoreFull},
			} {
				benchRecord("incr sent MB", r.tool, float64(r.m.Size)/1e6)
				benchRecord("incr stored MB", r.tool, float64(r.m.StoredSize)/1e6)
				benchRecord("incr backup-s", r.tool, r.backup.Seconds())
				benchRecord("incr restore-s", r.tool, r.restr.Seconds())
				b.Logf("%-22s sent %7.1f MB  stored %7.1f MB  backup %6.2f s  restore %6.2f s",
					r.tool, float64(r.m.Size)/1e6, float64(r.m.StoredSize)/1e6, r.backup.Seconds(), r.restr.Seconds())
			}
			// The next incremental builds on this state's full backup.
			base = full
		}
	}
}

func medianDuration(d []time.Duration) time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	return d[len(d)/2]
}
