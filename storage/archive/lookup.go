package archive

import (
	"context"
	"errors"
	"fmt"

	"github.com/walkeeper/walkeeper/storage"
)

// The lookups below answer questions about one file name with a fixed
// number of requests (storage.Repository.Find), whatever the archive's
// size: no listing of a timeline, no scan of wal/.

// Find returns the stored object of the WAL file name (whatever its
// codec), or an error matching storage.ErrNotFound.
func Find(ctx context.Context, repo *storage.Repository, file string) (storage.ObjectInfo, error) {
	key, err := Key(ctx, repo, file)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	return repo.Find(ctx, key)
}

// Stored is what the archive holds for one segment.
type Stored struct {
	Complete, Partial       storage.ObjectInfo
	HasComplete, HasPartial bool
}

// LookupSegment finds segment file (a 24-digit segment name) complete and
// as a partial.
func LookupSegment(ctx context.Context, repo *storage.Repository, file string) (Stored, error) {
	var s Stored
	var err error
	s.Complete, err = Find(ctx, repo, file)
	switch {
	case err == nil:
		s.HasComplete = true
	case !errors.Is(err, storage.ErrNotFound):
		return s, err
	}
	s.Partial, err = Find(ctx, repo, file+".partial")
	switch {
	case err == nil:
		s.HasPartial = true
	case !errors.Is(err, storage.ErrNotFound):
		return s, err
	}
	return s, nil
}

// Fetch is the object restore_command is served for a requested name.
type Fetch struct {
	Object storage.ObjectInfo
	// Partial: a segment was asked for and only its .partial is stored;
	// it is served zero-padded to the segment size.
	Partial bool
}

// ForFetch applies the wal-fetch rule (docs/wal-fetch.md) to the requested
// file name: the object stored under that name; for a segment that is not
// stored complete, its .partial. A partial holds a prefix of the segment's
// WAL, so serving it padded never gives recovery wrong WAL: replay stops at
// the zeros as at the end of WAL, which is where recovery would stop
// without it too (and a standby then asks again or streams). Anything else
// is an error matching storage.ErrNotFound.
func ForFetch(ctx context.Context, repo *storage.Repository, file string) (Fetch, error) {
	switch KindOf(file) {
	case Other:
		return Fetch{}, fmt.Errorf("%s: not a WAL file name walkeeper stores: %w", file, storage.ErrNotFound)
	case Segment:
		s, err := LookupSegment(ctx, repo, file)
		switch {
		case err != nil:
			return Fetch{}, err
		case s.HasComplete:
			return Fetch{Object: s.Complete}, nil
		case s.HasPartial:
			return Fetch{Object: s.Partial, Partial: true}, nil
		}
		return Fetch{}, fmt.Errorf("%s: %w", file, storage.ErrNotFound)
	}
	o, err := Find(ctx, repo, file)
	return Fetch{Object: o}, err
}

// Reaches reports whether the archive holds segment seg of timeline tli
// complete, or as a partial that reaches position upTo (0: any partial
// will not do).
func Reaches(ctx context.Context, repo *storage.Repository, tli uint32, seg, segSize uint64, upTo LSN) (bool, error) {
	file := SegmentName(tli, seg, segSize)
	s, err := LookupSegment(ctx, repo, file)
	if err != nil || s.HasComplete {
		return s.HasComplete, err
	}
	if !s.HasPartial || upTo == 0 {
		return false, nil
	}
	m, err := repo.Meta(ctx, s.Partial.Key)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil // replaced by the complete segment meanwhile
	}
	if err != nil {
		return false, err
	}
	return seg*segSize+uint64(m.Size) >= uint64(upTo), nil
}

// RemovePartials deletes the .partial objects of segment file (whatever
// their codec) once the complete segment is stored: it supersedes them.
func RemovePartials(ctx context.Context, repo *storage.Repository, file string) error {
	// One partial per codec at most; the bound keeps a backend that
	// still lists a deleted key from looping.
	for range 8 {
		o, err := Find(ctx, repo, file+".partial")
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := repo.Backend().Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}
