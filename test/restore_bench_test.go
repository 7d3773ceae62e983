package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
