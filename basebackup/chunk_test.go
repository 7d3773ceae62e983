package basebackup

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

// streamEntry is one entry of a tar stream as PostgreSQL sends it.
type streamEntry struct {
	name string
	typ  byte
	data []byte
}

func regular(name string, data []byte) streamEntry { return streamEntry{name, tar.TypeReg, data} }
func directory(name string) streamEntry            { return streamEntry{name, tar.TypeDir, nil} }

// randomBytes is n bytes of reproducible random content.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// pgStream builds a tar stream of ustar headers, as PostgreSQL writes
// them; trailer adds the end-of-archive blocks (PostgreSQL before 15),
// without it the stream stops after the last entry (15 and later).
func pgStream(t *testing.T, entries []streamEntry, trailer bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o600, Size: int64(len(e.data)),
			ModTime: time.Unix(1767225600, 0), Format: tar.FormatUSTAR}
		if e.typ == tar.TypeDir {
			h.Mode = 0o700
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if trailer {
		err = tw.Close()
	} else {
		err = tw.Flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	if !trailer && bytes.HasSuffix(buf.Bytes(), endOfArchive) {
		t.Fatal("the stream without trailer ends in zero blocks: the fixture is wrong")
	}
	return buf.Bytes()
}

// splitResult is what the splitter made of a stream: the chunks as the
// backup stores them and the files counted in each.
type splitResult struct {
	chunks [][]byte
	files  []int
	split  bool
}

// runSplitter drives a tarSplitter the way backup.go does, writing the
// stream in pieces of the given lengths, used in turn.
func runSplitter(t *testing.T, stream []byte, limit int64, pieces ...int) splitResult {
	t.Helper()
	cur := &bytes.Buffer{}
	var chunks []*bytes.Buffer
	chunks = append(chunks, cur)
	files := []int{0}
	s := &tarSplitter{
		limit: limit,
		emit:  func(p []byte) error { cur.Write(p); return nil },
		cut: func() error {
			cur.Write(endOfArchive)
			cur = &bytes.Buffer{}
			chunks = append(chunks, cur)
			files = append(files, 0)
			return nil
		},
		file: func() { files[len(files)-1]++ },
	}
	for i, p := 0, stream; len(p) > 0; i++ {
		n := min(pieces[i%len(pieces)], len(p))
		if err := s.write(p[:n]); err != nil {
			t.Fatalf("write: %v", err)
		}
		p = p[n:]
	}
	// As closeCurrent.
	if !s.ended && (s.content > 0 || s.nhdr > 0) {
		t.Fatalf("the splitter is in the middle of an entry at the end of the stream (content %d, header bytes %d)", s.content, s.nhdr)
	}
	if !s.ended {
		cur.Write(endOfArchive)
	}
	res := splitResult{files: files, split: s.split}
	for _, c := range chunks {
		res.chunks = append(res.chunks, c.Bytes())
	}
	return res
}

// chunkEntry is one entry read back from a chunk.
type chunkEntry struct {
	hdr  *tar.Header
	data []byte
}

// readChunk parses a chunk completely with archive/tar.
func readChunk(t *testing.T, i int, chunk []byte) []chunkEntry {
	t.Helper()
	if len(chunk)%tarBlock != 0 {
		t.Errorf("chunk %d is %d bytes, not whole blocks", i, len(chunk))
	}
	if !bytes.HasSuffix(chunk, endOfArchive) {
		t.Errorf("chunk %d does not end with the end-of-archive blocks", i)
	}
	tr := tar.NewReader(bytes.NewReader(chunk))
	var out []chunkEntry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chunk %d: entry %d: %v", i, len(out), err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("chunk %d: %s: %v", i, h.Name, err)
		}
		if int64(len(data)) != h.Size {
			t.Fatalf("chunk %d: %s: %d bytes, header says %d", i, h.Name, len(data), h.Size)
		}
		out = append(out, chunkEntry{h, data})
	}
	return out
}

