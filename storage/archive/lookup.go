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
	Complete    storage.ObjectInfo
	HasComplete bool
	// Unfinished is the segment's partial and ranges; looked up only when
	// the segment is not stored complete.
	Unfinished Unfinished
}

// LookupSegment finds segment file (a 24-digit segment name) complete or,
// when it is not, what is stored of it unfinished (one listing of the
// segment's name).
func LookupSegment(ctx context.Context, repo *storage.Repository, file string, segSize uint64) (Stored, error) {
	var s Stored
	var err error
	s.Complete, err = Find(ctx, repo, file)
	switch {
	case err == nil:
		s.HasComplete = true
		return s, nil
	case !errors.Is(err, storage.ErrNotFound):
		return s, err
	}
	s.Unfinished, err = lookupUnfinished(ctx, repo, file, segSize)
	return s, err
}

// Fetch is what restore_command is served for a requested name.
type Fetch struct {
	// Object is the stored object, when Unfinished is nil.
	Object storage.ObjectInfo
	// Unfinished, when set, is served instead: the prefix its partial and
	// ranges hold (docs/wal-fetch.md).
	Unfinished *Unfinished
	// Partial: a segment was asked for and it is not stored complete; the
	// prefix stored of it is served zero-padded to SegSize.
	Partial bool
	SegSize uint64
}

// ForFetch applies the wal-fetch rule (docs/wal-fetch.md) to the requested
// file name: the object stored under that name; for a segment that is not
// stored complete, the prefix stored of it (its .partial and ranges). A
// partial holds a prefix of the segment's WAL, so serving it padded never
// gives recovery wrong WAL: replay stops at the zeros as at the end of
// WAL, which is where recovery would stop without it too (and a standby
// then asks again or streams). A request for NAME.partial is served the
// same prefix, unpadded. Anything else is an error matching
// storage.ErrNotFound. Segment sizes come from walkeeper.json, read only
// when an unfinished segment is looked up.
func ForFetch(ctx context.Context, repo *storage.Repository, file string) (Fetch, error) {
	kind := KindOf(file)
	switch kind {
	case Other, Range:
		return Fetch{}, fmt.Errorf("%s: not a WAL file name walkeeper serves: %w", file, storage.ErrNotFound)
	case Segment:
		o, err := Find(ctx, repo, file)
		if err == nil || !errors.Is(err, storage.ErrNotFound) {
			return Fetch{Object: o}, err
		}
	case Partial:
	default:
		o, err := Find(ctx, repo, file)
		return Fetch{Object: o}, err
	}
	cfg, err := repo.Config(ctx)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return Fetch{}, fmt.Errorf("%s: repository %s has no %s, so the segment size of %s is unknown",
				file, repo, storage.ConfigKey, file)
		}
		return Fetch{}, err
	}
	seg := file[:24]
	u, err := lookupUnfinished(ctx, repo, seg, cfg.WALSegmentSize)
	if err != nil {
		return Fetch{}, err
	}
	if _, end := chain(0, u.Ranges); !u.HasBase && end == 0 {
		// Nothing from the segment's first byte: nothing to serve.
		return Fetch{}, fmt.Errorf("%s: %w", file, storage.ErrNotFound)
	}
	return Fetch{Unfinished: &u, Partial: kind == Segment, SegSize: cfg.WALSegmentSize}, nil
}

// Reaches reports whether the archive holds segment seg of timeline tli
// complete, or as a partial that reaches position upTo (0: any partial
// will not do).
func Reaches(ctx context.Context, repo *storage.Repository, tli uint32, seg, segSize uint64, upTo LSN) (bool, error) {
	file := SegmentName(tli, seg, segSize)
	s, err := LookupSegment(ctx, repo, file, segSize)
	if err != nil || s.HasComplete {
		return s.HasComplete, err
	}
	if !s.Unfinished.Stored() || upTo == 0 {
		return false, nil
	}
	end, err := s.Unfinished.End(ctx, repo)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil // replaced by the complete segment meanwhile
	}
	if err != nil {
		return false, err
	}
	return seg*segSize+uint64(end) >= uint64(upTo), nil
}

// RemovePartials deletes the .partial objects and the ranges of segment
// file (whatever their codec) once the complete segment is stored: it
// supersedes them. One listing of the segment's name, one batch delete.
func RemovePartials(ctx context.Context, repo *storage.Repository, file string) error {
	return removeUnfinished(ctx, repo, file, true)
}

// RemoveRanges deletes the ranges of segment file once a .partial holding
// all of them is stored (a stream consolidating at the end of a timeline
// or at shutdown).
func RemoveRanges(ctx context.Context, repo *storage.Repository, file string) error {
	return removeUnfinished(ctx, repo, file, false)
}

func removeUnfinished(ctx context.Context, repo *storage.Repository, file string, partials bool) error {
	var keys []string
	key, err := Key(ctx, repo, file)
	if err != nil {
		return err
	}
	err = repo.Backend().List(ctx, key+".", func(o storage.ObjectInfo) error {
		f := NameOfKey(o.Key)
		switch k := KindOf(f); {
		case k == Partial && partials && f == file+".partial", k == Range && f[:24] == file:
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil || len(keys) == 0 {
		return err
	}
	return repo.Backend().DeleteMany(ctx, keys)
}
