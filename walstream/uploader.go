package walstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

type jobKind int

const (
	jobPartial jobKind = iota // store the first n bytes of seg: ranges (format 3) or NAME.partial
	jobSegment                // store the complete seg as NAME, drop NAME.partial
	jobHistory                // store a timeline history file
	jobBarrier                // nothing to store: closes done when reached
)

// job is one unit of work for the uploader. Jobs are stored in the order
// they are queued, which is LSN order.
type job struct {
	kind jobKind
	seg  *segment // immutable fields only (name); bytes via snap
	snap snapshot
	end  LSN // flush position once this job is stored (0: unchanged)
	// fold, for a partial: store it as one NAME.partial holding the whole
	// prefix and remove the segment's ranges (end of timeline, shutdown).
	fold    bool
	name    string
	content []byte
	done    chan struct{}
}

// uploader stores jobs one at a time, retrying with backoff until storage
// accepts them, and publishes the end LSN of the last stored job.
type uploader struct {
	repo *storage.Repository
	log  *slog.Logger
	q    chan job

	flushed        atomic.Uint64
	partialPending atomic.Bool
	advanced       chan struct{} // poked (non-blocking) when flushed moves

	// ranges: the repository is format 3 or newer, so an unfinished
	// segment is stored as appended ranges; older repositories get whole
	// .partial objects, which their walkeepers read.
	ranges atomic.Bool

	mu       sync.Mutex
	fatalErr error
	// partialLen remembers, by segment name, how much of a segment the
	// repository holds unfinished, so a resumed stream never replaces it
	// with less and stores only what follows.
	partialLen map[string]int
	// runs are the ranges of a segment the next consolidation may merge,
	// by segment name, in order.
	runs map[string][]rangeRun

	// failure is the failure the uploader is retrying (nil while storing
	// works), under mu; failingSince (unix nanoseconds, 0: none) and full
	// mirror it for metrics.
	failure      *storageFailure
	failingSince atomic.Int64
	full         atomic.Bool

	stats Stats
	// segmentEnd is the end of the newest complete segment stored;
	// lastStored is when WAL (a partial or a segment) was last stored, in
	// unix nanoseconds. Both are for metrics.
	segmentEnd atomic.Uint64
	lastStored atomic.Int64
}

// Stats counts what the uploader did; Options.Metrics exports it.
type Stats struct {
	SegmentsStored atomic.Int64
	PartialsStored atomic.Int64
	UploadErrors   atomic.Int64
	UploadRetries  atomic.Int64
	StoredBytes    atomic.Int64 // as stored: after compression
}

// storageFailure is a failure to store WAL that the uploader retries.
type storageFailure struct {
	since   time.Time
	err     error
	reason  string // storage.Unwritable's reason, or ""
	retries int
}

// waitOut reports whether a storage error is one the stream waits out,
// retrying with backoff, although a command run once stops on it:
//
//   - the repository's filesystem is full, over its quota or read-only
//     (storage.Unwritable): an outage the operator fixes; meanwhile the
//     stream keeps its connection and the slot holds the WAL;
//   - an object was not found that was listed or found a moment before:
//     another writer (wal-push, retention, a stream shutting down) removed
//     or replaced it in between, and the next attempt looks again. The
//     stream only reads objects it has just listed or found, so a
//     not-found is never the repository's settled state.
func waitOut(err error) bool {
	return storage.Unwritable(err) != "" || (errors.Is(err, storage.ErrNotFound) && !storage.MarkedPermanent(err))
}

// giveUp reports whether a storage error ends the stream: it is permanent
// (a repository of another cluster, other content already stored,
// corruption, no permission, bad credentials, a missing bucket) and not one
// to wait out.
func giveUp(err error) bool {
	return storage.IsPermanent(err) && !waitOut(err)
}

func newUploader(repo *storage.Repository, log *slog.Logger, queue int) *uploader {
	u := &uploader{
		repo:       repo,
		log:        log,
		q:          make(chan job, queue),
		advanced:   make(chan struct{}, 1),
		partialLen: map[string]int{},
		runs:       map[string][]rangeRun{},
	}
	u.lastStored.Store(time.Now().UnixNano())
	return u
}

