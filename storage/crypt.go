package storage

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"sync"

	"filippo.io/age"
	"golang.org/x/crypto/scrypt"
)

// Encryption (docs/encryption.md). An encrypted repository stores every
// enveloped object's compressed body as an age file (X25519 recipient,
// ChaCha20-Poly1305 in 64 KiB authenticated chunks): compress, then
// encrypt, streaming, so memory stays bounded. Two key modes:
//
//   - recipient: writers hold only the age public key (--encrypt-to); readers
//     of content hold the private key (--identity-file). The database host
//     that streams and backs up cannot decrypt what it stored.
//   - passphrase: one secret (WALKEEPER_PASSPHRASE or --passphrase-file)
//     from which scrypt derives an X25519 key pair, once per process, with
//     the repository's salt. Whoever writes can also read.
//
// The envelope's header and trailer stay outside the ciphertext: sizes and
// the SHA-256 of the stored bytes can be checked by anyone, and the trailer
// also carries an HMAC-SHA256 of the plaintext content keyed by the
// recipient, so a writer without the private key can still tell whether a
// stored object holds exactly the content it is about to store (wal-push's
// retry, a re-received segment, a history file).

// Encryption methods, as walkeeper.json records them.
const (
	MethodRecipient  = "age-x25519"
	MethodPassphrase = "age-x25519-scrypt"
)

// EncryptionConfig is walkeeper.json's "encryption": present exactly when
// the repository is encrypted.
type EncryptionConfig struct {
	Method string `json:"method"`
	// Fingerprint identifies the recipient (public key) every object is
	// encrypted to, without revealing it: writers and readers check their
	// key against it before they touch an object.
	Fingerprint string `json:"recipient_fingerprint"`
	// Salt is the passphrase mode's scrypt salt (hex).
	Salt string `json:"salt,omitempty"`
}

// Keys are the encryption settings a command was given. The zero value
// means no encryption.
type Keys struct {
	// Recipient is an age public key (age1...): enough to write.
	Recipient string
	// IdentityFile is a file of age private keys (AGE-SECRET-KEY-1...):
	// needed to read content.
	IdentityFile string
	// Passphrase is the passphrase mode's secret (never from argv).
	Passphrase string
}

// Given reports whether any key was given.
func (k Keys) Given() bool { return k.Recipient != "" || k.IdentityFile != "" || k.Passphrase != "" }

// ErrNeedIdentity means an encrypted object's content was to be read
// without the private key.
var ErrNeedIdentity = errors.New("the repository is encrypted: reading content needs the private key")

// ErrEncryptionMismatch means the keys given do not fit the repository:
// encrypted writes into an unencrypted repository, the reverse, or a key of
// another repository.
var ErrEncryptionMismatch = errors.New("encryption settings do not match the repository")

// crypter holds the keys of a repository once checked against its
// walkeeper.json. nil means the repository is not encrypted.
type crypter struct {
	recipient  age.Recipient
	identities []age.Identity // empty: write-only
	macKey     []byte
}

const scryptLogN = 15 // 32 MiB and ~0.1 s once per process

// fingerprint names a recipient without revealing it.
func fingerprint(recipient string) string {
	s := sha256.Sum256([]byte("walkeeper recipient fingerprint\x00" + recipient))
	return "sha256:" + hex.EncodeToString(s[:16])
}

func macKeyOf(recipient string) []byte {
	s := sha256.Sum256([]byte("walkeeper content mac\x00" + recipient))
	return s[:]
}

