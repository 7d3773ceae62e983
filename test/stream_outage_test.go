package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/monitor"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
	"github.com/walkeeper/walkeeper/walstream"
)

// makeWAL writes about 6 MB of WAL with one statement.
const makeWAL = "INSERT INTO outage_fill SELECT g, md5(g::text) || repeat('x', 150) FROM generate_series(1, 30000) g"

// TestShutdownBoundedDuringStorageOutage stops the S3 server (SIGSTOP)
// until the upload queue is full, then sends SIGTERM with
// --shutdown-timeout 10s: the stream must exit within 15 s (the issue's
// bound), non-zero, saying what it did not store, with the slot not past the
// stored WAL. Once the server is back, a new stream stores the rest and the
// archive has no gap. "load" signals while WAL keeps coming (the receiver
// waits on the full queue), "idle" after the load stopped (the receiver
// waits on the server and must queue its last partial).
func TestShutdownBoundedDuringStorageOutage(t *testing.T) {
	for _, tc := range []struct {
		name string
		load bool
	}{{"load", true}, {"idle", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Now()
			srv := harness.StartS3(t)
			c := harness.StartCluster(t, harness.ClusterOptions{Name: "shutdown-" + tc.name})
			env := append(srv.Env(), "WALKEEPER_S3_ENDPOINT="+srv.Endpoint, "WALKEEPER_S3_PATH_STYLE=true")
			addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
			args := []string{"stream", "--repo", "s3://" + srv.Bucket + "/cluster", "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk"}
			wk := startWalkeeper(t, env, append(args, "--shutdown-timeout", "10s", "--metrics-listen", addr)...)
			direct, err := storage.NewLocal(filepath.Join(srv.Dir, srv.Bucket))
			if err != nil {
				t.Fatal(err)
			}
			repo := storage.NewRepository(prefixed{direct, "cluster/"}, storage.CodecZstd)
			ctx := context.Background()
			c.Exec(t, "CREATE TABLE outage_fill (i int, pad text)")
			c.Exec(t, makeWAL)
			waitFor(t, time.Minute, "the first stored WAL", func() bool { e, _ := repoEnd(ctx, repo); return e > 0 })

			t.Logf("%v: pausing S3", time.Since(t0).Round(time.Second))
			srv.Pause(t)
			defer srv.Resume(t)
			// Load while storage hangs, until the queue is full, and (with
			// "load") on until walkeeper exits. Moderate: every segment
			// written must be stored afterwards by a race-enabled binary.
			stopLoad := make(chan struct{})
			var loadWG sync.WaitGroup
			loadWG.Add(1)
			go func() {
				defer loadWG.Done()
				conn := c.Conn(t)
				for {
					select {
					case <-stopLoad:
						return
					default:
					}
					qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					_, err := conn.Exec(qctx, makeWAL)
					cancel()
					if err != nil {
						t.Errorf("load: %v", err)
						return
					}
					time.Sleep(500 * time.Millisecond)
				}
			}()
			endLoad := sync.OnceFunc(func() { close(stopLoad); loadWG.Wait() })
			defer endLoad()
			waitFor(t, 2*time.Minute, "the upload queue to fill", func() bool {
				m, err := scrape(t, "http://"+addr+"/metrics")
				return err == nil && m["walkeeper_stream_queue_depth"] >= m["walkeeper_stream_queue_capacity"]
			})
			if !tc.load {
				endLoad()
				time.Sleep(2 * time.Second) // the receiver is idle, the queue full
			}
			if wk.exited() {
				t.Fatalf("walkeeper exited during the outage:\n%s", wk.output())
			}

			t.Logf("%v: queue full, SIGTERM", time.Since(t0).Round(time.Second))
			began := time.Now()
			wk.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-wk.done:
			case <-time.After(15 * time.Second):
				t.Fatalf("walkeeper did not exit within 15s of SIGTERM with --shutdown-timeout 10s while storage hangs")
			}
			took := time.Since(began)
			code := wk.cmd.ProcessState.ExitCode()
			t.Logf("exited %d after %v", code, took.Round(time.Millisecond))
			if code == 0 {
				t.Errorf("exit code 0 although received WAL was not stored:\n%s", wk.output())
			}
			out := wk.output()
			if !strings.Contains(out, "not stored") || !strings.Contains(out, "slot") {
				t.Errorf("the exit does not say what was not stored and that the slot keeps it:\n%s", out)
			}
			endLoad()
			t.Logf("%v: "+"load stopped", time.Since(t0).Round(time.Second))
			stored, err := repoEnd(ctx, repo)
			if err != nil {
				t.Fatal(err)
			}
			slot := lsnOf(t, c.QueryString(t, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'wk'"))
			if slot > stored {
				t.Fatalf("slot restart_lsn %X is past the repository's end %X", slot, stored)
			}
			current := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_lsn()::text"))
			if current <= stored+segSize {
				t.Fatalf("storage was not blocked: server at %X, repository at %X", current, stored)
			}

			// Storage is back: a new stream stores what the first did not.
			srv.Resume(t)
			wk2 := startWalkeeper(t, env, args...)
			last := switchAndWait(t, c)
			t.Logf("%v: storage resumed, the new stream stores up to %s", time.Since(t0).Round(time.Second), last)
			waitFor(t, 3*time.Minute, "the new stream to store "+last, func() bool { _, ok := walObjects(t, repo)[last]; return ok })
			t.Logf("%v: "+"stored", time.Since(t0).Round(time.Second))
			if code := wk2.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("second stream: exit code %d:\n%s", code, wk2.output())
			}
			compared, first, lastSeg := checkAgainstReceivewal(t, repo, t.TempDir()) // contiguity and sizes
			t.Logf("archive %s .. %s, no gap (%d compared)", first, lastSeg, compared)
			waldump(t, repo)
		})
	}
}

