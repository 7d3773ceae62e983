package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Repository is the walkeeper repository on top of a Backend: it names
// objects, frames them (object.go) and guards the repository's identity.
type Repository struct {
	b     Backend
	codec Codec

	lockMu   sync.Mutex
	lockMode lockMode // how locks work on b; 0 until the first Lock finds out

	// format is the format_version of walkeeper.json once read or created
	// (0 before): a repository's format never changes.
	format atomic.Int64
}

// NewRepository wraps b; new objects are compressed with codec.
func NewRepository(b Backend, codec Codec) *Repository {
	return &Repository{b: b, codec: codec}
}

// Backend returns the underlying backend.
func (r *Repository) Backend() Backend { return r.b }

// Codec returns the codec new objects are written with.
func (r *Repository) Codec() Codec { return r.codec }

func (r *Repository) String() string { return r.b.String() }

// Create starts writing the object base (a key from WALKey or BackupKey);
// the stored key gets the codec's extension. Close the Writer to commit it,
// or Abort it.
func (r *Repository) Create(ctx context.Context, base string) (*Writer, error) {
	return newWriter(ctx, r.b, base+r.codec.Ext(), r.codec)
}

// Find returns the stored key of the object base, whatever codec it was
// written with, or an error matching ErrNotFound. Its cost does not depend
// on how many objects the repository holds: it stats the name with this
// repository's codec extension first, then the other extensions at once.
// No listing: an S3 server answers a HEAD from its index, while a listing
// can cost what the prefix's directory holds (versitygw's posix backend
// reads the directory), and a HEAD request is cheaper than a LIST on AWS.
func (r *Repository) Find(ctx context.Context, base string) (ObjectInfo, error) {
	info, err := r.b.Stat(ctx, base+r.codec.Ext())
	if !errors.Is(err, ErrNotFound) {
		return info, err
	}
	others := make([]Codec, 0, len(codecOrder)-1)
	for _, c := range codecOrder {
		if c != r.codec {
			others = append(others, c)
		}
	}
	infos := make([]ObjectInfo, len(others))
	errs := make([]error, len(others))
	var wg sync.WaitGroup
	for i, c := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			infos[i], errs[i] = r.b.Stat(ctx, base+c.Ext())
		}()
	}
	wg.Wait()
	for i := range others {
		if !errors.Is(errs[i], ErrNotFound) {
			return infos[i], errs[i]
		}
	}
	return ObjectInfo{}, fmt.Errorf("%s: %w", base, ErrNotFound)
}

// Open opens the stored object key (as listed, with its extension) for a
// verified read.
func (r *Repository) Open(ctx context.Context, key string) (*Reader, error) {
	return openReader(ctx, r.b, key)
}

// Match is how a stored object's content relates to other content.
type Match int

// The outcomes of CompareContent.
const (
	Different      Match = iota
	Same                 // byte for byte
	StoredIsPrefix       // the stored content is a proper prefix of the other
)

// CompareContent compares the stored object key with the bytes content
// yields. It decompresses the object and always reads it to its end, so a
// damaged object is an error (matching ErrCorrupt), never "different". It
// works whatever codec either side used.
func (r *Repository) CompareContent(ctx context.Context, key string, content io.Reader) (Match, error) {
	obj, err := r.Open(ctx, key)
	if err != nil {
		return Different, err
	}
	defer obj.Close()
	a := make([]byte, 64<<10)
	b := make([]byte, 64<<10)
	equal := true
	for {
		n, err := io.ReadFull(obj, a)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return Different, err
		}
		if equal && n > 0 {
			m, err := io.ReadFull(content, b[:n])
			if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
				return Different, err
			}
			equal = m == n && bytes.Equal(a[:n], b[:n])
		}
		if n < len(a) {
			break // the object ended and its checksum was verified
		}
	}
	if !equal {
		return Different, nil
	}
	extra, err := content.Read(b[:1])
	if extra > 0 {
		return StoredIsPrefix, nil
	}
	if err != nil && err != io.EOF {
		return Different, err
	}
	return Same, nil
}

// SameContent reports whether the stored object key holds exactly the
// bytes content yields (see CompareContent).
func (r *Repository) SameContent(ctx context.Context, key string, content io.Reader) (bool, error) {
	m, err := r.CompareContent(ctx, key, content)
	return m == Same, err
}