// parseKeys reads the identity file and checks that the recipient and the
// identities belong together. It does not need walkeeper.json.
func parseKeys(k Keys) (recipient string, ids []age.Identity, err error) {
	if k.Passphrase != "" && (k.Recipient != "" || k.IdentityFile != "") {
		return "", nil, fmt.Errorf("a passphrase and --encrypt-to/--identity-file exclude each other: use one mode")
	}
	if k.Recipient != "" {
		r, err := age.ParseX25519Recipient(strings.TrimSpace(k.Recipient))
		if err != nil {
			return "", nil, fmt.Errorf("--encrypt-to: not an age public key (age1...): generate one with 'walkeeper keygen'")
		}
		recipient = r.String()
	}
	if k.IdentityFile != "" {
		f, err := os.Open(k.IdentityFile)
		if err != nil {
			return "", nil, fmt.Errorf("--identity-file: %w", err)
		}
		defer f.Close()
		parsed, err := age.ParseIdentities(io.LimitReader(f, 1<<20))
		if err != nil {
			// age's message may quote the malformed line: never echo it.
			return "", nil, fmt.Errorf("--identity-file %s: not an age identity file (AGE-SECRET-KEY-1... lines, as 'walkeeper keygen' writes)", k.IdentityFile)
		}
		var own string
		for _, id := range parsed {
			x, ok := id.(*age.X25519Identity)
			if !ok {
				return "", nil, fmt.Errorf("--identity-file %s: only X25519 identities (AGE-SECRET-KEY-1...) are supported", k.IdentityFile)
			}
			ids = append(ids, x)
			if own == "" {
				own = x.Recipient().String()
			}
			if recipient != "" && x.Recipient().String() == recipient {
				own = recipient
			}
		}
		if recipient != "" && own != recipient {
			return "", nil, fmt.Errorf("--identity-file %s holds no private key of --encrypt-to: give the matching pair", k.IdentityFile)
		}
		recipient = own
	}
	return recipient, ids, nil
}

// CheckKeys validates keys without a repository, so commands can refuse
// bad settings before they start.
func CheckKeys(k Keys) error {
	_, _, err := parseKeys(k)
	return err
}

// derived remembers the passphrase mode's key pairs by a hash of
// passphrase and salt, so a process pays for scrypt once per salt, however
// many times it checks its keys (Init, then every read and write).
var derived sync.Map // [32]byte → *age.X25519Identity

// passphraseIdentity derives the passphrase mode's key pair.
func passphraseIdentity(pass string, salt []byte) (*age.X25519Identity, error) {
	h := sha256.New()
	h.Write([]byte("walkeeper passphrase memo\x00"))
	h.Write([]byte{byte(len(salt))})
	h.Write(salt)
	h.Write([]byte(pass))
	var memo [32]byte
	h.Sum(memo[:0])
	if id, ok := derived.Load(memo); ok {
		return id.(*age.X25519Identity), nil
	}
	scalar, err := scrypt.Key([]byte(pass), salt, 1<<scryptLogN, 8, 1, 32)
	if err != nil {
		return nil, err
	}
	id, err := age.ParseX25519Identity(strings.ToUpper(bech32Encode("age-secret-key-", scalar)))
	if err != nil {
		return nil, err
	}
	derived.Store(memo, id)
	return id, nil
}

// newCrypter checks keys against the repository's encryption settings (nil
// for an unencrypted repository) and returns what reads and writes use.
// forWrite asks for a recipient. It never puts a key in an error.
func newCrypter(k Keys, have *EncryptionConfig, repo string, forWrite bool) (*crypter, error) {
	switch {
	case have == nil && !k.Given():
		return nil, nil
	case have == nil:
		return nil, Permanent(fmt.Errorf("%w: repository %s is not encrypted, but encryption keys were given: "+
			"drop --encrypt-to/--identity-file/the passphrase, or use a new --repo for an encrypted repository", ErrEncryptionMismatch, repo))
	case !k.Given() && forWrite:
		return nil, Permanent(fmt.Errorf("%w: repository %s is encrypted (%s): give --encrypt-to with its public key (or its passphrase)",
			ErrEncryptionMismatch, repo, have.Method))
	case !k.Given():
		return nil, nil // reads of metadata only; content reads say ErrNeedIdentity
	}
	c := &crypter{}
	var recipient string
	if have.Method == MethodPassphrase {
		if k.Passphrase == "" {
			return nil, Permanent(fmt.Errorf("%w: repository %s is encrypted with a passphrase: set WALKEEPER_PASSPHRASE or --passphrase-file",
				ErrEncryptionMismatch, repo))
		}
		salt, err := hex.DecodeString(have.Salt)
		if err != nil || len(salt) < 16 {
			return nil, Permanent(fmt.Errorf("%s in %s: %w: bad encryption salt", ConfigKey, repo, ErrCorrupt))
		}
		id, err := passphraseIdentity(k.Passphrase, salt)
		if err != nil {
			return nil, err
		}
		recipient = id.Recipient().String()
		c.identities = []age.Identity{id}
		if fingerprint(recipient) != have.Fingerprint {
			return nil, Permanent(fmt.Errorf("%w: the passphrase is not repository %s's (its key fingerprint differs)", ErrEncryptionMismatch, repo))
		}
	} else {
		if k.Passphrase != "" {
			return nil, Permanent(fmt.Errorf("%w: repository %s is encrypted to a public key, not a passphrase: use --encrypt-to / --identity-file",
				ErrEncryptionMismatch, repo))
		}
		var err error
		recipient, c.identities, err = parseKeys(k)
		if err != nil {
			return nil, Permanent(err)
		}
		if fingerprint(recipient) != have.Fingerprint {
			what := "--encrypt-to"
			if k.Recipient == "" {
				what = "--identity-file " + k.IdentityFile
			}
			return nil, Permanent(fmt.Errorf("%w: %s is not the key of repository %s (fingerprint %s, the repository's is %s)",
				ErrEncryptionMismatch, what, repo, fingerprint(recipient), have.Fingerprint))
		}
	}
	r, err := age.ParseX25519Recipient(recipient)
	if err != nil {
		return nil, err
	}
	c.recipient = r
	c.macKey = macKeyOf(recipient)
	return c, nil
}

