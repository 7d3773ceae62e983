package storage

import (
	"bytes"
	"context"
	"crypto/hmac"
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

	keys  Keys
	keyMu sync.Mutex
	ks    *keyState // nil until walkeeper.json was read and the keys checked
}

// keyState is the repository's encryption once checked: enc is
// walkeeper.json's "encryption" (nil: not encrypted), cr the keys that fit
// it (nil: none given).
type keyState struct {
	enc *EncryptionConfig
	cr  *crypter
}

// NewRepository wraps b; new objects are compressed with codec.
func NewRepository(b Backend, codec Codec) *Repository {
	return &Repository{b: b, codec: codec}
}

// WithKeys sets the encryption keys the repository is used with; call it
// before any other method. They are checked against walkeeper.json when
// it is first read: keys for an unencrypted repository, none for a write
// into an encrypted one, or another repository's key are refused.
func (r *Repository) WithKeys(k Keys) *Repository {
	r.keys = k
	return r
}

// keyState reads walkeeper.json once and checks the keys against it. A
// repository without walkeeper.json yet gives an error matching
// ErrNotFound.
func (r *Repository) keyState(ctx context.Context) (*keyState, error) {
	r.keyMu.Lock()
	defer r.keyMu.Unlock()
	if r.ks != nil {
		return r.ks, nil
	}
	cfg, err := r.Config(ctx)
	if err != nil {
		return nil, err
	}
	cr, err := newCrypter(r.keys, cfg.Encryption, r.b.String(), false)
	if err != nil {
		return nil, err
	}
	r.ks = &keyState{enc: cfg.Encryption, cr: cr}
	return r.ks, nil
}

