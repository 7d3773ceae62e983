package restore

import (
	"archive/tar"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"sync"

	"github.com/walkeeper/walkeeper/basebackup"
)

// Files stored as parts (backup.json archive_layout 3, basebackup/chunk.go):
// each part is a tar entry under the file's name in a chunk of its own,
// with pax records giving its offset in the file and the file's length.
// The extractors of different chunks write the parts of one file at their
// offsets at the same time; the one that writes the last missing byte
// commits the file (fsync by the syncers, like any other file). A part
// seen twice or overlapping another, parts that disagree on the length, a
// part of a file already complete, or a file still missing parts when
// every chunk is extracted are damage, and fail the restore.

// partOf returns, for a part entry, where its piece begins and the whole
// file's length; ok is false for an ordinary entry.
func partOf(h *tar.Header) (off, size int64, ok bool, err error) {
	o, has := h.PAXRecords[basebackup.PartOffsetRecord]
	if !has {
		return 0, 0, false, nil
	}
	s, has := h.PAXRecords[basebackup.FileSizeRecord]
	if !has {
		return 0, 0, false, fmt.Errorf("part of %s has no %s record: the backup is damaged", h.Name, basebackup.FileSizeRecord)
	}
	off, err1 := strconv.ParseInt(o, 10, 64)
	size, err2 := strconv.ParseInt(s, 10, 64)
	if err1 != nil || err2 != nil || off < 0 || h.Size <= 0 || size <= 0 || off > size-h.Size {
		return 0, 0, false, fmt.Errorf("part of %s at offset %q of %q bytes holding %d bytes does not fit the file: the backup is damaged", h.Name, o, s, h.Size)
	}
	return off, size, true, nil
}

// partFiles are the files whose parts are being written.
type partFiles struct {
	mu    sync.Mutex
	files map[string]*partFile // by path in the target
}

type partFile struct {
	f       outFile
	size    int64
	left    int64   // bytes no part has claimed yet
	parts   extents // the parts begun
	writers int     // parts being written now
	failed  bool
	done    bool // complete and committed: any further part is damage
}

// extents are the byte ranges of a file that parts claimed; no two may
// overlap, so parts claiming size bytes of a size-byte file cover it.
type extents []extent

type extent struct{ off, n int64 }

// claim adds [off, off+n), refusing an overlap with a range claimed before.
func (e *extents) claim(off, n int64) error {
	for _, x := range *e {
		if off < x.off+x.n && x.off < off+n {
			if off == x.off {
				return fmt.Errorf("the part at offset %d is in the backup twice", off)
			}
			return fmt.Errorf("the part at offset %d (%d bytes) overlaps the one at %d (%d bytes)", off, n, x.off, x.n)
		}
	}
	*e = append(*e, extent{off, n})
	return nil
}

// begin registers the part at off, holding n bytes, of the file p of the
// given size, creating the file for its first part to arrive.
func (ps *partFiles) begin(dd *dataDir, p string, off, n, size int64) (*partFile, error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	pf := ps.files[p]
	if pf == nil {
		f, err := dd.create(p)
		if err != nil {
			return nil, err
		}
		pf = &partFile{f: f, size: size, left: size}
		if ps.files == nil {
			ps.files = map[string]*partFile{}
		}
		ps.files[p] = pf
	}
	switch {
	case pf.done:
		return nil, fmt.Errorf("%s is complete and another part of it follows: the backup is damaged", p)
	case pf.failed:
		return nil, fmt.Errorf("write %s: another part failed", p)
	case pf.size != size:
		return nil, fmt.Errorf("the parts of %s disagree on its length (%d, %d bytes): the backup is damaged", p, pf.size, size)
	case n > pf.left:
		return nil, fmt.Errorf("the parts of %s hold more than its %d bytes: the backup is damaged", p, size)
	}
	if err := pf.parts.claim(off, n); err != nil {
		return nil, fmt.Errorf("%s: %w: the backup is damaged", p, err)
	}
	pf.left -= n
	pf.writers++
	return pf, nil
}

// end records a part written (wrote bytes, or failed with err); done is
// true when it completed the file, which is then committed.
//
// The parts claimed distinct ranges adding up to the file's length (begin),
// so when none is left to claim and no writer is busy, every byte of the
// file is written.
func (ps *partFiles) end(dd *dataDir, p string, pf *partFile, err error) (done bool, _ error) {
	ps.mu.Lock()
	pf.writers--
	if err != nil {
		pf.failed = true
	}
	if pf.failed {
		if pf.writers == 0 && pf.f != nil {
			dd.abort(pf.f)
			pf.f = nil
		}
		ps.mu.Unlock()
		return false, err
	}
	if pf.left > 0 || pf.writers > 0 {
		ps.mu.Unlock()
		return false, nil
	}
	pf.done = true
	f := pf.f
	pf.f = nil
	ps.mu.Unlock()
	// Outside the lock: the fsync queue may make it wait.
	return true, dd.commit(f, p)
}

// incomplete closes the files still missing parts and names them; nil
// when there are none.
func (ps *partFiles) incomplete(dd *dataDir) error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var names []string
	for p, pf := range ps.files {
		if pf.f != nil && pf.writers == 0 {
			dd.abort(pf.f)
			pf.f = nil
		}
		if !pf.failed && !pf.done {
			names = append(names, p)
		}
	}
	ps.files = nil
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	return fmt.Errorf("%s lacks parts (%d files in all): the backup is damaged", names[0], len(names))
}

// writePart writes one part entry: rel's piece at off, the file being size
// bytes long.
func (x *extractor) writePart(h *tar.Header, rel, target string, off, size int64, r io.Reader) error {
	if _, ok := basebackup.IncrementalTarget(rel); ok && x.incremental != nil {
		return fmt.Errorf("the INCREMENTAL file %s is stored as parts: the backup is damaged", rel)
	}
	if x.keep != nil && x.keep(rel) {
		if off == 0 && x.wrote != nil {
			x.wrote()
		}
		return nil // the tar reader reads past the content
	}
	if x.parts == nil {
		return fmt.Errorf("%s is stored as parts in a backup whose layout has none: the backup is damaged", rel)
	}
	if err := x.mkdirAll(path.Dir(rel)); err != nil {
		return err
	}
	pf, err := x.parts.begin(x.dd, target, off, h.Size, size)
	if err != nil {
		return err
	}
	buf := writeBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(x.dd.newFileWriter(pf.f, off), r, (*buf)[:writeBufSize])
	writeBufs.Put(buf)
	if err == nil && n != h.Size {
		err = fmt.Errorf("%d bytes, archive says %d", n, h.Size)
	}
	if err != nil {
		err = fmt.Errorf("write %s at offset %d: %w", target, off, err)
	}
	done, err := x.parts.end(x.dd, target, pf, err)
	if done && err == nil && x.wrote != nil {
		x.wrote()
	}
	return err
}
