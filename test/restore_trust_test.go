package test

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// archivingPrimary starts a primary whose archive_command is walkeeper
// wal-push into the local repository repo, takes a first backup (which
// creates walkeeper.json) and hands the repository to the postgres OS user,
// as if walkeeper ran as postgres, so the archiver can write it.
func archivingPrimary(t *testing.T, name, repo string) (*harness.Cluster, string) {
	t.Helper()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: name, ExtraConf: map[string]string{
		"archive_mode":    "on",
		"archive_command": raceEnv + " " + walkeeperBin + " wal-push --repo " + repo + " %p",
	}})
	id := runBackup(t, nil, repo, c.DSN(harness.ReplicationUser))
	giveToPostgres(t, repo)
	return c, id
}

// switchAndArchive ends the current segment and waits until the server has
// archived it.
func switchAndArchive(t *testing.T, c *harness.Cluster) {
	t.Helper()
	seg := c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
	waitFor(t, 2*time.Minute, "the archiver to store "+seg, func() bool {
		return c.QueryString(t, "SELECT coalesce(last_archived_wal, '') >= '"+seg+"' FROM pg_stat_archiver") == "t"
	})
}

// TestRestoredCloneDoesNotArchiveIntoItsRepository: a point-in-time restore
// of a primary that archives with wal-push into repository R keeps the
// primary's archive_command; once promoted, the clone must not store its
// timeline history and segments in R, where restores, verify and the
// stream would follow the clone's history instead of production's.
func TestRestoredCloneDoesNotArchiveIntoItsRepository(t *testing.T) {
	repoDir := filepath.Join(harness.MakeDir(t, "clone-repo"), "repo")
	c, backupID := archivingPrimary(t, "clone-primary", repoDir)
	c.Exec(t, "CREATE TABLE prod AS SELECT generate_series(1, 100) AS i")
	lsn := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text")
	c.Exec(t, "INSERT INTO prod SELECT generate_series(101, 150)")
	switchAndArchive(t, c)
	// Production stops: from now on only the clone could add WAL to R.
	c.Stop(t)
	repo, err := storage.Open(t.Context(), storage.Options{Repo: repoDir})
	if err != nil {
		t.Fatal(err)
	}
	before := walObjects(t, repo)

	r := c.RestoreTarget(t, "clone")
	_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", r.DataDir(), "--backup", backupID,
		"--target-lsn", lsn, "--target-action", "promote")
	if code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	r.SetEnv([]string{raceEnv})
	r.StartRestored(t)
	waitPromoted(t, r)
	if got := r.QueryString(t, "SELECT count(*) FROM prod"); got != "100" {
		t.Fatalf("clone has %s rows, want 100", got)
	}
	// The clone lives its own life: writes, a segment switch.
	r.Exec(t, "INSERT INTO prod SELECT generate_series(1000, 1999)")
	r.QueryString(t, "SELECT pg_switch_wal()")
	r.Exec(t, "CHECKPOINT")
	// Whatever the clone would archive (the timeline 2 history file, the
	// old timeline's partial segment, the switched segment) is marked
	// .ready by now; wait until nothing is pending.
	waitFor(t, 2*time.Minute, "the clone's archiver to have nothing pending", func() bool {
		return r.QueryString(t, "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'") == "0"
	})
	after := walObjects(t, repo)
	if added := slices.Sorted(maps.Keys(diffKeys(after, before))); len(added) > 0 {
		t.Errorf("the promoted clone archived into the repository it was restored from: %s", strings.Join(added, ", "))
	}
	if got := r.QueryString(t, "SHOW archive_mode"); got != "off" {
		t.Errorf("clone archive_mode = %s, want off", got)
	}
	if stdout, stderr, code := runWalkeeper(t, nil, "verify", "--repo", repoDir); code != 0 {
		t.Errorf("verify of the production repository after the clone ran: exit %d\n%s%s", code, stdout, stderr)
	}
}

// diffKeys returns the keys of a that b lacks.
func diffKeys(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		if _, ok := b[k]; !ok {
			out[k] = v
		}
	}
	return out
}

