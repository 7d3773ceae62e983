package test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The side-by-side table. Each benchmark records what it measured (one
// number per tool and quantity); TestMain prints the table and the ratios
// the performance goals name after every benchmark of the run has ended,
// so they come from one run on one machine.
//
// WALKEEPER_BENCH_BASELINE=/path/to/walkeeper adds that binary (built from
// another commit) as "walkeeper-before" to the stream, backup and restore
// benchmarks, in the same run.

var benchTable struct {
	sync.Mutex
	rows  []string
	value map[string]float64
}

// benchRecord notes one measured quantity of a tool ("stream cpu-s/GB",
// "walkeeper-zstd").
func benchRecord(quantity, tool string, v float64) {
	benchTable.Lock()
	defer benchTable.Unlock()
	if benchTable.value == nil {
		benchTable.value = map[string]float64{}
	}
	k := quantity + "\x00" + tool
	if _, ok := benchTable.value[k]; !ok {
		benchTable.rows = append(benchTable.rows, k)
	}
	benchTable.value[k] = v
}

func benchValue(quantity, tool string) (float64, bool) {
	v, ok := benchTable.value[quantity+"\x00"+tool]
	return v, ok
}

// benchRatios are the goals of issue 13: numerator tool, denominator tool,
// quantity, goal (ratio must be at most it; for "min" goals at least).
var benchRatios = []struct {
	quantity, num, den string
	goal               float64
	atLeast            bool
}{
	{"stream cpu-s/GB", "walkeeper-lz4", "pg_receivewal-lz4", 1.3, false},
	{"stream cpu-s/GB", "walkeeper-none", "pg_receivewal", 1.3, false},
	{"stream cpu-s/GB", "walkeeper-zstd", "pg_receivewal", 0, false},
	{"stream catch-up-s", "walkeeper-lz4", "pg_receivewal-lz4", 1.0, false},
	{"stream catch-up-s", "walkeeper-none", "pg_receivewal", 1.0, false},
	{"backup wall-s", "walkeeper-zstd", "pg_basebackup-client-zstd", 0.8, false},
	{"backup wall-s", "walkeeper-lz4", "pg_basebackup-client-lz4", 0.8, false},
	{"restore wall-s", "walkeeper-zstd", "pgbackrest-process-max-2", 0.8, false},
	{"restore wall-s", "walkeeper-parallel-1", "walkeeper-parallel-2", 1.6, true},
	{"restore wall-s", "walkeeper-no-sync-parallel-1", "walkeeper-no-sync-parallel-2", 1.6, true},
	// The disk's floor (the restored bytes written into one file and
	// fsynced): parallel-1 over it bounds what --parallel 2 can gain with
	// fsync on this machine; parallel-2 and pgBackRest over it say how
	// close each is to the disk.
	{"restore wall-s", "walkeeper-parallel-1", "disk-write-fsync", 0, false},
	{"restore wall-s", "walkeeper-parallel-2", "disk-write-fsync", 0, false},
	{"restore wall-s", "pgbackrest-process-max-2", "disk-write-fsync", 0, false},
	{"backup wall-s", "walkeeper-zstd-s3", "walkeeper-zstd", 0, false},
	{"restore wall-s", "walkeeper-zstd-s3", "walkeeper-zstd", 0, false},
	{"backup wall-s", "pg_basebackup-server-zstd", "pg_basebackup-client-zstd", 0, false},
	{"backup wall-s", "pg_basebackup-server-zstd-workers-2", "pg_basebackup-client-zstd", 0, false},
	{"resync wall-s", "restore-delta-5%-newest", "full-restore-5%-newest", 0, false},
	{"resync written-MB", "restore-delta-5%-newest", "full-restore-5%-newest", 0, false},
	{"resync wall-s", "restore-delta-5%-spread", "full-restore-5%-spread", 0, false},
	{"resync written-MB", "restore-delta-5%-spread", "full-restore-5%-spread", 0, false},
}

// printBenchTable writes the table, then the ratios, for both the current
// binary and the baseline when one ran.
func printBenchTable(w io.Writer) {
	benchTable.Lock()
	defer benchTable.Unlock()
	if len(benchTable.rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%-18s %-30s %10s\n", "quantity", "tool", "value")
	for _, k := range benchTable.rows {
		var q, tool string
		for i := range len(k) {
			if k[i] == 0 {
				q, tool = k[:i], k[i+1:]
				break
			}
		}
		fmt.Fprintf(w, "%-18s %-30s %10.2f\n", q, tool, benchTable.value[k])
	}
	fmt.Fprintf(w, "\n%-60s %8s %8s %8s\n", "ratio", "after", "before", "goal")
	for _, r := range benchRatios {
		cell := func(num, den string) string {
			n, ok1 := benchValue(r.quantity, num)
			d, ok2 := benchValue(r.quantity, den)
			if !ok1 || !ok2 || d == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", n/d)
		}
		before := "-"
		if beforeName(r.num) != r.num {
			// walkeeper against walkeeper (scaling): the baseline's own
			// ratio.
			before = cell(beforeName(r.num), beforeName(r.den))
		}
		goal := "-"
		if r.goal > 0 {
			goal = fmt.Sprintf("≤%.2f", r.goal)
			if r.atLeast {
				goal = fmt.Sprintf("≥%.2f", r.goal)
			}
		}
		fmt.Fprintf(w, "%-60s %8s %8s %8s\n", r.quantity+": "+r.num+" / "+r.den, cell(r.num, r.den), before, goal)
	}
	// Issue 13's memory bound: the largest peak RSS of any walkeeper run
	// of each command.
	fmt.Fprintf(w, "\n%-60s %8s %8s %8s\n", "largest peak RSS (MB)", "after", "before", "goal")
	for _, cmd := range []string{"stream", "backup", "restore"} {
		worst := func(before bool) (string, string) {
			v, tool := -1.0, ""
			for _, k := range benchTable.rows {
				q, t, _ := strings.Cut(k, "\x00")
				if q != cmd+" peak-RSS-MB" || !strings.HasPrefix(t, "walkeeper") || strings.HasPrefix(t, "walkeeper-before") != before {
					continue
				}
				if x := benchTable.value[k]; x > v {
					v, tool = x, t
				}
			}
			if tool == "" {
				return "-", ""
			}
			return fmt.Sprintf("%.0f", v), tool
		}
		after, tool := worst(false)
		before, _ := worst(true)
		fmt.Fprintf(w, "%-60s %8s %8s %8s\n", cmd+" ("+tool+")", after, before, "≤150")
	}
}

// beforeName is the baseline binary's name for one of the current one's
// tool names: walkeeper-zstd → walkeeper-before-zstd.
func beforeName(tool string) string {
	if len(tool) > len("walkeeper") && tool[:len("walkeeper")] == "walkeeper" {
		return "walkeeper-before" + tool[len("walkeeper"):]
	}
	return tool
}

// benchBinaries builds the walkeeper under test into dir and returns it
// with the baseline binary (WALKEEPER_BENCH_BASELINE, "" when unset).
func benchBinaries(b *testing.B, dir string) (current, baseline string) {
	b.Helper()
	current = filepath.Join(dir, "walkeeper")
	if out, err := exec.Command("go", "build", "-o", current, "../cmd/walkeeper").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	if p := os.Getenv("WALKEEPER_BENCH_BASELINE"); p != "" {
		if _, err := os.Stat(p); err != nil {
			b.Fatalf("WALKEEPER_BENCH_BASELINE: %v", err)
		}
		baseline = filepath.Join(dir, "walkeeper-before")
		if out, err := exec.Command("cp", p, baseline).CombinedOutput(); err != nil {
			b.Fatalf("copy baseline: %v %s", err, out)
		}
	}
	return current, baseline
}
