package walstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Options configure Run.
type Options struct {
	// DSN is a libpq connection string or URL; replication=true and the
	// application name are added.
	DSN string
	// Slot is the physical replication slot's name.
	Slot string
	// CreateSlot allows creating the slot when it is missing.
	CreateSlot bool
	// ApplicationName is reported to the server (default: the slot name),
	// so the stream can be named in synchronous_standby_names.
	ApplicationName string
	// StatusInterval is the longest time between standby status updates
	// (default 10s).
	StatusInterval time.Duration
	// PartialInterval is how often the unfinished segment is stored as a
	// .partial (default 1s; 0 keeps the default, negative disables).
	PartialInterval time.Duration
	// Synchronous stores the received WAL and reports it flushed after
	// every message, for synchronous replication.
	Synchronous bool
	// EndPos, when set, stops the stream once WAL up to it is stored.
	EndPos LSN
	// QueueSegments bounds the segments waiting for storage (default 2).
	QueueSegments int
	// ConnectTimeout bounds connecting and each replication command
	// (default 10s).
	ConnectTimeout time.Duration
	// ShutdownTimeout bounds the whole shutdown once the context ends
	// (default 2 minutes): storing the last partial and the queued WAL,
	// the final status update and heartbeat. WAL not stored by then is
	// named in Run's error; the slot keeps it.
	ShutdownTimeout time.Duration
	Repo            *storage.Repository
	Log             *slog.Logger
	// Metrics, when set, exports the stream's state (see NewMetrics).
	Metrics *Metrics
}

