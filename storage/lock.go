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
	"os"
	"syscall"
	"time"
)

// ErrLocked means another walkeeper run holds the repository lock.
var ErrLocked = errors.New("repository is locked")

// LockInfo is the content of locks/<name>.json.
type LockInfo struct {
	Token     string    `json:"token"`
	Command   string    `json:"command"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Heartbeat time.Time `json:"heartbeat"`
}

// Lock is a held repository lock; Release it when done.
type Lock struct {
	repo *Repository
	key  string
	info LockInfo
	stop chan struct{}
	done chan struct{}
}

// Lock timing. The holder rewrites the lock every lockRefresh; a lock whose
// heartbeat is older than lockStale is considered abandoned (its holder died
// on another host). On the same host a lock is stale as soon as its process
// is gone. A local repository creates the lock atomically (a hard link fails
// when the name exists). Object stores have no portable create-if-absent,
// so there acquiring is write-then-verify: after writing, the acquirer waits
// lockSettle and reads the lock back; when two runs race, the last writer
// wins and the other sees a foreign token and backs off.
var (
	lockRefresh = 30 * time.Second
	lockStale   = 3 * time.Minute
	lockSettle  = 750 * time.Millisecond
)

// LockKey is the key of the lock called name.
func LockKey(name string) string { return LocksPrefix + name + ".json" }

// exclusiveCreator is implemented by backends that can create an object
// only if it is absent, atomically (the local directory).
type exclusiveCreator interface {
	PutIfAbsent(ctx context.Context, key string, data []byte) (bool, error)
}

// Lock takes the lock called name for command. It returns an error matching
// ErrLocked, naming the holder, when a live run holds it.
func (r *Repository) Lock(ctx context.Context, name, command string) (*Lock, error) {
	key := LockKey(name)
	held, err := r.readLock(ctx, key)
	switch {
	case err == nil && !held.stale():
		return nil, lockedBy(name, held)
	case err == nil: // stale: its holder is gone; remove it unless another run just replaced it
		if again, err := r.readLock(ctx, key); err == nil && again.Token == held.Token {
			if err := r.b.Delete(ctx, key); err != nil {
				return nil, err
			}
		}
	case !errors.Is(err, ErrNotFound):
		return nil, err
	}
	host, _ := os.Hostname()
	var tok [12]byte
	rand.Read(tok[:])
	now := time.Now().UTC()
	info := LockInfo{Token: hex.EncodeToString(tok[:]), Command: command, Host: host, PID: os.Getpid(), Started: now, Heartbeat: now}
	if ex, ok := r.b.(exclusiveCreator); ok {
		data, err := json.Marshal(info)
		if err != nil {
			return nil, err
		}
		created, err := ex.PutIfAbsent(ctx, key, data)
		if err != nil {
			return nil, err
		}
		if !created {
			held, _ := r.readLock(ctx, key)
			return nil, lockedBy(name, held)
		}
		l := &Lock{repo: r, key: key, info: info, stop: make(chan struct{}), done: make(chan struct{})}
		go l.refresh()
		return l, nil
	}
	if err := r.writeLock(ctx, key, info); err != nil {
		return nil, err
	}
	select {
	case <-time.After(lockSettle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	held, err = r.readLock(ctx, key)
	if err != nil {
		return nil, err
	}
	if held.Token != info.Token {
		return nil, fmt.Errorf("%w: %s by %s (pid %d on %s), started at the same moment; wait for it to finish",
			ErrLocked, name, held.Command, held.PID, held.Host)
	}
	l := &Lock{repo: r, key: key, info: info, stop: make(chan struct{}), done: make(chan struct{})}
	go l.refresh()
	return l, nil
}

func lockedBy(name string, held LockInfo) error {
	return fmt.Errorf("%w: %s by %s (pid %d on %s, since %s); wait for it to finish",
		ErrLocked, name, held.Command, held.PID, held.Host, held.Started.Format(time.RFC3339))
}

func (l *Lock) refresh() {
	defer close(l.done)
	t := time.NewTicker(lockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), lockRefresh)
			l.info.Heartbeat = time.Now().UTC()
			l.repo.writeLock(ctx, l.key, l.info)
			cancel()
		}
	}
}

// Release removes the lock if it is still ours.
func (l *Lock) Release(ctx context.Context) error {
	close(l.stop)
	<-l.done
	held, err := l.repo.readLock(ctx, l.key)
	if err != nil || held.Token != l.info.Token {
		return err
	}
	return l.repo.b.Delete(ctx, l.key)
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

func (r *Repository) writeLock(ctx context.Context, key string, info LockInfo) error {
	data, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return r.b.Put(ctx, key, bytes.NewReader(data))
}

func (r *Repository) readLock(ctx context.Context, key string) (LockInfo, error) {
	var info LockInfo
	rc, err := r.b.Get(ctx, key, 0, -1)
	if err != nil {
		return info, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<16))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return LockInfo{}, nil // unreadable: treat as stale (zero heartbeat)
	}
	return info, nil
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

func hostname() string {
	h, _ := os.Hostname()
	return h
}