// checkSplit checks everything the splitter promises about the chunks of
// entries split at limit, and returns the entries of each chunk.
func checkSplit(t *testing.T, entries []streamEntry, res splitResult, limit int64) [][]chunkEntry {
	t.Helper()
	if len(res.chunks) != len(res.files) {
		t.Fatalf("%d chunks but %d file counts", len(res.chunks), len(res.files))
	}
	partSize := PartSize(limit)
	want := map[string][]byte{}
	split := map[string]bool{}
	for _, e := range entries {
		if e.typ == tar.TypeReg {
			want[e.name] = e.data
			padded := (int64(len(e.data)) + tarBlock - 1) / tarBlock * tarBlock
			if _, incr := IncrementalTarget(e.name); padded > limit && !incr {
				split[e.name] = true
			}
		}
	}
	got := map[string][]byte{}    // files, reassembled from their parts
	firstPart := map[string]int{} // chunk of a split file's first part
	var order []string            // the files in the order they were read
	all := make([][]chunkEntry, len(res.chunks))
	for i, chunk := range res.chunks {
		es := readChunk(t, i, chunk)
		all[i] = es
		// A chunk exceeds the limit only by its end-of-archive blocks and a
		// part's two extra header blocks.
		if int64(len(chunk)) > limit+int64(len(endOfArchive))+3*tarBlock {
			t.Errorf("chunk %d: %d bytes, over the %d byte limit", i, len(chunk), limit)
		}
		counted := 0
		partBytes := map[string]int64{}
		for j, e := range es {
			h := e.hdr
			off, isPart := h.PAXRecords[PartOffsetRecord]
			size, hasSize := h.PAXRecords[FileSizeRecord]
			if isPart != hasSize {
				t.Errorf("chunk %d: %s has records %v: both or neither expected", i, h.Name, h.PAXRecords)
			}
			if h.Typeflag == tar.TypeReg && (!isPart || off == "0") {
				counted++
			}
			if !isPart {
				if len(h.PAXRecords) != 0 {
					t.Errorf("chunk %d: %s has pax records %v", i, h.Name, h.PAXRecords)
				}
				if split[h.Name] {
					t.Errorf("chunk %d: %s is stored whole, %d bytes, larger than the %d byte limit", i, h.Name, len(e.data), limit)
				}
				if h.Typeflag == tar.TypeReg {
					if _, dup := got[h.Name]; dup {
						t.Errorf("chunk %d: %s is stored twice", i, h.Name)
					}
					got[h.Name] = e.data
					order = append(order, h.Name)
				}
				continue
			}
			if !split[h.Name] {
				t.Errorf("chunk %d: %s is stored as parts, but it fits a chunk or must not be split", i, h.Name)
			}
			if h.Typeflag != tar.TypeReg {
				t.Errorf("chunk %d: part of %s has type %q", i, h.Name, h.Typeflag)
			}
			if j != 0 {
				t.Errorf("chunk %d: part of %s at offset %s is entry %d: a part starts a chunk", i, h.Name, off, j)
			}
			if want := strconv.Itoa(len(want[h.Name])); size != want {
				t.Errorf("chunk %d: part of %s says the file is %s bytes, want %s", i, h.Name, size, want)
			}
			have := int64(len(got[h.Name]))
			if off != strconv.FormatInt(have, 10) {
				t.Errorf("chunk %d: part of %s at offset %s, want %d (the parts so far)", i, h.Name, off, have)
			}
			if wantLen := min(partSize, int64(len(want[h.Name]))-have); h.Size != wantLen {
				t.Errorf("chunk %d: part of %s at offset %s holds %d bytes, want %d", i, h.Name, off, h.Size, wantLen)
			}
			if off == "0" {
				firstPart[h.Name] = i
				order = append(order, h.Name)
			}
			partBytes[h.Name] += h.Size
			got[h.Name] = append(got[h.Name], e.data...)
		}
		for name, n := range partBytes {
			if n > partSize {
				t.Errorf("chunk %d holds %d bytes of %s, more than a part's %d", i, n, name, partSize)
			}
		}
		if counted != res.files[i] {
			t.Errorf("chunk %d: file() was called %d times, the chunk holds %d files (a split one counting in its first part's chunk)", i, res.files[i], counted)
		}
		if n, err := tarFiles(bytes.NewReader(chunk)); err != nil || n != res.files[i] {
			t.Errorf("chunk %d: verify counts %d files (%v), the backup %d", i, n, err, res.files[i])
		}
	}
	for name, data := range want {
		if !bytes.Equal(got[name], data) {
			t.Errorf("%s: restored from the chunks %d bytes, want %d bytes (equal: %v)", name, len(got[name]), len(data), bytes.Equal(got[name], data))
		}
	}
	var wantOrder []string
	for _, e := range entries {
		if e.typ == tar.TypeReg {
			wantOrder = append(wantOrder, e.name)
		}
	}
	if strings.Join(order, ",") != strings.Join(wantOrder, ",") {
		t.Errorf("files in the order %v, want the stream's %v", order, wantOrder)
	}
	total := 0
	for _, n := range res.files {
		total += n
	}
	if total != len(wantOrder) {
		t.Errorf("%d files counted, the stream has %d", total, len(wantOrder))
	}
	for name := range split {
		if _, ok := firstPart[name]; !ok {
			t.Errorf("%s has no part at offset 0", name)
		}
	}
	return all
}

