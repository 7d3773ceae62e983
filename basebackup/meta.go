package basebackup

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/walkeeper/walkeeper/storage"
)

// Object is one stored file of a backup.
type Object struct {
	// Name is the file as the server named it: base.tar, 16384.tar,
	// backup_manifest.
	Name string `json:"name"`
	// Key is the stored object's key.
	Key string `json:"key"`
	// Size is the uncompressed size; StoredSize what the repository holds.
	Size       int64 `json:"size"`
	StoredSize int64 `json:"stored_size"`
	// SHA256 is the checksum of the stored bytes (see storage.Meta).
	SHA256 string `json:"sha256"`
	// Archive is, for a chunk (archive_layout 2), the tablespace archive it
	// is part of (base.tar, 16384.tar); Files is the regular files in it.
	Archive string `json:"archive,omitempty"`
	Files   int    `json:"files,omitempty"`
}

// Archive layouts (backup.json archive_layout).
const (
	// LayoutSingle: one tar object per tablespace (backups written before
	// the field existed; archive_layout absent).
	LayoutSingle = 1
	// LayoutChunked: each tablespace's tar cut at entry boundaries into
	// chunks, each a complete tar and its own object, listed in order in
	// the tablespace's "chunks".
	LayoutChunked = 2
	// LayoutParts: chunked, and a file too large for a chunk of its own
	// is stored as parts, each in a chunk of its own (chunk.go). Written
	// only when a file was split.
	LayoutParts = 3
	// LayoutNewest is the newest layout this walkeeper reads.
	LayoutNewest = LayoutParts
)

// Meta is backup.json, written last: its presence marks the backup complete.
type Meta struct {
	FormatVersion int `json:"format_version"`
	// ArchiveLayout is how the tablespaces are stored (LayoutSingle when
	// absent, LayoutChunked).
	ArchiveLayout    int               `json:"archive_layout,omitempty"`
	ID               string            `json:"id"`
	Label            string            `json:"label"`
	StartTime        time.Time         `json:"start_time"`
	StopTime         time.Time         `json:"stop_time"`
	StartLSN         string            `json:"start_lsn"`
	StopLSN          string            `json:"stop_lsn"`
	Timeline         uint32            `json:"timeline"`
	StopTimeline     uint32            `json:"stop_timeline"`
	SystemIdentifier string            `json:"system_identifier"`
	ServerVersion    string            `json:"server_version"`
	WALSegmentSize   uint64            `json:"wal_segment_size"`
	FromStandby      bool              `json:"from_standby"`
	WAL              string            `json:"wal"` // "stream" or "include"
	Compression      string            `json:"compression"`
	Size             int64             `json:"size"`
	StoredSize       int64             `json:"stored_size"`
	Objects          []Object          `json:"objects"`
	Tablespaces      []Tablespace      `json:"tablespaces"`
	ChecksumFailures []ChecksumFailure `json:"checksum_failures"`
	WalkeeperVersion string            `json:"walkeeper_version,omitempty"`
	// Kind is KindFull or KindIncremental (absent: full, backups written
	// before incremental backups existed).
	Kind string `json:"kind,omitempty"`
	// Parent is, for an incremental backup, the backup whose manifest the
	// server compared against: its relation files hold only the blocks
	// changed since then.
	Parent string `json:"parent,omitempty"`
	// Chain is, for an incremental backup, every backup it is restored
	// with, oldest first: the full backup, the incrementals after it, and
	// Parent last.
	Chain []string `json:"chain,omitempty"`
}

// Info is what `list` shows of one backup, complete or not.
type Info struct {
	ID       string `json:"id"`
	Complete bool   `json:"complete"`
	// Meta is nil for an incomplete backup (no backup.json).
	Meta *Meta `json:"meta,omitempty"`
	// StoredSize is the total size of the backup's objects.
	StoredSize int64 `json:"stored_size"`
	Objects    int   `json:"objects"`
	// Damaged says why a stored backup.json could not be read (corrupt or
	// not JSON); such a backup counts as incomplete, so one damaged file
	// does not stop list, restore, delete or verify (which reports it).
	Damaged string `json:"damaged,omitempty"`
}

