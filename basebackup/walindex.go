package basebackup

import (
	"context"
	"fmt"
	"sort"
	"strconv"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
)

// The WAL index: what retention (delete) and verify know about wal/.

// walFile is one object under wal/.
type walFile struct {
	storage.ObjectInfo
	name  string // without the codec extension
	kind  storage.WALKind
	tli   uint32
	segno uint64
}

type segID struct {
	tli   uint32
	segno uint64
}

// walIndex is a listing of wal/ sorted by key.
type walIndex struct {
	segSize   uint64
	files     []walFile
	segments  map[segID]walFile
	partials  map[segID]walFile
	histories map[uint32]walFile
}

func classifyWAL(o storage.ObjectInfo, segSize uint64) walFile {
	f := walFile{ObjectInfo: o, name: storage.WALNameOf(o.Key)}
	var seg string
	f.kind, seg = storage.ParseWALName(f.name)
	switch f.kind {
	case storage.WALOther:
		return f
	case storage.WALHistory:
		t, _ := strconv.ParseUint(f.name[:8], 16, 32)
		f.tli = uint32(t)
		return f
	}
	tli, segno, err := storage.ParseSegmentName(seg, segSize)
	if err != nil {
		f.kind = storage.WALOther
		return f
	}
	f.tli, f.segno = tli, segno
	return f
}

func listWAL(ctx context.Context, repo *storage.Repository, segSize uint64) (*walIndex, error) {
	ix := &walIndex{segSize: segSize, segments: map[segID]walFile{}, partials: map[segID]walFile{}, histories: map[uint32]walFile{}}
	err := repo.Backend().List(ctx, storage.WALPrefix, func(o storage.ObjectInfo) error {
		f := classifyWAL(o, segSize)
		ix.files = append(ix.files, f)
		switch f.kind {
		case storage.WALSegment:
			ix.segments[segID{f.tli, f.segno}] = f
		case storage.WALPartial:
			ix.partials[segID{f.tli, f.segno}] = f
		case storage.WALHistory:
			ix.histories[f.tli] = f
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	return ix, nil
}

// span is the part of the WAL a timeline holds on the way to a later one:
// from begin (where its parent ended) to end (its switch point); open is
// set for the last timeline of a chain, which has not ended.
type span struct {
	tli        uint32
	begin, end replication.LSN
	open       bool
}

// timelineChain is the path from timeline 1 to tli that its history
// describes, oldest first.
func timelineChain(tli uint32, history []replication.HistoryEntry) []span {
	var out []span
	var begin replication.LSN
	for _, e := range history {
		if e.TLI >= tli {
			break
		}
		out = append(out, span{tli: e.TLI, begin: begin, end: e.Switchpoint})
		begin = e.Switchpoint
	}
	return append(out, span{tli: tli, begin: begin, open: true})
}

// tliForSegment is the timeline whose file recovery along chain reads for
// segment segno: the newest timeline that began at or before that segment
// (so the segment holding a switch point comes from the new timeline, as in
// PostgreSQL's XLogFileReadAnyTLI).
func tliForSegment(chain []span, segno, segSize uint64) uint32 {
	tli := chain[0].tli
	for _, s := range chain {
		if uint64(s.begin)/segSize <= segno {
			tli = s.tli
		}
	}
	return tli
}

// sortedTimelines returns the keys of m in ascending order.
func sortedTimelines[V any](m map[uint32]V) []uint32 {
	out := make([]uint32, 0, len(m))
	for t := range m {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
