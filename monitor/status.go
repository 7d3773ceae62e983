package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/internal/units"
	"github.com/walkeeper/walkeeper/storage"
)

// DefaultSlot is the slot status and doctor look at when neither --slot nor
// a stream heartbeat names one.
const DefaultSlot = "walkeeper"

// DefaultQueryTimeout bounds connecting and each query.
const DefaultQueryTimeout = 5 * time.Second

// StatusOptions configures CollectStatus.
type StatusOptions struct {
	Repo *storage.Repository
	// DSN, when not empty, adds the server and slot sections.
	DSN string
	// Slot names the replication slot; empty means the slot of the stream
	// heartbeat, else DefaultSlot.
	Slot string
	// MaxBackupAge and MaxWALAge, when positive, make a newest backup (by
	// stop time) or newest WAL object (by modification time) older than
	// this a problem; so is having none.
	MaxBackupAge, MaxWALAge time.Duration
	// Timeout bounds connecting and each query (DefaultQueryTimeout if 0).
	Timeout time.Duration
	// Now is the reference time (time.Now if zero).
	Now time.Time
}

// StatusReport is what `walkeeper status` prints; its JSON field names are
// stable (docs/monitoring.md).
type StatusReport struct {
	CheckedAt  time.Time        `json:"checked_at"`
	Repository RepositoryStatus `json:"repository"`
	// Server is nil when no DSN was given.
	Server *ServerStatus `json:"server,omitempty"`
	// Slot is nil when no DSN was given or the server is unreachable.
	Slot    *SlotStatus    `json:"slot,omitempty"`
	Streams []StreamReport `json:"streams"`
	// Problems lists what makes the exit code 5; empty means healthy.
	Problems []string `json:"problems"`
}

// OK reports whether no problem was found.
func (r *StatusReport) OK() bool { return len(r.Problems) == 0 }

// RepositoryStatus summarises the repository.
type RepositoryStatus struct {
	Location string `json:"location"`
	// Initialized is false until walkeeper.json exists.
	Initialized       bool           `json:"initialized"`
	SystemIdentifier  string         `json:"system_identifier,omitempty"`
	PGMajorVersion    int            `json:"pg_major_version,omitempty"`
	WALSegmentSize    uint64         `json:"wal_segment_size,omitempty"`
	BackupsComplete   int            `json:"backups_complete"`
	BackupsIncomplete int            `json:"backups_incomplete"`
	NewestBackup      *BackupSummary `json:"newest_backup,omitempty"`
	// WALSegments counts complete segments, WALPartials .partial objects,
	// from WALGapsFrom on (the WAL the complete backups need; all of it
	// when there is no backup): older objects are not listed.
	WALSegments int         `json:"wal_segments"`
	WALPartials int         `json:"wal_partials"`
	NewestWAL   *WALSummary `json:"newest_wal,omitempty"`
	// WALGapsFrom is the segment the gap check starts at: the oldest
	// complete backup's first segment (after its stop for a backup that
	// carries its own WAL), else the oldest stored segment.
	WALGapsFrom string   `json:"wal_gaps_from,omitempty"`
	WALGaps     []WALGap `json:"wal_gaps"`
	// Objects and StoredBytes count the backups' objects and the WAL
	// objects from WALGapsFrom on.
	Objects     int   `json:"objects"`
	StoredBytes int64 `json:"stored_bytes"`
}

// BackupSummary describes the newest complete backup.
type BackupSummary struct {
	ID        string    `json:"id"`
	StartTime time.Time `json:"start_time"`
	StopTime  time.Time `json:"stop_time"`
	// AgeSeconds is measured from StopTime.
	AgeSeconds float64 `json:"age_seconds"`
	StartLSN   string  `json:"start_lsn"`
	StopLSN    string  `json:"stop_lsn"`
	Timeline   uint32  `json:"timeline"`
}

// WALSummary describes the newest stored WAL object.
type WALSummary struct {
	// Name is the file name as PostgreSQL knows it, with ".partial" for
	// the unfinished segment.
	Name     string `json:"name"`
	Timeline uint32 `json:"timeline"`
	Partial  bool   `json:"partial"`
	// EndLSN is the position just after the last stored byte.
	EndLSN     string    `json:"end_lsn"`
	Modified   time.Time `json:"modified"`
	AgeSeconds float64   `json:"age_seconds"`
}