// TestSplitterStoresLargeFilesAsParts: a file larger than a chunk is cut
// into parts of PartSize, each starting a chunk, each with its offset and
// the file's length; the parts put together are the file, and every other
// file is intact.
func TestSplitterStoresLargeFilesAsParts(t *testing.T) {
	const limit = 1 << 20
	big := randomBytes(1, 3<<20+1<<19+100) // 3.5 MiB + 100: the last part ends in padding
	exact := randomBytes(2, 2<<20)         // exactly two parts, no padding
	entries := []streamEntry{
		directory("base/"),
		directory("base/1/"),
		regular("PG_VERSION", []byte("17\n")),
		regular("base/1/1259", randomBytes(3, 5000)),
		regular("base/1/16384", big),
		regular("base/1/16385", exact),
		regular("base/1/2600", randomBytes(4, 8192)),
		regular("global/pg_control", randomBytes(5, 8192)),
	}
	for _, trailer := range []bool{true, false} {
		stream := pgStream(t, entries, trailer)
		for _, pieces := range [][]int{{1000, 7}, {512}, {1<<20 + 3}, {len(stream)}} {
			t.Run(fmt.Sprintf("trailer=%v/pieces=%v", trailer, pieces), func(t *testing.T) {
				res := runSplitter(t, stream, limit, pieces...)
				if !res.split {
					t.Error("split is not set, though files were stored as parts")
				}
				all := checkSplit(t, entries, res, limit)
				// The cuts: the small files; four parts; two parts; the
				// files after them.
				var layout []string
				for _, es := range all {
					var names []string
					for _, e := range es {
						n := e.hdr.Name
						if off, ok := e.hdr.PAXRecords[PartOffsetRecord]; ok {
							n += "@" + off
						}
						names = append(names, n)
					}
					layout = append(layout, strings.Join(names, " "))
				}
				want := []string{
					"base/ base/1/ PG_VERSION base/1/1259",
					"base/1/16384@0", "base/1/16384@1048576", "base/1/16384@2097152", "base/1/16384@3145728",
					"base/1/16385@0", "base/1/16385@1048576",
					"base/1/2600 global/pg_control",
				}
				if strings.Join(layout, "\n") != strings.Join(want, "\n") {
					t.Errorf("chunks:\n%s\nwant:\n%s", strings.Join(layout, "\n"), strings.Join(want, "\n"))
				}
				if want := []int{2, 1, 0, 0, 0, 1, 0, 2}; fmt.Sprint(res.files) != fmt.Sprint(want) {
					t.Errorf("files per chunk %v, want %v", res.files, want)
				}
			})
		}
	}
}

// TestSplitterPartBoundaries: a file whose padded size is the limit fits a
// chunk; one byte more makes two parts, the second of one byte. Names in
// the ustar prefix field survive in the parts' headers.
func TestSplitterPartBoundaries(t *testing.T) {
	const limit = 1 << 20
	long := "pg_tblspc_dir/" + strings.Repeat("d", 110) + "/16390" // needs the ustar prefix
	entries := []streamEntry{
		regular("base/1/fits", randomBytes(6, limit)),
		regular("base/1/over", randomBytes(7, limit+1)),
		regular(long, randomBytes(8, 2*limit+tarBlock)),
		regular("after", []byte("x")),
	}
	stream := pgStream(t, entries, false)
	res := runSplitter(t, stream, limit, 4096, 1)
	if !res.split {
		t.Error("split is not set")
	}
	all := checkSplit(t, entries, res, limit)
	var sizes []string
	for _, es := range all {
		for _, e := range es {
			sizes = append(sizes, fmt.Sprintf("%s@%s:%d", e.hdr.Name, e.hdr.PAXRecords[PartOffsetRecord], e.hdr.Size))
		}
	}
	want := []string{
		"base/1/fits@:1048576",
		"base/1/over@0:1048576", "base/1/over@1048576:1",
		long + "@0:1048576", long + "@1048576:1048576", long + "@2097152:512",
		"after@:1",
	}
	if strings.Join(sizes, " ") != strings.Join(want, " ") {
		t.Errorf("entries\n%v\nwant\n%v", sizes, want)
	}
}

