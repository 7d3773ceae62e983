package backuptest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// SegSize is the segment size the fixtures use (PostgreSQL's default).
const SegSize = 16 << 20

// Init writes walkeeper.json for a fake cluster.
func Init(t testing.TB, repo *storage.Repository) {
	t.Helper()
	if _, err := repo.Init(context.Background(), storage.Config{SystemIdentifier: "7000000000000000001", PGMajorVersion: 15, WALSegmentSize: SegSize}); err != nil {
		t.Fatal(err)
	}
}

// Put stores content as the framed object base (a WALKey or BackupKey) and
// returns its stored key and envelope.
func Put(t testing.TB, repo *storage.Repository, base string, content []byte) (string, storage.Meta) {
	t.Helper()
	w, err := repo.Create(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(content)
	m, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return base + repo.Codec().Ext(), m
}

// WAL stores the WAL file name (segment, .partial, .history or .backup).
// Segments get a small body: nothing here reads WAL records.
func WAL(t testing.TB, repo *storage.Repository, name, content string) string {
	t.Helper()
	if content == "" {
		content = "wal " + name
	}
	base, err := archive.Key(context.Background(), repo, name)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := Put(t, repo, base, []byte(content))
	return key
}

// Segments stores segments first..last of timeline tli.
func Segments(t testing.TB, repo *storage.Repository, tli uint32, first, last uint64) {
	t.Helper()
	for s := first; s <= last; s++ {
		WAL(t, repo, archive.SegmentName(tli, s, SegSize), "")
	}
}

// Backup describes a fabricated backup.
type Backup struct {
	ID        string
	Start     time.Time
	Timeline  uint32
	StartLSN  string // e.g. "0/5000028"
	StopLSN   string // default: StartLSN's segment + 0x100000
	WAL       string // default stream
	Complete  bool
	ExtraName string // optional second archive, e.g. "16384.tar"
}

// Write stores the backup: started.json, base.tar, backup_manifest and,
// when Complete, backup.json listing them.
func (b Backup) Write(t testing.TB, repo *storage.Repository) *basebackup.Meta {
	t.Helper()
	ctx := context.Background()
	if err := repo.WriteJSON(ctx, storage.BackupKey(b.ID, "started.json"), map[string]any{"id": b.ID, "start_time": b.Start}); err != nil {
		t.Fatal(err)
	}
	m := &basebackup.Meta{FormatVersion: storage.FormatVersion, ID: b.ID, Label: "test " + b.ID, StartTime: b.Start,
		StopTime: b.Start.Add(time.Minute), StartLSN: b.StartLSN, StopLSN: b.StopLSN, Timeline: b.Timeline,
		StopTimeline: b.Timeline, SystemIdentifier: "7000000000000000001", ServerVersion: "15.0",
		WALSegmentSize: SegSize, WAL: b.WAL, Compression: repo.Codec().String(), ChecksumFailures: []basebackup.ChecksumFailure{}}
	if m.WAL == "" {
		m.WAL = basebackup.WALStream
	}
	if m.StopLSN == "" {
		var hi, lo uint32
		fmt.Sscanf(b.StartLSN, "%X/%X", &hi, &lo)
		m.StopLSN = fmt.Sprintf("%X/%X", hi, lo+0x100000)
	}
	manifest := `{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2025-01-01 00:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "00000000" },
{ "Path": "global/pg_control", "Size": 8192, "Last-Modified": "2025-01-01 00:00:00 GMT" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "0000" }
`
	names := []string{"base.tar", "backup_manifest"}
	if b.ExtraName != "" {
		names = append(names, b.ExtraName)
	}
	for _, name := range names {
		content := []byte(strings.Repeat("archive "+b.ID+" "+name+"\n", 200))
		if name == "backup_manifest" {
			content = []byte(manifest)
		}
		key, em := Put(t, repo, storage.BackupKey(b.ID, name), content)
		m.Objects = append(m.Objects, basebackup.Object{Name: name, Key: key, Size: em.Size, StoredSize: em.StoredSize, SHA256: em.Hex()})
		m.Size += em.Size
		m.StoredSize += em.StoredSize
	}
	if b.Complete {
		if err := repo.WriteJSON(ctx, storage.BackupMetaKey(b.ID), m); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// Keys lists every key of the repository except locks/.
func Keys(t testing.TB, repo *storage.Repository) []string {
	t.Helper()
	var out []string
	err := repo.Backend().List(context.Background(), "", func(o storage.ObjectInfo) error {
		if !strings.HasPrefix(o.Key, storage.LocksPrefix) {
			out = append(out, o.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// FlipByte damages the stored object key: one byte at offset off from its
// start (negative: from its end) is inverted, through the backend, so it
// works on any of them.
func FlipByte(t testing.TB, repo *storage.Repository, key string, off int) {
	t.Helper()
	ctx := context.Background()
	rc, err := repo.Backend().Get(ctx, key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += len(data)
	}
	data[off] ^= 0xFF
	if err := repo.Backend().Put(ctx, key, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

// Replace stores new content under the framed object key (as listed).
func Replace(t testing.TB, repo *storage.Repository, key, content string) {
	t.Helper()
	if err := repo.Backend().Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	base, _, _ := storage.SplitExt(key)
	Put(t, repo, base, []byte(content))
}

// TimelineHistory fabricates the standard scenario the retention and verify
// tests share: four complete backups, two on timeline 1 and two on timeline
// 2 after a switch at 0/8000100, where the first timeline 2 backup's ID
// sorts before every other ID although it started third; WAL 1..7 and
// 8.partial on timeline 1, 8..13 and 14.partial on timeline 2, the history
// file, a backup history file, and an old incomplete backup. It returns the
// backups' IDs in start order (A, B, C, D) and the incomplete one's.
func TimelineHistory(t testing.TB, repo *storage.Repository) (ids []string, incomplete string) {
	t.Helper()
	Init(t, repo)
	day := func(d int) time.Time { return time.Date(2025, 1, d, 0, 0, 0, 0, time.UTC) }
	backups := []Backup{
		{ID: "20250101T000000Z", Start: day(1), Timeline: 1, StartLSN: "0/2000028", Complete: true},
		{ID: "20250102T000000Z", Start: day(2), Timeline: 1, StartLSN: "0/5000028", Complete: true},
		{ID: "20241231T000000Z", Start: day(3), Timeline: 2, StartLSN: "0/A000028", Complete: true},
		{ID: "20250104T000000Z", Start: day(4), Timeline: 2, StartLSN: "0/C000028", Complete: true},
	}
	for _, b := range backups {
		b.Write(t, repo)
		ids = append(ids, b.ID)
	}
	incomplete = "20241201T000000Z"
	Backup{ID: incomplete, Start: time.Date(2024, 12, 1, 0, 0, 0, 0, time.UTC), Timeline: 1, StartLSN: "0/1000028"}.Write(t, repo)
	Segments(t, repo, 1, 1, 7)
	WAL(t, repo, archive.SegmentName(1, 8, SegSize)+".partial", "")
	WAL(t, repo, "000000010000000000000002.00000028.backup", "START WAL LOCATION: 0/2000028")
	WAL(t, repo, archive.HistoryName(2), "1\t0/8000100\tno recovery target specified\n")
	Segments(t, repo, 2, 8, 13)
	WAL(t, repo, archive.SegmentName(2, 14, SegSize)+".partial", "")
	return ids, incomplete
}
