package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
)

// TestCompat runs walkeeper's operations, through the binary, against
// every PostgreSQL major it is tested on (docs/compatibility.md). Each
// version's test starts one primary with a user tablespace whose
// archive_command is walkeeper wal-push into a second repository (the
// "archive", seeded by one backup), and its steps share them, in the order
// an operator meets them:
//
//   - doctor: the server version is reported as a tested one;
//   - stream: walkeeper stream on a physical slot, killed with SIGKILL
//     under pgbench load and restarted: no gap;
//   - backup: a base backup with the tablespace; the manifest's version is
//     the server's (2 with System-Identifier from 17 on);
//   - archive_command: the server's own archiver pushed every segment, and
//     each is byte-identical to the one the stream stored (the server is
//     the oracle: no client tool of these versions is there to compare);
//   - pitr: restores to a time (from the stream's repository) and to a
//     restore point (from the archive, whose WAL only wal-push wrote) have
//     exactly the rows of that moment;
//   - replica: restore --as-replica reaches streaming and has the
//     primary's data (counts and md5 of every row);
//   - promotion: the primary stops, the replica is promoted, the stream
//     follows it onto timeline 2;
//   - verify: both repositories verify clean;
//   - across_promotion: the first backup restored from the repository
//     alone replays across the timeline switch to the new primary's data;
//   - invalidated_slot: a slot the server invalidated (max_slot_wal_keep_size;
//     on 18 also idle_replication_slot_timeout) is refused by stream and
//     reported by status and doctor with its reason (which the server
//     gives from 17 on).
//
// The full suite runs on PostgreSQL 15 only; this one stays small.
func TestCompat(t *testing.T) {
	for _, major := range replication.TestedMajors() {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			// Versions share nothing; most of a step is waiting (for WAL
			// to be stored, recovery, a checkpoint), so two at a time
			// (go test's -parallel, GOMAXPROCS) take far less wall time.
			t.Parallel()
			harness.RequireServer(t, major)
			start := time.Now()
			runCompat(t, major)
			t.Logf("PostgreSQL %d: compatibility steps took %v", major, time.Since(start).Round(time.Second))
		})
	}
}

// compat is the state the steps of one version share.
type compat struct {
	// t is the version's test: what lives across steps belongs to it.
	t          *testing.T
	major      int
	p          *harness.Cluster // the primary until the promotion
	rep        *harness.Cluster // restored as a replica, then promoted
	tsDir      string
	repo       string // stream and backups
	archive    string // archive_command (wal-push) and one backup
	sysID      string
	stream     *proc
	streamArgs []string
	backup     string // in repo
	archiveBkp string // in archive
	pointTime  string // 150 rows in steps
	pointName  string // 100 rows in steps
	lastTL1    string // the newest segment switched on timeline 1
	repTS      string // the replica's tablespace
	passfile   string // the replica's pgpass
}

// userTables are compared between servers.
var userTables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "in_ts", "steps"}

func runCompat(t *testing.T, major int) {
	c := &compat{t: t, major: major, pointName: "compat_100"}
	c.setup()
	steps := []struct {
		name string
		run  func(*compat, *testing.T)
	}{
		{"doctor", (*compat).doctor},
		{"stream", (*compat).streamKilled},
		{"backup", (*compat).backupTablespace},
		{"archive_command", (*compat).archiveCommand},
		{"pitr", (*compat).pitr},
		{"replica", (*compat).replica},
		{"promotion", (*compat).promotion},
		{"verify", (*compat).verify},
		{"across_promotion", (*compat).acrossPromotion},
		{"invalidated_slot", (*compat).invalidatedSlot},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.run(c, t) }) {
			return // later steps build on this one
		}
	}
}

