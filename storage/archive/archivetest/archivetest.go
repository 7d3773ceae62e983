// Package archivetest fabricates WAL for unit tests of the code above the
// archive (wal-fetch, wal-push): a repository with walkeeper.json on the
// in-memory backend, segments whose first page header is what PostgreSQL
// writes, and stored WAL objects with any codec. Segments are 1 MiB to stay
// quick.
package archivetest

import (
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// SegSize and SysID are the fabricated cluster's segment size and system
// identifier.
const (
	SegSize = 1 << 20
	SysID   = "7312345678901234567"
)

// Repo returns a repository with walkeeper.json, its backend and a context.
func Repo(t testing.TB) (*storage.Repository, *storage.Memory, context.Context) {
	t.Helper()
	mem := storage.NewMemory()
	repo := storage.NewRepository(mem, storage.CodecZstd)
	ctx := context.Background()
	if _, err := repo.Init(ctx, storage.Config{SystemIdentifier: SysID, PGMajorVersion: 15, WALSegmentSize: SegSize}); err != nil {
		t.Fatal(err)
	}
	return repo, mem, ctx
}

// Segment returns segment content for name: a long page header as
// PostgreSQL writes it (magic, info flags with XLP_LONG_HEADER, timeline,
// page address, system identifier, segment size, block size), then
// pseudo-random bytes from seed.
func Segment(t testing.TB, name, sysid string, seed uint64) []byte {
	t.Helper()
	n, err := archive.ParseName(name, SegSize)
	if err != nil {
		t.Fatal(err)
	}
	id, err := strconv.ParseUint(sysid, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, SegSize)
	r := rand.New(rand.NewPCG(seed, n.Seg))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	clear(data[:40])
	binary.NativeEndian.PutUint16(data[0:], 0xD110)
	binary.NativeEndian.PutUint16(data[2:], 0x0002)
	binary.NativeEndian.PutUint32(data[4:], n.TLI)
	binary.NativeEndian.PutUint64(data[8:], n.Seg*SegSize)
	binary.NativeEndian.PutUint64(data[24:], id)
	binary.NativeEndian.PutUint32(data[32:], SegSize)
	binary.NativeEndian.PutUint32(data[36:], 8192)
	return data
}

// Put stores content under the WAL file name with codec c and returns the
// key.
func Put(t testing.TB, mem *storage.Memory, name string, c storage.Codec, content []byte) string {
	t.Helper()
	repo := storage.NewRepository(mem, c)
	key := Key(t, repo, name)
	w, err := repo.Create(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return key + c.Ext()
}

// Key is the key (without codec extension) of the WAL file name in repo's
// layout.
func Key(t testing.TB, repo *storage.Repository, name string) string {
	t.Helper()
	key, err := archive.Key(context.Background(), repo, name)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// Read reads a stored WAL file, verified.
func Read(t testing.TB, repo *storage.Repository, name string) []byte {
	t.Helper()
	info, err := archive.Find(context.Background(), repo, name)
	if err != nil {
		t.Fatal(err)
	}
	return ReadKey(t, repo, info.Key)
}

// ReadKey reads the stored object key, verified.
func ReadKey(t testing.TB, repo *storage.Repository, key string) []byte {
	t.Helper()
	r, err := repo.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Keys lists the keys under prefix, walkeeper.json left out.
func Keys(t testing.TB, b storage.Backend, prefix string) []string {
	t.Helper()
	var keys []string
	err := b.List(context.Background(), prefix, func(o storage.ObjectInfo) error {
		if o.Key != storage.ConfigKey {
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// WALKey is the key (without codec extension) of the WAL file name in a
// repository of the format this walkeeper creates.
func WALKey(name string) string { return archive.LayoutFor(storage.FormatVersion).Key(name) }
