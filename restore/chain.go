package restore

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
)

// Restoring an incremental backup (docs/restore.md, "Incremental
// backups"). The chain is read newest first, each member once, its chunks
// in parallel:
//
//  1. The newest member is extracted like a full backup, except that each
//     INCREMENTAL.<name> file becomes <name> at its final length, holding
//     the blocks it supplies; what it still needs from older members (the
//     blocks below its truncation length it does not hold) is remembered
//     per file as a bitmap.
//  2. Each older member, newest to oldest, is streamed; only the blocks of
//     files that still need them are written (an incremental file supplies
//     the needed blocks it holds, a full file all needed blocks it is long
//     enough for, and ends the file's search), everything else is read
//     past (and so checked).
//
// Every block of the result is written once; nothing older than the newest
// member decides which files exist (its tar lists every file, full or
// incremental), so files dropped later are not resurrected. Memory: a
// bitmap of the needed blocks per pending file (at most 16 kB for a 1 GB
// segment) and one 1 MiB write buffer per worker.

// pending is a reconstructed file that still needs blocks from older
// members.
type pending struct {
	mu   sync.Mutex
	path string // in the target
	name string // as the manifest names it
	// limit is the newest incremental file's truncation length: older
	// members supply blocks below it only.
	limit uint32
	need  []uint64 // bitmap of the blocks below limit still needed
	left  int
	seen  bool // found in the member being read
	// partBytes is how much of a full copy stored as parts the member
	// being read supplied so far, of partTotal.
	partBytes, partTotal int64
	partExt              extents
}

// part is where one part of a file stored as parts lies in it.
type part struct{ off, total int64 }

func (p *pending) needs(b uint32) bool {
	return b < p.limit && p.need[b/64]&(1<<(b%64)) != 0
}

func (p *pending) got(b uint32) {
	p.need[b/64] &^= 1 << (b % 64)
	p.left--
}

// chainState is what step 1 leaves for step 2.
type chainState struct {
	mu      sync.Mutex
	pending map[string]*pending // by root OID + "/" + path in its archive
	// rebuilt maps the manifest path of every INCREMENTAL file to the
	// reconstructed file in the target.
	rebuilt map[string]string
}

func pendingKey(oid, rel string) string { return oid + "/" + rel }

// manifestPath is how backup_manifest names a file of a tablespace archive.
func manifestPath(oid, rel string) string {
	if oid == "" {
		return rel
	}
	return "pg_tblspc/" + oid + "/" + rel
}

// loadChain reads the backup.json of every member of meta's chain, oldest
// first (meta last), and checks that they link up: each member is complete,
// of the same cluster, and the one its successor was taken against.
func loadChain(ctx context.Context, repo *storage.Repository, meta *basebackup.Meta) ([]*basebackup.Meta, error) {
	var chain []*basebackup.Meta
	for i, id := range meta.Chain {
		var m basebackup.Meta
		if err := repo.ReadJSON(ctx, storage.BackupMetaKey(id), &m); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				return nil, fmt.Errorf("backup %s is incremental and needs backup %s of its chain, which is not in %s (deleted, or never completed): restore another backup",
					meta.ID, id, repo)
			}
			return nil, fmt.Errorf("backup %s needs backup %s of its chain: %s: %w", meta.ID, id, storage.BackupMetaKey(id), err)
		}
		switch {
		case m.ID != id:
			return nil, fmt.Errorf("backup %s: chain member %s's backup.json names backup %s: the repository is damaged", meta.ID, id, m.ID)
		case m.SystemIdentifier != meta.SystemIdentifier:
			return nil, fmt.Errorf("backup %s: chain member %s is of another cluster (system identifier %s, not %s)", meta.ID, id, m.SystemIdentifier, meta.SystemIdentifier)
		case i == 0 && m.IsIncremental():
			return nil, fmt.Errorf("backup %s: the first member of its chain, %s, is not a full backup", meta.ID, id)
		case i > 0 && (!m.IsIncremental() || m.Parent != meta.Chain[i-1] || !slices.Equal(m.Chain, meta.Chain[:i])):
			return nil, fmt.Errorf("backup %s: chain member %s does not follow %s: the chains disagree", meta.ID, id, meta.Chain[i-1])
		}
		chain = append(chain, &m)
	}
	if len(meta.Chain) == 0 || meta.Parent != meta.Chain[len(meta.Chain)-1] {
		return nil, fmt.Errorf("backup %s is incremental but backup.json records no chain ending at its parent %q", meta.ID, meta.Parent)
	}
	return append(chain, meta), nil
}

