package test

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
)

// verifyBackup runs pg_verifybackup (the oracle) on a restored directory
// before it is started; WAL is checked separately by recovery.
func verifyBackup(t *testing.T, dir string) {
	t.Helper()
	harness.RequirePGBin(t, "pg_verifybackup")
	out, err := exec.Command(harness.PGBin("pg_verifybackup"), "-n", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_verifybackup %s: %v\n%s", dir, err, out)
	}
}

func waitPromoted(t *testing.T, c *harness.Cluster) {
	t.Helper()
	waitFor(t, 2*time.Minute, "recovery to finish", func() bool {
		return c.QueryString(t, "SELECT pg_is_in_recovery()") == "f"
	})
}

// TestRestorePointInTime backs up, writes in steps, notes an xid, a
// restore point, an LSN and a time with exact row counts at each, writes
// more, and restores to each target: the restored server has exactly the
// rows of that moment.
func TestRestorePointInTime(t *testing.T) {
	t.Parallel()
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			c := harness.StartCluster(t, harness.ClusterOptions{Name: "pitr-" + target.name})
			tsDir := harness.MakeDir(t, "pitr-ts")
			c.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+tsDir+"'")
			env := target.env
			wk := startWalkeeper(t, env, "stream", "--repo", target.url, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
			c.Pgbench(t, "-i", "-s", "1", "-q")
			c.Exec(t, "CREATE TABLE steps (i int) TABLESPACE ts1")
			backupID := runBackup(t, env, target.url, c.DSN(harness.ReplicationUser))

			insert := func(n int) {
				c.Exec(t, "INSERT INTO steps SELECT g FROM generate_series(1, "+strconv.Itoa(n)+") g")
			}
			insert(100)
			conn := c.Conn(t)
			ctx := context.Background()
			tx, _ := conn.Begin(ctx)
			tx.Exec(ctx, "INSERT INTO steps SELECT g FROM generate_series(1, 50) g")
			var xid string
			tx.QueryRow(ctx, "SELECT txid_current()::text").Scan(&xid)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			// 150 rows at xid
			insert(50)
			c.Exec(t, "SELECT pg_create_restore_point('walkeeper_test_point')")
			// 200 rows at the restore point
			insert(50)
			lsn := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text")
			// 250 rows at lsn
			insert(50)
			time.Sleep(1100 * time.Millisecond)
			at := c.QueryString(t, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
			time.Sleep(1100 * time.Millisecond)
			// 300 rows at time
			insert(50)
			// 350 rows at the end
			end := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text"))
			c.Exec(t, "SELECT pg_switch_wal()")
			repo := target.open(t)
			waitStored(t, repo, end)
			if code := wk.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("stream exit %d", code)
			}
			giveToPostgres(t, target.url)

			for _, tc := range []struct {
				name string
				args []string
				want string
			}{
				{"xid", []string{"--target-xid", xid}, "150"},
				{"name", []string{"--target-name", "walkeeper_test_point"}, "200"},
				{"lsn", []string{"--target-lsn", lsn}, "250"},
				{"time", []string{"--target-time", at}, "300"},
				{"end of archive", nil, "350"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					r := c.RestoreTarget(t, "pitr-"+target.name+"-"+strings.ReplaceAll(tc.name, " ", "-"))
					newTS := filepath.Join(harness.MakeDir(t, "pitr-ts-new"), "ts")
					args := append([]string{"restore", "--repo", target.url, "--target-dir", r.DataDir(), "--backup", backupID,
						"--target-action", "promote", "--tablespace-map", tsDir + "=" + newTS}, tc.args...)
					stdout, stderr, code := runWalkeeper(t, env, args...)
					if code != 0 {
						t.Fatalf("restore: exit %d: %s", code, stderr)
					}
					if strings.TrimSpace(stdout) != backupID {
						t.Errorf("restore printed %q", stdout)
					}
					if _, err := os.Stat(filepath.Join(r.DataDir(), "recovery.signal")); err != nil {
						t.Error("no recovery.signal")
					}
					auto, _ := os.ReadFile(filepath.Join(r.DataDir(), "postgresql.auto.conf"))
					if bytes.Contains(auto, []byte("AWS")) || bytes.Contains(auto, []byte(c.Password())) {
						t.Errorf("secrets in postgresql.auto.conf:\n%s", auto)
					}
					if link, _ := os.Readlink(filepath.Join(r.DataDir(), "pg_tblspc", c.QueryString(t, "SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'"))); link != newTS {
						t.Errorf("tablespace link points to %q, want %q", link, newTS)
					}
					r.SetEnv(append(srvEnvOnly(env), raceEnv))
					r.StartRestored(t)
					waitPromoted(t, r)
					if got := r.QueryString(t, "SELECT count(*) FROM steps"); got != tc.want {
						t.Fatalf("restored to %s: %s rows, want %s", tc.name, got, tc.want)
					}
				})
			}
		})
	}
}

// raceEnv stops the race-enabled walkeeper binary from sleeping a second at
// every exit: recovery runs wal-fetch once per segment.
const raceEnv = "GORACE=atexit_sleep_ms=0"

