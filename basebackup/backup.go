package basebackup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// WAL modes: how a backup gets the WAL from its start to its stop LSN.
const (
	WALAuto    = "auto"    // stream when a walkeeper stream archives into the repository, else include
	WALStream  = "stream"  // wait for that WAL to be stored by `walkeeper stream`
	WALInclude = "include" // take it inside the backup (BASE_BACKUP's WAL option)
)

// Options configure Run.
type Options struct {
	DSN  string
	Repo *storage.Repository
	// Label is the backup label (default "walkeeper <ID>").
	Label string
	// FastCheckpoint requests an immediate checkpoint instead of a spread one.
	FastCheckpoint bool
	// MaxRate limits the server's transfer rate in bytes per second (0: no
	// limit; PostgreSQL accepts 32 kB/s to 1 GB/s).
	MaxRate int64
	// WAL is WALAuto (default), WALStream or WALInclude.
	WAL string
	// WALTimeout bounds the wait for streamed WAL (default 5 minutes).
	WALTimeout time.Duration
	// ConnectTimeout bounds connecting (default 10s).
	ConnectTimeout time.Duration
	// ChunkSize is the most tar bytes one chunk of a tablespace archive
	// holds (default DefaultChunkSize, at least MinChunkSize); a larger
	// file is stored as parts.
	ChunkSize int64
	// Progress, when set, is called as data arrives with the bytes sent so
	// far and the server's estimate of the total.
	Progress func(done, total int64)
	// Incremental takes an incremental backup (PostgreSQL 17+ with
	// summarize_wal = on) against the newest complete backup on the
	// server's timeline history, or a full one when there is no usable
	// parent (the log says why).
	Incremental bool
	// MaxChain is how many incremental backups may follow a full one
	// (default DefaultMaxChain).
	MaxChain int
	// Version is recorded in backup.json.
	Version string
	Log     *slog.Logger
}

