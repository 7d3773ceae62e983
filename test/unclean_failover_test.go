package test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
	"github.com/walkeeper/walkeeper/test/harness"
)

// Row counts of the unclean failover scenario.
const (
	ufBeforeRows = 1000  // written on the old primary, replicated to the standby
	ufDeadRows   = 80000 // written on the old primary only, stored by the stream
	ufAfterRows  = 1010  // written on the promoted standby
)

// uncleanFailover is the set-up the unclean failover tests share: a primary
// and an asynchronous standby, `stream` on a multi-host DSN
// (target_session_attrs=read-write) whose second host is a Gate in front of
// the standby, a backup taken while all is healthy, rows both have, then
// the standby stopped (fast) and rows only the primary ever has, stored by
// the stream on timeline 1.
type uncleanFailover struct {
	target   repoTarget
	repo     *storage.Repository
	primary  *harness.Cluster
	standby  *harness.Cluster
	gate     *harness.Gate // the DSN's way to the standby
	dsn      string
	wk       *proc
	backupID string
	tl1End   uint64 // the repository's end on timeline 1 before the crash
}

// localRepoTarget is a fresh local repository (repoTargets without S3).
func localRepoTarget(t *testing.T, name string) repoTarget {
	dir := filepath.Join(harness.MakeDir(t, name), "repo")
	return repoTarget{name: "local", url: dir, open: func(t *testing.T) *storage.Repository {
		r, err := storage.Open(context.Background(), storage.Options{Repo: dir})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}}
}

