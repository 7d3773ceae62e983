package test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// secretRow is a row value that must never be readable in the repository.
const secretRow = "walkeeper-secret-row-5c1e9a"

// grepTree reports the files under dir whose bytes contain needle.
func grepTree(t *testing.T, dir, needle string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(needle)) {
			hits = append(hits, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// TestEncryptedRepository streams and backs up into an encrypted repository
// (local and S3) with only the public key, shows that no stored byte holds a
// row value, restores to a restore point and as a replica whose
// restore_command reads the private key from its file, refuses wrong,
// missing and mixed keys with exit 1 and nothing written, and fails a
// flipped byte naming the object.
func TestEncryptedRepository(t *testing.T) {
	t.Parallel()
	local := filepath.Join(harness.MakeDir(t, "enc-repo"), "repo")
	srv := harness.StartS3(t)
	targets := []struct {
		repoTarget
		dir string // where the stored bytes are on disk
	}{{repoTarget{name: "local", url: local, open: func(t *testing.T) *storage.Repository {
		r, err := storage.Open(context.Background(), storage.Options{Repo: local})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}}, local}, {s3Target(srv), filepath.Join(srv.Dir, srv.Bucket)}}
	keyDir := harness.MakeDir(t, "enc-keys")
	for _, target := range targets {
		t.Run(target.name, func(t *testing.T) {
			env := target.env
			idFile := filepath.Join(keyDir, target.name+".key")
			recipient, stderr, code := runWalkeeper(t, nil, "keygen", "--output", idFile)
			recipient = strings.TrimSpace(recipient)
			if code != 0 || !strings.HasPrefix(recipient, "age1") {
				t.Fatalf("keygen: exit %d %q %s", code, recipient, stderr)
			}
			chownPostgres(t, idFile) // restore_command runs as postgres
			otherID := filepath.Join(keyDir, target.name+"-other.key")
			if _, stderr, code := runWalkeeper(t, nil, "keygen", "--output", otherID); code != 0 {
				t.Fatalf("keygen: %s", stderr)
			}
			// The database host's settings: the public key only, from the environment.
			wenv := append(append([]string{}, env...), "WALKEEPER_ENCRYPT_TO="+recipient)

			c := harness.StartCluster(t, harness.ClusterOptions{Name: "enc-" + target.name})
			wk := startWalkeeper(t, wenv, "stream", "--repo", target.url, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
			c.Pgbench(t, "-i", "-s", "1", "-q")
			c.Exec(t, "CREATE TABLE secrets (v text)")
			c.Exec(t, "INSERT INTO secrets SELECT '"+secretRow+"' || g FROM generate_series(1, 200) g")
			c.Exec(t, "CHECKPOINT")
			backupID := runBackup(t, wenv, target.url, c.DSN(harness.ReplicationUser))
			// A restart resumes from the stored partial by its envelope alone.
			if code := wk.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("stream exit %d", code)
			}
			wk = startWalkeeper(t, wenv, "stream", "--repo", target.url, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
			c.Exec(t, "INSERT INTO secrets SELECT 'after' FROM generate_series(1, 50) g")
			c.Exec(t, "SELECT pg_create_restore_point('enc_point')")
			c.Exec(t, "INSERT INTO secrets SELECT 'late' FROM generate_series(1, 50) g")
			end := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text"))
			c.Exec(t, "SELECT pg_switch_wal()")
			repo := target.open(t)
			waitStored(t, repo, end)
			if code := wk.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("stream exit %d:\n%s", code, wk.output())
			}
			if strings.Contains(wk.output(), "AGE-SECRET") {
				t.Error("a key in the stream's log")
			}

			// No plaintext anywhere in the stored bytes; walkeeper.json says encrypted.
			if hits := grepTree(t, target.dir, secretRow); len(hits) > 0 {
				t.Fatalf("row value in plaintext in %v", hits)
			}
			if hits := grepTree(t, target.dir, "pgbench_accounts"); len(hits) > 0 {
				t.Fatalf("catalog names in plaintext in %v", hits)
			}
			cfg, err := repo.Config(context.Background())
			if err != nil || cfg.Encryption == nil || cfg.FormatVersion != storage.EncryptedFormatVersion {
				t.Fatalf("walkeeper.json: %+v, %v", cfg, err)
			}
			giveToPostgres(t, target.url)

			// verify: without the identity stored bytes and continuity, with it everything.
			out, stderr, code := runWalkeeper(t, env, "verify", "--repo", target.url, "--json")
			if code != 0 || !strings.Contains(out, "stored-byte") {
				t.Fatalf("verify without the identity: exit %d\n%s\n%s", code, out, stderr)
			}
			if out, stderr, code := runWalkeeper(t, env, "verify", "--repo", target.url, "--identity-file", idFile); code != 0 {
				t.Fatalf("verify with the identity: exit %d\n%s\n%s", code, out, stderr)
			}

			// Refusals: exit 1, one line, nothing written.
			before := len(grepTree(t, target.dir, ""))
			missing := c.RestoreTarget(t, "enc-missing-"+target.name)
			for _, tc := range []struct {
				name string
				env  []string
				args []string
				want string
			}{
				{"restore without the identity", env, []string{"restore", "--target-dir", missing.DataDir()}, "--identity-file"},
				{"restore with the public key only", wenv, []string{"restore", "--target-dir", missing.DataDir()}, "--identity-file"},
				{"restore with another identity", env, []string{"restore", "--target-dir", missing.DataDir(), "--identity-file", otherID}, "is not the key of repository"},
				{"wal-fetch without the identity", env, []string{"wal-fetch", "000000010000000000000001", filepath.Join(missing.DataDir(), "x")}, "--identity-file"},
				{"unencrypted backup", env, []string{"backup", "--dsn", c.DSN(harness.ReplicationUser)}, "is encrypted"},
				{"backup to another key", env, []string{"backup", "--dsn", c.DSN(harness.ReplicationUser), "--identity-file", otherID}, "is not the key of repository"},
			} {
				_, stderr, code := runWalkeeper(t, tc.env, append([]string{tc.args[0], "--repo", target.url}, tc.args[1:]...)...)
				if code != 1 || !strings.Contains(lastLine(stderr), tc.want) {
					t.Errorf("%s: exit %d, want 1 with %q:\n%s", tc.name, code, tc.want, stderr)
				}
				if strings.Contains(stderr, "AGE-SECRET") || strings.Contains(stderr, recipient) {
					t.Errorf("%s: a key in the error: %s", tc.name, stderr)
				}
			}
			if entries, _ := os.ReadDir(missing.DataDir()); len(entries) > 0 {
				t.Errorf("a refused restore wrote %d entries", len(entries))
			}
			if after := len(grepTree(t, target.dir, "")); after != before {
				t.Errorf("refused commands changed the repository: %d objects, then %d", before, after)
			}

			// PITR with the identity: the restored server fetches WAL with it.
			r := c.RestoreTarget(t, "enc-pitr-"+target.name)
			if _, stderr, code := runWalkeeper(t, env, "restore", "--repo", target.url, "--identity-file", idFile, "--target-dir", r.DataDir(),
				"--backup", backupID, "--target-name", "enc_point", "--target-action", "promote"); code != 0 {
				t.Fatalf("restore: exit %d: %s", code, stderr)
			}
			auto, _ := os.ReadFile(filepath.Join(r.DataDir(), "postgresql.auto.conf"))
			if !bytes.Contains(auto, []byte("--identity-file")) || bytes.Contains(auto, []byte("AGE-SECRET")) || bytes.Contains(auto, []byte(recipient)) {
				t.Errorf("postgresql.auto.conf:\n%s", auto)
			}
			r.SetEnv(append(srvEnvOnly(env), raceEnv))
			r.StartRestored(t)
			waitPromoted(t, r)
			if got := r.QueryString(t, "SELECT count(*) FROM secrets"); got != "250" {
				t.Fatalf("restored to the restore point: %s rows, want 250", got)
			}

			// As a replica of the primary, catching up from the repository.
			passfile := filepath.Join(keyDir, target.name+".pgpass")
			os.WriteFile(passfile, []byte("127.0.0.1:"+strconv.Itoa(c.Port())+":*:walkeeper:"+c.Password()+"\n"), 0o600)
			chownPostgres(t, passfile)
			dsn := "host=127.0.0.1 port=" + strconv.Itoa(c.Port()) + " user=walkeeper dbname=postgres sslmode=disable passfile=" + passfile
			rep := c.RestoreTarget(t, "enc-replica-"+target.name)
			if _, stderr, code := runWalkeeper(t, env, "restore", "--repo", target.url, "--identity-file", idFile, "--target-dir", rep.DataDir(),
				"--as-replica", "--dsn", dsn, "--slot", "enc_replica", "--port", strconv.Itoa(rep.Port())); code != 0 {
				t.Fatalf("restore --as-replica: exit %d: %s", code, stderr)
			}
			rep.SetEnv(append(srvEnvOnly(env), raceEnv))
			rep.StartRestored(t)
			c.Exec(t, "INSERT INTO secrets SELECT 'streamed' FROM generate_series(1, 10) g")
			want := c.QueryString(t, "SELECT pg_current_wal_lsn()::text")
			waitFor(t, time.Minute, "the replica to replay everything", func() bool {
				return rep.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= '"+want+"'::pg_lsn") == "t"
			})
			if got := rep.QueryString(t, "SELECT count(*) FROM secrets"); got != "310" {
				t.Errorf("replica: %s rows, want 310", got)
			}
			if !strings.Contains(readLog(t, rep), "restored log file") {
				t.Error("the replica did not fetch WAL from the repository")
			}

			// A flipped byte in an encrypted object: authentication fails, naming it.
			meta := readMeta(t, repo, backupID)
			key := meta.Objects[0].Key
			rc, err := repo.Backend().Get(context.Background(), key, 0, -1)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			buf.ReadFrom(rc)
			rc.Close()
			b := buf.Bytes()
			b[len(b)/2] ^= 0x01
			if err := repo.Backend().Put(context.Background(), key, bytes.NewReader(b)); err != nil {
				t.Fatal(err)
			}
			giveToPostgres(t, target.url)
			flipped := c.RestoreTarget(t, "enc-flipped-"+target.name)
			_, stderr, code = runWalkeeper(t, env, "restore", "--repo", target.url, "--identity-file", idFile, "--target-dir", flipped.DataDir(), "--backup", backupID)
			if code != 1 || !strings.Contains(stderr, key) || !strings.Contains(stderr, "corrupt") {
				t.Errorf("restore of a flipped byte: exit %d:\n%s", code, stderr)
			}
			out, _, code = runWalkeeper(t, env, "verify", "--repo", target.url, "--identity-file", idFile, "--backup", backupID)
			if code != 5 || !strings.Contains(out, key) {
				t.Errorf("verify of a flipped byte: exit %d:\n%s", code, out)
			}
		})
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