// Run takes a base backup into the repository and returns its backup.json.
// On failure nothing is marked complete and the objects written so far are
// removed (what cannot be removed stays behind without backup.json, shown
// as incomplete by List).
func Run(ctx context.Context, opts Options) (*Meta, error) {
	if opts.WAL == "" {
		opts.WAL = WALAuto
	}
	if opts.WALTimeout <= 0 {
		opts.WALTimeout = 5 * time.Minute
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.ChunkSize < MinChunkSize {
		return nil, fmt.Errorf("chunk size %d bytes is below the minimum of 1 MiB: raise it", opts.ChunkSize)
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.MaxChain <= 0 {
		opts.MaxChain = DefaultMaxChain
	}
	conn, err := replication.Connect(ctx, opts.DSN, "walkeeper backup", opts.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn.Close(cctx)
		cancel()
	}()
	cctx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	defer cancel()
	sys, err := replication.Identify(cctx, conn)
	if err != nil {
		return nil, err
	}
	replication.WarnUntested(opts.Log, sys)
	want := storage.Config{SystemIdentifier: sys.SystemID, PGMajorVersion: sys.Major, WALSegmentSize: sys.SegSize}
	if _, err := opts.Repo.Config(cctx); err == nil {
		if _, err := opts.Repo.Init(ctx, want); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	lock, err := opts.Repo.Lock(ctx, "backup", "backup")
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	// Everything from here runs under the lock's context: it ends when
	// the lock is lost, and then the backup fails.
	meta, err := runLocked(lock.Context(), opts, lock, conn, sys, want)
	if err != nil {
		if lerr := lock.Err(); lerr != nil {
			return nil, lerr
		}
		return nil, err
	}
	return meta, nil
}

func runLocked(ctx context.Context, opts Options, lock *storage.Lock, conn *pgconn.PgConn, sys replication.System, want storage.Config) (*Meta, error) {
	log := opts.Log
	if _, err := opts.Repo.Init(ctx, want); err != nil {
		return nil, err
	}
	walMode := opts.WAL
	if walMode == WALAuto {
		walMode = WALInclude
		streams, err := opts.Repo.Streams(ctx)
		if err != nil {
			return nil, err
		}
		for _, st := range streams {
			if st.SystemIdentifier == sys.SystemID && st.Live(time.Now()) {
				walMode = WALStream
				log.Info("a walkeeper stream archives into this repository: the backup will wait for its WAL", "slot", st.Slot)
				break
			}
		}
	}
	var inc choice
	if opts.Incremental {
		var err error
		if inc, err = chooseParent(ctx, opts, conn, sys); err != nil {
			return nil, err
		}
		logChoice(log, inc)
	}
	// The first object of every backup: until backup.json joins it, list
	// shows the backup as incomplete, whatever happens to this process.
	id, err := startBackup(ctx, opts.Repo, walMode, time.Now, rand.Reader)
	if err != nil {
		return nil, err
	}
	b := &backup{opts: opts, log: log.With("backup", id), id: id, sys: sys, walMode: walMode, conn: conn, lock: lock, parent: inc.parent, parentManifest: inc.manifest}
	meta, err := b.run(ctx)
	if err != nil {
		b.cleanup()
		return nil, err
	}
	return meta, nil
}

// startedName is the object written when a backup starts.
const startedName = "started.json"

// startBackup picks a new backup ID and creates its started.json, only if
// that does not exist: a backup never writes into another's directory,
// even when two start in the same millisecond (the random part of the ID
// makes that unlikely, the conditional create makes it harmless).
func startBackup(ctx context.Context, repo *storage.Repository, walMode string, now func() time.Time, rnd io.Reader) (string, error) {
	host, _ := os.Hostname()
	for range 5 {
		t := now().UTC()
		id, err := NewID(t, rnd)
		if err != nil {
			return "", err
		}
		started := map[string]any{"id": id, "start_time": t, "host": host, "pid": os.Getpid(), "wal": walMode}
		err = repo.CreateJSON(ctx, storage.BackupKey(id, startedName), started)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, storage.ErrExists) {
			return "", fmt.Errorf("start backup %s: %w", id, err)
		}
	}
	return "", errors.New("start backup: five new backup IDs were all taken: check the clock and the random source")
}

type backup struct {
	opts    Options
	log     *slog.Logger
	id      string
	sys     replication.System
	walMode string
	conn    *pgconn.PgConn
	lock    *storage.Lock
	ctx     context.Context
	// parent is the backup an incremental backup builds on (nil: full).
	parent         *Meta
	parentManifest Object

	oq       *objectQueue
	split    *tarSplitter // the current tablespace archive's; nil for the manifest
	parts    bool         // a file was stored as parts (archive_layout 3)
	chunks   map[string][]string
	objects  []Object
	failures []ChecksumFailure
	total    int64 // server's estimate, bytes
}

func (b *backup) run(ctx context.Context) (*Meta, error) {
	b.ctx = ctx
	b.oq = newObjectQueue(ctx, b.opts.Repo, b.id)
	b.chunks = map[string][]string{}
	start := time.Now().UTC()
	label := b.opts.Label
	if label == "" {
		label = "walkeeper " + b.id
	}
	if b.walMode == WALInclude {
		// A temporary slot created before the backup starts keeps the
		// server from recycling the WAL the backup will include.
		var rnd [4]byte
		rand.Read(rnd[:])
		slot := "walkeeper_backup_" + hex.EncodeToString(rnd[:])
		cctx, cancel := context.WithTimeout(ctx, b.opts.ConnectTimeout)
		_, err := b.conn.Exec(cctx, "CREATE_REPLICATION_SLOT "+replication.QuoteIdent(slot)+" TEMPORARY PHYSICAL RESERVE_WAL").ReadAll()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("create temporary slot to hold WAL: %w", replication.Classify(err, slot))
		}
	}
	if b.parent != nil {
		// Right before BASE_BACKUP, which uses the uploaded manifest.
		if err := uploadManifest(ctx, b.opts.Repo, b.conn, b.parent, b.parentManifest); err != nil {
			return nil, err
		}
	}
	cmd := b.command(label)
	b.log.Info("starting base backup", "wal", b.walMode, "checkpoint", map[bool]string{true: "fast", false: "spread"}[b.opts.FastCheckpoint])
	b.conn.Frontend().SendQuery(&pgproto3.Query{String: cmd})
	if err := b.conn.Frontend().Flush(); err != nil {
		return nil, replication.Classify(err, "")
	}
	d := &decoder{rx: b.conn, sink: b, major: b.sys.Major, waitFirst: time.Hour, idle: 10 * time.Minute}
	res, err := d.run(ctx, true)
	if err == nil {
		err = b.closeCurrent()
	}
	if err != nil {
		b.oq.abort(err)
	}
	objects, werr := b.oq.wait()
	if err == nil {
		err = werr
	}
	if err != nil {
		return nil, err
	}
	b.objects = objects
	for i := range res.tablespaces {
		res.tablespaces[i].Chunks = b.chunks[res.tablespaces[i].Archive]
	}
	for _, o := range objects {
		b.log.Debug("stored object", "name", o.Name, "size", o.Size, "stored_size", o.StoredSize, "files", o.Files)
	}
	if res.checksumError != nil || len(b.failures) > 0 {
		b.log.Warn("the server found page checksum failures: the backup copies the damaged pages as they are; check the listed files",
			"failures", len(b.failures))
	}
	// The server has written its backup end: every commit before the stop
	// LSN is older than this. restore compares point-in-time targets with
	// it, so it is taken before the wait for the WAL.
	stop := time.Now().UTC()
	if b.walMode == WALStream {
		if err := b.waitForWAL(ctx, res); err != nil {
			return nil, err
		}
	}
	// Layout 2 unless a file was split, so that walkeeper versions from
	// before parts restore every backup without one.
	layout := LayoutChunked
	if b.parts {
		layout = LayoutParts
	}
	meta := &Meta{
		FormatVersion: storage.FormatVersion, ArchiveLayout: layout, ID: b.id, Label: label, StartTime: start, StopTime: stop,
		StartLSN: res.startLSN.String(), StopLSN: res.stopLSN.String(), Timeline: res.startTLI, StopTimeline: res.stopTLI,
		SystemIdentifier: b.sys.SystemID, ServerVersion: b.sys.ServerVersion, WALSegmentSize: b.sys.SegSize,
		FromStandby: b.sys.InRecovery, WAL: b.walMode, Compression: b.opts.Repo.Codec().String(),
		Objects: b.objects, Tablespaces: res.tablespaces, ChecksumFailures: b.failures, WalkeeperVersion: b.opts.Version,
	}
	if b.parent != nil {
		meta.Kind, meta.Parent, meta.Chain = KindIncremental, b.parent.ID, b.parent.Members()
	} else {
		meta.Kind = KindFull
	}
	if meta.ChecksumFailures == nil {
		meta.ChecksumFailures = []ChecksumFailure{}
	}
	for _, o := range b.objects {
		meta.Size += o.Size
		meta.StoredSize += o.StoredSize
	}
	// Still ours? A backup whose lock was lost is not marked complete.
	if err := b.lock.Refresh(ctx); err != nil {
		return nil, fmt.Errorf("before writing backup.json: %w", err)
	}
	// The commit marker, written last.
	if err := b.opts.Repo.WriteJSON(ctx, storage.BackupMetaKey(b.id), meta); err != nil {
		return nil, fmt.Errorf("write backup.json: %w", err)
	}
	b.log.Info("backup complete", "start_lsn", meta.StartLSN, "stop_lsn", meta.StopLSN, "size", meta.Size,
		"stored_size", meta.StoredSize, "duration", meta.StopTime.Sub(meta.StartTime).Round(time.Millisecond).String())
	return meta, nil
}

// command builds the BASE_BACKUP command (PostgreSQL 15 syntax).
func (b *backup) command(label string) string {
	opts := []string{
		"LABEL " + replication.QuoteLiteral(label),
		"PROGRESS",
		"CHECKPOINT " + map[bool]string{true: "'fast'", false: "'spread'"}[b.opts.FastCheckpoint],
		"WAIT false",
		"MANIFEST 'yes'",
		"MANIFEST_CHECKSUMS 'CRC32C'",
		"TABLESPACE_MAP",
		"VERIFY_CHECKSUMS",
	}
	if b.opts.MaxRate > 0 {
		kb := min(max(b.opts.MaxRate/1024, 32), 1048576)
		opts = append(opts, fmt.Sprintf("MAX_RATE %d", kb))
	}
	if b.walMode == WALInclude {
		opts = append(opts, "WAL")
	}
	if b.parent != nil {
		opts = append(opts, "INCREMENTAL")
	}
	return "BASE_BACKUP (" + strings.Join(opts, ", ") + ")"
}

// The sink: each archive streams straight into one repository object.

func (b *backup) begin(res result) {
	for _, ts := range res.tablespaces {
		b.total += ts.SizeKB * 1024
	}
	b.log.Info("backup started", "start_lsn", res.startLSN.String(), "timeline", res.startTLI,
		"tablespaces", len(res.tablespaces), "estimated_size", b.total)
}

func (b *backup) archive(name, tsPath string) error {
	if err := b.closeCurrent(); err != nil {
		return err
	}
	if !validArchiveName(name) {
		return fmt.Errorf("the server sent an unexpected archive name %q", name)
	}
	b.log.Debug("archive", "name", name, "tablespace", tsPath)
	seq := 0
	next := func() error {
		chunk := ChunkName(name, seq)
		seq++
		b.chunks[name] = append(b.chunks[name], chunk)
		return b.oq.start(chunk, name)
	}
	b.split = &tarSplitter{
		limit: b.opts.ChunkSize,
		emit:  b.oq.write,
		file:  b.oq.countFile,
		cut: func() error {
			if err := b.oq.write(endOfArchive); err != nil {
				return err
			}
			if err := b.oq.finish(); err != nil {
				return err
			}
			return next()
		},
	}
	return next()
}

func (b *backup) manifest() error {
	if err := b.closeCurrent(); err != nil {
		return err
	}
	return b.oq.start("backup_manifest", "")
}

func (b *backup) data(p []byte) error {
	if b.oq.cur == nil {
		return errors.New("the server sent data before naming an archive")
	}
	if b.split != nil {
		return b.split.write(p)
	}
	return b.oq.write(p)
}

func (b *backup) progress(done int64) {
	if b.opts.Progress != nil {
		b.opts.Progress(done, b.total)
	}
}

func (b *backup) notice(severity, message string) {
	if f, ok := parseChecksumNotice(message); ok {
		b.failures = append(b.failures, f)
		b.log.Warn("page checksum failure", "file", f.File, "block", f.Block)
		return
	}
	b.log.Info("server: "+message, "severity", severity)
}

// closeCurrent ends the current object, which completes in the background.
func (b *backup) closeCurrent() error {
	if sp := b.split; sp != nil {
		b.split = nil
		b.parts = b.parts || sp.split
		if !sp.ended && (sp.content > 0 || sp.nhdr > 0) {
			return errors.New("the server's tar archive ended in the middle of an entry")
		}
		if !sp.ended { // PostgreSQL 15+ leaves the end-of-archive blocks to the client
			if err := b.oq.write(endOfArchive); err != nil {
				return err
			}
		}
	}
	return b.oq.finish()
}

func validArchiveName(name string) bool {
	if name == "base.tar" {
		return true
	}
	oid, ok := strings.CutSuffix(name, ".tar")
	if !ok || oid == "" {
		return false
	}
	for _, c := range oid {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// cleanup removes what a failed backup wrote. It runs with its own
// deadline, also after the caller's context was cancelled.
func (b *backup) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prefix := storage.BackupsPrefix + b.id + "/"
	var keys []string
	b.opts.Repo.Backend().List(ctx, prefix, func(o storage.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	})
	for _, k := range keys {
		if err := b.opts.Repo.Backend().Delete(ctx, k); err != nil {
			b.log.Warn("could not remove an object of the failed backup; it stays as an incomplete backup", "key", k, "error", err)
		}
	}
}

// waitForWAL waits until the repository holds the WAL from the backup's
// start to its stop LSN: every segment complete, the last one possibly as a
// .partial that reaches the stop LSN. It names the first missing segment on
// timeout.
func (b *backup) waitForWAL(ctx context.Context, res result) error {
	seg := b.sys.SegSize
	first := uint64(res.startLSN) / seg
	last := uint64(res.stopLSN-1) / seg
	deadline := time.Now().Add(b.opts.WALTimeout)
	b.log.Info("waiting for the backup's WAL in the repository", "from", res.startLSN.String(), "to", res.stopLSN.String())
	for segno := first; segno <= last; {
		ok, missing, err := b.haveSegment(ctx, segno, res, segno == last)
		if err != nil {
			return err
		}
		if ok {
			segno++
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("WAL segment %s, needed to make the backup consistent, did not reach the repository within %s: "+
				"check that `walkeeper stream` runs for this repository, or use --wal include", missing, b.opts.WALTimeout)
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (b *backup) haveSegment(ctx context.Context, segno uint64, res result, last bool) (bool, string, error) {
	tlis := []uint32{res.startTLI}
	if res.stopTLI != res.startTLI {
		tlis = append(tlis, res.stopTLI)
	}
	var upTo replication.LSN
	if last {
		upTo = res.stopLSN
	}
	var name string
	for _, tli := range tlis {
		name = archive.SegmentName(tli, segno, b.sys.SegSize)
		ok, err := archive.Reaches(ctx, b.opts.Repo, tli, segno, b.sys.SegSize, upTo)
		if ok || err != nil {
			return ok, name, err
		}
	}
	return false, name, nil
}
