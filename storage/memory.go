package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

// Memory is a Backend that keeps objects in a map. It exists for unit tests
// of the layers above storage; it is not bounded in memory.
type Memory struct {
	mu      sync.Mutex
	objects map[string]memObject
}

type memObject struct {
	data    []byte
	modTime time.Time
}

// NewMemory returns an empty in-memory backend.
func NewMemory() *Memory { return &Memory{objects: map[string]memObject{}} }

func (m *Memory) String() string { return "memory" }

// Put reads r fully and then stores it, so a failed read stores nothing.
func (m *Memory) Put(ctx context.Context, key string, r io.Reader) error {
	if err := ValidateKey(key); err != nil {
		return Permanent(err)
	}
	data, err := io.ReadAll(ctxReader{ctx: ctx, r: r})
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objects[key] = memObject{data: data, modTime: time.Now()}
	return nil
}

// Get returns a reader over a range of the stored bytes.
func (m *Memory) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	o, ok := m.objects[key]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("open %s: %w", key, ErrNotFound)
	}
	data := o.data
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	data = data[off:]
	if length >= 0 && length < int64(len(data)) {
		data = data[:length]
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// Stat returns the object's size and time.
func (m *Memory) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok {
		return ObjectInfo{}, fmt.Errorf("stat %s: %w", key, ErrNotFound)
	}
	return ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

// List calls fn for a snapshot of the matching keys, in order.
func (m *Memory) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return m.ListFrom(ctx, prefix, "", fn)
}

// ListFrom is List of the keys after after.
func (m *Memory) ListFrom(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error {
	m.mu.Lock()
	var infos []ObjectInfo
	for k, o := range m.objects {
		if strings.HasPrefix(k, prefix) && k > after {
			infos = append(infos, ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	m.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes the key if present.
func (m *Memory) Delete(ctx context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objects, key)
	return nil
}

// DeleteMany removes the keys present.
func (m *Memory) DeleteMany(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := m.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// contentVersion is the Version of the local and memory backends: a
// SHA-256 of the content, so a version names exactly those bytes.
func contentVersion(data []byte) Version {
	sum := sha256.Sum256(data)
	return Version(hex.EncodeToString(sum[:]))
}

// PutIfAbsent stores a copy of data unless key exists.
func (m *Memory) PutIfAbsent(ctx context.Context, key string, data []byte) (Version, error) {
	if err := ValidateKey(key); err != nil {
		return "", Permanent(err)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.objects[key]; ok {
		return "", fmt.Errorf("create %s: %w: it exists", key, ErrPrecondition)
	}
	m.objects[key] = memObject{data: bytes.Clone(data), modTime: time.Now()}
	return contentVersion(data), nil
}

// PutIfMatch replaces key if its content has version v.
func (m *Memory) PutIfMatch(ctx context.Context, key string, data []byte, v Version) (Version, error) {
	if err := ValidateKey(key); err != nil {
		return "", Permanent(err)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok || contentVersion(o.data) != v {
		return "", fmt.Errorf("replace %s: %w: it is missing or was changed", key, ErrPrecondition)
	}
	m.objects[key] = memObject{data: bytes.Clone(data), modTime: time.Now()}
	return contentVersion(data), nil
}

// DeleteIfMatch removes key if its content has version v.
func (m *Memory) DeleteIfMatch(ctx context.Context, key string, v Version) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok {
		return nil
	}
	if contentVersion(o.data) != v {
		return fmt.Errorf("delete %s: %w: it was changed", key, ErrPrecondition)
	}
	delete(m.objects, key)
	return nil
}

// GetVersioned returns a copy of the object and its version.
func (m *Memory) GetVersioned(ctx context.Context, key string) ([]byte, Version, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[key]
	if !ok {
		return nil, "", fmt.Errorf("open %s: %w", key, ErrNotFound)
	}
	if len(o.data) > maxVersioned {
		return nil, "", fmt.Errorf("read %s: larger than %d bytes", key, maxVersioned)
	}
	return bytes.Clone(o.data), contentVersion(o.data), nil
}

// Corrupt flips one bit of a stored object (for tests).
func (m *Memory) Corrupt(key string, off int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.objects[key]
	o.data[off] ^= 0x01
}
