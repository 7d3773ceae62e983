package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

// TestMakeDemo runs the README's demo script (what `make demo` runs) in a
// directory of its own on free ports and checks what it promises: writes
// land on the primary, reads through the read port are answered by both
// replicas, status prints, one more replica joins with add-replica, and
// down stops every process.
func TestMakeDemo(t *testing.T) {
	harness.RequirePG(t)
	harness.RequireHAProxy(t)
	dir := filepath.Join(harness.MakeDir(t, "demo"), "state")
	base := demoBasePort(t)
	env := append(os.Environ(), "DEMO_DIR="+dir, fmt.Sprintf("DEMO_BASE_PORT=%d", base), "PGBIN="+harness.PGBinDir())
	run := func(args ...string) string {
		t.Helper()
		return runDemo(t, env, args, "", nil)
	}
	stopped := false
	t.Cleanup(func() {
		if t.Failed() {
			logDemoLogs(t, filepath.Join(dir, "logs"))
		}
		if !stopped {
			c := exec.Command("../deploy/demo/demo.sh", "down")
			c.Env = env
			c.Run()
		}
	})
	out := run("up")
	primary := fmt.Sprint(base + 2)
	if n := strings.Count(out, "landed on port "+primary+" (the primary)"); n != 3 {
		t.Errorf("%d of 3 writes reported landing on the primary:\n%s", n, out)
	}
	readers := map[string]bool{}
	for _, m := range regexp.MustCompile(`answered by port (\d+) \(replica\)`).FindAllStringSubmatch(out, -1) {
		readers[m[1]] = true
	}
	if len(readers) != 2 || readers[primary] {
		t.Errorf("reads answered by %v, want the two replicas:\n%s", readers, out)
	}
	if !strings.Contains(out, "Status               OK") {
		t.Errorf("no walkeeper status report:\n%s", out)
	}
	// Every health agent stalls (as on an overloaded machine, where a check
	// can time out twice in a row): HAProxy marks every server down and
	// closes new connections. The demo's client retries; the agents resume
	// once it has seen a failure, and the write gets through when the
	// checks pass again (rise 2).
	agents := demoAgentPIDs(t, dir)
	signalAll(t, agents, syscall.SIGSTOP)
	resumed := false
	defer func() {
		if !resumed {
			signalAll(t, agents, syscall.SIGCONT)
		}
	}()
	waitFor(t, time.Minute, "HAProxy to mark every server down", func() bool {
		st, err := haproxyStatus(base + 12)
		if err != nil {
			return false
		}
		for k, v := range st {
			if !strings.HasSuffix(k, "/FRONTEND") && !strings.HasSuffix(k, "/BACKEND") && strings.HasPrefix(v, "UP") {
				return false
			}
		}
		return true
	})
	out = runDemo(t, env, []string{"writes", "1"}, "failed; retrying", func() {
		resumed = true
		signalAll(t, agents, syscall.SIGCONT)
	})
	if !resumed || !strings.Contains(out, "landed on port "+primary+" (the primary)") {
		t.Errorf("a write while the health checks were stalled, then resumed:\n%s", out)
	}
	out = run("add-replica")
	if !strings.Contains(out, "replica3 is streaming from the primary") {
		t.Errorf("add-replica:\n%s", out)
	}
	waitFor(t, time.Minute, "replica3 in the read rotation", func() bool {
		return strings.Contains(run("reads", "6"), fmt.Sprintf("port %d (replica)", base+5))
	})
	run("down")
	stopped = true
	for _, port := range []int{base + 2, base + 3, base + 4, base + 5, base + 11} {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			c.Close()
			t.Errorf("port %d still answers after demo.sh down", port)
		}
	}
}

// runDemo runs demo.sh ARGS, fails the test if it fails, and returns its
// output; with a marker, it calls then() once, when a line of the output
// contains it.
func runDemo(t *testing.T, env, args []string, marker string, then func()) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../deploy/demo/demo.sh", args...)
	cmd.Env = env
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		seen := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !seen && marker != "" && strings.Contains(sc.Text(), marker) {
				seen = true
				then()
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	<-scanned
	if err != nil {
		t.Fatalf("demo.sh %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// demoAgentPIDs reads the pids of the demo's health agents from its run
// directory.
func demoAgentPIDs(t *testing.T, dir string) []int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "run", "health-*.pid"))
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		pids = append(pids, pid)
	}
	if len(pids) != 3 {
		t.Fatalf("%d health agents running, want 3 (primary and two replicas)", len(pids))
	}
	return pids
}

func signalAll(t *testing.T, pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil {
			t.Errorf("signal %v to health agent %d: %v", sig, pid, err)
		}
	}
}

// logDemoLogs puts the tail of every log the demo wrote into the test
// log: the directory goes with the test, and a failure under load (a health
// check timing out, a server refusing) is only explained there.
func logDemoLogs(t *testing.T, dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("--- %s (last %d lines)\n%s", filepath.Base(f), len(lines), strings.Join(lines, "\n"))
	}
}

// demoBasePort finds a base port whose demo ports (base+0..base+30) are
// free.
func demoBasePort(t *testing.T) int {
	for range 50 {
		base := 20000 + rand.IntN(20000)
		free := true
		for p := base; p <= base+30 && free; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				free = false
				continue
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatal("no free range of ports for the demo")
	return 0
}
