package basebackup

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/walkeeper/walkeeper/storage"
)

// Chunked archives (backup.json archive_layout 2; docs/backups.md).
//
// The server sends each tablespace as one tar stream. The backup cuts it at
// entry boundaries into chunks of at most ChunkSize bytes of tar, each a
// complete tar archive of its own (the server's end-of-archive blocks
// close the last one, two zero blocks are added to the others) stored as
// its own object: <stem>.<seq>.tar, base.00000.tar, base.00001.tar, ...,
// 16384.00000.tar. Restore extracts the chunks in parallel; every chunk is
// an object, so an S3 object stays far below the multipart limits whatever
// the database.
//
// A regular file too large for a chunk of its own (archive_layout 3) is
// stored as parts: consecutive pieces of PartSize(limit) bytes (the last
// one shorter), each starting a chunk of its own, each a tar entry under
// the file's name with the header's size set to the piece's length and a
// pax extended header before it holding WALKEEPER.part_offset (where the
// piece begins in the file) and WALKEEPER.file_size (the whole file's
// length). The file counts in the chunk of its first part. Restore writes
// each piece at its offset, so the parts of one file are restored in
// parallel too. INCREMENTAL files and entries with extension headers of
// their own are never split.

const (
	tarBlock = 512
	// PartOffsetRecord and FileSizeRecord are the pax records of a part.
	PartOffsetRecord = "WALKEEPER.part_offset"
	FileSizeRecord   = "WALKEEPER.file_size"
	// DefaultChunkSize is the tar bytes a chunk holds at most, unless one
	// file alone is larger.
	DefaultChunkSize = 128 << 20
	// MinChunkSize is the smallest chunk limit: a part holds whole MiB, so
	// a smaller limit would still make 1 MiB parts, and a file such as
	// global/pg_control must never be split.
	MinChunkSize = 1 << 20
)

// ChunkName is the name of the seq'th chunk of the archive name
// (base.tar, 16384.tar).
func ChunkName(archive string, seq int) string {
	return fmt.Sprintf("%s.%05d.tar", strings.TrimSuffix(archive, ".tar"), seq)
}

// PartSize is the length of each part but the last of a file split with
// chunks of at most limit bytes: limit rounded down to whole MiB (at least
// one), so a part always holds whole blocks of any PostgreSQL block size.
func PartSize(limit int64) int64 {
	return max(limit/(1<<20), 1) << 20
}

// tarSplitter follows a tar stream block by block to know where entries
// begin, and asks for a new chunk before an entry that would not fit the
// current one. Headers are held until complete (the decision needs the
// entry's size); content passes straight through.
type tarSplitter struct {
	limit int64
	// emit writes bytes to the current chunk.
	emit func(p []byte) error
	// cut ends the current chunk (adding the end-of-archive blocks) and
	// starts the next one.
	cut func() error
	// file counts a regular file in the current chunk.
	file func()

	hdr      [tarBlock]byte
	nhdr     int
	content  int64 // bytes of entry content (with padding) still to pass
	inChunk  int64 // bytes in the current chunk
	afterExt bool  // the last header was an extension (pax, GNU long name) of the next
	ended    bool  // the end-of-archive blocks began: the rest is trailer

	// The file being stored as parts: its header, length and the offset
	// of the part being passed; part is the content bytes (with padding,
	// for the last part) of that part still to pass.
	splitHdr  [tarBlock]byte
	splitSize int64
	splitOff  int64
	part      int64
	// split is set once any file was stored as parts.
	split bool
}

