package test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/monitor"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
)

// runStatus runs `walkeeper status --json` and decodes the report.
func runStatus(t *testing.T, env []string, args ...string) (*monitor.StatusReport, string, int) {
	t.Helper()
	stdout, stderr, code := runWalkeeper(t, env, append([]string{"status", "--json"}, args...)...)
	if code != 0 && code != 5 {
		t.Fatalf("status %v: exit %d: %s", args, code, stderr)
	}
	var rep monitor.StatusReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("status --json printed %q: %v", stdout, err)
	}
	return &rep, stderr, code
}

// TestStatusExitCodes: an empty repository is healthy without thresholds
// and stale with them; with a stream running and a fresh backup status
// exits 0 and reports backups, the newest WAL, the primary and the active
// slot; tiny thresholds, an unreachable server and a dropped slot exit 5
// naming the reason. Local and S3 repositories, one cluster.
func TestStatusExitCodes(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "status"})
	dsn := c.DSN(harness.ReplicationUser)
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			env, repoURL := target.env, target.url
			slot := "status_" + target.name

			// Empty repository.
			if _, stderr, code := runWalkeeper(t, env, "status", "--repo", repoURL); code != 0 {
				t.Fatalf("empty repository without thresholds: exit %d: %s", code, stderr)
			}
			rep, stderr, code := runStatus(t, env, "--repo", repoURL, "--max-backup-age", "1d", "--max-wal-age", "1h")
			if code != 5 || !strings.Contains(stderr, "no complete backup") || !strings.Contains(stderr, "no WAL") || len(rep.Problems) != 2 {
				t.Fatalf("empty repository with thresholds: exit %d, problems %q, stderr %s", code, rep.Problems, stderr)
			}

			// A stream and a backup.
			wk := startWalkeeper(t, env, "stream", "--repo", repoURL, "--dsn", dsn, "--slot", slot)
			repo := target.open(t)
			waitFor(t, time.Minute, "the stream heartbeat", func() bool {
				s, _ := repo.Streams(context.Background())
				return len(s) == 1 && s[0].Live(time.Now())
			})
			id := runBackup(t, env, repoURL, dsn)

			rep, stderr, code = runStatus(t, env, "--repo", repoURL, "--dsn", dsn, "--max-backup-age", "1h", "--max-wal-age", "1h")
			if code != 0 {
				t.Fatalf("fresh repository: exit %d: %s", code, stderr)
			}
			r := rep.Repository
			if r.BackupsComplete != 1 || r.BackupsIncomplete != 0 || r.NewestBackup == nil || r.NewestBackup.ID != id {
				t.Errorf("backups: %d complete, %d incomplete, newest %+v; want 1 complete, %s", r.BackupsComplete, r.BackupsIncomplete, r.NewestBackup, id)
			}
			if !r.Initialized || r.SystemIdentifier == "" || len(r.WALGaps) != 0 || r.StoredBytes == 0 {
				t.Errorf("repository section: %+v", r)
			}
			if r.NewestWAL == nil || r.NewestWAL.Timeline != 1 {
				t.Fatalf("newest WAL: %+v", r.NewestWAL)
			}
			stored := walObjects(t, repo)
			found := false
			for name := range stored {
				// A partial is stored as NAME.partial, ranges or both.
				found = found || name == r.NewestWAL.Name || strings.HasSuffix(r.NewestWAL.Name, ".partial") &&
					archive.KindOf(name) == archive.Range && name[:24] == r.NewestWAL.Name[:24]
			}
			if !found {
				t.Errorf("newest WAL %s is not in the repository (%v)", r.NewestWAL.Name, keys(stored))
			}
			for name := range stored {
				if n := name[:min(len(name), 24)]; archive.KindOf(name).HoldsWAL() && n > r.NewestWAL.Name[:24] {
					t.Errorf("newest WAL %s, but %s is stored", r.NewestWAL.Name, name)
				}
			}
			if end, stop := lsnOf(t, r.NewestWAL.EndLSN), lsnOf(t, r.NewestBackup.StopLSN); end < stop {
				t.Errorf("newest WAL ends at %s, before the backup's stop %s", r.NewestWAL.EndLSN, r.NewestBackup.StopLSN)
			}
			if s := rep.Server; s == nil || !s.Reachable || s.Role != "primary" || s.Timeline != 1 || !strings.HasPrefix(s.Version, "15") || s.CurrentLSN == "" {
				t.Errorf("server section: %+v", rep.Server)
			}
			if s := rep.Slot; s == nil || s.Name != slot || s.Source != "stream" || !s.Exists || !s.Active || s.RestartLSN == "" || s.WALStatus == "" || s.LagBytes == nil {
				t.Errorf("slot section: %+v", rep.Slot)
			}
			if len(rep.Streams) != 1 || !rep.Streams[0].Alive || rep.Streams[0].Slot != slot || rep.Streams[0].PID != wk.cmd.Process.Pid {
				t.Errorf("streams: %+v (stream pid %d)", rep.Streams, wk.cmd.Process.Pid)
			}

			// The text report says the same.
			out, _, code := runWalkeeper(t, env, "status", "--repo", repoURL, "--dsn", dsn)
			for _, want := range []string{"Repository", "1 complete, 0 incomplete", id, "primary", slot + " (stream): active physical", "Status", "OK"} {
				if code != 0 || !strings.Contains(out, want) {
					t.Errorf("text report (exit %d) lacks %q:\n%s", code, want, out)
				}
			}

			// Stale by tiny thresholds.
			time.Sleep(5 * time.Millisecond)
			_, stderr, code = runStatus(t, env, "--repo", repoURL, "--max-backup-age", "1ms")
			if code != 5 || !strings.Contains(stderr, "newest backup "+id) || !strings.Contains(stderr, "--max-backup-age") {
				t.Errorf("--max-backup-age 1ms: exit %d: %s", code, stderr)
			}
			_, stderr, code = runStatus(t, env, "--repo", repoURL, "--max-wal-age", "1ms")
			if code != 5 || !strings.Contains(stderr, "newest WAL") || !strings.Contains(stderr, "--max-wal-age") {
				t.Errorf("--max-wal-age 1ms: exit %d: %s", code, stderr)
			}

			// Unreachable server.
			down := fmt.Sprintf("postgres://walkeeper@127.0.0.1:%d/postgres?sslmode=disable", harness.FreePort(t))
			rep, stderr, code = runStatus(t, env, "--repo", repoURL, "--dsn", down)
			if code != 5 || rep.Server == nil || rep.Server.Reachable || !strings.Contains(stderr, "server unreachable") {
				t.Errorf("unreachable server: exit %d, server %+v: %s", code, rep.Server, stderr)
			}

			// The stream stops and its slot is dropped: the heartbeat
			// still names it, so status reports it missing.
			if code := wk.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("stream exit %d", code)
			}
			c.Exec(t, "SELECT pg_drop_replication_slot($1)", slot)
			rep, stderr, code = runStatus(t, env, "--repo", repoURL, "--dsn", dsn)
			if code != 5 || rep.Slot == nil || rep.Slot.Exists || !strings.Contains(stderr, "does not exist") || len(rep.Streams) != 1 || !rep.Streams[0].Stopped {
				t.Errorf("dropped slot: exit %d, slot %+v, streams %+v: %s", code, rep.Slot, rep.Streams, stderr)
			}
		})
	}
}

