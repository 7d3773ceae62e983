package test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/drill"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
)

// TestDrill runs `walkeeper drill` against a real PostgreSQL 15 (a cluster
// without data checksums) streamed into a local and an S3 repository:
//   - a healthy drill passes on both, reports its figures (--json,
//     --metrics-file) and removes its scratch directory;
//   - a scratch directory that is not empty, or holds a data directory, is
//     refused before anything is written;
//   - a backup of a table whose heap page was damaged on the primary's disk
//     (line pointers overwritten while the server was stopped: neither the
//     server nor the backup notices) fails amcheck: exit 5 naming the table;
//   - a segment missing after a backup fails the drill of that backup: exit
//     5 naming the segment; a --check-sql statement that returns no rows is
//     named too;
//   - no drill archived anything into the repositories.
func TestDrill(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "drill", NoDataChecksums: true})
	targets := repoTargets(t)
	local, s3t := targets[0], targets[1]
	dsn := c.DSN(harness.ReplicationUser)
	ctx := context.Background()
	// The local repository is written as postgres, as an operator runs the
	// stream beside the server: the throwaway server's restore_command
	// (run as postgres) reads it while the stream goes on writing.
	startWalkeeperAsPostgres(t, nil, "stream", "--repo", local.url, "--dsn", dsn, "--slot", "drill_local")
	localBackup := func() string {
		t.Helper()
		stdout, stderr, code := runWalkeeperAsPostgres(t, nil, "backup", "--repo", local.url, "--dsn", dsn)
		if code != 0 {
			t.Fatalf("backup: exit %d:\n%s", code, stderr)
		}
		return strings.TrimSpace(stdout)
	}
	startWalkeeper(t, s3t.env, "stream", "--repo", s3t.url, "--dsn", dsn, "--slot", "drill_s3")
	waitStored := func(repos ...repoTarget) {
		t.Helper()
		end := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text"))
		c.Exec(t, "SELECT pg_switch_wal()")
		for _, r := range repos {
			repo := r.open(t)
			waitFor(t, 2*time.Minute, "the stream to store the WAL in "+r.name, func() bool {
				e, _ := repoEnd(ctx, repo)
				return e >= end
			})
		}
	}

	c.Exec(t, "CREATE TABLE kept (i int PRIMARY KEY, pad text)")
	c.Exec(t, "INSERT INTO kept SELECT g, repeat('x', 50) FROM generate_series(1, 1000) g")
	first := localBackup()
	runBackup(t, s3t.env, s3t.url, dsn)
	mid := c.QueryString(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	c.Exec(t, "INSERT INTO kept SELECT g, repeat('y', 50) FROM generate_series(1001, 2000) g")
	waitStored(local, s3t)

	dir := harness.MakeDir(t, "drill")
	checkOK := filepath.Join(dir, "ok.sql")
	os.WriteFile(checkOK, []byte("SELECT 1 FROM kept HAVING count(*) = 2000;\n"), 0o644)
	drillRun := func(env []string, wantCode int, args ...string) (string, string) {
		t.Helper()
		stdout, stderr, code := runWalkeeper(t, append(env, raceEnv), append([]string{"drill"}, args...)...)
		if code != wantCode {
			t.Fatalf("drill %v: exit %d, want %d\n%s%s", args, code, wantCode, stdout, stderr)
		}
		return stdout, stderr
	}

	t.Run("healthy local", func(t *testing.T) {
		scratch := filepath.Join(dir, "scratch-local")
		metrics := filepath.Join(dir, "drill.prom")
		stdout, _ := drillRun(nil, 0, "--repo", local.url, "--scratch", scratch, "--check-sql", checkOK, "--json", "--metrics-file", metrics)
		var rep drill.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("drill --json: %v\n%s", err, stdout)
		}
		if !rep.OK || len(rep.Problems) != 0 || !rep.Amcheck.Ran || rep.Amcheck.Indexes == 0 || rep.Amcheck.Tables == 0 ||
			rep.Amcheck.Databases < 2 || rep.CheckQueries != 1 || rep.WALReplayedBytes <= 0 || rep.RestoreSeconds <= 0 ||
			rep.RecoverySeconds <= 0 || rep.RTOSeconds < rep.RestoreSeconds || rep.ReplayedTo == "" {
			t.Errorf("report: %+v", rep)
		}
		t.Logf("drill report: %+v", rep)
		if _, err := os.Stat(scratch); !os.IsNotExist(err) {
			t.Errorf("scratch directory left behind: %v", err)
		}
		data, err := os.ReadFile(metrics)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"walkeeper_drill_success 1", "walkeeper_drill_rto_seconds ", "walkeeper_drill_last_success_timestamp_seconds "} {
			if !strings.Contains(string(data), want) {
				t.Errorf("metrics file lacks %q:\n%s", want, data)
			}
		}
	})

	t.Run("healthy s3", func(t *testing.T) {
		stdout, _ := drillRun(s3t.env, 0, "--repo", s3t.url, "--scratch", filepath.Join(dir, "scratch-s3"))
		if !strings.HasPrefix(stdout, "drill ok: backup ") || !strings.Contains(stdout, "usable after") || !strings.Contains(stdout, "amcheck: ") {
			t.Errorf("drill printed %q", stdout)
		}
		t.Logf("%s", strings.TrimSpace(stdout))
	})

	t.Run("refuses scratch", func(t *testing.T) {
		busy := harness.MakeDir(t, "drill-busy")
		os.WriteFile(filepath.Join(busy, "keep-me"), []byte("x"), 0o600)
		if _, stderr := drillRun(nil, 1, "--repo", local.url, "--scratch", busy); !strings.Contains(stderr, "is not empty") {
			t.Errorf("non-empty scratch: %s", stderr)
		}
		if data, err := os.ReadFile(filepath.Join(busy, "keep-me")); err != nil || string(data) != "x" {
			t.Error("the non-empty scratch directory was changed")
		}
		pgdir := harness.MakeDir(t, "drill-pgdata")
		os.WriteFile(filepath.Join(pgdir, "PG_VERSION"), []byte("15\n"), 0o600)
		if _, stderr := drillRun(nil, 1, "--repo", local.url, "--scratch", pgdir); !strings.Contains(stderr, "holds a PostgreSQL data directory") {
			t.Errorf("data directory as scratch: %s", stderr)
		}
		if _, stderr := drillRun(nil, 2, "--repo", local.url); !strings.Contains(stderr, "--scratch") {
			t.Errorf("no --scratch: %s", stderr)
		}
	})

	t.Run("damaged table", func(t *testing.T) {
		c.Exec(t, "CREATE TABLE damaged (i int, t text) WITH (autovacuum_enabled = off)")
		c.Exec(t, "INSERT INTO damaged SELECT g, 'row ' || g FROM generate_series(1, 100) g")
		c.Exec(t, "CHECKPOINT")
		file := filepath.Join(c.DataDir(), c.QueryString(t, "SELECT pg_relation_filepath('damaged')"))
		c.Stop(t)
		f, err := os.OpenFile(file, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		// The first 20 line pointers of page 0 (after the 24-byte header),
		// each made a normal item (lp_flags 1) at page offset 8191 (not
		// maximally aligned) of length 100: little-endian lp_off:15,
		// lp_flags:2, lp_len:15. (All ones would be dead items, which
		// amcheck rightly skips.)
		if _, err := f.WriteAt([]byte(strings.Repeat("\xff\x9f\xc8\x00", 20)), 24); err != nil {
			t.Fatal(err)
		}
		f.Close()
		c.Start(t)
		damagedID := localBackup()
		waitStored(local)
		stdout, stderr := drillRun(nil, 5, "--repo", local.url, "--scratch", filepath.Join(dir, "scratch-damaged"), "--backup", damagedID)
		if !strings.Contains(stderr, "amcheck: postgres: table damaged") {
			t.Errorf("drill of the damaged backup: %s", stderr)
		}
		t.Logf("%s", stdout)
	})

	t.Run("missing segment", func(t *testing.T) {
		repo := local.open(t)
		key := walObjects(t, repo)[mid]
		if key == "" {
			t.Fatalf("segment %s not stored", mid)
		}
		if err := repo.Backend().Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		checkNone := filepath.Join(dir, "none.sql")
		os.WriteFile(checkNone, []byte("SELECT 1 FROM kept WHERE i < 0;\n"), 0o644)
		stdout, _ := drillRun(nil, 5, "--repo", local.url, "--scratch", filepath.Join(dir, "scratch-gap"), "--backup", first,
			"--check-sql", checkNone, "--json")
		var rep drill.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("drill --json: %v\n%s", err, stdout)
		}
		kinds := map[string]string{}
		for _, p := range rep.Problems {
			kinds[p.Kind] = p.Object
		}
		if kinds[drill.ProblemMissingWAL] != mid || !strings.Contains(kinds[drill.ProblemCheckSQL], "statement 1") {
			t.Errorf("want missing-wal %s and check-sql statement 1, got %+v\n%s", mid, rep.Problems, stdout)
		}
	})

	// No throwaway server archived into a repository.
	for _, r := range targets {
		if _, err := archive.Find(ctx, r.open(t), archive.HistoryName(2)); err == nil || !strings.Contains(err.Error(), storage.ErrNotFound.Error()) {
			t.Errorf("%s: a timeline 2 history file appeared (%v): a drill archived into the repository", r.name, err)
		}
	}
}