// WALGap is a run of missing segments: First to Last inclusive.
type WALGap struct {
	First string `json:"first"`
	Last  string `json:"last"`
	Count uint64 `json:"count"`
}

// ServerStatus describes the server --dsn points at.
type ServerStatus struct {
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	// Role is "primary" or "standby".
	Role     string `json:"role,omitempty"`
	Timeline uint32 `json:"timeline,omitempty"`
	// CurrentLSN is pg_current_wal_lsn() on a primary, the last replayed
	// (else received) position on a standby.
	CurrentLSN string `json:"current_lsn,omitempty"`
	Version    string `json:"version,omitempty"`
	// RepositoryLagBytes is CurrentLSN minus the newest stored WAL's end,
	// when both are known.
	RepositoryLagBytes *int64 `json:"repository_lag_bytes,omitempty"`
}

// SlotStatus describes the replication slot.
type SlotStatus struct {
	Name string `json:"name"`
	// Source says where the name came from: "flag", "stream" or "default".
	Source     string `json:"source"`
	Exists     bool   `json:"exists"`
	Type       string `json:"type,omitempty"`
	Active     bool   `json:"active"`
	RestartLSN string `json:"restart_lsn,omitempty"`
	// WALStatus is pg_replication_slots.wal_status: reserved, extended,
	// unreserved or lost.
	WALStatus string `json:"wal_status,omitempty"`
	// InvalidationReason says why a lost slot was invalidated
	// (wal_removed, idle_timeout, ...); PostgreSQL 17 and newer only.
	InvalidationReason string `json:"invalidation_reason,omitempty"`
	// SafeWALSize is pg_replication_slots.safe_wal_size: how much more WAL
	// the server may write before the slot is invalidated. It is null for
	// three reasons, which SafeWALSizeReason names.
	SafeWALSize *int64 `json:"safe_wal_size"`
	// SafeWALSizeReason says why SafeWALSize is null (empty when it is
	// not): SafeWALSizeUnlimited, SafeWALSizeLost or SafeWALSizeNoWAL.
	SafeWALSizeReason string `json:"safe_wal_size_reason,omitempty"`
	// MaxSlotWALKeepSize is the server's max_slot_wal_keep_size in bytes,
	// -1 for unlimited (PostgreSQL's spelling).
	MaxSlotWALKeepSize *int64 `json:"max_slot_wal_keep_size,omitempty"`
	// LagBytes is the server's current position minus restart_lsn: the
	// WAL the slot makes the server keep.
	LagBytes *int64 `json:"lag_bytes"`
}

// Why a slot's safe_wal_size is null (SlotStatus.SafeWALSizeReason).
const (
	// SafeWALSizeUnlimited: max_slot_wal_keep_size = -1, the slot may hold
	// back WAL without bound.
	SafeWALSizeUnlimited = "unlimited"
	// SafeWALSizeLost: the slot was invalidated (wal_status = lost); no WAL
	// is left to lose.
	SafeWALSizeLost = "lost"
	// SafeWALSizeNoWAL: the slot reserves no WAL (no restart_lsn).
	SafeWALSizeNoWAL = "no_wal_reserved"
)

// safeWALSizeText is the text report's safe_wal_size line.
func (sl *SlotStatus) safeWALSizeText() string {
	setting := "unknown"
	if n := sl.MaxSlotWALKeepSize; n != nil && *n < 0 {
		setting = "-1"
	} else if n != nil {
		setting = units.FormatSize(*n)
	}
	switch {
	case sl.SafeWALSize != nil:
		return fmt.Sprintf("%s (max_slot_wal_keep_size = %s)", units.FormatSize(*sl.SafeWALSize), setting)
	case sl.SafeWALSizeReason == SafeWALSizeLost:
		return fmt.Sprintf("none left (slot lost; max_slot_wal_keep_size = %s)", setting)
	case sl.SafeWALSizeReason == SafeWALSizeUnlimited:
		return "unlimited (max_slot_wal_keep_size = -1)"
	case sl.SafeWALSizeReason == SafeWALSizeNoWAL:
		return fmt.Sprintf("unknown: the slot reserves no WAL (max_slot_wal_keep_size = %s)", setting)
	}
	return "unknown"
}

