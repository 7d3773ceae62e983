package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"

	"github.com/walkeeper/walkeeper/storage"
)

// Object is one stored object under wal/.
type Object struct {
	storage.ObjectInfo
	// File is the WAL file name (no prefix, no codec extension).
	File string
	// Name is File parsed; Kind Other for names walkeeper does not know.
	Name Name
	// Ranges, on the object the index answers for an unfinished segment
	// (its .partial, or without one its first range): the segment's
	// ranges, by first byte.
	Ranges []Object
}

// Unfinished is what the object stands for as an unfinished segment.
func (o Object) Unfinished() Unfinished {
	u := Unfinished{Ranges: o.Ranges}
	if o.Name.Kind == Partial {
		u.Base, u.HasBase = o.ObjectInfo, true
	}
	return u
}

type segKey struct {
	tli uint32
	seg uint64
}

// Index is what a listing of wal/ found: segments, partials, backup
// history files and history files per timeline, and the timeline graph the
// history files describe. An index from LoadFrom holds only the segments
// from its From segment on; questions about earlier segments are not its
// to answer.
type Index struct {
	SegSize uint64
	// Layout is the repository's: an object whose key is not where this
	// layout keeps its name is a stray (Kind Other), since no lookup would
	// find it.
	Layout Layout
	// From is the lowest segment number listed (0: everything).
	From uint64
	// Objects is every listed object, in key order.
	Objects  []Object
	segments map[segKey]int // index into Objects
	// partials holds each unfinished segment: its .partial, or without
	// one its first range (Object.Ranges lists the ranges).
	partials  map[segKey]int
	histories map[uint32]int
	// Graph is built from the history files that could be read.
	Graph *Graph
	// HistoryErrors holds, by key, the history files that could not be
	// read or parsed.
	HistoryErrors map[string]error
	// HistorySealed lists the history files of an encrypted repository
	// that could not be read because only the public key was given; the
	// graph lacks them.
	HistorySealed []string
}

func newIndex(l Layout, segSize, from uint64) *Index {
	return &Index{Layout: l, SegSize: segSize, From: from, segments: map[segKey]int{}, partials: map[segKey]int{},
		histories: map[uint32]int{}, Graph: NewGraph(), HistoryErrors: map[string]error{}}
}

func (ix *Index) add(o storage.ObjectInfo) {
	f := NameOfKey(o.Key)
	n, err := ParseName(f, ix.SegSize)
	if base, _, _ := storage.SplitExt(o.Key); err != nil || ix.Layout.Key(f) != base {
		n = Name{Kind: Other}
	}
	if n.Kind != History && n.Kind != Other && n.Seg < ix.From {
		return
	}
	ix.Objects = append(ix.Objects, Object{ObjectInfo: o, File: f, Name: n})
}

