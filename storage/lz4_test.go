package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// lz4Inputs are shapes the encoder must get right: empty, below the
// minimum match input, runs, random bytes, text-like repeats, mixtures
// across block boundaries, and long matches and literal runs (length
// extension bytes).
func lz4Inputs() map[string][]byte {
	rng := rand.New(rand.NewSource(7))
	random := func(n int) []byte { b := make([]byte, n); rng.Read(b); return b }
	in := map[string][]byte{
		"empty":   {},
		"one":     {42},
		"twelve":  []byte("abcdabcdabcd"),
		"thirty":  bytes.Repeat([]byte("ab"), 15),
		"zeros":   make([]byte, 3*lz4BlockMax+17),
		"random":  random(lz4BlockMax + 1000),
		"words":   bytes.Repeat([]byte("the write-ahead log of a primary, "), 40000),
		"litrun":  append(random(300), bytes.Repeat([]byte{9}, 5000)...),
		"matches": nil,
	}
	// Random slices of a small alphabet: many short matches at all offsets.
	var mix []byte
	for len(mix) < 2*lz4BlockMax+12345 {
		switch rng.Intn(4) {
		case 0:
			mix = append(mix, random(rng.Intn(40))...)
		case 1:
			if len(mix) > 0 {
				off := rng.Intn(min(len(mix), 70000)) + 1
				l := rng.Intn(300) + 1
				for range l {
					mix = append(mix, mix[len(mix)-off])
				}
			}
		case 2:
			mix = append(mix, bytes.Repeat([]byte{byte(rng.Intn(3))}, rng.Intn(600))...)
		case 3:
			mix = append(mix, "BEGIN;INSERT INTO t VALUES (1);COMMIT;"[:rng.Intn(38)]...)
		}
	}
	in["matches"] = mix
	for n := 0; n < 40; n++ {
		in["tiny"+string(rune('a'+n%26))+string(rune('0'+n/26))] = bytes.Repeat([]byte{byte(n)}, n)
	}
	return in
}

func lz4Encode(t *testing.T, data []byte, piece int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := newLZ4Writer(&buf)
	for off := 0; off < len(data); off += piece {
		if _, err := w.Write(data[off:min(len(data), off+piece)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestLZ4RoundTrip decodes every frame with pierrec/lz4, an independent
// implementation that also checks the header checksum and block sizes.
func TestLZ4RoundTrip(t *testing.T) {
	for name, data := range lz4Inputs() {
		for _, piece := range []int{1 << 20, lz4BlockMax, 4096, 1000, 1} {
			if piece == 1 && len(data) > 100000 {
				continue
			}
			frame := lz4Encode(t, data, piece)
			got, err := io.ReadAll(lz4.NewReader(bytes.NewReader(frame)))
			if err != nil {
				t.Fatalf("%s, writes of %d: decode: %v", name, piece, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("%s, writes of %d: decoded %d bytes differ from the %d written", name, piece, len(got), len(data))
			}
		}
	}
	// Compressible input shrinks; incompressible input costs only framing.
	words := lz4Inputs()["words"]
	if n := len(lz4Encode(t, words, 1<<20)); n > len(words)/10 {
		t.Fatalf("repetitive text compressed to %d of %d bytes", n, len(words))
	}
	random := lz4Inputs()["random"]
	if n := len(lz4Encode(t, random, 1<<20)); n > len(random)+64 {
		t.Fatalf("random bytes grew to %d from %d", n, len(random))
	}
}

// TestLZ4ReferenceDecoder decodes the frames with the lz4 command (the
// reference liblz4), when it is installed; CI installs it.
func TestLZ4ReferenceDecoder(t *testing.T) {
	bin, err := exec.LookPath("lz4")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("the lz4 command is missing: apt-get install lz4")
		}
		t.Skip("lz4 command not installed")
	}
	for name, data := range lz4Inputs() {
		cmd := exec.Command(bin, "-d", "-c")
		cmd.Stdin = bytes.NewReader(lz4Encode(t, data, lz4BlockMax))
		got, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: lz4 -d: %v", name, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: lz4 -d gave %d bytes, want %d equal ones", name, len(got), len(data))
		}
	}
}

func FuzzLZ4(f *testing.F) {
	f.Add([]byte("abcabcabcabcabcabcabcabc"))
	f.Add(make([]byte, 100))
	f.Fuzz(func(t *testing.T, data []byte) {
		frame := lz4Encode(t, data, 777)
		got, err := io.ReadAll(lz4.NewReader(bytes.NewReader(frame)))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round trip of %d bytes: %v", len(data), err)
		}
	})
}

// TestLZ4ObjectsOfEarlierWriters: lz4 objects stored before walkeeper had
// its own encoder hold pierrec/lz4 frames (4 MiB blocks with a content
// checksum, then 1 MiB blocks without); they are read back unchanged.
func TestLZ4ObjectsOfEarlierWriters(t *testing.T) {
	content := lz4Inputs()["matches"]
	for _, opts := range [][]lz4.Option{
		{lz4.ConcurrencyOption(1)},
		{lz4.ConcurrencyOption(1), lz4.ChecksumOption(false), lz4.BlockSizeOption(lz4.Block1Mb)},
	} {
		var body bytes.Buffer
		body.Write(encodeHeader(CodecLZ4, false))
		lw := lz4.NewWriter(&body)
		if err := lw.Apply(opts...); err != nil {
			t.Fatal(err)
		}
		lw.Write(content)
		if err := lw.Close(); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body.Bytes())
		body.Write(encodeTrailer(int64(len(content)), sum[:], nil))
		mem := NewMemory()
		if err := mem.Put(context.Background(), "wal/old.lz4", bytes.NewReader(body.Bytes())); err != nil {
			t.Fatal(err)
		}
		rd, err := NewRepository(mem, CodecZstd).Open(context.Background(), "wal/old.lz4")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rd)
		rd.Close()
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("old lz4 object: %d bytes back, %v", len(got), err)
		}
	}
}