// setup starts the primary and prepares what the steps share.
func (c *compat) setup() {
	t := c.t
	c.repo = filepath.Join(harness.MakeDir(t, "compat-repo"), "repo")
	c.archive = filepath.Join(harness.MakeDir(t, "compat-archive"), "archive")
	// Directories the servers use are made before the servers, so they
	// are removed after the servers stop (cleanups run last first).
	c.tsDir = harness.MakeDir(t, "compat-ts")
	c.repTS = filepath.Join(harness.MakeDir(t, "compat-ts-replica"), "ts")
	c.passfile = filepath.Join(harness.MakeDir(t, "compat-pgpass"), "pgpass")
	name := fmt.Sprintf("compat%d", c.major)
	c.p = harness.StartCluster(t, harness.ClusterOptions{Name: name, Major: c.major, ExtraConf: map[string]string{
		"archive_mode": "on",
		// The archiver runs it as postgres in the data directory.
		"archive_command": raceEnv + " " + walkeeperBin + " wal-push --repo " + c.archive + " %p",
	}})
	if got := c.p.QueryString(t, "SELECT current_setting('server_version_num')::int / 10000"); got != strconv.Itoa(c.major) {
		t.Fatalf("the harness started PostgreSQL %s, want %d", got, c.major)
	}
	// The replica's port is fixed now, so the stream's DSN can name it.
	c.rep = c.target(t, name+"-replica")
	c.p.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+c.tsDir+"'")
	c.sysID = c.p.QueryString(t, "SELECT system_identifier::text FROM pg_control_system()")

	// The archive's walkeeper.json comes from its first backup, taken
	// before any segment is complete, so no push is refused; as postgres,
	// so the archiver may write there.
	stdout, stderr, code := runWalkeeperAsPostgres(t, nil, "backup", "--repo", c.archive, "--dsn", c.p.DSN(harness.ReplicationUser))
	if code != 0 {
		t.Fatalf("backup into the archive: exit %d: %s", code, stderr)
	}
	c.archiveBkp = strings.TrimSpace(stdout)
}

// target prepares a restore target that does not archive (it inherits the
// primary's archive_command) and whose restore_command does not sleep.
func (c *compat) target(t *testing.T, name string) *harness.Cluster {
	r := c.p.RestoreTarget(t, name)
	r.SetConf(t, map[string]string{"archive_mode": "off"})
	r.SetEnv([]string{raceEnv})
	return r
}

// doctor reports the server version as a tested one, and the primary's
// archive_command (walkeeper wal-push) as fine.
func (c *compat) doctor(t *testing.T) {
	results, stderr, _ := runDoctor(t, nil, "--dsn", c.p.DSN(harness.ReplicationUser))
	r := results["server_version"]
	if r.Status != "OK" || !strings.Contains(r.Detail, "PostgreSQL "+c.p.Server().Version) || !strings.Contains(r.Detail, "tested") {
		t.Errorf("server_version: %s %q, want OK naming %s as tested\n%s", r.Status, r.Detail, c.p.Server().Version, stderr)
	}
	for _, name := range []string{"replication_connection", "archive_command"} {
		if r := results[name]; r.Status != "OK" {
			t.Errorf("%s: %s %s", name, r.Status, r.Detail)
		}
	}
}

// streamKilled streams under load, kills the stream with SIGKILL and
// restarts it: the stored segments are contiguous and start with this
// major's page magic.
func (c *compat) streamKilled(t *testing.T) {
	dsn := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write&connect_timeout=3",
		harness.ReplicationUser, c.p.Password(), c.p.Port(), c.rep.Port())
	c.streamArgs = []string{"stream", "--repo", c.repo, "--dsn", dsn, "--slot", "wk"}
	c.stream = c.startStream(t)
	waitFor(t, time.Minute, "the stream's slot to be active", func() bool {
		return c.p.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active") == "1"
	})
	c.p.Pgbench(t, "-i", "-s", "1", "-q")
	load := make(chan error, 1)
	go func() {
		out, err := c.p.RunAsPostgres(t, "pgbench", "-T", "5", "-c", "2")
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		load <- err
	}()
	time.Sleep(2 * time.Second)
	if c.stream.exited() {
		t.Fatalf("the stream exited early:\n%s", c.stream.output())
	}
	c.stream.cmd.Process.Kill()
	<-c.stream.done
	c.stream = c.startStream(t)
	if err := <-load; err != nil {
		t.Fatalf("pgbench: %v", err)
	}
	c.p.Exec(t, "CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g, md5(g::text) AS h FROM generate_series(1, 10000) g")
	c.p.Exec(t, "CREATE TABLE steps (i int) TABLESPACE ts1")
	last := switchAndWait(t, c.p)
	repo := openLocal(t, c.repo)
	waitFor(t, time.Minute, "the stream to store "+last, func() bool { _, ok := walObjects(t, repo)[last]; return ok })

	segs := completeSegments(t, repo)
	for i := 1; i < len(segs); i++ {
		a, _ := archive.ParseName(segs[i-1], segSize)
		b, _ := archive.ParseName(segs[i], segSize)
		if b.Seg != a.Seg+1 {
			t.Errorf("gap after the kill: %s is followed by %s", segs[i-1], segs[i])
		}
	}
	if len(segs) < 2 || segs[len(segs)-1] != last {
		t.Errorf("stored segments %v, want at least 2 ending with %s", segs, last)
	}
	first := readObject(t, repo, walObjects(t, repo)[segs[0]])
	want, _ := archive.WALPageMagic(c.major)
	if got := archive.PageMagic(first); got != want {
		t.Errorf("PostgreSQL %d writes WAL page magic 0x%04X; archive.WALPageMagic says 0x%04X", c.major, got, want)
	}
	if out := c.stream.output(); strings.Contains(out, "newer than the versions") {
		t.Errorf("a tested version was warned about:\n%s", out)
	}
	t.Logf("%d contiguous segments %s .. %s, page magic 0x%04X", len(segs), segs[0], last, want)
}

