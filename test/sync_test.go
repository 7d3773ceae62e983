package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

// syncSetup is a cluster with a synchronous walkeeper stream named in
// synchronous_standby_names, and a base backup taken through it.
type syncSetup struct {
	c      *harness.Cluster
	target repoTarget
	args   []string
	backup string
}

func startSyncSetup(t *testing.T, target repoTarget, name string, conf map[string]string) (*syncSetup, *proc) {
	t.Helper()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: name, WALSegSizeMB: 1, ExtraConf: conf})
	s := &syncSetup{c: c, target: target}
	s.args = []string{"stream", "--repo", target.url, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wksync",
		"--synchronous", "--status-interval", "1s", "--shutdown-timeout", "20s"}
	wk := startWalkeeper(t, target.env, s.args...)
	waitFor(t, time.Minute, "walkeeper to stream", func() bool {
		return c.QueryString(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'wksync' AND state = 'streaming'") == "1"
	})
	s.backup = runBackup(t, target.env, target.url, c.DSN(harness.ReplicationUser), "--checkpoint", "fast")
	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'wksync'")
	c.Exec(t, "SELECT pg_reload_conf()")
	waitFor(t, time.Minute, "walkeeper to become the synchronous standby", func() bool {
		return c.QueryString(t, "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'wksync'") == "sync"
	})
	return s, wk
}

// restoreEnd restores the setup's backup to the end of the archive and
// returns the promoted server.
func (s *syncSetup) restoreEnd(t *testing.T, name string) *harness.Cluster {
	t.Helper()
	giveToPostgres(t, s.target.url)
	r := s.c.RestoreTarget(t, name)
	if _, stderr, code := runWalkeeper(t, s.target.env, "restore", "--repo", s.target.url, "--target-dir", r.DataDir(),
		"--backup", s.backup, "--target-action", "promote"); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	r.SetEnv(append(srvEnvOnly(s.target.env), raceEnv))
	r.StartRestored(t)
	waitPromoted(t, r)
	return r
}

// TestSynchronousRPOZeroUnderKill proves RPO=0 of --synchronous: a client
// inserts one row per transaction and records each id only after COMMIT
// returned, while the stream is killed with SIGKILL ten times at random
// moments and restarted; a restore from the repository to the end of the
// archive then holds every recorded id. Local and S3 repositories.
func TestSynchronousRPOZeroUnderKill(t *testing.T) {
	t.Parallel()
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			s, wk := startSyncSetup(t, target, "rpo-"+target.name, nil)
			c := s.c
			c.Exec(t, "CREATE TABLE rpo (id int PRIMARY KEY, pad text)")

			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			var mu sync.Mutex
			var recorded []int
			clientDone := make(chan error, 1)
			go func() {
				conn := c.Conn(t)
				for id := 1; ctx.Err() == nil; id++ {
					// The pad makes the WAL of a commit a few hundred
					// bytes, so segments fill and complete during the test.
					_, err := conn.Exec(ctx, "INSERT INTO rpo VALUES ($1, repeat('x', 300))", id)
					if ctx.Err() != nil {
						break // the COMMIT did not return: the id is not recorded
					}
					if err != nil {
						clientDone <- fmt.Errorf("insert %d: %w", id, err)
						return
					}
					mu.Lock()
					recorded = append(recorded, id)
					mu.Unlock()
				}
				clientDone <- nil
			}()
			count := func() int { mu.Lock(); defer mu.Unlock(); return len(recorded) }
			waitFor(t, time.Minute, "the first commits", func() bool { return count() > 0 })
			for kill := range 10 {
				time.Sleep(time.Duration(200+rand.IntN(800)) * time.Millisecond)
				if wk.exited() {
					t.Fatalf("the stream exited by itself before kill %d:\n%s", kill+1, wk.output())
				}
				before := count()
				wk.cmd.Process.Kill()
				<-wk.done
				wk = startWalkeeper(t, target.env, s.args...)
				t.Logf("kill %d: %d commits recorded", kill+1, before)
			}
			// Commits go on after the last restart.
			n := count()
			waitFor(t, time.Minute, "commits after the last restart", func() bool { return count() > n+5 })
			wk.cmd.Process.Kill() // the archive is what the last stream stored, nothing more
			<-wk.done
			stop()
			if err := <-clientDone; err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			ids := append([]int(nil), recorded...)
			mu.Unlock()
			c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = ''")
			c.Exec(t, "SELECT pg_reload_conf()")

			r := s.restoreEnd(t, "rpo-restored-"+target.name)
			have := map[int]bool{}
			for _, f := range strings.Fields(r.QueryString(t, "SELECT coalesce(string_agg(id::text, ' '), '') FROM rpo")) {
				id, _ := strconv.Atoi(f)
				have[id] = true
			}
			var lost []int
			for _, id := range ids {
				if !have[id] {
					lost = append(lost, id)
				}
			}
			if len(lost) > 0 {
				t.Fatalf("%d of %d committed ids are not in the restore from the repository (RPO > 0): first %v",
					len(lost), len(ids), lost[:min(len(lost), 10)])
			}
			t.Logf("all %d committed ids restored (%d rows in the restore) after 10 kills", len(ids), len(have))
		})
	}
}

