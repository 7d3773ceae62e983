package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
)

func keyPair(t *testing.T) (identityFile, recipient string) {
	t.Helper()
	id, rec, err := storage.GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.txt")
	if err := os.WriteFile(path, []byte("# test key\n"+id+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, rec
}

var cluster = storage.Config{SystemIdentifier: "7000000000000000001", PGMajorVersion: 15, WALSegmentSize: 16 << 20}

func put(t *testing.T, repo *storage.Repository, base string, content []byte) storage.Meta {
	t.Helper()
	w, err := repo.Create(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	m, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readAll(repo *storage.Repository, key string) ([]byte, error) {
	r, err := repo.Open(context.Background(), key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// TestEncryptedRepositoryWriteOnlyHost is the recipient mode end to end on
// one backend: the writer holds only the public key.
func TestEncryptedRepositoryWriteOnlyHost(t *testing.T) {
	ctx := context.Background()
	idFile, rec := keyPair(t)
	b := storage.NewMemory()
	writer := storage.NewRepository(b, storage.CodecZstd).WithKeys(storage.Keys{Recipient: rec})
	cfg, err := writer.Init(ctx, cluster)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.FormatVersion != storage.EncryptedFormatVersion || cfg.Encryption == nil || cfg.Encryption.Method != storage.MethodRecipient {
		t.Fatalf("walkeeper.json = %+v", cfg)
	}
	content := bytes.Repeat([]byte("secret row value 4242; "), 20_000)
	m := put(t, writer, "wal/x", content)
	if !m.Encrypted || m.Size != int64(len(content)) {
		t.Fatalf("meta = %+v", m)
	}
	rc, _ := b.Get(ctx, "wal/x.zst", 0, -1)
	stored, _ := io.ReadAll(rc)
	rc.Close()
	if bytes.Contains(stored, []byte("secret row")) {
		t.Fatal("stored object holds plaintext")
	}
	if !bytes.HasPrefix(stored, []byte("WALKEEP\x02")) {
		t.Fatalf("header %q", stored[:16])
	}

	// The write-only host: metadata yes, content no.
	if _, err := readAll(writer, "wal/x.zst"); !errors.Is(err, storage.ErrNeedIdentity) || !strings.Contains(err.Error(), "wal/x.zst") {
		t.Fatalf("read with the public key only: %v", err)
	}
	if got, err := writer.Meta(ctx, "wal/x.zst"); err != nil || got.Size != m.Size || got.ContentMAC != m.ContentMAC {
		t.Fatalf("Meta = %+v, %v", got, err)
	}
	if _, err := writer.CheckStored(ctx, "wal/x.zst"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		content []byte
		want    storage.Match
	}{
		{content, storage.Same},
		{append(bytes.Clone(content), "more"...), storage.StoredIsPrefix},
		{content[:len(content)-1], storage.Different},
		{append(bytes.Clone(content[:len(content)-1]), 'X'), storage.Different},
	} {
		got, err := writer.CompareContent(ctx, "wal/x.zst", bytes.NewReader(c.content))
		if err != nil || got != c.want {
			t.Errorf("CompareContent(%d bytes) = %v, %v; want %v", len(c.content), got, err, c.want)
		}
	}

	// The restore host: the identity reads it.
	reader := storage.NewRepository(b, storage.CodecZstd).WithKeys(storage.Keys{IdentityFile: idFile})
	got, err := readAll(reader, "wal/x.zst")
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read with the identity: %d bytes, %v", len(got), err)
	}
	if err := reader.NeedContent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := storage.NewRepository(b, storage.CodecZstd).NeedContent(ctx); !errors.Is(err, storage.ErrNeedIdentity) {
		t.Fatalf("NeedContent without keys: %v", err)
	}

	// A flipped byte in the ciphertext fails authentication, naming the object.
	flipped := bytes.Clone(stored)
	flipped[len(flipped)/2] ^= 0x40
	if err := b.Put(ctx, "wal/y.zst", bytes.NewReader(flipped)); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(reader, "wal/y.zst"); !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), "wal/y.zst") {
		t.Fatalf("flipped byte: %v", err)
	}
	if _, err := writer.CheckStored(ctx, "wal/y.zst"); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("CheckStored of a flipped byte: %v", err)
	}
	// Truncated at a chunk boundary: the trailer check catches it.
	if err := b.Put(ctx, "wal/z.zst", bytes.NewReader(append(bytes.Clone(stored[:len(stored)-200]), stored[len(stored)-80:]...))); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(reader, "wal/z.zst"); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("truncated: %v", err)
	}
}

func TestEncryptionMismatchRefused(t *testing.T) {
	ctx := context.Background()
	_, rec := keyPair(t)
	otherID, otherRec := keyPair(t)
	enc := storage.NewMemory()
	if _, err := storage.NewRepository(enc, storage.CodecZstd).WithKeys(storage.Keys{Recipient: rec}).Init(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	plain := storage.NewMemory()
	if _, err := storage.NewRepository(plain, storage.CodecZstd).Init(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		b    storage.Backend
		keys storage.Keys
	}{
		"unencrypted write into an encrypted repository": {enc, storage.Keys{}},
		"another recipient":                              {enc, storage.Keys{Recipient: otherRec}},
		"another identity":                               {enc, storage.Keys{IdentityFile: otherID}},
		"a passphrase for a public-key repository":       {enc, storage.Keys{Passphrase: "p"}},
		"encrypted write into an unencrypted repository": {plain, storage.Keys{Recipient: rec}},
	} {
		repo := storage.NewRepository(c.b, storage.CodecZstd).WithKeys(c.keys)
		if _, err := repo.Init(ctx, cluster); !errors.Is(err, storage.ErrEncryptionMismatch) {
			t.Errorf("%s: Init = %v", name, err)
		} else if strings.Contains(err.Error(), "AGE-SECRET") || strings.Contains(err.Error(), otherRec) {
			t.Errorf("%s: error shows a key: %v", name, err)
		}
		repo = storage.NewRepository(c.b, storage.CodecZstd).WithKeys(c.keys)
		if _, err := repo.Create(ctx, "wal/n"); !errors.Is(err, storage.ErrEncryptionMismatch) {
			t.Errorf("%s: Create = %v", name, err)
		}
	}
	if _, err := enc.Stat(ctx, "wal/n.zst"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("something was written: %v", err)
	}
}

func TestPassphraseRepository(t *testing.T) {
	ctx := context.Background()
	b := storage.NewMemory()
	repo := storage.NewRepository(b, storage.CodecLZ4).WithKeys(storage.Keys{Passphrase: "correct horse"})
	cfg, err := repo.Init(ctx, cluster)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Encryption.Method != storage.MethodPassphrase || cfg.Encryption.Salt == "" {
		t.Fatalf("encryption = %+v", cfg.Encryption)
	}
	put(t, repo, "h", []byte("1\t0/3000000\tno recovery target specified\n"))
	again := storage.NewRepository(b, storage.CodecLZ4).WithKeys(storage.Keys{Passphrase: "correct horse"})
	if got, err := readAll(again, "h.lz4"); err != nil || !strings.HasPrefix(string(got), "1\t0/3000000") {
		t.Fatalf("read back %q, %v", got, err)
	}
	wrong := storage.NewRepository(b, storage.CodecLZ4).WithKeys(storage.Keys{Passphrase: "wrong"})
	if _, err := readAll(wrong, "h.lz4"); !errors.Is(err, storage.ErrEncryptionMismatch) {
		t.Fatalf("wrong passphrase: %v", err)
	}
}

// racingBackend lets two repositories read walkeeper.json before either
// creates it, as a stream and a backup started together on an empty
// repository do.
type racingBackend struct {
	storage.Backend
	arrived chan struct{}
}

func (b racingBackend) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := b.Backend.Get(ctx, key, off, n)
	if key == storage.ConfigKey && errors.Is(err, storage.ErrNotFound) {
		select {
		case b.arrived <- struct{}{}:
		case <-b.arrived:
		}
	}
	return rc, err
}

// TestConcurrentCreateOfPassphraseRepository: two runs that create one
// passphrase repository at once (each with its own random salt) must end
// up with the key walkeeper.json records, or every object one of them
// wrote would be unreadable.
func TestConcurrentCreateOfPassphraseRepository(t *testing.T) {
	ctx := context.Background()
	mem := storage.NewMemory()
	b := racingBackend{Backend: mem, arrived: make(chan struct{})}
	keys := storage.Keys{Passphrase: "correct horse battery staple"}
	repos := []*storage.Repository{
		storage.NewRepository(b, storage.CodecZstd).WithKeys(keys),
		storage.NewRepository(b, storage.CodecZstd).WithKeys(keys),
	}
	errs := make(chan error, 2)
	for i, r := range repos {
		go func() {
			if _, err := r.Init(ctx, cluster); err != nil {
				errs <- err
				return
			}
			w, err := r.Create(ctx, "wal/x"+string(rune('0'+i)))
			if err == nil {
				_, err = w.Write([]byte("content"))
			}
			if err == nil {
				_, err = w.Close()
			}
			errs <- err
		}()
	}
	for range repos {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	reader := storage.NewRepository(mem, storage.CodecZstd).WithKeys(keys)
	for i := range repos {
		key := "wal/x" + string(rune('0'+i)) + ".zst"
		if got, err := readAll(reader, key); err != nil || string(got) != "content" {
			t.Errorf("%s, written by run %d: %q, %v", key, i, got, err)
		}
	}
}
