package test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

// replicaPassDSN is a DSN for ReplicationUser on primary whose password
// comes from a passfile the replica (running as postgres) can read: what
// restore --as-replica writes into primary_conninfo.
func replicaPassDSN(t *testing.T, primary *harness.Cluster) string {
	t.Helper()
	passfile := filepath.Join(harness.MakeDir(t, "pgpass"), "pgpass")
	line := "127.0.0.1:" + strconv.Itoa(primary.Port()) + ":*:" + harness.ReplicationUser + ":" + primary.Password() + "\n"
	if err := os.WriteFile(passfile, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		chownPostgres(t, passfile)
	}
	return "host=127.0.0.1 port=" + strconv.Itoa(primary.Port()) + " user=" + harness.ReplicationUser + " dbname=postgres sslmode=disable passfile=" + passfile
}

var (
	deltaLineRE = regexp.MustCompile(`delta: kept ([0-9]+) files \(([0-9]+) bytes\), wrote ([0-9]+) files \(([0-9]+) bytes\), removed ([0-9]+)`)
	wroteLineRE = regexp.MustCompile(`(?m)^wrote ([0-9]+) files \(([0-9]+) bytes\)$`)
)

// deltaFigures is what restore --delta reported.
type deltaFigures struct {
	keptFiles, keptBytes, wroteFiles, wroteBytes, removed int64
}

func parseDelta(t *testing.T, stderr string) deltaFigures {
	t.Helper()
	m := deltaLineRE.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("restore --delta printed no summary line:\n%s", stderr)
	}
	n := func(i int) int64 { v, _ := strconv.ParseInt(m[i], 10, 64); return v }
	return deltaFigures{n(1), n(2), n(3), n(4), n(5)}
}

// fullRestoreBytes restores backup id into a scratch directory (no server
// is started from it) and returns the bytes that restore wrote.
func fullRestoreBytes(t *testing.T, target repoTarget, origin *harness.Cluster, id string, extra ...string) int64 {
	t.Helper()
	scratch := origin.RestoreTarget(t, origin.Name()+"-full")
	args := append([]string{"restore", "--repo", target.url, "--backup", id, "--target-dir", scratch.DataDir(), "--no-sync"}, extra...)
	_, stderr, code := runWalkeeper(t, target.env, args...)
	if code != 0 {
		t.Fatalf("full restore: exit %d: %s", code, stderr)
	}
	m := wroteLineRE.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("restore printed no \"wrote\" line:\n%s", stderr)
	}
	v, _ := strconv.ParseInt(m[2], 10, 64)
	os.RemoveAll(scratch.DataDir())
	return v
}

// deltaData is what the resynced server must have as its primary has it.
const deltaData = `SELECT (SELECT count(*) || ':' || md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) FROM pgbench_accounts)
	|| '/' || (SELECT count(*) || ':' || coalesce(sum(n), 0) FROM churn)`

