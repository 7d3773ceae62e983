package test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/restore"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
	"github.com/walkeeper/walkeeper/walstream"
)

// waitStored waits (a minute at most) until the repository holds WAL up
// to end: what the tests do before stopping a stream they rely on.
func waitStored(t *testing.T, repo *storage.Repository, end uint64) {
	t.Helper()
	waitFor(t, time.Minute, "the stream to store all WAL", func() bool {
		e, _ := repoEnd(t.Context(), repo)
		return e >= end
	})
}

// repoEnd is the LSN just after the newest WAL byte the repository holds
// (complete segments, and the prefix a partial and its ranges hold),
// computed from the objects alone.
func repoEnd(ctx context.Context, repo *storage.Repository) (uint64, error) {
	ix, err := archive.Load(ctx, repo, segSize)
	if err != nil {
		return 0, err
	}
	var end uint64
	for _, o := range ix.Objects {
		switch o.Name.Kind {
		case archive.Segment:
			end = max(end, (o.Name.Seg+1)*segSize)
		case archive.Partial, archive.Range:
			if po, ok := ix.PartialOf(o.Name.TLI, o.Name.Seg); !ok || po.Key != o.Key {
				continue // counted with its segment's partial
			}
			e, err := archive.PartialEnd(ctx, repo, o, segSize)
			if err != nil {
				continue // being replaced right now
			}
			end = max(end, uint64(e))
		}
	}
	return end, nil
}

func lsnOf(t *testing.T, s string) uint64 {
	t.Helper()
	l, err := walstream.ParseLSN(s)
	if err != nil {
		t.Fatalf("parse LSN %q: %v", s, err)
	}
	return uint64(l)
}

// TestSlotNeverPassesStoredWAL blocks the S3 server (SIGSTOP) while pgbench
// writes and checks, again and again, that the slot's restart_lsn is never
// beyond the WAL the repository durably holds; after the server resumes the
// slot catches up.
func TestSlotNeverPassesStoredWAL(t *testing.T) {
	srv := harness.StartS3(t)
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "blocked"})
	env := append(srv.Env(), "WALKEEPER_S3_ENDPOINT="+srv.Endpoint, "WALKEEPER_S3_PATH_STYLE=true")
	url := "s3://" + srv.Bucket + "/cluster"
	wk := startWalkeeper(t, env, "stream", "--repo", url, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
	// The gateway keeps objects as files: read the repository from its
	// directory, which works while the gateway itself is stopped.
	direct, err := storage.NewLocal(filepath.Join(srv.Dir, srv.Bucket))
	if err != nil {
		t.Fatal(err)
	}
	repo := storage.NewRepository(prefixed{direct, "cluster/"}, storage.CodecZstd)
	ctx := context.Background()
	c.Pgbench(t, "-i", "-s", "2", "-q")
	waitFor(t, time.Minute, "the first stored WAL", func() bool { e, _ := repoEnd(ctx, repo); return e > 0 })

	check := func(phase string) (slot, stored uint64) {
		s := c.QueryString(t, "SELECT coalesce(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = 'wk'")
		if s == "" {
			t.Fatalf("%s: slot wk has no restart_lsn", phase)
		}
		slot = lsnOf(t, s)
		stored, err := repoEnd(ctx, repo)
		if err != nil {
			t.Fatal(err)
		}
		if slot > stored {
			t.Fatalf("%s: slot restart_lsn %X is past the repository's end %X", phase, slot, stored)
		}
		return slot, stored
	}
	srv.Pause(t)
	_, storedAtPause := check("paused")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.Pgbench(t, "-T", "5", "-c", "2") }()
	// pgbench alone can write less than a segment in 5 s on a loaded
	// machine; this writes about 40 MB of WAL whatever the load.
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.Exec(t, "CREATE TABLE blocked_filler AS SELECT g, repeat('w', 600) AS pad FROM generate_series(1, 60000) g")
	}()
	samples := 0
	for deadline := time.Now().Add(7 * time.Second); time.Now().Before(deadline); samples++ {
		check("storage blocked")
		time.Sleep(200 * time.Millisecond)
	}
	wg.Wait()
	current := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_lsn()::text"))
	slotBlocked, storedBlocked := check("storage blocked, load done")
	if current <= storedBlocked+segSize {
		t.Fatalf("storage was not blocked: server at %X, repository at %X", current, storedBlocked)
	}
	t.Logf("storage blocked: %d samples; server at %X, repository at %X (at pause %X), slot at %X",
		samples, current, storedBlocked, storedAtPause, slotBlocked)
	if wk.exited() {
		t.Fatalf("walkeeper exited while storage was blocked:\n%s", wk.output())
	}

	srv.Resume(t)
	waitFor(t, 2*time.Minute, "the slot to catch up after storage resumed", func() bool {
		slot, _ := check("resumed")
		return slot >= current-current%segSize
	})
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}
}

// prefixed reads a backend below a key prefix (the S3 repository's prefix
// seen through the gateway's directory).
type prefixed struct {
	storage.Backend
	prefix string
}