// checkMembersStored makes sure every object of the older members is in
// the repository before anything is written, so a deleted part of a chain
// is refused before the restore starts, naming the object.
func checkMembersStored(ctx context.Context, repo *storage.Repository, members []*basebackup.Meta) error {
	for _, m := range members {
		stored := map[string]int64{}
		err := repo.Backend().List(ctx, storage.BackupsPrefix+m.ID+"/", func(o storage.ObjectInfo) error {
			stored[o.Key] = o.Size
			return nil
		})
		if err != nil {
			return fmt.Errorf("list backup %s: %w", m.ID, err)
		}
		for _, o := range m.Objects {
			if size, ok := stored[o.Key]; !ok {
				return fmt.Errorf("%s, part of backup %s in the chain, is missing from the repository: the chain cannot be restored", o.Key, m.ID)
			} else if o.StoredSize > 0 && size != o.StoredSize {
				return fmt.Errorf("%s, part of backup %s in the chain, has %d bytes, backup.json says %d: %w", o.Key, m.ID, size, o.StoredSize, storage.ErrCorrupt)
			}
		}
	}
	return nil
}

// writeIncremental is step 1 for one INCREMENTAL file of the newest
// member: rel is its path in the archive of tablespace oid, written below
// root.
func (r *restorer) writeIncremental(x *extractor, oid, rel string, size int64, content io.Reader) error {
	bare, _ := basebackup.IncrementalTarget(rel)
	h, err := basebackup.ReadIncrementalHeader(content)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	if h.Size() != size {
		return fmt.Errorf("%s: %w: %d bytes for %d blocks, the header says %d", rel, basebackup.ErrBadIncremental, size, len(h.Blocks), h.Size())
	}
	if err := x.mkdirAll(path.Dir(bare)); err != nil {
		return err
	}
	target := filepath.Join(x.root, filepath.FromSlash(bare))
	f, err := r.dd.create(target)
	if err != nil {
		return err
	}
	w := &blockWriter{f: f, buf: r.buffer()}
	defer r.release(w.buf)
	err = w.truncate(int64(h.Length()) * basebackup.BlockSize)
	p := &pending{path: target, name: manifestPath(oid, bare), limit: h.TruncationBlocks}
	p.need = make([]uint64, (int(p.limit)+63)/64)
	for b := range p.limit {
		p.need[b/64] |= 1 << (b % 64)
	}
	p.left = int(p.limit)
	block := make([]byte, basebackup.BlockSize)
	for _, b := range h.Blocks {
		if err != nil {
			break
		}
		if _, err = io.ReadFull(content, block); err != nil {
			break
		}
		err = w.add(b, block)
		if b < p.limit && p.needs(b) {
			p.got(b)
		}
	}
	if err == nil {
		err = w.flush()
	}
	if err != nil {
		r.dd.abort(f)
		return fmt.Errorf("write %s: %w", target, err)
	}
	if err := r.dd.commit(f, target); err != nil {
		return err
	}
	r.chain.mu.Lock()
	defer r.chain.mu.Unlock()
	r.chain.rebuilt[manifestPath(oid, rel)] = target
	if p.left > 0 {
		r.chain.pending[pendingKey(oid, bare)] = p
	}
	return nil
}

