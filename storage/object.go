package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"filippo.io/age"
)

// The object envelope. Every object the repository writes (WAL, history
// files, backup archives, manifests) is stored as
//
//	header  16 bytes: "WALKEEP" 0x01 (format) | codec (1 byte) | 7 zero bytes
//	body    the content compressed with the codec
//	trailer 48 bytes: "WKSHA256" | uncompressed size (uint64, big endian) |
//	        SHA-256 of the stored header and body (32 bytes)
//
// The trailer comes last so that writers can stream: neither the size nor
// the checksum is known before the end. Readers hold back the final 48 bytes
// while decompressing and compare them at EOF.
//
// In an encrypted repository (crypt.go) the envelope is version 2:
//
//	header  16 bytes: "WALKEEP" 0x02 | codec | method (1: age) | 6 zero bytes
//	body    an age file whose plaintext is the compressed content
//	trailer 80 bytes: "WKSHAMAC" | uncompressed size | SHA-256 of the
//	        stored header and body | HMAC-SHA256 of the content, keyed by
//	        the recipient
//
// Header and trailer stay outside the ciphertext, so sizes and stored-byte
// checksums need no key; an older walkeeper reading a version 2 header
// stops at "bad header" instead of misreading ciphertext.
//
// The SHA-256 covers the stored bytes, so any flipped bit in the object is
// caught, and it costs a fraction of hashing the content (WAL compresses
// about 10:1). The decompressed content is checked by each codec's own
// checksum (zstd and lz4 frame content checksums, gzip's CRC-32, s2's
// per-chunk CRC-32C; for none the stored bytes are the content) and by the
// recorded size.
const (
	headerSize     = 16
	trailerSize    = 48
	encTrailerSize = 80
	methodAge      = 1
)

var (
	headerMagic     = []byte("WALKEEP\x01")
	encHeaderMagic  = []byte("WALKEEP\x02")
	trailerMagic    = []byte("WKSHA256")
	encTrailerMagic = []byte("WKSHAMAC")
)

// Meta is what an object's envelope records about its content.
type Meta struct {
	Codec Codec
	// Size is the uncompressed content size.
	Size int64
	// SHA256 is the checksum of the stored header and body.
	SHA256 [32]byte
	// StoredSize is the object's size in the backend.
	StoredSize int64
	// Encrypted: the body is an age file (envelope version 2).
	Encrypted bool
	// ContentMAC is, for an encrypted object, the HMAC-SHA256 of the
	// content keyed by the repository's recipient.
	ContentMAC [32]byte
}

// Hex returns the checksum in hexadecimal.
func (m Meta) Hex() string { return hex.EncodeToString(m.SHA256[:]) }

func encodeHeader(c Codec, encrypted bool) []byte {
	h := make([]byte, headerSize)
	copy(h, headerMagic)
	if encrypted {
		copy(h, encHeaderMagic)
		h[len(headerMagic)+1] = methodAge
	}
	h[len(headerMagic)] = byte(c)
	return h
}

// decodeHeader returns the codec and whether the body is encrypted.
func decodeHeader(key string, h []byte) (Codec, bool, error) {
	if len(h) < headerSize {
		return 0, false, fmt.Errorf("%s: %w: not a walkeeper object (bad header)", key, ErrCorrupt)
	}
	encrypted := bytes.Equal(h[:len(encHeaderMagic)], encHeaderMagic)
	if !encrypted && !bytes.Equal(h[:len(headerMagic)], headerMagic) {
		return 0, false, fmt.Errorf("%s: %w: not a walkeeper object (bad header)", key, ErrCorrupt)
	}
	if encrypted && h[len(headerMagic)+1] != methodAge {
		return 0, false, fmt.Errorf("%s: %w: unknown encryption method %d (written by a newer walkeeper?)", key, ErrCorrupt, h[len(headerMagic)+1])
	}
	c := Codec(h[len(headerMagic)])
	if _, ok := codecNames[c]; !ok {
		return 0, false, fmt.Errorf("%s: %w: unknown codec %d (written by a newer walkeeper?)", key, ErrCorrupt, byte(c))
	}
	return c, encrypted, nil
}