// Run streams until ctx ends (then it stores what it received, reports it
// and returns nil) or until EndPos is stored. Connection failures after the
// first successful start are retried with exponential backoff; a failure
// before it is returned, so a misconfiguration surfaces at once.
//
// Once ctx ends, Run returns within ShutdownTimeout (plus the time to close
// the connection to the server, itself bounded by that deadline), whatever
// storage does; if received WAL could not be stored by then, it returns an
// error naming it.
func Run(ctx context.Context, opts Options) error {
	if err := replication.ValidateSlotName(opts.Slot); err != nil {
		return replication.Permanent(err)
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.PartialInterval == 0 {
		opts.PartialInterval = time.Second
	}
	if opts.QueueSegments <= 0 {
		opts.QueueSegments = 2
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 2 * time.Minute
	}
	if opts.ApplicationName == "" {
		opts.ApplicationName = opts.Slot
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	log := opts.Log.With("slot", opts.Slot)

	// The uploader and the heartbeat outlive ctx until the shutdown
	// deadline, so that queued WAL is stored; the clock starts when ctx
	// ends (or when the stream ends by itself).
	clock := newShutdownClock(ctx, opts.ShutdownTimeout)
	defer clock.stop()
	stopWatch := context.AfterFunc(ctx, clock.start)
	defer stopWatch()
	up := newUploader(opts.Repo, log, opts.QueueSegments)
	upDone := make(chan struct{})
	go func() { up.run(clock.ctx); close(upDone) }()
	stopUploader := func() {
		clock.start()
		close(up.q)
		<-upDone
	}

	s := &streamer{opts: opts, log: log, up: up, clock: clock}
	if opts.Metrics != nil {
		opts.Metrics.s.Store(s)
	}
	hbDone := make(chan struct{})
	hbStop := make(chan struct{})
	go func() { s.heartbeat(clock.ctx, hbStop); close(hbDone) }()
	defer func() { close(hbStop); <-hbDone }()
	backoff := time.Second
	for {
		began := time.Now()
		err := s.session(ctx)
		if fe := up.fatal(); fe != nil && err == nil {
			err = fe
		}
		if errors.Is(err, errEndPos) {
			stopUploader()
			if fe := up.fatal(); fe != nil {
				return fe
			}
			log.Info("reached end position", "endpos", opts.EndPos.String())
			return nil
		}
		if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled) || !errors.Is(err, replication.ErrPermanent)) {
			stopUploader()
			return s.stopped()
		}
		// A storage error to wait out (a full disk, an object another
		// writer just removed) is retried even before the first start:
		// it is no misconfiguration.
		if errors.Is(err, replication.ErrPermanent) || giveUp(err) || (!s.started && !waitOut(err)) {
			stopUploader()
			return err
		}
		if time.Since(began) > time.Minute {
			backoff = time.Second // it streamed for a while: a fresh failure
		}
		s.reconnects.Add(1)
		if waitOut(err) {
			log.Warn("reading the repository failed, starting again", "error", err, "retry_in", backoff.String())
		} else {
			log.Warn("replication connection lost, reconnecting", "error", err, "retry_in", backoff.String())
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

var errEndPos = errors.New("end position reached")

// stopped is Run's result after a shutdown: nil when everything received
// is stored, else an error naming the WAL that is not (the slot keeps it,
// since the flush position reported never passed what was stored).
func (s *streamer) stopped() error {
	flushed, received := LSN(s.up.flushed.Load()), LSN(s.receivedNow.Load())
	fe := s.up.fatal()
	if s.clock.expired() && (received > flushed || fe != nil) {
		what := "queued WAL was not stored"
		if received > flushed {
			what = fmt.Sprintf("WAL from %s to %s (timeline %d) is not stored", flushed, received, s.tliNow.Load())
		}
		return fmt.Errorf("the shutdown timeout (%s) passed before storage took everything received: %s; "+
			"the slot %q keeps it (its flush position was never reported past %s) and the next walkeeper stream stores it",
			s.opts.ShutdownTimeout, what, s.opts.Slot, flushed)
	}
	if fe != nil {
		return fe
	}
	s.log.Info("stream stopped", "flushed", flushed.String())
	return nil
}

// errShutdownTimeout ends the shutdown clock's context when the deadline
// passes.
var errShutdownTimeout = errors.New("shutdown timeout passed")

// shutdownClock is the one deadline of a shutdown: ShutdownTimeout after
// the stream's context ends, ctx ends, and with it every wait of the
// shutdown (queueing the last partial, the uploader's retries, the final
// status update and heartbeat).
type shutdownClock struct {
	timeout time.Duration
	ctx     context.Context
	cancel  context.CancelCauseFunc
	once    sync.Once
	at      atomic.Int64 // the deadline in unix nanoseconds; 0 until start

	mu    sync.Mutex
	timer *time.Timer
}

func newShutdownClock(parent context.Context, timeout time.Duration) *shutdownClock {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	return &shutdownClock{timeout: timeout, ctx: ctx, cancel: cancel}
}

// start starts the countdown (once).
func (c *shutdownClock) start() {
	c.once.Do(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.at.Store(time.Now().Add(c.timeout).UnixNano())
		c.timer = time.AfterFunc(c.timeout, func() { c.cancel(errShutdownTimeout) })
	})
}

// stop releases the clock when Run returns.
func (c *shutdownClock) stop() {
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
	c.cancel(context.Canceled)
}

func (c *shutdownClock) expired() bool { return errors.Is(context.Cause(c.ctx), errShutdownTimeout) }

// err is what a wait cut short by the deadline returns.
func (c *shutdownClock) err() error {
	return fmt.Errorf("%w (%s)", context.Cause(c.ctx), c.timeout)
}

// deadline is now+d, or the shutdown deadline when that comes first.
func (c *shutdownClock) deadline(d time.Duration) time.Time {
	t := time.Now().Add(d)
	if at := c.at.Load(); at != 0 && at < t.UnixNano() {
		return time.Unix(0, at)
	}
	return t
}

// heartbeat writes streams/<slot>.json every storage.StreamHeartbeat so
// backups and status know a stream archives into this repository, and a
// final one marked stopped.
func (s *streamer) heartbeat(ctx context.Context, stop <-chan struct{}) {
	host, _ := os.Hostname()
	write := func(stopped bool) {
		sys, _ := s.sysID.Load().(string)
		if sys == "" {
			return // the repository's identity is not checked yet
		}
		st := storage.StreamStatus{
			Slot: s.opts.Slot, Host: host, PID: os.Getpid(), SystemIdentifier: sys,
			Timeline: s.tliNow.Load(), Received: LSN(s.receivedNow.Load()).String(),
			Flushed: LSN(s.up.flushed.Load()).String(), UpdatedAt: time.Now().UTC(), Stopped: stopped,
		}
		if msg, since, ok := s.up.failing(); ok {
			since = since.UTC()
			st.StorageError, st.StorageErrorSince = msg, &since
		}
		wctx, cancel := context.WithTimeout(ctx, storage.StreamHeartbeat)
		defer cancel()
		if err := s.opts.Repo.WriteJSON(wctx, storage.StreamStatusKey(s.opts.Slot), st); err != nil {
			s.log.Debug("writing stream heartbeat failed", "error", err)
		}
	}
	t := time.NewTicker(storage.StreamHeartbeat)
	defer t.Stop()
	first := time.NewTimer(time.Second)
	defer first.Stop()
	for {
		select {
		case <-stop:
			write(true)
			return
		case <-first.C:
			write(false)
		case <-t.C:
			write(false)
		}
	}
}

type streamer struct {
	opts    Options
	log     *slog.Logger
	up      *uploader
	clock   *shutdownClock
	started bool // START_REPLICATION succeeded at least once
	// copying is true while the connection is in COPY mode (between
	// START_REPLICATION and the end of the copy): the only time a standby
	// status update may be sent.
	copying bool

	// For the heartbeat goroutine and metrics.
	sysID       atomic.Value // string
	tliNow      atomic.Uint32
	receivedNow atomic.Uint64
	serverEnd   atomic.Uint64 // the server's WAL end from its last message
	connected   atomic.Bool
	reconnects  atomic.Int64
	lag         lagClock

	conn     *pgconn.PgConn
	segSize  uint64
	major    int // the server's PostgreSQL major
	seg      *segment
	received LSN
	reported LSN // flush position last sent
	// lastSegment is when the receiver last handed over a complete segment.
	lastSegment time.Time
}

// session runs one replication connection to its end.
func (s *streamer) session(ctx context.Context) (err error) {
	// Everything queued by an earlier session must be stored before the
	// start position is read from the repository.
	if err := s.barrier(); err != nil {
		return err
	}
	conn, err := replication.Connect(ctx, s.opts.DSN, s.opts.ApplicationName, s.opts.ConnectTimeout)
	if err != nil {
		return err
	}
	s.conn = conn
	defer func() {
		s.connected.Store(false)
		s.copying = false
		cctx, cancel := context.WithDeadline(context.Background(), s.clock.deadline(5*time.Second))
		conn.Close(cctx)
		cancel()
		s.conn = nil
	}()

	cctx, cancel := context.WithTimeout(ctx, s.opts.ConnectTimeout)
	defer cancel()
	sys, err := replication.Identify(cctx, conn)
	if err != nil {
		return err
	}
	replication.WarnUntested(s.log, sys)
	segSize, major := sys.SegSize, sys.Major
	s.segSize = segSize
	s.major = major
	// Check the repository's identity before touching the slot, and write
	// walkeeper.json only once the slot is known to be usable: bad input
	// leaves nothing behind.
	want := storage.Config{SystemIdentifier: sys.SystemID, PGMajorVersion: major, WALSegmentSize: segSize}
	if _, err := s.opts.Repo.Config(cctx); err == nil {
		if _, err := s.opts.Repo.Init(ctx, want); err != nil {
			return replication.Permanent(err)
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	// Init can take seconds (scrypt of a passphrase repository on a busy
	// machine): the server and repository requests after it get a fresh
	// deadline each time.
	cctx, cancelSlot := context.WithTimeout(ctx, s.opts.ConnectTimeout)
	defer cancelSlot()
	slot, err := s.ensureSlot(cctx)
	if err != nil {
		return err
	}
	cfg, err := s.opts.Repo.Init(ctx, want)
	if err != nil {
		return replication.Permanent(err)
	}
	cctx, cancelRest := context.WithTimeout(ctx, s.opts.ConnectTimeout)
	defer cancelRest()
	// Ranges only where every walkeeper that reads the repository knows
	// them: a repository of an older format keeps whole partials.
	s.up.ranges.Store(cfg.FormatVersion >= 3)
	s.sysID.Store(sys.SystemID) // the heartbeat may write from now on
	srvTLI := sys.Timeline
	var history []archive.HistoryEntry
	if srvTLI > 1 {
		content, name, err := s.timelineHistory(cctx, srvTLI)
		if err != nil {
			return err
		}
		if history, err = archive.ParseHistory(content); err != nil {
			return fmt.Errorf("the server's %s: %w", name, err)
		}
		if err := s.queue(job{kind: jobHistory, name: name, content: content}); err != nil {
			return err
		}
		// Stored before anything else happens: status and verify judge
		// the archive along this timeline's path even if streaming
		// cannot start.
		if err := s.barrier(); err != nil {
			return err
		}
	}
	path := archive.PathTo(srvTLI, history)
	cont, err := archiveEnd(cctx, s.opts.Repo, segSize, path)
	if err != nil {
		return fmt.Errorf("read the repository's WAL: %w", err)
	}
	start, err := chooseStart(cont, srvTLI, sys.XLogPos, slot.RestartTLI, slot.RestartLSN, segSize)
	if err != nil {
		return replication.Permanent(err)
	}
	if start.partial != "" {
		end, ranges, err := cont.Partial.Unfinished().Prefix(cctx, s.opts.Repo)
		if err != nil {
			return fmt.Errorf("read the stored %s: %w", start.partial, err)
		}
		s.up.resume(archive.SegmentName(start.tli, uint64(start.lsn)/segSize, segSize), int(end), ranges)
	}
	switch {
	case cont.Found:
		s.log.Info("continuing the archive", "timeline", start.tli, "start", start.lsn.String(), "from", start.why)
	case cont.Newest.Found:
		s.log.Info("the archive's WAL on this server's timelines ends before the newest backup; starting elsewhere",
			"archive_end", archive.SegmentName(cont.Newest.TLI, cont.Newest.Seg, segSize), "start", start.lsn.String(), "from", start.why)
	}
	cancel()
	// The queue is empty (barrier above): what is durable is exactly what
	// the repository holds before start.
	s.up.flushed.Store(uint64(start.lsn))
	s.up.segmentEnd.Store(uint64(start.lsn))
	s.lag.reset()
	return s.stream(ctx, start)
}

// stream runs START_REPLICATION from start and follows timeline switches.
func (s *streamer) stream(ctx context.Context, start startPoint) error {
	tli, pos := start.tli, start.lsn
	for {
		if s.opts.EndPos != 0 && pos >= s.opts.EndPos {
			return errEndPos
		}
		sctx, cancel := context.WithTimeout(ctx, s.opts.ConnectTimeout)
		err := pglogrepl.StartReplication(sctx, s.conn, replication.QuoteIdent(s.opts.Slot), pos,
			pglogrepl.StartReplicationOptions{Timeline: int32(tli), Mode: pglogrepl.PhysicalReplication})
		cancel()
		if nextTLI, nextPos, ok := pglogrepl.IsErrEndTimeline(err); ok {
			// Starting exactly where timeline tli ended.
			if err := s.nextTimeline(ctx, uint32(nextTLI)); err != nil {
				return err
			}
			tli, pos = uint32(nextTLI), segStart(nextPos, s.segSize)
			continue
		}
		if err != nil {
			return s.explainRemoved(replication.Classify(err, s.opts.Slot), start, tli, pos)
		}
		s.started = true
		s.copying = true
		s.connected.Store(true)
		s.tliNow.Store(tli)
		s.log.Info("streaming", "timeline", tli, "start", pos.String(), "segment_size", s.segSize)
		s.seg = newSegment(tli, pos, s.segSize)
		s.received = pos
		s.reported = 0
		next, err := s.receive(ctx)
		s.copying = false
		if err != nil {
			if s.received == pos {
				err = s.explainRemoved(err, start, tli, pos)
			}
			return err
		}
		// The server ended timeline tli: keep its last segment as .partial,
		// store the next timeline's history and go on there.
		if err := s.flushPartial(); err != nil {
			return err
		}
		if err := s.nextTimeline(ctx, next.tli); err != nil {
			return err
		}
		s.log.Info("timeline switch", "from", tli, "to", next.tli, "at", next.lsn.String())
		tli, pos = next.tli, segStart(next.lsn, s.segSize)
	}
}

// explainRemoved turns the server's "requested WAL segment ... has already
// been removed", when streaming from where the archive needs WAL, into an
// error that names what the archive lacks and what to do. Restarting cannot
// help: the WAL is gone from the server.
func (s *streamer) explainRemoved(err error, start startPoint, tli uint32, pos LSN) error {
	if err == nil || start.hole == "" || tli != start.tli || pos != start.lsn ||
		!errors.Is(err, replication.ErrWALRemoved) {
		return err
	}
	return replication.Permanentf("the archive lacks WAL of timeline %d from %s (%s) and the server has already removed it: "+
		"recovery from the repository cannot pass %s; take a new base backup (walkeeper backup), then start the stream again",
		tli, pos, start.hole, pos)
}

func (s *streamer) nextTimeline(ctx context.Context, tli uint32) error {
	cctx, cancel := context.WithTimeout(ctx, s.opts.ConnectTimeout)
	defer cancel()
	content, name, err := s.timelineHistory(cctx, tli)
	if err != nil {
		return err
	}
	return s.queue(job{kind: jobHistory, name: name, content: content})
}

// receive handles the CopyBoth stream until the server ends the timeline
// (it returns the next timeline), ctx ends, the end position is reached or
// the connection fails.
func (s *streamer) receive(ctx context.Context) (startPoint, error) {
	statusTick := time.NewTicker(s.opts.StatusInterval)
	defer statusTick.Stop()
	var partialC <-chan time.Time
	if s.opts.PartialInterval > 0 && !s.opts.Synchronous {
		t := time.NewTicker(s.opts.PartialInterval)
		defer t.Stop()
		partialC = t.C
	}
	lastStatus := time.Now()
	for {
		if err := s.up.fatal(); err != nil {
			return startPoint{}, err
		}
		if ctx.Err() != nil {
			return startPoint{}, s.shutdown(ctx)
		}
		select {
		case <-partialC:
			if err := s.flushPartialAsync(); err != nil {
				return startPoint{}, err
			}
		default:
		}
		if s.opts.Synchronous {
			if err := s.flushSync(); err != nil {
				return startPoint{}, err
			}
		}
		flushed := LSN(s.up.flushed.Load())
		s.lag.stored(flushed)
		if flushed != s.reported || time.Since(lastStatus) >= s.opts.StatusInterval {
			if err := s.sendStatus(false); err != nil {
				return startPoint{}, err
			}
			lastStatus = time.Now()
		}
		// Wake up for the next status update, partial or flush advance.
		wait := min(s.opts.StatusInterval-time.Since(lastStatus), 100*time.Millisecond)
		rctx, cancel := context.WithTimeout(ctx, max(wait, time.Millisecond))
		stopWake := func() {}
		if s.opts.Synchronous {
			// A stored flush is reported at once, not at the next wake-up:
			// the COMMITs waiting for it return then.
			stopWake = wakeOn(s.up.advanced, cancel)
		}
		msg, err := s.conn.ReceiveMessage(rctx)
		stopWake()
		woken := rctx.Err() != nil
		cancel()
		if err != nil {
			if pgconn.Timeout(err) || ctx.Err() != nil || woken && errors.Is(err, context.Canceled) {
				continue
			}
			return startPoint{}, replication.Classify(err, s.opts.Slot)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return startPoint{}, err
				}
				s.serverEnd.Store(uint64(xld.ServerWALEnd))
				if err := s.handleXLogData(xld); err != nil {
					return startPoint{}, err
				}
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return startPoint{}, err
				}
				s.serverEnd.Store(uint64(ka.ServerWALEnd))
				if ka.ReplyRequested {
					if err := s.sendStatus(false); err != nil {
						return startPoint{}, err
					}
					lastStatus = time.Now()
				}
			}
		case *pgproto3.CopyDone:
			return s.endOfTimeline()
		case *pgproto3.ErrorResponse:
			return startPoint{}, replication.Classify(pgconn.ErrorResponseToPgError(msg), s.opts.Slot)
		case *pgproto3.NoticeResponse:
		default:
			s.log.Debug("unexpected message during streaming", "type", fmt.Sprintf("%T", msg))
		}
	}
}

// handleXLogData appends WAL to the current segment, cutting it at segment
// boundaries, and queues every complete segment.
func (s *streamer) handleXLogData(x pglogrepl.XLogData) error {
	if x.WALStart != s.received {
		return fmt.Errorf("server sent WAL at %s, expected %s: restarting the stream", x.WALStart, s.received)
	}
	data := x.WALData
	if s.opts.EndPos != 0 {
		if s.received >= s.opts.EndPos {
			data = nil
		} else if left := uint64(s.opts.EndPos - s.received); uint64(len(data)) > left {
			data = data[:left]
		}
	}
	for len(data) > 0 {
		n := min(len(data), s.seg.room())
		s.seg.append(data[:n])
		data = data[n:]
		s.received += LSN(n)
		s.receivedNow.Store(uint64(s.received))
		if s.seg.full() {
			done := s.seg
			s.seg = newSegment(done.tli, done.end(), s.segSize)
			s.lastSegment = time.Now()
			if err := s.queue(job{kind: jobSegment, seg: done, snap: done.snapshot(done.size), end: done.end()}); err != nil {
				return err
			}
		}
	}
	if len(x.WALData) > 0 {
		s.lag.received(s.received, time.Now())
	}
	if s.opts.EndPos != 0 && s.received >= s.opts.EndPos {
		if err := s.flushPartial(); err != nil {
			return err
		}
		if err := s.sendStatus(false); err != nil {
			return err
		}
		return errEndPos
	}
	return nil
}

// flushSync, in synchronous mode, queues what arrived of the current
// segment since the last store unless a store is in flight: the receiver
// never waits for storage, so it goes on answering the server (with the
// old flush position) however long a store takes, and whatever arrives
// meanwhile goes up with the next store, one object for all of it. The
// flush position moves when a store completes (the uploader's flushed).
func (s *streamer) flushSync() error {
	if s.seg == nil || s.seg.size == 0 || s.up.partialPending.Load() || s.seg.end() <= LSN(s.up.flushed.Load()) {
		return nil
	}
	return s.queue(job{kind: jobPartial, seg: s.seg, snap: s.seg.snapshot(s.seg.size), end: s.seg.end()})
}

// wakeOn calls cancel when c receives, until the returned stop is called.
func wakeOn(c <-chan struct{}, cancel context.CancelFunc) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case <-c:
			cancel()
		case <-done:
		}
	}()
	return func() { close(done); <-finished }
}

