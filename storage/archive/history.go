package archive

import (
	"bufio"
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/walkeeper/walkeeper/internal/replication"
)

// LSN is a WAL position.
type LSN = replication.LSN

// HistoryEntry is one line of a timeline history file: timeline TLI ended
// at Switchpoint, where its child timeline began.
type HistoryEntry struct {
	TLI         uint32
	Switchpoint LSN
}

// maxHistoryLine bounds one line of a history file (PostgreSQL writes a
// short reason text after the switch point).
const maxHistoryLine = 64 << 10

// ParseHistory parses a timeline history file ("1\t0/3000000\treason"
// lines, oldest ancestor first; blank lines and '#' comments are skipped).
// Like PostgreSQL it requires the timelines to increase; it also requires
// the switch points not to go backwards, which every history PostgreSQL
// writes satisfies.
func ParseHistory(content []byte) ([]HistoryEntry, error) {
	var out []HistoryEntry
	sc := bufio.NewScanner(bytes.NewReader(content))
	sc.Buffer(make([]byte, 0, 4096), maxHistoryLine)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("bad timeline history line %q", line)
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("bad timeline history line %q: no timeline number", line)
		}
		sp, err := replication.ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("bad timeline history line %q: %w", line, err)
		}
		if n := len(out); n > 0 && uint32(tli) <= out[n-1].TLI {
			return nil, fmt.Errorf("bad timeline history line %q: timelines must increase", line)
		}
		if n := len(out); n > 0 && sp < out[n-1].Switchpoint {
			return nil, fmt.Errorf("bad timeline history line %q: switch points must not go backwards", line)
		}
		out = append(out, HistoryEntry{TLI: uint32(tli), Switchpoint: sp})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read timeline history: %w", err)
	}
	return out, nil
}

// Span is the part of the WAL that timeline TLI contributes to a path:
// from Begin (where its parent ended; 0 on the first timeline) to End (its
// switch point to the next timeline of the path). Open marks the path's
// last timeline, which has not ended.
type Span struct {
	TLI        uint32
	Begin, End LSN
	Open       bool
}

// Path is the line of timelines recovery follows to reach a timeline,
// oldest first, as that timeline's history file describes it.
type Path []Span

// PathTo is the path to tli given its history (nil for timeline 1).
func PathTo(tli uint32, history []HistoryEntry) Path {
	var out Path
	var begin LSN
	for _, e := range history {
		if e.TLI >= tli {
			break
		}
		out = append(out, Span{TLI: e.TLI, Begin: begin, End: e.Switchpoint})
		begin = e.Switchpoint
	}
	return append(out, Span{TLI: tli, Begin: begin, Open: true})
}

// Last is the path's final (open) timeline.
func (p Path) Last() Span { return p[len(p)-1] }

// Owner is the timeline whose file recovery along p reads for segment seg:
// the newest timeline of the path that began at or before that segment, as
// PostgreSQL's XLogFileReadAnyTLI chooses. The segment holding a switch
// point therefore belongs to the new timeline; the old timeline's copy of
// it also holds WAL the new timeline does not have.
func (p Path) Owner(seg, segSize uint64) uint32 {
	tli := p[0].TLI
	for _, s := range p {
		if uint64(s.Begin)/segSize <= seg {
			tli = s.TLI
		}
	}
	return tli
}

// Covers reports whether position lsn of timeline tli lies on p: tli is on
// p and lsn is not past the point where p leaves it.
func (p Path) Covers(tli uint32, lsn LSN) bool {
	for _, s := range p {
		if s.TLI == tli {
			return s.Open || lsn <= s.End
		}
	}
	return false
}

// Has reports whether timeline tli is on p.
func (p Path) Has(tli uint32) bool {
	for _, s := range p {
		if s.TLI == tli {
			return true
		}
	}
	return false
}

// Graph is the timeline graph the history files describe: for each
// timeline with a history file, its ancestry.
type Graph struct {
	hist map[uint32][]HistoryEntry
	// ends records, for each timeline some history file says ended, where
	// and which file says so.
	ends map[uint32]timelineEnd
	// Conflicts lists history files that disagree with an earlier one
	// about where a timeline ended.
	Conflicts []Conflict
}

type timelineEnd struct {
	at   LSN
	from uint32 // the timeline whose history file says so
}

// Conflict is a history file that says timeline TLI ended elsewhere than
// another history file says.
type Conflict struct {
	FileTLI uint32 // the timeline whose history file this is
	File    string // the history file's name
	TLI     uint32
	At      LSN
	Other   string // the history file it disagrees with
	OtherAt LSN
}

func (c Conflict) String() string {
	return fmt.Sprintf("%s says timeline %d ended at %s, %s says %s", c.File, c.TLI, c.At, c.Other, c.OtherAt)
}

// NewGraph returns an empty graph (timeline 1 alone).
func NewGraph() *Graph {
	return &Graph{hist: map[uint32][]HistoryEntry{}, ends: map[uint32]timelineEnd{}}
}

// Add records timeline tli's history. Histories are best added in
// timeline order, so that a conflict names the newer file.
func (g *Graph) Add(tli uint32, h []HistoryEntry) error {
	if n := len(h); n > 0 && h[n-1].TLI >= tli {
		return fmt.Errorf("the history of timeline %d names timeline %d as an ancestor", tli, h[n-1].TLI)
	}
	g.hist[tli] = h
	for _, e := range h {
		if prev, ok := g.ends[e.TLI]; ok && prev.at != e.Switchpoint {
			g.Conflicts = append(g.Conflicts, Conflict{FileTLI: tli, File: HistoryName(tli), TLI: e.TLI, At: e.Switchpoint,
				Other: HistoryName(prev.from), OtherAt: prev.at})
			continue
		}
		g.ends[e.TLI] = timelineEnd{at: e.Switchpoint, from: tli}
	}
	return nil
}

// Known reports whether tli's history is in the graph (timeline 1 always
// is).
func (g *Graph) Known(tli uint32) bool {
	_, ok := g.hist[tli]
	return ok || tli == 1
}

// History returns tli's history (nil for timeline 1 or an unknown one).
func (g *Graph) History(tli uint32) []HistoryEntry { return g.hist[tli] }

// Path is the path to tli.
func (g *Graph) Path(tli uint32) Path { return PathTo(tli, g.hist[tli]) }

// Timelines lists the timelines with a history file, and 1, ascending.
func (g *Graph) Timelines() []uint32 {
	out := []uint32{1}
	for t := range g.hist {
		if t != 1 {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Newest is the highest timeline of the graph: the one recovery with
// recovery_target_timeline = 'latest' goes to.
func (g *Graph) Newest() uint32 {
	t := g.Timelines()
	return t[len(t)-1]
}

// EndOf is where a history file says timeline tli ended, and which
// timeline's file says so.
func (g *Graph) EndOf(tli uint32) (at LSN, from uint32, ok bool) {
	e, ok := g.ends[tli]
	return e.at, e.from, ok
}

// NewestFrom is the newest timeline whose path passes position lsn of
// timeline tli: where recovery with target 'latest' goes from a backup
// that starts there.
func (g *Graph) NewestFrom(tli uint32, lsn LSN) uint32 {
	best := tli
	for t := range g.hist {
		if t > best && g.Path(t).Covers(tli, lsn) {
			best = t
		}
	}
	return best
}