// multiHostDSN is a URL for ReplicationUser over several local ports that
// picks the read-write one, as an operator writes it for failover.
func multiHostDSN(password string, ports ...int) string {
	hosts := make([]string, len(ports))
	for i, p := range ports {
		hosts[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	return fmt.Sprintf("postgres://%s:%s@%s/postgres?sslmode=disable&target_session_attrs=read-write&connect_timeout=3",
		harness.ReplicationUser, password, strings.Join(hosts, ","))
}

// waitReplayed waits until standby has replayed everything primary has
// written so far.
func waitReplayed(t *testing.T, primary, standby *harness.Cluster) {
	t.Helper()
	lsn := primary.QueryString(t, "SELECT pg_current_wal_lsn()::text")
	waitFor(t, 2*time.Minute, standby.Name()+" to replay up to "+lsn, func() bool {
		return standby.QueryString(t, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)::text", lsn) == "true"
	})
}

// startUncleanFailover builds the shared set-up on target; standbyConf is
// set on the standby with ALTER SYSTEM (it takes effect at its restart).
func startUncleanFailover(t *testing.T, target repoTarget, name string, standbyConf map[string]string) *uncleanFailover {
	t.Helper()
	ctx := context.Background()
	f := &uncleanFailover{target: target}
	f.primary = harness.StartCluster(t, harness.ClusterOptions{Name: name + "-primary"})
	f.primary.Exec(t, "CREATE TABLE uf (phase text, n int)")
	f.standby = f.primary.CreateStandby(t, name+"-standby")
	for k, v := range standbyConf {
		f.standby.Exec(t, fmt.Sprintf("ALTER SYSTEM SET %s = '%s'", k, v))
	}
	f.gate = harness.StartGate(t, f.standby.Port())
	f.dsn = multiHostDSN(f.primary.Password(), f.primary.Port(), f.gate.Port())
	f.wk = startWalkeeper(t, target.env, "stream", "--repo", target.url, "--dsn", f.dsn, "--slot", "wk")
	waitFor(t, time.Minute, "the stream to start on the primary", func() bool {
		return f.primary.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active") == "1"
	})
	f.repo = target.open(t)
	f.backupID = runBackup(t, target.env, target.url, f.primary.DSN(harness.ReplicationUser))

	f.primary.Exec(t, fmt.Sprintf("INSERT INTO uf SELECT 'before', g FROM generate_series(1, %d) g", ufBeforeRows))
	waitReplayed(t, f.primary, f.standby)
	f.standby.Stop(t) // falls behind from here on

	f.primary.Exec(t, fmt.Sprintf("INSERT INTO uf SELECT 'only on dead primary', g FROM generate_series(1, %d) g", ufDeadRows))
	last := switchAndWait(t, f.primary)
	waitFor(t, 2*time.Minute, "the stream to store "+last+" (timeline 1, rows only the old primary has)", func() bool {
		_, ok := walObjects(t, f.repo)[last]
		return ok
	})
	end, err := repoEnd(ctx, f.repo)
	if err != nil {
		t.Fatal(err)
	}
	f.tl1End = end
	return f
}

// crashAndPromote kills the primary (kill -9), starts the stale standby,
// promotes it and writes the 'after' rows there. It returns the switch
// point of timeline 2 (from the new primary's 00000002.history) and the
// name of the timeline 2 segment holding it.
func (f *uncleanFailover) crashAndPromote(t *testing.T) (switchLSN uint64, switchSeg string) {
	t.Helper()
	f.primary.Kill(t)
	f.standby.Start(t)
	f.standby.Promote(t)
	f.standby.Exec(t, fmt.Sprintf("INSERT INTO uf SELECT 'after', g FROM generate_series(1, %d) g", ufAfterRows))
	switchLSN, switchSeg = switchPoint(t, f.standby, 2)
	if switchLSN >= f.tl1End {
		t.Fatalf("not an unclean failover: timeline 2 forks at %X, the repository's timeline 1 ends at %X", switchLSN, f.tl1End)
	}
	t.Logf("timeline 2 forks at %X (segment %s); the repository holds timeline 1 up to %X", switchLSN, switchSeg, f.tl1End)
	return switchLSN, switchSeg
}

// switchPoint reads where timeline tli forked off its parent from the
// history file in c's pg_wal and names tli's segment holding that point.
func switchPoint(t *testing.T, c *harness.Cluster, tli uint32) (uint64, string) {
	t.Helper()
	content := c.QueryString(t, "SELECT pg_read_file('pg_wal/' || $1)", archive.HistoryName(tli))
	var last string
	for _, line := range strings.Split(content, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			last = line
		}
	}
	fields := strings.Fields(last)
	if len(fields) < 2 {
		t.Fatalf("%s on %s: no switch point in %q", archive.HistoryName(tli), c.Name(), content)
	}
	lsn := lsnOf(t, fields[1])
	return lsn, archive.SegmentName(tli, lsn/segSize, segSize)
}

// inPgWal reports whether c's pg_wal holds a file named name.
func inPgWal(t *testing.T, c *harness.Cluster, name string) bool {
	t.Helper()
	return c.QueryString(t, "SELECT count(*) FROM pg_ls_waldir() WHERE name = $1", name) != "0"
}

// ufCounts returns the rows per phase of table uf.
func ufCounts(t *testing.T, c *harness.Cluster) (before, dead, after int) {
	t.Helper()
	row := c.QueryRows(t, "SELECT count(*) FILTER (WHERE phase = 'before'), count(*) FILTER (WHERE phase = 'only on dead primary'), count(*) FILTER (WHERE phase = 'after') FROM uf")[0]
	n := func(s string) int { v, _ := strconv.Atoi(s); return v }
	return n(row[0]), n(row[1]), n(row[2])
}

// TestUncleanFailoverArchivesNewTimeline: the standby falls behind, the
// stream stores timeline 1 WAL only the primary has, the primary crashes
// and the stale standby is promoted, so timeline 2 forks before the
// repository's end. The stream must archive timeline 2 from its switch
// point (the new primary keeps it: wal_keep_size=256MB), so that the
// repository has no hole: the switch segment is stored, verify and status
// see no gap, and a backup from before the failover restores to the new
// primary's rows and none of the dead primary's.
//
// The DSN reaches the standby through a Gate that is shut from the crash
// until the new primary has written, switched and checkpointed: the stream
// then finds it (and creates its slot, restart_lsn = that checkpoint's
// redo, after the switch segment) only after a few seconds, as when the
// promotion takes a while. Without the gate, how early the stream's
// reconnect lands decides whether the bug shows.
func TestUncleanFailoverArchivesNewTimeline(t *testing.T) {
	t.Parallel()
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			f := startUncleanFailover(t, target, "ufa-"+target.name, map[string]string{"wal_keep_size": "256MB"})
			f.gate.Shut()
			switchLSN, switchSeg := f.crashAndPromote(t)
			// Switch before the checkpoint: a physical slot created
			// with RESERVE_WAL starts at the last checkpoint's redo,
			// which is then past the switch segment (a checkpoint
			// first would leave it inside, and the stream, starting
			// at that segment's beginning, would archive it anyway).
			f.standby.Exec(t, "SELECT pg_switch_wal()")
			f.standby.Exec(t, "CHECKPOINT")
			last := switchAndWait(t, f.standby)
			if !strings.HasPrefix(last, "00000002") || last <= switchSeg {
				t.Fatalf("the new primary finished %s, want a timeline 2 segment after %s", last, switchSeg)
			}
			if !inPgWal(t, f.standby, switchSeg) {
				t.Fatalf("the new primary no longer has %s in pg_wal despite wal_keep_size=256MB", switchSeg)
			}
			f.gate.Open()
			waitFor(t, 2*time.Minute, "the stream to store timeline 2 segment "+last+" from the new primary", func() bool {
				_, ok := walObjects(t, f.repo)[last]
				return ok
			})
			if code := f.wk.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("stream exit %d, want 0:\n%s", code, f.wk.output())
			}
			t.Logf("slot wk on the new primary: restart_lsn %s",
				f.standby.QueryString(t, "SELECT coalesce((SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'wk'), 'none')"))

			objs := walObjects(t, f.repo)
			if _, ok := objs[switchSeg]; !ok {
				t.Errorf("the timeline 2 segment %s holding the switch point %X is not in the repository; stored: %v\nstream output:\n%s",
					switchSeg, switchLSN, keys(objs), f.wk.output())
			}
			if stdout, stderr, code := runWalkeeper(t, target.env, "verify", "--repo", target.url); code != 0 {
				t.Errorf("verify: exit %d, want 0:\n%s%s", code, stdout, stderr)
			}
			rep, stderr, code := runStatus(t, target.env, "--repo", target.url)
			if code != 0 || len(rep.Repository.WALGaps) != 0 {
				t.Errorf("status --json: exit %d, wal_gaps %+v; want exit 0 and no gap:\n%s", code, rep.Repository.WALGaps, stderr)
			}

			// A backup from before the failover, restored to the latest
			// timeline from the repository alone.
			giveToPostgres(t, target.url)
			r := f.primary.RestoreTarget(t, "ufa-"+target.name+"-restored")
			if _, stderr, code := runWalkeeper(t, target.env, "restore", "--repo", target.url, "--target-dir", r.DataDir(),
				"--backup", f.backupID, "--target-action", "promote"); code != 0 {
				t.Fatalf("restore: exit %d: %s", code, stderr)
			}
			r.SetEnv(append(srvEnvOnly(target.env), raceEnv))
			r.StartRestored(t)
			waitPromoted(t, r)
			before, dead, after := ufCounts(t, r)
			if before != ufBeforeRows || after != ufAfterRows || dead != 0 {
				t.Errorf("restored from backup %s: %d 'before', %d 'after', %d 'only on dead primary' rows; want %d, %d, 0 (the new primary's history)",
					f.backupID, before, after, dead, ufBeforeRows, ufAfterRows)
			}
		})
	}
}

