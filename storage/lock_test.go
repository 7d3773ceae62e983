package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

// plantLock stores info as the lock called name, unconditionally, as
// another run (or a crashed one) would have left it.
func plantLock(t *testing.T, repo *Repository, name string, info LockInfo) {
	t.Helper()
	data, _ := json.Marshal(info)
	if err := repo.b.Put(context.Background(), LockKey(name), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func heldToken(t *testing.T, repo *Repository, name string) string {
	t.Helper()
	data, _, err := repo.b.GetVersioned(context.Background(), LockKey(name))
	if errors.Is(err, ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return parseLock(data).Token
}

func mustLock(t *testing.T, repo *Repository, name string) *Lock {
	t.Helper()
	l, err := repo.Lock(context.Background(), name, "backup")
	if err != nil {
		t.Fatalf("lock %s: %v", name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func localRepo(t *testing.T) *Repository {
	b, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return NewRepository(b, CodecZstd)
}

// s3Repos returns a function that makes repositories on fresh prefixes of
// one real S3 server.
func s3Repos(t *testing.T) func(t *testing.T) *Repository {
	srv := harness.StartS3(t)
	n := 0
	return func(t *testing.T) *Repository {
		n++
		return NewRepository(newTestS3(t, srv, "locks"+strings.Repeat("x", n)+"/"), CodecZstd)
	}
}

// lockBackends are the repositories every lock test runs on.
func lockBackends(t *testing.T) map[string]func(t *testing.T) *Repository {
	return map[string]func(t *testing.T) *Repository{
		"memory": func(*testing.T) *Repository { return NewRepository(NewMemory(), CodecZstd) },
		"local":  localRepo,
		"s3":     s3Repos(t),
	}
}

func TestLock(t *testing.T) {
	for name, newRepo := range lockBackends(t) {
		t.Run(name, func(t *testing.T) {
			repo := newRepo(t)
			if mode, err := repo.lockModeOf(context.Background()); err != nil || mode != lockConditional {
				t.Fatalf("lock mode %v, %v; want conditional (versitygw supports If-None-Match, If-Match and conditional deletes)", mode, err)
			}
			testLock(t, repo)
			testLockRace(t, repo)
		})
	}
}

// testLockRace: many racers at once, exactly one wins.
func testLockRace(t *testing.T, repo *Repository) {
	const n = 16
	locks := make(chan *Lock, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := repo.Lock(context.Background(), "race", "backup")
			if err != nil {
				errs <- err
				return
			}
			locks <- l
		}()
	}
	wg.Wait()
	close(locks)
	close(errs)
	won := 0
	for l := range locks {
		won++
		l.Close()
	}
	for err := range errs {
		if !errors.Is(err, ErrLocked) {
			t.Errorf("a racer failed with %v, want ErrLocked", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d racers took the lock", won, n)
	}
}

func testLock(t *testing.T, repo *Repository) {
	ctx := context.Background()
	l := mustLock(t, repo, "backup")
	if _, err := repo.Lock(ctx, "backup", "backup"); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	mustLock(t, repo, "other")
	if err := l.Refresh(ctx); err != nil {
		t.Fatalf("refresh of a held lock: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if tok := heldToken(t, repo, "backup"); tok != "" {
		t.Fatalf("released lock still stored (token %s)", tok)
	}
	l2 := mustLock(t, repo, "backup")
	l2.Release(ctx)

	// A lock left by a process that no longer exists on this host is stale.
	plantLock(t, repo, "backup", LockInfo{Token: "x", Command: "backup", Host: hostname(), PID: 1 << 30, Started: time.Now(), Heartbeat: time.Now()})
	l3 := mustLock(t, repo, "backup")
	l3.Release(ctx)
	// On another host only the heartbeat tells.
	remote := LockInfo{Token: "y", Command: "backup", Host: "elsewhere", PID: 1, Started: time.Now(), Heartbeat: time.Now()}
	plantLock(t, repo, "backup", remote)
	if _, err := repo.Lock(ctx, "backup", "backup"); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "elsewhere") {
		t.Fatalf("fresh remote lock: %v, want ErrLocked naming the host", err)
	}
	remote.Heartbeat = time.Now().Add(-2 * lockStale)
	plantLock(t, repo, "backup", remote)
	l4 := mustLock(t, repo, "backup")
	// An unreadable lock is stale too.
	l4.Release(ctx)
	if err := repo.b.Put(ctx, LockKey("backup"), strings.NewReader("not json")); err != nil {
		t.Fatal(err)
	}
	mustLock(t, repo, "backup").Release(ctx)
}

// TestLockLost: a holder whose lock another run took over, or that was
// removed, finds out at its next refresh: Refresh and the lock's context
// fail with ErrLockLost, and the holder neither rewrites nor removes what
// is stored now.
func TestLockLost(t *testing.T) {
	ctx := context.Background()
	taker := LockInfo{Token: "taker", Command: "backup", Host: "elsewhere", PID: 4242, Started: time.Now(), Heartbeat: time.Now()}
	for name, newRepo := range lockBackends(t) {
		t.Run(name, func(t *testing.T) {
			repo := newRepo(t)

			l := mustLock(t, repo, "backup")
			plantLock(t, repo, "backup", taker)
			err := l.Refresh(ctx)
			if !errors.Is(err, ErrLockLost) || !strings.Contains(err.Error(), "taken over by backup (pid 4242 on elsewhere") {
				t.Fatalf("refresh after a takeover: %v, want ErrLockLost naming the new holder", err)
			}
			if errors.Is(err, ErrLocked) {
				t.Errorf("a lost lock must not read as ErrLocked (exit 3): %v", err)
			}
			if cause := context.Cause(l.Context()); l.Context().Err() == nil || !errors.Is(cause, ErrLockLost) {
				t.Fatalf("the holder's context: err %v, cause %v; want cancelled with ErrLockLost", l.Context().Err(), cause)
			}
			if !errors.Is(l.Err(), ErrLockLost) {
				t.Errorf("Err() = %v", l.Err())
			}
			if err := l.Release(ctx); err != nil {
				t.Errorf("release of a lost lock: %v", err)
			}
			if tok := heldToken(t, repo, "backup"); tok != "taker" {
				t.Errorf("after the holder released, the lock holds token %q, want the taker's", tok)
			}

			repo.b.Delete(ctx, LockKey("backup"))
			l = mustLock(t, repo, "backup")
			repo.b.Delete(ctx, LockKey("backup"))
			if err := l.Refresh(ctx); !errors.Is(err, ErrLockLost) || !strings.Contains(err.Error(), "removed") {
				t.Fatalf("refresh after the lock was removed: %v, want ErrLockLost", err)
			}
			if tok := heldToken(t, repo, "backup"); tok != "" {
				t.Errorf("the holder recreated its removed lock (token %s)", tok)
			}
		})
	}
}

// TestLockLostStopsTheHolder: the refresh loop notices the takeover by
// itself and cancels the holder's context.
func TestLockLostStopsTheHolder(t *testing.T) {
	saved := lockRefresh
	lockRefresh = 20 * time.Millisecond
	t.Cleanup(func() { lockRefresh = saved })
	repo := localRepo(t)
	l := mustLock(t, repo, "backup")
	plantLock(t, repo, "backup", LockInfo{Token: "taker", Command: "delete", Host: "elsewhere", PID: 7, Started: time.Now(), Heartbeat: time.Now()})
	select {
	case <-l.Context().Done():
	case <-time.After(time.Minute):
		t.Fatal("the holder did not notice in a minute that its lock was taken over")
	}
	if cause := context.Cause(l.Context()); !errors.Is(cause, ErrLockLost) || !strings.Contains(cause.Error(), "taken over by delete") {
		t.Fatalf("cause %v, want ErrLockLost", cause)
	}
	l.Close()
	if tok := heldToken(t, repo, "backup"); tok != "taker" {
		t.Errorf("lock holds token %q after the old holder stopped, want the taker's", tok)
	}
}

// ignoringBackend is a server that accepts conditional headers and
// ignores them (an old S3-compatible server): conditional writes overwrite.
type ignoringBackend struct{ Backend }

func (b ignoringBackend) PutIfAbsent(ctx context.Context, key string, data []byte) (Version, error) {
	return b.overwrite(ctx, key, data)
}

func (b ignoringBackend) PutIfMatch(ctx context.Context, key string, data []byte, _ Version) (Version, error) {
	return b.overwrite(ctx, key, data)
}

func (b ignoringBackend) DeleteIfMatch(ctx context.Context, key string, _ Version) error {
	return b.Delete(ctx, key)
}

func (b ignoringBackend) overwrite(ctx context.Context, key string, data []byte) (Version, error) {
	if err := b.Put(ctx, key, bytes.NewReader(data)); err != nil {
		return "", err
	}
	return contentVersion(data), nil
}

// TestLockFallsBackWhenServerIgnoresConditions: the probe finds out, the
// lock falls back to write-then-verify (still exclusive for runs that do
// not start together, still noticing a takeover), and the probe object is
// removed.
func TestLockFallsBackWhenServerIgnoresConditions(t *testing.T) {
	saved := lockSettle
	lockSettle = 10 * time.Millisecond
	t.Cleanup(func() { lockSettle = saved })
	mem := NewMemory()
	repo := NewRepository(ignoringBackend{mem}, CodecZstd)
	if mode, err := repo.lockModeOf(context.Background()); err != nil || mode != lockWriteVerify {
		t.Fatalf("lock mode %v, %v; want write-then-verify", mode, err)
	}
	testLock(t, repo)
	l := mustLock(t, repo, "backup")
	plantLock(t, repo, "backup", LockInfo{Token: "taker", Command: "backup", Host: "elsewhere", PID: 1, Started: time.Now(), Heartbeat: time.Now()})
	if err := l.Refresh(context.Background()); !errors.Is(err, ErrLockLost) {
		t.Fatalf("refresh after a takeover: %v, want ErrLockLost", err)
	}
	mem.List(context.Background(), LocksPrefix, func(o ObjectInfo) error {
		if strings.Contains(o.Key, "probe") {
			t.Errorf("the probe object %s was left behind", o.Key)
		}
		return nil
	})
	// started.json and the like: an existing object is still refused.
	if err := repo.CreateJSON(context.Background(), "backups/x/started.json", map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := repo.CreateJSON(context.Background(), "backups/x/started.json", map[string]int{"a": 2}); !errors.Is(err, ErrExists) {
		t.Fatalf("second CreateJSON: %v, want ErrExists", err)
	}
}

// TestCreateJSON: a second create of the same key fails on every backend.
func TestCreateJSON(t *testing.T) {
	for name, newRepo := range lockBackends(t) {
		t.Run(name, func(t *testing.T) {
			repo := newRepo(t)
			ctx := context.Background()
			if err := repo.CreateJSON(ctx, "backups/x/started.json", map[string]int{"pid": 1}); err != nil {
				t.Fatal(err)
			}
			if err := repo.CreateJSON(ctx, "backups/x/started.json", map[string]int{"pid": 2}); !errors.Is(err, ErrExists) {
				t.Fatalf("second CreateJSON: %v, want ErrExists", err)
			}
			var got map[string]int
			if err := repo.ReadJSON(ctx, "backups/x/started.json", &got); err != nil || got["pid"] != 1 {
				t.Fatalf("started.json = %v, %v; want the first", got, err)
			}
		})
	}
}