// TestStatusBadInput: bad durations are usage errors; an unreadable
// repository is exit 1, not 5.
func TestStatusBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"--max-backup-age", "yesterday"},
		{"--max-wal-age", "-5m"},
		{"--slot", "Bad-Slot"},
	} {
		_, stderr, code := runWalkeeper(t, nil, append([]string{"status", "--repo", t.TempDir()}, args...)...)
		if code != 2 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("status %v: exit %d, want 2 and one line: %s", args, code, stderr)
		}
	}
	_, stderr, code := runWalkeeper(t, []string{"AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=y", "AWS_REGION=us-east-1"},
		"status", "--repo", "s3://bucket/x", "--s3-endpoint", fmt.Sprintf("http://127.0.0.1:%d", harness.FreePort(t)), "--s3-path-style", "--timeout", "2s")
	if code != 1 {
		t.Errorf("unreachable repository: exit %d, want 1: %s", code, stderr)
	}
}

// TestStatusLostSlot: a slot invalidated under max_slot_wal_keep_size = 64MB
// has a NULL safe_wal_size, which is not "unlimited": status says no WAL is
// left, reports the setting, and gives the reason for the null in JSON.
func TestStatusLostSlot(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "status-lost", ExtraConf: map[string]string{
		"max_slot_wal_keep_size": "64MB", "min_wal_size": "32MB", "max_wal_size": "64MB",
	}})
	const slot = "lost_slot"
	c.Exec(t, "SELECT pg_create_physical_replication_slot($1, true)", slot)
	c.Exec(t, "CREATE TABLE filler (x text)")
	// Nothing consumes the slot: write past 64MB and checkpoint until the
	// checkpointer invalidates it.
	waitFor(t, 3*time.Minute, "the slot to be invalidated", func() bool {
		for range 6 {
			c.Exec(t, "INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 1000)")
			c.Exec(t, "SELECT pg_switch_wal()")
		}
		c.Exec(t, "CHECKPOINT")
		return c.QueryString(t, "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1", slot) == "lost"
	})
	repoDir := filepath.Join(t.TempDir(), "repo")
	dsn := c.DSN(harness.ReplicationUser)

	rep, stderr, code := runStatus(t, nil, "--repo", repoDir, "--dsn", dsn, "--slot", slot)
	sl := rep.Slot
	if code != 5 || sl == nil || !sl.Exists || sl.WALStatus != "lost" || !strings.Contains(stderr, "invalidated") {
		t.Fatalf("lost slot: exit %d, slot %+v: %s", code, sl, stderr)
	}
	if sl.SafeWALSize != nil || sl.SafeWALSizeReason != monitor.SafeWALSizeLost {
		t.Errorf("safe_wal_size = %v, reason %q; want null with reason %q", sl.SafeWALSize, sl.SafeWALSizeReason, monitor.SafeWALSizeLost)
	}
	if sl.MaxSlotWALKeepSize == nil || *sl.MaxSlotWALKeepSize != 64<<20 {
		t.Errorf("max_slot_wal_keep_size = %v, want %d", sl.MaxSlotWALKeepSize, 64<<20)
	}
	// The JSON names the fields as documented.
	stdout, _, _ := runWalkeeper(t, nil, "status", "--json", "--repo", repoDir, "--dsn", dsn, "--slot", slot)
	var raw struct {
		Slot map[string]any `json:"slot"`
	}
	if err := json.Unmarshal([]byte(stdout), &raw); err != nil {
		t.Fatal(err)
	}
	if v, ok := raw.Slot["safe_wal_size"]; !ok || v != nil {
		t.Errorf("JSON slot.safe_wal_size = %v (present %v), want null", v, ok)
	}
	if raw.Slot["safe_wal_size_reason"] != "lost" || raw.Slot["max_slot_wal_keep_size"] != float64(64<<20) {
		t.Errorf("JSON slot section: %v", raw.Slot)
	}

	out, _, code := runWalkeeper(t, nil, "status", "--repo", repoDir, "--dsn", dsn, "--slot", slot)
	if code != 5 || strings.Contains(out, "unlimited") || !strings.Contains(out, "none left (slot lost; max_slot_wal_keep_size = 64.0MB)") {
		t.Errorf("text report (exit %d) of a lost slot:\n%s", code, out)
	}
}
