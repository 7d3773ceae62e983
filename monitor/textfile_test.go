package monitor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWriteTextfile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.prom")
	err := WriteTextfile(path, []Gauge{{"walkeeper_a", "A \\ help\nline", 1.5}, {"walkeeper_b", "B", 1e12}})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := "# HELP walkeeper_a A \\\\ help\\nline\n# TYPE walkeeper_a gauge\nwalkeeper_a 1.5\n" +
		"# HELP walkeeper_b B\n# TYPE walkeeper_b gauge\nwalkeeper_b 1e+12\n"
	if string(data) != want {
		t.Errorf("content:\n%s\nwant:\n%s", data, want)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644 (node-exporter runs as another user)", fi.Mode())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
	got, err := ReadTextfile(path)
	if err != nil || got["walkeeper_a"] != 1.5 || got["walkeeper_b"] != 1e12 {
		t.Errorf("ReadTextfile = %v, %v", got, err)
	}
}

// TestWriteTextfileNeverHalfWritten proves the old file stays whole when a
// write fails (here: an invalid name, checked before anything is written;
// and a directory that vanished, which fails creating the temporary file).
func TestWriteTextfileNeverHalfWritten(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.prom")
	if err := WriteTextfile(path, []Gauge{{"walkeeper_ok", "", 1}}); err != nil {
		t.Fatal(err)
	}
	if err := WriteTextfile(path, []Gauge{{"walkeeper_ok", "", 2}, {"bad name", "", 1}}); err == nil {
		t.Error("invalid metric name accepted")
	}
	if got, _ := ReadTextfile(path); got["walkeeper_ok"] != 1 {
		t.Errorf("old file damaged: %v", got)
	}
	if err := WriteTextfile(filepath.Join(dir, "missing", "x.prom"), nil); err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("missing directory: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestRecordRunKeepsLastSuccessOnFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "walkeeper_wal_push.prom")
	t0 := time.Unix(1_700_000_000, 0)
	if err := RecordRun(path, Run{Command: "wal-push", Start: t0, End: t0.Add(90 * time.Second), Bytes: 1234, OK: true}); err != nil {
		t.Fatal(err)
	}
	got, _ := ReadTextfile(path)
	names := RunMetricNames("wal-push")
	want := map[string]float64{names[0]: 1_700_000_090, names[1]: 90, names[2]: 1234, names[3]: 1, names[4]: 1_700_000_090}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("after success: %s = %v, want %v", k, got[k], v)
		}
	}
	t1 := t0.Add(24 * time.Hour)
	if err := RecordRun(path, Run{Command: "wal-push", Start: t1, End: t1.Add(time.Second), OK: false}); err != nil {
		t.Fatal(err)
	}
	got, _ = ReadTextfile(path)
	want = map[string]float64{names[0]: 1_700_086_401, names[1]: 1, names[2]: 0, names[3]: 0, names[4]: 1_700_000_090}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("after failure: %s = %v, want %v", k, got[k], v)
		}
	}
	// A failure with no earlier file records no success at all.
	fresh := filepath.Join(t.TempDir(), "walkeeper_verify.prom")
	if err := RecordRun(fresh, Run{Command: "verify", Start: t0, End: t0, OK: false}); err != nil {
		t.Fatal(err)
	}
	if got, _ := ReadTextfile(fresh); got["walkeeper_verify_last_success_timestamp_seconds"] != 0 || got["walkeeper_verify_success"] != 0 {
		t.Errorf("fresh failure: %v", got)
	}
}
