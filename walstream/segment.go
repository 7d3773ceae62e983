package walstream

import (
	"io"
	"sync"

	"github.com/walkeeper/walkeeper/storage/archive"
)

const chunkSize = 1 << 20

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// segment is one WAL segment being received: its bytes from the segment's
// first byte, in 1 MiB chunks. Only the receiver appends; snapshots handed
// to the uploader read the prefix that was complete when they were taken,
// which the receiver never rewrites.
type segment struct {
	tli     uint32
	segno   uint64
	segSize uint64
	start   LSN // LSN of the segment's first byte
	chunks  []*[]byte
	size    int // bytes received so far
}

func newSegment(tli uint32, start LSN, segSize uint64) *segment {
	return &segment{tli: tli, segno: uint64(start) / segSize, segSize: segSize, start: start}
}

// name is PostgreSQL's file name of the segment.
func (s *segment) name() string { return archive.SegmentName(s.tli, s.segno, s.segSize) }

// end is the LSN just after the last received byte.
func (s *segment) end() LSN { return s.start + LSN(s.size) }

// room is how many more bytes fit before the segment is complete.
func (s *segment) room() int { return int(s.segSize) - s.size }

func (s *segment) full() bool { return s.room() == 0 }

// append adds p, which must fit (len(p) <= room()).
func (s *segment) append(p []byte) {
	for len(p) > 0 {
		off := s.size % chunkSize
		if off == 0 && s.size/chunkSize == len(s.chunks) {
			s.chunks = append(s.chunks, chunkPool.Get().(*[]byte))
		}
		n := copy((*s.chunks[s.size/chunkSize])[off:], p)
		s.size += n
		p = p[n:]
	}
}

// snapshot captures the first n bytes for another goroutine: it copies the
// chunk list, whose first entries and their received bytes the receiver
// never changes again.
func (s *segment) snapshot(n int) snapshot {
	return snapshot{chunks: s.chunks[:len(s.chunks):len(s.chunks)], n: n}
}

// snapshot is an immutable prefix of a segment.
type snapshot struct {
	chunks []*[]byte
	n      int
}

// reader reads the snapshot from its start.
func (s snapshot) reader() io.Reader { return &segmentReader{chunks: s.chunks, n: s.n} }

// section reads the snapshot's bytes at offsets [from, to), to <= n.
func (s snapshot) section(from, to int) io.Reader {
	return &segmentReader{chunks: s.chunks, off: from, n: min(to, s.n)}
}

// release returns the chunks to the pool; the segment is unusable after.
func (s *segment) release() {
	for _, c := range s.chunks {
		chunkPool.Put(c)
	}
	s.chunks = nil
}

type segmentReader struct {
	chunks []*[]byte
	off    int
	n      int
}

func (r *segmentReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	c := *r.chunks[r.off/chunkSize]
	lo := r.off % chunkSize
	hi := min(chunkSize, lo+(r.n-r.off))
	n := copy(p, c[lo:hi])
	r.off += n
	return n, nil
}

// WriteTo hands the chunks to w directly, saving io.Copy's buffer copy on
// the hot path.
func (r *segmentReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.off < r.n {
		c := *r.chunks[r.off/chunkSize]
		lo := r.off % chunkSize
		hi := min(chunkSize, lo+(r.n-r.off))
		n, err := w.Write(c[lo:hi])
		r.off += n
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