// TestSplitterWithoutLargeFiles: a stream whose files all fit a chunk is
// cut as before parts existed: the bytes pass unchanged, end-of-archive
// blocks are added at each cut only, no pax record appears, split stays
// false.
func TestSplitterWithoutLargeFiles(t *testing.T) {
	const limit = 1 << 20
	entries := []streamEntry{directory("base/"), directory("base/1/")}
	for i := range 7 {
		entries = append(entries, regular(fmt.Sprintf("base/1/%d", 2600+i), randomBytes(uint64(10+i), 300<<10+37*i)))
	}
	entries = append(entries, regular("base/1/whole", randomBytes(20, limit)), regular("PG_VERSION", []byte("17\n")))
	for _, trailer := range []bool{true, false} {
		t.Run(fmt.Sprintf("trailer=%v", trailer), func(t *testing.T) {
			stream := pgStream(t, entries, trailer)
			res := runSplitter(t, stream, limit, 1000, 7)
			if res.split {
				t.Error("split is set, though no file was stored as parts")
			}
			checkSplit(t, entries, res, limit)
			// The chunks without the blocks added at the cuts are the stream.
			var joined []byte
			for i, c := range res.chunks {
				if i < len(res.chunks)-1 || !trailer {
					c = bytes.TrimSuffix(c, endOfArchive)
				}
				joined = append(joined, c...)
			}
			if !bytes.Equal(joined, stream) {
				t.Errorf("the chunks put together are %d bytes, not the %d bytes of the stream", len(joined), len(stream))
			}
			// Three 300 kB files a chunk; the 1 MiB file alone.
			if len(res.chunks) != 5 {
				t.Errorf("%d chunks, want 5", len(res.chunks))
			}
			if fmt.Sprint(res.files) != "[3 3 1 1 1]" {
				t.Errorf("files per chunk %v, want [3 3 1 1 1]", res.files)
			}
		})
	}
}

// TestSplitterNeverSplitsIncrementalFiles: an INCREMENTAL file larger
// than a chunk is one entry in a chunk of its own, also when its name
// needs the ustar prefix.
func TestSplitterNeverSplitsIncrementalFiles(t *testing.T) {
	const limit = 1 << 20
	long := "PG_17_202406281/16384/" + strings.Repeat("x", 90) + "/INCREMENTAL.16390" // the name part fits 100 bytes
	for _, name := range []string{"base/1/INCREMENTAL.1234", "./base/1/INCREMENTAL.1235", long} {
		t.Run(name[:min(len(name), 30)], func(t *testing.T) {
			content := incrementalFile(RelSegBlocks, seqBlocks(200)...) // 200 blocks: 1.6 MB
			entries := []streamEntry{
				regular("base/1/2600", randomBytes(30, 8192)),
				regular(name, content),
				regular("base/1/2601", randomBytes(31, 8192)),
			}
			res := runSplitter(t, pgStream(t, entries, false), limit, 1000, 7)
			if res.split {
				t.Error("split is set for an INCREMENTAL file")
			}
			var where []int
			for i, c := range res.chunks {
				for _, e := range readChunk(t, i, c) {
					if len(e.hdr.PAXRecords) != 0 {
						t.Errorf("chunk %d: %s has pax records %v", i, e.hdr.Name, e.hdr.PAXRecords)
					}
					if e.hdr.Name == name {
						where = append(where, i)
						if !bytes.Equal(e.data, content) {
							t.Errorf("%s: %d bytes differ from the %d sent", name, len(e.data), len(content))
						}
					}
				}
			}
			if fmt.Sprint(where) != "[1]" || len(res.chunks) != 3 {
				t.Errorf("%s is in chunks %v of %d, want only in chunk 1 of 3", name, where, len(res.chunks))
			}
			if fmt.Sprint(res.files) != "[1 1 1]" {
				t.Errorf("files per chunk %v, want [1 1 1]", res.files)
			}
		})
	}
}