func (u *uploader) fatal() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.fatalErr
}

func (u *uploader) setFatal(err error) {
	u.mu.Lock()
	if u.fatalErr == nil {
		u.fatalErr = err
	}
	u.mu.Unlock()
}

// segmentWorkers is how many complete segments are stored at once: a
// stream catching up (after an outage, or behind a bulk load) overlaps one
// segment's compression with another's write and fsync. Everything else
// (partials, history files, barriers) is stored alone, after the segments
// before it. Two keep memory at (queue + 3) segments.
const segmentWorkers = 2

// inflight is a complete segment being stored by a worker.
type inflight struct {
	j      job
	ok     bool
	stored chan struct{}
}

// run stores jobs until q is closed. ctx should outlive the receiver so
// that queued WAL is stored on shutdown. Complete segments are stored by up
// to segmentWorkers goroutines; results are published (the flush position,
// done) strictly in queue order, so the slot never moves past a segment
// that is not stored yet.
func (u *uploader) run(ctx context.Context) {
	var pending []*inflight
	publishOldest := func() {
		f := pending[0]
		<-f.stored
		pending = pending[1:]
		u.publish(f.j, f.ok)
	}
	for {
		if len(pending) >= segmentWorkers {
			publishOldest()
			continue
		}
		var oldest chan struct{}
		if len(pending) > 0 {
			oldest = pending[0].stored
		}
		select {
		case <-oldest:
			publishOldest()
		case j, open := <-u.q:
			if !open {
				for len(pending) > 0 {
					publishOldest()
				}
				return
			}
			if j.kind == jobSegment {
				f := &inflight{j: j, stored: make(chan struct{})}
				pending = append(pending, f)
				go func() {
					f.ok = u.storeRetrying(ctx, j)
					close(f.stored)
				}()
				continue
			}
			for len(pending) > 0 {
				publishOldest()
			}
			u.process(ctx, j)
		}
	}
}

// process stores one job and publishes it.
func (u *uploader) process(ctx context.Context, j job) {
	u.publish(j, u.storeRetrying(ctx, j))
}

