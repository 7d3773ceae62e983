package archive

import (
	"context"
	"fmt"

	"github.com/walkeeper/walkeeper/storage"
)

// onPath reports whether the stored segment (or partial) seg of timeline
// tli is the file recovery along p reads for that segment.
func (ix *Index) onPath(p Path, tli uint32, seg uint64) bool {
	return p.Has(tli) && p.Owner(seg, ix.SegSize) == tli
}

// End is the newest WAL stored along a path.
type End struct {
	Found bool
	// TLI and Seg name the newest segment of the path that is stored,
	// complete or (Partial) as a .partial.
	TLI     uint32
	Seg     uint64
	Partial bool
	Object  Object
}

// EndOn returns the newest WAL stored along p: the highest segment whose
// owner's complete segment or partial is stored. WAL of a timeline of p
// past the point where p leaves it (the abandoned tail after a failover)
// does not count.
func (ix *Index) EndOn(p Path) End {
	var e End
	consider := func(o Object, partial bool) {
		n := o.Name
		if !ix.onPath(p, n.TLI, n.Seg) {
			return
		}
		if !e.Found || n.Seg > e.Seg || n.Seg == e.Seg && e.Partial && !partial {
			e = End{Found: true, TLI: n.TLI, Seg: n.Seg, Partial: partial, Object: o}
		}
	}
	for _, i := range ix.segments {
		consider(ix.Objects[i], false)
	}
	for _, i := range ix.partials {
		consider(ix.Objects[i], true)
	}
	return e
}

// FirstOn returns the lowest segment at or after from that is stored along
// p, complete or as a partial, on the timeline that owns it.
func (ix *Index) FirstOn(p Path, from uint64) (seg uint64, found bool) {
	for _, o := range ix.Objects {
		n := o.Name
		if n.Kind.isWAL() && n.Seg >= from && ix.onPath(p, n.TLI, n.Seg) && (!found || n.Seg < seg) {
			seg, found = n.Seg, true
		}
	}
	return seg, found
}

// Gap is a run of segments missing along a path: First to Last inclusive,
// each named on the timeline that owns it.
type Gap struct {
	FirstTLI, LastTLI uint32
	First, Last       uint64
}

// Count is the number of missing segments.
func (g Gap) Count() uint64 { return g.Last - g.First + 1 }

// Names returns the file names of the first and last missing segments.
func (g Gap) Names(segSize uint64) (first, last string) {
	return SegmentName(g.FirstTLI, g.First, segSize), SegmentName(g.LastTLI, g.Last, segSize)
}

// Describe says which segments are missing, in words.
func (g Gap) Describe(segSize uint64) string {
	first, last := g.Names(segSize)
	if g.Count() == 1 {
		return "segment " + first + " is"
	}
	return fmt.Sprintf("%d segments %s .. %s are", g.Count(), first, last)
}

// Gaps returns the runs of segments from through to that recovery along p
// needs and the archive does not hold: each segment must be stored complete
// on its owner timeline, except the last, for which a partial will do.
// At most limit gaps are returned (limit <= 0: all).
func (ix *Index) Gaps(p Path, from, to uint64, limit int) []Gap {
	var out []Gap
	var cur *Gap
	for seg := from; seg <= to; seg++ {
		t := p.Owner(seg, ix.SegSize)
		_, ok := ix.segments[segKey{t, seg}]
		if !ok && seg == to {
			_, ok = ix.partials[segKey{t, seg}]
		}
		if ok {
			cur = nil
			continue
		}
		if cur == nil {
			if limit > 0 && len(out) == limit {
				break
			}
			out = append(out, Gap{FirstTLI: t, First: seg})
			cur = &out[len(out)-1]
		}
		cur.Last, cur.LastTLI = seg, t
	}
	return out
}

// Reach is how far the archive must hold WAL along a path.
type Reach struct {
	Found bool
	// Seg is the last segment the archive must hold along the path.
	Seg uint64
	// Tail is set when the path's last timeline has no WAL stored while an
	// ancestor's WAL goes on past its switch point: restoring to the
	// latest timeline would then replay that abandoned WAL, so the new
	// timeline's WAL from its switch point through Seg counts as missing.
	Tail bool
	// Newest is the newest WAL stored along the path.
	Newest End
}

// Target returns how far the archive must reach along p: to the newest WAL
// stored along p, or, when p's last timeline has none and an ancestor
// holds WAL past p's last switch point, as far as that ancestor's WAL goes
// (see Reach.Tail). It may read the trailer of one partial.
func (ix *Index) Target(ctx context.Context, repo *storage.Repository, p Path) (Reach, error) {
	r := Reach{Newest: ix.EndOn(p)}
	if r.Newest.Found {
		r.Found, r.Seg = true, r.Newest.Seg
	}
	if len(p) < 2 {
		return r, nil
	}
	last := p.Last()
	begin := uint64(last.Begin) / ix.SegSize
	for _, o := range ix.Objects {
		if o.Name.Kind.isWAL() && o.Name.TLI == last.TLI && o.Name.Seg >= begin {
			return r, nil // the last timeline has WAL of its own
		}
	}
	tail, found := uint64(0), false
	for _, o := range ix.Objects {
		n := o.Name
		if !n.Kind.isWAL() || n.TLI == last.TLI || !p.Has(n.TLI) || n.Seg < begin {
			continue
		}
		if n.Kind == Range && n.Seg == begin {
			if po, ok := ix.PartialOf(n.TLI, n.Seg); ok && po.Key != o.Key {
				continue // judged with its segment's partial
			}
		}
		if (n.Kind == Partial || n.Kind == Range) && n.Seg == begin {
			end, err := PartialEnd(ctx, repo, o, ix.SegSize)
			if err != nil {
				return r, err
			}
			if end <= last.Begin {
				continue // it ends at (or before) the switch point: a clean promotion
			}
		}
		if !found || n.Seg > tail {
			tail, found = n.Seg, true
		}
	}
	if found && (!r.Found || tail > r.Seg) {
		r.Found, r.Seg, r.Tail = true, tail, true
	}
	return r, nil
}