// TestRestorePicksBackupThatReachesTarget: with two backups and rows
// written between them, a point-in-time restore to a time or an LSN between
// the backups takes the first one (the second ends after the target, and
// PostgreSQL could not stop there) and returns exactly the rows of that
// moment; a target after both takes the newest; a target before every
// backup, or before the end of the backup named with --backup, is refused
// in one line before anything is downloaded or written.
func TestRestorePicksBackupThatReachesTarget(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "pick"})
	repoDir := filepath.Join(harness.MakeDir(t, "pick-repo"), "repo")
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
	c.Exec(t, "CREATE TABLE rows_between (i int); INSERT INTO rows_between SELECT generate_series(1, 100)")
	serverTime := func() string {
		return c.QueryString(t, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
	}
	earlyTime := serverTime() // 100 rows, before the first backup ends
	earlyLSN := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text")
	first := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser))
	c.Exec(t, "INSERT INTO rows_between SELECT generate_series(1, 50)")
	time.Sleep(1100 * time.Millisecond)
	betweenTime := serverTime() // 150 rows
	betweenLSN := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text")
	time.Sleep(1100 * time.Millisecond)
	c.Exec(t, "INSERT INTO rows_between SELECT generate_series(1, 50)")
	second := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser))
	c.Exec(t, "INSERT INTO rows_between SELECT generate_series(1, 50)")
	lateLSN := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text") // 250 rows
	end := lsnOf(t, lateLSN)
	c.Exec(t, "SELECT pg_switch_wal()")
	repo, err := storage.Open(t.Context(), storage.Options{Repo: repoDir})
	if err != nil {
		t.Fatal(err)
	}
	waitStored(t, repo, end)
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d", code)
	}
	giveToPostgres(t, repoDir)

	for _, tc := range []struct {
		name       string
		args       []string
		wantBackup string
		wantRows   string
	}{
		{"time between the backups", []string{"--target-time", betweenTime}, first, "150"},
		{"lsn between the backups", []string{"--target-lsn", betweenLSN}, first, "150"},
		{"lsn after both", []string{"--target-lsn", lateLSN}, second, "250"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.RestoreTarget(t, "pick-"+strings.ReplaceAll(tc.name, " ", "-"))
			stdout, stderr, code := runWalkeeper(t, nil, append([]string{"restore", "--repo", repoDir, "--target-dir", r.DataDir(),
				"--target-action", "promote"}, tc.args...)...)
			if code != 0 {
				t.Fatalf("restore: exit %d: %s", code, stderr)
			}
			if got := strings.TrimSpace(stdout); got != tc.wantBackup {
				t.Fatalf("restore chose backup %s, want %s (backups: %s then %s)", got, tc.wantBackup, first, second)
			}
			r.SetEnv([]string{raceEnv})
			r.StartRestored(t)
			waitPromoted(t, r)
			if got := r.QueryString(t, "SELECT count(*) FROM rows_between"); got != tc.wantRows {
				t.Fatalf("restored %s rows, want %s", got, tc.wantRows)
			}
		})
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"time before every backup", []string{"--target-time", earlyTime}, first},
		{"lsn before every backup", []string{"--target-lsn", earlyLSN}, first},
		{"time before the named backup", []string{"--backup", second, "--target-time", betweenTime}, second},
		{"lsn before the named backup", []string{"--backup", second, "--target-lsn", betweenLSN}, second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(harness.MakeDir(t, "pick-refused"), "data")
			_, stderr, code := runWalkeeper(t, nil, append([]string{"restore", "--repo", repoDir, "--target-dir", dir}, tc.args...)...)
			msg := strings.TrimSpace(stderr)
			t.Logf("exit %d: %s", code, msg)
			if code != 1 || strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
				t.Errorf("exit %d, stderr %q: want exit 1 and one line naming backup %s", code, msg, tc.want)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("the refused restore wrote %s (%v)", dir, err)
			}
		})
	}
}

// TestRestoreRefusesRepositoryTheServerCannotRead: run as root, restore
// gives the files to the postgres OS user, whose restore_command must read
// the local repository. A repository private to root (as root's backup
// leaves it: 0700 directories, 0600 files) is refused in one line saying
// what to do, before anything is written; given to postgres, the same
// restore works and the server recovers from it.
func TestRestoreRefusesRepositoryTheServerCannotRead(t *testing.T) {
	harness.RequireRoot(t)
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "private-repo"})
	c.Exec(t, "CREATE TABLE private (i int); INSERT INTO private SELECT generate_series(1, 42)")
	repoDir := filepath.Join(harness.MakeDir(t, "private-repo"), "repo")
	runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser))
	if st, err := os.Stat(repoDir); err != nil || st.Mode().Perm() != 0o700 || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("repository %s: %v %v, want 0700 owned by root", repoDir, st.Mode(), err)
	}

	r := c.RestoreTarget(t, "private-restored")
	_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", r.DataDir(), "--target-action", "promote")
	msg := strings.TrimSpace(stderr)
	t.Logf("exit %d: %s", code, msg)
	if code != 1 || strings.Contains(msg, "\n") || !strings.Contains(msg, "postgres") || !strings.Contains(msg, repoDir) ||
		!strings.Contains(msg, "chown") {
		t.Errorf("restore from a repository private to root: exit %d, stderr %q; want exit 1 and one line naming postgres, %s and what to do", code, msg, repoDir)
	}
	if _, err := os.Stat(r.DataDir()); !os.IsNotExist(err) {
		t.Fatalf("the refused restore wrote %s (%v)", r.DataDir(), err)
	}

	giveToPostgres(t, repoDir)
	if _, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", r.DataDir(), "--target-action", "promote"); code != 0 {
		t.Fatalf("restore from the repository given to postgres: exit %d: %s", code, stderr)
	}
	r.SetEnv([]string{raceEnv})
	r.StartRestored(t)
	waitPromoted(t, r)
	if got := r.QueryString(t, "SELECT count(*) FROM private"); got != "42" {
		t.Fatalf("restored %s rows, want 42", got)
	}
}
