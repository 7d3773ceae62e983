package storage

import (
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"sync"
	"unsafe"
)

// walkeeper's own LZ4 frame writer. Objects stay standard LZ4 frames that
// any LZ4 reader (pierrec/lz4 on the read side, the lz4 command) decodes;
// only the encoder is ours, because WAL streaming spends most of its CPU in
// it. The encoder is the classic greedy LZ4 search with a 4096-entry table
// of 32-bit positions (16 KiB, resident in the L1 cache, cleared per block)
// and the usual acceleration over incompressible input. Frame: independent
// 256 KiB blocks, no content or block checksums (the envelope's SHA-256
// covers every stored byte), a block that does not shrink is stored raw.

const (
	lz4Magic      = 0x184D2204
	lz4BlockMax   = 256 << 10
	lz4HashLog    = 12
	lz4MinMatch   = 4
	lz4LastLits   = 5  // the last 5 bytes of a block are always literals
	lz4MatchLimit = 12 // a match must start at least 12 bytes before the end
	lz4MaxOffset  = 65535
	lz4SkipTrig   = 6
	lz4RawBlock   = 1 << 31 // block size flag: stored uncompressed
)

// lz4FrameHeader is magic, FLG (version 01, independent blocks, nothing
// else), BD (256 KiB maximum block) and the header checksum byte.
var lz4FrameHeader = func() []byte {
	h := binary.LittleEndian.AppendUint32(nil, lz4Magic)
	h = append(h, 0x60, 0x50)
	return append(h, byte(xxh32(h[4:6])>>8))
}()

// xxh32 is XXH32 with seed 0 for short inputs (under 16 bytes): the frame
// header checksum.
func xxh32(p []byte) uint32 {
	const p1, p2, p3, p4, p5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
	h := uint32(p5) + uint32(len(p))
	for ; len(p) >= 4; p = p[4:] {
		h += binary.LittleEndian.Uint32(p) * p3
		h = bits.RotateLeft32(h, 17) * p4
	}
	for _, b := range p {
		h += uint32(b) * p5
		h = bits.RotateLeft32(h, 11) * p1
	}
	h ^= h >> 15
	h *= p2
	h ^= h >> 13
	h *= p3
	h ^= h >> 16
	return h
}

// lz4Bound is the largest compressed size of an n-byte block.
func lz4Bound(n int) int { return n + n/255 + 16 }

type lz4Buffers struct {
	block []byte // input gathered for the next block
	out   []byte // the block size word and its compressed bytes
	table [1 << lz4HashLog]uint32
}

var lz4Pool = sync.Pool{New: func() any {
	return &lz4Buffers{block: make([]byte, 0, lz4BlockMax), out: make([]byte, 4+lz4Bound(lz4BlockMax))}
}}

// lz4Writer writes one LZ4 frame onto w. Whole blocks handed to Write are
// compressed in place, without a copy.
type lz4Writer struct {
	w      io.Writer
	b      *lz4Buffers
	header bool
	err    error
}

func newLZ4Writer(w io.Writer) *lz4Writer {
	return &lz4Writer{w: w, b: lz4Pool.Get().(*lz4Buffers)}
}

var errLZ4Closed = errors.New("lz4 writer is closed")

func (z *lz4Writer) Write(p []byte) (int, error) {
	if z.err != nil {
		return 0, z.err
	}
	n := 0
	for len(p) > 0 {
		if len(z.b.block) == 0 && len(p) >= lz4BlockMax {
			if err := z.flush(p[:lz4BlockMax]); err != nil {
				return n, err
			}
			p, n = p[lz4BlockMax:], n+lz4BlockMax
			continue
		}
		k := min(len(p), lz4BlockMax-len(z.b.block))
		z.b.block = append(z.b.block, p[:k]...)
		p, n = p[k:], n+k
		if len(z.b.block) == lz4BlockMax {
			if err := z.flush(z.b.block); err != nil {
				return n, err
			}
			z.b.block = z.b.block[:0]
		}
	}
	return n, nil
}

// flush writes src as one block, compressed when that makes it smaller.
func (z *lz4Writer) flush(src []byte) error {
	if !z.header {
		z.header = true
		if _, err := z.w.Write(lz4FrameHeader); err != nil {
			z.err = err
			return err
		}
	}
	out := z.b.out
	n := lz4CompressBlock(src, out[4:], &z.b.table)
	var err error
	if n > 0 && n < len(src) {
		binary.LittleEndian.PutUint32(out, uint32(n))
		_, err = z.w.Write(out[:4+n])
	} else {
		binary.LittleEndian.PutUint32(out, uint32(len(src))|lz4RawBlock)
		if _, err = z.w.Write(out[:4]); err == nil {
			_, err = z.w.Write(src)
		}
	}
	if err != nil {
		z.err = err
	}
	return err
}

// Close writes the last block and the end mark; it does not close w.
func (z *lz4Writer) Close() error {
	if z.b == nil {
		return z.err // closed already
	}
	err := z.err
	if err == nil && len(z.b.block) > 0 {
		err = z.flush(z.b.block)
	}
	if err == nil && !z.header {
		_, err = z.w.Write(lz4FrameHeader)
	}
	if err == nil {
		_, err = z.w.Write([]byte{0, 0, 0, 0})
	}
	z.b.block = z.b.block[:0]
	lz4Pool.Put(z.b)
	z.b = nil
	if err != nil {
		z.err = err
	} else {
		z.err = errLZ4Closed
	}
	return err
}