func seqBlocks(n int) []uint32 {
	b := make([]uint32, n)
	for i := range b {
		b[i] = uint32(i)
	}
	return b
}

// TestPaxRecordLength: a record's leading length counts the whole record,
// its own digits included, also where adding them makes it one digit
// longer; archive/tar writes the same bytes.
func TestPaxRecordLength(t *testing.T) {
	for _, key := range []string{PartOffsetRecord, FileSizeRecord, "k"} {
		for vlen := 0; vlen <= 200; vlen++ {
			value := strings.Repeat("7", vlen)
			rec := paxRecord(key, value)
			n, rest, ok := strings.Cut(rec, " ")
			if !ok {
				t.Fatalf("%q: no space", rec)
			}
			if l, err := strconv.Atoi(n); err != nil || l != len(rec) {
				t.Errorf("key %s, value of %d bytes: the record says %s bytes, it is %d", key, vlen, n, len(rec))
			}
			if rest != key+"="+value+"\n" {
				t.Errorf("key %s, value of %d bytes: record %q", key, vlen, rec)
			}
			if vlen > 0 {
				if want := tarPaxRecord(t, key, value); rec != want {
					t.Errorf("key %s, value of %d bytes: %q, archive/tar writes %q", key, vlen, rec, want)
				}
			}
		}
	}
}

// tarPaxRecord is the record archive/tar writes for key=value.
func tarPaxRecord(t *testing.T, key, value string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Format: tar.FormatPAX,
		PAXRecords: map[string]string{key: value}}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	b := buf.Bytes()
	if len(b) < 2*tarBlock || b[156] != 'x' {
		t.Fatal("archive/tar wrote no pax header")
	}
	size, err := tarSize(b[124:136])
	if err != nil {
		t.Fatal(err)
	}
	return string(b[tarBlock : tarBlock+size])
}

// TestSplitterRefusesDamagedHeader: a header whose size field does not
// parse fails the backup instead of being cut anywhere.
func TestSplitterRefusesDamagedHeader(t *testing.T) {
	stream := pgStream(t, []streamEntry{regular("base/1/1", randomBytes(40, 100))}, false)
	copy(stream[124:136], "99999999999z")
	s := &tarSplitter{limit: 1 << 20, emit: func([]byte) error { return nil }, cut: func() error { return nil }, file: func() {}}
	if err := s.write(stream); err == nil || !strings.Contains(err.Error(), "damaged header") {
		t.Errorf("write: %v, want a damaged header", err)
	}
}

// TestSplitterPassesWriteErrors: an error of the chunk writer while a
// part's headers or content are written ends the stream.
func TestSplitterPassesWriteErrors(t *testing.T) {
	stream := pgStream(t, []streamEntry{regular("base/1/big", randomBytes(41, 3<<20))}, false)
	boom := errors.New("boom")
	for _, failAt := range []int{1, 2, 3, 5} { // the pax header, its records, the part's header, content
		calls := 0
		s := &tarSplitter{limit: 1 << 20, cut: func() error { return nil }, file: func() {},
			emit: func([]byte) error {
				calls++
				if calls == failAt {
					return boom
				}
				return nil
			}}
		var err error
		for p := stream; len(p) > 0 && err == nil; p = p[min(len(p), 4096):] {
			err = s.write(p[:min(len(p), 4096)])
		}
		if !errors.Is(err, boom) {
			t.Errorf("emit failing at call %d: write returned %v", failAt, err)
		}
	}
}

// TestRunRefusesSmallChunks: a chunk limit below 1 MiB is refused before
// anything connects or is written (a part holds whole MiB, and pg_control
// must never be split).
func TestRunRefusesSmallChunks(t *testing.T) {
	for _, size := range []int64{-1, 4096, MinChunkSize - 1} {
		_, err := Run(t.Context(), Options{DSN: "host=/nonexistent", ChunkSize: size})
		if err == nil || !strings.Contains(err.Error(), "below the minimum of 1 MiB") {
			t.Errorf("ChunkSize %d: %v", size, err)
		}
	}
}