// olderMembers is step 2: each older member, newest first, supplies the
// blocks still needed.
func (r *restorer) olderMembers(ctx context.Context, members []*basebackup.Meta) error {
	for i := len(members) - 1; i >= 0; i-- {
		m := members[i]
		if len(r.chain.pending) == 0 {
			r.log.Debug("no block is needed from the older members", "from", m.ID)
		}
		if err := m.CheckLayout(); err != nil {
			return err
		}
		if !m.Chunked() {
			return fmt.Errorf("backup %s in the chain has archive layout %d; incremental chains need chunked backups", m.ID, m.Layout())
		}
		objects := map[string]basebackup.Object{}
		for _, o := range m.Objects {
			objects[o.Name] = o
		}
		type memberJob struct {
			obj basebackup.Object
			oid string
		}
		var jobs []memberJob
		for _, ts := range m.Tablespaces {
			for _, name := range ts.Chunks {
				obj, ok := objects[name]
				if !ok {
					return fmt.Errorf("backup %s lists tablespace archive %s but has no such object", m.ID, name)
				}
				jobs = append(jobs, memberJob{obj, ts.OID})
			}
		}
		slices.SortStableFunc(jobs, func(a, b memberJob) int { return int(min(max(b.obj.Size-a.obj.Size, -1), 1)) })
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.opts.Parallel)
		for _, j := range jobs {
			g.Go(func() error { return r.memberChunk(gctx, m, j.obj, j.oid) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		for key, p := range r.chain.pending {
			if !p.seen {
				return fmt.Errorf("backup %s of the chain has no copy of %s, which the newer backups hold as an incremental file: the chain is damaged", m.ID, p.name)
			}
			if p.partBytes != 0 && p.partBytes != p.partTotal {
				return fmt.Errorf("backup %s of the chain holds %d of the %d bytes of %s as parts: the chain is damaged", m.ID, p.partBytes, p.partTotal, p.name)
			}
			p.seen, p.partBytes, p.partExt = false, 0, nil
			if p.left == 0 {
				delete(r.chain.pending, key)
			}
		}
		r.log.Debug("read chain member", "member", m.ID, "files still needing blocks", len(r.chain.pending))
	}
	for _, p := range r.chain.pending {
		return fmt.Errorf("no backup of the chain has a full copy of %s: the chain is damaged", p.name)
	}
	return nil
}

// memberChunk streams one chunk of an older member and writes the blocks
// it supplies. The chunk is read to its end and checked like any other.
func (r *restorer) memberChunk(ctx context.Context, m *basebackup.Meta, obj basebackup.Object, oid string) error {
	rd, err := r.opts.Repo.Open(ctx, obj.Key)
	if err != nil {
		return fmt.Errorf("open %s (backup %s of the chain): %w", obj.Key, m.ID, err)
	}
	defer rd.Close()
	buf := r.buffer()
	defer r.release(buf)
	tr := tar.NewReader(&countingReader{r: rd, n: &r.bytesDone, report: r.report})
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			err = fmt.Errorf("read archive: %w", err)
			if cerr := rd.CheckStored(); cerr != nil {
				err = cerr
			}
			return fmt.Errorf("restore %s: %w", obj.Key, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		rel := path.Clean(h.Name)
		bare, incremental := basebackup.IncrementalTarget(rel)
		if !incremental {
			bare = rel
		}
		r.chain.mu.Lock()
		p := r.chain.pending[pendingKey(oid, bare)]
		r.chain.mu.Unlock()
		if p == nil {
			continue // not needed: the tar reader reads past it
		}
		off, total, isPart, err := partOf(h)
		if err == nil && isPart && m.Layout() < basebackup.LayoutParts {
			err = fmt.Errorf("%s is stored as parts in a backup whose layout has none: the backup is damaged", rel)
		}
		if err == nil && isPart && incremental {
			err = fmt.Errorf("the INCREMENTAL file %s is stored as parts: the backup is damaged", rel)
		}
		if err != nil {
			return fmt.Errorf("restore %s (backup %s of the chain): %w", obj.Key, m.ID, err)
		}
		var pt *part
		if isPart {
			pt = &part{off: off, total: total}
		}
		if err := r.supply(p, tr, h.Size, incremental, pt, buf); err != nil {
			if cerr := rd.CheckStored(); cerr != nil {
				err = cerr
			}
			return fmt.Errorf("restore %s (backup %s of the chain), %s: %w", obj.Key, m.ID, rel, err)
		}
	}
	return finishObject(rd, obj, m.ID)
}

// supply writes the blocks p needs from one older copy of its file: an
// incremental one (the needed blocks it holds) or a full one (every needed
// block it is long enough for; no older copy is consulted after it).
//
// pt is set when content is one part of a full copy stored as parts: it
// supplies the needed blocks in its range, and the search ends once every
// part of the copy has been read.
func (r *restorer) supply(p *pending, content io.Reader, size int64, incremental bool, pt *part, buf []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.seen && (pt == nil || p.partBytes == 0):
		return errors.New("the file is in the backup twice")
	case pt != nil && p.partBytes > 0 && pt.total != p.partTotal:
		return fmt.Errorf("its parts disagree on its length (%d, %d bytes): the backup is damaged", p.partTotal, pt.total)
	case pt != nil && (pt.off%basebackup.BlockSize != 0 || p.partBytes+size > pt.total):
		return fmt.Errorf("its part at offset %d does not fit the file: the backup is damaged", pt.off)
	case pt != nil:
		// Distinct ranges adding up to the length cover the file.
		if err := p.partExt.claim(pt.off, size); err != nil {
			return fmt.Errorf("%w: the backup is damaged", err)
		}
	}
	p.seen = true
	f, err := r.dd.openWrite(p.path)
	if err != nil {
		return err
	}
	w := &blockWriter{f: f, buf: buf}
	block := make([]byte, basebackup.BlockSize)
	if incremental {
		var h basebackup.IncrementalHeader
		h, err = basebackup.ReadIncrementalHeader(content)
		if err == nil && h.Size() != size {
			err = fmt.Errorf("%w: %d bytes for %d blocks, the header says %d", basebackup.ErrBadIncremental, size, len(h.Blocks), h.Size())
		}
		for _, b := range h.Blocks {
			if err != nil || p.left == 0 {
				break
			}
			if _, err = io.ReadFull(content, block); err != nil {
				break
			}
			if p.needs(b) {
				p.got(b)
				err = w.add(b, block)
			}
		}
	} else if pt != nil {
		first := uint32(pt.off / basebackup.BlockSize)
		n := uint32(min((pt.off+size)/basebackup.BlockSize, int64(p.limit)))
		for b := first; b < n && p.left > 0 && err == nil; b++ {
			if _, err = io.ReadFull(content, block); err != nil {
				break
			}
			if p.needs(b) {
				p.got(b)
				err = w.add(b, block)
			}
		}
		p.partTotal = pt.total
		p.partBytes += size
		if p.partBytes == pt.total {
			p.left = 0 // the whole full copy was read: as below
		}
	} else {
		n := uint32(min(size/basebackup.BlockSize, int64(p.limit)))
		for b := uint32(0); b < n && p.left > 0 && err == nil; b++ {
			if _, err = io.ReadFull(content, block); err != nil {
				break
			}
			if p.needs(b) {
				p.got(b)
				err = w.add(b, block)
			}
		}
		// Blocks past a short full copy stay zero, as PostgreSQL's
		// pg_combinebackup leaves them; nothing older is consulted.
		p.left = 0
	}
	if err == nil {
		err = w.flush()
	}
	if err != nil {
		r.dd.abort(f)
		return err
	}
	return r.dd.commit(f, p.path)
}

// blockWriter writes blocks at their offsets, runs of consecutive blocks
// in one write.
type blockWriter struct {
	f     outFile
	buf   []byte // capacity: the longest run written at once
	start uint32 // first block of the run in buf
}

func (w *blockWriter) add(b uint32, block []byte) error {
	if len(w.buf) > 0 && (b != w.start+uint32(len(w.buf)/basebackup.BlockSize) || len(w.buf)+len(block) > cap(w.buf)) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if len(w.buf) == 0 {
		w.start = b
	}
	w.buf = append(w.buf, block...)
	return nil
}

func (w *blockWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.f.WriteAt(w.buf, int64(w.start)*basebackup.BlockSize)
	w.buf = w.buf[:0]
	return err
}

func (w *blockWriter) truncate(size int64) error { return w.f.Truncate(size) }

// writeBufSize is the longest run of blocks written at once.
const writeBufSize = 1 << 20

var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, writeBufSize); return &b }}

func (r *restorer) buffer() []byte { return (*writeBufs.Get().(*[]byte))[:0] }

func (r *restorer) release(b []byte) { b = b[:0]; writeBufs.Put(&b) }
