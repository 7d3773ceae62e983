package monitor

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/walkeeper/walkeeper/storage"
)

// Gauge is one sample of a node-exporter textfile: a metric without labels.
type Gauge struct {
	Name  string
	Help  string
	Value float64
}

var metricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

// WriteTextfile writes gauges in the Prometheus text format to path so that
// node-exporter's textfile collector (which reads DIR/*.prom) never sees a
// half-written file: the content goes to a temporary file in the same
// directory whose name does not end in .prom, is synced, made readable to
// all (node-exporter runs as another user) and renamed over path; then the
// directory is synced.
func WriteTextfile(path string, gauges []Gauge) error {
	var b strings.Builder
	for _, g := range gauges {
		if !metricName.MatchString(g.Name) {
			return fmt.Errorf("textfile %s: invalid metric name %q", path, g.Name)
		}
		help := strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(g.Help)
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s %s\n", g.Name, help, g.Name, g.Name, formatValue(g.Value))
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write metrics file: %w (does the directory exist and is it writable?)", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.WriteString(b.String()); err != nil {
		return fmt.Errorf("write metrics file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("write metrics file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write metrics file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write metrics file %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write metrics file: %w", err)
	}
	ok = true
	storage.SyncDir(dir) // best effort: the file is complete either way
	return nil
}

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// ReadTextfile returns the label-less samples of a Prometheus text file by
// metric name. A missing file is an empty result, not an error; lines it
// does not understand (labels, comments) are skipped.
func ReadTextfile(path string) (map[string]float64, error) {
	out := map[string]float64{}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") || !metricName.MatchString(fields[0]) {
			continue
		}
		v, err := strconv.ParseFloat(fields[1], 64)
		if err != nil {
			continue
		}
		out[fields[0]] = v
	}
	return out, sc.Err()
}

// Run is the outcome of one run of a command started from cron or a
// systemd timer (backup, delete, verify), for RecordRun.
type Run struct {
	Command string    // "backup"; dashes become underscores in metric names
	Start   time.Time // when the run began
	End     time.Time // when it ended
	Bytes   int64     // size of what it produced or processed (backup: stored bytes)
	OK      bool      // it succeeded
	// Extra gauges of the command (a drill's restore and recovery times),
	// written after the common ones.
	Extra []Gauge
}

// RunMetricNames lists the metrics RecordRun writes for command.
func RunMetricNames(command string) []string {
	p := runMetricPrefix(command)
	return []string{p + "last_run_timestamp_seconds", p + "duration_seconds", p + "size_bytes",
		p + "success", p + "last_success_timestamp_seconds"}
}

func runMetricPrefix(command string) string {
	return "walkeeper_" + strings.ReplaceAll(command, "-", "_") + "_"
}

// RecordRun writes the outcome of run as a node-exporter textfile at path
// (atomically, see WriteTextfile):
//
//	walkeeper_<command>_last_run_timestamp_seconds      end of this run (unix time)
//	walkeeper_<command>_duration_seconds                how long it took
//	walkeeper_<command>_size_bytes                      run.Bytes
//	walkeeper_<command>_success                         1 or 0
//	walkeeper_<command>_last_success_timestamp_seconds  end of the newest successful run
//
// A failed run keeps the last success timestamp of the file it replaces (0
// when there was none), so "time() - last_success > 26h" alerts whether
// the runs fail or stop happening.
func RecordRun(path string, run Run) error {
	p := runMetricPrefix(run.Command)
	end := float64(run.End.UnixNano()) / 1e9
	lastSuccess := end
	success := 1.0
	if !run.OK {
		success = 0
		// An unreadable old file counts as no success recorded: the failure
		// must still be written.
		old, _ := ReadTextfile(path)
		lastSuccess = old[p+"last_success_timestamp_seconds"]
	}
	names := RunMetricNames(run.Command)
	return WriteTextfile(path, append([]Gauge{
		{names[0], "Unix time the last walkeeper " + run.Command + " run ended.", end},
		{names[1], "Duration of the last walkeeper " + run.Command + " run in seconds.", run.End.Sub(run.Start).Seconds()},
		{names[2], "Bytes the last walkeeper " + run.Command + " run produced or processed.", float64(run.Bytes)},
		{names[3], "1 if the last walkeeper " + run.Command + " run succeeded, else 0.", success},
		{names[4], "Unix time the last successful walkeeper " + run.Command + " run ended (0: none recorded).", lastSuccess},
	}, run.Extra...))
}
