package test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
	"github.com/walkeeper/walkeeper/test/harness"
	"github.com/walkeeper/walkeeper/walstream"
)

// runWalkeeperIn runs the binary to completion in dir, as PostgreSQL runs
// restore_command and archive_command in the data directory.
func runWalkeeperIn(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, walkeeperBin, args...)
	cmd.Dir = dir
	// The race runtime sleeps a second before a successful exit unless
	// told not to; PostgreSQL-style one-file invocations would pay it each.
	cmd.Env = append(append(os.Environ(), "WALKEEPER_LOG_FORMAT=json", "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE")), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.String(), e.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

// waitPrefetcher waits until no prefetcher holds the spool's lock (the
// detached wal-prefetch process has exited).
func waitPrefetcher(t *testing.T, spool string) {
	t.Helper()
	waitFor(t, time.Minute, "the prefetcher to exit", func() bool {
		f, err := os.Open(filepath.Join(spool, ".lock"))
		if err != nil {
			return errors.Is(err, os.ErrNotExist)
		}
		defer f.Close()
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			return false
		}
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return true
	})
}

// TestWALFetchAndPush streams pgbench WAL into a local and an S3
// repository and runs wal-fetch and wal-push as PostgreSQL would (separate
// processes, relative paths in the data directory): fetched files equal
// the stored objects, a missing file exits 4 silently, the newest partial
// comes zero-padded, prefetched segments are served from the spool, pushes
// are idempotent and never overwrite, and a corrupt object is never
// written.
func TestWALFetchAndPush(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "walfetch"})
	targets := repoTargets(t)
	var streams []*proc
	for _, tg := range targets {
		streams = append(streams, startWalkeeper(t, tg.env, "stream", "--repo", tg.url,
			"--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk_"+tg.name))
	}
	c.Pgbench(t, "-i", "-s", "3", "-q")
	last := switchAndWait(t, c)
	c.Exec(t, "CREATE TABLE after_switch AS SELECT generate_series(1, 1000) AS g") // WAL for a partial
	for i, tg := range targets {
		repo := tg.open(t)
		waitFor(t, time.Minute, tg.name+": segment "+last, func() bool { _, ok := walObjects(t, repo)[last]; return ok })
		if code := streams[i].stop(t, syscall.SIGTERM); code != 0 {
			t.Fatalf("%s: stream exit code %d:\n%s", tg.name, code, streams[i].output())
		}
	}

	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			repo := tg.open(t)
			ctx := context.Background()
			objs := walObjects(t, repo)
			segs := completeSegments(t, repo)
			if len(segs) < 3 {
				t.Fatalf("want at least 3 complete segments, have %v", segs)
			}
			var partial string
			for name := range objs {
				if strings.HasSuffix(name, ".partial") {
					partial = strings.TrimSuffix(name, ".partial")
				}
			}
			if partial == "" || partial <= segs[len(segs)-1] {
				t.Fatalf("want a partial newer than %s, have %v", segs[len(segs)-1], keys(objs))
			}
			data := harness.MakeDir(t, "walfetch-data-"+tg.name)
			pgwal := filepath.Join(data, "pg_wal")
			if err := os.Mkdir(pgwal, 0o700); err != nil {
				t.Fatal(err)
			}
			dest := filepath.Join(pgwal, "RECOVERYXLOG")
			fetch := func(args ...string) (string, int) {
				t.Helper()
				_, stderr, code := runWalkeeperIn(t, data, tg.env, append([]string{"wal-fetch", "--repo", tg.url}, args...)...)
				return stderr, code
			}
			push := func(args ...string) (string, int) {
				t.Helper()
				_, stderr, code := runWalkeeperIn(t, data, tg.env, append([]string{"wal-push", "--repo", tg.url}, args...)...)
				return stderr, code
			}

			// A complete segment, over an existing RECOVERYXLOG.
			os.WriteFile(dest, []byte("previous file"), 0o600)
			if stderr, code := fetch("--prefetch", "0", segs[0], "pg_wal/RECOVERYXLOG"); code != 0 {
				t.Fatalf("wal-fetch %s: exit %d: %s", segs[0], code, stderr)
			}
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, readObject(t, repo, objs[segs[0]])) {
				t.Fatalf("wal-fetch %s: %d bytes differ from the stored segment", segs[0], len(got))
			}

			// Missing files: exit 4, nothing printed, nothing written.
			for _, name := range []string{"000000010000000A00000000", "00000009.history", "000000010000000000000001.00000028.backup"} {
				stderr, code := fetch("--prefetch", "0", name, "pg_wal/RECOVERYHISTORY")
				if code != 4 || stderr != "" {
					t.Errorf("wal-fetch %s: exit %d, stderr %q; want 4 and nothing", name, code, stderr)
				}
			}
			if _, err := os.Stat(filepath.Join(pgwal, "RECOVERYHISTORY")); err == nil {
				t.Error("a missing file was written")
			}
			if _, code := fetch("../etc/passwd", "pg_wal/x"); code != 2 {
				t.Errorf("wal-fetch ../etc/passwd: exit %d, want 2", code)
			}

			// The newest partial: padded to a whole segment.
			if stderr, code := fetch(partial, "pg_wal/RECOVERYXLOG"); code != 0 {
				t.Fatalf("wal-fetch %s (partial): exit %d: %s", partial, code, stderr)
			}
			stored := readObject(t, repo, objs[partial+".partial"])
			got, _ := os.ReadFile(dest)
			if len(got) != segSize || !bytes.Equal(got[:len(stored)], stored) || !bytes.Equal(got[len(stored):], make([]byte, segSize-len(stored))) {
				t.Fatalf("wal-fetch %s: %d bytes; want the %d-byte partial padded with zeros to %d", partial, len(got), len(stored), segSize)
			}
			if _, code := fetch(partial+".partial", "pg_wal/RECOVERYXLOG"); code != 0 {
				t.Fatalf("wal-fetch %s.partial: exit %d", partial, code)
			}
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, stored) {
				t.Fatalf("wal-fetch %s.partial: %d bytes, want the %d stored", partial, len(got), len(stored))
			}

			// Prefetch: after segs[0], segs[1] and segs[2] land in the spool
			// and the next wal-fetch takes its segment from there.
			spool := filepath.Join(pgwal, ".walkeeper-prefetch")
			if stderr, code := fetch("--prefetch", "2", segs[0], "pg_wal/RECOVERYXLOG"); code != 0 {
				t.Fatalf("wal-fetch --prefetch 2: exit %d: %s", code, stderr)
			}
			waitPrefetcher(t, spool)
			for _, name := range segs[1:3] {
				if _, err := os.Stat(filepath.Join(spool, name)); err != nil {
					t.Fatalf("%s not prefetched: %v", name, err)
				}
			}
			stderr, code := fetch("--prefetch", "2", "--log-level", "debug", segs[1], "pg_wal/RECOVERYXLOG")
			if code != 0 || !strings.Contains(stderr, `"from_prefetch":true`) {
				t.Fatalf("wal-fetch %s: exit %d, not from the spool: %s", segs[1], code, stderr)
			}
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, readObject(t, repo, objs[segs[1]])) {
				t.Fatalf("prefetched %s differs from the stored segment", segs[1])
			}
			if _, err := os.Stat(filepath.Join(spool, segs[1])); err == nil {
				t.Error("the served segment is still in the spool")
			}
			waitPrefetcher(t, spool)

			// wal-push of a segment the repository has: success, "already stored".
			seg0 := readObject(t, repo, objs[segs[0]])
			os.WriteFile(filepath.Join(pgwal, segs[0]), seg0, 0o600)
			if stderr, code := push("pg_wal/" + segs[0]); code != 0 || !strings.Contains(stderr, "already stored") {
				t.Fatalf("wal-push of a stored segment: exit %d: %s", code, stderr)
			}
			// A segment the repository lacks: stored, then idempotent.
			seg1 := readObject(t, repo, objs[segs[1]])
			if err := repo.Backend().Delete(ctx, objs[segs[1]]); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(pgwal, segs[1]), seg1, 0o600)
			for range 2 {
				if stderr, code := push("pg_wal/" + segs[1]); code != 0 {
					t.Fatalf("wal-push %s: exit %d: %s", segs[1], code, stderr)
				}
			}
			if info, err := repo.Find(ctx, archivetest.WALKey(segs[1])); err != nil || !bytes.Equal(readObject(t, repo, info.Key), seg1) {
				t.Fatalf("pushed %s not stored as it was: %v", segs[1], err)
			}
			// Different content under a stored name: exit 1, object unchanged.
			changed := bytes.Clone(seg0)
			changed[segSize/2] ^= 0xFF
			os.WriteFile(filepath.Join(pgwal, segs[0]), changed, 0o600)
			stderr, code = push("pg_wal/" + segs[0])
			if code != 1 || !strings.Contains(stderr, "different content") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("wal-push of changed %s: exit %d, stderr %q; want 1 and one line", segs[0], code, stderr)
			}
			if !bytes.Equal(readObject(t, repo, objs[segs[0]]), seg0) {
				t.Fatal("the stored segment changed")
			}

			// A flipped byte in a stored object (local: the file itself).
			if tg.name != "local" {
				return
			}
			victim := segs[2]
			path := filepath.Join(tg.url, filepath.FromSlash(objs[victim]))
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			raw[len(raw)/2] ^= 0x01
			if err := os.WriteFile(path, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				flags []string
				want  int
			}{{nil, 1}, {[]string{"--fatal-errors"}, 126}} {
				out := filepath.Join(pgwal, "CORRUPT")
				stderr, code := fetch(append(tc.flags, "--prefetch", "0", victim, "pg_wal/CORRUPT")...)
				if code != tc.want || !strings.Contains(stderr, "corrupt") {
					t.Errorf("wal-fetch of a corrupt object %v: exit %d, stderr %q; want %d", tc.flags, code, stderr, tc.want)
				}
				if _, err := os.Stat(out); err == nil {
					t.Errorf("corrupt object written to %s", out)
				}
			}
			entries, _ := os.ReadDir(pgwal)
			for _, e := range entries {
				if strings.HasSuffix(e.Name(), ".tmp") {
					t.Errorf("temporary file left in pg_wal: %s", e.Name())
				}
			}
		})
	}
}