// StartTime is the backup's start: from backup.json, or parsed from the ID.
func (i Info) StartTime() time.Time {
	if i.Meta != nil {
		return i.Meta.StartTime
	}
	t, _ := ParseID(i.ID)
	return t
}

// Backup IDs are the UTC start time to the millisecond and six random hex
// digits, 20261126T013500.123Z-3f9a1c: they sort by start time (to the
// millisecond), and two backups started in the same millisecond still get
// different IDs. Repositories written before kept 20261126T013500Z, which
// ParseID still reads.
const (
	idFormat    = "20060102T150405.000Z"
	oldIDFormat = "20060102T150405Z"
	idRandom    = 3 // bytes, six hex digits
)

// NewID returns the ID of a backup started at t, with its random part read
// from rnd.
func NewID(t time.Time, rnd io.Reader) (string, error) {
	var b [idRandom]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", fmt.Errorf("backup ID: %w", err)
	}
	return t.UTC().Format(idFormat) + "-" + hex.EncodeToString(b[:]), nil
}

// ParseID returns the start time a backup ID names; ok is false for a
// name that is not a walkeeper backup ID.
func ParseID(id string) (t time.Time, ok bool) {
	if ts, suffix, found := strings.Cut(id, "-"); found {
		if len(suffix) != 2*idRandom {
			return time.Time{}, false
		}
		if _, err := hex.DecodeString(suffix); err != nil {
			return time.Time{}, false
		}
		t, err := time.Parse(idFormat, ts)
		return t, err == nil
	}
	t, err := time.Parse(oldIDFormat, id)
	return t, err == nil
}

// List returns every backup in the repository, oldest first by start time
// (not by name), complete or not.
func List(ctx context.Context, repo *storage.Repository) ([]Info, error) {
	byID := map[string]*Info{}
	err := repo.Backend().List(ctx, storage.BackupsPrefix, func(o storage.ObjectInfo) error {
		rest := strings.TrimPrefix(o.Key, storage.BackupsPrefix)
		id, name, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		info := byID[id]
		if info == nil {
			info = &Info{ID: id}
			byID[id] = info
		}
		info.StoredSize += o.Size
		info.Objects++
		if name == "backup.json" {
			info.Complete = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, info := range byID {
		if info.Complete {
			var m Meta
			if err := repo.ReadJSON(ctx, storage.BackupMetaKey(info.ID), &m); err != nil {
				switch {
				case errors.Is(err, storage.ErrCorrupt):
					info.Damaged = err.Error()
				case !errors.Is(err, storage.ErrNotFound):
					return nil, err
				}
				info.Complete = false
			} else {
				info.Meta = &m
			}
		}
		out = append(out, *info)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].StartTime(), out[j].StartTime()
		if !a.Equal(b) {
			return a.Before(b)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Layout is the backup's archive layout, LayoutSingle for backups written
// before backup.json recorded it.
func (m *Meta) Layout() int {
	if m.ArchiveLayout == 0 {
		return LayoutSingle
	}
	return m.ArchiveLayout
}

// Chunked reports whether the tablespaces are stored as chunks (layout 2
// and 3).
func (m *Meta) Chunked() bool { return m.Layout() >= LayoutChunked }

// CheckLayout refuses a layout newer than this walkeeper reads.
func (m *Meta) CheckLayout() error {
	if l := m.Layout(); l > LayoutNewest || l < LayoutSingle {
		return fmt.Errorf("backup %s has archive layout %d, which this walkeeper (layouts 1 to %d) cannot read: restore it with a newer walkeeper", m.ID, l, LayoutNewest)
	}
	return nil
}

// Files is the regular files of all chunks (0 for LayoutSingle, which does
// not count them).
func (m *Meta) Files() int64 {
	var n int64
	for _, o := range m.Objects {
		n += int64(o.Files)
	}
	return n
}