// vanishingPartial deletes the first .partial object the stream stats and
// reports it missing: another walkeeper (an old stream still shutting down,
// or retention) removed it between the stream's listing of the archive and
// its read of the partial's trailer.
type vanishingPartial struct {
	storage.Backend
	done atomic.Bool
}

func (v *vanishingPartial) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if (strings.Contains(key, ".partial") || strings.Contains(key, ".range")) && v.done.CompareAndSwap(false, true) {
		if err := v.Backend.Delete(ctx, key); err != nil {
			return storage.ObjectInfo{}, err
		}
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, storage.ErrNotFound)
	}
	return v.Backend.Stat(ctx, key)
}

// TestStreamSurvivesVanishedPartial starts a stream on a repository whose
// newest WAL is a .partial that disappears between the listing and the read
// of its trailer. A not-found there is a race with another writer, not a
// reason to exit: the stream must start (from what the archive then holds)
// and store the WAL, leaving no gap.
func TestStreamSurvivesVanishedPartial(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "vanished-partial"})
	repoDir := filepath.Join(t.TempDir(), "repo")
	repo, err := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	if err != nil {
		t.Fatal(err)
	}
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
	c.Exec(t, "CREATE TABLE vanish (i int)")
	c.Exec(t, "INSERT INTO vanish SELECT generate_series(1, 1000)")
	waitFor(t, time.Minute, "a stored .partial", func() bool {
		for name := range walObjects(t, repo) {
			if k := archive.KindOf(name); k == archive.Partial || k == archive.Range {
				return true
			}
		}
		return false
	})
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}

	local, err := storage.NewLocal(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	racy := &vanishingPartial{Backend: local}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- walstream.Run(ctx, walstream.Options{DSN: c.DSN(harness.ReplicationUser), Slot: "wk",
			Repo: storage.NewRepository(racy, storage.CodecZstd), ShutdownTimeout: time.Minute})
	}()
	c.Exec(t, "INSERT INTO vanish SELECT generate_series(1, 1000)")
	last := switchAndWait(t, c)
	waitFor(t, 2*time.Minute, "the stream to store "+last, func() bool {
		select {
		case err := <-errc:
			t.Fatalf("the stream ended: %v", err)
		default:
		}
		_, ok := walObjects(t, repo)[last]
		return ok
	})
	if !racy.done.Load() {
		t.Fatal("the stream never read a .partial: the race was not provoked")
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("stream: %v", err)
	}
	checkAgainstReceivewal(t, repo, t.TempDir()) // contiguity and sizes
}