// waitStreamingEqual waits until replica streams from primary under
// application_name app and has replayed everything, then compares data.
func waitStreamingEqual(t *testing.T, primary, replica *harness.Cluster, app string) {
	t.Helper()
	waitFor(t, 2*time.Minute, replica.Name()+" to stream from "+primary.Name(), func() bool {
		return primary.QueryString(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'", app) == "1"
	})
	waitReplayed(t, primary, replica)
	if p, r := primary.QueryString(t, deltaData), replica.QueryString(t, deltaData); p != r {
		t.Errorf("data differ: primary %s, resynced %s", p, r)
	}
	if replica.QueryString(t, "SELECT pg_is_in_recovery()") != "t" {
		t.Error("the resynced server is not a replica")
	}
}

// checkDelta logs the resync's figures beside the full restore's and
// checks the resync kept files and wrote less.
func checkDelta(t *testing.T, what string, d deltaFigures, full int64) {
	t.Helper()
	t.Logf("%s: restore --delta kept %d files (%d bytes), wrote %d files (%d bytes), removed %d; a full restore of the same backup wrote %d bytes (delta/full = %.2f)",
		what, d.keptFiles, d.keptBytes, d.wroteFiles, d.wroteBytes, d.removed, full, float64(d.wroteBytes)/float64(full))
	if d.keptFiles == 0 || d.wroteBytes >= full {
		t.Errorf("%s: the resync kept %d files and wrote %d bytes, a full restore %d: want files kept and fewer bytes", what, d.keptFiles, d.wroteBytes, full)
	}
}

// TestRestoreDeltaReplicaSlotInvalidated: a replica restored from the
// repository is stopped while its primary writes and checkpoints until
// the replica's slot is invalidated (max_slot_wal_keep_size): it can never
// stream again. restore --delta --as-replica from the newest backup
// resyncs it in place, its tablespace (relocated) included (a running
// replica is refused first); it starts, streams on its slot (recreated)
// and has the primary's data.
func TestRestoreDeltaReplicaSlotInvalidated(t *testing.T) {
	t.Parallel()
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			p := harness.StartCluster(t, harness.ClusterOptions{Name: "dsi-" + target.name, ExtraConf: map[string]string{
				"max_slot_wal_keep_size": "32MB", "max_wal_size": "64MB", "min_wal_size": "32MB",
			}})
			p.Pgbench(t, "-i", "-s", "1", "-q")
			tsDir := harness.MakeDir(t, "dsi-ts")
			p.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+tsDir+"'")
			p.Exec(t, "CREATE TABLE churn (n int) TABLESPACE ts1")
			p.Exec(t, "INSERT INTO churn SELECT g FROM generate_series(1, 1000) g")
			p.Exec(t, "CREATE TABLE filler (b text)")
			wk := startWalkeeperAsPostgres(t, target.env, "stream", "--repo", target.url, "--dsn", p.DSN(harness.ReplicationUser), "--slot", "wk")
			waitFor(t, time.Minute, "the stream to start", func() bool {
				return p.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active") == "1"
			})
			first := runBackup(t, target.env, target.url, p.DSN(harness.ReplicationUser))
			giveToPostgres(t, target.url) // the backup ran as root; the replica's restore_command reads the repository
			dsn := replicaPassDSN(t, p)

			r := p.RestoreTarget(t, "dsi-"+target.name+"-replica")
			// The replica's tablespace is elsewhere on this machine.
			replicaTS := filepath.Join(harness.MakeDir(t, "dsi-replica-ts"), "ts")
			replica := []string{"restore", "--repo", target.url, "--target-dir", r.DataDir(), "--as-replica", "--dsn", dsn,
				"--slot", "r1", "--port", strconv.Itoa(r.Port()), "--tablespace-map", tsDir + "=" + replicaTS}
			if _, stderr, code := runWalkeeper(t, target.env, append(replica, "--backup", first)...); code != 0 {
				t.Fatalf("restore --as-replica: exit %d: %s", code, stderr)
			}
			r.SetEnv(append(srvEnvOnly(target.env), raceEnv))
			r.StartRestored(t)
			waitStreamingEqual(t, p, r, "r1")

			// A running replica is refused, and keeps running.
			if _, stderr, code := runWalkeeper(t, target.env, append(replica, "--delta")...); code != 1 || !strings.Contains(stderr, "running server") {
				t.Fatalf("restore --delta into a running replica: exit %d, want 1 naming the running server:\n%s", code, stderr)
			}
			if r.QueryString(t, "SELECT pg_is_in_recovery()") != "t" {
				t.Fatal("the replica stopped answering after the refused resync")
			}
			r.Stop(t)

			// 5% of the accounts change; WAL and checkpoints until the
			// replica's slot is lost. The stream keeps up (its slot is
			// waited for before each checkpoint).
			p.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 5000")
			p.Exec(t, "UPDATE churn SET n = n + 1 WHERE n % 2 = 0")
			for i := 0; p.QueryString(t, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'r1'") != "lost"; i++ {
				if i == 15 {
					t.Fatalf("slot r1 is still %s after %d rounds of writes and checkpoints", p.QueryString(t, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'r1'"), i)
				}
				p.Exec(t, "INSERT INTO filler SELECT repeat('x', 200) FROM generate_series(1, 60000)")
				p.Exec(t, "TRUNCATE filler")
				lsn := p.QueryString(t, "SELECT pg_current_wal_lsn()::text")
				waitFor(t, time.Minute, "the stream's slot to pass "+lsn, func() bool {
					return p.QueryString(t, "SELECT coalesce(restart_lsn >= $1::pg_lsn, false)::text FROM pg_replication_slots WHERE slot_name = 'wk'", lsn) == "true"
				})
				p.Exec(t, "CHECKPOINT")
			}
			newest := runBackup(t, target.env, target.url, p.DSN(harness.ReplicationUser))
			giveToPostgres(t, target.url)
			full := fullRestoreBytes(t, target, p, newest, "--tablespace-map", tsDir+"="+filepath.Join(harness.MakeDir(t, "dsi-full-ts"), "ts"))

			stdout, stderr, code := runWalkeeper(t, target.env, append(replica, "--delta")...)
			if code != 0 {
				t.Fatalf("restore --delta --as-replica: exit %d: %s", code, stderr)
			}
			if got := strings.TrimSpace(stdout); got != newest {
				t.Errorf("restore --delta resynced from backup %q, want the newest, %s", got, newest)
			}
			checkDelta(t, "replica after its slot was invalidated", parseDelta(t, stderr), full)
			if p.QueryString(t, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'r1'") == "lost" {
				t.Error("slot r1 is still invalidated after the resync")
			}
			r.StartRestored(t)
			waitStreamingEqual(t, p, r, "r1")
			if got := r.QueryString(t, "SELECT spcname FROM pg_tablespace t JOIN pg_class c ON c.reltablespace = t.oid WHERE c.relname = 'churn'"); got != "ts1" {
				t.Errorf("churn is in tablespace %q on the resynced replica, want ts1", got)
			}
			wk.stop(t, syscall.SIGTERM)
		})
	}
}

