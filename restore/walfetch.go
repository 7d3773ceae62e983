package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/walkeeper/walkeeper/storage"
)

// This file is the repository side of PostgreSQL's restore_command:
//
//	restore_command = '/usr/local/bin/walkeeper wal-fetch --repo ... %f %p'
//
// PostgreSQL runs it in the data directory and asks for one file at a time:
// a WAL segment ("000000010000000000000003"), a timeline history file
// ("00000002.history", often for timelines that do not exist, to find the
// newest one), occasionally something else. It expects exit status 0 with
// the file written to %p, or a non-zero status when the file is not there.
// The design is in docs/wal-fetch.md.
//
// # The .partial rule
//
// `walkeeper stream` stores the segment it is still receiving as
// "NAME.partial" (the bytes received so far, not padded) about every second,
// and removes it once the complete segment NAME is stored. When PostgreSQL
// asks for segment NAME and only NAME.partial is stored, FetchWAL serves the
// partial zero-padded to the segment size — but only when NAME.partial is the
// newest WAL of its timeline in the repository: no complete segment and no
// partial with a higher segment number exists on the same timeline. Then the
// partial holds the last WAL the repository has, and recovery replays it up
// to the zeros, where it stops as at the end of WAL: a replica seeded from
// the repository gets to within a second of the primary before it switches
// to streaming, and a point-in-time restore can reach the last transaction
// the stream stored. If a later segment of the timeline exists, the partial
// is a leftover and NAME is reported as not found (there is a hole; serving
// a short segment there would end recovery in the middle of the archive).
// The last segment of a timeline that ended with a promotion is kept as
// .partial and has no later segment on its timeline, so it is served: it is
// all the WAL that timeline has.

// PrefetchDirName is the prefetch spool's directory name, created next to
// restore_command's destination (so inside pg_wal). PostgreSQL ignores it:
// it only looks at WAL file names there.
const PrefetchDirName = ".walkeeper-prefetch"

// PrefetchDir returns the prefetch spool used for fetches into dest.
func PrefetchDir(dest string) string {
	return filepath.Join(filepath.Dir(dest), PrefetchDirName)
}

// ErrInvalidWALName marks a NAME that is not a plain file name (a path, a
// dot file, characters outside [A-Za-z0-9._-]) or, for wal-push, not a WAL
// file name at all.
var ErrInvalidWALName = errors.New("invalid WAL file name")

// walKind is what a requested or pushed file name is.
type walKind int

const (
	walUnknown     walKind = iota // a plain file name of no WAL kind
	walSegment                    // 000000010000000000000003
	walPartial                    // 000000010000000000000003.partial
	walHistory                    // 00000002.history
	walBackupLabel                // 000000010000000000000003.00000028.backup
)

// classifyWALName tells what name is; it fails for names that are not plain
// file names.
func classifyWALName(name string) (walKind, error) {
	if name == "" || name == "." || name == ".." || strings.HasPrefix(name, ".") || len(name) > 255 {
		return 0, fmt.Errorf("%w %q: want a WAL file name such as 000000010000000000000003", ErrInvalidWALName, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return 0, fmt.Errorf("%w %q: want a WAL file name such as 000000010000000000000003", ErrInvalidWALName, name)
		}
	}
	switch {
	case storage.IsSegmentName(name):
		return walSegment, nil
	case storage.IsHistoryName(name):
		return walHistory, nil
	case strings.HasSuffix(name, ".partial") && storage.IsSegmentName(strings.TrimSuffix(name, ".partial")):
		return walPartial, nil
	case isBackupLabelName(name):
		return walBackupLabel, nil
	}
	return walUnknown, nil
}

// isBackupLabelName reports whether s looks like the backup history file
// PostgreSQL archives at the end of a backup: the segment name, a dot, the
// start offset in 8 hexadecimal digits, ".backup".
func isBackupLabelName(s string) bool {
	const suffix = ".backup"
	if len(s) != 24+1+8+len(suffix) || !strings.HasSuffix(s, suffix) || s[24] != '.' {
		return false
	}
	return storage.IsSegmentName(s[:24]) && isUpperHexDigits(s[25:33])
}

func isUpperHexDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return len(s) > 0
}

// FetchOptions configures FetchWAL.
type FetchOptions struct {
	// Spool is the prefetch spool directory (PrefetchDir(dest)). A segment
	// found there is moved into place instead of being downloaded. Empty:
	// no spool.
	Spool string
}

// Fetched describes what FetchWAL wrote.
type Fetched struct {
	// Name is the requested name.
	Name string
	// Key is the object served; empty when the file came from the spool.
	Key string
	// Size is the number of bytes written to the destination.
	Size int64
	// FromSpool: the file was prefetched.
	FromSpool bool
	// Partial: segment Name was served from Name.partial, zero-padded.
	Partial bool
}

// CompleteSegment reports whether a complete segment was served (so the
// following segments are worth prefetching).
func (f Fetched) CompleteSegment() bool {
	return storage.IsSegmentName(f.Name) && !f.Partial
}