// queue hands a job to the uploader. While the queue is full it keeps
// answering the server, so the connection survives slow storage, until
// the uploader fails or the shutdown deadline passes. The stream's context
// ending does not stop it: a shutdown still queues what was received.
func (s *streamer) queue(j job) error {
	if j.kind == jobPartial {
		s.up.partialPending.Store(true)
	}
	select {
	case s.up.q <- j:
		return nil
	default:
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case s.up.q <- j:
			return nil
		case <-tick.C:
			if err := s.up.fatal(); err != nil {
				return err
			}
			if err := s.sendStatus(false); err != nil {
				return err
			}
		case <-s.clock.ctx.Done():
			return s.clock.err()
		}
	}
}

// flushPartialAsync queues a snapshot of the current segment unless one is
// still pending or nothing new arrived.
//
// While WAL arrives so fast that a complete segment was handed over within
// the last interval, partials are skipped: complete segments already keep
// the repository within about an interval of the server, and compressing
// the growing segment again and again would only cost CPU under load.
func (s *streamer) flushPartialAsync() error {
	if s.seg == nil || s.seg.size == 0 || s.up.partialPending.Load() ||
		time.Since(s.lastSegment) < s.opts.PartialInterval {
		return nil
	}
	s.up.mu.Lock()
	have := s.up.partialLen[s.seg.name()]
	s.up.mu.Unlock()
	if s.seg.size <= have {
		return nil
	}
	return s.queue(job{kind: jobPartial, seg: s.seg, snap: s.seg.snapshot(s.seg.size), end: s.seg.end()})
}