// TestRestoreDeltaOldPrimaryAfterFailover: the primary is killed, its
// standby promoted (timeline 2) and written to; the old primary's
// directory (stale postmaster.pid, WAL of timeline 1) is resynced with
// restore --delta --as-replica from a backup of the new primary, starts as
// its replica, streams, and has its data.
func TestRestoreDeltaOldPrimaryAfterFailover(t *testing.T) {
	t.Parallel()
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			old := harness.StartCluster(t, harness.ClusterOptions{Name: "dfo-" + target.name})
			old.Pgbench(t, "-i", "-s", "1", "-q")
			old.Exec(t, "CREATE TABLE churn (n int)")
			old.Exec(t, "INSERT INTO churn SELECT g FROM generate_series(1, 1000) g")
			standby := old.CreateStandby(t, "dfo-"+target.name+"-standby")
			wk := startWalkeeperAsPostgres(t, target.env, "stream", "--repo", target.url,
				"--dsn", multiHostDSN(old.Password(), old.Port(), standby.Port()), "--slot", "wk")
			waitFor(t, time.Minute, "the stream to start on the primary", func() bool {
				return old.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active") == "1"
			})
			old.Exec(t, "UPDATE churn SET n = n + 1 WHERE n <= 100")
			// The stream has stored timeline 1 up to here (it has run for
			// a while in the fleet), and the standby has replayed it.
			repo := target.open(t)
			seg := switchAndWait(t, old)
			waitFor(t, 2*time.Minute, "the stream to store "+seg, func() bool { _, ok := walObjects(t, repo)[seg]; return ok })
			waitReplayed(t, old, standby)

			old.Kill(t) // leaves postmaster.pid and timeline 1 WAL
			standby.Promote(t)
			standby.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid <= 5000")
			standby.Exec(t, "INSERT INTO churn SELECT g FROM generate_series(1, 500) g")
			last := switchAndWait(t, standby)
			if !strings.HasPrefix(last, "00000002") {
				t.Fatalf("the promoted standby writes %s, want timeline 2", last)
			}
			waitFor(t, 2*time.Minute, "the stream to store "+last+" from the new primary", func() bool {
				_, ok := walObjects(t, repo)[last]
				return ok
			})
			id := runBackup(t, target.env, target.url, standby.DSN(harness.ReplicationUser))
			giveToPostgres(t, target.url)
			if tli := readMeta(t, repo, id).Timeline; tli != 2 {
				t.Fatalf("backup %s of the new primary is on timeline %d, want 2", id, tli)
			}
			full := fullRestoreBytes(t, target, standby, id)

			_, stderr, code := runWalkeeper(t, target.env, "restore", "--repo", target.url, "--target-dir", old.DataDir(), "--delta",
				"--as-replica", "--dsn", replicaPassDSN(t, standby), "--slot", "oldprimary", "--port", strconv.Itoa(old.Port()))
			if code != 0 {
				t.Fatalf("restore --delta --as-replica of the old primary: exit %d: %s", code, stderr)
			}
			checkDelta(t, "old primary after a failover", parseDelta(t, stderr), full)
			if _, err := os.Stat(filepath.Join(old.DataDir(), "postmaster.pid")); !os.IsNotExist(err) {
				t.Errorf("the stale postmaster.pid is still there: %v", err)
			}
			names, _ := os.ReadDir(filepath.Join(old.DataDir(), "pg_wal"))
			for _, n := range names {
				if n.Name() != "archive_status" {
					t.Errorf("pg_wal/%s survived the resync: timeline 1 WAL of the old primary", n.Name())
				}
			}
			old.SetEnv(append(srvEnvOnly(target.env), raceEnv))
			old.StartRestored(t)
			waitStreamingEqual(t, standby, old, "oldprimary")
			if got := old.QueryString(t, "SELECT timeline_id FROM pg_control_checkpoint()"); got != "2" {
				t.Errorf("the resynced old primary is on timeline %s, want 2", got)
			}
			wk.stop(t, syscall.SIGTERM)
		})
	}
}