// FetchWAL writes the WAL file name from the repository to dest, the way
// restore_command must: atomically (a temporary file in dest's directory,
// fsync, rename over an existing dest, fsync of the directory), mode 0600,
// with the content verified while it is read. A corrupt object is an error
// and dest is left as it was. A name that is not stored (including names of
// no WAL kind) gives an error matching storage.ErrNotFound; a name that is
// not a plain file name gives ErrInvalidWALName. See the .partial rule above.
func FetchWAL(ctx context.Context, repo *storage.Repository, name, dest string, opts FetchOptions) (Fetched, error) {
	kind, err := classifyWALName(name)
	if err != nil {
		return Fetched{}, err
	}
	res := Fetched{Name: name}
	if kind == walUnknown {
		return res, fmt.Errorf("%s: not a WAL file name walkeeper stores: %w", name, storage.ErrNotFound)
	}
	if kind == walSegment && opts.Spool != "" {
		ok, n, err := takeFromSpool(opts.Spool, name, dest)
		if err != nil {
			return res, err
		}
		if ok {
			res.FromSpool, res.Size = true, n
			trimSpool(opts.Spool, name)
			return res, nil
		}
	}
	// The partial may be replaced by the complete segment (and removed)
	// between the listing and the read: look again once.
	for attempt := 0; ; attempt++ {
		res, err = fetchFromRepository(ctx, repo, name, kind, dest)
		if err == nil || attempt > 0 || !errors.Is(err, errWALVanished) {
			break
		}
	}
	if errors.Is(err, errWALVanished) {
		err = fmt.Errorf("%s: %w", name, storage.ErrNotFound)
	}
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) && opts.Spool != "" {
			clearSpool(opts.Spool)
		}
		return res, err
	}
	if kind == walSegment && opts.Spool != "" {
		trimSpool(opts.Spool, name)
	}
	return res, nil
}

// errWALVanished: an object listed a moment ago is gone.
var errWALVanished = errors.New("object vanished")

func fetchFromRepository(ctx context.Context, repo *storage.Repository, name string, kind walKind, dest string) (Fetched, error) {
	res := Fetched{Name: name}
	complete, partial, err := lookupWAL(ctx, repo, name)
	if err != nil {
		return res, err
	}
	var padTo int64
	key := complete
	if key == "" && kind == walSegment && partial != "" {
		newest, err := partialIsNewest(ctx, repo, name)
		if err != nil {
			return res, err
		}
		if newest {
			cfg, err := repo.Config(ctx)
			if err != nil {
				if errors.Is(err, storage.ErrNotFound) {
					return res, fmt.Errorf("%s: repository %s has no %s, so the segment size to pad %s.partial to is unknown",
						name, repo, storage.ConfigKey, name)
				}
				return res, err
			}
			key, padTo, res.Partial = partial, int64(cfg.WALSegmentSize), true
		}
	}
	if key == "" {
		return res, fmt.Errorf("%s: %w", name, storage.ErrNotFound)
	}
	obj, err := repo.Open(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return res, errWALVanished
	}
	if err != nil {
		return res, err
	}
	defer obj.Close()
	n, err := walWriteAtomic(dest, obj, padTo)
	if err != nil {
		return res, err
	}
	res.Key, res.Size = key, n
	return res, nil
}

// lookupWAL finds, with one listing, the stored keys of name and of
// name.partial (empty when absent), whatever codec they were written with.
func lookupWAL(ctx context.Context, repo *storage.Repository, name string) (complete, partial string, err error) {
	base := storage.WALKey(name)
	err = repo.Backend().List(ctx, base, func(o storage.ObjectInfo) error {
		b, _, _ := storage.SplitExt(o.Key)
		switch {
		case b == base && complete == "":
			complete = o.Key
		case b == base+".partial" && partial == "":
			partial = o.Key
		}
		return nil
	})
	return complete, partial, err
}

// partialIsNewest reports whether no complete segment or partial with a
// segment number above segment name's is stored on name's timeline. Names
// of one timeline sort by segment number, so this is a string comparison.
// It lists the timeline's WAL; it only runs when name is not stored
// complete.
func partialIsNewest(ctx context.Context, repo *storage.Repository, name string) (bool, error) {
	prefix := storage.WALKey(name[:8])
	errLater := errors.New("later WAL exists")
	err := repo.Backend().List(ctx, prefix, func(o storage.ObjectInfo) error {
		b, _, _ := storage.SplitExt(o.Key)
		seg := strings.TrimSuffix(strings.TrimPrefix(b, storage.WALPrefix), ".partial")
		if storage.IsSegmentName(seg) && seg[:8] == name[:8] && seg > name {
			return errLater
		}
		return nil
	})
	if errors.Is(err, errLater) {
		return false, nil
	}
	return err == nil, err
}

// walWriteAtomic copies r into a temporary file in dest's directory,
// appends zeros up to padTo bytes (when padTo > 0), fsyncs it, renames it to
// dest (replacing a file there) and fsyncs the directory. On any error,
// including one from r, dest is untouched and the temporary file removed.
// It returns the size written.
func walWriteAtomic(dest string, r io.Reader, padTo int64) (n int64, err error) {
	dir := filepath.Dir(dest)
	f, err := os.CreateTemp(dir, "."+filepath.Base(dest)+".walkeeper-*.tmp")
	if err != nil {
		return 0, fmt.Errorf("create file next to %s: %w", dest, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	buf := make([]byte, 1<<20)
	n, err = io.CopyBuffer(f, r, buf)
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", dest, err)
	}
	if padTo > 0 {
		if n > padTo {
			return 0, fmt.Errorf("write %s: %w: the partial segment has %d bytes, more than the segment size %d",
				dest, storage.ErrCorrupt, n, padTo)
		}
		clear(buf)
		for n < padTo {
			m, err := f.Write(buf[:min(int64(len(buf)), padTo-n)])
			n += int64(m)
			if err != nil {
				return 0, fmt.Errorf("write %s: %w", dest, err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), dest); err != nil {
		return 0, fmt.Errorf("rename to %s: %w", dest, err)
	}
	return n, walSyncDir(dir)
}

// walSyncDir fsyncs a directory so a rename in it survives a crash.
func walSyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