func trailerSizeOf(encrypted bool) int {
	if encrypted {
		return encTrailerSize
	}
	return trailerSize
}

func encodeTrailer(size int64, sum, mac []byte) []byte {
	t := make([]byte, 0, encTrailerSize)
	if mac != nil {
		t = append(t, encTrailerMagic...)
	} else {
		t = append(t, trailerMagic...)
	}
	t = binary.BigEndian.AppendUint64(t, uint64(size))
	t = append(t, sum...)
	return append(t, mac...)
}

type trailer struct {
	size int64
	sum  [32]byte
	mac  [32]byte
}

func decodeTrailer(key string, t []byte, encrypted bool) (trailer, error) {
	var tr trailer
	magic := trailerMagic
	if encrypted {
		magic = encTrailerMagic
	}
	if len(t) != trailerSizeOf(encrypted) || !bytes.Equal(t[:8], magic) {
		return tr, fmt.Errorf("%s: %w: missing or damaged trailer (truncated object?)", key, ErrCorrupt)
	}
	tr.size = int64(binary.BigEndian.Uint64(t[8:16]))
	copy(tr.sum[:], t[16:48])
	if encrypted {
		copy(tr.mac[:], t[48:80])
	}
	return tr, nil
}

// Writer streams one object into a backend. Bytes written are compressed,
// hashed and written straight into a local repository's temporary file, or
// piped into Backend.Put running in the background, so memory stays bounded
// whatever the object's size. Nothing is visible under the key until Close
// returns nil; Abort (or a failed Close) leaves nothing behind.
type Writer struct {
	key    string
	codec  Codec
	sink   io.Writer // the local object, or the pipe into Put
	out    *hashWriter
	enc    io.WriteCloser
	age    io.WriteCloser // the encryption stream under enc, or nil
	mac    hash.Hash      // of the content, when encrypted
	n      int64
	commit func() error // after the trailer: durable and visible, or nothing
	drop   func()       // abort: nothing becomes visible
	once   sync.Once
	err    error
}

// directBackend takes an object's bytes as direct writes (the local
// directory): no pipe and no goroutine between the writer and the file.
type directBackend interface {
	create(ctx context.Context, key string) (*localObject, error)
}

// writePiece bounds each write below the codec: the bytes are hashed and
// copied while they are still in the CPU cache.
const writePiece = 256 << 10

var errAborted = errors.New("write aborted")

func newWriter(ctx context.Context, b Backend, key string, c Codec, cr *crypter) (*Writer, error) {
	if err := ValidateKey(key); err != nil {
		return nil, Permanent(err)
	}
	w := &Writer{key: key, codec: c}
	if d, ok := b.(directBackend); ok {
		o, err := d.create(ctx, key)
		if err != nil {
			return nil, err
		}
		w.sink, w.commit, w.drop = o, o.commit, o.abort
	} else {
		ctx, cancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := b.Put(ctx, key, pr)
			pr.CloseWithError(err) // nil closes: later writes fail, never hang
			done <- err
		}()
		w.sink = pw
		w.commit = func() error {
			pw.Close()
			err := <-done
			cancel()
			return err
		}
		w.drop = func() {
			pw.CloseWithError(errAborted)
			cancel()
			<-done
		}
	}
	w.out = &hashWriter{w: w.sink, h: sha256.New()}
	if _, err := w.out.Write(encodeHeader(c, cr != nil)); err != nil {
		w.Abort()
		return nil, w.putError(err)
	}
	var under io.Writer = w.out
	if cr != nil {
		aw, err := age.Encrypt(w.out, cr.recipient)
		if err != nil {
			w.Abort()
			return nil, w.putError(err)
		}
		w.age, w.mac, under = aw, cr.mac(), aw
	}
	enc, err := c.newWriter(under)
	if err != nil {
		w.Abort()
		return nil, err
	}
	w.enc = enc
	return w, nil
}

