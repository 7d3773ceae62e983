package test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// TestStreamFollowsFailover runs `stream` with a multi-host DSN
// (target_session_attrs=read-write) over a primary and its standby, stops
// the primary, promotes the standby, and checks that the stream moves to
// the new primary on timeline 2 by itself, and that the repository has no
// gap: a backup taken before the failover, restored from the repository
// alone, replays across the timeline switch to rows written after it.
func TestStreamFollowsFailover(t *testing.T) {
	primary := harness.StartCluster(t, harness.ClusterOptions{Name: "fo-primary"})
	primary.Pgbench(t, "-i", "-s", "1", "-q")
	standby := primary.CreateStandby(t, "fo-standby")
	repoDir := filepath.Join(harness.MakeDir(t, "fo-repo"), "repo")
	dsn := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write&connect_timeout=3",
		harness.ReplicationUser, primary.Password(), primary.Port(), standby.Port())
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", dsn, "--slot", "wk")
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	waitFor(t, time.Minute, "the stream to start", func() bool {
		return primary.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active") == "1"
	})
	backupID := runBackup(t, nil, repoDir, primary.DSN(harness.ReplicationUser))
	primary.Exec(t, "CREATE TABLE fo (phase text, n int)")
	primary.Exec(t, "INSERT INTO fo SELECT 'before', g FROM generate_series(1, 1000) g")
	last := switchAndWait(t, primary)
	waitFor(t, time.Minute, "segment "+last, func() bool { _, ok := walObjects(t, repo)[last]; return ok })
	primary.Exec(t, "INSERT INTO fo SELECT 'last on timeline 1', g FROM generate_series(1, 10) g")

	// A clean failover: a fast shutdown sends everything to the standby.
	primary.Stop(t)
	standby.Promote(t)
	standby.Exec(t, "INSERT INTO fo SELECT 'after', g FROM generate_series(1, 500) g")
	last2 := switchAndWait(t, standby)
	if !strings.HasPrefix(last2, "00000002") {
		t.Fatalf("the promoted standby writes %s, expected timeline 2", last2)
	}
	waitFor(t, 2*time.Minute, "timeline 2 segment "+last2+" from the new primary", func() bool {
		_, ok := walObjects(t, repo)[last2]
		return ok
	})
	if got := standby.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active"); got != "1" {
		t.Errorf("slot wk on the new primary: %s active, want 1", got)
	}
	objs := walObjects(t, repo)
	if _, ok := objs["00000002.history"]; !ok {
		t.Errorf("00000002.history not stored: %v", keys(objs))
	}
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d:\n%s", code, wk.output())
	}
	if !strings.Contains(wk.output(), "reconnecting") {
		t.Errorf("the stream never reported losing the old primary:\n%s", wk.output())
	}

	// No gap: replay from the repository alone crosses the switch.
	giveToPostgres(t, repoDir)
	r := primary.RestoreTarget(t, "fo-restored")
	if _, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", r.DataDir(),
		"--backup", backupID, "--target-action", "promote"); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	r.SetEnv([]string{raceEnv})
	r.StartRestored(t)
	waitPromoted(t, r)
	got := r.QueryString(t, "SELECT string_agg(phase || '=' || c, ',' ORDER BY phase) FROM (SELECT phase, count(*) c FROM fo GROUP BY phase) x")
	if want := "after=500,before=1000,last on timeline 1=10"; got != want {
		t.Errorf("restored from the repository: %s, want %s", got, want)
	}
}
