package test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
)

const segSize = 16 << 20

// startReceivewal runs pg_receivewal (the oracle) on its own slot into a
// fresh directory and returns the directory and a stop function.
func startReceivewal(t *testing.T, c *harness.Cluster, slot string) (string, func()) {
	t.Helper()
	harness.RequirePGBin(t, "pg_receivewal")
	dir := harness.MakeDir(t, "receivewal")
	if out, err := c.RunAsPostgres(t, "pg_receivewal", "--create-slot", "-S", slot, "-d", c.DSN(harness.ReplicationUser)); err != nil {
		t.Fatalf("pg_receivewal --create-slot: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := c.Command(ctx, "pg_receivewal", "-D", dir, "-S", slot, "-n", "-d", c.DSN(harness.ReplicationUser))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cancel()
			<-done
		}
	}
	t.Cleanup(func() { stop(); cancel() })
	return dir, stop
}

// switchAndWait forces a segment switch and returns the name of the last
// complete segment (the one holding the LSN just before the switch).
func switchAndWait(t *testing.T, c *harness.Cluster) string {
	t.Helper()
	c.Exec(t, "CREATE TABLE IF NOT EXISTS switch_marker (at timestamptz)")
	c.Exec(t, "INSERT INTO switch_marker VALUES (now())")
	return c.QueryString(t, "SELECT pg_walfile_name(pg_switch_wal())")
}

// checkAgainstReceivewal compares every complete segment walkeeper stored
// with pg_receivewal's file of the same name and checks the stored segments
// are contiguous. It returns how many segments were compared.
func checkAgainstReceivewal(t *testing.T, repo *storage.Repository, rwDir string) (compared int, first, last string) {
	t.Helper()
	segs := completeSegments(t, repo)
	if len(segs) == 0 {
		t.Fatal("walkeeper stored no complete segment")
	}
	objs := walObjects(t, repo)
	for i, name := range segs {
		if i > 0 {
			a, _ := archive.ParseName(segs[i-1], segSize)
			b, _ := archive.ParseName(name, segSize)
			if a.TLI == b.TLI && b.Seg != a.Seg+1 {
				t.Errorf("gap in the repository: %s is followed by %s", segs[i-1], name)
			}
		}
		data := readObject(t, repo, objs[name])
		if len(data) != segSize {
			t.Errorf("%s: %d bytes, want %d", name, len(data), segSize)
		}
		oracle, err := os.ReadFile(filepath.Join(rwDir, name))
		if err != nil {
			continue // pg_receivewal started later or has it as .partial
		}
		if !bytes.Equal(data, oracle) {
			t.Errorf("%s differs from pg_receivewal's copy", name)
		}
		compared++
	}
	return compared, segs[0], segs[len(segs)-1]
}

// waldump decompresses the complete segments into a directory and runs
// pg_waldump over them from the first segment's start to the last's.
func waldump(t *testing.T, repo *storage.Repository) {
	t.Helper()
	harness.RequirePGBin(t, "pg_waldump")
	dir := t.TempDir()
	segs := completeSegments(t, repo)
	objs := walObjects(t, repo)
	for _, name := range segs {
		if err := os.WriteFile(filepath.Join(dir, name), readObject(t, repo, objs[name]), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if len(segs) < 2 {
		t.Fatalf("need two segments for pg_waldump, have %v", segs)
	}
	first, _ := archive.ParseName(segs[0], segSize)
	last, _ := archive.ParseName(segs[len(segs)-1], segSize)
	n0, n1 := first.Seg, last.Seg
	start := fmt.Sprintf("%X/%X", (n0*segSize)>>32, uint32(n0*segSize))
	end := fmt.Sprintf("%X/%X", (n1*segSize)>>32, uint32(n1*segSize))
	out, err := exec.Command(harness.PGBin("pg_waldump"), "--quiet", "-p", dir, "-s", start, "-e", end).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_waldump -s %s -e %s over %d segments: %v\n%s", start, end, len(segs), err, out)
	}
}

// TestStreamMatchesPgReceivewal streams under pgbench load next to
// pg_receivewal, kills walkeeper with SIGKILL twice mid-load and restarts
// it, then checks that every stored segment is byte-identical to the
// oracle's, that there is no gap, and that pg_waldump parses the range.
func TestStreamMatchesPgReceivewal(t *testing.T) {
	t.Parallel()
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			c := harness.StartCluster(t, harness.ClusterOptions{Name: "stream-" + target.name})
			rwDir, stopRW := startReceivewal(t, c, "oracle")
			args := []string{"stream", "--repo", target.url, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk"}

			wk := startWalkeeper(t, target.env, args...)
			c.Pgbench(t, "-i", "-s", "4", "-q")
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); c.Pgbench(t, "-T", "8", "-c", "2") }()
			for i := range 2 {
				time.Sleep(2 * time.Second)
				if wk.exited() {
					t.Fatalf("walkeeper exited early:\n%s", wk.output())
				}
				wk.cmd.Process.Kill()
				<-wk.done
				t.Logf("killed walkeeper (kill %d)", i+1)
				wk = startWalkeeper(t, target.env, args...)
			}
			wg.Wait()
			last := switchAndWait(t, c)
			repo := target.open(t)
			waitFor(t, time.Minute, "walkeeper to store "+last, func() bool {
				_, ok := walObjects(t, repo)[last]
				return ok
			})
			waitFor(t, time.Minute, "pg_receivewal to finish "+last, func() bool {
				_, err := os.Stat(filepath.Join(rwDir, last))
				return err == nil
			})
			if code := wk.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("walkeeper exit code %d after SIGTERM:\n%s", code, wk.output())
			}
			stopRW()
			compared, first, lastSeg := checkAgainstReceivewal(t, repo, rwDir)
			t.Logf("%d segments byte-identical to pg_receivewal (%s .. %s)", compared, first, lastSeg)
			if compared < 3 {
				t.Errorf("only %d segments compared", compared)
			}
			if !strings.Contains(wk.output(), "stored WAL segment") {
				t.Error("no 'stored WAL segment' log line")
			}
			waldump(t, repo)
		})
	}
}