func (s *tarSplitter) write(p []byte) error {
	for len(p) > 0 {
		switch {
		case s.ended:
			return s.pass(p)
		case s.content > 0 && s.splitSize > 0:
			if s.part == 0 {
				if err := s.nextPart(); err != nil {
					return err
				}
			}
			n := int(min(s.part, int64(len(p))))
			if err := s.pass(p[:n]); err != nil {
				return err
			}
			s.part -= int64(n)
			s.content -= int64(n)
			p = p[n:]
			if s.part == 0 {
				s.splitOff += PartSize(s.limit)
			}
			if s.content == 0 {
				s.splitSize = 0
			}
		case s.content > 0:
			n := int(min(s.content, int64(len(p))))
			if err := s.pass(p[:n]); err != nil {
				return err
			}
			s.content -= int64(n)
			p = p[n:]
		default:
			n := copy(s.hdr[s.nhdr:], p)
			s.nhdr += n
			p = p[n:]
			if s.nhdr < tarBlock {
				return nil
			}
			s.nhdr = 0
			if err := s.header(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *tarSplitter) pass(p []byte) error {
	s.inChunk += int64(len(p))
	return s.emit(p)
}

// header handles one complete header block.
func (s *tarSplitter) header() error {
	h := s.hdr[:]
	if bytes.Count(h, []byte{0}) == tarBlock {
		s.ended = true
		return s.pass(h)
	}
	size, err := tarSize(h[124:136])
	if err != nil {
		return fmt.Errorf("the server's tar stream has a damaged header: %w", err)
	}
	padded := (size + tarBlock - 1) / tarBlock * tarBlock
	typ := h[156]
	if !s.afterExt && (typ == '0' || typ == 0) && padded > s.limit && !incrementalName(h) {
		// Too large for a chunk: stored as parts (nextPart writes their
		// headers when their content begins).
		copy(s.splitHdr[:], h)
		s.splitSize, s.splitOff, s.part = size, 0, 0
		s.content = padded
		s.split = true
		return nil
	}
	if !s.afterExt && s.inChunk > 0 && s.inChunk+tarBlock+padded > s.limit {
		if err := s.cut(); err != nil {
			return err
		}
		s.inChunk = 0
	}
	switch typ {
	case 'x', 'g', 'L', 'K':
		s.afterExt = true
	default:
		s.afterExt = false
		if typ == '0' || typ == 0 || typ == '7' {
			s.file()
		}
	}
	s.content = padded
	return s.pass(h)
}

// nextPart begins the next part of the file being split: a chunk of its
// own, a pax header with the part's records, the file's header with the
// part's length.
func (s *tarSplitter) nextPart() error {
	if s.inChunk > 0 {
		if err := s.cut(); err != nil {
			return err
		}
		s.inChunk = 0
	}
	if s.splitOff == 0 {
		s.file() // counted in the chunk of its first part
	}
	length := min(PartSize(s.limit), s.splitSize-s.splitOff)
	s.part = min(PartSize(s.limit), s.content)
	records := paxRecord(PartOffsetRecord, strconv.FormatInt(s.splitOff, 10)) +
		paxRecord(FileSizeRecord, strconv.FormatInt(s.splitSize, 10))
	var ext [tarBlock]byte
	copy(ext[:], s.splitHdr[:])
	copy(ext[0:100], make([]byte, 100))
	copy(ext[0:100], "././@PaxHeader")
	copy(ext[345:500], make([]byte, 155)) // ustar prefix
	ext[156] = 'x'
	setTarSize(ext[:], int64(len(records)))
	body := make([]byte, (len(records)+tarBlock-1)/tarBlock*tarBlock)
	copy(body, records)
	hdr := s.splitHdr
	setTarSize(hdr[:], length)
	for _, b := range [][]byte{ext[:], body, hdr[:]} {
		if err := s.pass(b); err != nil {
			return err
		}
	}
	return nil
}

// paxRecord is one pax extended header record: "<length> key=value\n",
// the length counting itself.
func paxRecord(key, value string) string {
	rest := len(key) + len(value) + 3 // space, '=', newline
	n := rest + len(strconv.Itoa(rest))
	if len(strconv.Itoa(n)) > len(strconv.Itoa(rest)) {
		n++
	}
	return strconv.Itoa(n) + " " + key + "=" + value + "\n"
}

// setTarSize writes a header's size field (octal; parts are far below the
// 8 GiB it holds) and its checksum.
func setTarSize(h []byte, size int64) {
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h[:tarBlock] {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// incrementalName reports whether a header names an INCREMENTAL file of
// an incremental backup, which is never split.
func incrementalName(h []byte) bool {
	name := string(bytes.TrimRight(h[0:100], "\x00"))
	if string(h[257:262]) == "ustar" {
		if prefix := string(bytes.TrimRight(h[345:500], "\x00")); prefix != "" {
			name = prefix + "/" + name
		}
	}
	_, ok := IncrementalTarget(strings.TrimPrefix(path.Clean(name), "./"))
	return ok
}

// tarSize parses a header's size field: octal, or base-256 for sizes of
// 8 GiB and more.
func tarSize(f []byte) (int64, error) {
	if len(f) > 0 && f[0]&0x80 != 0 {
		var v int64
		for i, c := range f {
			if i == 0 {
				c &= 0x7f
			}
			if v > (1<<55)-1 {
				return 0, fmt.Errorf("size field overflows")
			}
			v = v<<8 | int64(c)
		}
		return v, nil
	}
	s := strings.Trim(string(f), " \x00")
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 8, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size field %q", s)
	}
	return v, nil
}

// endOfArchive closes a chunk cut before the server's own end.
var endOfArchive = make([]byte, 2*tarBlock)

// objectQueue stores the backup's objects through a bounded set of
// buffers: the receiver copies the server's data into a free buffer and
// queues it for the object's writer goroutine, which compresses, hashes
// and uploads it, so receiving and compressing run on different cores, and
// a finished chunk completes (last blocks, fsync or the last multipart
// parts) while the next one is received. Memory: queueBuffers buffers plus,
// per object being written (at most maxOpenWrites), one encoder and the
// backend's upload buffers.
type objectQueue struct {
	ctx  context.Context
	repo *storage.Repository
	id   string
	free chan []byte
	open chan struct{} // one token per object being written
	cur  *queuedObject
	buf  []byte

	mu      sync.Mutex
	err     error
	objects []Object // in the order they were started
}

const (
	queueBufSize  = 1 << 20
	queueBuffers  = 8
	maxOpenWrites = 2
)

type queuedObject struct {
	index int
	q     chan []byte
	files int
}

func newObjectQueue(ctx context.Context, repo *storage.Repository, id string) *objectQueue {
	oq := &objectQueue{ctx: ctx, repo: repo, id: id, free: make(chan []byte, queueBuffers),
		open: make(chan struct{}, maxOpenWrites)}
	for range queueBuffers {
		oq.free <- make([]byte, 0, queueBufSize)
	}
	return oq
}

func (oq *objectQueue) failed() error {
	oq.mu.Lock()
	defer oq.mu.Unlock()
	return oq.err
}

func (oq *objectQueue) fail(err error) {
	oq.mu.Lock()
	defer oq.mu.Unlock()
	if oq.err == nil {
		oq.err = err
	}
}

// start begins the object name; finish the previous one first.
func (oq *objectQueue) start(name, archive string) error {
	if err := oq.failed(); err != nil {
		return err
	}
	select {
	case oq.open <- struct{}{}:
	case <-oq.ctx.Done():
		return oq.ctx.Err()
	}
	key := storage.BackupKey(oq.id, name)
	w, err := oq.repo.Create(oq.ctx, key)
	if err != nil {
		<-oq.open
		return err
	}
	oq.mu.Lock()
	o := &queuedObject{index: len(oq.objects), q: make(chan []byte, queueBuffers)}
	oq.objects = append(oq.objects, Object{Name: name, Key: key + oq.repo.Codec().Ext(), Archive: archive})
	oq.mu.Unlock()
	oq.cur = o
	go func() {
		defer func() { <-oq.open }()
		var werr error
		for b := range o.q {
			if werr == nil {
				_, werr = w.Write(b)
			}
			oq.free <- b[:0]
		}
		if werr != nil {
			w.Abort()
			oq.fail(fmt.Errorf("store %s: %w", name, werr))
			return
		}
		if oq.failed() != nil { // the backup failed: store nothing more
			w.Abort()
			return
		}
		m, err := w.Close()
		if err != nil {
			oq.fail(fmt.Errorf("store %s: %w", name, err))
			return
		}
		oq.mu.Lock()
		ob := &oq.objects[o.index]
		ob.Size, ob.StoredSize, ob.SHA256 = m.Size, m.StoredSize, m.Hex()
		oq.mu.Unlock()
	}()
	return nil
}

// write appends p to the current object.
func (oq *objectQueue) write(p []byte) error {
	for len(p) > 0 {
		if oq.buf == nil {
			select {
			case oq.buf = <-oq.free:
			case <-oq.ctx.Done():
				return oq.ctx.Err()
			}
		}
		n := min(len(p), cap(oq.buf)-len(oq.buf))
		oq.buf = append(oq.buf, p[:n]...)
		p = p[n:]
		if len(oq.buf) == cap(oq.buf) {
			if err := oq.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (oq *objectQueue) flush() error {
	if oq.buf == nil {
		return nil
	}
	if err := oq.failed(); err != nil {
		return err
	}
	b := oq.buf
	oq.buf = nil
	select {
	case oq.cur.q <- b:
		return nil
	case <-oq.ctx.Done():
		oq.free <- b[:0]
		return oq.ctx.Err()
	}
}

// countFile counts a regular file in the current object.
func (oq *objectQueue) countFile() { oq.cur.files++ }

// finish ends the current object; it completes in the background.
func (oq *objectQueue) finish() error {
	o := oq.cur
	if o == nil {
		return nil
	}
	err := oq.flush()
	oq.mu.Lock()
	oq.objects[o.index].Files = o.files
	oq.mu.Unlock()
	close(o.q)
	oq.cur = nil
	return err
}

// abort makes the objects still being written fail instead of being
// stored; wait still has to be called.
func (oq *objectQueue) abort(cause error) { oq.fail(cause) }

// wait waits until every object started is stored (or failed) and returns
// them in the order they were started.
func (oq *objectQueue) wait() ([]Object, error) {
	if oq.cur != nil {
		oq.finish()
	}
	for range maxOpenWrites {
		oq.open <- struct{}{}
	}
	for range maxOpenWrites {
		<-oq.open
	}
	oq.mu.Lock()
	defer oq.mu.Unlock()
	return oq.objects, oq.err
}
