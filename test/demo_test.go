package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
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
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "../deploy/demo/demo.sh", args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("demo.sh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	stopped := false
	t.Cleanup(func() {
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