// BenchmarkReplayWithPrefetch measures what prefetching buys a real
// recovery from S3. A base backup taken with pg_basebackup -X none holds no
// WAL, so everything recovery replays comes through restore_command
// (walkeeper wal-fetch, one process per file as PostgreSQL runs it) from a
// versitygw S3 repository filled by `walkeeper stream` during pgbench -i.
// The same backup is recovered with --prefetch 0 and --prefetch 8, twice
// each, alternating; it reports segments per second from the server's start
// to the end of recovery, and logs PostgreSQL's own redo time.
//
//	go test -run '^$' -bench ReplayWithPrefetch -benchtime 1x ./test/
func BenchmarkReplayWithPrefetch(b *testing.B) {
	binDir := harness.MakeDir(b, "bench-bin")
	bin := filepath.Join(binDir, "walkeeper")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/walkeeper").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	srv := harness.StartS3(b)
	c := harness.StartCluster(b, harness.ClusterOptions{Name: "bench-replay", ExtraConf: map[string]string{
		"max_wal_size": "2GB", "checkpoint_timeout": "30min",
	}})
	url := "s3://" + srv.Bucket + "/cluster"
	s3Flags := []string{"--s3-endpoint", srv.Endpoint, "--s3-path-style"}
	stream := exec.Command(bin, append([]string{"stream", "--repo", url, "--slot", "wk", "--dsn", c.DSN(harness.ReplicationUser)}, s3Flags...)...)
	stream.Env = append(append(os.Environ(), "WALKEEPER_LOG_LEVEL=warn"), srv.Env()...)
	stream.Stderr = os.Stderr
	if err := stream.Start(); err != nil {
		b.Fatal(err)
	}
	streamDone := make(chan error, 1)
	go func() { streamDone <- stream.Wait() }()
	streamStopped := false
	b.Cleanup(func() {
		if !streamStopped {
			stream.Process.Kill()
			<-streamDone
		}
	})
	waitForTB(b, time.Minute, "the stream's slot", func() bool {
		return c.QueryString(b, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active") == "1"
	})

	base := filepath.Join(harness.MakeDir(b, "bench-base"), "data")
	if out, err := c.RunAsPostgres(b, "pg_basebackup", "-D", base, "-X", "none", "-c", "fast", "--no-sync"); err != nil {
		b.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	c.Pgbench(b, "-i", "-s", "30", "-q")
	last := c.QueryString(b, "SELECT pg_walfile_name(pg_switch_wal())")
	c.Exec(b, "CREATE TABLE after_load AS SELECT 1 AS done") // the partial at the end
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		b.Setenv(k, v)
	}
	direct, err := storage.Open(context.Background(), storage.Options{Repo: url, S3: storage.S3Options{Endpoint: srv.Endpoint, PathStyle: true}})
	if err != nil {
		b.Fatal(err)
	}
	waitForTB(b, 5*time.Minute, "the stream to store "+last, func() bool {
		_, err := direct.Find(context.Background(), archivetest.WALKey(last))
		return err == nil
	})
	endLSN := lsnOfTB(b, c.QueryString(b, "SELECT pg_current_wal_flush_lsn()::text"))
	partial := c.QueryString(b, "SELECT pg_walfile_name(pg_current_wal_flush_lsn())") + ".partial"
	waitForTB(b, time.Minute, "the stream to store "+partial, func() bool {
		ok, err := archive.Reaches(context.Background(), direct, 1, endLSN/segSize, segSize, walstream.LSN(endLSN))
		return err == nil && ok
	})
	stream.Process.Signal(syscall.SIGTERM)
	streamStopped = true
	if err := <-streamDone; err != nil {
		b.Fatalf("stream: %v", err)
	}

	run := func(prefetch int, round int) (segments int, wall, redo time.Duration) {
		r := c.RestoreTarget(b, "bench-replay-"+strconv.Itoa(prefetch)+"-"+strconv.Itoa(round))
		if out, err := exec.Command("cp", "-a", base, r.DataDir()).CombinedOutput(); err != nil {
			b.Fatalf("copy base backup: %v\n%s", err, out)
		}
		st, err := os.Stat(r.DataDir())
		if err != nil {
			b.Fatal(err)
		}
		uid, gid := int(st.Sys().(*syscall.Stat_t).Uid), int(st.Sys().(*syscall.Stat_t).Gid)
		restoreCommand := strings.Join(append(append([]string{bin, "wal-fetch", "--repo", url}, s3Flags...),
			"--prefetch", strconv.Itoa(prefetch), "%f", "%p"), " ")
		conf := "\nrestore_command = '" + restoreCommand + "'\n"
		auto := filepath.Join(r.DataDir(), "postgresql.auto.conf")
		f, err := os.OpenFile(auto, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.WriteString(conf); err != nil {
			b.Fatal(err)
		}
		f.Close()
		signal := filepath.Join(r.DataDir(), "recovery.signal")
		if err := os.WriteFile(signal, nil, 0o600); err != nil {
			b.Fatal(err)
		}
		os.Lchown(signal, uid, gid)
		// The keys reach restore_command through the server's environment.
		r.SetEnv(srv.Env())
		began := time.Now()
		r.StartRestored(b)
		waitForTB(b, 10*time.Minute, "recovery to finish", func() bool {
			return r.QueryString(b, "SELECT pg_is_in_recovery()") == "f"
		})
		wall = time.Since(began)
		// after_load exists only in the partial segment at the end: it
		// was replayed, zero-padded, and recovery ended there.
		if got := r.QueryString(b, "SELECT count(*) FROM after_load"); got != "1" {
			b.Fatalf("prefetch %d: after_load has %s rows, want 1", prefetch, got)
		}
		log, _ := os.ReadFile(r.LogFile())
		segments = strings.Count(string(log), "restored log file \"0000")
		if m := regexp.MustCompile(`redo done at .* elapsed: ([0-9.]+) s`).FindSubmatch(log); m != nil {
			s, _ := strconv.ParseFloat(string(m[1]), 64)
			redo = time.Duration(s * float64(time.Second))
		}
		if _, err := os.Stat(filepath.Join(r.DataDir(), "pg_wal", ".walkeeper-prefetch")); err == nil {
			b.Errorf("prefetch %d: the spool is still in pg_wal after recovery", prefetch)
		}
		r.Stop(b)
		return segments, wall, redo
	}

	b.ResetTimer()
	for range b.N {
		total := map[int]time.Duration{}
		count := map[int]int{}
		for round := range 2 {
			for _, prefetch := range []int{0, 8} {
				n, wall, redo := run(prefetch, round)
				b.Logf("prefetch %d: %d segments restored, %.2f s from start to promotion (%.1f segments/s), redo %.2f s",
					prefetch, n, wall.Seconds(), float64(n)/wall.Seconds(), redo.Seconds())
				total[prefetch] += wall
				count[prefetch] += n
			}
		}
		for _, prefetch := range []int{0, 8} {
			b.ReportMetric(float64(count[prefetch])/total[prefetch].Seconds(), "prefetch"+strconv.Itoa(prefetch)+"-segments/s")
		}
	}
}

// waitForTB is waitFor for benchmarks.
func waitForTB(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