// StreamReport is one stream heartbeat.
type StreamReport struct {
	Slot        string    `json:"slot"`
	Alive       bool      `json:"alive"`
	Stopped     bool      `json:"stopped"`
	Host        string    `json:"host"`
	PID         int       `json:"pid"`
	Timeline    uint32    `json:"timeline"`
	ReceivedLSN string    `json:"received_lsn"`
	FlushedLSN  string    `json:"flushed_lsn"`
	LastHeard   time.Time `json:"last_heard"`
	AgeSeconds  float64   `json:"age_seconds"`
	// StorageError is the failure to store WAL the stream was retrying at
	// its last heartbeat (a full or read-only repository, unreachable
	// storage), since StorageErrorSince; absent while storing works.
	StorageError      string     `json:"storage_error,omitempty"`
	StorageErrorSince *time.Time `json:"storage_error_since,omitempty"`
}

// CollectStatus reads the repository and, with a DSN, the server and slot.
// It returns an error only when the repository cannot be read; everything
// else ends up in the report, and threshold violations in Problems.
func CollectStatus(ctx context.Context, opts StatusOptions) (*StatusReport, error) {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultQueryTimeout
	}
	rep := &StatusReport{CheckedAt: now.UTC(), Streams: []StreamReport{}, Problems: []string{}}
	// Listing a large bucket takes several calls: the repository section
	// as a whole gets a dozen timeouts.
	rctx, cancel := context.WithTimeout(ctx, 12*opts.Timeout)
	defer cancel()
	if err := collectRepository(rctx, opts.Repo, now, &rep.Repository); err != nil {
		return nil, err
	}
	streams, err := opts.Repo.Streams(rctx)
	if err != nil {
		return nil, fmt.Errorf("read stream heartbeats: %w", err)
	}
	sort.Slice(streams, func(i, j int) bool { return streams[i].UpdatedAt.After(streams[j].UpdatedAt) })
	for _, s := range streams {
		rep.Streams = append(rep.Streams, StreamReport{
			Slot: s.Slot, Alive: s.Live(now), Stopped: s.Stopped, Host: s.Host, PID: s.PID, Timeline: s.Timeline,
			ReceivedLSN: s.Received, FlushedLSN: s.Flushed, LastHeard: s.UpdatedAt, AgeSeconds: seconds(now.Sub(s.UpdatedAt)),
			StorageError: s.StorageError, StorageErrorSince: s.StorageErrorSince,
		})
	}
	if opts.DSN != "" {
		slot, source := pickSlot(opts.Slot, streams, now)
		rep.Server, rep.Slot = collectServer(ctx, opts.DSN, opts.Timeout, slot, source)
		if lsn, ok := lsnOf(rep.Server.CurrentLSN); ok && rep.Repository.NewestWAL != nil {
			end, _ := replication.ParseLSN(rep.Repository.NewestWAL.EndLSN)
			lag := int64(lsn) - int64(end)
			rep.Server.RepositoryLagBytes = &lag
		}
	}
	rep.Problems = statusProblems(rep, opts)
	return rep, nil
}

// pickSlot chooses the slot to report: the flag, else the slot of the most
// recently heard stream (live ones first), else DefaultSlot.
func pickSlot(flag string, streams []storage.StreamStatus, now time.Time) (name, source string) {
	if flag != "" {
		return flag, "flag"
	}
	for _, live := range []bool{true, false} {
		for _, s := range streams {
			if s.Live(now) == live && s.Slot != "" {
				return s.Slot, "stream"
			}
		}
	}
	return DefaultSlot, "default"
}

