package test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
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