func (p prefixed) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	return p.Backend.Get(ctx, p.prefix+key, off, n)
}

func (p prefixed) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	return p.Backend.Stat(ctx, p.prefix+key)
}

func (p prefixed) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return p.Backend.List(ctx, p.prefix+prefix, func(o storage.ObjectInfo) error {
		o.Key = strings.TrimPrefix(o.Key, p.prefix)
		return fn(o)
	})
}

func (p prefixed) ListFrom(ctx context.Context, prefix, after string, fn func(storage.ObjectInfo) error) error {
	if after != "" {
		after = p.prefix + after
	}
	return p.Backend.ListFrom(ctx, p.prefix+prefix, after, func(o storage.ObjectInfo) error {
		o.Key = strings.TrimPrefix(o.Key, p.prefix)
		return fn(o)
	})
}

// TestStreamSurvivesServerRestart restarts PostgreSQL under walkeeper and
// checks that it reconnects and the archive has no gap.
func TestStreamSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "restart"})
	repoDir := filepath.Join(t.TempDir(), "repo")
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
	c.Pgbench(t, "-i", "-s", "3", "-q")
	c.Stop(t)
	time.Sleep(time.Second)
	c.Start(t)
	c.Pgbench(t, "-T", "3", "-c", "2")
	c.Kill(t) // and a crash
	c.Start(t)
	c.Pgbench(t, "-T", "2", "-c", "2")
	last := switchAndWait(t, c)
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	waitFor(t, 2*time.Minute, "walkeeper to store "+last, func() bool { _, ok := walObjects(t, repo)[last]; return ok })
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}
	if !strings.Contains(wk.output(), "reconnecting") {
		t.Errorf("no reconnect logged:\n%s", wk.output())
	}
	checkAgainstReceivewal(t, repo, t.TempDir()) // contiguity and sizes
	waldump(t, repo)
}

// TestStreamFollowsPromotion streams from a standby, promotes it, and
// checks that walkeeper follows to timeline 2: the history file is stored,
// the old timeline's last segment is kept as .partial and timeline 2
// segments arrive.
func TestStreamFollowsPromotion(t *testing.T) {
	t.Parallel()
	primary := harness.StartCluster(t, harness.ClusterOptions{Name: "promo-primary"})
	primary.Pgbench(t, "-i", "-s", "1", "-q")
	standby := primary.CreateStandby(t, "promo-standby")
	repoDir := filepath.Join(t.TempDir(), "repo")
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", standby.DSN(harness.ReplicationUser), "--slot", "wk")
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	primary.Pgbench(t, "-T", "2", "-c", "2")
	last := switchAndWait(t, primary)
	waitFor(t, time.Minute, "segment "+last+" from the standby", func() bool { _, ok := walObjects(t, repo)[last]; return ok })
	primary.Pgbench(t, "-T", "1", "-c", "1") // a partial segment on timeline 1
	time.Sleep(2 * time.Second)

	standby.Promote(t)
	standby.Pgbench(t, "-T", "2", "-c", "2")
	last2 := switchAndWait(t, standby)
	if !strings.HasPrefix(last2, "00000002") {
		t.Fatalf("promoted server writes %s, expected timeline 2", last2)
	}
	waitFor(t, time.Minute, "timeline 2 segment "+last2, func() bool { _, ok := walObjects(t, repo)[last2]; return ok })
	objs := walObjects(t, repo)
	if _, ok := objs["00000002.history"]; !ok {
		t.Errorf("00000002.history not stored: %v", keys(objs))
	}
	var partials []string
	for name := range objs {
		if strings.HasPrefix(name, "00000001") && strings.HasSuffix(name, ".partial") {
			partials = append(partials, name)
		}
	}
	if len(partials) != 1 {
		t.Errorf("want the last timeline 1 segment kept as one .partial, got %v", partials)
	}
	history := string(readObject(t, repo, objs["00000002.history"]))
	if !strings.HasPrefix(history, "1\t") {
		t.Errorf("history file: %q", history)
	}
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}
	t.Logf("objects: %v", keys(objs))
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestSynchronousStream names walkeeper in synchronous_standby_names and
// proves, by reading the repository right after COMMIT returns, that the
// commit record is already stored.
func TestSynchronousStream(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "sync"})
	repoDir := filepath.Join(t.TempDir(), "repo")
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wksync", "--synchronous")
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	waitFor(t, time.Minute, "walkeeper to stream", func() bool {
		return c.QueryString(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'wksync' AND state = 'streaming'") == "1"
	})
	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'wksync'")
	c.Exec(t, "SELECT pg_reload_conf()")
	waitFor(t, time.Minute, "walkeeper to become the synchronous standby", func() bool {
		return c.QueryString(t, "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'wksync'") == "sync"
	})
	c.Exec(t, "CREATE TABLE sync_probe (i int)")
	conn := c.Conn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 3 {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var xid string
		if _, err := tx.Exec(ctx, "INSERT INTO sync_probe VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "SELECT txid_current()::text").Scan(&xid); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		// COMMIT returned: the commit record must be in the repository now.
		if !commitStored(t, repo, xid) {
			t.Fatalf("commit of transaction %s is not in the repository when COMMIT returned", xid)
		}
		t.Logf("transaction %s: commit record found in the repository right after COMMIT", xid)
	}
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}
}