// storeRetrying stores j, retrying with backoff until storage accepts it;
// it returns false when the stream is ending (a permanent error, the
// context, or an earlier fatal error) and j is dropped.
func (u *uploader) storeRetrying(ctx context.Context, j job) bool {
	if u.fatal() != nil {
		return false // drop: the stream is ending with that error
	}
	backoff := time.Second
	for {
		err := u.store(ctx, j)
		if err == nil {
			return true
		}
		u.stats.UploadErrors.Add(1)
		if giveUp(err) || ctx.Err() != nil {
			u.setFatal(err)
			return false
		}
		u.stats.UploadRetries.Add(1)
		u.failed(err, backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			u.setFatal(fmt.Errorf("%w (gave up: %w)", err, ctx.Err()))
			return false
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// publish records a stored job, in queue order: metrics, the flush
// position (never past a job that was dropped: the stream is then ending),
// and done.
func (u *uploader) publish(j job, stored bool) {
	defer func() {
		if j.done != nil {
			close(j.done)
		}
	}()
	if !stored || u.fatal() != nil {
		return
	}
	u.recovered()
	switch j.kind {
	case jobSegment:
		u.segmentEnd.Store(uint64(j.end))
		u.lastStored.Store(time.Now().UnixNano())
	case jobPartial:
		u.lastStored.Store(time.Now().UnixNano())
	}
	if j.end > LSN(u.flushed.Load()) {
		u.flushed.Store(uint64(j.end))
		select {
		case u.advanced <- struct{}{}:
		default:
		}
	}
}

// failed records a failure the uploader retries and logs it: a full,
// over-quota or read-only repository once, with what to do, when it starts
// (then at debug level: it can last hours); any other error at every retry.
func (u *uploader) failed(err error, retryIn time.Duration) {
	reason := storage.Unwritable(err)
	now := time.Now()
	u.mu.Lock()
	f := u.failure
	newKind := f == nil || f.reason != reason
	if f == nil {
		f = &storageFailure{since: now}
		u.failure = f
		u.failingSince.Store(now.UnixNano())
	}
	f.err, f.reason = err, reason
	f.retries++
	u.mu.Unlock()
	u.full.Store(reason != "")
	switch {
	case reason != "" && newKind:
		u.log.Error("the repository cannot take WAL: its filesystem is "+reason+"; "+unwritableHint(reason)+
			". The stream keeps its replication connection and retries, and continues by itself once it can write; "+
			"meanwhile the primary keeps the WAL in the slot (its pg_wal grows: watch its disk and max_slot_wal_keep_size)",
			"repository", u.repo.String(), "error", err, "flushed", LSN(u.flushed.Load()).String())
	case reason != "":
		u.log.Debug("storing WAL failed, retrying", "error", err, "retry_in", retryIn.String())
	default:
		u.log.Warn("storing WAL failed, retrying", "error", err, "retry_in", retryIn.String())
	}
}

// unwritableHint says what to do about a storage.Unwritable reason.
func unwritableHint(reason string) string {
	switch reason {
	case "full":
		return "free space on it or grow it"
	case "read-only":
		return "make it writable again (check the disk and the kernel log, then remount it read-write)"
	}
	return "raise the quota of the user walkeeper runs as, or free space"
}

// recovered ends the failure after a successful store.
func (u *uploader) recovered() {
	u.mu.Lock()
	f := u.failure
	u.failure = nil
	u.mu.Unlock()
	if f == nil {
		return
	}
	u.failingSince.Store(0)
	u.full.Store(false)
	u.log.Info("storing WAL works again", "failing_for", time.Since(f.since).Round(time.Second).String(),
		"retries", f.retries, "flushed", LSN(u.flushed.Load()).String())
}

// failing returns the failure being retried, if any: a one-line
// description and when it began.
func (u *uploader) failing() (string, time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f := u.failure
	if f == nil {
		return "", time.Time{}, false
	}
	msg := f.err.Error()
	if f.reason != "" {
		msg = fmt.Sprintf("the repository %s is %s (%v): %s; the slot holds the WAL meanwhile",
			u.repo, f.reason, f.err, unwritableHint(f.reason))
	}
	return msg, f.since, true
}

func (u *uploader) store(ctx context.Context, j job) error {
	switch j.kind {
	case jobBarrier:
		return nil
	case jobPartial:
		defer u.partialPending.Store(false)
		name := j.seg.name()
		u.mu.Lock()
		have := u.partialLen[name]
		// Never fold fewer bytes than the repository holds: the .partial
		// would replace a longer prefix.
		fold := j.fold && u.ranges.Load() && j.snap.n >= have && (j.snap.n > have || len(u.runs[name]) > 0)
		u.mu.Unlock()
		if j.snap.n <= have && !fold {
			return nil // the repository already holds these bytes
		}
		if fold {
			if err := u.fold(ctx, j); err != nil {
				return err
			}
		} else if u.ranges.Load() {
			if err := u.storeRange(ctx, j, have); err != nil {
				return err
			}
		} else {
			key, err := archive.Key(ctx, u.repo, name+".partial")
			if err != nil {
				return err
			}
			if _, err := u.write(ctx, key, j.snap.reader()); err != nil {
				return err
			}
		}
		u.mu.Lock()
		u.partialLen[name] = j.snap.n
		u.mu.Unlock()
		u.stats.PartialsStored.Add(1)
		u.log.Debug("stored partial segment", "segment", name, "from", have, "bytes", j.snap.n)
		return nil
	case jobSegment:
		return u.storeSegment(ctx, j.seg, j.snap)
	case jobHistory:
		return u.storeHistory(ctx, j.name, j.content)
	}
	return fmt.Errorf("unknown job kind %d", j.kind)
}

func (u *uploader) write(ctx context.Context, base string, r io.Reader) (storage.Meta, error) {
	w, err := u.repo.Create(ctx, base)
	if err != nil {
		return storage.Meta{}, err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort()
		return storage.Meta{}, err
	}
	m, err := w.Close()
	if err == nil {
		u.stats.StoredBytes.Add(m.StoredSize)
	}
	return m, err
}

// storeSegment stores a complete segment once: an existing object with the
// same content is accepted, different content is refused (never
// overwritten). Then the segment's .partial objects are removed.
func (u *uploader) storeSegment(ctx context.Context, seg *segment, snap snapshot) error {
	name := seg.name()
	base, err := archive.Key(ctx, u.repo, name)
	if err != nil {
		return err
	}
	existing, err := archive.Find(ctx, u.repo, name)
	switch {
	case err == nil:
		same, err := u.repo.SameContent(ctx, existing.Key, snap.reader())
		if err != nil {
			return err
		}
		if !same {
			return storage.Permanent(fmt.Errorf("WAL segment %s is already in the repository with different content: "+
				"the repository holds WAL of another history; use a new --repo or remove it after checking", name))
		}
		u.log.Info("WAL segment already stored", "segment", name)
	case errors.Is(err, storage.ErrNotFound):
		start := time.Now()
		m, err := u.write(ctx, base, snap.reader())
		if err != nil {
			return err
		}
		u.log.Info("stored WAL segment", "segment", name, "bytes", m.Size, "stored_bytes", m.StoredSize,
			"duration", time.Since(start).Round(time.Millisecond).String())
	default:
		return err
	}
	u.stats.SegmentsStored.Add(1)
	// The complete segment supersedes its partials, whatever their codec.
	if err := archive.RemovePartials(ctx, u.repo, name); err != nil {
		u.log.Warn("could not remove superseded partial segment", "segment", name, "error", err)
	}
	u.mu.Lock()
	delete(u.partialLen, name)
	delete(u.runs, name)
	u.mu.Unlock()
	seg.release()
	return nil
}

// rangeFanout is how many ranges of one level are merged into one range
// of the next level (see storeRange).
const rangeFanout = 8

// rangeLevel is the level of a range of size bytes: 0 below 512 bytes
// (a small commit), then one more for every factor of rangeFanout.
func rangeLevel(size int) int {
	l := 0
	for t := size; t >= 512; t /= rangeFanout {
		l++
	}
	return l
}

// rangeRun is a stored range a consolidation may merge.
type rangeRun struct {
	key      string
	from, to int
}

func (r rangeRun) level() int { return rangeLevel(r.to - r.from) }

// storeRange stores the bytes of j's segment from offset from to the end
// of its snapshot as one range object: what a flush costs is what arrived
// since the last one. Ranges are then consolidated by size, as levels
// (rangeLevel: below 512 bytes, below 4 KiB, below 32 KiB, ...), keeping the levels of a
// segment's ranges non-increasing from its first byte on:
//
//   - a new range of a higher level than the ranges before it is stored
//     together with them, as one range (that costs at most twice the new
//     range: they are smaller);
//   - whenever the newest rangeFanout ranges are of one level, they are
//     merged into one range (written first, then they are deleted).
//
// So a segment has at most rangeFanout-1 ranges per level, about 40 for
// 16 MB of WAL in single small commits, and each byte is stored about once
// per level. Readers see the same prefix before, during and after a merge
// (docs/repository-format.md); a merge that fails only leaves more ranges,
// and the complete segment removes them all.
func (u *uploader) storeRange(ctx context.Context, j job, from int) error {
	name := j.seg.name()
	u.mu.Lock()
	runs := u.runs[name]
	u.mu.Unlock()
	// Absorb the smaller ranges just before this one.
	k, level := len(runs), rangeLevel(j.snap.n-from)
	for k > 0 && runs[k-1].level() < level {
		k--
		level = rangeLevel(j.snap.n - runs[k].from)
	}
	lo := from
	if k < len(runs) {
		lo = runs[k].from
	}
	key, err := u.writeRange(ctx, j, lo, j.snap.n)
	if err != nil {
		return err
	}
	u.dropRuns(ctx, name, runs[k:], key)
	runs = append(runs[:k:k], rangeRun{key: key, from: lo, to: j.snap.n})
	u.mu.Lock()
	u.runs[name] = runs
	u.mu.Unlock()
	for {
		n := len(runs)
		if n < rangeFanout {
			return nil
		}
		tail := runs[n-rangeFanout:]
		for _, r := range tail {
			if r.level() != tail[0].level() {
				return nil
			}
		}
		lo, hi := tail[0].from, tail[len(tail)-1].to
		key, err := u.writeRange(ctx, j, lo, hi)
		if err != nil {
			u.log.Warn("could not consolidate ranges of a partial segment (they stay until the segment is complete)",
				"segment", name, "error", err)
			return nil
		}
		u.dropRuns(ctx, name, tail, key)
		runs = append(runs[:n-rangeFanout:n-rangeFanout], rangeRun{key: key, from: lo, to: hi})
		u.mu.Lock()
		u.runs[name] = runs
		u.mu.Unlock()
	}
}

// writeRange stores bytes [lo, hi) of j's segment as a range and returns
// its key.
func (u *uploader) writeRange(ctx context.Context, j job, lo, hi int) (string, error) {
	base, err := archive.Key(ctx, u.repo, archive.RangeName(j.seg.tli, j.seg.segno, j.seg.segSize, uint32(lo), uint32(hi)))
	if err != nil {
		return "", err
	}
	if _, err := u.write(ctx, base, j.snap.section(lo, hi)); err != nil {
		return "", err
	}
	return base + u.repo.Codec().Ext(), nil
}

// dropRuns deletes ranges a stored range (key) now covers.
func (u *uploader) dropRuns(ctx context.Context, name string, runs []rangeRun, key string) {
	keys := make([]string, 0, len(runs))
	for _, r := range runs {
		if r.key != key {
			keys = append(keys, r.key)
		}
	}
	if len(keys) == 0 {
		return
	}
	if err := u.repo.Backend().DeleteMany(ctx, keys); err != nil {
		u.log.Warn("could not remove consolidated ranges (they stay until the segment is complete)", "segment", name, "error", err)
	}
}

// fold stores j's snapshot as the segment's one .partial, then removes
// the segment's ranges: a timeline's last segment, or the one a stream
// stops in, is left as one object, as PostgreSQL's tools leave it.
func (u *uploader) fold(ctx context.Context, j job) error {
	name := j.seg.name()
	key, err := archive.Key(ctx, u.repo, name+".partial")
	if err != nil {
		return err
	}
	if _, err := u.write(ctx, key, j.snap.reader()); err != nil {
		return err
	}
	if err := archive.RemoveRanges(ctx, u.repo, name); err != nil {
		u.log.Warn("could not remove the ranges of a consolidated partial segment (they stay until the segment is complete)",
			"segment", name, "error", err)
	}
	u.mu.Lock()
	delete(u.runs, name)
	u.mu.Unlock()
	return nil
}

// resume tells the uploader what the repository holds of the unfinished
// segment name when a session starts: a prefix of end bytes, made of a
// partial and ranges (which the next consolidations merge).
func (u *uploader) resume(name string, end int, ranges []archive.Object) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.partialLen[name] = end
	runs := make([]rangeRun, 0, len(ranges))
	for _, r := range ranges {
		runs = append(runs, rangeRun{key: r.Key, from: int(r.Name.Offset), to: int(r.Name.End)})
	}
	u.runs[name] = runs
}

// storeHistory stores a timeline history file unless the same one is there.
func (u *uploader) storeHistory(ctx context.Context, name string, content []byte) error {
	base, err := archive.Key(ctx, u.repo, name)
	if err != nil {
		return err
	}
	existing, err := archive.Find(ctx, u.repo, name)
	if err == nil {
		same, err := u.repo.SameContent(ctx, existing.Key, bytes.NewReader(content))
		if err != nil || same {
			return err
		}
		return storage.Permanent(fmt.Errorf("timeline history file %s in the repository differs from the server's: "+
			"the repository belongs to another history; use a new --repo", name))
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	if _, err := u.write(ctx, base, bytes.NewReader(content)); err != nil {
		return err
	}
	u.log.Info("stored timeline history file", "file", name)
	return nil
}
