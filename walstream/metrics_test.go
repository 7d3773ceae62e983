package walstream

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
)

func TestLagClock(t *testing.T) {
	var l lagClock
	t0 := time.Unix(1000, 0)
	l.received(100, t0)
	l.received(200, t0.Add(50*time.Millisecond)) // same sample
	l.received(300, t0.Add(time.Second))
	l.received(400, t0.Add(2*time.Second))
	if got := l.oldest.Load(); got != t0.UnixNano() {
		t.Fatalf("oldest = %v, want t0", got)
	}
	l.stored(150) // not past the first sample's end (200)
	if got := l.oldest.Load(); got != t0.UnixNano() {
		t.Errorf("after a partial store: oldest moved")
	}
	l.stored(300)
	if got := l.oldest.Load(); got != t0.Add(2*time.Second).UnixNano() {
		t.Errorf("after storing 300: oldest = %v, want t0+2s", time.Unix(0, got))
	}
	l.stored(400)
	if l.oldest.Load() != 0 || len(l.samples) != 0 {
		t.Errorf("all stored: oldest %d, samples %v", l.oldest.Load(), l.samples)
	}
	l.received(500, t0)
	l.reset()
	if l.oldest.Load() != 0 {
		t.Error("reset kept the oldest time")
	}
}

// TestMetricsCollect reads the exported values from the same atomics the
// receiver and uploader keep.
func TestMetricsCollect(t *testing.T) {
	m := NewMetrics("wk")
	if v := gathered(t, m)["up"]; v != 0 {
		t.Errorf("up before Run = %v", v)
	}
	s := &streamer{up: newUploader(nil, slog.Default(), 3)}
	m.s.Store(s)
	s.connected.Store(true)
	s.tliNow.Store(2)
	s.sysID.Store("7300000000000000001")
	s.receivedNow.Store(5 << 24)
	s.serverEnd.Store(6 << 24)
	s.up.flushed.Store(4 << 24)
	s.up.segmentEnd.Store(3 << 24)
	s.up.stats.SegmentsStored.Add(7)
	s.up.stats.UploadErrors.Add(2)
	s.up.stats.UploadRetries.Add(1)
	s.up.q <- job{kind: jobBarrier}
	s.lag.received(5<<24, time.Now().Add(-3*time.Second))

	got := gathered(t, m)
	want := map[string]float64{
		"up": 1, "timeline": 2, "received_lsn_bytes": 5 << 24, "flushed_lsn_bytes": 4 << 24,
		"stored_lsn_bytes": 3 << 24, "server_wal_end_lsn_bytes": 6 << 24, "lag_bytes": 2 << 24,
		"segments_stored_total": 7, "upload_errors_total": 2, "upload_retries_total": 1,
		"queue_depth": 1, "queue_capacity": 3,
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
	if lag := got["lag_seconds"]; lag < 3 {
		t.Errorf("lag_seconds = %v, want at least 3", lag)
	}
	if got["go_goroutines"] == 0 {
		t.Error("no go_goroutines: the Go collector is missing")
	}
	if !slices.Contains(MetricNames(), "walkeeper_stream_lag_bytes") {
		t.Errorf("MetricNames = %v", MetricNames())
	}
	if got["storage_full"] != 0 || got["storage_failing_seconds"] != 0 {
		t.Errorf("storing works: storage_full %v, storage_failing_seconds %v", got["storage_full"], got["storage_failing_seconds"])
	}

	// A full repository: the uploader's failure shows, and goes away.
	s.up.repo = storage.NewRepository(storage.NewMemory(), storage.CodecZstd)
	s.up.failed(storage.Permanent(fmt.Errorf("write wal/x: %w", syscall.ENOSPC)), time.Second)
	s.up.failingSince.Store(time.Now().Add(-time.Minute).UnixNano())
	got = gathered(t, m)
	if got["storage_full"] != 1 || got["storage_failing_seconds"] < 60 {
		t.Errorf("full repository: storage_full %v, storage_failing_seconds %v", got["storage_full"], got["storage_failing_seconds"])
	}
	s.up.recovered()
	got = gathered(t, m)
	if got["storage_full"] != 0 || got["storage_failing_seconds"] != 0 {
		t.Errorf("recovered: storage_full %v, storage_failing_seconds %v", got["storage_full"], got["storage_failing_seconds"])
	}
}

// TestStorageErrorVerdict: what the stream waits out and what ends it.
func TestStorageErrorVerdict(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		wait bool // waitOut
		quit bool // giveUp
	}{
		{"no space", storage.Permanent(fmt.Errorf("write: %w", syscall.ENOSPC)), true, false},
		{"quota", storage.Permanent(fmt.Errorf("write: %w", syscall.EDQUOT)), true, false},
		{"read-only", storage.Permanent(fmt.Errorf("create: %w", syscall.EROFS)), true, false},
		{"not found", fmt.Errorf("stat wal/x.partial: %w", storage.ErrNotFound), true, false},
		{"missing bucket", storage.Permanent(errors.New("bucket does not exist")), false, true},
		{"permission", storage.Permanent(fmt.Errorf("open: %w", fs.ErrPermission)), false, true},
		{"corrupt", fmt.Errorf("read: %w", storage.ErrCorrupt), false, true},
		{"timeout", fmt.Errorf("upload: %w", context.DeadlineExceeded), false, false},
	} {
		if w, q := waitOut(tc.err), giveUp(tc.err); w != tc.wait || q != tc.quit {
			t.Errorf("%s: waitOut %v, giveUp %v; want %v, %v", tc.name, w, q, tc.wait, tc.quit)
		}
	}
}

// gathered returns the value of every label-less metric, keyed by name
// without the walkeeper_stream_ prefix.
func gathered(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, metric := range f.GetMetric() {
			v := metric.GetGauge().GetValue() + metric.GetCounter().GetValue() + metric.GetUntyped().GetValue()
			out[strings.TrimPrefix(f.GetName(), MetricsPrefix)] = v
		}
	}
	return out
}