// flushPartial stores the current segment as one .partial (its ranges
// consolidated) and waits until it is stored: at the end of a timeline, at
// the end position and at shutdown.
func (s *streamer) flushPartial() error {
	if s.seg != nil && s.seg.size > 0 {
		if err := s.queue(job{kind: jobPartial, seg: s.seg, snap: s.seg.snapshot(s.seg.size), end: s.seg.end(), fold: true}); err != nil {
			return err
		}
	}
	return s.barrier()
}

// barrier waits until everything queued so far is stored, the uploader
// fails or the shutdown deadline passes, answering the server meanwhile.
func (s *streamer) barrier() error {
	done := make(chan struct{})
	if err := s.queue(job{kind: jobBarrier, done: done}); err != nil {
		return err
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return s.up.fatal()
		case <-tick.C:
			if err := s.sendStatus(false); err != nil {
				return err
			}
		case <-s.clock.ctx.Done():
			return s.clock.err()
		}
	}
}

// shutdown stores the partial segment and reports the final position,
// both within the shutdown deadline (the clock started when ctx ended).
// The connection is then closed; the slot keeps whatever was not reported.
func (s *streamer) shutdown(ctx context.Context) error {
	err := s.flushPartial()
	if serr := s.sendStatus(false); serr != nil {
		s.log.Debug("final status update failed", "error", serr)
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}

func (s *streamer) endOfTimeline() (startPoint, error) {
	// The copy ends here: no status update may follow on this connection.
	s.copying = false
	// pglogrepl reads the reply without a context: bound it with a deadline.
	s.conn.Conn().SetDeadline(s.clock.deadline(s.opts.ConnectTimeout))
	res, err := pglogrepl.SendStandbyCopyDone(context.Background(), s.conn)
	s.conn.Conn().SetDeadline(time.Time{})
	if err != nil {
		return startPoint{}, fmt.Errorf("end of timeline: %w", err)
	}
	if res == nil {
		return startPoint{}, errors.New("the server ended streaming without naming a next timeline (shutting down?)")
	}
	return startPoint{tli: uint32(res.Timeline), lsn: res.LSN}, nil
}

// sendStatus sends a standby status update: write = received, flush =
// apply = what the repository durably holds. Outside COPY mode (before
// START_REPLICATION, after the copy ended) it sends nothing: the server
// would take the message for a protocol violation.
func (s *streamer) sendStatus(replyRequested bool) error {
	if !s.copying || s.conn == nil {
		return nil
	}
	flushed := LSN(s.up.flushed.Load())
	if flushed > s.received {
		flushed = s.received
	}
	buf := make([]byte, 0, 34)
	buf = append(buf, pglogrepl.StandbyStatusUpdateByteID)
	buf = binary.BigEndian.AppendUint64(buf, uint64(s.received))
	buf = binary.BigEndian.AppendUint64(buf, uint64(flushed))
	buf = binary.BigEndian.AppendUint64(buf, uint64(flushed))
	buf = binary.BigEndian.AppendUint64(buf, uint64(pgTime(time.Now())))
	if replyRequested {
		buf = append(buf, 1)
	} else {
		buf = append(buf, 0)
	}
	s.conn.Frontend().Send(&pgproto3.CopyData{Data: buf})
	s.conn.Conn().SetWriteDeadline(s.clock.deadline(s.opts.ConnectTimeout))
	err := s.conn.Frontend().Flush()
	s.conn.Conn().SetWriteDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.reported = flushed
	return nil
}

// pgTime is microseconds since 2000-01-01, PostgreSQL's epoch.
func pgTime(t time.Time) int64 {
	return t.UnixMicro() - 946684800_000_000
}

func (s *streamer) timelineHistory(ctx context.Context, tli uint32) ([]byte, string, error) {
	res, err := pglogrepl.TimelineHistory(ctx, s.conn, int32(tli))
	if err != nil {
		return nil, "", fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, replication.Classify(err, s.opts.Slot))
	}
	if res.FileName != archive.HistoryName(tli) {
		return nil, "", fmt.Errorf("TIMELINE_HISTORY %d returned file %q", tli, res.FileName)
	}
	return res.Content, res.FileName, nil
}