// TestUncleanFailoverServerRecycledWAL: the same unclean failover, but the
// stream is not running while it happens, and by the time it starts again
// the new primary (wal_keep_size=0, max_wal_size=32MB) has recycled its
// timeline 2 segment holding the switch point. The repository cannot be
// made whole: the stream must stop by itself with an error that names the
// missing segment and asks for a new base backup (not stream from
// elsewhere, and not retry forever), and status and verify must report the
// hole.
func TestUncleanFailoverServerRecycledWAL(t *testing.T) {
	t.Parallel()
	target := localRepoTarget(t, "ufr-repo")
	f := startUncleanFailover(t, target, "ufr", map[string]string{
		"wal_keep_size": "0", "min_wal_size": "32MB", "max_wal_size": "32MB",
	})
	if code := f.wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d, want 0:\n%s", code, f.wk.output())
	}
	switchLSN, switchSeg := f.crashAndPromote(t)
	f.standby.Exec(t, "CREATE TABLE filler (n int)")
	for i := 0; inPgWal(t, f.standby, switchSeg); i++ {
		if i == 10 {
			t.Fatalf("the new primary still has %s in pg_wal after %d rounds of writes, segment switches and checkpoints: %v",
				switchSeg, i, f.standby.QueryRows(t, "SELECT name FROM pg_ls_waldir() ORDER BY name"))
		}
		f.standby.Exec(t, "INSERT INTO filler SELECT g FROM generate_series(1, 50000) g")
		f.standby.Exec(t, "SELECT pg_switch_wal()")
		f.standby.Exec(t, "CHECKPOINT")
	}
	t.Logf("the new primary removed %s from pg_wal; it holds %v", switchSeg,
		f.standby.QueryRows(t, "SELECT name FROM pg_ls_waldir() ORDER BY name"))

	wk := startWalkeeper(t, target.env, "stream", "--repo", target.url, "--dsn", f.dsn, "--slot", "wk")
	select {
	case <-wk.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("the stream still runs 60s after it started against a new primary that no longer has timeline 2 from its switch point %X (segment %s): "+
			"it must exit non-zero asking for a new base backup, not stream from elsewhere or retry forever; its output:\n%s",
			switchLSN, switchSeg, wk.output())
	}
	out := wk.output()
	if code := wk.cmd.ProcessState.ExitCode(); code == 0 {
		t.Errorf("the stream exited 0, want non-zero:\n%s", out)
	}
	for _, want := range []string{"take a new base backup", switchSeg} {
		if !strings.Contains(out, want) {
			t.Errorf("the stream's error lacks %q:\n%s", want, out)
		}
	}
	stdout, stderr, code := runWalkeeper(t, target.env, "status", "--repo", target.url)
	if code != 5 || !strings.Contains(stdout+stderr, switchSeg) {
		t.Errorf("status: exit %d, want 5 and a report naming %s:\n%s%s", code, switchSeg, stdout, stderr)
	}
	if r := runVerify(t, target, 5); !hasProblem(r, "missing-wal", archivetest.WALKey(switchSeg)) {
		t.Errorf("verify: want a missing-wal problem at %s, got %+v", archivetest.WALKey(switchSeg), r.Problems)
	}
}

