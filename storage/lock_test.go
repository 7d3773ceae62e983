package storage

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLockMemory(t *testing.T) {
	lockSettle = 10 * time.Millisecond
	testLock(t, NewRepository(NewMemory(), CodecZstd))
}

// TestLockLocal uses the local backend's atomic create.
func TestLockLocal(t *testing.T) {
	b, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	repo := NewRepository(b, CodecZstd)
	testLock(t, repo)
	// Many racers at once: exactly one wins.
	wins := make(chan bool, 16)
	for range 16 {
		go func() {
			l, err := repo.Lock(context.Background(), "race", "backup")
			wins <- err == nil
			_ = l
		}()
	}
	n := 0
	for range 16 {
		if <-wins {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d racers took the lock", n)
	}
}

func testLock(t *testing.T, repo *Repository) {
	ctx := context.Background()
	l, err := repo.Lock(ctx, "backup", "backup")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Lock(ctx, "backup", "backup"); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	if _, err := repo.Lock(ctx, "other", "delete"); err != nil {
		t.Fatalf("a lock of another name: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l2, err := repo.Lock(ctx, "backup", "backup")
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Release(ctx)

	// A lock left by a process that no longer exists on this host is stale.
	dead := LockInfo{Token: "x", Command: "backup", Host: hostname(), PID: 1 << 30, Started: time.Now(), Heartbeat: time.Now()}
	repo.writeLock(ctx, LockKey("backup"), dead)
	l3, err := repo.Lock(ctx, "backup", "backup")
	if err != nil {
		t.Fatalf("stale lock of a dead process not recovered: %v", err)
	}
	l3.Release(ctx)
	// On another host only the heartbeat tells.
	remote := LockInfo{Token: "y", Command: "backup", Host: "elsewhere", PID: 1, Started: time.Now(), Heartbeat: time.Now()}
	repo.writeLock(ctx, LockKey("backup"), remote)
	if _, err := repo.Lock(ctx, "backup", "backup"); !errors.Is(err, ErrLocked) {
		t.Fatalf("fresh remote lock: %v, want ErrLocked", err)
	}
	remote.Heartbeat = time.Now().Add(-2 * lockStale)
	repo.writeLock(ctx, LockKey("backup"), remote)
	if _, err := repo.Lock(ctx, "backup", "backup"); err != nil {
		t.Fatalf("remote lock without heartbeat not recovered: %v", err)
	}
}