// Write compresses p into the object.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	done := 0
	for done < len(p) {
		q := p[done:min(len(p), done+writePiece)]
		n, err := w.enc.Write(q)
		w.n += int64(n)
		if w.mac != nil {
			w.mac.Write(q[:n])
		}
		done += n
		if err != nil {
			w.err = w.putError(err)
			return done, w.err
		}
	}
	return done, nil
}

// putError prefers the backend's own error over the pipe's echo of it.
func (w *Writer) putError(err error) error {
	if errors.Is(err, io.ErrClosedPipe) {
		return fmt.Errorf("write %s: %w", w.key, err)
	}
	return err
}

// Size is the number of uncompressed bytes written so far.
func (w *Writer) Size() int64 { return w.n }

// Close finishes the object and waits until the backend has stored it
// durably. It returns the object's Meta.
func (w *Writer) Close() (Meta, error) {
	if w.err != nil {
		w.Abort()
		return Meta{}, w.err
	}
	var m Meta
	if err := w.enc.Close(); err != nil {
		w.Abort()
		return m, w.putError(err)
	}
	var mac []byte
	if w.age != nil {
		if err := w.age.Close(); err != nil {
			w.Abort()
			return m, w.putError(err)
		}
		mac = w.mac.Sum(nil)
		copy(m.ContentMAC[:], mac)
		m.Encrypted = true
	}
	copy(m.SHA256[:], w.out.h.Sum(nil))
	m.Codec, m.Size, m.StoredSize = w.codec, w.n, w.out.n+int64(trailerSizeOf(m.Encrypted))
	if _, err := w.sink.Write(encodeTrailer(w.n, m.SHA256[:], mac)); err != nil {
		w.Abort()
		return m, w.putError(err)
	}
	err := w.commit()
	w.once.Do(func() {})
	if err != nil {
		return m, err
	}
	return m, nil
}

// Abort cancels the write; nothing becomes visible under the key. It is
// safe to call after Close.
func (w *Writer) Abort() {
	w.once.Do(w.drop)
}

// Reader decompresses one object and checks it. Read returns an error
// matching ErrCorrupt instead of io.EOF when the object does not match its
// trailer, so a full read that ends in io.EOF has been verified.
type Reader struct {
	key   string
	body  io.ReadCloser
	tail  *tailReader
	dec   io.ReadCloser
	plain io.Reader // what the decoder reads: the tail, or the decrypted tail
	enc   bool
	codec Codec
	n     int64
	meta  Meta
	err   error
}

func openReader(ctx context.Context, b Backend, key string, cr *crypter) (*Reader, error) {
	body, err := b.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	h := make([]byte, headerSize)
	if _, err := io.ReadFull(body, h); err != nil {
		body.Close()
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%s: %w: shorter than its header", key, ErrCorrupt)
		}
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	c, encrypted, err := decodeHeader(key, h)
	if err != nil {
		body.Close()
		return nil, err
	}
	tail := newTailReader(body, trailerSizeOf(encrypted))
	tail.h.Write(h)
	var plain io.Reader = tail
	if encrypted {
		if plain, err = cr.decrypt(key, tail); err != nil {
			body.Close()
			if tail.err != nil {
				return nil, fmt.Errorf("read %s: %w", key, tail.err)
			}
			return nil, err
		}
	}
	dec, err := c.newReader(plain)
	if err != nil {
		body.Close()
		return nil, fmt.Errorf("%s: %w: %w", key, ErrCorrupt, err)
	}
	return &Reader{key: key, body: body, tail: tail, dec: dec, plain: plain, enc: encrypted, codec: c}, nil
}

// Read returns decompressed content.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.dec.Read(p)
	r.n += int64(n)
	switch {
	case err == io.EOF:
		r.err = r.verify()
		if r.err == nil {
			r.err = io.EOF
		}
		return n, r.err
	case err != nil:
		if r.tail.err != nil { // the backend failed, not the content
			r.err = fmt.Errorf("read %s: %w", r.key, r.tail.err)
		} else {
			r.err = fmt.Errorf("%s: %w: %w", r.key, ErrCorrupt, err)
		}
		return n, r.err
	}
	return n, nil
}

