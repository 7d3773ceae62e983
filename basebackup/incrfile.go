package basebackup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// The INCREMENTAL.<name> files of an incremental backup (PostgreSQL 17
// and 18, sendFile in src/backend/backup/basebackup.c; read back by
// src/bin/pg_combinebackup/reconstruct.c), in the server's byte order
// (little-endian on every platform walkeeper is built for):
//
//	uint32 magic            0xd3ae1f0d
//	uint32 block count      n, at most RELSEG_SIZE
//	uint32 truncation block length
//	uint32 block numbers[n] relative to the segment file, ascending
//	zero padding            to a multiple of BLCKSZ, only when n > 0
//	n blocks of BLCKSZ      in the order of the block numbers
//
// The reconstructed file is max(truncation length, last block + 1) blocks
// long. A block below the truncation length that the file does not hold
// comes from the newest older backup in the chain that has it (an older
// incremental file that holds it, or the full file if it is that long;
// otherwise it is zero); blocks at or past the truncation length come only
// from this file.
const (
	IncrementalMagic  = 0xd3ae1f0d
	IncrementalPrefix = "INCREMENTAL."
	// BlockSize is BLCKSZ, the only one walkeeper supports (PostgreSQL's
	// default; the server's block_size).
	BlockSize = 8192
	// RelSegBlocks is RELSEG_SIZE: blocks per relation segment file.
	RelSegBlocks = 131072
)

// IncrementalHeader is the header of an INCREMENTAL file.
type IncrementalHeader struct {
	// Blocks are the block numbers the file holds, in file order.
	Blocks []uint32
	// TruncationBlocks is the truncation block length.
	TruncationBlocks uint32
	// Len is the header's length in bytes, padding included: the first
	// block starts there.
	Len int64
}

// ErrBadIncremental marks an INCREMENTAL file that does not parse.
var ErrBadIncremental = errors.New("bad incremental file")

// ReadIncrementalHeader reads the header, padding included, from r; r is
// then at the first block.
func ReadIncrementalHeader(r io.Reader) (IncrementalHeader, error) {
	var h IncrementalHeader
	var fixed [12]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return h, fmt.Errorf("%w: header: %v", ErrBadIncremental, err)
	}
	le := binary.LittleEndian
	if m := le.Uint32(fixed[0:]); m != IncrementalMagic {
		return h, fmt.Errorf("%w: magic 0x%x, not 0x%x", ErrBadIncremental, m, uint32(IncrementalMagic))
	}
	n := le.Uint32(fixed[4:])
	h.TruncationBlocks = le.Uint32(fixed[8:])
	if n > RelSegBlocks || h.TruncationBlocks > RelSegBlocks {
		return h, fmt.Errorf("%w: %d blocks, truncation length %d: more than a segment's %d", ErrBadIncremental, n, h.TruncationBlocks, RelSegBlocks)
	}
	raw := make([]byte, 4*int(n))
	if _, err := io.ReadFull(r, raw); err != nil {
		return h, fmt.Errorf("%w: block numbers: %v", ErrBadIncremental, err)
	}
	h.Blocks = make([]uint32, n)
	for i := range h.Blocks {
		h.Blocks[i] = le.Uint32(raw[4*i:])
		if h.Blocks[i] >= RelSegBlocks {
			return h, fmt.Errorf("%w: block number %d past a segment's %d blocks", ErrBadIncremental, h.Blocks[i], RelSegBlocks)
		}
	}
	h.Len = 12 + 4*int64(n)
	if n > 0 && h.Len%BlockSize != 0 {
		pad := BlockSize - h.Len%BlockSize
		if _, err := io.CopyN(io.Discard, r, pad); err != nil {
			return h, fmt.Errorf("%w: padding: %v", ErrBadIncremental, err)
		}
		h.Len += pad
	}
	return h, nil
}

// Size is the length in bytes the file's content must have.
func (h IncrementalHeader) Size() int64 { return h.Len + int64(len(h.Blocks))*BlockSize }

// Length is the reconstructed file's length in blocks.
func (h IncrementalHeader) Length() uint32 {
	n := h.TruncationBlocks
	for _, b := range h.Blocks {
		if b >= n {
			n = b + 1
		}
	}
	return n
}

// IncrementalTarget is the file an INCREMENTAL file reconstructs (the
// path with the prefix taken off its last element); ok is false for any
// other path.
func IncrementalTarget(p string) (string, bool) {
	dir, base := path.Split(p)
	bare, ok := strings.CutPrefix(base, IncrementalPrefix)
	if !ok || bare == "" {
		return "", false
	}
	return dir + bare, true
}