// Meta reads an object's header and trailer without reading its body (two
// ranged reads), so callers can compare checksums cheaply.
func (r *Repository) Meta(ctx context.Context, key string) (Meta, error) {
	st, err := r.b.Stat(ctx, key)
	if err != nil {
		return Meta{}, err
	}
	if st.Size < headerSize+trailerSize {
		return Meta{}, fmt.Errorf("%s: %w: only %d bytes", key, ErrCorrupt, st.Size)
	}
	h, err := r.readRange(ctx, key, 0, headerSize)
	if err != nil {
		return Meta{}, err
	}
	c, err := decodeHeader(key, h)
	if err != nil {
		return Meta{}, err
	}
	t, err := r.readRange(ctx, key, st.Size-trailerSize, trailerSize)
	if err != nil {
		return Meta{}, err
	}
	tr, err := decodeTrailer(key, t)
	if err != nil {
		return Meta{}, err
	}
	return Meta{Codec: c, Size: tr.size, SHA256: tr.sum, StoredSize: st.Size}, nil
}

func (r *Repository) readRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	rc, err := r.b.Get(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return buf, nil
}

// Config is walkeeper.json, the repository's identity.
type Config struct {
	FormatVersion int `json:"format_version"`
	// SystemIdentifier is the PostgreSQL cluster's system identifier, as
	// IDENTIFY_SYSTEM and pg_control print it.
	SystemIdentifier string    `json:"system_identifier"`
	PGMajorVersion   int       `json:"pg_major_version"`
	WALSegmentSize   uint64    `json:"wal_segment_size"`
	CreatedAt        time.Time `json:"created_at"`
}

// ErrWrongCluster means the repository belongs to another PostgreSQL cluster
// or was written by a newer walkeeper.
var ErrWrongCluster = errors.New("repository does not match")

// Config reads walkeeper.json. A repository that has none yet gives an
// error matching ErrNotFound.
func (r *Repository) Config(ctx context.Context) (*Config, error) {
	rc, err := r.b.Get(ctx, ConfigKey, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ConfigKey, err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s in %s: %w: %w", ConfigKey, r.b, ErrCorrupt, err)
	}
	if c.FormatVersion > FormatVersion {
		return nil, Permanent(fmt.Errorf("%w: repository %s has format %d, newer than this walkeeper supports (%d): upgrade walkeeper",
			ErrWrongCluster, r.b, c.FormatVersion, FormatVersion))
	}
	if c.FormatVersion < 1 {
		return nil, Permanent(fmt.Errorf("%s in %s: %w: format_version %d", ConfigKey, r.b, ErrCorrupt, c.FormatVersion))
	}
	r.format.Store(int64(c.FormatVersion))
	return &c, nil
}

// Format is the repository's format version (walkeeper.json's
// format_version), read once and then remembered. A repository without
// walkeeper.json yet is of the format this walkeeper creates: it holds
// nothing to read in another.
func (r *Repository) Format(ctx context.Context) (int, error) {
	if f := r.format.Load(); f != 0 {
		return int(f), nil
	}
	c, err := r.Config(ctx)
	if errors.Is(err, ErrNotFound) {
		return FormatVersion, nil
	}
	if err != nil {
		return 0, err
	}
	return c.FormatVersion, nil
}

// Init makes sure the repository belongs to the cluster described by want
// (SystemIdentifier, PGMajorVersion, WALSegmentSize): it creates
// walkeeper.json in an empty repository and checks it in an existing one.
// Every writer calls Init before writing WAL or a backup.
func (r *Repository) Init(ctx context.Context, want Config) (*Config, error) {
	have, err := r.Config(ctx)
	if errors.Is(err, ErrNotFound) {
		want.FormatVersion = FormatVersion
		if want.CreatedAt.IsZero() {
			want.CreatedAt = time.Now().UTC().Truncate(time.Second)
		}
		data, err := json.MarshalIndent(want, "", "  ")
		if err != nil {
			return nil, err
		}
		if err := r.b.Put(ctx, ConfigKey, bytes.NewReader(append(data, '\n'))); err != nil {
			return nil, fmt.Errorf("create %s: %w", ConfigKey, err)
		}
		r.format.Store(int64(want.FormatVersion))
		return &want, nil
	}
	if err != nil {
		return nil, err
	}
	var diffs []string
	if have.SystemIdentifier != want.SystemIdentifier {
		diffs = append(diffs, fmt.Sprintf("system identifier %s, server has %s", have.SystemIdentifier, want.SystemIdentifier))
	}
	if want.PGMajorVersion != 0 && have.PGMajorVersion != want.PGMajorVersion {
		diffs = append(diffs, fmt.Sprintf("PostgreSQL %d, server runs %d", have.PGMajorVersion, want.PGMajorVersion))
	}
	if want.WALSegmentSize != 0 && have.WALSegmentSize != want.WALSegmentSize {
		diffs = append(diffs, fmt.Sprintf("wal_segment_size %d, server has %d", have.WALSegmentSize, want.WALSegmentSize))
	}
	if len(diffs) > 0 {
		return nil, Permanent(fmt.Errorf("%w: repository %s belongs to another cluster (%s): use a different --repo for this server",
			ErrWrongCluster, r.b, strings.Join(diffs, "; ")))
	}
	return have, nil
}
