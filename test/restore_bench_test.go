package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

// BenchmarkRestoreSync measures what durability costs a restore: a backup
// of a ~130 MB database (pgbench scale 7, about a thousand files) restored
// from a local repository with every file and directory fsynced (the
// default), with --no-sync (no fsync at all, which is what restore did
// before it was made durable), and pg_basebackup -Fp of the same database
// (which fsyncs the whole directory at the end) as the yardstick. The three
// run in turn, five rounds each starting with another of them, with `sync`
// (not timed) before each run so one run's dirty pages are not flushed
// during the next; it reports the median wall time of each and the ratio
// durable / --no-sync.
//
//	make bench   (or: go test -run '^$' -bench RestoreSync -benchtime 1x ./test/)
func BenchmarkRestoreSync(b *testing.B) {
	// Where the restored server's OS user can run it (restore checks).
	bin := filepath.Join(harness.MakeDir(b, "bench-restore-bin"), "walkeeper")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/walkeeper").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	c := harness.StartCluster(b, harness.ClusterOptions{Name: "bench-restore"})
	c.Pgbench(b, "-i", "-s", "7", "-q")
	c.Exec(b, "CHECKPOINT")
	b.Logf("database size: %s bytes", c.QueryString(b, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database"))
	repo := filepath.Join(harness.MakeDir(b, "bench-restore-repo"), "repo")
	cmd := exec.Command(bin, "backup", "--repo", repo, "--dsn", c.DSN(harness.ReplicationUser), "--wal", "include")
	cmd.Env = append(os.Environ(), "WALKEEPER_LOG_LEVEL=warn")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("backup: %v\n%s", err, out)
	}
	giveToPostgres(b, repo) // the restored server's restore_command reads it
	runs := []struct {
		name string
		cmd  func(dir string) *exec.Cmd
	}{
		{"restore", func(dir string) *exec.Cmd {
			return exec.Command(bin, "restore", "--repo", repo, "--target-dir", dir, "--log-level", "warn")
		}},
		{"restore-no-sync", func(dir string) *exec.Cmd {
			return exec.Command(bin, "restore", "--repo", repo, "--target-dir", dir, "--no-sync", "--log-level", "warn")
		}},
		{"pg_basebackup-Fp", func(dir string) *exec.Cmd {
			return c.Command(context.Background(), harness.PGBin("pg_basebackup"), "-D", dir, "-Fp", "-X", "fetch", "-c", "fast",
				"-d", c.DSN(harness.ReplicationUser))
		}},
	}
	const rounds = 5
	b.ResetTimer()
	for range b.N {
		walls := map[string][]time.Duration{}
		for round := range rounds {
			// Each round starts with another command, so none always
			// follows the same one.
			for i := range runs {
				r := runs[(round+i)%len(runs)]
				parent := harness.MakeDir(b, "bench-restore-"+r.name)
				dir := filepath.Join(parent, "data")
				if out, err := exec.Command("sync").CombinedOutput(); err != nil {
					b.Fatalf("sync: %v %s", err, out)
				}
				m := measure(b, r.name, r.cmd(dir), dir)
				walls[r.name] = append(walls[r.name], m.wall)
				if round == 0 && r.name == "restore" {
					files, dirs := countTree(b, dir)
					b.Logf("restored %.0f MB: %d files, %d directories", m.storedMB, files, dirs)
				}
				os.RemoveAll(parent)
			}
		}
		median := func(name string) time.Duration {
			w := slices.Clone(walls[name])
			slices.Sort(w)
			return w[len(w)/2]
		}
		for _, r := range runs {
			b.ReportMetric(median(r.name).Seconds(), r.name+"-wall-s")
			b.Logf("%-18s median wall %6.2f s  (runs %v)", r.name, median(r.name).Seconds(), walls[r.name])
		}
		ratio := median("restore").Seconds() / median("restore-no-sync").Seconds()
		b.ReportMetric(ratio, "durable/no-sync")
		b.Logf("durable / --no-sync = %.2f", ratio)
	}
}

func countTree(tb testing.TB, dir string) (files, dirs int) {
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		switch {
		case err != nil:
		case d.IsDir():
			dirs++
		case d.Type().IsRegular():
			files++
		}
		return nil
	})
	return files, dirs
}