func (r *Reader) verify() error {
	// The decoder may stop at the end of its frame; anything between that
	// and the trailer is damage.
	extra, err := io.Copy(io.Discard, r.plain)
	if err != nil {
		if r.tail.err != nil {
			return fmt.Errorf("read %s: %w", r.key, err)
		}
		return fmt.Errorf("%s: %w: %w", r.key, ErrCorrupt, err)
	}
	if r.enc {
		more, err := io.Copy(io.Discard, r.tail)
		if err != nil {
			return fmt.Errorf("read %s: %w", r.key, err)
		}
		extra += more
	}
	if extra > 0 {
		return fmt.Errorf("%s: %w: %d unexpected bytes after the compressed body", r.key, ErrCorrupt, extra)
	}
	tr, err := decodeTrailer(r.key, r.tail.held(), r.enc)
	if err != nil {
		return err
	}
	if !bytes.Equal(tr.sum[:], r.tail.h.Sum(nil)) {
		return fmt.Errorf("%s: %w: SHA-256 of the stored bytes does not match", r.key, ErrCorrupt)
	}
	if tr.size != r.n {
		return fmt.Errorf("%s: %w: content is %d bytes, trailer says %d", r.key, ErrCorrupt, r.n, tr.size)
	}
	r.meta = Meta{Codec: r.codec, Size: tr.size, SHA256: tr.sum, Encrypted: r.enc, ContentMAC: tr.mac}
	return nil
}

// CheckStored tells damage apart from a consumer's failure: when whatever
// reads the content gives up early (a tar reader meeting a garbled header,
// say), the decompressor may have turned a flipped byte into plausible
// garbage without noticing. CheckStored stops the decoder, reads the rest of
// the stored bytes and compares them with the trailer's SHA-256; it returns
// an error matching ErrCorrupt when they differ, the backend's error when the
// rest cannot be read, and nil when the stored object is intact. The Reader
// returns no more content afterwards.
func (r *Reader) CheckStored() error {
	switch {
	case r.err == io.EOF:
		return nil // already verified in full
	case errors.Is(r.err, ErrCorrupt):
		return r.err
	}
	r.dec.Close() // waits for decoder goroutines, so the tail is ours
	if _, err := io.Copy(io.Discard, r.tail); err != nil {
		r.err = fmt.Errorf("read %s: %w", r.key, err)
		return r.err
	}
	tr, err := decodeTrailer(r.key, r.tail.held(), r.enc)
	if err != nil {
		r.err = err
		return err
	}
	if !bytes.Equal(tr.sum[:], r.tail.h.Sum(nil)) {
		r.err = fmt.Errorf("%s: %w: SHA-256 of the stored bytes does not match", r.key, ErrCorrupt)
		return r.err
	}
	r.err = fmt.Errorf("read %s: stopped early", r.key)
	return nil
}

// Meta is valid after Read has returned io.EOF.
func (r *Reader) Meta() Meta { return r.meta }

// Close releases the decoder and the backend stream.
func (r *Reader) Close() error {
	r.dec.Close()
	return r.body.Close()
}

// tailReader passes through everything but the last k bytes of r.
type tailReader struct {
	r   io.Reader
	k   int
	b   []byte
	eof bool
	err error
	h   hash.Hash // SHA-256 of the bytes passed through
}

func newTailReader(r io.Reader, k int) *tailReader {
	return &tailReader{r: r, k: k, b: make([]byte, 0, k+64<<10), h: sha256.New()}
}

func (t *tailReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for len(t.b) <= t.k && !t.eof {
		n, err := t.r.Read(t.b[len(t.b):cap(t.b)])
		t.b = t.b[:len(t.b)+n]
		if err == io.EOF {
			t.eof = true
		} else if err != nil {
			t.err = err
			return 0, err
		}
	}
	avail := len(t.b) - t.k
	if avail <= 0 {
		return 0, io.EOF
	}
	n := copy(p, t.b[:avail])
	t.h.Write(p[:n])
	t.b = t.b[:copy(t.b, t.b[n:])]
	return n, nil
}

// hashWriter hashes and counts what passes through it.
type hashWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *hashWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// held returns the withheld bytes; after EOF they are the trailer.
func (t *tailReader) held() []byte { return t.b }