// startStream starts the stream as postgres (so restore_command, wal-fetch
// run by the servers, can read the repository); it runs until the
// version's test ends or the promotion step stops it.
func (c *compat) startStream(t *testing.T) *proc {
	t.Helper()
	cmd := exec.Command(walkeeperBin, c.streamArgs...)
	return startWalkeeperOwned(t, c.t, cmd, asPostgres(t, cmd), c.streamArgs)
}

// backupTablespace takes a backup with the user tablespace while the
// stream runs (its WAL comes from the stream) and checks every manifest
// file against the stored archives and the manifest's version.
func (c *compat) backupTablespace(t *testing.T) {
	c.backup = runBackup(t, nil, c.repo, c.p.DSN(harness.ReplicationUser))
	repo := openLocal(t, c.repo)
	meta := readMeta(t, repo, c.backup)
	if meta.WAL != "stream" || len(meta.Tablespaces) != 2 || meta.SystemIdentifier != c.sysID {
		t.Errorf("backup.json: wal %q, %d tablespaces, system %s", meta.WAL, len(meta.Tablespaces), meta.SystemIdentifier)
	}
	if major, _ := replication.ParseMajor(meta.ServerVersion); major != c.major {
		t.Errorf("backup.json server_version %q", meta.ServerVersion)
	}
	checkBackupAgainstManifest(t, repo, meta)
	var m struct {
		Version  int         `json:"PostgreSQL-Backup-Manifest-Version"`
		SystemID json.Number `json:"System-Identifier"`
	}
	for _, o := range meta.Objects {
		if o.Name == "backup_manifest" {
			dec := json.NewDecoder(bytes.NewReader(readObject(t, repo, o.Key)))
			dec.UseNumber()
			if err := dec.Decode(&m); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantVersion, wantID := 1, ""
	if c.major >= 17 {
		wantVersion, wantID = 2, c.sysID
	}
	if m.Version != wantVersion || m.SystemID.String() != wantID {
		t.Errorf("manifest version %d, System-Identifier %q; want %d, %q", m.Version, m.SystemID, wantVersion, wantID)
	}
	t.Logf("backup %s: manifest version %d, %d objects", c.backup, m.Version, len(meta.Objects))
}

// archiveCommand writes the PITR points, then checks that the server's
// archiver stored every segment through wal-push, and that each equals the
// stream's copy.
func (c *compat) archiveCommand(t *testing.T) {
	insert := func(n int) { c.p.Exec(t, "INSERT INTO steps SELECT g FROM generate_series(1, "+strconv.Itoa(n)+") g") }
	insert(100)
	c.p.Exec(t, "SELECT pg_create_restore_point('"+c.pointName+"')")
	insert(50)
	time.Sleep(1100 * time.Millisecond)
	c.pointTime = c.p.QueryString(t, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
	time.Sleep(1100 * time.Millisecond)
	insert(50)
	c.lastTL1 = switchAndWait(t, c.p)
	waitFor(t, time.Minute, "the archiver to push "+c.lastTL1, func() bool {
		return c.p.QueryString(t, "SELECT coalesce(last_archived_wal, '') >= $1 FROM pg_stat_archiver", c.lastTL1) == "t"
	})
	if failed := c.p.QueryString(t, "SELECT failed_count FROM pg_stat_archiver"); failed != "0" {
		t.Errorf("archive_command failed %s times: %s", failed, c.p.QueryString(t, "SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver"))
	}
	repo := openLocal(t, c.repo)
	waitFor(t, time.Minute, "the stream to store "+c.lastTL1, func() bool { _, ok := walObjects(t, repo)[c.lastTL1]; return ok })
	arch := openLocal(t, c.archive)
	archived := walObjects(t, arch)
	streamed := walObjects(t, repo)
	compared := 0
	for _, name := range completeSegments(t, repo) {
		key, ok := archived[name]
		if !ok {
			t.Errorf("%s: stored by the stream, not pushed by the archiver", name)
			continue
		}
		if !bytes.Equal(readObject(t, repo, streamed[name]), readObject(t, arch, key)) {
			t.Errorf("%s: the stream's copy differs from the server's (pushed by archive_command)", name)
		}
		compared++
	}
	t.Logf("%d segments byte-identical to the server's own, pushed by archive_command", compared)
}

// pitr restores to a time from the stream's repository and to a restore
// point from the archive (B2 predates pgbench and the tables: it replays
// all of them from pushed WAL), with wal-fetch as restore_command.
func (c *compat) pitr(t *testing.T) {
	giveToPostgres(t, c.repo)
	for _, tc := range []struct {
		name, repo, backup string
		target             []string
		want               string
	}{
		{"time", c.repo, c.backup, []string{"--target-time", c.pointTime}, "150"},
		{"restore_point", c.archive, c.archiveBkp, []string{"--target-name", c.pointName}, "100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			newTS := filepath.Join(harness.MakeDir(t, "compat-ts-pitr"), "ts")
			r := c.target(t, fmt.Sprintf("compat%d-pitr-%s", c.major, tc.name))
			args := append([]string{"restore", "--repo", tc.repo, "--target-dir", r.DataDir(), "--backup", tc.backup,
				"--target-action", "promote", "--tablespace-map", c.tsDir + "=" + newTS}, tc.target...)
			if _, stderr, code := runWalkeeper(t, nil, args...); code != 0 {
				t.Fatalf("restore: exit %d: %s", code, stderr)
			}
			r.StartRestored(t)
			waitPromoted(t, r)
			if got := r.QueryString(t, "SELECT count(*) FROM steps"); got != tc.want {
				t.Errorf("restored to %s: %s rows in steps, want %s", tc.name, got, tc.want)
			}
			sums := []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "in_ts"}
			if p, s := tableSums(t, c.p, sums...), tableSums(t, r, sums...); p != s {
				t.Errorf("tables differ from the primary's:\nprimary  %s\nrestored %s", p, s)
			}
			if !strings.Contains(readLog(t, r), "restored log file") {
				t.Error("recovery did not run wal-fetch")
			}
		})
	}
}

// replica restores the backup as a replica of the primary: it reaches
// streaming on its own slot and has the primary's data.
func (c *compat) replica(t *testing.T) {
	passfile := c.passfile
	os.WriteFile(passfile, []byte("127.0.0.1:"+strconv.Itoa(c.p.Port())+":*:walkeeper:"+c.p.Password()+"\n"), 0o600)
	if os.Geteuid() == 0 {
		chownPostgres(t, passfile)
	}
	dsn := "host=127.0.0.1 port=" + strconv.Itoa(c.p.Port()) + " user=walkeeper dbname=postgres sslmode=disable passfile=" + passfile
	newTS := c.repTS
	_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", c.repo, "--target-dir", c.rep.DataDir(), "--backup", c.backup,
		"--as-replica", "--dsn", dsn, "--slot", "replica1", "--port", strconv.Itoa(c.rep.Port()), "--tablespace-map", c.tsDir+"="+newTS)
	if code != 0 {
		t.Fatalf("restore --as-replica: exit %d: %s", code, stderr)
	}
	c.rep.StartRestored(t)
	waitFor(t, 2*time.Minute, "the replica to stream from the primary", func() bool {
		return c.p.QueryString(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'replica1' AND state = 'streaming'") == "1"
	})
	c.p.Pgbench(t, "-T", "2", "-c", "2")
	c.waitReplayed(t)
	if p, s := tableSums(t, c.p, userTables...), tableSums(t, c.rep, userTables...); p != s {
		t.Errorf("replica differs from the primary:\nprimary %s\nreplica %s", p, s)
	}
	if c.rep.QueryString(t, "SELECT pg_is_in_recovery()") != "t" {
		t.Error("the replica is not in recovery")
	}
	if !strings.Contains(readLog(t, c.rep), "restored log file") {
		t.Error("the replica did not fetch WAL from the repository")
	}
}

// waitReplayed waits until the replica has replayed the primary's WAL.
func (c *compat) waitReplayed(t *testing.T) {
	target := c.p.QueryString(t, "SELECT pg_current_wal_lsn()::text")
	waitFor(t, time.Minute, "the replica to replay "+target, func() bool {
		return c.rep.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= '"+target+"'::pg_lsn") == "t"
	})
}

// promotion stops the primary cleanly, promotes the replica and checks
// that the stream follows onto timeline 2.
func (c *compat) promotion(t *testing.T) {
	c.p.Exec(t, "CREATE TABLE fo (phase text, n int)")
	c.p.Exec(t, "INSERT INTO fo SELECT 'before', g FROM generate_series(1, 1000) g")
	c.waitReplayed(t)
	c.p.Stop(t) // a fast shutdown sends everything to the replica and the stream
	c.rep.Promote(t)
	c.rep.Exec(t, "INSERT INTO fo SELECT 'after', g FROM generate_series(1, 500) g")
	last := switchAndWait(t, c.rep)
	if !strings.HasPrefix(last, "00000002") {
		t.Fatalf("the promoted replica writes %s, want timeline 2", last)
	}
	repo := openLocal(t, c.repo)
	waitFor(t, 2*time.Minute, "timeline 2 segment "+last+" from the new primary", func() bool {
		_, ok := walObjects(t, repo)[last]
		return ok
	})
	objs := walObjects(t, repo)
	if _, ok := objs["00000002.history"]; !ok {
		t.Errorf("00000002.history not stored: %v", keys(objs))
	}
	if got := c.rep.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active"); got != "1" {
		t.Errorf("slot wk on the new primary: %s active, want 1", got)
	}
	if code := c.stream.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d:\n%s", code, c.stream.output())
	}
}

