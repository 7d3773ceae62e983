package archive_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

const segSize = 16 << 20

func newRepo(t *testing.T) *storage.Repository {
	t.Helper()
	repo := storage.NewRepository(storage.NewMemory(), storage.CodecZstd)
	if _, err := repo.Init(context.Background(), storage.Config{SystemIdentifier: "1", PGMajorVersion: 15, WALSegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	return repo
}

func put(t *testing.T, repo *storage.Repository, file, content string) {
	t.Helper()
	w, err := repo.Create(context.Background(), archivetest.WALKey(file))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func segs(t *testing.T, repo *storage.Repository, tli uint32, first, last uint64) {
	t.Helper()
	for s := first; s <= last; s++ {
		put(t, repo, archive.SegmentName(tli, s, segSize), "wal")
	}
}

func partial(t *testing.T, repo *storage.Repository, tli uint32, seg uint64, n int) {
	t.Helper()
	put(t, repo, archive.SegmentName(tli, seg, segSize)+".partial", string(bytes.Repeat([]byte{'x'}, n)))
}

func load(t *testing.T, repo *storage.Repository, from uint64) *archive.Index {
	t.Helper()
	ix, err := archive.LoadFrom(context.Background(), repo, segSize, from)
	if err != nil {
		t.Fatal(err)
	}
	if len(ix.HistoryErrors) > 0 {
		t.Fatalf("history errors: %v", ix.HistoryErrors)
	}
	full, err := archive.Load(context.Background(), repo, segSize)
	if err != nil {
		t.Fatal(err)
	}
	if from == 0 && len(full.Objects) != len(ix.Objects) {
		t.Fatalf("LoadFrom(0) found %d objects, Load %d", len(ix.Objects), len(full.Objects))
	}
	return ix
}

// The unclean failover of issue 10: the standby forked at 0/4050A58 while
// the archive holds the dead primary's timeline 1 up to segment 7.
func uncleanFailover(t *testing.T) *storage.Repository {
	repo := newRepo(t)
	segs(t, repo, 1, 1, 6)
	partial(t, repo, 1, 7, 0x90)
	put(t, repo, "00000002.history", "1\t0/4050A58\tno recovery target specified\n")
	return repo
}

func TestUncleanFailoverBeforeTheStreamCaughtUp(t *testing.T) {
	ctx := context.Background()
	repo := uncleanFailover(t)
	ix := load(t, repo, 2)
	p := ix.Graph.Path(2)
	if ix.Graph.Newest() != 2 || len(p) != 2 || p[1].Begin != 0x4050A58 {
		t.Fatalf("path %+v", p)
	}
	if e := ix.EndOn(p); !e.Found || e.TLI != 1 || e.Seg != 3 {
		t.Errorf("EndOn = %+v, want timeline 1 segment 3 (segment 4 on belongs to timeline 2)", e)
	}
	c := ix.ContinueAt(p, 2)
	if !c.Found || c.TLI != 2 || c.Seg != 4 || c.HasNext || c.Partial != nil {
		t.Errorf("ContinueAt = %+v, want timeline 2 segment 4 (the segment holding the switch point)", c)
	}
	r, err := ix.Target(ctx, repo, p)
	if err != nil || !r.Found || !r.Tail || r.Seg != 7 {
		t.Fatalf("Target = %+v, %v; want the abandoned tail up to segment 7", r, err)
	}
	gaps := ix.Gaps(p, 2, r.Seg, 0)
	if len(gaps) != 1 {
		t.Fatalf("gaps %+v", gaps)
	}
	first, last := gaps[0].Names(segSize)
	if first != "000000020000000000000004" || last != "000000020000000000000007" || gaps[0].Count() != 4 {
		t.Errorf("gap %s .. %s (%d), want timeline 2 segments 4 .. 7", first, last, gaps[0].Count())
	}
}

func TestUncleanFailoverAfterTheStreamCaughtUp(t *testing.T) {
	ctx := context.Background()
	repo := uncleanFailover(t)
	segs(t, repo, 2, 4, 5)
	partial(t, repo, 2, 6, 100)
	ix := load(t, repo, 0)
	p := ix.Graph.Path(2)
	c := ix.ContinueAt(p, 2)
	if !c.Found || c.TLI != 2 || c.Seg != 6 || c.Partial == nil {
		t.Errorf("ContinueAt = %+v, want timeline 2 segment 6 with its partial", c)
	}
	r, err := ix.Target(ctx, repo, p)
	if err != nil || r.Tail || r.Seg != 6 {
		t.Fatalf("Target = %+v, %v: the abandoned tail of timeline 1 (to 7) is no longer needed", r, err)
	}
	if gaps := ix.Gaps(p, 1, r.Seg, 0); len(gaps) != 0 {
		t.Errorf("gaps %+v, want none", gaps)
	}
	// Timeline 1's own path still ends at its partial 7.
	if e := ix.EndOn(ix.Graph.Path(1)); e.TLI != 1 || e.Seg != 7 || !e.Partial {
		t.Errorf("EndOn(timeline 1) = %+v", e)
	}
}

func TestTimelineOneDoesNotFillTimelineTwosHole(t *testing.T) {
	repo := uncleanFailover(t)
	segs(t, repo, 2, 6, 8) // segments 4 and 5 of timeline 2 missing
	ix := load(t, repo, 0)
	p := ix.Graph.Path(2)
	gaps := ix.Gaps(p, 1, 8, 0)
	if len(gaps) != 1 || gaps[0].First != 4 || gaps[0].Last != 5 || gaps[0].FirstTLI != 2 {
		t.Fatalf("gaps %+v, want timeline 2 segments 4..5", gaps)
	}
	c := ix.ContinueAt(p, 1)
	if c.TLI != 2 || c.Seg != 4 || !c.HasNext || c.HoleLast != 5 {
		t.Errorf("ContinueAt = %+v: the stream must start at the hole, never past it", c)
	}
}

func TestContinueAtAnchor(t *testing.T) {
	repo := newRepo(t)
	segs(t, repo, 1, 1, 3)
	segs(t, repo, 1, 5, 6) // hole at 4
	ix := load(t, repo, 0)
	p := ix.Graph.Path(1)
	for _, tc := range []struct {
		anchor uint64
		found  bool
		seg    uint64
	}{
		{0, true, 4}, // the hole after the anchor
		{5, true, 7}, // a hole before the anchor is left to status and verify
		{9, false, 0},
	} {
		c := ix.ContinueAt(p, tc.anchor)
		if c.Found != tc.found || c.Found && c.Seg != tc.seg {
			t.Errorf("anchor %d: %+v, want found=%v segment %d", tc.anchor, c, tc.found, tc.seg)
		}
	}
}

func TestCleanPromotionAndTwoTimelines(t *testing.T) {
	ctx := context.Background()
	repo := newRepo(t)
	segs(t, repo, 1, 1, 3)
	partial(t, repo, 1, 4, 0x100) // ends exactly at the switch point
	put(t, repo, "00000002.history", "1\t0/4000100\tno recovery target specified\n")
	ix := load(t, repo, 0)
	p2 := ix.Graph.Path(2)
	if r, err := ix.Target(ctx, repo, p2); err != nil || r.Tail || r.Seg != 3 {
		t.Errorf("right after a clean promotion: Target = %+v, %v; want segment 3 and no tail", r, err)
	}
	if c := ix.ContinueAt(p2, 0); c.TLI != 2 || c.Seg != 4 {
		t.Errorf("ContinueAt = %+v, want timeline 2 segment 4", c)
	}
	segs(t, repo, 2, 4, 6)
	partial(t, repo, 2, 7, 0x200)
	put(t, repo, "00000003.history", "1\t0/4000100\tno recovery target specified\n2\t0/7000200\tno recovery target specified\n")
	segs(t, repo, 3, 7, 8)
	ix = load(t, repo, 0)
	if ix.Graph.Newest() != 3 {
		t.Fatalf("newest timeline %d", ix.Graph.Newest())
	}
	p3 := ix.Graph.Path(3)
	if c := ix.ContinueAt(p3, 2); c.TLI != 3 || c.Seg != 9 || c.HasNext {
		t.Errorf("ContinueAt = %+v, want timeline 3 segment 9", c)
	}
	r, err := ix.Target(ctx, repo, p3)
	if err != nil || r.Seg != 8 {
		t.Fatalf("Target = %+v, %v", r, err)
	}
	if gaps := ix.Gaps(p3, 1, 8, 0); len(gaps) != 0 {
		t.Errorf("gaps %+v", gaps)
	}
	if got := ix.Graph.NewestFrom(1, 0x2000028); got != 3 {
		t.Errorf("NewestFrom(1, 0/2000028) = %d, want 3", got)
	}
	if got := ix.Graph.NewestFrom(1, 0x5000000); got != 1 {
		t.Errorf("NewestFrom(1, 0/5000000) = %d, want 1 (past timeline 1's end)", got)
	}
}

func TestLoadFromSkipsOlderSegments(t *testing.T) {
	repo := newRepo(t)
	segs(t, repo, 1, 1, 9)
	put(t, repo, "00000002.history", "1\t0/9000000\tx\n")
	segs(t, repo, 2, 9, 10)
	ix := load(t, repo, 8)
	if n, _ := ix.Counts(); n != 4 {
		t.Errorf("LoadFrom(8) holds %d segments, want 4 (1/8, 1/9, 2/9, 2/10)", n)
	}
	if _, ok := ix.HistoryObject(2); !ok {
		t.Error("history file of timeline 2 not found")
	}
}

func TestForFetch(t *testing.T) {
	ctx := context.Background()
	repo := newRepo(t)
	segs(t, repo, 1, 1, 2)
	partial(t, repo, 1, 2, 10) // leftover beside the complete segment
	partial(t, repo, 1, 3, 10)
	put(t, repo, "00000002.history", "1\t0/3000000\tx\n")
	for _, tc := range []struct {
		name    string
		partial bool
		err     error
	}{
		{"000000010000000000000002", false, nil},
		{"000000010000000000000003", true, nil},
		{"000000010000000000000004", false, storage.ErrNotFound},
		{"00000002.history", false, nil},
		{"00000003.history", false, storage.ErrNotFound},
		{"000000010000000000000003.partial", false, nil},
		{"RECOVERYHISTORY", false, storage.ErrNotFound},
	} {
		f, err := archive.ForFetch(ctx, repo, tc.name)
		if !errors.Is(err, tc.err) || err == nil && f.Partial != tc.partial {
			t.Errorf("%s: %+v, %v; want partial=%v err=%v", tc.name, f, err, tc.partial, tc.err)
		}
	}
	if err := archive.RemovePartials(ctx, repo, "000000010000000000000002"); err != nil {
		t.Fatal(err)
	}
	if s, _ := archive.LookupSegment(ctx, repo, "000000010000000000000002", segSize); !s.HasComplete || s.Unfinished.Stored() {
		t.Errorf("after RemovePartials: %+v", s)
	}
	ok, err := archive.Reaches(ctx, repo, 1, 3, segSize, 0x3000000+10)
	if err != nil || !ok {
		t.Errorf("partial of 10 bytes reaches 0/300000A: %v %v", ok, err)
	}
	if ok, _ := archive.Reaches(ctx, repo, 1, 3, segSize, 0x3000000+11); ok {
		t.Error("partial of 10 bytes reaches 0/300000B")
	}
}

func TestBadHistoryReported(t *testing.T) {
	repo := newRepo(t)
	put(t, repo, "00000002.history", "garbage\n")
	put(t, repo, "00000003.history", "1\t0/3000000\tx\n2\t0/5000000\tx\n")
	put(t, repo, "00000004.history", "1\t0/3000000\tx\n2\t0/6000000\tx\n3\t0/7000000\tx\n")
	ix, err := archive.Load(context.Background(), repo, segSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.HistoryErrors["wal/00000002.history.zst"]; !errors.Is(err, archive.ErrBadHistory) {
		t.Errorf("bad history: %v", err)
	}
	if len(ix.Graph.Conflicts) != 1 || ix.Graph.Conflicts[0].FileTLI != 4 || ix.Graph.Conflicts[0].TLI != 2 {
		t.Errorf("conflicts %+v", ix.Graph.Conflicts)
	}
}

func TestNameRoundTrip(t *testing.T) {
	for _, s := range []string{
		"000000010000000000000001", "00000002000000A3000000FF", "0000000A0000000000000003.partial",
		"0000000B.history", "000000010000000000000002.00000028.backup",
	} {
		n, err := archive.ParseName(s, segSize)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if got := n.File(segSize); got != s {
			t.Errorf("ParseName(%s).File() = %s", s, got)
		}
	}
	n, _ := archive.ParseName("00000002000000A3000000FF", segSize)
	if n.TLI != 2 || n.Seg != 0xA3*256+0xFF || n.Kind != archive.Segment {
		t.Errorf("parsed %+v", n)
	}
	for _, s := range []string{"", "00000001000000000000000", "000000010000000000000100", "00000000.history",
		"000000000000000000000001", "0000000100000000000000zz", "x.history", "000000010000000000000001.partialx"} {
		if _, err := archive.ParseName(s, segSize); err == nil {
			t.Errorf("ParseName(%q) accepted", s)
		}
	}
	// 1 GB segments: four per 4 GB.
	if got := archive.SegmentName(1, 5, 1<<30); got != "000000010000000100000001" {
		t.Errorf("1 GB segment 5 = %s", got)
	}
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"000000010000000000000001", "0000000A0000000000000003.partial", "0000000B.history",
		"000000010000000000000002.00000028.backup", "000000010000000000000002.00001000-00002000.range", "junk"} {
		f.Add(s, uint8(24))
	}
	f.Fuzz(func(t *testing.T, s string, shift uint8) {
		size := uint64(1) << (20 + shift%11) // 1 MB .. 1 GB
		n, err := archive.ParseName(s, size)
		if err != nil {
			return
		}
		if got := n.File(size); got != s {
			t.Fatalf("ParseName(%q).File() = %q", s, got)
		}
		again, err := archive.ParseName(n.File(size), size)
		if err != nil || again != n {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}

func FuzzParseHistory(f *testing.F) {
	f.Add([]byte("1\t0/5000100\tno recovery target specified\n\n2\t0/9000000\tat restore point \"x\"\n"))
	f.Add([]byte("# comment\n1\t0/3000000\n"))
	f.Add([]byte("x\ty\n"))
	f.Fuzz(func(t *testing.T, content []byte) {
		h, err := archive.ParseHistory(content)
		if err != nil {
			return
		}
		var b bytes.Buffer
		for i, e := range h {
			if i > 0 && (e.TLI <= h[i-1].TLI || e.Switchpoint < h[i-1].Switchpoint) {
				t.Fatalf("accepted out-of-order history %v", h)
			}
			fmt.Fprintf(&b, "%d\t%X/%X\treason\n", e.TLI, uint64(e.Switchpoint)>>32, uint32(e.Switchpoint))
		}
		again, err := archive.ParseHistory(b.Bytes())
		if err != nil || len(again) != len(h) {
			t.Fatalf("re-parse of %v: %v, %v", h, again, err)
		}
		for i := range h {
			if again[i] != h[i] {
				t.Fatalf("re-parse differs at %d: %v vs %v", i, again[i], h[i])
			}
		}
		if len(h) > 0 {
			p := archive.PathTo(h[len(h)-1].TLI+1, h)
			if len(p) != len(h)+1 || !p.Last().Open {
				t.Fatalf("path %v from %v", p, h)
			}
		}
	})
}

// TestLoadGraphReadsHistoriesOnly: the graph of the history files found by
// probing, without the segments; a damaged history file is an error.
func TestLoadGraphReadsHistoriesOnly(t *testing.T) {
	ctx := context.Background()
	repo := newRepo(t)
	segs(t, repo, 1, 1, 5)
	put(t, repo, "00000002.history", "1\t0/3000000\tx\n")
	put(t, repo, "00000003.history", "1\t0/3000000\tx\n2\t0/5000000\tx\n")
	put(t, repo, "00000005.history", "1\t0/3000000\tx\n2\t0/5000000\tx\n3\t0/6000000\tx\n4\t0/6800000\tx\n") // past a missing 4
	g, err := archive.LoadGraph(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	if g.Newest() != 3 || !g.Path(3).Covers(2, 0x4000000) || g.Path(3).Covers(1, 0x4000000) {
		t.Errorf("newest %d, path to 3 %+v", g.Newest(), g.Path(3))
	}
	if g, err := archive.LoadGraph(ctx, repo, 5); err != nil || !g.Known(5) {
		t.Errorf("extra timeline 5: known %v, %v", g != nil && g.Known(5), err)
	}
	put(t, repo, "00000004.history", "garbage\n")
	if _, err := archive.LoadGraph(ctx, repo); !errors.Is(err, archive.ErrBadHistory) {
		t.Errorf("damaged history: %v, want ErrBadHistory", err)
	}
}
