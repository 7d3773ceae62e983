package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// incrTables are the tables compared between the primary and a restore.
var incrTables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "trunc_me", "new_t", "shrink"}

// TestIncrementalChain (issue 14) on PostgreSQL 17 with a local repository
// and 18 with an S3 one, each its own server, in parallel: a full backup,
// changes (pgbench, a dropped, a truncated and a new table, a new
// database, a table VACUUM shrinks), an incremental, more changes, a
// second incremental. Each chain is restored to the end of its newest
// member and the second to a time after it; every restored server starts
// and has the primary's data of that moment (row counts and md5 of all
// rows), the dropped table stays dropped, and the restored backup_manifest
// is a full one (every file in it with its size and CRC-32C, no
// INCREMENTAL file, a valid Manifest-Checksum). On 18 (S3) the chain
// restored --as-replica replays from the repository, streams from the
// primary and follows it; on 17 an encrypted repository written with the
// public key only falls back to a full backup (with the identity: an
// incremental whose chain verifies). Then --max-chain falls back to a full
// backup, retention keeps chains whole, summarize_wal = off is refused, WAL
// summaries the server removed give a full backup, and a chain whose
// middle member is damaged or missing is refused by restore and reported
// by verify. On 16, --incremental is refused.
func TestIncrementalChain(t *testing.T) {
	t.Parallel()
	// One version per repository kind keeps both covered at the cost of
	// two chains, not four; the replica and the encrypted repository are
	// each tried on one of them.
	for _, tc := range []incrCase{
		{major: 17, encrypted: true, smallChunks: true, target: func(t *testing.T) repoTarget { return localRepoTarget(t, "incr17-repo") }},
		{major: 18, replica: true, target: func(t *testing.T) repoTarget { return s3Target(harness.StartS3(t)) }},
	} {
		t.Run(fmt.Sprintf("pg%d", tc.major), func(t *testing.T) {
			t.Parallel()
			harness.RequireServer(t, tc.major)
			incrementalChain(t, tc, tc.target(t))
		})
	}
	t.Run("pg16", func(t *testing.T) {
		t.Parallel()
		harness.RequireServer(t, 16)
		c := harness.StartCluster(t, harness.ClusterOptions{Name: "incr16", Major: 16})
		repo := filepath.Join(harness.MakeDir(t, "incr16-repo"), "repo")
		_, stderr, code := runWalkeeper(t, nil, "backup", "--incremental", "--wal", "include", "--repo", repo, "--dsn", c.DSN(harness.ReplicationUser))
		if code != 1 || !strings.Contains(stderr, "need PostgreSQL 17 or newer") || !strings.Contains(stderr, "drop --incremental") {
			t.Errorf("backup --incremental on 16: exit %d, want 1 with the reason and the fix:\n%s", code, stderr)
		}
	})
}

// incrCase is one server version of TestIncrementalChain.
type incrCase struct {
	major int
	// target makes the repository.
	target func(t *testing.T) repoTarget
	// replica: also restore the chain --as-replica; encrypted: also the
	// fallbacks of an encrypted repository.
	replica, encrypted bool
	// smallChunks: backups with 1 MB chunks, so pgbench_accounts is
	// stored as parts in every member, and the newer members' blocks
	// come from the full backup's parts.
	smallChunks bool
}

type incrPoint struct {
	id, stopLSN, sums, newdb string
}

