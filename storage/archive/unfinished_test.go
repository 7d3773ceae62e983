package archive_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// wal is the content of segment 1/5 used below: recognisable bytes.
func wal(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

const unfinishedSeg = "000000010000000000000005"

func putRange(t *testing.T, repo *storage.Repository, content []byte, from, to uint32) {
	t.Helper()
	put(t, repo, archive.RangeName(1, 5, segSize, from, to), string(content[from:to]))
}

// served is what wal-fetch serves for the unfinished segment (unpadded,
// as for NAME.partial), and the prefix end the index reports.
func served(t *testing.T, repo *storage.Repository) ([]byte, archive.LSN, error) {
	t.Helper()
	ctx := context.Background()
	f, err := archive.ForFetch(ctx, repo, unfinishedSeg+".partial")
	if err != nil {
		return nil, 0, err
	}
	w, err := os.CreateTemp(t.TempDir(), "prefix")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, err = f.Unfinished.WriteTo(ctx, repo, w)
	data, _ := os.ReadFile(w.Name())
	ix := load(t, repo, 0)
	o, ok := ix.PartialOf(1, 5)
	if !ok {
		t.Fatal("the index has no unfinished segment 5")
	}
	end, eerr := archive.PartialEnd(ctx, repo, o, segSize)
	if eerr != nil {
		t.Fatal(eerr)
	}
	return data, end, err
}

// TestUnfinishedPrefix: wal-fetch and the stream's start see the
// contiguous prefix a base partial and ranges make, never bytes past a
// gap, and refuse ranges whose overlapping bytes disagree.
func TestUnfinishedPrefix(t *testing.T) {
	content := wal(10000)
	base := uint64(5 * segSize)
	for _, tc := range []struct {
		name   string
		build  func(*storage.Repository)
		want   int
		err    error
		wantKs int // objects the index counts as one unfinished segment
	}{
		{"ranges only", func(r *storage.Repository) {
			putRange(t, r, content, 0, 100)
			putRange(t, r, content, 100, 250)
			putRange(t, r, content, 250, 400)
		}, 400, nil, 1},
		{"base partial then ranges (an older stream's .partial)", func(r *storage.Repository) {
			put(t, r, unfinishedSeg+".partial", string(content[:1000]))
			putRange(t, r, content, 1000, 1500)
		}, 1500, nil, 1},
		{"a gap ends the prefix", func(r *storage.Repository) {
			putRange(t, r, content, 0, 100)
			putRange(t, r, content, 200, 300)
		}, 100, nil, 1},
		{"no range at 0: nothing", func(r *storage.Repository) {
			putRange(t, r, content, 50, 100)
		}, 0, storage.ErrNotFound, 1},
		{"a consolidated range beside the ranges it replaced", func(r *storage.Repository) {
			putRange(t, r, content, 0, 100)
			putRange(t, r, content, 100, 200)
			putRange(t, r, content, 0, 200)
			putRange(t, r, content, 200, 300)
		}, 300, nil, 1},
		{"an overlap with the same bytes", func(r *storage.Repository) {
			put(t, r, unfinishedSeg+".partial", string(content[:1200]))
			putRange(t, r, content, 1000, 2000)
		}, 2000, nil, 1},
		{"an overlap with other bytes", func(r *storage.Repository) {
			putRange(t, r, content, 0, 1000)
			other := bytes.Clone(content)
			other[950] ^= 0xff
			putRange(t, r, other, 900, 2000)
		}, 1000, archive.ErrRangesDisagree, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := newRepo(t)
			tc.build(repo)
			data, end, err := served(t, repo)
			if !errors.Is(err, tc.err) {
				t.Fatalf("WriteTo: %v, want %v", err, tc.err)
			}
			if err == nil && !bytes.Equal(data, content[:tc.want]) {
				t.Errorf("served %d bytes, want the first %d of the segment", len(data), tc.want)
			}
			if tc.err == nil && end != archive.LSN(base+uint64(tc.want)) {
				t.Errorf("PartialEnd = %X, want %X", end, base+uint64(tc.want))
			}
			if _, n := load(t, repo, 0).Counts(); n != tc.wantKs {
				t.Errorf("Counts: %d unfinished segments, want %d", n, tc.wantKs)
			}
		})
	}
}

// TestRemovePartialsRemovesRanges: storing the complete segment removes
// its partial and every range, and nothing of the next segment.
func TestRemovePartialsRemovesRanges(t *testing.T) {
	ctx := context.Background()
	repo := newRepo(t)
	content := wal(300)
	put(t, repo, unfinishedSeg+".partial", string(content[:100]))
	putRange(t, repo, content, 100, 200)
	putRange(t, repo, content, 200, 300)
	next := archive.RangeName(1, 6, segSize, 0, 10)
	put(t, repo, next, "0123456789")
	segs(t, repo, 1, 5, 5)
	if err := archive.RemovePartials(ctx, repo, unfinishedSeg); err != nil {
		t.Fatal(err)
	}
	ix := load(t, repo, 0)
	var files []string
	for _, o := range ix.Objects {
		files = append(files, o.File)
	}
	if len(files) != 2 || files[0] != unfinishedSeg || files[1] != next {
		t.Errorf("after RemovePartials: %v, want the segment and the next segment's range", files)
	}
	ok, err := archive.Reaches(ctx, repo, 1, 6, segSize, archive.LSN(6*segSize+10))
	if err != nil || !ok {
		t.Errorf("Reaches through the next segment's range: %v, %v", ok, err)
	}
}
