package basebackup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Backup kinds (backup.json "kind"; absent means full).
const (
	KindFull        = "full"
	KindIncremental = "incremental"
)

// DefaultMaxChain is how many incremental backups may follow a full one
// before --incremental takes a full backup again.
const DefaultMaxChain = 7

// MinIncrementalMajor is the first PostgreSQL major with incremental
// backups (UPLOAD_MANIFEST, BASE_BACKUP INCREMENTAL).
const MinIncrementalMajor = 17

// IsIncremental reports whether the backup needs its chain to be restored.
func (m *Meta) IsIncremental() bool { return m.Kind == KindIncremental }

// KindName is "full" or "incremental", also for backups written before
// backup.json recorded the kind.
func (m *Meta) KindName() string {
	if m.Kind == "" {
		return KindFull
	}
	return m.Kind
}

// Members is the chain a backup is restored from, oldest (the full backup)
// first and the backup itself last; a full backup is its own chain.
func (m *Meta) Members() []string {
	return append(append([]string{}, m.Chain...), m.ID)
}

// ErrIncrementalUnsupported: the server cannot take incremental backups;
// the message says what to change.
var ErrIncrementalUnsupported = errors.New("incremental backups are not possible on this server")

// choice is what --incremental decided: a parent, or a full backup and why.
type choice struct {
	parent   *Meta
	manifest Object // the parent's backup_manifest
	why      string // for a full backup: the one-line reason
}

// chooseParent decides whether an incremental backup can be taken and
// against which backup. Servers that cannot take one at all are an error;
// a repository without a usable parent, a chain at its limit or a server
// that no longer has the WAL summaries since the parent give a full
// backup with the reason.
func chooseParent(ctx context.Context, opts Options, conn *pgconn.PgConn, sys replication.System) (choice, error) {
	if sys.Major < MinIncrementalMajor {
		return choice{}, replication.Permanentf("%w: PostgreSQL %s has no incremental backups (they need PostgreSQL %d or newer): drop --incremental and take full backups",
			ErrIncrementalUnsupported, sys.ServerVersion, MinIncrementalMajor)
	}
	res, err := conn.Exec(ctx, "SHOW summarize_wal").ReadAll()
	if err != nil {
		return choice{}, fmt.Errorf("SHOW summarize_wal: %w", replication.Classify(err, ""))
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "on" {
		return choice{}, replication.Permanentf("%w: summarize_wal is off: run ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); on the server, then take a full backup for later incrementals to build on",
			ErrIncrementalUnsupported)
	}
	infos, err := List(ctx, opts.Repo)
	if err != nil {
		return choice{}, err
	}
	path, err := timelinePath(ctx, conn, sys.Timeline)
	if err != nil {
		return choice{}, err
	}
	var parent *Meta
	for i := len(infos) - 1; i >= 0 && parent == nil; i-- {
		m := infos[i].Meta
		if m == nil || m.SystemIdentifier != sys.SystemID || !onPath(path, m) {
			continue
		}
		parent = m
	}
	if parent == nil {
		return choice{why: "no complete backup of this cluster on the server's timeline history to build on"}, nil
	}
	if major, err := replication.ParseMajor(parent.ServerVersion); err != nil || major != sys.Major {
		return choice{why: fmt.Sprintf("the newest backup %s is of PostgreSQL %s, the server runs %s", parent.ID, parent.ServerVersion, sys.ServerVersion)}, nil
	}
	var manifest *Object
	for i := range parent.Objects {
		if parent.Objects[i].Name == "backup_manifest" {
			manifest = &parent.Objects[i]
		}
	}
	if manifest == nil {
		return choice{why: fmt.Sprintf("the newest backup %s has no backup_manifest to build on", parent.ID)}, nil
	}
	// An encrypted repository written with only the public key cannot
	// give the server the parent's manifest.
	if rc, err := opts.Repo.Open(ctx, manifest.Key); errors.Is(err, storage.ErrNeedIdentity) {
		return choice{why: "the repository is encrypted and this host has only the public key, so the parent's manifest cannot be read: give --identity-file (or the passphrase) to take incremental backups"}, nil
	} else if err == nil {
		rc.Close()
	}
	if why := brokenChain(infos, parent); why != "" {
		return choice{why: why}, nil
	}
	if n := len(parent.Members()) - 1; n+1 > opts.MaxChain {
		return choice{why: fmt.Sprintf("the chain of %s already has %d incremental backups, --max-chain is %d", parent.ID, n, opts.MaxChain)}, nil
	}
	if why := summariesGone(ctx, opts, parent); why != "" {
		return choice{why: why}, nil
	}
	return choice{parent: parent, manifest: *manifest}, nil
}

// brokenChain says why parent cannot be built on when a member of its
// chain (an older backup it depends on) is missing or incomplete: an
// incremental on it could never be restored.
func brokenChain(infos []Info, parent *Meta) string {
	complete := map[string]bool{}
	for _, i := range infos {
		if i.Complete && i.Meta != nil {
			complete[i.ID] = true
		}
	}
	for _, id := range parent.Chain {
		if !complete[id] {
			return fmt.Sprintf("the chain of the newest backup %s is broken: backup %s it depends on is missing or incomplete", parent.ID, id)
		}
	}
	return ""
}

// timelinePath is the line of timelines that leads to tli, from the
// server's own history file.
func timelinePath(ctx context.Context, conn *pgconn.PgConn, tli uint32) (archive.Path, error) {
	if tli <= 1 {
		return archive.PathTo(tli, nil), nil
	}
	h, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
	if err != nil {
		return nil, fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, replication.Classify(err, ""))
	}
	entries, err := archive.ParseHistory(h.Content)
	if err != nil {
		return nil, fmt.Errorf("timeline %d history from the server: %w", tli, err)
	}
	return archive.PathTo(tli, entries), nil
}

