package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

// TestScaleOutReplicasInParallel seeds three read replicas at once from one
// backup in the repository. The primary logs every replication command it
// receives: across the whole run it sees exactly one BASE_BACKUP (the
// backup's), so the replicas' base data came from the repository alone;
// each replica then streams from its own slot and has the primary's data.
func TestScaleOutReplicasInParallel(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "scale-primary",
		ExtraConf: map[string]string{"log_replication_commands": "on"}})
	repoDir := filepath.Join(harness.MakeDir(t, "scale-repo"), "repo")
	wk := startWalkeeperAsPostgres(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
	c.Pgbench(t, "-i", "-s", "2", "-q")
	id := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser))
	c.Pgbench(t, "-T", "2", "-c", "2") // WAL after the backup, served by the repository and then the slots

	passDir := harness.MakeDir(t, "scale-pgpass")
	passfile := filepath.Join(passDir, "pgpass")
	os.WriteFile(passfile, []byte("127.0.0.1:"+strconv.Itoa(c.Port())+":*:walkeeper:"+c.Password()+"\n"), 0o600)
	if os.Geteuid() == 0 {
		chownPostgres(t, passfile)
	}
	dsn := "host=127.0.0.1 port=" + strconv.Itoa(c.Port()) + " user=walkeeper dbname=postgres sslmode=disable passfile=" + passfile

	const k = 3
	replicas := make([]*harness.Cluster, k)
	errs := make([]string, k)
	var wg sync.WaitGroup
	for i := range k {
		replicas[i] = c.RestoreTarget(t, fmt.Sprintf("scale-replica%d", i+1))
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := replicas[i]
			_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--backup", id, "--target-dir", r.DataDir(),
				"--as-replica", "--dsn", dsn, "--slot", fmt.Sprintf("replica%d", i+1), "--port", strconv.Itoa(r.Port()))
			if code != 0 {
				errs[i] = fmt.Sprintf("exit %d: %s", code, stderr)
			}
		}(i)
	}
	wg.Wait()
	for i, e := range errs {
		if e != "" {
			t.Fatalf("restore --as-replica of replica%d: %s", i+1, e)
		}
	}
	for _, r := range replicas {
		r.SetEnv([]string{raceEnv})
		r.StartRestored(t)
	}
	waitFor(t, 2*time.Minute, "all replicas to stream from the primary", func() bool {
		return c.QueryString(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'replica%' AND state = 'streaming'") == strconv.Itoa(k)
	})
	c.Exec(t, "CREATE TABLE after_seed AS SELECT g FROM generate_series(1, 1000) g")
	target := c.QueryString(t, "SELECT pg_current_wal_lsn()::text")
	const sum = "SELECT count(*) || ':' || md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) FROM pgbench_accounts"
	want := c.QueryString(t, sum)
	for i, r := range replicas {
		waitFor(t, time.Minute, "replica to replay", func() bool {
			return r.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= '"+target+"'::pg_lsn") == "t"
		})
		if got := r.QueryString(t, sum); got != want {
			t.Errorf("replica%d: pgbench_accounts %s, primary %s", i+1, got, want)
		}
		if got := r.QueryString(t, "SELECT count(*) FROM after_seed"); got != "1000" {
			t.Errorf("replica%d: %s rows written after seeding, want 1000", i+1, got)
		}
		if !strings.Contains(readLog(t, r), "restored log file") {
			t.Errorf("replica%d did not fetch WAL from the repository", i+1)
		}
	}
	log := readLog(t, c)
	if n := strings.Count(log, "received replication command: BASE_BACKUP"); n != 1 {
		t.Errorf("the primary received %d BASE_BACKUP commands, want 1 (walkeeper backup's only)", n)
	}
	wk.stop(t, syscall.SIGTERM)
}
