package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/walkeeper/walkeeper/storage"
)

// An unfinished segment is stored as a base partial (NAME.partial, formats
// 1 to 3) and, from format 3 on, appended ranges (NAME.<from>-<to>.range):
// each range holds the segment's bytes at offsets [from, to). What the
// archive holds of the segment is the contiguous prefix they make from
// offset 0: the base partial's bytes, then ranges that start at or before
// the prefix's end and reach past it. A gap ends the prefix; bytes beyond
// it are never served, and the stream continues from the prefix's end, so
// the next range closes the gap. See docs/repository-format.md.

// Unfinished is what the archive holds of one segment that is not stored
// complete.
type Unfinished struct {
	// Base is the segment's .partial, when HasBase.
	Base    storage.ObjectInfo
	HasBase bool
	// Ranges are the segment's ranges, by first byte (then longest first).
	Ranges []Object
}

// Stored reports whether anything of the segment is stored.
func (u Unfinished) Stored() bool { return u.HasBase || len(u.Ranges) > 0 }

// Key names the unfinished segment in messages: its base partial's key, or
// its first range's.
func (u Unfinished) Key() string {
	if u.HasBase {
		return u.Base.Key
	}
	if len(u.Ranges) > 0 {
		return u.Ranges[0].Key
	}
	return ""
}

// chain picks the ranges that extend a prefix of base bytes contiguously:
// at each step, of the ranges that start at or before the prefix's end
// and reach past it, the one that reaches furthest.
func chain(base uint32, ranges []Object) (used []Object, end uint32) {
	end = base
	for {
		best := -1
		for i, r := range ranges {
			if r.Name.Offset <= end && r.Name.End > end && (best < 0 || r.Name.End > ranges[best].Name.End) {
				best = i
			}
		}
		if best < 0 {
			return used, end
		}
		used = append(used, ranges[best])
		end = ranges[best].Name.End
	}
}

// End is the length of the stored prefix: the base partial's size (one
// read of its trailer) extended by the ranges that continue it.
func (u Unfinished) End(ctx context.Context, repo *storage.Repository) (uint32, error) {
	end, _, err := u.Prefix(ctx, repo)
	return end, err
}

// Prefix is End and the ranges that make the prefix after the base
// partial, in order.
func (u Unfinished) Prefix(ctx context.Context, repo *storage.Repository) (uint32, []Object, error) {
	var base uint32
	if u.HasBase {
		m, err := repo.Meta(ctx, u.Base.Key)
		if err != nil {
			return 0, nil, err
		}
		base = uint32(m.Size)
	}
	used, end := chain(base, u.Ranges)
	return end, used, nil
}

// PrefixWriter is where WriteTo assembles a prefix: it appends with Write
// and reads back what it wrote with ReadAt (an *os.File does both).
type PrefixWriter interface {
	io.Writer
	io.ReaderAt
}

// ErrRangesDisagree marks ranges of one segment whose overlapping bytes
// differ: the repository holds WAL of two histories under one name.
var ErrRangesDisagree = errors.New("stored ranges of a segment disagree")

// WriteTo writes the stored prefix to w and returns its length. Every
// object is read to its end, so its checksum is verified; a range whose
// size does not match its name is corrupt, and where a range overlaps the
// prefix its overlapping bytes must equal what w already holds
// (ErrRangesDisagree otherwise). A range that was removed meanwhile (the
// stream consolidated it) gives an error matching storage.ErrNotFound:
// look again.
func (u Unfinished) WriteTo(ctx context.Context, repo *storage.Repository, w PrefixWriter) (int64, error) {
	var end uint32
	if u.HasBase {
		n, err := copyObject(ctx, repo, u.Base.Key, w, 0, -1)
		if err != nil {
			return n, err
		}
		end = uint32(n)
	}
	used, _ := chain(end, u.Ranges)
	for _, r := range used {
		if r.Name.Offset > end {
			break // cannot happen: chain only continues the prefix
		}
		skip := int64(end - r.Name.Offset)
		n, err := copyRange(ctx, repo, r, w, skip)
		if err != nil {
			return int64(end), err
		}
		end += uint32(n)
	}
	return int64(end), nil
}

// copyObject copies the object's content to w; when check is non-negative
// the first check bytes are compared with w's bytes from offset at
// instead of being written.
func copyObject(ctx context.Context, repo *storage.Repository, key string, w PrefixWriter, at int64, check int64) (int64, error) {
	r, err := repo.Open(ctx, key)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	if check > 0 {
		got := make([]byte, check)
		if _, err := io.ReadFull(r, got); err != nil {
			return 0, fmt.Errorf("read %s: %w", key, err)
		}
		have := make([]byte, check)
		if _, err := w.ReadAt(have, at); err != nil {
			return 0, fmt.Errorf("read back the assembled prefix: %w", err)
		}
		if !bytes.Equal(got, have) {
			return 0, fmt.Errorf("%w: %s overlaps the bytes before it with other content", ErrRangesDisagree, key)
		}
	}
	n, err := io.CopyBuffer(w, r, make([]byte, 256<<10))
	if err != nil {
		return n, fmt.Errorf("read %s: %w", key, err)
	}
	return n, nil
}

// copyRange appends range r to w, whose prefix ends skip bytes after the
// range's first byte, and returns how many new bytes it appended.
func copyRange(ctx context.Context, repo *storage.Repository, r Object, w PrefixWriter, skip int64) (int64, error) {
	n, err := copyObject(ctx, repo, r.Key, w, int64(r.Name.Offset), skip)
	if err != nil {
		return n, err
	}
	if want := int64(r.Name.End-r.Name.Offset) - skip; n != want {
		return n, fmt.Errorf("%w: %s holds %d bytes, its name says %d", storage.ErrCorrupt, r.Key, n+skip, want+skip)
	}
	return n, nil
}

// lookupUnfinished lists the objects of segment file's prefix (one
// listing: the segment's .partial and ranges, whatever their codec).
func lookupUnfinished(ctx context.Context, repo *storage.Repository, file string, segSize uint64) (Unfinished, error) {
	var u Unfinished
	key, err := Key(ctx, repo, file)
	if err != nil {
		return u, err
	}
	err = repo.Backend().List(ctx, key+".", func(o storage.ObjectInfo) error {
		f := NameOfKey(o.Key)
		switch KindOf(f) {
		case Partial:
			if f == file+".partial" && (!u.HasBase || o.Size > u.Base.Size) {
				u.Base, u.HasBase = o, true
			}
		case Range:
			n, err := ParseName(f, segSize)
			if err == nil && n.SegmentFile(segSize) == file {
				u.Ranges = append(u.Ranges, Object{ObjectInfo: o, File: f, Name: n})
			}
		}
		return nil
	})
	if err != nil {
		return u, err
	}
	sortRanges(u.Ranges)
	return u, nil
}

func sortRanges(r []Object) {
	slices.SortFunc(r, func(a, b Object) int {
		if a.Name.Offset != b.Name.Offset {
			return int(int64(a.Name.Offset) - int64(b.Name.Offset))
		}
		return int(int64(b.Name.End) - int64(a.Name.End))
	})
}