func lz4Hash(u uint32) uint32 { return (u * 2654435761) >> (32 - lz4HashLog) }

// lz4CompressBlock compresses src into dst (at least lz4Bound(len(src))
// bytes) in the LZ4 block format and returns the compressed size. table
// holds position+1 of the last occurrence of each hashed 4-byte sequence.
func lz4CompressBlock(src, dst []byte, table *[1 << lz4HashLog]uint32) int {
	*table = [1 << lz4HashLog]uint32{}
	n := len(src)
	di, anchor := 0, 0
	if n >= lz4MatchLimit+1 {
		// The search reads 4 bytes at si and at a candidate, the match
		// extension 8 at end and end-offset, without bounds checks: si <
		// sLimit, cand < si and end+8 <= mLimit keep every read inside
		// src. These loops are where the encoder spends its time (the
		// checked loads made it 1.7x slower on bulk-load WAL).
		base := unsafe.Pointer(unsafe.SliceData(src))
		load32 := func(i int) uint32 {
			return binary.LittleEndian.Uint32(unsafe.Slice((*byte)(unsafe.Add(base, i)), 4))
		}
		load64 := func(i int) uint64 {
			return binary.LittleEndian.Uint64(unsafe.Slice((*byte)(unsafe.Add(base, i)), 8))
		}
		sLimit := n - lz4MatchLimit // a match starts before this
		mLimit := n - lz4LastLits   // and ends at or before this
		si := 0
		for si < sLimit {
			// Find a match at si, stepping faster the longer none is found.
			var ref int
			found := false
			search := 1 << lz4SkipTrig
			for si < sLimit {
				seq := load32(si)
				h := lz4Hash(seq)
				cand := int(table[h]) - 1
				table[h] = uint32(si + 1)
				if cand >= 0 && si-cand <= lz4MaxOffset && load32(cand) == seq {
					ref, found = cand, true
					break
				}
				si += search >> lz4SkipTrig
				search++
			}
			if !found {
				break
			}
			// Extend backwards over literals, then forwards.
			for si > anchor && ref > 0 && src[si-1] == src[ref-1] {
				si--
				ref--
			}
			end := si + lz4MinMatch
			for end+8 <= mLimit {
				x := load64(end) ^ load64(end-(si-ref))
				if x != 0 {
					end += bits.TrailingZeros64(x) >> 3
					goto matched
				}
				end += 8
			}
			for end < mLimit && src[end] == src[end-(si-ref)] {
				end++
			}
		matched:
			if nl, m := si-anchor, end-si-lz4MinMatch; nl < 15 && m < 15 && di+17 <= len(dst) && anchor+16 <= n {
				// The common short sequence, written here: token, up to
				// 14 literals copied as two 8-byte words, offset.
				dst[di] = byte(nl)<<4 | byte(m)
				binary.LittleEndian.PutUint64(dst[di+1:], binary.LittleEndian.Uint64(src[anchor:]))
				binary.LittleEndian.PutUint64(dst[di+9:], binary.LittleEndian.Uint64(src[anchor+8:]))
				di += 1 + nl
				dst[di], dst[di+1] = byte(si-ref), byte((si-ref)>>8)
				di += 2
			} else {
				di = lz4Sequence(dst, di, src, anchor, si, si-ref, end-si)
			}
			si, anchor = end, end
			if si >= sLimit {
				break
			}
			// Remember a position inside the match for later searches.
			table[lz4Hash(load32(si-2))] = uint32(si - 2 + 1)
		}
	}
	// The last literals.
	lits := src[anchor:]
	di = lz4Length(dst, di, len(lits), 0)
	di += copy(dst[di:], lits)
	return di
}

// lz4Length writes a token whose literal length is lits (and match-length
// nibble ml) with the literal length's extra bytes; it returns the next
// index.
func lz4Length(dst []byte, di, lits int, ml byte) int {
	if lits < 15 {
		dst[di] = byte(lits)<<4 | ml
		return di + 1
	}
	dst[di] = 0xF0 | ml
	di++
	for l := lits - 15; ; l -= 255 {
		if l < 255 {
			dst[di] = byte(l)
			return di + 1
		}
		dst[di] = 255
		di++
	}
}

// lz4Sequence writes the literals src[from:to] then a match of length ml
// at offset off. Literals are copied 8 bytes at a time while dst has room
// for the overshoot (src always has 8 bytes past a sequence's literals: a
// match follows them): most runs are short, and a copy call per run cost
// more than the bytes.
func lz4Sequence(dst []byte, di int, src []byte, from, to, off, ml int) int {
	m := ml - lz4MinMatch
	nib := byte(min(m, 15))
	nlits := to - from
	di = lz4Length(dst, di, nlits, nib)
	if di+nlits+8 <= len(dst) {
		for i := 0; i < nlits; i += 8 {
			binary.LittleEndian.PutUint64(dst[di+i:], binary.LittleEndian.Uint64(src[from+i:]))
		}
		di += nlits
	} else {
		di += copy(dst[di:], src[from:to])
	}
	dst[di], dst[di+1] = byte(off), byte(off>>8)
	di += 2
	if m >= 15 {
		for m -= 15; m >= 255; m -= 255 {
			dst[di] = 255
			di++
		}
		dst[di] = byte(m)
		di++
	}
	return di
}