// newEncryptionConfig is the "encryption" of a new repository created with k.
func newEncryptionConfig(k Keys) (*EncryptionConfig, error) {
	if !k.Given() {
		return nil, nil
	}
	if k.Passphrase != "" {
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return nil, err
		}
		id, err := passphraseIdentity(k.Passphrase, salt)
		if err != nil {
			return nil, err
		}
		return &EncryptionConfig{Method: MethodPassphrase, Fingerprint: fingerprint(id.Recipient().String()), Salt: hex.EncodeToString(salt)}, nil
	}
	recipient, _, err := parseKeys(k)
	if err != nil {
		return nil, Permanent(err)
	}
	if k.Recipient == "" {
		return nil, Permanent(fmt.Errorf("%w: creating an encrypted repository needs --encrypt-to (the public key)", ErrEncryptionMismatch))
	}
	return &EncryptionConfig{Method: MethodRecipient, Fingerprint: fingerprint(recipient)}, nil
}

func (c *crypter) canRead() bool { return c != nil && len(c.identities) > 0 }

func (c *crypter) mac() hash.Hash { return hmac.New(sha256.New, c.macKey) }

// decrypt opens an age stream from r, telling a key that does not open it
// apart from damage.
func (c *crypter) decrypt(key string, r io.Reader) (io.Reader, error) {
	if !c.canRead() {
		return nil, fmt.Errorf("%s: %w: give --identity-file (or the passphrase)", key, ErrNeedIdentity)
	}
	d, err := age.Decrypt(r, c.identities...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, fmt.Errorf("%s: %w: not encrypted to this repository's key (damaged, or copied from another repository)", key, ErrCorrupt)
		}
		return nil, fmt.Errorf("%s: %w: %w", key, ErrCorrupt, err)
	}
	return d, nil
}

// GenerateKeyPair returns a new age identity (the private key) and its
// recipient (the public key).
func GenerateKeyPair() (identity, recipient string, err error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", "", err
	}
	return id.String(), id.Recipient().String(), nil
}

// bech32Encode is BIP-173's encoding (checksum constant 1), which age uses
// for its keys; age keeps its own encoder internal.
func bech32Encode(hrp string, data []byte) string {
	const charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
	// Regroup 8-bit bytes into 5-bit groups.
	var values []byte
	acc, bits := 0, 0
	for _, b := range data {
		acc = acc<<8 | int(b)
		bits += 8
		for bits >= 5 {
			bits -= 5
			values = append(values, byte(acc>>bits&31))
		}
	}
	if bits > 0 {
		values = append(values, byte(acc<<(5-bits)&31))
	}
	polymod := func(v []byte) uint32 {
		gen := [5]uint32{0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3}
		chk := uint32(1)
		for _, x := range v {
			top := chk >> 25
			chk = (chk&0x1ffffff)<<5 ^ uint32(x)
			for i := range 5 {
				if top>>i&1 == 1 {
					chk ^= gen[i]
				}
			}
		}
		return chk
	}
	var exp []byte
	for i := range len(hrp) {
		exp = append(exp, hrp[i]>>5)
	}
	exp = append(exp, 0)
	for i := range len(hrp) {
		exp = append(exp, hrp[i]&31)
	}
	pm := polymod(append(append(exp, values...), 0, 0, 0, 0, 0, 0)) ^ 1
	var out bytes.Buffer
	out.WriteString(hrp)
	out.WriteByte('1')
	for _, v := range values {
		out.WriteByte(charset[v])
	}
	for i := range 6 {
		out.WriteByte(charset[pm>>(5*(5-i))&31])
	}
	return out.String()
}