// BenchmarkRestoreDelta compares resyncing an existing data directory
// (restore --delta) with a full restore of the same backup, wall time and
// bytes written, in one run: a 1.1 GB pgbench database (scale 75, accounts
// in 20 range partitions), restored once as "the replica", then 5% of the
// rows changed and a new backup taken. Two shapes of the same 5%: the
// newest rows (aid in the first partition, as when recent data changes)
// and every twentieth row (spread over every partition): a delta restore
// compares whole files, so the second rewrites nearly everything.
//
//	make bench   (or: go test -run '^$' -bench RestoreDelta -benchtime 1x ./test/)
func BenchmarkRestoreDelta(b *testing.B) {
	bin := filepath.Join(harness.MakeDir(b, "bench-delta-bin"), "walkeeper")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/walkeeper").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	c := harness.StartCluster(b, harness.ClusterOptions{Name: "bench-delta", ExtraConf: map[string]string{
		"max_wal_size": "4GB", "shared_buffers": "256MB", "checkpoint_timeout": "30min",
	}})
	c.Pgbench(b, "-i", "-s", "75", "--partitions", "20", "-q")
	c.Exec(b, "CHECKPOINT")
	b.Logf("database size: %s bytes", c.QueryString(b, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database"))
	repo := filepath.Join(harness.MakeDir(b, "bench-delta-repo"), "repo")
	backup := func() string {
		cmd := exec.Command(bin, "backup", "--repo", repo, "--dsn", c.DSN(harness.ReplicationUser), "--wal", "include", "--log-level", "warn")
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("backup: %v\n%s", err, out)
		}
		giveToPostgres(b, repo)
		return strings.TrimSpace(string(out))
	}
	// restore runs one restore after an untimed sync and returns its wall
	// time and the bytes it reported writing.
	restore := func(dir, id string, extra ...string) (time.Duration, float64, string) {
		if out, err := exec.Command("sync").CombinedOutput(); err != nil {
			b.Fatalf("sync: %v %s", err, out)
		}
		cmd := exec.Command(bin, append([]string{"restore", "--repo", repo, "--backup", id, "--target-dir", dir, "--log-level", "warn"}, extra...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		began := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("restore %v: %v\n%s", extra, err, stderr.String())
		}
		wall := time.Since(began)
		line := strings.TrimSpace(stderr.String())
		if i := strings.LastIndex(line, "\n"); i >= 0 {
			line = line[i+1:]
		}
		m := regexp.MustCompile(`wrote [0-9]+ files \(([0-9]+) bytes\)`).FindStringSubmatch(line)
		if m == nil {
			b.Fatalf("restore printed no summary: %s", stderr.String())
		}
		written, _ := strconv.ParseFloat(m[1], 64)
		return wall, written, line
	}
	replica := filepath.Join(harness.MakeDir(b, "bench-delta-replica"), "data")
	b.ResetTimer()
	for range b.N {
		os.RemoveAll(replica)
		restore(replica, backup()) // the replica before the changes
		for _, shape := range []struct{ name, where string }{
			{"5%-newest", "aid <= 375000"},
			{"5%-spread", "aid % 20 = 0"},
		} {
			c.Exec(b, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE "+shape.where)
			c.Exec(b, "CHECKPOINT")
			id := backup()
			fresh := filepath.Join(harness.MakeDir(b, "bench-delta-full"), "data")
			fullWall, fullBytes, _ := restore(fresh, id)
			os.RemoveAll(fresh)
			deltaWall, deltaBytes, summary := restore(replica, id, "--delta")
			b.Logf("%s: full restore %.1f s, %.0f MB written; restore --delta %.1f s, %.0f MB written (%s)",
				shape.name, fullWall.Seconds(), fullBytes/1e6, deltaWall.Seconds(), deltaBytes/1e6, summary)
			benchRecord("resync wall-s", "full-restore-"+shape.name, fullWall.Seconds())
			benchRecord("resync wall-s", "restore-delta-"+shape.name, deltaWall.Seconds())
			benchRecord("resync written-MB", "full-restore-"+shape.name, fullBytes/1e6)
			benchRecord("resync written-MB", "restore-delta-"+shape.name, deltaBytes/1e6)
			b.ReportMetric(deltaWall.Seconds()/fullWall.Seconds(), shape.name+"-delta/full-wall")
		}
	}
}