// Load lists all of wal/ and reads every history file. Verify and
// retention use it: they judge the whole archive.
func Load(ctx context.Context, repo *storage.Repository, segSize uint64) (*Index, error) {
	l, err := LayoutOf(ctx, repo)
	if err != nil {
		return nil, err
	}
	ix := newIndex(l, segSize, 0)
	if err := repo.Backend().List(ctx, storage.WALPrefix, func(o storage.ObjectInfo) error {
		ix.add(o)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	ix.reindex()
	return ix, ix.readHistories(ctx, repo)
}

// LoadFrom builds an index of the segments from segment from on, whose cost
// follows what it returns, not the size of the archive: it finds the
// history files by probing timeline after timeline, as PostgreSQL does
// (00000002.history, 00000003.history, ... until one is missing; plus
// those of extra timelines, such as a server's), and lists each timeline's
// WAL starting at segment from.
func LoadFrom(ctx context.Context, repo *storage.Repository, segSize, from uint64, extra ...uint32) (*Index, error) {
	l, err := LayoutOf(ctx, repo)
	if err != nil {
		return nil, err
	}
	ix := newIndex(l, segSize, from)
	tlis, err := ix.probeHistories(ctx, repo, extra)
	if err != nil {
		return nil, err
	}
	for _, t := range slices.Sorted(maps.Keys(tlis)) {
		prefix := storage.WALPrefix + fmt.Sprintf("%08X", t)
		after := ""
		if from > 0 {
			// Just after every key of segment from-1 ('~' sorts after
			// ".partial" and the codec extensions).
			after = l.Key(SegmentName(t, from-1, segSize)) + "~"
		}
		if err := repo.Backend().ListFrom(ctx, prefix, after, func(o storage.ObjectInfo) error {
			if n := NameOfKey(o.Key); KindOf(n) != History {
				ix.add(o)
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("list WAL of timeline %d: %w", t, err)
		}
	}
	sort.Slice(ix.Objects, func(i, j int) bool { return ix.Objects[i].Key < ix.Objects[j].Key })
	ix.reindex()
	return ix, nil
}

// probeHistories finds the history files by probing timeline after
// timeline (and the extra ones), reads them into the graph and returns
// every timeline they name, 1 included.
func (ix *Index) probeHistories(ctx context.Context, repo *storage.Repository, extra []uint32) (map[uint32]bool, error) {
	tlis := map[uint32]bool{1: true}
	probe := func(t uint32) error {
		info, err := repo.Find(ctx, HistoryKey(t))
		if err != nil {
			return err
		}
		tlis[t] = true
		ix.add(info)
		return nil
	}
	for t := uint32(2); ; t++ {
		err := probe(t)
		if errors.Is(err, storage.ErrNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("look up %s: %w", HistoryName(t), err)
		}
	}
	for _, t := range extra {
		if !tlis[t] && t > 1 {
			if err := probe(t); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return nil, fmt.Errorf("look up %s: %w", HistoryName(t), err)
			}
			tlis[t] = true
		}
	}
	ix.reindex()
	if err := ix.readHistories(ctx, repo); err != nil {
		return nil, err
	}
	// Ancestors named by history files are listed too.
	for _, t := range ix.Graph.Timelines() {
		for _, e := range ix.Graph.History(t) {
			tlis[e.TLI] = true
		}
	}
	return tlis, nil
}

// LoadGraph reads only the timeline graph: the history files, found by
// probing as LoadFrom does, without listing any segment. History files that
// cannot be read or parsed are an error naming them.
func LoadGraph(ctx context.Context, repo *storage.Repository, extra ...uint32) (*Graph, error) {
	ix := newIndex(Layout{}, 0, 0)
	if _, err := ix.probeHistories(ctx, repo, extra); err != nil {
		return nil, err
	}
	for key, err := range ix.HistoryErrors {
		return nil, fmt.Errorf("timeline history %s: %w", key, err)
	}
	return ix.Graph, nil
}

// reindex derives the lookups from Objects (after a listing, and after
// sorting Objects).
func (ix *Index) reindex() {
	clear(ix.segments)
	clear(ix.partials)
	clear(ix.histories)
	ranges := map[segKey][]Object{}
	for i, o := range ix.Objects {
		k := segKey{o.Name.TLI, o.Name.Seg}
		ix.Objects[i].Ranges = nil
		switch o.Name.Kind {
		case Segment:
			ix.segments[k] = i
		case Partial:
			ix.partials[k] = i
		case Range:
			ranges[k] = append(ranges[k], o)
		case History:
			ix.histories[o.Name.TLI] = i
		}
	}
	for k, rs := range ranges {
		sortRanges(rs)
		i, ok := ix.partials[k]
		if !ok {
			for j, o := range ix.Objects {
				if o.Name.Kind == Range && o.Name.TLI == k.tli && o.Name.Seg == k.seg && o.Key == rs[0].Key {
					i = j
					break
				}
			}
			ix.partials[k] = i
		}
		ix.Objects[i].Ranges = rs
	}
}

// ErrBadHistory marks a history file that was read but does not parse, or
// contradicts its own timeline number.
var ErrBadHistory = errors.New("bad timeline history file")

// maxHistorySize bounds a history file read into memory.
const maxHistorySize = 16 << 20

// readHistories reads and parses every listed history file, in timeline
// order, into the graph. A file that cannot be read or parsed goes to
// HistoryErrors; only a cancelled context stops it.
func (ix *Index) readHistories(ctx context.Context, repo *storage.Repository) error {
	for _, t := range slices.Sorted(maps.Keys(ix.histories)) {
		o := ix.Objects[ix.histories[t]]
		content, err := readSmall(ctx, repo, o.Key)
		if errors.Is(err, storage.ErrNeedIdentity) {
			// An encrypted repository read with the public key only (the
			// stream: its timeline path comes from the server).
			ix.HistorySealed = append(ix.HistorySealed, o.Key)
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			ix.HistoryErrors[o.Key] = err
			continue
		}
		h, err := ParseHistory(content)
		if err == nil {
			err = ix.Graph.Add(t, h)
		}
		if err != nil {
			ix.HistoryErrors[o.Key] = fmt.Errorf("%s: %w: %w", o.File, ErrBadHistory, err)
		}
	}
	return nil
}

// ReadHistory reads and parses a stored history file.
func ReadHistory(ctx context.Context, repo *storage.Repository, key string) ([]HistoryEntry, error) {
	content, err := readSmall(ctx, repo, key)
	if err != nil {
		return nil, err
	}
	return ParseHistory(content)
}

func readSmall(ctx context.Context, repo *storage.Repository, key string) ([]byte, error) {
	r, err := repo.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, maxHistorySize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxHistorySize {
		return nil, fmt.Errorf("%s: more than %d bytes: not a history file", key, maxHistorySize)
	}
	// Read to the end so the trailer's checksum is verified.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, err
	}
	return data, nil
}

// Segment returns the stored complete segment seg of timeline tli.
func (ix *Index) Segment(tli uint32, seg uint64) (Object, bool) {
	i, ok := ix.segments[segKey{tli, seg}]
	if !ok {
		return Object{}, false
	}
	return ix.Objects[i], true
}

// PartialOf returns the stored partial of segment seg of timeline tli.
func (ix *Index) PartialOf(tli uint32, seg uint64) (Object, bool) {
	i, ok := ix.partials[segKey{tli, seg}]
	if !ok {
		return Object{}, false
	}
	return ix.Objects[i], true
}

// HistoryObject returns timeline tli's stored history file.
func (ix *Index) HistoryObject(tli uint32) (Object, bool) {
	i, ok := ix.histories[tli]
	if !ok {
		return Object{}, false
	}
	return ix.Objects[i], true
}

// Counts returns how many complete segments and unfinished segments (a
// .partial, ranges or both) the index holds.
func (ix *Index) Counts() (segments, partials int) { return len(ix.segments), len(ix.partials) }

// PartialEnd is the position just after the last byte of the prefix an
// unfinished segment's object (PartialOf, End.Object) and its ranges hold:
// it reads the partial's trailer, the ranges' names say the rest.
func PartialEnd(ctx context.Context, repo *storage.Repository, o Object, segSize uint64) (LSN, error) {
	end, err := o.Unfinished().End(ctx, repo)
	if err != nil {
		return 0, err
	}
	return LSN(o.Name.Seg*segSize + uint64(end)), nil
}