// srvEnvOnly keeps the AWS_* variables a server needs for restore_command.
func srvEnvOnly(env []string) []string {
	var out []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "AWS_") {
			out = append(out, kv)
		}
	}
	return out
}

// TestRestoreAsReplica restores the latest backup as a replica of a primary
// under pgbench load: it reaches streaming on its slot and ends up with the
// primary's data. The primary has recycled the WAL from the backup's start,
// so the replica must catch up from the repository first.
func TestRestoreAsReplica(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "replica-primary", ExtraConf: map[string]string{"max_wal_size": "64MB", "min_wal_size": "32MB"}})
	repoDir := filepath.Join(harness.MakeDir(t, "replica-repo"), "repo")
	wk := startWalkeeperAsPostgres(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
	c.Pgbench(t, "-i", "-s", "2", "-q")
	id := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser))
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	meta := readMeta(t, repo, id)

	// Churn WAL until the primary no longer has the backup's first segment.
	startSeg := archive.SegmentName(meta.Timeline, lsnOf(t, meta.StartLSN)/segSize, segSize)
	for i := 0; i < 20; i++ {
		c.Pgbench(t, "-T", "1", "-c", "2")
		c.Exec(t, "SELECT pg_switch_wal()")
		c.Exec(t, "CHECKPOINT")
		if c.QueryString(t, "SELECT count(*) FROM pg_ls_waldir() WHERE name = '"+startSeg+"'") == "0" {
			break
		}
	}
	if c.QueryString(t, "SELECT count(*) FROM pg_ls_waldir() WHERE name = '"+startSeg+"'") != "0" {
		t.Fatalf("the primary still has %s", startSeg)
	}

	// A pgpass the replica (running as postgres) and walkeeper both read.
	passDir := harness.MakeDir(t, "pgpass")
	passfile := filepath.Join(passDir, "pgpass")
	os.WriteFile(passfile, []byte("127.0.0.1:"+strconv.Itoa(c.Port())+":*:walkeeper:"+c.Password()+"\n"), 0o600)
	if os.Geteuid() == 0 {
		chownPostgres(t, passfile)
	}
	dsn := "host=127.0.0.1 port=" + strconv.Itoa(c.Port()) + " user=walkeeper dbname=postgres sslmode=disable passfile=" + passfile

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				// Errors are expected when the test ends mid-run.
				c.RunAsPostgres(t, "pgbench", "-T", "1", "-c", "2", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres", "postgres")
			}
		}
	}()
	r := c.RestoreTarget(t, "replica1")
	_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", r.DataDir(), "--as-replica",
		"--dsn", dsn, "--slot", "replica1", "--port", strconv.Itoa(r.Port()))
	if code != 0 {
		t.Fatalf("restore --as-replica: exit %d: %s", code, stderr)
	}
	verifyBackup(t, r.DataDir())
	if _, err := os.Stat(filepath.Join(r.DataDir(), "standby.signal")); err != nil {
		t.Fatal("no standby.signal")
	}
	auto, _ := os.ReadFile(filepath.Join(r.DataDir(), "postgresql.auto.conf"))
	if !bytes.Contains(auto, []byte("primary_slot_name = 'replica1'")) || bytes.Contains(auto, []byte(c.Password())) {
		t.Errorf("postgresql.auto.conf:\n%s", auto)
	}
	if c.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'replica1' AND slot_type = 'physical' AND restart_lsn IS NOT NULL") != "1" {
		t.Error("slot replica1 was not created with reserved WAL")
	}
	r.SetEnv([]string{raceEnv})
	r.StartRestored(t)
	waitFor(t, 2*time.Minute, "the replica to stream from the primary", func() bool {
		return c.QueryString(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'replica1' AND state = 'streaming'") == "1"
	})
	close(stop)
	wg.Wait()
	target := c.QueryString(t, "SELECT pg_current_wal_lsn()::text")
	waitFor(t, time.Minute, "the replica to replay everything", func() bool {
		return r.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= '"+target+"'::pg_lsn") == "t"
	})
	const sum = "SELECT count(*) || ':' || md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) FROM pgbench_accounts"
	const hist = "SELECT count(*) FROM pgbench_history"
	if p, s := c.QueryString(t, sum), r.QueryString(t, sum); p != s {
		t.Errorf("pgbench_accounts differ: primary %s, replica %s", p, s)
	}
	if p, s := c.QueryString(t, hist), r.QueryString(t, hist); p != s {
		t.Errorf("pgbench_history rows differ: primary %s, replica %s", p, s)
	}
	if !strings.Contains(readLog(t, r), "restored log file") {
		t.Error("the replica did not fetch WAL from the repository")
	}
	if r.QueryString(t, "SELECT pg_is_in_recovery()") != "t" {
		t.Error("the replica is not in recovery")
	}
	wk.stop(t, syscall.SIGTERM)
}

func readLog(t *testing.T, c *harness.Cluster) string {
	b, _ := os.ReadFile(c.LogFile())
	return string(b)
}

