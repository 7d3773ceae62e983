package test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
)

// TestFormatOneRepositoryStaysUsable: a repository written by a walkeeper
// of format 1 (every WAL file directly under wal/) is read and extended in
// its own layout by this one. The repository is made by streaming and
// backing up a real PostgreSQL 15 into a new (format 2) repository, whose
// WAL is then moved out of its group directories and whose walkeeper.json
// is set back to format 1, which is exactly what a format 1 walkeeper would
// have written. The stream then continues it (flat keys, no group
// directory appears), status and verify see no gap, and a restore to the
// end of the archive has every row.
func TestFormatOneRepositoryStaysUsable(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "format1"})
	repoDir := filepath.Join(harness.MakeDir(t, "format1-repo"), "repo")
	dsn := c.DSN(harness.ReplicationUser)
	ctx := context.Background()
	open := func() *storage.Repository {
		r, err := storage.Open(ctx, storage.Options{Repo: repoDir})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	waitStored := func(what string) {
		end := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text"))
		c.Exec(t, "SELECT pg_switch_wal()")
		repo := open()
		waitFor(t, time.Minute, what, func() bool {
			e, _ := repoEnd(ctx, repo)
			return e >= end
		})
	}

	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", dsn, "--slot", "wk")
	c.Exec(t, "CREATE TABLE rows_kept (i int)")
	c.Exec(t, "INSERT INTO rows_kept SELECT generate_series(1, 1000)")
	runBackup(t, nil, repoDir, dsn)
	c.Exec(t, "INSERT INTO rows_kept SELECT generate_series(1001, 2000)")
	waitStored("the stream to store the WAL after the backup")
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d:\n%s", code, wk.output())
	}

	// A new repository is format 2: its segments are in group directories.
	walDir := filepath.Join(repoDir, "wal")
	groups := groupDirs(t, walDir)
	if len(groups) == 0 {
		t.Fatalf("a new repository has no group directory under wal/")
	}
	// Make it what format 1 wrote.
	for _, g := range groups {
		entries, err := os.ReadDir(filepath.Join(walDir, g))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if err := os.Rename(filepath.Join(walDir, g, e.Name()), filepath.Join(walDir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Remove(filepath.Join(walDir, g)); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(repoDir, storage.ConfigKey)
	var cfg storage.Config
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.FormatVersion = 1
	data, _ = json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		t.Fatal(err)
	}

	// The stream continues the format 1 archive in its layout.
	wk = startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", dsn, "--slot", "wk")
	c.Exec(t, "INSERT INTO rows_kept SELECT generate_series(2001, 3000)")
	waitStored("the stream to continue the format 1 repository")
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d:\n%s", code, wk.output())
	}
	if g := groupDirs(t, walDir); len(g) != 0 {
		t.Errorf("the stream wrote format 2 group directories %v into a format 1 repository", g)
	}
	if data, _ := os.ReadFile(cfgPath); !strings.Contains(string(data), `"format_version": 1`) {
		t.Errorf("walkeeper.json changed:\n%s", data)
	}

	rep, stderr, code := runStatus(t, nil, "--repo", repoDir)
	if code != 0 || len(rep.Repository.WALGaps) != 0 || rep.Repository.WALSegments < 2 {
		t.Errorf("status of the format 1 repository: exit %d, %d segments, gaps %v\n%s", code, rep.Repository.WALSegments,
			rep.Repository.WALGaps, stderr)
	}
	if r := runVerify(t, repoTarget{url: repoDir}, 0); !r.OK {
		t.Errorf("verify: %+v", r.Problems)
	}

	giveToPostgres(t, repoDir)
	r := c.RestoreTarget(t, "format1-restored")
	if _, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", r.DataDir(),
		"--target-action", "promote"); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	r.SetEnv([]string{raceEnv})
	r.StartRestored(t)
	waitPromoted(t, r)
	if got := r.QueryString(t, "SELECT count(*) FROM rows_kept"); got != "3000" {
		t.Errorf("restored from the format 1 repository: %s rows, want 3000", got)
	}
}

// groupDirs returns the format 2 group directories under walDir.
func groupDirs(t *testing.T, walDir string) []string {
	t.Helper()
	entries, err := os.ReadDir(walDir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && len(e.Name()) == 16 && archive.KindOf(e.Name()+"00000000") == archive.Segment {
			out = append(out, e.Name())
		}
	}
	return out
}
