package archive

// Continue is where a stream continues the archive along a server's
// timeline path.
type Continue struct {
	// Found is false when the archive holds no WAL along the path at or
	// after the anchor: there is nothing to continue.
	Found bool
	// TLI and Seg are the first segment along the path, after the run of
	// stored WAL that starts at the anchor, that is not stored complete:
	// the stream starts there (at the segment's start), on the timeline
	// that owns it.
	TLI uint32
	Seg uint64
	// Partial is the stored partial of that segment, if any.
	Partial *Object
	// HoleLast is the last segment of the hole at Seg: the one before the
	// next segment stored along the path, named on HoleLastTLI. HasNext is
	// false when nothing is stored along the path after Seg: then Seg is
	// the archive's end, not a hole.
	HoleLast    uint64
	HoleLastTLI uint32
	HasNext     bool
	// Newest is the newest WAL stored along the path.
	Newest End
}

// ContinueAt says where a stream on a server whose timeline path is p
// continues the archive: at the first segment not stored complete after
// the first WAL stored along p at or after segment anchor. Holes before the
// anchor (the start of the newest backup on the path) are left to status
// and verify; a hole after it is where the stream starts, so it never
// starts past one. After a failover the old timeline's WAL past the switch
// point is not on p, so the stream continues on the new timeline from the
// segment holding the switch point.
func (ix *Index) ContinueAt(p Path, anchor uint64) Continue {
	c := Continue{Newest: ix.EndOn(p)}
	if !c.Newest.Found || c.Newest.Seg < anchor {
		return c
	}
	first, found := ix.FirstOn(p, anchor)
	if !found {
		return c
	}
	c.Found = true
	seg := first
	for {
		t := p.Owner(seg, ix.SegSize)
		if _, ok := ix.segments[segKey{t, seg}]; !ok {
			c.TLI, c.Seg = t, seg
			if i, ok := ix.partials[segKey{t, seg}]; ok {
				o := ix.Objects[i]
				c.Partial = &o
			}
			break
		}
		seg++
	}
	for s := c.Seg + 1; s <= c.Newest.Seg; s++ {
		t := p.Owner(s, ix.SegSize)
		_, ok1 := ix.segments[segKey{t, s}]
		_, ok2 := ix.partials[segKey{t, s}]
		if ok1 || ok2 {
			c.HoleLast, c.HoleLastTLI, c.HasNext = s-1, p.Owner(s-1, ix.SegSize), true
			break
		}
	}
	return c
}