func statusProblems(rep *StatusReport, opts StatusOptions) []string {
	p := []string{}
	r := rep.Repository
	if opts.MaxBackupAge > 0 {
		if r.NewestBackup == nil {
			p = append(p, "no complete backup in the repository (--max-backup-age is set): run walkeeper backup")
		} else if age := time.Duration(r.NewestBackup.AgeSeconds * float64(time.Second)); age > opts.MaxBackupAge {
			p = append(p, fmt.Sprintf("newest backup %s finished %s ago, more than --max-backup-age %s: check the backup job",
				r.NewestBackup.ID, roundAge(age), opts.MaxBackupAge))
		}
	}
	if opts.MaxWALAge > 0 {
		if r.NewestWAL == nil {
			p = append(p, "no WAL in the repository (--max-wal-age is set): start walkeeper stream or set archive_command")
		} else if age := time.Duration(r.NewestWAL.AgeSeconds * float64(time.Second)); age > opts.MaxWALAge {
			p = append(p, fmt.Sprintf("newest WAL %s was stored %s ago, more than --max-wal-age %s: check that walkeeper stream runs",
				r.NewestWAL.Name, roundAge(age), opts.MaxWALAge))
		}
	}
	if len(r.WALGaps) > 0 {
		g := r.WALGaps[0]
		p = append(p, fmt.Sprintf("WAL gap: %d segment(s) missing from %s to %s (%d gap(s) in all): point-in-time recovery cannot cross it; take a new base backup",
			g.Count, g.First, g.Last, len(r.WALGaps)))
	}
	for _, s := range rep.Streams {
		if s.Alive && s.StorageError != "" {
			p = append(p, fmt.Sprintf("stream %s cannot store WAL%s: %s", s.Slot, failingFor(s, rep.CheckedAt), s.StorageError))
		}
	}
	if s := rep.Server; s != nil && !s.Reachable {
		p = append(p, "server unreachable: "+s.Error)
	}
	if s := rep.Slot; s != nil {
		switch {
		case !s.Exists && s.Source != "default":
			p = append(p, fmt.Sprintf("replication slot %q does not exist on the server: start walkeeper stream --slot %s (it creates the slot)", s.Name, s.Name))
		case s.WALStatus == "lost":
			what, hint := replication.Invalidated(s.Name, s.InvalidationReason)
			p = append(p, what+": "+hint)
		}
	}
	return p
}

// failingFor is " for 5m" when the stream's storage error has a start.
func failingFor(s StreamReport, now time.Time) string {
	if s.StorageErrorSince == nil {
		return ""
	}
	return " for " + roundAge(now.Sub(*s.StorageErrorSince)).String()
}