// commitStored writes the repository's WAL (unfinished segments
// zero-padded, as wal-fetch serves them) into a directory and looks for the commit record of xid with
// pg_waldump.
func commitStored(t *testing.T, repo *storage.Repository, xid string) bool {
	t.Helper()
	harness.RequirePGBin(t, "pg_waldump")
	dir := t.TempDir()
	var names []string
	for name := range walObjects(t, repo) {
		if !archive.KindOf(name).HoldsWAL() {
			continue
		}
		seg := name[:24]
		if slices.Contains(names, seg) {
			continue
		}
		// What wal-fetch serves: the complete segment, else the prefix
		// its partial and ranges hold, zero-padded.
		if _, err := restore.FetchWAL(context.Background(), repo, seg, filepath.Join(dir, seg), restore.FetchOptions{}); err != nil {
			t.Fatalf("fetch %s: %v", seg, err)
		}
		names = append(names, seg)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return false
	}
	out, _ := exec.Command(harness.PGBin("pg_waldump"), "-p", dir, names[0], names[len(names)-1]).CombinedOutput()
	re := regexp.MustCompile(`tx:\s+` + regexp.QuoteMeta(xid) + `, lsn: \S+, prev \S+, desc: COMMIT`)
	return re.Match(out)
}

// TestStreamBadInput checks that each kind of bad input gives a one-line
// error, a non-zero exit and writes nothing.
func TestStreamBadInput(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "badinput", ExtraConf: map[string]string{"wal_level": "logical"}})
	c.Exec(t, "SELECT pg_create_logical_replication_slot('logi', 'test_decoding')")
	wrongPassword := strings.Replace(c.DSN(harness.ReplicationUser), c.Password(), "wrong-password", 1)
	foreign := filepath.Join(t.TempDir(), "foreign")
	frepo, _ := storage.Open(context.Background(), storage.Options{Repo: foreign})
	if _, err := frepo.Init(context.Background(), storage.Config{SystemIdentifier: "1234567890", PGMajorVersion: 15, WALSegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	for _, tc := range []struct {
		name, dsn, slot, repo, want string
	}{
		{"wrong password", wrongPassword, "wk", "", "password authentication failed"},
		{"role without REPLICATION", c.DSN(harness.NoReplicationUser), "wk", "", "REPLICATION"},
		{"logical slot of the same name", c.DSN(harness.ReplicationUser), "logi", "", "logical slot"},
		{"unreachable host", "host=127.0.0.1 port=" + strconv.Itoa(port) + " user=walkeeper connect_timeout=2", "wk", "", "cannot reach PostgreSQL"},
		{"repository of another cluster", c.DSN(harness.ReplicationUser), "wk", foreign, "belongs to another cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repoDir := tc.repo
			if repoDir == "" {
				repoDir = filepath.Join(t.TempDir(), "repo")
			}
			before := listAll(t, repoDir)
			_, stderr, code := runWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", tc.dsn, "--slot", tc.slot)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			lastLine := lines[len(lines)-1]
			if !strings.HasPrefix(lastLine, "walkeeper: ") || !strings.Contains(lastLine, tc.want) {
				t.Errorf("error line %q does not contain %q (stderr %q)", lastLine, tc.want, stderr)
			}
			if strings.Contains(stderr, c.Password()) {
				t.Error("the password appears in the output")
			}
			if after := listAll(t, repoDir); strings.Join(after, ",") != strings.Join(before, ",") {
				t.Errorf("repository changed: before %v, after %v", before, after)
			}
			if tc.slot == "wk" && c.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk'") != "0" {
				t.Error("a slot was created")
			}
		})
	}
}

func listAll(t *testing.T, dir string) []string {
	var out []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if !info.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStreamEndpos checks that --endpos stops the stream by itself, exit 0,
// with the WAL up to that position stored.
func TestStreamEndpos(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "endpos"})
	c.Exec(t, "SELECT pg_create_physical_replication_slot('wk', true)")
	c.Pgbench(t, "-i", "-s", "2", "-q")
	end := c.QueryString(t, "SELECT pg_current_wal_lsn()::text")
	repoDir := filepath.Join(t.TempDir(), "repo")
	_, stderr, code := runWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk", "--endpos", end)
	if code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr)
	}
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	stored, err := repoEnd(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	if stored != lsnOf(t, end) {
		t.Fatalf("repository ends at %X, --endpos was %s", stored, end)
	}
	if !strings.Contains(stderr, "reached end position") {
		t.Errorf("no end-position log line: %s", stderr)
	}
	_, stderr, code = runWalkeeper(t, nil, "stream", "--repo", repoDir, "--slot", "wk", "--endpos", "0/12G")
	if code != 2 || !strings.Contains(stderr, "invalid LSN") {
		t.Errorf("bad --endpos: code %d, %q", code, stderr)
	}
}
