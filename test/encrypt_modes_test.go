package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// argvWatch samples every process's command line (/proc/PID/cmdline) until
// stopped and records those that hold one of the secrets: the stream, the
// servers and their archive and restore commands must never carry a key.
type argvWatch struct {
	secrets []string
	stopCh  chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	hits    []string
	samples int
}

func watchArgv(secrets ...string) *argvWatch {
	w := &argvWatch{secrets: secrets, stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			w.sample()
			select {
			case <-w.stopCh:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *argvWatch) sample() {
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		for _, s := range w.secrets {
			if bytes.Contains(b, []byte(s)) {
				w.mu.Lock()
				w.hits = append(w.hits, p+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
				w.mu.Unlock()
			}
		}
	}
	w.mu.Lock()
	w.samples++
	w.mu.Unlock()
}

// stop ends the sampling and returns the command lines that held a secret
// and how many samples were taken.
func (w *argvWatch) stop() ([]string, int) {
	close(w.stopCh)
	<-w.done
	return w.hits, w.samples
}

// TestEncryptedPassphraseArchiveDrill covers, on one PostgreSQL 15 primary
// and two local repositories, the encrypted paths TestEncryptedRepository
// does not:
//   - passphrase mode: stream with WALKEEPER_PASSPHRASE in its environment,
//     backup with --passphrase-file, a point-in-time restore whose
//     restore_command reads the passphrase file by its path; a wrong
//     passphrase (file or environment) and a passphrase only in the
//     environment for restore_command are refused, nothing written;
//   - archive_command: the primary archives with `wal-push --encrypt-to`
//     (the public key only) into a recipient-mode repository; wal-push
//     without the key is refused;
//   - status of that repository with the public key only; drill without the
//     identity is refused, with it a point-in-time drill recovers through
//     the pushed segments and passes;
//   - restore and drill refuse a key file the restored server's OS user
//     cannot read, before writing anything (one check for identity and
//     passphrase files);
//   - no secret (the passphrase, the private key) in any process's argv,
//     any output, the server logs, postgresql.auto.conf or the
//     repositories' bytes.
func TestEncryptedPassphraseArchiveDrill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := harness.MakeDir(t, "enc-modes")
	archRepo := filepath.Join(base, "archive-repo")
	passRepo := filepath.Join(base, "pass-repo")
	keyDir := harness.MakeDir(t, "enc-modes-keys")

	random := func() string {
		b := make([]byte, 12)
		rand.Read(b)
		return hex.EncodeToString(b)
	}
	passphrase := "wk-pass-" + random()
	passFile := filepath.Join(keyDir, "pass.txt")
	os.WriteFile(passFile, []byte(passphrase+"\n"), 0o600)
	chownPostgres(t, passFile)
	wrongPassFile := filepath.Join(keyDir, "wrong.txt")
	os.WriteFile(wrongPassFile, []byte("wk-wrong-"+random()+"\n"), 0o600)

	idFile := filepath.Join(keyDir, "repo.key")
	recipient, stderr, code := runWalkeeper(t, nil, "keygen", "--output", idFile)
	recipient = strings.TrimSpace(recipient)
	if code != 0 || !strings.HasPrefix(recipient, "age1") {
		t.Fatalf("keygen: exit %d %q %s", code, recipient, stderr)
	}
	chownPostgres(t, idFile)
	idBytes, err := os.ReadFile(idFile)
	if err != nil {
		t.Fatal(err)
	}
	var privateKey string
	for _, l := range strings.Split(string(idBytes), "\n") {
		if strings.HasPrefix(l, "AGE-SECRET-KEY-1") {
			privateKey = l
		}
	}
	if privateKey == "" {
		t.Fatalf("no private key in %s", idFile)
	}
	// A copy only root can read: the restored server (postgres) could not.
	rootOnlyID := filepath.Join(keyDir, "root-only.key")
	os.WriteFile(rootOnlyID, idBytes, 0o600)

	secrets := []string{passphrase, privateKey, strings.ToLower(privateKey)}
	argv := watchArgv(secrets...)
	var outputs []string // every output of every run, checked for secrets at the end
	run := func(env []string, args ...string) (string, string, int) {
		t.Helper()
		stdout, stderr, code := runWalkeeper(t, env, args...)
		outputs = append(outputs, stdout, stderr)
		return stdout, stderr, code
	}

	c := harness.StartCluster(t, harness.ClusterOptions{Name: "enc-modes", ExtraConf: map[string]string{
		"archive_mode":    "on",
		"archive_command": raceEnv + " " + walkeeperBin + " wal-push --repo " + archRepo + " --encrypt-to " + recipient + " %p",
	}})
	dsn := c.DSN(harness.ReplicationUser)
	// The recipient-mode repository: created by a backup with the public
	// key, then written by the archiver (postgres).
	pubEnv := []string{"WALKEEPER_ENCRYPT_TO=" + recipient}
	archBackup := runBackup(t, pubEnv, archRepo, dsn)
	giveToPostgres(t, archRepo)
	// The passphrase-mode repository: the stream has the passphrase in its
	// environment, the backup reads it from a file.
	passEnv := []string{"WALKEEPER_PASSPHRASE=" + passphrase}
	wk := startWalkeeper(t, passEnv, "stream", "--repo", passRepo, "--dsn", dsn, "--slot", "wk_pass")

	c.Exec(t, "CREATE TABLE secrets (v text)")
	c.Exec(t, "INSERT INTO secrets SELECT '"+secretRow+"' || g FROM generate_series(1, 200) g")
	c.Exec(t, "CHECKPOINT")
	passBackup := runBackup(t, nil, passRepo, dsn, "--passphrase-file", passFile)
	c.Exec(t, "INSERT INTO secrets SELECT 'after' FROM generate_series(1, 50) g")
	c.Exec(t, "SELECT pg_create_restore_point('modes_point')")
	c.Exec(t, "INSERT INTO secrets SELECT 'late' FROM generate_series(1, 50) g")
	end := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_insert_lsn()::text"))
	switchAndArchive(t, c)
	// Sizes and names are readable without the passphrase.
	passRepoR, err := storage.Open(ctx, storage.Options{Repo: passRepo})
	if err != nil {
		t.Fatal(err)
	}
	waitStored(t, passRepoR, end)
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d:\n%s", code, wk.output())
	}
	outputs = append(outputs, wk.output())
	giveToPostgres(t, passRepo)
	for _, dir := range []string{archRepo, passRepo} {
		if hits := grepTree(t, dir, secretRow); len(hits) > 0 {
			t.Fatalf("row value in plaintext in %v", hits)
		}
	}

	// Mixing: wal-push without the key (or with a passphrase) into the
	// recipient-mode repository is refused, nothing written.
	seg := filepath.Join(c.DataDir(), "pg_wal", c.QueryString(t, "SELECT pg_walfile_name(pg_current_wal_lsn())"))
	before := countFiles(t, archRepo)
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"no key", nil, "is encrypted"},
		{"a passphrase", passEnv, "not a passphrase"},
	} {
		_, stderr, code := run(tc.env, "wal-push", "--repo", archRepo, seg)
		if code != 1 || !strings.Contains(lastLine(stderr), tc.want) {
			t.Errorf("wal-push with %s into the encrypted repository: exit %d, want 1 with %q:\n%s", tc.name, code, tc.want, stderr)
		}
	}
	if after := countFiles(t, archRepo); after != before {
		t.Errorf("refused wal-push changed the repository: %d files, then %d", before, after)
	}

	// status needs no private key: plaintext metadata only.
	out, stderr, code := run(pubEnv, "status", "--repo", archRepo, "--json")
	if code != 0 || !strings.Contains(out, archBackup) {
		t.Errorf("status with the public key: exit %d\n%s\n%s", code, out, stderr)
	}
	out, stderr, code = run(nil, "status", "--repo", passRepo, "--json")
	if code != 0 || !strings.Contains(out, passBackup) {
		t.Errorf("status of the passphrase repository without it: exit %d\n%s\n%s", code, out, stderr)
	}

	// Passphrase mode: refusals, then a point-in-time restore.
	refused := c.RestoreTarget(t, "enc-modes-refused")
	for _, tc := range []struct {
		name     string
		env      []string
		args     []string
		wantCode int
		want     string
	}{
		{"restore with the passphrase in the environment only", passEnv, []string{"restore", "--repo", passRepo, "--target-dir", refused.DataDir()}, 2, "--passphrase-file"},
		{"restore with a wrong passphrase file", nil, []string{"restore", "--repo", passRepo, "--target-dir", refused.DataDir(), "--passphrase-file", wrongPassFile}, 1, "the passphrase is not repository"},
		{"restore without the passphrase", nil, []string{"restore", "--repo", passRepo, "--target-dir", refused.DataDir()}, 1, "passphrase"},
		{"restore with an identity file postgres cannot read", nil, []string{"restore", "--repo", archRepo, "--target-dir", refused.DataDir(), "--identity-file", rootOnlyID}, 1, "cannot read"},
		{"backup with a wrong passphrase", []string{"WALKEEPER_PASSPHRASE=wk-wrong-" + random()}, []string{"backup", "--repo", passRepo, "--dsn", dsn}, 1, "the passphrase is not repository"},
	} {
		beforePass, beforeArch := countFiles(t, passRepo), countFiles(t, archRepo)
		_, stderr, code := run(tc.env, tc.args...)
		if code != tc.wantCode || !strings.Contains(lastLine(stderr), tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("%s: exit %d, want %d with one line holding %q:\n%s", tc.name, code, tc.wantCode, tc.want, stderr)
		}
		if entries, _ := os.ReadDir(refused.DataDir()); len(entries) > 0 {
			t.Fatalf("%s: wrote %d entries into the target", tc.name, len(entries))
		}
		if countFiles(t, passRepo) != beforePass || countFiles(t, archRepo) != beforeArch {
			t.Errorf("%s: changed a repository", tc.name)
		}
	}
	r := c.RestoreTarget(t, "enc-modes-pitr")
	if _, stderr, code := run(nil, "restore", "--repo", passRepo, "--passphrase-file", passFile, "--target-dir", r.DataDir(),
		"--backup", passBackup, "--target-name", "modes_point", "--target-action", "promote"); code != 0 {
		t.Fatalf("restore with the passphrase file: exit %d: %s", code, stderr)
	}
	auto, _ := os.ReadFile(filepath.Join(r.DataDir(), "postgresql.auto.conf"))
	if !bytes.Contains(auto, []byte("--passphrase-file "+passFile)) {
		t.Errorf("restore_command does not read the passphrase file:\n%s", auto)
	}
	r.SetEnv([]string{raceEnv})
	r.StartRestored(t)
	waitPromoted(t, r)
	if got := r.QueryString(t, "SELECT count(*) FROM secrets"); got != "250" {
		t.Errorf("restored with the passphrase to the restore point: %s rows, want 250", got)
	}
	if !strings.Contains(readLog(t, r), "restored log file") {
		t.Error("the restored server did not fetch WAL with the passphrase file")
	}

	// drill of the archived repository: refused without the identity, then
	// a point-in-time drill through the segments wal-push stored.
	checkSQL := filepath.Join(base, "check.sql")
	os.WriteFile(checkSQL, []byte("SELECT 1 FROM secrets HAVING count(*) = 250;\n"), 0o644)
	scratch := filepath.Join(base, "drill")
	_, stderr, code = run(append(pubEnv, raceEnv), "drill", "--repo", archRepo, "--scratch", scratch, "--amcheck=false")
	if code != 1 || !strings.Contains(lastLine(stderr), "--identity-file") {
		t.Errorf("drill without the identity: exit %d, want 1 naming --identity-file:\n%s", code, stderr)
	}
	if entries, _ := os.ReadDir(scratch); len(entries) > 0 {
		t.Errorf("a refused drill wrote %d entries", len(entries))
	}
	_, stderr, code = run([]string{raceEnv}, "drill", "--repo", archRepo, "--scratch", scratch, "--amcheck=false", "--identity-file", rootOnlyID)
	if code != 1 || !strings.Contains(lastLine(stderr), "cannot read") {
		t.Errorf("drill with an identity file postgres cannot read: exit %d, want 1:\n%s", code, stderr)
	}
	os.RemoveAll(scratch)
	out, stderr, code = run([]string{raceEnv}, "drill", "--repo", archRepo, "--scratch", scratch, "--identity-file", idFile,
		"--backup", archBackup, "--target-name", "modes_point", "--amcheck=false", "--check-sql", checkSQL, "--keep")
	if code != 0 || !strings.HasPrefix(out, "drill ok: ") {
		t.Fatalf("drill with the identity: exit %d\n%s\n%s", code, out, stderr)
	}
	t.Logf("%s", strings.TrimSpace(out))
	drillAuto, _ := os.ReadFile(filepath.Join(scratch, "data", "postgresql.auto.conf"))
	if !bytes.Contains(drillAuto, []byte("--identity-file "+idFile)) {
		t.Errorf("drill's restore_command does not read the identity file:\n%s", drillAuto)
	}
	drillLog, _ := os.ReadFile(filepath.Join(scratch, "postgres.log"))
	if !bytes.Contains(drillLog, []byte("restored log file")) {
		t.Errorf("the drill's server fetched no WAL:\n%s", drillLog)
	}

	// No secret anywhere.
	hits, samples := argv.stop()
	for _, h := range hits {
		t.Errorf("a secret in a command line: %s", h)
	}
	if samples < 10 {
		t.Errorf("only %d samples of the command lines", samples)
	}
	places := map[string]string{
		"the primary's log (archive_command)": readLog(t, c),
		"the restored server's log":           readLog(t, r),
		"the restored postgresql.auto.conf":   string(auto),
		"the drill's postgresql.auto.conf":    string(drillAuto),
		"the drill's server log":              string(drillLog),
		"the outputs of the walkeeper runs":   strings.Join(outputs, "\n"),
		"the restored server's configuration": readAll(t, r.DataDir(), "postgresql.conf"),
	}
	for where, text := range places {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("a secret in %s", where)
			}
		}
	}
	for _, dir := range []string{archRepo, passRepo, r.DataDir(), filepath.Join(scratch, "data")} {
		for _, s := range secrets {
			if hits := grepTree(t, dir, s); len(hits) > 0 {
				t.Errorf("a secret stored in %v", hits)
			}
		}
	}
}

// countFiles counts the files under dir.
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func readAll(t *testing.T, dir, name string) string {
	b, _ := os.ReadFile(filepath.Join(dir, name))
	return string(b)
}