// verify checks both repositories.
func (c *compat) verify(t *testing.T) {
	for _, dir := range []string{c.repo, c.archive} {
		r := runVerify(t, repoTarget{name: "local", url: dir}, 0)
		if !r.OK || r.Backups == 0 {
			t.Errorf("verify %s: %+v", dir, r)
		}
	}
}

// acrossPromotion restores the first backup from the repository alone to
// its end: recovery follows timeline 2 and has the new primary's data.
func (c *compat) acrossPromotion(t *testing.T) {
	giveToPostgres(t, c.repo)
	newTS := filepath.Join(harness.MakeDir(t, "compat-ts-end"), "ts")
	r := c.target(t, fmt.Sprintf("compat%d-end", c.major))
	if _, stderr, code := runWalkeeper(t, nil, "restore", "--repo", c.repo, "--target-dir", r.DataDir(), "--backup", c.backup,
		"--target-action", "promote", "--tablespace-map", c.tsDir+"="+newTS); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	r.StartRestored(t)
	waitPromoted(t, r)
	tables := append([]string{"fo"}, userTables...)
	if p, s := tableSums(t, c.rep, tables...), tableSums(t, r, tables...); p != s {
		t.Errorf("restored across the promotion differs from the new primary:\nprimary  %s\nrestored %s", p, s)
	}
	if got := r.QueryString(t, "SELECT string_agg(phase || '=' || c, ',' ORDER BY phase) FROM (SELECT phase, count(*) c FROM fo GROUP BY phase) x"); got != "after=500,before=1000" {
		t.Errorf("fo: %s", got)
	}
}