// TestSynchronousStreamSurvivesStorageStall: while the S3 server is
// stopped for three times wal_sender_timeout, a synchronous COMMIT waits
// (its WAL is not durable), the stream keeps answering the server with its
// old flush position, so the server does not drop the connection; once S3
// is back the COMMIT returns and its row is in the repository.
func TestSynchronousStreamSurvivesStorageStall(t *testing.T) {
	srv := harness.StartS3(t)
	target := s3Target(srv)
	s, wk := startSyncSetup(t, target, "syncstall", map[string]string{"wal_sender_timeout": "2s"})
	c := s.c
	c.Exec(t, "CREATE TABLE stall (id int)")
	pid := c.QueryString(t, "SELECT pid FROM pg_stat_replication WHERE application_name = 'wksync'")

	srv.Pause(t)
	committed := make(chan error, 1)
	go func() {
		conn := c.Conn(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, err := conn.Exec(ctx, "INSERT INTO stall VALUES (42)")
		committed <- err
	}()
	time.Sleep(6 * time.Second) // three times wal_sender_timeout
	select {
	case err := <-committed:
		srv.Resume(t)
		t.Fatalf("COMMIT returned while storage was stopped (err %v): its WAL cannot be durable", err)
	default:
	}
	srv.Resume(t)
	if err := <-committed; err != nil {
		t.Fatalf("insert: %v", err)
	}
	if got := c.QueryString(t, "SELECT pid FROM pg_stat_replication WHERE application_name = 'wksync'"); got != pid {
		t.Errorf("the replication connection was replaced during the stall (walsender pid %s, then %q):\n%s", pid, got, wk.output())
	}
	if strings.Contains(wk.output(), "reconnecting") {
		t.Errorf("the stream lost its connection during the stall:\n%s", wk.output())
	}
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}
	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = ''")
	c.Exec(t, "SELECT pg_reload_conf()")
	r := s.restoreEnd(t, "syncstall-restored")
	if got := r.QueryString(t, "SELECT count(*) FROM stall WHERE id = 42"); got != "1" {
		t.Fatalf("the committed row is not in the restore: %s rows", got)
	}
}

// TestSynchronousFlushCostsWhatArrived: in synchronous mode each flush
// stores what arrived since the last one, not the whole unfinished
// segment again. With uncompressed storage, the bytes the stream writes
// while one client commits 200 single-row transactions in the middle of a
// segment stay within a small multiple of the WAL those commits wrote
// (consolidation rewrites each byte once per level); re-storing the
// growing segment at every commit wrote a thousand times as much.
func TestSynchronousFlushCostsWhatArrived(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "synccost"})
	repoDir := filepath.Join(t.TempDir(), "repo")
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wkcost",
		"--synchronous", "--compression", "none", "--metrics-listen", addr)
	waitFor(t, time.Minute, "walkeeper to stream", func() bool {
		return c.QueryString(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'wkcost' AND state = 'streaming'") == "1"
	})
	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'wkcost'")
	c.Exec(t, "SELECT pg_reload_conf()")
	waitFor(t, time.Minute, "walkeeper to become the synchronous standby", func() bool {
		return c.QueryString(t, "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'wkcost'") == "sync"
	})
	// Start a fresh segment and put 1 MB of WAL in it first: the commits
	// below then land in the middle of an unfinished segment.
	c.QueryString(t, "SELECT pg_switch_wal()")
	c.Exec(t, "CREATE TABLE cost_fill AS SELECT g, repeat('f', 200) AS pad FROM generate_series(1, 4000) g")
	c.Exec(t, "CREATE TABLE cost (id int, pad text)")
	stored := func() float64 {
		m, err := scrape(t, "http://"+addr+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range m {
			if strings.HasPrefix(k, "walkeeper_stream_stored_bytes_total") {
				return v
			}
		}
		t.Fatal("no walkeeper_stream_stored_bytes_total")
		return 0
	}
	segName := func() string { return c.QueryString(t, "SELECT pg_walfile_name(pg_current_wal_lsn())") }
	seg0, lsn0 := segName(), lsnOfTB(t, c.QueryString(t, "SELECT pg_current_wal_lsn()"))
	before := stored()
	conn := c.Conn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := range 200 {
		if _, err := conn.Exec(ctx, "INSERT INTO cost VALUES ($1, repeat('x', 100))", i); err != nil {
			t.Fatal(err)
		}
	}
	wal := float64(lsnOfTB(t, c.QueryString(t, "SELECT pg_current_wal_lsn()")) - lsn0)
	if seg := segName(); seg != seg0 {
		// 1 MB of fill and 200 small commits cannot fill a fresh 16 MB
		// segment: something else wrote 15 MB of WAL meanwhile.
		t.Fatalf("the commits crossed a segment boundary (%s to %s): the measure would include a complete segment", seg0, seg)
	}
	written := stored() - before
	t.Logf("200 commits wrote %.0f bytes of WAL; the stream stored %.0f bytes (%.1f times)", wal, written, written/wal)
	// Each flush's object carries a 64-byte envelope; commits of a few
	// hundred bytes and up to 4 levels of consolidation stay below 8x.
	if written > 8*wal {
		t.Errorf("the stream stored %.0f bytes for %.0f bytes of WAL (%.0f times): a flush re-stores more than what arrived",
			written, wal, written/wal)
	}
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}
}
