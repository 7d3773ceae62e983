package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// ErrLocked means another walkeeper run holds the repository lock.
var ErrLocked = errors.New("repository is locked")

// ErrLockLost means a run lost the lock it held: another run took it over,
// or the lock object was removed. The run stops (its Lock's context is
// cancelled with this cause) and marks nothing complete. It is not
// ErrLocked: the run had started and failed.
var ErrLockLost = errors.New("lost the repository lock")

// LockInfo is the content of locks/<name>.json.
type LockInfo struct {
	Token     string    `json:"token"`
	Command   string    `json:"command"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Heartbeat time.Time `json:"heartbeat"`
}

// Lock timing. The holder rewrites the lock every lockRefresh; a lock whose
// heartbeat is older than lockStale is considered abandoned (its holder died
// on another host). On the same host a lock is stale as soon as its process
// is gone. A holder that could not refresh for lockStale-lockRefresh gives
// the lock up before anyone may call it stale. lockSettle is the wait of
// the write-then-verify fallback (see Lock).
var (
	lockRefresh = 30 * time.Second
	lockStale   = 3 * time.Minute
	lockSettle  = 750 * time.Millisecond
)

// LockKey is the key of the lock called name.
func LockKey(name string) string { return LocksPrefix + name + ".json" }

// lockMode is how a repository's backend can keep a lock exclusive.
type lockMode int

const (
	// lockConditional: PutIfAbsent creates, PutIfMatch refreshes and takes
	// over, DeleteIfMatch releases. Exclusive by the backend's contract.
	lockConditional lockMode = iota + 1
	// lockConditionalNoDelete: as lockConditional, but the server ignores
	// If-Match on DeleteObject, so release reads, compares, then deletes.
	lockConditionalNoDelete
	// lockWriteVerify: the server ignores conditional writes; write, wait
	// lockSettle, read back. Two runs starting together can both pass.
	lockWriteVerify
)

// atomicConditional marks backends whose conditional writes are atomic by
// construction (a hard link, a flock, a mutex), so no probe is needed.
type atomicConditional interface{ atomicConditional() }

func (*Local) atomicConditional()  {}
func (*Memory) atomicConditional() {}

// lockModeOf returns how locks work on this repository, probing the
// backend the first time: an S3-compatible server may ignore If-None-Match
// and If-Match and overwrite, which looks like success.
func (r *Repository) lockModeOf(ctx context.Context) (lockMode, error) {
	r.lockMu.Lock()
	defer r.lockMu.Unlock()
	if r.lockMode != 0 {
		return r.lockMode, nil
	}
	if _, ok := r.b.(atomicConditional); ok {
		r.lockMode = lockConditional
		return r.lockMode, nil
	}
	mode, err := probeConditional(ctx, r.b)
	if err != nil {
		return 0, fmt.Errorf("check that %s supports conditional writes: %w", r.b, err)
	}
	if mode == lockWriteVerify {
		slog.Warn("the storage server ignores conditional writes (If-None-Match / If-Match): the repository lock falls back to "+
			"write-then-verify, which two runs starting within a second can both pass; use a server that supports them "+
			"(AWS S3, Versity S3 Gateway 1.8) to make the lock exclusive", "repository", r.b.String())
	}
	r.lockMode = mode
	return mode, nil
}

// LocksExclusive reports whether Lock can keep runs apart on this
// repository for certain, probing an S3 server as Lock does, and says how
// in detail (for doctor).
func (r *Repository) LocksExclusive(ctx context.Context) (exclusive bool, detail string, err error) {
	mode, err := r.lockModeOf(ctx)
	if err != nil {
		return false, "", err
	}
	switch {
	case mode == lockWriteVerify:
		return false, "the storage server ignores conditional writes (If-None-Match / If-Match): locks fall back to " +
			"write-then-verify, which two runs starting within a second can both pass", nil
	case mode == lockConditionalNoDelete:
		return true, "locks are created with If-None-Match and refreshed with If-Match; the server ignores If-Match on " +
			"deletes, so release reads, compares and deletes", nil
	}
	if _, ok := r.b.(atomicConditional); ok {
		return true, "locks are created by hard link and refreshed under flock", nil
	}
	return true, "the server honours If-None-Match, If-Match and conditional deletes: locks are exclusive", nil
}

// probeConditional finds out whether the backend honours conditional
// writes: a second create of the same new key must fail, and so must a
// replace or a delete naming a version the key does not have.
func probeConditional(ctx context.Context, b Backend) (lockMode, error) {
	var key string
	// Remove the probe even when ctx has ended.
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		b.Delete(dctx, key)
		cancel()
	}()
	data := []byte(`{"probe":"conditional writes"}`)
	// A new random key cannot exist, so a refusal of its creation is the
	// server's hiccup (Versity S3 Gateway answers 409 "Existing Object is a
	// directory" now and then while another client creates objects beside
	// it): try once more with another key.
	for try := 1; ; try++ {
		var rnd [8]byte
		rand.Read(rnd[:])
		key = LocksPrefix + "probe-" + hex.EncodeToString(rnd[:]) + ".json"
		_, err := b.PutIfAbsent(ctx, key, data)
		if errors.Is(err, ErrConditionalUnsupported) {
			return lockWriteVerify, nil
		}
		if err == nil {
			break
		}
		if try == 2 || !errors.Is(err, ErrPrecondition) {
			return 0, err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return 0, err
		}
	}
	switch _, err := b.PutIfAbsent(ctx, key, data); {
	case err == nil:
		return lockWriteVerify, nil // If-None-Match ignored
	case errors.Is(err, ErrConditionalUnsupported):
		return lockWriteVerify, nil
	case !errors.Is(err, ErrPrecondition):
		return 0, err
	}
	switch _, err := b.PutIfMatch(ctx, key, data, `"00000000000000000000000000000000"`); {
	case err == nil:
		return lockWriteVerify, nil // If-Match ignored
	case errors.Is(err, ErrConditionalUnsupported):
		return lockWriteVerify, nil
	case !errors.Is(err, ErrPrecondition):
		return 0, err
	}
	switch err := b.DeleteIfMatch(ctx, key, `"00000000000000000000000000000000"`); {
	case errors.Is(err, ErrPrecondition):
		return lockConditional, nil
	case err == nil, errors.Is(err, ErrConditionalUnsupported):
		return lockConditionalNoDelete, nil
	default:
		return 0, err
	}
}

// Lock is a held repository lock. Do the locked work under Context, which
// ends when the lock is lost; Release (or Close) it when done.
type Lock struct {
	repo *Repository
	name string
	key  string
	mode lockMode

	ctx    context.Context
	cancel context.CancelCauseFunc
	// stopped ends the refresh loop (and a refresh in flight); done is
	// closed when the loop has returned.
	stopped context.Context
	stop    context.CancelFunc
	done    chan struct{}

	mu       sync.Mutex // serialises Refresh and guards what follows
	info     LockInfo
	data     []byte  // what we stored last
	version  Version // its version
	lastOK   time.Time
	lost     error
	released bool
}

// Lock takes the lock called name for command. It returns an error matching
// ErrLocked, naming the holder, when a live run holds it. The returned
// Lock's Context is derived from ctx.
func (r *Repository) Lock(ctx context.Context, name, command string) (*Lock, error) {
	mode, err := r.lockModeOf(ctx)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	var tok [12]byte
	rand.Read(tok[:])
	now := time.Now().UTC()
	l := &Lock{repo: r, name: name, key: LockKey(name), mode: mode,
		info: LockInfo{Token: hex.EncodeToString(tok[:]), Command: command, Host: host, PID: os.Getpid(), Started: now, Heartbeat: now}}
	if l.data, err = json.Marshal(l.info); err != nil {
		return nil, err
	}
	if mode == lockWriteVerify {
		err = l.acquireWriteVerify(ctx)
	} else {
		err = l.acquire(ctx)
	}
	if err != nil {
		return nil, err
	}
	l.lastOK = time.Now()
	l.ctx, l.cancel = context.WithCancelCause(ctx)
	l.stopped, l.stop = context.WithCancel(context.Background())
	l.done = make(chan struct{})
	go l.refreshLoop()
	return l, nil
}

// acquire creates the lock, or takes over a stale one, with conditional
// writes: of two runs, at most one succeeds at either.
func (l *Lock) acquire(ctx context.Context) error {
	b := l.repo.b
	for range 5 {
		v, err := b.PutIfAbsent(ctx, l.key, l.data)
		if err == nil {
			l.version = v
			return nil
		}
		if !errors.Is(err, ErrPrecondition) {
			return err
		}
		cur, cv, err := b.GetVersioned(ctx, l.key)
		if errors.Is(err, ErrNotFound) {
			continue // released in between: try again
		}
		if err != nil {
			return err
		}
		if bytes.Equal(cur, l.data) {
			// Our own create, retried by the client after a lost answer.
			l.version = cv
			return nil
		}
		held := parseLock(cur)
		if !held.stale() {
			return lockedBy(l.name, held)
		}
		// Its holder is gone: take it over unless another run changed it
		// since we read it.
		if v, err := b.PutIfMatch(ctx, l.key, l.data, cv); err == nil {
			l.version = v
			return nil
		} else if !errors.Is(err, ErrPrecondition) {
			return err
		}
	}
	return fmt.Errorf("%w: %s: other runs keep taking and releasing it; try again", ErrLocked, l.name)
}

// acquireWriteVerify is the fallback for servers that ignore conditional
// writes: the last writer wins, and a writer that waited lockSettle and
// still reads its own token assumes it did.
func (l *Lock) acquireWriteVerify(ctx context.Context) error {
	b := l.repo.b
	cur, _, err := b.GetVersioned(ctx, l.key)
	switch {
	case err == nil:
		if held := parseLock(cur); !held.stale() {
			return lockedBy(l.name, held)
		}
	case !errors.Is(err, ErrNotFound):
		return err
	}
	if err := b.Put(ctx, l.key, bytes.NewReader(l.data)); err != nil {
		return err
	}
	select {
	case <-time.After(lockSettle):
	case <-ctx.Done():
		return ctx.Err()
	}
	cur, v, err := b.GetVersioned(ctx, l.key)
	if err != nil {
		return err
	}
	if held := parseLock(cur); held.Token != l.info.Token {
		return fmt.Errorf("%w: %s by %s (pid %d on %s), started at the same moment; wait for it to finish",
			ErrLocked, l.name, held.Command, held.PID, held.Host)
	}
	l.version = v
	return nil
}

func lockedBy(name string, held LockInfo) error {
	return fmt.Errorf("%w: %s by %s (pid %d on %s, since %s); wait for it to finish",
		ErrLocked, name, held.Command, held.PID, held.Host, held.Started.Format(time.RFC3339))
}

// Context is cancelled when the lock is lost (context.Cause is then an
// error matching ErrLockLost) or when the context given to Lock ends.
func (l *Lock) Context() context.Context { return l.ctx }

// Err returns the error matching ErrLockLost once the lock was lost, else
// nil.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Refresh rewrites the lock's heartbeat now, if the lock is still ours. It
// returns an error matching ErrLockLost (and cancels Context) when another
// run took the lock over or it was removed; other errors (the storage is
// unreachable) leave the lock held. Call it before committing locked work.
func (l *Lock) Refresh(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return l.lost
	}
	if l.released {
		return fmt.Errorf("lock %s was released", l.name)
	}
	info := l.info
	info.Heartbeat = time.Now().UTC()
	data, err := json.Marshal(info)
	if err != nil {
		return err
	}
	b := l.repo.b
	var v Version
	if l.mode == lockWriteVerify {
		cur, _, err := b.GetVersioned(ctx, l.key)
		switch {
		case errors.Is(err, ErrNotFound):
			return l.loseLocked(nil)
		case err != nil:
			return err
		case parseLock(cur).Token != l.info.Token:
			return l.loseLocked(cur)
		}
		if err := b.Put(ctx, l.key, bytes.NewReader(data)); err != nil {
			return err
		}
	} else if v, err = b.PutIfMatch(ctx, l.key, data, l.version); errors.Is(err, ErrPrecondition) {
		cur, cv, gerr := b.GetVersioned(ctx, l.key)
		switch {
		case gerr == nil && bytes.Equal(cur, data):
			v = cv // our write, retried by the client after a lost answer
		case gerr == nil:
			return l.loseLocked(cur)
		case errors.Is(gerr, ErrNotFound):
			return l.loseLocked(nil)
		default:
			return gerr
		}
	} else if err != nil {
		return err
	}
	l.info, l.data, l.version, l.lastOK = info, data, v, time.Now()
	return nil
}

// loseLocked records the loss (l.mu held); cur is what the lock object now
// holds, nil when it is gone.
func (l *Lock) loseLocked(cur []byte) error {
	what := "the lock object was removed"
	if cur != nil {
		h := parseLock(cur)
		what = fmt.Sprintf("it was taken over by %s (pid %d on %s, since %s)", h.Command, h.PID, h.Host, h.Started.Format(time.RFC3339))
	}
	return l.loseWith(what)
}

func (l *Lock) loseWith(what string) error {
	l.lost = fmt.Errorf("%w %s: %s; this run stops and marks nothing complete", ErrLockLost, l.name, what)
	if l.cancel != nil {
		l.cancel(l.lost)
	}
	return l.lost
}

// refreshLoop refreshes every lockRefresh, sooner again after a failure,
// and gives the lock up when it could not refresh for so long that another
// run may soon call it stale.
func (l *Lock) refreshLoop() {
	defer close(l.done)
	wait := lockRefresh
	for {
		select {
		case <-l.stopped.Done():
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(l.stopped, lockRefresh)
		err := l.Refresh(ctx)
		cancel()
		switch {
		case l.stopped.Err() != nil:
			return
		case err == nil:
			wait = lockRefresh
		case errors.Is(err, ErrLockLost):
			return
		default:
			l.mu.Lock()
			since := time.Since(l.lastOK)
			if since > lockStale-lockRefresh {
				l.loseWith(fmt.Sprintf("it could not be refreshed for %s (%v), so another run may take it over", since.Round(time.Second), err))
				l.mu.Unlock()
				return
			}
			l.mu.Unlock()
			wait = max(lockRefresh/6, time.Millisecond)
		}
	}
}

// Release stops refreshing and removes the lock if it is still ours.
func (l *Lock) Release(ctx context.Context) error {
	l.stop()
	<-l.done
	defer l.cancel(context.Canceled)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil || l.released {
		return nil // not ours any more (or released already): leave it alone
	}
	l.released = true
	b := l.repo.b
	if l.mode == lockConditional {
		err := b.DeleteIfMatch(ctx, l.key, l.version)
		if errors.Is(err, ErrPrecondition) {
			return nil
		}
		return err
	}
	// The server ignores If-Match on delete: read, compare, delete.
	cur, _, err := b.GetVersioned(ctx, l.key)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil || parseLock(cur).Token != l.info.Token {
		return err
	}
	return b.Delete(ctx, l.key)
}

// Close releases the lock under its own 30-second deadline, so it still
// runs when the command's context has ended (defer lock.Close()).
func (l *Lock) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return l.Release(ctx)
}

// Stale reports whether the lock's holder is gone: on this host its
// process has exited; on another, its heartbeat is older than the limit.
func (i LockInfo) Stale() bool { return i.stale() }

func (i LockInfo) stale() bool {
	if host, _ := os.Hostname(); host == i.Host && i.PID > 0 {
		// Same host: the process tells. EPERM means it exists.
		err := syscall.Kill(i.PID, 0)
		return errors.Is(err, syscall.ESRCH)
	}
	return time.Since(i.Heartbeat) > lockStale
}

// parseLock decodes a lock object; an unreadable one has a zero heartbeat
// and no PID, so it is stale.
func parseLock(data []byte) LockInfo {
	var info LockInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return LockInfo{}
	}
	return info
}

// ReadJSON reads a small plain JSON object (walkeeper.json, backup.json,
// a stream status) into v.
func (r *Repository) ReadJSON(ctx context.Context, key string, v any) error {
	rc, err := r.b.Get(ctx, key, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 16<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w: %w", key, ErrCorrupt, err)
	}
	return nil
}

// WriteJSON stores v as a small plain JSON object, atomically.
func (r *Repository) WriteJSON(ctx context.Context, key string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return r.b.Put(ctx, key, bytes.NewReader(append(data, '\n')))
}

// CreateJSON stores v as a small plain JSON object only if key does not
// exist; an existing one gives an error matching ErrExists. On a server
// that ignores conditional writes (see Lock) it checks with a Stat first,
// which cannot exclude a writer racing it.
func (r *Repository) CreateJSON(ctx context.Context, key string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	r.lockMu.Lock()
	weak := r.lockMode == lockWriteVerify
	r.lockMu.Unlock()
	if !weak {
		_, err = r.b.PutIfAbsent(ctx, key, data)
		if errors.Is(err, ErrPrecondition) {
			return fmt.Errorf("create %s: %w", key, ErrExists)
		}
		if !errors.Is(err, ErrConditionalUnsupported) {
			return err
		}
	}
	if _, err := r.b.Stat(ctx, key); err == nil {
		return fmt.Errorf("create %s: %w", key, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	return r.b.Put(ctx, key, bytes.NewReader(data))
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