func roundAge(d time.Duration) time.Duration {
	switch {
	case d >= time.Hour:
		return d.Round(time.Minute)
	case d >= time.Second:
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// sqlSession runs queries on a plain SQL connection, each under timeout.
type sqlSession struct {
	conn    *pgconn.PgConn
	timeout time.Duration
}

// sqlValue is one column; Null marks SQL NULL.
type sqlValue struct {
	S    string
	Null bool
}

func (v sqlValue) String() string { return v.S }

// row runs a query with text parameters and returns its single row, or nil
// when it returns none.
func (s *sqlSession) row(ctx context.Context, sql string, args ...string) ([]sqlValue, error) {
	qctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	res := s.conn.ExecParams(qctx, sql, params, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, replication.Classify(res.Err, "")
	}
	if len(res.Rows) == 0 {
		return nil, nil
	}
	out := make([]sqlValue, len(res.Rows[0]))
	for i, c := range res.Rows[0] {
		out[i] = sqlValue{S: string(c), Null: c == nil}
	}
	return out, nil
}

func (s *sqlSession) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.conn.Close(ctx)
}

func openSQL(ctx context.Context, dsn string, timeout time.Duration) (*sqlSession, error) {
	conn, err := replication.ConnectSQL(ctx, dsn, "walkeeper monitor", timeout)
	if err != nil {
		return nil, err
	}
	return &sqlSession{conn: conn, timeout: timeout}, nil
}

// serverQuery reads role, version, position and timeline in one round trip.
// On a primary the timeline is the one WAL is inserted on (pg_walfile_name);
// a standby cannot call that and reports its last checkpoint's timeline.
const serverQuery = `SELECT pg_is_in_recovery(), current_setting('server_version'),
  CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn())::text
       ELSE pg_current_wal_lsn()::text END,
  CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())::text
       ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END`

// slotQuery reads the slot and max_slot_wal_keep_size, without which a null
// safe_wal_size cannot be told apart (unlimited, or lost), and the
// invalidation reason (a column from PostgreSQL 17 on).
func slotQuery(major int) string {
	return `SELECT slot_type, active, restart_lsn::text, wal_status, safe_wal_size::text,
  pg_size_bytes(current_setting('max_slot_wal_keep_size'))::text, ` + replication.InvalidationReasonSQL(major) + `
  FROM pg_replication_slots WHERE slot_name = $1`
}

func collectServer(ctx context.Context, dsn string, timeout time.Duration, slot, source string) (*ServerStatus, *SlotStatus) {
	srv := &ServerStatus{}
	sess, err := openSQL(ctx, dsn, timeout)
	if err != nil {
		srv.Error = oneLine(err.Error())
		return srv, nil
	}
	defer sess.close()
	if err := readServer(ctx, sess, srv); err != nil {
		srv.Error = oneLine(err.Error())
		return srv, nil
	}
	srv.Reachable = true
	sl, err := readSlot(ctx, sess, slot, srv)
	if err != nil {
		srv.Error = "reading the slot: " + oneLine(err.Error())
		return srv, nil
	}
	sl.Source = source
	return srv, sl
}

func readServer(ctx context.Context, sess *sqlSession, srv *ServerStatus) error {
	row, err := sess.row(ctx, serverQuery)
	if err != nil {
		return err
	}
	if len(row) != 4 {
		return errors.New("server status query returned no row")
	}
	srv.Role = "primary"
	if row[0].S == "t" {
		srv.Role = "standby"
	}
	srv.Version, srv.CurrentLSN = row[1].S, row[2].S
	base := 10
	if srv.Role == "primary" {
		base = 16
	}
	if t, err := strconv.ParseUint(row[3].S, base, 32); err == nil {
		srv.Timeline = uint32(t)
	}
	return nil
}

// readSlot reads one slot of the server srv describes (its version picks
// the columns, its position gives the lag).
func readSlot(ctx context.Context, sess *sqlSession, name string, srv *ServerStatus) (*SlotStatus, error) {
	sl := &SlotStatus{Name: name}
	major, _ := replication.ParseMajor(srv.Version)
	current := srv.CurrentLSN
	row, err := sess.row(ctx, slotQuery(major), name)
	if err != nil || row == nil {
		return sl, err
	}
	if len(row) != 7 {
		return sl, fmt.Errorf("slot query returned %d columns, want 7", len(row))
	}
	sl.Exists, sl.Type, sl.Active = true, row[0].S, row[1].S == "t"
	sl.RestartLSN, sl.WALStatus, sl.InvalidationReason = row[2].S, row[3].S, row[6].S
	if !row[4].Null {
		if n, err := strconv.ParseInt(row[4].S, 10, 64); err == nil {
			sl.SafeWALSize = &n
		}
	}
	if n, err := strconv.ParseInt(row[5].S, 10, 64); err == nil && !row[5].Null {
		sl.MaxSlotWALKeepSize = &n
	}
	if sl.SafeWALSize == nil {
		sl.SafeWALSizeReason = safeWALSizeReason(sl)
	}
	cur, ok1 := lsnOf(current)
	restart, ok2 := lsnOf(sl.RestartLSN)
	if ok1 && ok2 {
		lag := int64(cur) - int64(restart)
		sl.LagBytes = &lag
	}
	return sl, nil
}

// safeWALSizeReason says why PostgreSQL reports a null safe_wal_size: it
// computes none for a lost slot, a slot without restart_lsn, or when
// max_slot_wal_keep_size is -1 (pg_get_replication_slots, slotfuncs.c).
func safeWALSizeReason(sl *SlotStatus) string {
	switch {
	case sl.WALStatus == "lost":
		return SafeWALSizeLost
	case sl.RestartLSN == "" || sl.WALStatus == "":
		return SafeWALSizeNoWAL
	case sl.MaxSlotWALKeepSize != nil && *sl.MaxSlotWALKeepSize < 0:
		return SafeWALSizeUnlimited
	}
	return ""
}

func lsnOf(s string) (replication.LSN, bool) {
	if s == "" {
		return 0, false
	}
	l, err := replication.ParseLSN(s)
	return l, err == nil
}

// WriteText prints the report as aligned sections, problems last.
func (r *StatusReport) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := func(title, format string, a ...any) { fmt.Fprintf(tw, "%s\t%s\n", title, fmt.Sprintf(format, a...)) }
	line := func(key, format string, a ...any) { fmt.Fprintf(tw, "  %s\t%s\n", key, fmt.Sprintf(format, a...)) }
	age := func(sec float64) time.Duration { return roundAge(time.Duration(sec * float64(time.Second))) }

	repo := r.Repository
	head("Repository", "%s", repo.Location)
	if repo.Initialized {
		line("system identifier", "%s (PostgreSQL %d, %s segments)", repo.SystemIdentifier, repo.PGMajorVersion, units.FormatSize(int64(repo.WALSegmentSize)))
	} else {
		line("system identifier", "none yet (no walkeeper.json: nothing was stored)")
	}
	line("backups", "%d complete, %d incomplete", repo.BackupsComplete, repo.BackupsIncomplete)
	if b := repo.NewestBackup; b != nil {
		line("newest backup", "%s, finished %s ago (%s to %s, timeline %d)", b.ID, age(b.AgeSeconds), b.StartLSN, b.StopLSN, b.Timeline)
	} else {
		line("newest backup", "none")
	}
	line("WAL", "%d segments, %d partial", repo.WALSegments, repo.WALPartials)
	if wl := repo.NewestWAL; wl != nil {
		line("newest WAL", "%s (timeline %d, ends at %s), stored %s ago", wl.Name, wl.Timeline, wl.EndLSN, age(wl.AgeSeconds))
	} else {
		line("newest WAL", "none")
	}
	switch {
	case repo.WALGapsFrom == "":
	case len(repo.WALGaps) == 0:
		line("WAL gaps", "none since %s", repo.WALGapsFrom)
	default:
		for _, g := range repo.WALGaps {
			line("WAL gap", "%s to %s (%d missing)", g.First, g.Last, g.Count)
		}
	}
	line("stored", "%s in %d objects", units.FormatSize(repo.StoredBytes), repo.Objects)

	if s := r.Server; s != nil {
		if !s.Reachable {
			head("Server", "UNREACHABLE: %s", s.Error)
		} else {
			head("Server", "%s, PostgreSQL %s", s.Role, s.Version)
			line("timeline", "%d", s.Timeline)
			line("current LSN", "%s", s.CurrentLSN)
			if s.RepositoryLagBytes != nil {
				line("repository lag", "%s behind the server", units.FormatSize(*s.RepositoryLagBytes))
			}
			if s.Error != "" {
				line("error", "%s", s.Error)
			}
		}
	}
	if sl := r.Slot; sl != nil {
		if !sl.Exists {
			head("Slot", "%s (%s): does not exist", sl.Name, sl.Source)
		} else {
			state := "inactive"
			if sl.Active {
				state = "active"
			}
			head("Slot", "%s (%s): %s %s", sl.Name, sl.Source, state, sl.Type)
			line("restart LSN", "%s", sl.RestartLSN)
			line("wal_status", "%s", sl.WALStatus)
			line("safe_wal_size", "%s", sl.safeWALSizeText())
			if sl.LagBytes != nil {
				line("retained", "%s", units.FormatSize(*sl.LagBytes))
			}
		}
	}
	if len(r.Streams) == 0 {
		head("Stream", "none has written a heartbeat to this repository")
	}
	for _, s := range r.Streams {
		state := "DEAD (not heard from)"
		switch {
		case s.Stopped:
			state = "stopped"
		case s.Alive:
			state = "alive"
		}
		head("Stream", "%s: %s", s.Slot, state)
		line("process", "pid %d on %s", s.PID, s.Host)
		line("flushed LSN", "%s (timeline %d)", s.FlushedLSN, s.Timeline)
		line("last heard", "%s ago", age(s.AgeSeconds))
		if s.StorageError != "" {
			line("storage error", "%s%s", s.StorageError, failingFor(s, r.CheckedAt))
		}
	}
	if len(r.Problems) == 0 {
		head("Status", "OK")
	} else {
		head("Status", "%d problem(s)", len(r.Problems))
		for _, p := range r.Problems {
			line("-", "%s", p)
		}
	}
	return tw.Flush()
}
