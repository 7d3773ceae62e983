package basebackup

import (
	"bytes"
	"context"
	"crypto/rand"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
)

// TestBackupIDRoundTrip: NewID and ParseID are a matched pair, IDs sort by
// start time, and the IDs of older repositories still parse.
func TestBackupIDRoundTrip(t *testing.T) {
	start := time.Date(2026, 11, 26, 1, 35, 0, 123_456_789, time.UTC)
	var ids []string
	for i := range 5 {
		at := start.Add(time.Duration(i) * time.Millisecond)
		id, err := NewID(at, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := ParseID(id)
		if !ok || !got.Equal(at.Truncate(time.Millisecond)) {
			t.Fatalf("ParseID(%q) = %v, %v; want %v", id, got, ok, at.Truncate(time.Millisecond))
		}
		if err := storage.ValidateKey(storage.BackupMetaKey(id)); err != nil {
			t.Fatalf("ID %q makes a bad key: %v", id, err)
		}
		ids = append(ids, id)
	}
	if !sort.StringsAreSorted(ids) {
		t.Errorf("IDs one millisecond apart do not sort by time: %v", ids)
	}
	if id, _ := NewID(start, bytes.NewReader([]byte{0x3f, 0x9a, 0x1c})); id != "20261126T013500.123Z-3f9a1c" {
		t.Errorf("NewID = %q", id)
	}
	if got, ok := ParseID("20261126T013500Z"); !ok || !got.Equal(time.Date(2026, 11, 26, 1, 35, 0, 0, time.UTC)) {
		t.Errorf("an ID of format 1 before this change: %v, %v", got, ok)
	}
	for _, bad := range []string{"", "nightly", "20261126T013500.123Z-xyz123", "20261126T013500.123Z-3f9a", "2026-11-26"} {
		if _, ok := ParseID(bad); ok {
			t.Errorf("ParseID(%q) accepted it", bad)
		}
	}
}

// TestBackupIDsDoNotCollide: two backups started in the same instant get
// different IDs, and even a forced collision (same clock, same random
// bytes) never lets the second write into the first one's directory.
func TestBackupIDsDoNotCollide(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 11, 26, 1, 35, 0, 0, time.UTC)
	clock := func() time.Time { return at }

	repo := storage.NewRepository(storage.NewMemory(), storage.CodecZstd)
	const n = 50
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := startBackup(ctx, repo, WALInclude, clock, rand.Reader)
			if err != nil {
				t.Error(err)
			}
			ids <- id
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("two backups started at the same instant both got ID %s", id)
		}
		seen[id] = true
	}

	zeros := func() *bytes.Reader { return bytes.NewReader(make([]byte, 64)) }
	first, err := startBackup(ctx, repo, WALInclude, clock, zeros())
	if err != nil {
		t.Fatal(err)
	}
	var before map[string]any
	if err := repo.ReadJSON(ctx, storage.BackupKey(first, startedName), &before); err != nil {
		t.Fatal(err)
	}
	_, err = startBackup(ctx, repo, WALStream, clock, zeros())
	if err == nil || !strings.Contains(err.Error(), "taken") {
		t.Fatalf("a backup whose every ID collides: %v, want an error", err)
	}
	var after map[string]any
	if err := repo.ReadJSON(ctx, storage.BackupKey(first, startedName), &after); err != nil || after["wal"] != before["wal"] {
		t.Fatalf("the colliding backup overwrote %s/started.json: %v, %v", first, after, err)
	}
}
