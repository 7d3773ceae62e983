package basebackup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// incrementalFile builds an INCREMENTAL file as PostgreSQL 17/18 send it.
func incrementalFile(trunc uint32, blocks ...uint32) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write(le.AppendUint32(nil, IncrementalMagic))
	b.Write(le.AppendUint32(nil, uint32(len(blocks))))
	b.Write(le.AppendUint32(nil, trunc))
	for _, n := range blocks {
		b.Write(le.AppendUint32(nil, n))
	}
	if len(blocks) > 0 && b.Len()%BlockSize != 0 {
		b.Write(make([]byte, BlockSize-b.Len()%BlockSize))
	}
	for _, n := range blocks {
		b.Write(bytes.Repeat([]byte{byte(n)}, BlockSize))
	}
	return b.Bytes()
}

func TestReadIncrementalHeader(t *testing.T) {
	for _, tc := range []struct {
		name           string
		trunc          uint32
		blocks         []uint32
		wantLen        int64
		wantBlockCount uint32
	}{
		{"no blocks: no padding", 5, nil, 12, 5},
		{"two blocks: padded to a block", 3, []uint32{0, 7}, BlockSize, 8},
		{"truncated below its blocks", 0, []uint32{2}, BlockSize, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := incrementalFile(tc.trunc, tc.blocks...)
			r := bytes.NewReader(raw)
			h, err := ReadIncrementalHeader(r)
			if err != nil {
				t.Fatal(err)
			}
			if h.Len != tc.wantLen || h.Size() != int64(len(raw)) || h.Length() != tc.wantBlockCount || h.TruncationBlocks != tc.trunc {
				t.Errorf("header %+v (size %d, length %d), want len %d size %d length %d", h, h.Size(), h.Length(), tc.wantLen, len(raw), tc.wantBlockCount)
			}
			rest, _ := io.ReadAll(r)
			if len(tc.blocks) > 0 && rest[0] != byte(tc.blocks[0]) {
				t.Errorf("reader is not at the first block")
			}
		})
	}
	bad := incrementalFile(1, 1)
	bad[0] ^= 1
	if _, err := ReadIncrementalHeader(bytes.NewReader(bad)); !errors.Is(err, ErrBadIncremental) {
		t.Errorf("bad magic: %v", err)
	}
	if _, err := ReadIncrementalHeader(bytes.NewReader(incrementalFile(1, 1)[:20])); !errors.Is(err, ErrBadIncremental) {
		t.Errorf("truncated header: %v", err)
	}
}

func TestIncrementalTarget(t *testing.T) {
	for in, want := range map[string]string{
		"base/5/INCREMENTAL.16384":                  "base/5/16384",
		"INCREMENTAL.1259_fsm":                      "1259_fsm",
		"PG_17_202406281/16385/INCREMENTAL.16390.1": "PG_17_202406281/16385/16390.1",
		"base/5/16384":                              "",
		"base/5/INCREMENTAL.":                       "",
	} {
		got, ok := IncrementalTarget(in)
		if got != want || ok != (want != "") {
			t.Errorf("IncrementalTarget(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func FuzzReadIncrementalHeader(f *testing.F) {
	f.Add(incrementalFile(3, 0, 2))
	f.Add(incrementalFile(0))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadIncrementalHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		if h.Len > int64(len(data)) || int(h.Length()) > RelSegBlocks {
			t.Fatalf("header %+v from %d bytes", h, len(data))
		}
	})
}