// TestStreamFollowsTwoPromotions: timelines 1 -> 2 -> 3 with one stream on
// a three-host DSN (primary P, its standby S1, and S2 cascading from S1, so
// every node exists from the start). Clean failovers (fast shutdown, then
// promotion) P -> S1 and S1 -> S2; the stream follows both, stores both
// history files, and a backup from timeline 1 restores across both
// switches to the rows of all three phases; verify and status see no gap.
func TestStreamFollowsTwoPromotions(t *testing.T) {
	t.Parallel()
	p := harness.StartCluster(t, harness.ClusterOptions{Name: "tp-p"})
	p.Exec(t, "CREATE TABLE tp (phase text, n int)")
	s1 := p.CreateStandby(t, "tp-s1")
	s2 := s1.CreateStandby(t, "tp-s2")
	target := localRepoTarget(t, "tp-repo")
	dsn := multiHostDSN(p.Password(), p.Port(), s1.Port(), s2.Port())
	wk := startWalkeeper(t, nil, "stream", "--repo", target.url, "--dsn", dsn, "--slot", "wk")
	waitFor(t, time.Minute, "the stream to start on P", func() bool {
		return p.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active") == "1"
	})
	repo := target.open(t)
	backupID := runBackup(t, nil, target.url, p.DSN(harness.ReplicationUser))
	store := func(c *harness.Cluster, tli string) {
		t.Helper()
		last := switchAndWait(t, c)
		if !strings.HasPrefix(last, tli) {
			t.Fatalf("%s writes %s, want timeline %s", c.Name(), last, tli)
		}
		waitFor(t, 2*time.Minute, "the stream to store "+last+" from "+c.Name(), func() bool {
			_, ok := walObjects(t, repo)[last]
			return ok
		})
	}

	p.Exec(t, "INSERT INTO tp SELECT 'timeline 1', g FROM generate_series(1, 1000) g")
	store(p, "00000001")
	p.Exec(t, "INSERT INTO tp SELECT 'last on timeline 1', g FROM generate_series(1, 10) g")
	p.Stop(t)
	s1.Promote(t)
	s1.Exec(t, "INSERT INTO tp SELECT 'timeline 2', g FROM generate_series(1, 700) g")
	store(s1, "00000002")
	s1.Exec(t, "INSERT INTO tp SELECT 'last on timeline 2', g FROM generate_series(1, 20) g")
	waitReplayed(t, s1, s2)
	if got := s2.QueryString(t, "SELECT coalesce((SELECT received_tli::text FROM pg_stat_wal_receiver), '')"); got != "2" {
		t.Fatalf("S2 receives timeline %q from S1, want 2", got)
	}
	s1.Stop(t)
	s2.Promote(t)
	s2.Exec(t, "INSERT INTO tp SELECT 'timeline 3', g FROM generate_series(1, 300) g")
	store(s2, "00000003")
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d, want 0:\n%s", code, wk.output())
	}

	objs := walObjects(t, repo)
	for _, h := range []string{"00000002.history", "00000003.history"} {
		if _, ok := objs[h]; !ok {
			t.Errorf("%s not stored: %v\nstream output:\n%s", h, keys(objs), wk.output())
		}
	}
	if stdout, stderr, code := runWalkeeper(t, nil, "verify", "--repo", target.url); code != 0 {
		t.Errorf("verify: exit %d, want 0:\n%s%s", code, stdout, stderr)
	}
	rep, stderr, code := runStatus(t, nil, "--repo", target.url)
	if code != 0 || len(rep.Repository.WALGaps) != 0 {
		t.Errorf("status --json: exit %d, wal_gaps %+v; want exit 0 and no gap:\n%s", code, rep.Repository.WALGaps, stderr)
	}

	giveToPostgres(t, target.url)
	r := p.RestoreTarget(t, "tp-restored")
	if _, stderr, code := runWalkeeper(t, nil, "restore", "--repo", target.url, "--target-dir", r.DataDir(),
		"--backup", backupID, "--target-action", "promote"); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	r.SetEnv([]string{raceEnv})
	r.StartRestored(t)
	waitPromoted(t, r)
	got := r.QueryString(t, "SELECT string_agg(phase || '=' || c, ',' ORDER BY phase) FROM (SELECT phase, count(*) c FROM tp GROUP BY phase) x")
	if want := "last on timeline 1=10,last on timeline 2=20,timeline 1=1000,timeline 2=700,timeline 3=300"; got != want {
		t.Errorf("restored backup %s from the repository: %s, want %s", backupID, got, want)
	}
}
