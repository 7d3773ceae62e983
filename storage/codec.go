package storage

import (
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Codec is a compression format. Its numeric value is what the object
// header records, so the values never change.
type Codec byte

// The codecs. zstd is the default: the best ratio for the CPU it costs.
//
// Every encoder and decoder runs in the caller's goroutine, one core per
// object: parallelism comes from compressing several objects at once (the
// stream stores one segment while it receives the next; a backup compresses
// its chunks in a pool), not from splitting one object's blocks across
// goroutines, which costs CPU in hand-offs and buffers (measured: about 20%
// of the stream's zstd CPU). zstd runs at its fastest level: on WAL it
// compresses to the same ratio as the default level at half the CPU (see
// docs/repository-format.md).
const (
	CodecNone Codec = 0
	CodecZstd Codec = 1
	CodecLZ4  Codec = 2
	CodecGzip Codec = 3
	CodecS2   Codec = 4
)

var codecNames = map[Codec]string{CodecNone: "none", CodecZstd: "zstd", CodecLZ4: "lz4", CodecGzip: "gzip", CodecS2: "s2"}
var codecExts = map[Codec]string{CodecNone: "", CodecZstd: ".zst", CodecLZ4: ".lz4", CodecGzip: ".gz", CodecS2: ".s2"}

// codecOrder lists every codec once, in a fixed order, for lookups that
// probe each extension.
var codecOrder = []Codec{CodecZstd, CodecLZ4, CodecNone, CodecGzip, CodecS2}

// CodecNames lists the accepted --compression values.
const CodecNames = "zstd, lz4, gzip, s2, none"

// ParseCodec maps a --compression value to a Codec.
func ParseCodec(name string) (Codec, error) {
	for c, n := range codecNames {
		if n == name {
			return c, nil
		}
	}
	return 0, fmt.Errorf("unknown compression %q: use one of %s", name, CodecNames)
}

func (c Codec) String() string {
	if n, ok := codecNames[c]; ok {
		return n
	}
	return fmt.Sprintf("codec(%d)", byte(c))
}

// Ext is the key suffix for objects in this codec ("" for none). It is a
// hint for people browsing the repository; readers use the header.
func (c Codec) Ext() string { return codecExts[c] }

var zstdEncoders sync.Pool

type zstdWriter struct{ *zstd.Encoder }

// Close flushes the frame and returns the encoder to the pool.
func (z zstdWriter) Close() error {
	err := z.Encoder.Close()
	if err == nil {
		zstdEncoders.Put(z.Encoder)
	}
	return err
}

// newWriter returns a compressing writer onto w. Close flushes it; it does
// not close w.
func (c Codec) newWriter(w io.Writer) (io.WriteCloser, error) {
	switch c {
	case CodecNone:
		return nopWriteCloser{w}, nil
	case CodecZstd:
		if e, ok := zstdEncoders.Get().(*zstd.Encoder); ok {
			e.Reset(w)
			return zstdWriter{e}, nil
		}
		e, err := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err != nil {
			return nil, err
		}
		return zstdWriter{e}, nil
	case CodecLZ4:
		// Our own frame encoder (lz4.go); pierrec/lz4 reads it.
		return newLZ4Writer(w), nil
	case CodecGzip:
		return gzip.NewWriter(w), nil
	case CodecS2:
		return s2.NewWriter(w, s2.WriterConcurrency(1)), nil
	}
	return nil, fmt.Errorf("unknown codec %d", byte(c))
}

// newReader returns a decompressing reader of r. Close releases the
// decoder; it does not close r.
func (c Codec) newReader(r io.Reader) (io.ReadCloser, error) {
	switch c {
	case CodecNone:
		return io.NopCloser(r), nil
	case CodecZstd:
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case CodecLZ4:
		return io.NopCloser(lz4.NewReader(r)), nil
	case CodecGzip:
		g, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		return g, nil
	case CodecS2:
		return io.NopCloser(s2.NewReader(r)), nil
	}
	return nil, fmt.Errorf("%w: unknown codec %d", ErrCorrupt, byte(c))
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