func chownPostgres(t *testing.T, p string) {
	out, err := exec.Command("chown", "postgres:postgres", p).CombinedOutput()
	if err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
}

// TestRestoreRefusesCorruptionAndHostileArchives: a flipped byte in a stored
// archive fails the restore naming the object and leaves a directory that
// cannot start; crafted archives that try to write outside the target are
// refused and nothing lands outside.
func TestRestoreRefusesCorruptionAndHostileArchives(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "restore-bad"})
	c.Pgbench(t, "-i", "-s", "1", "-q")
	repoDir := filepath.Join(t.TempDir(), "repo")
	// Uncompressed, so the test can aim at a tar header (the zstd case of
	// the same path is in the storage conformance suite).
	id := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser), "--compression", "none")
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	meta := readMeta(t, repo, id)

	// Non-empty target without --force.
	busy := t.TempDir()
	os.WriteFile(filepath.Join(busy, "keep"), []byte("x"), 0o600)
	_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", busy)
	if code != 1 || !strings.Contains(stderr, "not empty") {
		t.Errorf("non-empty target: exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(busy, "keep")); string(b) != "x" {
		t.Error("the non-empty target was changed")
	}

	// A flipped byte in the middle of the base archive (one chunk at the
	// default chunk size).
	var baseKey string
	for _, o := range meta.Objects {
		if o.Name == basebackup.ChunkName("base.tar", 0) {
			baseKey = o.Key
		}
	}
	path := filepath.Join(repoDir, baseKey)
	// Depending on where it lands, the damage shows as a checksum
	// mismatch at the end or as a garbled tar header on the way (the
	// first header's checksum field sits after the 16-byte object
	// header): both must be reported as corruption.
	good, _ := os.ReadFile(path)
	for _, pos := range []int{16 + 150, len(good) / 2} {
		bad := bytes.Clone(good)
		bad[pos] ^= 0x40
		os.WriteFile(path, bad, 0o600)
		dir := filepath.Join(t.TempDir(), "data")
		_, stderr, code = runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", dir)
		if code != 1 || !strings.Contains(stderr, basebackup.ChunkName("base.tar", 0)) || !strings.Contains(stderr, "corrupt") {
			t.Errorf("flipped byte at %d of %d: exit %d: %s", pos, len(good), code, stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err == nil {
			t.Error("a failed restore left global/pg_control: the directory could be started")
		}
		if _, err := os.Stat(filepath.Join(dir, "WALKEEPER_RESTORE_FAILED")); err != nil {
			t.Error("no failure note in the target directory")
		}
	}
	os.WriteFile(path, good, 0o600)

	// Hostile archives stored as complete backups.
	outside := t.TempDir()
	for _, tc := range []struct {
		name    string
		entries []tar.Header
		want    string
	}{
		{"dot-dot", []tar.Header{{Name: "../escaped", Typeflag: tar.TypeReg, Size: 1}}, "leaves the target"},
		{"absolute", []tar.Header{{Name: filepath.Join(outside, "abs"), Typeflag: tar.TypeReg, Size: 1}}, "absolute path"},
		{"symlink escape", []tar.Header{{Name: "link", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "link/through", Typeflag: tar.TypeReg, Size: 1}}, "points outside"},
		{"write through a link", []tar.Header{{Name: "sub", Typeflag: tar.TypeDir}, {Name: "inner", Typeflag: tar.TypeSymlink, Linkname: "sub"},
			{Name: "inner/file", Typeflag: tar.TypeReg, Size: 1}}, "through the link"},
		{"hard link outside", []tar.Header{{Name: "hard", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}}, "outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hid := "20200101T0000" + strconv.Itoa(10+len(tc.name)) + "Z"
			storeHostileBackup(t, repo, hid, tc.entries)
			parent := t.TempDir()
			dir := filepath.Join(parent, "data")
			_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", dir, "--backup", hid)
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d: %s", code, stderr)
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Errorf("written outside the target: %v", entries)
			}
			if entries, _ := os.ReadDir(parent); len(entries) != 1 {
				t.Errorf("written beside the target: %v", entries)
			}
		})
	}
}

// storeHostileBackup writes a backup whose base.tar holds the given entries
// (each file one byte), with a backup.json that marks it complete.
func storeHostileBackup(t *testing.T, repo *storage.Repository, id string, entries []tar.Header) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		h.Mode = 0o600
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("x"))
		}
	}
	tw.Close()
	w, err := repo.Create(context.Background(), storage.BackupKey(id, "base.tar"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write(buf.Bytes())
	m, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	meta := basebackup.Meta{ID: id, StartTime: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), StartLSN: "0/2000028", StopLSN: "0/2000100", Timeline: 1,
		Objects:     []basebackup.Object{{Name: "base.tar", Key: storage.BackupKey(id, "base.tar") + repo.Codec().Ext(), Size: m.Size}},
		Tablespaces: []basebackup.Tablespace{{Archive: "base.tar"}}}
	if err := repo.WriteJSON(context.Background(), storage.BackupMetaKey(id), meta); err != nil {
		t.Fatal(err)
	}
}