// TestStreamWaitsOutFullRepository fills the filesystem of a local
// repository (a small tmpfs) while WAL arrives. A full disk is an outage,
// not a crash: the stream must stay up with its slot active, never report
// WAL it could not store, say once what is full, show the error in status
// and the metrics, and continue by itself once space returns, leaving no
// gap. Then the same with the filesystem remounted read-only.
func TestStreamWaitsOutFullRepository(t *testing.T) {
	fsDir := harness.SmallFilesystem(t, "full-repo", 256<<20)
	repoDir := filepath.Join(fsDir, "repo")
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "full-repo"})
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	metricsURL := "http://" + addr + "/metrics"
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk",
		"--metrics-listen", addr)
	repo, err := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.Exec(t, "CREATE TABLE outage_fill (i int, pad text)")
	c.Exec(t, makeWAL)
	waitFor(t, time.Minute, "the first stored WAL", func() bool { e, _ := repoEnd(ctx, repo); return e > 0 })
	metric := func(name string) float64 {
		m, err := scrape(t, metricsURL)
		if err != nil {
			t.Fatalf("scrape: %v", err)
		}
		return m["walkeeper_stream_"+name]
	}
	// The stream holds the slot where the repository ends, and streams.
	checkHeld := func(phase string) {
		t.Helper()
		if wk.exited() {
			t.Fatalf("%s: walkeeper exited:\n%s", phase, wk.output())
		}
		row := c.QueryRows(t, "SELECT active::text, coalesce(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = 'wk'")
		flush := c.QueryString(t, "SELECT coalesce(max(flush_lsn)::text, '') FROM pg_stat_replication WHERE application_name = 'wk'")
		stored, err := repoEnd(ctx, repo)
		if err != nil {
			t.Fatal(err)
		}
		if len(row) != 1 || row[0][0] != "true" {
			t.Fatalf("%s: slot wk is not active: %v", phase, row)
		}
		if slot := lsnOf(t, row[0][1]); slot > stored {
			t.Fatalf("%s: slot restart_lsn %X is past the repository's end %X", phase, slot, stored)
		}
		if flush == "" {
			t.Fatalf("%s: walkeeper is not connected (pg_stat_replication has no row)", phase)
		}
		if f := lsnOf(t, flush); f > stored {
			t.Fatalf("%s: reported flush position %X is past the repository's end %X", phase, f, stored)
		}
	}
	load := func(until func() bool) {
		t.Helper()
		for {
			if wk.exited() {
				t.Fatalf("walkeeper exited:\n%s", wk.output())
			}
			if until() {
				return
			}
			c.Exec(t, makeWAL)
			time.Sleep(time.Second)
		}
	}

	// Full: room for a heartbeat, none for a segment.
	filler := filepath.Join(fsDir, "filler")
	t.Logf("filled %d bytes", harness.FillFilesystem(t, filler, 256<<10))
	deadline := time.Now().Add(2 * time.Minute)
	load(func() bool {
		if time.Now().After(deadline) {
			t.Fatalf("walkeeper never reported the full repository (storage_full):\n%s", wk.output())
		}
		return metric("storage_full") == 1
	})
	for i := range 5 {
		c.Exec(t, makeWAL)
		checkHeld(fmt.Sprintf("full, sample %d", i))
		time.Sleep(2 * time.Second)
	}
	stored, _ := repoEnd(ctx, repo)
	if current := lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_lsn()::text")); current <= stored+segSize {
		t.Fatalf("storage was not blocked: server at %X, repository at %X", current, stored)
	}
	if v := metric("storage_failing_seconds"); v <= 0 {
		t.Errorf("storage_failing_seconds = %v while the repository is full", v)
	}
	var status monitor.StatusReport
	waitFor(t, time.Minute, "status to show the storage error", func() bool {
		out, stderr, code := runWalkeeper(t, nil, "status", "--repo", repoDir, "--json")
		if err := json.Unmarshal([]byte(out), &status); err != nil {
			t.Fatalf("status --json (exit %d): %v\n%s%s", code, err, out, stderr)
		}
		return code == 5 && len(status.Streams) == 1 && strings.Contains(status.Streams[0].StorageError, "is full")
	})
	t.Logf("status: %q, problems %q", status.Streams[0].StorageError, status.Problems)
	if n := strings.Count(wk.output(), "the repository cannot take WAL"); n != 1 {
		t.Errorf("the full repository was reported %d times in the log, want once:\n%s", n, wk.output())
	}

	// Space returns: the stream continues by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	last := switchAndWait(t, c)
	waitFor(t, 3*time.Minute, "the stream to store "+last+" after space returned", func() bool { _, ok := walObjects(t, repo)[last]; return ok })
	if v, f := metric("storage_full"), metric("storage_failing_seconds"); v != 0 || f != 0 {
		t.Errorf("after recovery: storage_full %v, storage_failing_seconds %v", v, f)
	}
	checkHeld("recovered")
	waitFor(t, time.Minute, "status without the storage error", func() bool {
		out, _, code := runWalkeeper(t, nil, "status", "--repo", repoDir, "--json")
		status = monitor.StatusReport{}
		json.Unmarshal([]byte(out), &status)
		return code == 0 && len(status.Streams) == 1 && status.Streams[0].StorageError == ""
	})

	// Read-only: the same outage.
	harness.Remount(t, fsDir, "ro")
	deadline = time.Now().Add(2 * time.Minute)
	load(func() bool {
		if time.Now().After(deadline) {
			t.Fatalf("walkeeper never reported the read-only repository (storage_full):\n%s", wk.output())
		}
		return metric("storage_full") == 1
	})
	checkHeld("read-only")
	if !strings.Contains(wk.output(), "its filesystem is read-only") {
		t.Errorf("the read-only repository is not reported in the log:\n%s", wk.output())
	}
	harness.Remount(t, fsDir, "rw")
	last = switchAndWait(t, c)
	waitFor(t, 3*time.Minute, "the stream to store "+last+" once writable", func() bool { _, ok := walObjects(t, repo)[last]; return ok })
	checkHeld("writable again")
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}
	compared, first, lastSeg := checkAgainstReceivewal(t, repo, t.TempDir()) // contiguity and sizes
	t.Logf("archive %s .. %s, no gap (%d compared)", first, lastSeg, compared)
	waldump(t, repo)
}