func incrementalChain(t *testing.T, tc incrCase, target repoTarget) {
	major := tc.major
	name := fmt.Sprintf("incr%d", major)
	repo, env := target.url, target.env
	c := harness.StartCluster(t, harness.ClusterOptions{Name: name, Major: major, ExtraConf: map[string]string{"summarize_wal": "on"}})
	dsn := c.DSN(harness.ReplicationUser)
	wk := startWalkeeper(t, env, "stream", "--repo", repo, "--dsn", dsn, "--slot", "wk")
	c.Pgbench(t, "-i", "-s", "1", "-q")
	c.Exec(t, "CREATE TABLE drop_me AS SELECT g AS i, md5(g::text) AS s FROM generate_series(1, 5000) g")
	c.Exec(t, "CREATE TABLE trunc_me AS SELECT g AS i, md5(g::text) AS s FROM generate_series(1, 5000) g")
	c.Exec(t, "CREATE TABLE shrink AS SELECT g AS i, repeat(md5(g::text), 4) AS s FROM generate_series(1, 20000) g")

	point := func(id string) incrPoint {
		return incrPoint{id: id, sums: tableSums(t, c, incrTables...), newdb: newDBSums(t, c)}
	}
	backup := func(extra ...string) (string, string) {
		args := append([]string{"backup", "--repo", repo, "--dsn", dsn}, extra...)
		if tc.smallChunks {
			args = append(args, "--chunk-size", "1MB")
		}
		stdout, stderr, code := runWalkeeper(t, env, args...)
		if code != 0 {
			t.Fatalf("backup %v: exit %d:\n%s", extra, code, stderr)
		}
		return strings.TrimSpace(stdout), stderr
	}
	c.Exec(t, "CREATE TABLE new_t (i int)") // so tableSums can read it before it has rows
	full, stderr := backup("--incremental") // no parent yet: a full backup
	if !strings.Contains(stderr, "taking a full backup instead of an incremental one: no complete backup of this cluster") {
		t.Errorf("backup --incremental into an empty repository: want the line saying why it is full:\n%s", stderr)
	}
	p0 := point(full)

	// Changes between the full backup and the first incremental.
	c.Pgbench(t, "-T", "3", "-c", "2")
	c.Exec(t, "DROP TABLE drop_me")
	c.Exec(t, "TRUNCATE trunc_me")
	c.Exec(t, "INSERT INTO new_t SELECT g FROM generate_series(1, 3000) g")
	c.Exec(t, "CREATE DATABASE newdb")
	newDBExec(t, c, "CREATE TABLE t AS SELECT g AS i, md5(g::text) AS s FROM generate_series(1, 2000) g")
	i1, _ := backup("--incremental")
	p1 := point(i1)

	// More changes, then the second incremental: VACUUM shrinks shrink.
	c.Pgbench(t, "-T", "2", "-c", "2")
	c.Exec(t, "INSERT INTO trunc_me SELECT g, 'again' FROM generate_series(1, 100) g")
	c.Exec(t, "DELETE FROM shrink WHERE i > 5000")
	c.Exec(t, "VACUUM shrink")
	c.Exec(t, "DELETE FROM new_t WHERE i % 3 = 0")
	newDBExec(t, c, "UPDATE t SET s = 'changed' WHERE i < 100")
	i2, _ := backup("--incremental")
	p2 := point(i2)

	metas := map[string]*basebackup.Meta{}
	for _, row := range listBackups(t, env, repo) {
		id := row["id"].(string)
		kind, _ := row["kind"].(string)
		parent, _ := row["parent"].(string)
		metas[id] = &basebackup.Meta{ID: id, Kind: kind, Parent: parent, StopLSN: fmt.Sprint(row["stop_lsn"])}
	}
	for _, want := range []struct{ id, kind, parent string }{{full, "full", ""}, {i1, "incremental", full}, {i2, "incremental", i1}} {
		if m := metas[want.id]; m == nil || m.Kind != want.kind || m.Parent != want.parent {
			t.Fatalf("list: backup %s is %+v, want %s with parent %q", want.id, m, want.kind, want.parent)
		}
	}
	p1.stopLSN, p2.stopLSN = metas[i1].StopLSN, metas[i2].StopLSN
	rp := target.open(t)
	var m2 basebackup.Meta
	if err := rp.ReadJSON(context.Background(), storage.BackupMetaKey(i2), &m2); err != nil {
		t.Fatal(err)
	}
	if strings.Join(m2.Chain, ",") != full+","+i1 {
		t.Errorf("backup.json chain of %s: %v, want [%s %s]", i2, m2.Chain, full, i1)
	}
	var m0 basebackup.Meta
	rp.ReadJSON(context.Background(), storage.BackupMetaKey(full), &m0)
	if tc.smallChunks && m0.Layout() != basebackup.LayoutParts {
		t.Errorf("full backup %s with 1 MB chunks: archive_layout %d, want %d (pgbench_accounts stored as parts)", full, m0.Layout(), basebackup.LayoutParts)
	}
	if m2.StoredSize*3 > m0.StoredSize {
		t.Errorf("the incremental %s stored %d bytes, not much less than the full backup's %d", i2, m2.StoredSize, m0.StoredSize)
	}
	t.Logf("full %s: %d bytes stored; incrementals %s, %s: %d bytes stored", full, m0.StoredSize, i1, i2, m2.StoredSize)

	// A time after the last backup, with rows only WAL has.
	c.Exec(t, "CREATE TABLE after (i int)")
	c.Exec(t, "INSERT INTO after SELECT generate_series(1, 10)")
	time.Sleep(1100 * time.Millisecond)
	at := c.QueryString(t, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
	pAt := point("")
	time.Sleep(1100 * time.Millisecond)
	c.Exec(t, "INSERT INTO after SELECT generate_series(11, 20)")
	end := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text"))
	c.Exec(t, "SELECT pg_switch_wal()")
	waitStored(t, rp, end)
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d", code)
	}
	giveToPostgres(t, repo)

	// restoreCompare restores backup id (to extra's target) and compares
	// the started server with want.
	restoreCompare := func(t *testing.T, label, id string, extra []string, want incrPoint, afterRows string) {
		r := c.RestoreTarget(t, name+"-"+label)
		args := append([]string{"restore", "--repo", repo, "--target-dir", r.DataDir(), "--backup", id, "--target-action", "promote"}, extra...)
		if _, stderr, code := runWalkeeper(t, env, args...); code != 0 {
			t.Fatalf("restore %s: exit %d: %s", id, code, stderr)
		}
		checkFullManifest(t, r.DataDir())
		r.SetEnv(append(srvEnvOnly(env), raceEnv))
		r.StartRestored(t)
		waitPromoted(t, r)
		if got := tableSums(t, r, incrTables...); got != want.sums {
			t.Errorf("restored %s differs from the primary:\nprimary  %s\nrestored %s", label, want.sums, got)
		}
		if got := newDBSums(t, r); got != want.newdb {
			t.Errorf("restored %s: database newdb %q, primary had %q", label, got, want.newdb)
		}
		if got := r.QueryString(t, "SELECT count(*) FROM pg_class WHERE relname = 'drop_me'"); got != "0" {
			t.Errorf("restored %s: the dropped table drop_me is back", label)
		}
		if afterRows != "" {
			if got := r.QueryString(t, "SELECT count(*) FROM after"); got != afterRows {
				t.Errorf("restored %s: %s rows in after, want %s", label, got, afterRows)
			}
		}
	}
	t.Run("restore_end_of_second", func(t *testing.T) {
		restoreCompare(t, "i2", i2, []string{"--target-lsn", p2.stopLSN}, p2, "")
	})
	t.Run("restore_end_of_first", func(t *testing.T) {
		restoreCompare(t, "i1", i1, []string{"--target-lsn", p1.stopLSN}, p1, "")
	})
	t.Run("restore_pitr_after_last", func(t *testing.T) {
		restoreCompare(t, "pitr", i2, []string{"--target-time", at}, pAt, "10")
	})
	_ = p0
	if tc.replica {
		t.Run("restore_as_replica", func(t *testing.T) {
			// The chain of i2 as a replica of the primary: it replays from the
			// repository to its end, then streams on its own slot, and follows
			// what the primary writes after that.
			passfile := filepath.Join(harness.MakeDir(t, name+"-pgpass"), "pgpass")
			os.WriteFile(passfile, []byte("127.0.0.1:"+strconv.Itoa(c.Port())+":*:walkeeper:"+c.Password()+"\n"), 0o600)
			chownPostgres(t, passfile)
			rdsn := "host=127.0.0.1 port=" + strconv.Itoa(c.Port()) + " user=walkeeper dbname=postgres sslmode=disable passfile=" + passfile
			r := c.RestoreTarget(t, name+"-replica")
			if _, stderr, code := runWalkeeper(t, env, "restore", "--repo", repo, "--target-dir", r.DataDir(), "--backup", i2,
				"--as-replica", "--dsn", rdsn, "--slot", "incr_replica", "--port", strconv.Itoa(r.Port())); code != 0 {
				t.Fatalf("restore --as-replica of %s: exit %d: %s", i2, code, stderr)
			}
			checkFullManifest(t, r.DataDir())
			r.SetEnv(append(srvEnvOnly(env), raceEnv))
			r.StartRestored(t)
			waitFor(t, 2*time.Minute, "the replica to stream from the primary", func() bool {
				return c.QueryString(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'incr_replica' AND state = 'streaming'") == "1"
			})
			c.Exec(t, "INSERT INTO after SELECT generate_series(21, 30)")
			newDBExec(t, c, "UPDATE t SET s = 'streamed' WHERE i > 1900")
			want := c.QueryString(t, "SELECT pg_current_wal_lsn()::text")
			waitFor(t, time.Minute, "the replica to replay up to "+want, func() bool {
				return r.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= '"+want+"'::pg_lsn") == "t"
			})
			tables := append(append([]string{}, incrTables...), "after")
			if p, got := tableSums(t, c, tables...), tableSums(t, r, tables...); got != p {
				t.Errorf("replica differs from the primary:\nprimary %s\nreplica %s", p, got)
			}
			if p, got := newDBSums(t, c), newDBSums(t, r); got != p {
				t.Errorf("replica: database newdb %q, primary has %q", got, p)
			}
			if !strings.Contains(readLog(t, r), "restored log file") {
				t.Error("the replica did not fetch WAL from the repository before streaming")
			}
			if r.QueryString(t, "SELECT pg_is_in_recovery()") != "t" {
				t.Error("the replica is not in recovery")
			}
			r.Stop(t)
			c.Exec(t, "SELECT pg_drop_replication_slot('incr_replica')")
		})
	}

	t.Run("verify", func(t *testing.T) {
		if _, stderr, code := runWalkeeper(t, env, "verify", "--repo", repo); code != 0 {
			t.Fatalf("verify: exit %d: %s", code, stderr)
		}
	})

	if tc.encrypted {
		t.Run("encrypted_public_key_only", func(t *testing.T) {
			// A second, encrypted repository beside the first. With only the
			// public key the parent's manifest cannot be read for the server:
			// a full backup with the reason; with the identity, an
			// incremental one whose chain verifies.
			encRepo := repo + "-enc"
			idFile := filepath.Join(harness.MakeDir(t, name+"-keys"), "id.key")
			recipient, stderr, code := runWalkeeper(t, nil, "keygen", "--output", idFile)
			if code != 0 {
				t.Fatalf("keygen: exit %d: %s", code, stderr)
			}
			chownPostgres(t, idFile) // the restored server's restore_command reads it
			wenv := append(append([]string{}, env...), "WALKEEPER_ENCRYPT_TO="+strings.TrimSpace(recipient))
			encBackup := func(env []string, extra ...string) (string, string) {
				args := append([]string{"backup", "--incremental", "--wal", "include", "--repo", encRepo, "--dsn", dsn}, extra...)
				stdout, stderr, code := runWalkeeper(t, env, args...)
				if code != 0 {
					t.Fatalf("backup %v into the encrypted repository: exit %d:\n%s", extra, code, stderr)
				}
				return strings.TrimSpace(stdout), stderr
			}
			e1, _ := encBackup(wenv)
			e2, stderr := encBackup(wenv)
			want := "taking a full backup instead of an incremental one: the repository is encrypted and this host has only the public key"
			if !strings.Contains(stderr, want) || !strings.Contains(stderr, "--identity-file") {
				t.Errorf("backup --incremental with the public key only: want the line %q naming --identity-file:\n%s", want, stderr)
			}
			c.Exec(t, "INSERT INTO new_t SELECT g FROM generate_series(5001, 6000) g")
			e3, _ := encBackup(env, "--identity-file", idFile)
			kinds := map[string]string{}
			for _, row := range listBackups(t, env, encRepo) {
				kind, _ := row["kind"].(string)
				parent, _ := row["parent"].(string)
				kinds[row["id"].(string)] = kind + ":" + parent
			}
			if kinds[e1] != "full:" || kinds[e2] != "full:" || kinds[e3] != "incremental:"+e2 {
				t.Errorf("encrypted repository: %s %q, %s %q, %s %q; want full, full, incremental on %s", e1, kinds[e1], e2, kinds[e2], e3, kinds[e3], e2)
			}
			// Its chain reads back whole with the identity.
			if out, stderr, code := runWalkeeper(t, env, "verify", "--repo", encRepo, "--identity-file", idFile, "--backup", e3); code != 0 {
				t.Errorf("verify --backup %s of the encrypted chain: exit %d:\n%s%s", e3, code, out, stderr)
			}
		})
	}

	var f2 string // the full backup --max-chain took
	t.Run("max_chain_and_retention", func(t *testing.T) {
		var stderr string
		f2, stderr = backup("--incremental", "--max-chain", "2", "--wal", "include")
		if !strings.Contains(stderr, "taking a full backup instead of an incremental one") || !strings.Contains(stderr, "--max-chain is 2") {
			t.Errorf("--max-chain 2 after two incrementals: want one line saying why it is full:\n%s", stderr)
		}
		dry := func(retain int) map[string]any {
			stdout, stderr, code := runWalkeeper(t, env, "delete", "--repo", repo, "--retain", strconv.Itoa(retain), "--dry-run", "--json")
			if code != 0 {
				t.Fatalf("delete --retain %d --dry-run: exit %d: %s", retain, code, stderr)
			}
			var res map[string]any
			if err := json.Unmarshal([]byte(stdout), &res); err != nil {
				t.Fatalf("%v\n%s", err, stdout)
			}
			return res
		}
		deleted := func(res map[string]any) []string {
			var ids []string
			for _, b := range res["backups"].([]any) {
				ids = append(ids, b.(map[string]any)["id"].(string))
			}
			return ids
		}
		// Keeping i2 and f2 keeps i2's chain.
		if got := deleted(dry(2)); len(got) != 0 {
			t.Errorf("delete --retain 2 would delete %v: the kept %s needs %s and %s", got, i2, full, i1)
		}
		if got := strings.Join(deleted(dry(1)), ","); got != full+","+i1+","+i2 {
			t.Errorf("delete --retain 1 would delete %s, want the whole chain %s,%s,%s", got, full, i1, i2)
		}
	})

	t.Run("summarize_wal_off", func(t *testing.T) {
		c.Exec(t, "ALTER SYSTEM SET summarize_wal = off")
		c.Exec(t, "SELECT pg_reload_conf()")
		waitFor(t, 30*time.Second, "summarize_wal off", func() bool { return c.QueryString(t, "SHOW summarize_wal") == "off" })
		_, stderr, code := runWalkeeper(t, env, "backup", "--incremental", "--wal", "include", "--repo", repo, "--dsn", dsn)
		if code != 1 || !strings.Contains(stderr, "summarize_wal is off") || !strings.Contains(stderr, "ALTER SYSTEM SET summarize_wal = on") {
			t.Errorf("backup --incremental with summarize_wal off: exit %d, want 1 with the fix:\n%s", code, stderr)
		}
		results, _, _ := runDoctor(t, env, "--dsn", dsn)
		if r := results["summarize_wal"]; !strings.Contains(r.Detail, "summarize_wal = off") {
			t.Errorf("doctor summarize_wal: %s %q", r.Status, r.Detail)
		}
	})

	t.Run("summaries_gone", func(t *testing.T) {
		// The server removes a WAL summary once its WAL is gone from
		// pg_wal and the file is older than wal_summary_keep_time
		// (checked once a checkpoint cycle). With the keep time at one
		// minute, the summary files dated two hours back and no slot
		// holding WAL, checkpoints make the server remove the ones that
		// cover the start of f2, the newest backup.
		if f2 == "" {
			t.Fatal("no backup from max_chain_and_retention")
		}
		var parent basebackup.Meta
		if err := rp.ReadJSON(context.Background(), storage.BackupMetaKey(f2), &parent); err != nil {
			t.Fatal(err)
		}
		c.Exec(t, "ALTER SYSTEM SET summarize_wal = on")
		c.Exec(t, "ALTER SYSTEM SET wal_summary_keep_time = '1min'")
		c.Exec(t, "SELECT pg_reload_conf()")
		waitFor(t, 30*time.Second, "summarize_wal on", func() bool { return c.QueryString(t, "SHOW summarize_wal") == "on" })
		c.Exec(t, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
		c.Exec(t, "CREATE TABLE churn (i int)")
		dir := filepath.Join(c.DataDir(), "pg_wal", "summaries")
		gone := fmt.Sprintf(`SELECT NOT EXISTS (SELECT 1 FROM pg_available_wal_summaries() WHERE tli = %[1]d AND start_lsn <= '%[2]s' AND end_lsn > '%[2]s')
  AND EXISTS (SELECT 1 FROM pg_available_wal_summaries() WHERE tli = %[1]d AND start_lsn > '%[2]s')`, parent.Timeline, parent.StartLSN)
		for i := 0; c.QueryString(t, gone) != "t"; i++ {
			if i == 60 {
				t.Fatalf("the server still has the WAL summary at %s after %d checkpoints: %s", parent.StartLSN, i,
					c.QueryString(t, "SELECT string_agg(tli || ':' || start_lsn || '-' || end_lsn, ' ' ORDER BY start_lsn) FROM pg_available_wal_summaries()"))
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			old := time.Now().Add(-2 * time.Hour)
			for _, e := range entries {
				os.Chtimes(filepath.Join(dir, e.Name()), old, old)
			}
			c.Exec(t, "INSERT INTO churn SELECT generate_series(1, 1000)")
			c.Exec(t, "SELECT pg_switch_wal()")
			c.Exec(t, "CHECKPOINT")
			time.Sleep(300 * time.Millisecond)
		}
		id, stderr := backup("--incremental", "--wal", "include")
		want := "taking a full backup instead of an incremental one: the server no longer has WAL summaries back to the start of " + f2
		if !strings.Contains(stderr, want) {
			t.Errorf("backup --incremental without the summaries since %s: want the line %q:\n%s", f2, want, stderr)
		}
		kind := "missing"
		for _, row := range listBackups(t, env, repo) {
			if row["id"] == id {
				kind = fmt.Sprint(row["kind"])
			}
		}
		if kind != basebackup.KindFull {
			t.Errorf("backup %s after the summaries were gone: list says %s, want full", id, kind)
		}
	})

	t.Run("damaged_middle", func(t *testing.T) {
		var m1 basebackup.Meta
		if err := rp.ReadJSON(context.Background(), storage.BackupMetaKey(i1), &m1); err != nil {
			t.Fatal(err)
		}
		var chunk string
		for _, o := range m1.Objects {
			if o.Archive == "base.tar" {
				chunk = o.Key
				break
			}
		}
		// Through the backend, so the same bytes are changed on S3.
		ctx := context.Background()
		be := rp.Backend()
		put := func(key string, b []byte) {
			if err := be.Put(ctx, key, bytes.NewReader(b)); err != nil {
				t.Fatal(err)
			}
		}
		orig := rawObject(t, rp, chunk)
		bad := append([]byte{}, orig...)
		bad[len(bad)/2] ^= 0x40
		put(chunk, bad)
		r := c.RestoreTarget(t, name+"-damaged")
		_, stderr, code := runWalkeeper(t, env, "restore", "--repo", repo, "--target-dir", r.DataDir(), "--backup", i2)
		if code == 0 || !strings.Contains(stderr, chunk) {
			t.Errorf("restore of %s with a damaged %s: exit %d, want a failure naming it:\n%s", i2, chunk, code, stderr)
		}
		stdout, _, code := runWalkeeper(t, env, "verify", "--repo", repo, "--json")
		if code == 0 || !strings.Contains(stdout, "broken-chain") || !strings.Contains(stdout, chunk) {
			t.Errorf("verify with a damaged %s: exit %d, want broken-chain and the object:\n%s", chunk, code, stdout)
		}
		put(chunk, orig)

		// A missing middle member: backup.json gone.
		metaKey := storage.BackupMetaKey(i1)
		meta := rawObject(t, rp, metaKey)
		if err := be.Delete(ctx, metaKey); err != nil {
			t.Fatal(err)
		}
		r2 := c.RestoreTarget(t, name+"-missing")
		_, stderr, code = runWalkeeper(t, env, "restore", "--repo", repo, "--target-dir", r2.DataDir(), "--backup", i2)
		if code == 0 || !strings.Contains(stderr, i1) {
			t.Errorf("restore of %s without %s: exit %d, want a refusal naming it:\n%s", i2, i1, code, stderr)
		}
		stdout, _, code = runWalkeeper(t, env, "verify", "--repo", repo, "--json")
		if code == 0 || !strings.Contains(stdout, "broken-chain") || !strings.Contains(stdout, i1) {
			t.Errorf("verify without %s: exit %d, want broken-chain naming it:\n%s", i1, code, stdout)
		}
		put(metaKey, meta)
	})
}

// newDBSums is the content of newdb's table t ("" when newdb is missing).
func newDBSums(t *testing.T, c *harness.Cluster) string {
	if c.QueryString(t, "SELECT count(*) FROM pg_database WHERE datname = 'newdb'") == "0" {
		return ""
	}
	var out string
	newDB(t, c, func(conn *pgx.Conn) {
		err := conn.QueryRow(context.Background(), "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM t x").Scan(&out)
		if err != nil {
			t.Fatal(err)
		}
	})
	return out
}

func newDBExec(t *testing.T, c *harness.Cluster, sql string) {
	newDB(t, c, func(conn *pgx.Conn) {
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatalf("newdb: %s: %v", sql, err)
		}
	})
}

func newDB(t *testing.T, c *harness.Cluster, fn func(*pgx.Conn)) {
	u, err := url.Parse(c.DSN(harness.SuperUser))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/newdb"
	conn, err := pgx.Connect(context.Background(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	fn(conn)
}

// checkFullManifest checks a restored directory against its
// backup_manifest as pg_verifybackup would (no PostgreSQL 17/18 client
// tools here): the Manifest-Checksum is the SHA-256 of everything before
// its line, no INCREMENTAL file is listed or present, and every listed
// file exists with its size and CRC-32C.
func checkFullManifest(t *testing.T, dir string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "backup_manifest"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	i := strings.LastIndex(text, "\"Manifest-Checksum\"")
	if i < 0 {
		t.Fatal("backup_manifest has no Manifest-Checksum")
	}
	sum := sha256.Sum256(raw[:i])
	if !strings.Contains(text[i:], hex.EncodeToString(sum[:])) {
		t.Errorf("backup_manifest: Manifest-Checksum does not match its content")
	}
	var m struct {
		Files []struct {
			Path      string `json:"Path"`
			Size      int64  `json:"Size"`
			Algorithm string `json:"Checksum-Algorithm"`
			Checksum  string `json:"Checksum"`
		} `json:"Files"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("backup_manifest: %v", err)
	}
	bad := 0
	for _, f := range m.Files {
		if f.Path == "postgresql.auto.conf" { // restore adds the recovery settings; pg_verifybackup skips it too
			continue
		}
		if strings.Contains(f.Path, basebackup.IncrementalPrefix) {
			t.Errorf("backup_manifest lists %s", f.Path)
		}
		fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Errorf("manifest file %s: %v", f.Path, err)
			continue
		}
		h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
		n, _ := io.Copy(h, bufio.NewReader(fh))
		fh.Close()
		crc := hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, h.Sum32()))
		if n != f.Size || crc != f.Checksum {
			if bad++; bad < 10 {
				t.Errorf("%s: %d bytes crc %s, manifest says %d bytes %s", f.Path, n, crc, f.Size, f.Checksum)
			}
		}
	}
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(info.Name(), basebackup.IncrementalPrefix) {
			t.Errorf("restored directory holds %s", p)
		}
		return nil
	})
	if label, _ := os.ReadFile(filepath.Join(dir, "backup_label")); strings.Contains(string(label), "INCREMENTAL") {
		t.Errorf("backup_label still marks an incremental backup:\n%s", label)
	}
}
