package archive

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/walkeeper/walkeeper/storage"
)

// This file is the repository side of PostgreSQL's archive_command:
//
//	archive_command = '/usr/local/bin/walkeeper wal-push --repo ... %p'
//
// PostgreSQL runs it in the data directory with %p a path relative to it
// (pg_wal/000000010000000000000003) and removes or recycles the file only
// after exit status 0, so success must mean "durably in the repository".
// It retries a failing command forever, so a refusal must say clearly why.
//
// Decisions (docs/wal-fetch.md):
//   - The repository must have walkeeper.json. wal-push has no server
//     connection, so it cannot create a trustworthy identity itself; `walkeeper
//     backup` or `walkeeper stream` writes it. A segment's first page header
//     carries the system identifier and segment size, which wal-push checks
//     against walkeeper.json, so another cluster's WAL is refused; its page
//     magic must be that of the repository's PostgreSQL major (when
//     walkeeper knows that major's magic: see WALPageMagic).
//   - A file already stored with the same content (whatever codec) is
//     success: PostgreSQL re-runs archive_command after a crash for files it
//     already archived. Different content is refused and never overwritten —
//     with one exception: a stored .partial that is a proper prefix of the
//     pushed .partial is replaced by it (a longer version of the same WAL, as
//     `walkeeper stream` itself does).

// Pushed describes what PushWAL did.
type Pushed struct {
	// Name is the file's base name, the WAL file name.
	Name string
	// Key is the stored object.
	Key string
	// Size is the file's size.
	Size int64
	// AlreadyStored: the repository had the same content; nothing written.
	AlreadyStored bool
	// Replaced: a stored .partial was a prefix of the file and was replaced.
	Replaced bool
	// Duration of the upload.
	Duration time.Duration
}

// Offsets in the long page header at the start of every WAL segment
// (native byte order, as PostgreSQL writes it).
const (
	xlpInfoOffset      = 2  // uint16 flag bits
	xlpPageAddrOffset  = 8  // uint64 LSN of the page
	xlpSysIDOffset     = 24 // uint64 system identifier
	xlpSegSizeOffset   = 32 // uint32 wal_segment_size
	xlpLongHeaderSize  = 40
	xlpLongHeaderFlag  = 0x0002
	maxSmallWALFileLen = 16 << 20 // history and backup history files are small text files
)

// PushWAL stores the file at path (relative to the current directory, which
// for archive_command is the data directory) in the repository under its
// base name, which must be a WAL segment, a .partial segment, a timeline
// history file or a backup history file name. It returns once the object is
// durable. See the decisions above.
func PushWAL(ctx context.Context, repo *storage.Repository, path string) (Pushed, error) {
	name := filepath.Base(path)
	res := Pushed{Name: name}
	kind, err := CheckFileName(name)
	if err == nil && kind == Other {
		err = fmt.Errorf("%w %q: wal-push stores WAL segments, .partial segments, timeline history files and backup history files",
			ErrInvalidName, name)
	}
	if err != nil {
		return res, err
	}
	cfg, err := repo.Config(ctx)
	if errors.Is(err, storage.ErrNotFound) {
		return res, fmt.Errorf("repository %s has no %s, so it is not known which cluster it belongs to: "+
			"run 'walkeeper backup' or 'walkeeper stream' for this cluster once, then archiving can start", repo, storage.ConfigKey)
	}
	if err != nil {
		return res, err
	}
	f, err := os.Open(path)
	if err != nil {
		return res, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return res, err
	}
	if !st.Mode().IsRegular() {
		return res, fmt.Errorf("%s is not a regular file", path)
	}
	res.Size = st.Size()
	if err := checkWALFile(f, name, kind, st.Size(), cfg); err != nil {
		return res, err
	}

	base := LayoutFor(cfg.FormatVersion).Key(name)
	existing, err := Find(ctx, repo, name)
	switch {
	case err == nil:
		match, err := repo.CompareContent(ctx, existing.Key, io.NewSectionReader(f, 0, st.Size()))
		if errors.Is(err, storage.ErrCorrupt) {
			return res, fmt.Errorf("%w; it cannot be compared with %s: check the repository (remove the damaged object to let wal-push store the file again)",
				err, path)
		}
		if err != nil {
			return res, err
		}
		if match == storage.Same {
			res.Key, res.AlreadyStored = existing.Key, true
			return res, nil
		}
		res.Replaced = kind == Partial && match == storage.StoredIsPrefix
		if !res.Replaced {
			return res, fmt.Errorf("%w: %s is already in repository %s with different content: refusing to overwrite it "+
				"(is another cluster, or a restored copy of this one, archiving into the same repository?)",
				storage.ErrExists, name, repo)
		}
	case !errors.Is(err, storage.ErrNotFound):
		return res, err
	}

	start := time.Now()
	w, err := repo.Create(ctx, base)
	if err != nil {
		return res, err
	}
	n, err := io.CopyBuffer(w, io.NewSectionReader(f, 0, st.Size()), make([]byte, 1<<20))
	if err == nil && n != st.Size() {
		err = fmt.Errorf("read %s: %d bytes, expected %d", path, n, st.Size())
	}
	if err != nil {
		w.Abort()
		return res, err
	}
	if _, err := w.Close(); err != nil {
		return res, err
	}
	res.Key = base + repo.Codec().Ext()
	res.Duration = time.Since(start)
	if res.Replaced && existing.Key != res.Key {
		// The old version was written with another codec.
		if err := repo.Backend().Delete(ctx, existing.Key); err != nil {
			return res, err
		}
	}
	if kind == Segment {
		// The complete segment supersedes its partials, as in `stream`;
		// a leftover partial is harmless (wal-fetch prefers the segment).
		_ = RemovePartials(ctx, repo, name)
	}
	return res, nil
}