// ensureSlot reads the slot, creates it with reserved WAL when missing,
// and refuses a logical or invalidated slot.
func (s *streamer) ensureSlot(ctx context.Context) (replication.Slot, error) {
	slot, created, err := replication.EnsurePhysicalSlot(ctx, s.conn, s.opts.Slot, s.opts.CreateSlot)
	if err != nil {
		return replication.Slot{}, err
	}
	if created {
		s.log.Info("created physical replication slot with reserved WAL")
	}
	if err := s.checkSlotHealth(ctx, slot); err != nil {
		return replication.Slot{}, err
	}
	return slot, nil
}

// checkSlotHealth looks the slot up in pg_replication_slots over an ordinary
// connection (replication connections cannot query catalogs) to catch an
// invalidated slot and to warn when another process holds it. When that
// connection is not possible the check is skipped with a note.
func (s *streamer) checkSlotHealth(ctx context.Context, slot replication.Slot) error {
	conn, err := replication.ConnectSQL(ctx, s.opts.DSN, "walkeeper-slot-check", s.opts.ConnectTimeout)
	if err != nil {
		s.log.Debug("slot health check skipped: no SQL connection", "error", replication.Redact(err))
		if slot.RestartLSN == 0 {
			s.log.Warn("replication slot has no reserved WAL (invalidated, or created without reserving WAL)", "slot", s.opts.Slot)
		}
		return nil
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, "SELECT coalesce(wal_status, ''), coalesce(active_pid::text, ''), "+replication.InvalidationReasonSQL(s.major)+
		" FROM pg_replication_slots WHERE slot_name = '"+strings.ReplaceAll(s.opts.Slot, "'", "''")+"'").ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		return nil
	}
	walStatus, activePID, reason := string(res[0].Rows[0][0]), string(res[0].Rows[0][1]), string(res[0].Rows[0][2])
	if walStatus == "lost" {
		what, hint := replication.Invalidated(s.opts.Slot, reason)
		return replication.Permanentf("%s: %s", what, hint)
	}
	if activePID != "" {
		s.log.Warn("replication slot is in use by another process; streaming will fail until it is released",
			"slot", s.opts.Slot, "active_pid", activePID)
	}
	return nil
}