// onPath reports whether the backup ended on the line of timelines p.
func onPath(p archive.Path, m *Meta) bool {
	stop, err := replication.ParseLSN(m.StopLSN)
	if err != nil {
		return false
	}
	tli := m.StopTimeline
	if tli == 0 {
		tli = m.Timeline
	}
	for _, s := range p {
		if s.TLI == tli && (s.Open || uint64(stop) <= uint64(s.End)) {
			return true
		}
	}
	return false
}

// summariesGone says why the server cannot take an incremental backup
// against parent because the WAL summaries since the parent's start are
// gone (wal_summary_keep_time, or summarize_wal turned on after the
// parent), or "" when they are there or cannot be asked about (the server
// then decides and says so itself). Summaries still being written (the
// parent was just taken) are not "gone": the server waits for them.
func summariesGone(ctx context.Context, opts Options, parent *Meta) string {
	log := opts.Log
	conn, err := replication.ConnectSQL(ctx, opts.DSN, "walkeeper backup", opts.ConnectTimeout)
	if err != nil {
		log.Debug("could not check the server's WAL summaries; the server will", "error", replication.Redact(err))
		return ""
	}
	defer conn.Close(context.Background())
	q := fmt.Sprintf(`SELECT
  EXISTS (SELECT 1 FROM pg_available_wal_summaries() WHERE tli = %[1]d AND start_lsn <= %[2]s AND end_lsn > %[2]s),
  EXISTS (SELECT 1 FROM pg_available_wal_summaries() WHERE tli = %[1]d AND start_lsn > %[2]s)`,
		parent.Timeline, replication.QuoteLiteral(parent.StartLSN)+"::pg_lsn")
	res, err := conn.Exec(ctx, q).ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		log.Debug("could not check the server's WAL summaries; the server will", "error", err)
		return ""
	}
	covered, later := string(res[0].Rows[0][0]) == "t", string(res[0].Rows[0][1]) == "t"
	if !covered && later {
		return fmt.Sprintf("the server no longer has WAL summaries back to the start of %s (%s on timeline %d; see wal_summary_keep_time)",
			parent.ID, parent.StartLSN, parent.Timeline)
	}
	return ""
}

// uploadManifest sends the parent's backup_manifest with UPLOAD_MANIFEST,
// checked against what the parent's backup.json recorded of it.
func uploadManifest(ctx context.Context, repo *storage.Repository, conn *pgconn.PgConn, parent *Meta, obj Object) error {
	rd, err := repo.Open(ctx, obj.Key)
	if err != nil {
		return fmt.Errorf("open %s, the manifest of parent backup %s: %w", obj.Key, parent.ID, err)
	}
	defer rd.Close()
	if _, err := conn.CopyFrom(ctx, rd, "UPLOAD_MANIFEST"); err != nil {
		if errors.Is(err, storage.ErrCorrupt) {
			return fmt.Errorf("parent backup %s: %w", parent.ID, err)
		}
		return fmt.Errorf("UPLOAD_MANIFEST of parent backup %s: %w", parent.ID, replication.Classify(err, ""))
	}
	// CopyFrom read to the end, so the trailer was checked.
	if m := rd.Meta(); obj.SHA256 != "" && (m.Hex() != obj.SHA256 || m.Size != obj.Size) {
		return fmt.Errorf("%s: %w: not the manifest parent backup %s stored", obj.Key, storage.ErrCorrupt, parent.ID)
	}
	return nil
}

// logChoice reports what --incremental decided in one line.
func logChoice(log *slog.Logger, c choice) {
	if c.parent != nil {
		log.Info("taking an incremental backup", "parent", c.parent.ID, "chain", strings.Join(c.parent.Members(), ","))
		return
	}
	log.Warn("taking a full backup instead of an incremental one: " + c.why)
}
