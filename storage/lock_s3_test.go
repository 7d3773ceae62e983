package storage

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/walkeeper/walkeeper/test/harness"
)

// newTestS3 returns an S3 backend on a fresh prefix of srv's bucket.
func newTestS3(t *testing.T, srv *harness.S3Server, prefix string) *S3 {
	t.Helper()
	for _, kv := range srv.Env() {
		for i := range kv {
			if kv[i] == '=' {
				t.Setenv(kv[:i], kv[i+1:])
				break
			}
		}
	}
	b, err := NewS3(context.Background(), S3Options{Bucket: srv.Bucket, Prefix: prefix, Endpoint: srv.Endpoint, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// gatedBackend orders two racers' requests on one key: the writes of the
// first wait until the second has started, and the writes of the second
// wait until the first has finished taking the lock. That is the schedule
// of two runs started together whose second write is slow to arrive.
type gatedBackend struct {
	Backend
	key       string
	started   func() // called on the racer's first request for key
	beforePut func() // called before every write of key
	once      sync.Once
}

func (g *gatedBackend) touch(key string) {
	if key == g.key && g.started != nil {
		g.once.Do(g.started)
	}
}

func (g *gatedBackend) write(key string) {
	g.touch(key)
	if key == g.key && g.beforePut != nil {
		g.beforePut()
	}
}

func (g *gatedBackend) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	g.touch(key)
	return g.Backend.Get(ctx, key, off, n)
}

func (g *gatedBackend) GetVersioned(ctx context.Context, key string) ([]byte, Version, error) {
	g.touch(key)
	return g.Backend.GetVersioned(ctx, key)
}

func (g *gatedBackend) Put(ctx context.Context, key string, r io.Reader) error {
	g.write(key)
	return g.Backend.Put(ctx, key, r)
}

func (g *gatedBackend) PutIfAbsent(ctx context.Context, key string, data []byte) (Version, error) {
	g.write(key)
	return g.Backend.PutIfAbsent(ctx, key, data)
}

func (g *gatedBackend) PutIfMatch(ctx context.Context, key string, data []byte, v Version) (Version, error) {
	g.write(key)
	return g.Backend.PutIfMatch(ctx, key, data, v)
}

// TestLockExclusiveOnS3WhenWritesInterleave races two runs for the lock on
// a real S3 server in the schedule that defeats write-then-verify: the
// second run finds no lock, and its write lands after the first run has
// read its own lock back. Exactly one may hold the lock.
func TestLockExclusiveOnS3WhenWritesInterleave(t *testing.T) {
	srv := harness.StartS3(t)
	s3 := newTestS3(t, srv, "interleave/")
	key := LockKey("backup")
	bStarted, aDone := make(chan struct{}), make(chan struct{})
	a := NewRepository(&gatedBackend{Backend: s3, key: key, beforePut: func() { <-bStarted }}, CodecZstd)
	b := NewRepository(&gatedBackend{Backend: s3, key: key, started: func() { close(bStarted) }, beforePut: func() { <-aDone }}, CodecZstd)
	ctx := context.Background()
	var lb *Lock
	var errB error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		lb, errB = b.Lock(ctx, "backup", "backup")
	}()
	la, errA := a.Lock(ctx, "backup", "backup")
	close(aDone)
	wg.Wait()
	for _, l := range []*Lock{la, lb} {
		if l != nil {
			defer l.Close()
		}
	}
	if errA == nil && errB == nil {
		t.Fatalf("both runs hold the lock")
	}
	if errA != nil && errB != nil {
		t.Fatalf("neither run holds the lock: %v; %v", errA, errB)
	}
	for _, err := range []error{errA, errB} {
		if err != nil && !errors.Is(err, ErrLocked) {
			t.Errorf("the losing run: %v, want ErrLocked", err)
		}
	}
}
