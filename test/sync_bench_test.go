package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

// BenchmarkSynchronousCommits measures commits per second of one client
// inserting one row per transaction while the only synchronous standby is
// walkeeper stream --synchronous into a local repository, the same into an
// S3 repository (versitygw on this host), and pg_receivewal --synchronous
// into a local directory, one after the other in the same run on the same
// cluster (16 MB segments, fsync on), each for the same time. It prints
// the three side by side with walkeeper's ratio to pg_receivewal. Compare
// ratios of one run: the machine is shared.
//
//	make bench   (or: go test -run '^$' -bench SynchronousCommits -benchtime 1x ./test/)
func BenchmarkSynchronousCommits(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "walkeeper")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/walkeeper").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	const each = 15 * time.Second
	c := harness.StartCluster(b, harness.ClusterOptions{Name: "bench-sync"})
	srv := harness.StartS3(b)
	s3env := append(srv.Env(), "WALKEEPER_S3_ENDPOINT="+srv.Endpoint, "WALKEEPER_S3_PATH_STYLE=true", "WALKEEPER_LOG_LEVEL=warn")
	c.Exec(b, "CREATE TABLE sync_bench (id bigint, at timestamptz DEFAULT now())")
	type tool struct {
		name string
		cmd  func(slot, dir string) *exec.Cmd
	}
	tools := []tool{
		{"pg_receivewal --synchronous (local)", func(slot, dir string) *exec.Cmd {
			return c.Command(context.Background(), harness.PGBin("pg_receivewal"), "-D", dir, "-S", slot, "--synchronous", "-n",
				"-d", c.DSN(harness.ReplicationUser)+"&application_name="+slot)
		}},
		{"walkeeper --synchronous (local)", func(slot, dir string) *exec.Cmd {
			cmd := exec.Command(bin, "stream", "--repo", filepath.Join(dir, "repo"), "--slot", slot, "--synchronous",
				"--dsn", c.DSN(harness.ReplicationUser))
			cmd.Env = append(os.Environ(), "WALKEEPER_LOG_LEVEL=warn")
			return cmd
		}},
		{"walkeeper --synchronous (S3)", func(slot, dir string) *exec.Cmd {
			cmd := exec.Command(bin, "stream", "--repo", "s3://"+srv.Bucket+"/"+slot, "--slot", slot, "--synchronous",
				"--dsn", c.DSN(harness.ReplicationUser))
			cmd.Env = append(os.Environ(), s3env...)
			return cmd
		}},
	}
	rates := make([]float64, len(tools))
	for i := range b.N {
		for ti, tl := range tools {
			slot := fmt.Sprintf("syncbench_%d_%d", ti, i)
			c.Exec(b, fmt.Sprintf("SELECT pg_create_physical_replication_slot('%s', true)", slot))
			dir := harness.MakeDir(b, "bench-sync")
			cmd := tl.cmd(slot, dir)
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				b.Fatalf("%s: %v", tl.name, err)
			}
			waitForTB(b, time.Minute, tl.name+" to stream", func() bool {
				return c.QueryString(b, "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'", slot) == "1"
			})
			c.Exec(b, fmt.Sprintf("ALTER SYSTEM SET synchronous_standby_names = '%s'", slot))
			c.Exec(b, "SELECT pg_reload_conf()")
			waitForTB(b, time.Minute, tl.name+" to be the synchronous standby", func() bool {
				return c.QueryString(b, "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", slot) == "sync"
			})
			conn := c.Conn(b)
			ctx, cancel := context.WithTimeout(context.Background(), each+time.Minute)
			n := 0
			began := time.Now()
			for time.Since(began) < each {
				if _, err := conn.Exec(ctx, "INSERT INTO sync_bench (id) VALUES ($1)", n); err != nil {
					b.Fatalf("%s: insert: %v", tl.name, err)
				}
				n++
			}
			rates[ti] = float64(n) / time.Since(began).Seconds()
			cancel()
			conn.Close(context.Background())
			c.Exec(b, "ALTER SYSTEM SET synchronous_standby_names = ''")
			c.Exec(b, "SELECT pg_reload_conf()")
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			c.Exec(b, fmt.Sprintf("SELECT pg_drop_replication_slot('%s')", slot))
			b.ReportMetric(rates[ti], fmt.Sprintf("commits/s-%d", ti))
		}
		var t strings.Builder
		fmt.Fprintf(&t, "\n| synchronous standby | commits/s | ratio to pg_receivewal |\n|---|---|---|\n")
		for ti, tl := range tools {
			fmt.Fprintf(&t, "| %s | %.0f | %.2f |\n", tl.name, rates[ti], rates[ti]/rates[0])
		}
		b.Log(t.String())
	}
}