// writeCrypter is what Create encrypts with: nil for an unencrypted
// repository, an error when the keys given cannot write this one.
func (r *Repository) writeCrypter(ctx context.Context) (*crypter, error) {
	ks, err := r.keyState(ctx)
	if errors.Is(err, ErrNotFound) {
		if r.keys.Given() {
			return nil, Permanent(fmt.Errorf("repository %s has no %s yet: an encrypted repository is created by 'walkeeper stream' or 'walkeeper backup'",
				r.b, ConfigKey))
		}
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if ks.enc != nil && ks.cr == nil {
		return nil, Permanent(fmt.Errorf("%w: repository %s is encrypted (%s): give --encrypt-to with its public key (or its passphrase)",
			ErrEncryptionMismatch, r.b, ks.enc.Method))
	}
	return ks.cr, nil
}

// Encrypted reports whether the repository is encrypted, and whether the
// keys given can read its content.
func (r *Repository) Encrypted(ctx context.Context) (encrypted, canRead bool, err error) {
	ks, err := r.keyState(ctx)
	if errors.Is(err, ErrNotFound) {
		return r.keys.Given(), r.keys.IdentityFile != "" || r.keys.Passphrase != "", nil
	}
	if err != nil {
		return false, false, err
	}
	return ks.enc != nil, ks.enc == nil || ks.cr.canRead(), nil
}

// NeedContent returns nil when the repository's content can be read with
// the keys given, and otherwise an error saying which key is missing:
// commands that read content (restore, wal-fetch) call it before they
// write anything.
func (r *Repository) NeedContent(ctx context.Context) error {
	ks, err := r.keyState(ctx)
	if err != nil || ks.enc == nil || ks.cr.canRead() {
		return err
	}
	if ks.enc.Method == MethodPassphrase {
		return Permanent(fmt.Errorf("%w: repository %s is encrypted with a passphrase: set WALKEEPER_PASSPHRASE or --passphrase-file", ErrNeedIdentity, r.b))
	}
	return Permanent(fmt.Errorf("%w: repository %s is encrypted: give --identity-file with its private key (the public key alone cannot decrypt)",
		ErrNeedIdentity, r.b))
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
	cr, err := r.writeCrypter(ctx)
	if err != nil {
		return nil, err
	}
	return newWriter(ctx, r.b, base+r.codec.Ext(), r.codec, cr)
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
	var cr *crypter
	ks, err := r.keyState(ctx)
	switch {
	case err == nil:
		cr = ks.cr
	case !errors.Is(err, ErrNotFound):
		return nil, err
	}
	return openReader(ctx, r.b, key, cr)
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
	if ks, err := r.keyState(ctx); err == nil && ks.enc != nil {
		return r.compareSealed(ctx, ks, key, content)
	}
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

// compareSealed is CompareContent for an encrypted repository, with the
// public key alone: it reads the stored object to its end, checking its
// stored bytes, and compares the trailer's content MAC with the MAC of
// content (of its first Size bytes, for StoredIsPrefix).
func (r *Repository) compareSealed(ctx context.Context, ks *keyState, key string, content io.Reader) (Match, error) {
	if ks.cr == nil {
		return Different, Permanent(fmt.Errorf("%w: repository %s is encrypted (%s): give --encrypt-to with its public key (or its passphrase)",
			ErrEncryptionMismatch, r.b, ks.enc.Method))
	}
	m, err := r.CheckStored(ctx, key)
	if err != nil {
		return Different, err
	}
	if !m.Encrypted {
		return Different, fmt.Errorf("%s: %w: an unencrypted object in an encrypted repository", key, ErrCorrupt)
	}
	h := ks.cr.mac()
	n, err := io.Copy(h, io.LimitReader(content, m.Size))
	if err != nil {
		return Different, err
	}
	if n != m.Size || !hmac.Equal(h.Sum(nil), m.ContentMAC[:]) {
		return Different, nil
	}
	extra, err := content.Read(make([]byte, 1))
	if extra > 0 {
		return StoredIsPrefix, nil
	}
	if err != nil && err != io.EOF {
		return Different, err
	}
	return Same, nil
}

// CheckStored reads the stored object key to its end and checks its header
// and the SHA-256 of its stored bytes against the trailer, without
// decompressing or decrypting: what can be verified without the private
// key. It returns the object's Meta.
func (r *Repository) CheckStored(ctx context.Context, key string) (Meta, error) {
	body, err := r.b.Get(ctx, key, 0, -1)
	if err != nil {
		return Meta{}, err
	}
	defer body.Close()
	h := make([]byte, headerSize)
	if _, err := io.ReadFull(body, h); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return Meta{}, fmt.Errorf("%s: %w: shorter than its header", key, ErrCorrupt)
		}
		return Meta{}, fmt.Errorf("read %s: %w", key, err)
	}
	c, encrypted, err := decodeHeader(key, h)
	if err != nil {
		return Meta{}, err
	}
	tail := newTailReader(body, trailerSizeOf(encrypted))
	tail.h.Write(h)
	n, err := io.CopyBuffer(io.Discard, tail, make([]byte, 256<<10))
	if err != nil {
		return Meta{}, fmt.Errorf("read %s: %w", key, err)
	}
	tr, err := decodeTrailer(key, tail.held(), encrypted)
	if err != nil {
		return Meta{}, err
	}
	if !bytes.Equal(tr.sum[:], tail.h.Sum(nil)) {
		return Meta{}, fmt.Errorf("%s: %w: SHA-256 of the stored bytes does not match", key, ErrCorrupt)
	}
	return Meta{Codec: c, Size: tr.size, SHA256: tr.sum, StoredSize: headerSize + n + int64(len(tail.held())),
		Encrypted: encrypted, ContentMAC: tr.mac}, nil
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
	c, encrypted, err := decodeHeader(key, h)
	if err != nil {
		return Meta{}, err
	}
	ts := int64(trailerSizeOf(encrypted))
	if st.Size < headerSize+ts {
		return Meta{}, fmt.Errorf("%s: %w: only %d bytes", key, ErrCorrupt, st.Size)
	}
	t, err := r.readRange(ctx, key, st.Size-ts, ts)
	if err != nil {
		return Meta{}, err
	}
	tr, err := decodeTrailer(key, t, encrypted)
	if err != nil {
		return Meta{}, err
	}
	return Meta{Codec: c, Size: tr.size, SHA256: tr.sum, StoredSize: st.Size, Encrypted: encrypted, ContentMAC: tr.mac}, nil
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
	// Encryption is present exactly when the repository is encrypted
	// (format 4).
	Encryption *EncryptionConfig `json:"encryption,omitempty"`
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
	if c.FormatVersion > NewestFormatVersion {
		return nil, Permanent(fmt.Errorf("%w: repository %s has format %d, newer than this walkeeper supports (%d): upgrade walkeeper",
			ErrWrongCluster, r.b, c.FormatVersion, NewestFormatVersion))
	}
	if c.FormatVersion < 1 {
		return nil, Permanent(fmt.Errorf("%s in %s: %w: format_version %d", ConfigKey, r.b, ErrCorrupt, c.FormatVersion))
	}
	if (c.FormatVersion >= EncryptedFormatVersion) != (c.Encryption != nil) {
		return nil, Permanent(fmt.Errorf("%s in %s: %w: format_version %d and encryption settings disagree", ConfigKey, r.b, ErrCorrupt, c.FormatVersion))
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

// InitTimeout bounds Init: a few small requests and, for a passphrase
// repository, one scrypt derivation (about 0.1 s, seconds on a loaded
// machine or under the race detector). Init sets it itself, so callers
// pass their command's context, not a short connection deadline.
const InitTimeout = time.Minute

// Init makes sure the repository belongs to the cluster described by want
// (SystemIdentifier, PGMajorVersion, WALSegmentSize): it creates
// walkeeper.json in an empty repository and checks it in an existing one.
// Every writer calls Init before writing WAL or a backup.
func (r *Repository) Init(ctx context.Context, want Config) (*Config, error) {
	ctx, cancel := context.WithTimeout(ctx, InitTimeout)
	defer cancel()
	have, err := r.Config(ctx)
	if errors.Is(err, ErrNotFound) {
		created, cerr := r.create(ctx, want)
		if !errors.Is(cerr, errLostCreate) {
			return created, cerr
		}
		// Another run created it first (a stream and a backup started
		// together): check against theirs, whose salt every object uses.
		have, err = r.Config(ctx)
	}
	if err != nil {
		return nil, err
	}
	// Encryption first: nothing may be written with keys that do not fit.
	if _, err := newCrypter(r.keys, have.Encryption, r.b.String(), true); err != nil {
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

// errLostCreate: another run created walkeeper.json between this run's
// read and its write.
var errLostCreate = errors.New("walkeeper.json was created by another run")

// create writes walkeeper.json for an empty repository. Of runs creating it
// at once exactly one must win: in the passphrase mode each would pick its
// own random salt, and the objects of a loser that kept its own key would
// be unreadable. PutIfAbsent decides where the backend supports it; the
// stored bytes are read back in any case (a server may ignore the
// condition), and a run that does not find its own returns errLostCreate.
func (r *Repository) create(ctx context.Context, want Config) (*Config, error) {
	enc, err := newEncryptionConfig(r.keys)
	if err != nil {
		return nil, err
	}
	cr, err := newCrypter(r.keys, enc, r.b.String(), true)
	if err != nil {
		return nil, err
	}
	want.FormatVersion, want.Encryption = FormatVersion, enc
	if enc != nil {
		want.FormatVersion = EncryptedFormatVersion
	}
	if want.CreatedAt.IsZero() {
		want.CreatedAt = time.Now().UTC().Truncate(time.Second)
	}
	data, err := json.MarshalIndent(want, "", "  ")
	if err != nil {
		return nil, err
	}
	data = append(data, '\n')
	_, err = r.b.PutIfAbsent(ctx, ConfigKey, data)
	if errors.Is(err, ErrConditionalUnsupported) {
		err = r.b.Put(ctx, ConfigKey, bytes.NewReader(data))
	}
	if errors.Is(err, ErrPrecondition) {
		return nil, errLostCreate
	}
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", ConfigKey, err)
	}
	rc, err := r.b.Get(ctx, ConfigKey, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("read back %s: %w", ConfigKey, err)
	}
	stored, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("read back %s: %w", ConfigKey, err)
	}
	if !bytes.Equal(stored, data) {
		return nil, errLostCreate
	}
	r.format.Store(int64(want.FormatVersion))
	r.keyMu.Lock()
	r.ks = &keyState{enc: enc, cr: cr}
	r.keyMu.Unlock()
	return &want, nil
}
