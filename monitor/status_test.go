package monitor

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

const seg16 = 16 << 20

func TestPickSlot(t *testing.T) {
	now := time.Now()
	dead := storage.StreamStatus{Slot: "old", UpdatedAt: now.Add(-time.Hour)}
	live := storage.StreamStatus{Slot: "live", UpdatedAt: now}
	for _, tc := range []struct {
		flag         string
		streams      []storage.StreamStatus
		name, source string
	}{
		{"mine", []storage.StreamStatus{live}, "mine", "flag"},
		{"", []storage.StreamStatus{dead, live}, "live", "stream"},
		{"", []storage.StreamStatus{dead}, "old", "stream"},
		{"", nil, DefaultSlot, "default"},
	} {
		if name, source := pickSlot(tc.flag, tc.streams, now); name != tc.name || source != tc.source {
			t.Errorf("pickSlot(%q, %v) = %s, %s; want %s, %s", tc.flag, tc.streams, name, source, tc.name, tc.source)
		}
	}
}

func putObject(t *testing.T, repo *storage.Repository, base string, data []byte) {
	t.Helper()
	w, err := repo.Create(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCollectStatusRepository builds a repository by hand: a backup
// starting in segment 2, segments 2, 3 and 5, and a partial 6.
func TestCollectStatusRepository(t *testing.T) {
	ctx := context.Background()
	repo := storage.NewRepository(storage.NewMemory(), storage.CodecZstd)
	if _, err := repo.Init(ctx, storage.Config{SystemIdentifier: "42", PGMajorVersion: 15, WALSegmentSize: seg16}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"000000010000000000000002", "000000010000000000000003", "000000010000000000000005", "00000001.history"} {
		putObject(t, repo, archivetest.WALKey(name), []byte("segment"))
	}
	putObject(t, repo, archivetest.WALKey("000000010000000000000006.partial"), make([]byte, 1000))
	stop := time.Now().Add(-2 * time.Hour)
	meta := basebackup.Meta{ID: "20250101T000000Z", StartTime: stop.Add(-time.Minute), StopTime: stop,
		StartLSN: "0/2000028", StopLSN: "0/3000100", Timeline: 1, WAL: basebackup.WALStream}
	if err := repo.WriteJSON(ctx, storage.BackupMetaKey(meta.ID), meta); err != nil {
		t.Fatal(err)
	}
	putObject(t, repo, storage.BackupKey("20250102T000000Z", "base.tar"), []byte("unfinished"))

	rep, err := CollectStatus(ctx, StatusOptions{Repo: repo, MaxBackupAge: time.Hour, MaxWALAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Repository
	if r.BackupsComplete != 1 || r.BackupsIncomplete != 1 || r.NewestBackup == nil || r.NewestBackup.ID != meta.ID {
		t.Errorf("backups: %+v", r)
	}
	if r.WALSegments != 3 || r.WALPartials != 1 {
		t.Errorf("WAL counts %d, %d", r.WALSegments, r.WALPartials)
	}
	if w := r.NewestWAL; w == nil || w.Name != "000000010000000000000006.partial" || !w.Partial || w.EndLSN != "0/60003E8" {
		t.Errorf("newest WAL %+v, want the partial ending at 0/60003E8", r.NewestWAL)
	}
	want := []WALGap{{"000000010000000000000004", "000000010000000000000004", 1}}
	if r.WALGapsFrom != "000000010000000000000002" || !reflect.DeepEqual(r.WALGaps, want) {
		t.Errorf("gaps from %s: %v, want %v", r.WALGapsFrom, r.WALGaps, want)
	}
	if len(rep.Problems) != 2 || !strings.Contains(rep.Problems[0], "--max-backup-age") || !strings.Contains(rep.Problems[1], "WAL gap") {
		t.Errorf("problems %q", rep.Problems)
	}

	// Later: the WAL too is stale, and the partial has become a segment.
	putObject(t, repo, archivetest.WALKey("000000010000000000000004"), []byte("segment"))
	putObject(t, repo, archivetest.WALKey("000000010000000000000006"), []byte("segment"))
	repo.Backend().Delete(ctx, archivetest.WALKey("000000010000000000000006.partial")+repo.Codec().Ext())
	rep, err = CollectStatus(ctx, StatusOptions{Repo: repo, MaxWALAge: time.Hour, Now: time.Now().Add(3 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if w := rep.Repository.NewestWAL; w == nil || w.Name != "000000010000000000000006" || w.EndLSN != "0/7000000" {
		t.Errorf("newest WAL %+v", w)
	}
	if len(rep.Repository.WALGaps) != 0 || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "--max-wal-age") {
		t.Errorf("gaps %v, problems %q", rep.Repository.WALGaps, rep.Problems)
	}
	var text strings.Builder
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1 complete, 1 incomplete", "none since 000000010000000000000002", "1 problem(s)"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
}

// TestSafeWALSizeText: a null safe_wal_size is "unlimited" only when
// max_slot_wal_keep_size is -1; a lost slot has none left.
func TestSafeWALSizeText(t *testing.T) {
	n := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		sl     SlotStatus
		reason string
		want   string
	}{
		{SlotStatus{RestartLSN: "0/3000000", WALStatus: "reserved", MaxSlotWALKeepSize: n(-1)}, SafeWALSizeUnlimited, "unlimited (max_slot_wal_keep_size = -1)"},
		{SlotStatus{WALStatus: "lost", MaxSlotWALKeepSize: n(64 << 20)}, SafeWALSizeLost, "none left (slot lost; max_slot_wal_keep_size = 64.0MB)"},
		{SlotStatus{WALStatus: "lost", MaxSlotWALKeepSize: n(-1)}, SafeWALSizeLost, "none left (slot lost; max_slot_wal_keep_size = -1)"},
		{SlotStatus{MaxSlotWALKeepSize: n(64 << 20)}, SafeWALSizeNoWAL, "unknown: the slot reserves no WAL (max_slot_wal_keep_size = 64.0MB)"},
		{SlotStatus{RestartLSN: "0/3000000", WALStatus: "reserved", SafeWALSize: n(48 << 20), MaxSlotWALKeepSize: n(64 << 20)}, "", "48.0MB (max_slot_wal_keep_size = 64.0MB)"},
	} {
		sl := tc.sl
		if sl.SafeWALSize == nil {
			sl.SafeWALSizeReason = safeWALSizeReason(&sl)
		}
		if sl.SafeWALSizeReason != tc.reason || sl.safeWALSizeText() != tc.want {
			t.Errorf("%+v: reason %q, text %q; want %q, %q", tc.sl, sl.SafeWALSizeReason, sl.safeWALSizeText(), tc.reason, tc.want)
		}
	}
}

// TestStatusShowsStreamStorageError: a live stream whose heartbeat carries
// a storage error (a full repository) is a problem, and the text says what.
func TestStatusShowsStreamStorageError(t *testing.T) {
	ctx := context.Background()
	repo := storage.NewRepository(storage.NewMemory(), storage.CodecZstd)
	now := time.Now()
	since := now.Add(-5 * time.Minute).UTC()
	hb := storage.StreamStatus{Slot: "wk", Host: "db1", PID: 7, Flushed: "0/3000000", UpdatedAt: now.UTC(),
		StorageError:      "the repository /srv/repo is full (no space left on device): free space or make it writable; the slot holds the WAL meanwhile",
		StorageErrorSince: &since}
	if err := repo.WriteJSON(ctx, storage.StreamStatusKey("wk"), hb); err != nil {
		t.Fatal(err)
	}
	rep, err := CollectStatus(ctx, StatusOptions{Repo: repo, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Streams) != 1 || rep.Streams[0].StorageError != hb.StorageError {
		t.Fatalf("streams %+v", rep.Streams)
	}
	if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "stream wk cannot store WAL for 5m0s") ||
		!strings.Contains(rep.Problems[0], "is full") {
		t.Errorf("problems %q", rep.Problems)
	}
	var text strings.Builder
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "storage error") || !strings.Contains(text.String(), "is full") {
		t.Errorf("text report lacks the storage error:\n%s", text.String())
	}
}