// checkWALFile checks a file against the repository's identity before it
// is stored: segments must be one segment long and their first page header
// must name this cluster, this segment size and this segment's position.
func checkWALFile(f *os.File, name string, kind Kind, size int64, cfg *storage.Config) error {
	segSize := int64(cfg.WALSegmentSize)
	switch kind {
	case History, BackupLabel:
		if size > maxSmallWALFileLen {
			return fmt.Errorf("%s has %d bytes: too large for a history file", name, size)
		}
		return nil
	case Segment:
		if segSize > 0 && size != segSize {
			return fmt.Errorf("%s has %d bytes, but this cluster's WAL segments have %d (repository %s): not a complete segment",
				name, size, segSize, storage.ConfigKey)
		}
	case Partial:
		if segSize > 0 && size > segSize {
			return fmt.Errorf("%s has %d bytes, more than a WAL segment (%d)", name, size, segSize)
		}
		if size < xlpLongHeaderSize {
			return nil // too short to hold the page header
		}
	}
	head := make([]byte, xlpLongHeaderSize)
	if _, err := f.ReadAt(head, 0); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	seg := name[:24]
	info := binary.NativeEndian.Uint16(head[xlpInfoOffset:])
	if info&xlpLongHeaderFlag == 0 {
		return fmt.Errorf("%s does not start with a WAL segment header: not a WAL segment", name)
	}
	var problems []string
	if want, known := WALPageMagic(cfg.PGMajorVersion); known {
		if magic := PageMagic(head); magic != want {
			if major, ok := MajorOfWALPageMagic(magic); ok {
				problems = append(problems, fmt.Sprintf("WAL of PostgreSQL %d (page magic 0x%04X), repository has PostgreSQL %d", major, magic, cfg.PGMajorVersion))
			} else {
				problems = append(problems, fmt.Sprintf("page magic 0x%04X, PostgreSQL %d writes 0x%04X", magic, cfg.PGMajorVersion, want))
			}
		}
	}
	sysid := strconv.FormatUint(binary.NativeEndian.Uint64(head[xlpSysIDOffset:]), 10)
	if cfg.SystemIdentifier != "" && sysid != cfg.SystemIdentifier {
		problems = append(problems, fmt.Sprintf("system identifier %s, repository has %s", sysid, cfg.SystemIdentifier))
	}
	fileSegSize := int64(binary.NativeEndian.Uint32(head[xlpSegSizeOffset:]))
	if segSize > 0 && fileSegSize != segSize {
		problems = append(problems, fmt.Sprintf("wal_segment_size %d, repository has %d", fileSegSize, segSize))
	}
	if len(problems) > 0 {
		return storage.Permanent(fmt.Errorf("%w: %s is WAL of another cluster (%s): archive it into that cluster's repository",
			storage.ErrWrongCluster, name, strings.Join(problems, "; ")))
	}
	n, err := ParseName(seg, uint64(fileSegSize))
	if err != nil {
		return err
	}
	if addr := binary.NativeEndian.Uint64(head[xlpPageAddrOffset:]); addr != n.Seg*uint64(fileSegSize) {
		return fmt.Errorf("%s starts with the page at %X/%X, not at the start of segment %s: a renamed or damaged file",
			name, addr>>32, uint32(addr), seg)
	}
	return nil
}