// invalidatedSlot invalidates slots on the new primary and expects stream
// and doctor to refuse them naming why. It runs last: it makes the server
// drop WAL other slots hold.
func (c *compat) invalidatedSlot(t *testing.T) {
	srv := c.rep
	reason := func(slot string) string {
		return srv.QueryString(t, "SELECT wal_status || ' ' || "+replication.InvalidationReasonSQL(c.major)+" FROM pg_replication_slots WHERE slot_name = $1", slot)
	}
	type lost struct{ slot, want string }
	var cases []lost
	if c.major >= 18 {
		srv.Exec(t, "SELECT pg_create_physical_replication_slot('idle', true)")
		srv.Exec(t, "ALTER SYSTEM SET idle_replication_slot_timeout = 1")
		srv.Exec(t, "SELECT pg_reload_conf()")
		time.Sleep(1500 * time.Millisecond)
		srv.Exec(t, "CHECKPOINT") // invalidates idle slots
		if got := reason("idle"); got != "lost idle_timeout" {
			t.Fatalf("slot idle: %q after idle_replication_slot_timeout, want lost idle_timeout", got)
		}
		srv.Exec(t, "ALTER SYSTEM RESET idle_replication_slot_timeout")
		cases = append(cases, lost{"idle", "idle_replication_slot_timeout"})
	}
	srv.Exec(t, "SELECT pg_create_physical_replication_slot('removed', true)")
	srv.Exec(t, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
	srv.Exec(t, "SELECT pg_reload_conf()")
	srv.Exec(t, "CREATE TABLE churn (i int)")
	for range 3 {
		srv.Exec(t, "INSERT INTO churn SELECT generate_series(1, 1000)")
		srv.Exec(t, "SELECT pg_switch_wal()")
	}
	srv.Exec(t, "CHECKPOINT") // removes the WAL and invalidates the slot
	want := "lost "
	if c.major >= 17 {
		want += "wal_removed"
	}
	if got := reason("removed"); got != want {
		t.Fatalf("slot removed: %q past max_slot_wal_keep_size, want %q", got, want)
	}
	wantReason := "removed WAL"
	if c.major >= 17 {
		wantReason = "invalidation_reason=wal_removed"
	}
	cases = append(cases, lost{"removed", wantReason})
	for _, tc := range cases {
		fresh := filepath.Join(t.TempDir(), "repo")
		_, stderr, code := runWalkeeper(t, nil, "stream", "--repo", fresh, "--dsn", srv.DSN(harness.ReplicationUser), "--slot", tc.slot)
		if code != 1 || !strings.Contains(stderr, "invalidated") || !strings.Contains(stderr, tc.want) {
			t.Errorf("stream on invalidated slot %s: exit %d, want 1 naming %q: %s", tc.slot, code, tc.want, stderr)
		}
		if files := listAll(t, fresh); len(files) != 0 {
			t.Errorf("stream on invalidated slot %s wrote %v", tc.slot, files)
		}
		rep, _, code := runStatus(t, nil, "--repo", c.repo, "--dsn", srv.DSN(harness.ReplicationUser), "--slot", tc.slot)
		if code != 5 || rep.Slot == nil || rep.Slot.WALStatus != "lost" || !strings.Contains(strings.Join(rep.Problems, "\n"), tc.want) {
			t.Errorf("status --slot %s: exit %d, slot %+v, problems %q; want 5 naming %q", tc.slot, code, rep.Slot, rep.Problems, tc.want)
		} else if (rep.Slot.InvalidationReason != "") != (c.major >= 17) {
			t.Errorf("status --slot %s: invalidation_reason %q on PostgreSQL %d", tc.slot, rep.Slot.InvalidationReason, c.major)
		}
		results, _, code := runDoctor(t, nil, "--dsn", srv.DSN(harness.ReplicationUser), "--slot", tc.slot)
		if r := results["slot"]; code != 5 || r.Status != "FAIL" || !strings.Contains(r.Detail+r.Hint, tc.want) {
			t.Errorf("doctor --slot %s: exit %d, %s %q (hint %q), want FAIL naming %q", tc.slot, code, r.Status, r.Detail, r.Hint, tc.want)
		}
	}
}

// tableSums is "table=rows:md5" of every row of each table, rows in text
// form and sorted, so two servers with the same data give the same string.
func tableSums(t *testing.T, c *harness.Cluster, tables ...string) string {
	t.Helper()
	var out []string
	for _, tb := range tables {
		out = append(out, tb+"="+c.QueryString(t, "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM "+tb+" x"))
	}
	return strings.Join(out, " ")
}

func openLocal(t *testing.T, dir string) *storage.Repository {
	t.Helper()
	r, err := storage.Open(context.Background(), storage.Options{Repo: dir})
	if err != nil {
		t.Fatal(err)
	}
	return r
}
