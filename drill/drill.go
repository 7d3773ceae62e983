package drill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/monitor"
	"github.com/walkeeper/walkeeper/restore"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Options configure a drill.
type Options struct {
	Repo *storage.Repository
	// BackupID is a backup ID, or "" / "latest" for the newest complete one
	// (that can reach the recovery target, when one is set).
	BackupID string
	// Scratch is the directory the drill works in: missing or empty.
	Scratch string
	// Keep leaves the scratch directory (server stopped) for inspection.
	Keep bool
	// PGBin is the directory of the server binaries ("": found by the
	// backup's major version).
	PGBin string
	// Owner is the OS user the restored files belong to and the server runs
	// as ("": the current user, or postgres when run as root).
	Owner string
	// DBUser is the database user the checks connect as ("": Owner's name).
	DBUser string
	// Amcheck runs amcheck in every database.
	Amcheck bool
	// CheckSQL holds statements run in CheckDatabase after amcheck;
	// CheckSQLName names them in problems.
	CheckSQL, CheckSQLName, CheckDatabase string
	// Recovery: RestoreCommand (required) and an optional target; the drill
	// sets the target action (promote) and refuses AsReplica.
	Recovery restore.Recovery
	// RepoDir and Binary are passed to restore for its access check.
	RepoDir, Binary string
	// KeyFiles are the key files restore_command reads, for the same check.
	KeyFiles []string
	// Timeout bounds the recovery (default 1 hour).
	Timeout time.Duration
	Log     *slog.Logger
}

// Problem is one thing a drill found wrong.
type Problem struct {
	Kind   string `json:"kind"`   // restore, recovery, missing-wal, amcheck, check-sql
	Object string `json:"object"` // what it concerns (a segment, a relation, a query)
	Detail string `json:"detail"`
}

func (p Problem) String() string {
	if p.Object == "" {
		return p.Kind + ": " + p.Detail
	}
	return p.Kind + ": " + p.Object + ": " + p.Detail
}

// Problem kinds.
const (
	ProblemRestore    = "restore"
	ProblemRecovery   = "recovery"
	ProblemMissingWAL = "missing-wal"
	ProblemAmcheck    = "amcheck"
	ProblemCheckSQL   = "check-sql"
)

// Report is what a drill did and found.
type Report struct {
	OK            bool   `json:"ok"`
	Backup        string `json:"backup"`
	ServerVersion string `json:"server_version"`
	PGBin         string `json:"pg_bin"`
	Scratch       string `json:"scratch"`
	Kept          bool   `json:"kept"`
	// Seconds: restoring the backup, recovering (server start to a usable
	// server), the sum (the time to a usable server: the RTO a drill
	// measures), and the checks after it.
	RestoreSeconds  float64 `json:"restore_seconds"`
	RecoverySeconds float64 `json:"recovery_seconds"`
	RTOSeconds      float64 `json:"rto_seconds"`
	CheckSeconds    float64 `json:"check_seconds"`
	// ReplayedTo is where replay ended; WALReplayedBytes how far that is
	// from the backup's start.
	ReplayedTo       string    `json:"replayed_to,omitempty"`
	WALReplayedBytes int64     `json:"wal_replayed_bytes"`
	Amcheck          Amcheck   `json:"amcheck"`
	CheckQueries     int       `json:"check_queries"`
	Problems         []Problem `json:"problems"`
}

// Amcheck counts what amcheck verified.
type Amcheck struct {
	Ran       bool   `json:"ran"`
	Skipped   string `json:"skipped,omitempty"` // why it did not run
	Databases int    `json:"databases"`
	Indexes   int    `json:"indexes"`
	Tables    int    `json:"tables"`
}

func (r *Report) problem(kind, object, format string, args ...any) {
	r.Problems = append(r.Problems, Problem{Kind: kind, Object: object, Detail: fmt.Sprintf(format, args...)})
}

// Run performs a drill. The error is non-nil only when it could not run;
// what it found is in the report (OK false: exit 5).
func Run(ctx context.Context, opts Options) (*Report, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Hour
	}
	if opts.Recovery.AsReplica {
		return nil, errors.New("a drill recovers a throwaway copy: it cannot be a replica")
	}
	if opts.Recovery.RestoreCommand == "" {
		return nil, errors.New("drill: no restore_command")
	}
	if opts.Recovery.TargetTime != "" || opts.Recovery.TargetLSN != "" || opts.Recovery.TargetXID != "" || opts.Recovery.TargetName != "" {
		opts.Recovery.TargetAction = "promote"
	} else {
		opts.Recovery.TargetAction = ""
	}
	if err := opts.Recovery.Validate(); err != nil {
		return nil, err
	}
	scratch, err := filepath.Abs(opts.Scratch)
	if err != nil || opts.Scratch == "" {
		return nil, errors.New("drill needs --scratch DIR: a directory (missing or empty) to restore into and remove afterwards")
	}
	own, err := drillOwner(opts.Owner)
	if err != nil {
		return nil, err
	}
	if opts.DBUser == "" {
		opts.DBUser = own.name
	}

	// An encrypted repository without its private key: nothing to drill.
	if err := opts.Repo.NeedContent(ctx); err != nil {
		return nil, err
	}
	meta, err := restore.Choose(ctx, opts.Repo, opts.BackupID, opts.Recovery)
	if err != nil {
		return nil, err
	}
	bin, err := findBinaries(opts.PGBin, meta.ServerVersion)
	if err != nil {
		return nil, err
	}
	gaps, err := missingWAL(ctx, opts.Repo, meta)
	if err != nil {
		return nil, err
	}
	created, err := prepareScratch(scratch, own)
	if err != nil {
		return nil, err
	}
	rep := &Report{Backup: meta.ID, ServerVersion: meta.ServerVersion, PGBin: bin.dir, Scratch: scratch, Problems: []Problem{}}
	d := &drill{opts: opts, meta: meta, bin: bin, own: own, scratch: scratch, rep: rep, log: opts.Log}
	defer d.cleanup(created)

	for _, g := range gaps {
		rep.problem(ProblemMissingWAL, g.first, "%s: recovery from backup %s stops before it, short of the end of the archive", g.detail, meta.ID)
	}
	if err := d.run(ctx); err != nil {
		return nil, err
	}
	rep.OK = len(rep.Problems) == 0
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	return rep, nil
}

type drill struct {
	opts    Options
	meta    *basebackup.Meta
	bin     *binaries
	own     *osUser
	scratch string
	rep     *Report
	log     *slog.Logger
	srv     *server
}

func (d *drill) dataDir() string { return filepath.Join(d.scratch, "data") }

// run restores, recovers and checks, recording what it finds in the
// report; an error means the drill could not run at all.
func (d *drill) run(ctx context.Context) error {
	began := time.Now()
	tsMap := map[string]string{}
	for _, ts := range d.meta.Tablespaces {
		if ts.OID != "" && ts.Location != "" {
			tsMap[filepath.Clean(ts.Location)] = filepath.Join(d.scratch, "tablespaces", ts.OID)
		}
	}
	d.log.Info("drill: restoring", "backup", d.meta.ID, "scratch", d.scratch)
	_, err := restore.Run(ctx, restore.Options{
		Repo: d.opts.Repo, TargetDir: d.dataDir(), BackupID: d.meta.ID, Owner: d.own.name, TablespaceMap: tsMap,
		Recovery: d.opts.Recovery, RepoDir: d.opts.RepoDir, Binary: d.opts.Binary, KeyFiles: d.opts.KeyFiles, NoSync: true, Log: d.log,
	})
	d.rep.RestoreSeconds = time.Since(began).Seconds()
	var access restore.ServerAccessError
	if errors.As(err, &access) {
		return err // the drill could not run: a finding about the setup, not the backup
	}
	if err != nil {
		if ctx.Err() == nil {
			d.rep.problem(ProblemRestore, d.meta.ID, "%v", err)
		}
		return nil
	}
	started := time.Now()
	srv, err := startServer(ctx, d.bin, d.own, d.dataDir(), d.scratch, d.log)
	if err != nil {
		d.rep.problem(ProblemRecovery, "", "%v", err)
		return nil
	}
	d.srv = srv
	d.log.Info("drill: recovering", "port", srv.port)
	rctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	conn, err := srv.waitUsable(rctx, d.opts.DBUser)
	cancel()
	d.rep.RecoverySeconds = time.Since(started).Seconds()
	d.rep.RTOSeconds = time.Since(began).Seconds()
	if err != nil {
		if ctx.Err() == nil {
			d.rep.problem(ProblemRecovery, "", "%v", err)
		}
		return nil
	}
	defer conn.Close(context.Background())
	if lsn, err := queryString(ctx, conn, "SELECT coalesce(pg_last_wal_replay_lsn()::text, '')"); err == nil && lsn != "" {
		d.rep.ReplayedTo = lsn
		end, err1 := replication.ParseLSN(lsn)
		start, err2 := replication.ParseLSN(d.meta.StartLSN)
		if err1 == nil && err2 == nil && end > start {
			d.rep.WALReplayedBytes = int64(end - start)
		}
	}
	checks := time.Now()
	if d.opts.Amcheck {
		d.amcheck(ctx, conn)
	} else {
		d.rep.Amcheck.Skipped = "--amcheck=false"
	}
	if d.opts.CheckSQL != "" {
		d.checkSQL(ctx)
	}
	d.rep.CheckSeconds = time.Since(checks).Seconds()
	return nil
}

// cleanup stops the server and removes what the drill made.
func (d *drill) cleanup(created bool) {
	if d.srv != nil {
		d.srv.stop()
	}
	if d.opts.Keep {
		d.rep.Kept = true
		return
	}
	if created {
		if err := os.RemoveAll(d.scratch); err != nil {
			d.log.Warn("drill: could not remove the scratch directory", "dir", d.scratch, "error", err)
		}
		return
	}
	entries, _ := os.ReadDir(d.scratch)
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(d.scratch, e.Name())); err != nil {
			d.log.Warn("drill: could not clean the scratch directory", "dir", d.scratch, "error", err)
		}
	}
}

// prepareScratch checks the scratch directory (missing or empty, no data
// directory) and creates it for the owner. created says it did not exist.
func prepareScratch(dir string, own *osUser) (created bool, err error) {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("create the scratch directory: %w", err)
		}
		created = true
	case err != nil:
		return false, err
	case !st.IsDir():
		return false, fmt.Errorf("--scratch %s is not a directory: give a missing or empty directory", dir)
	default:
		if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
			return false, fmt.Errorf("--scratch %s holds a PostgreSQL data directory: a drill never writes over one; give a missing or empty directory", dir)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return false, err
		}
		if len(entries) > 0 {
			return false, fmt.Errorf("--scratch %s is not empty (%s, ...): a drill removes what it writes there, so it only takes a missing or empty directory", dir, entries[0].Name())
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return created, err
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, own.uid, own.gid); err != nil {
			return created, err
		}
	}
	return created, nil
}

type osUser struct {
	name     string
	uid, gid int
}

// drillOwner resolves the OS user the server runs as: name, or the
// current user, or postgres when that is root (PostgreSQL refuses root).
func drillOwner(name string) (*osUser, error) {
	var u *user.User
	var err error
	switch {
	case name != "":
		u, err = user.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("--owner %s: %w", name, err)
		}
	case os.Geteuid() == 0:
		u, err = user.Lookup("postgres")
		if err != nil {
			return nil, errors.New("running as root, the throwaway server needs another OS user and there is no postgres user: give --owner USER")
		}
	default:
		u, err = user.Current()
		if err != nil {
			return nil, err
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 {
		return nil, errors.New("PostgreSQL does not run as root: give --owner USER (for example postgres)")
	}
	if os.Geteuid() != 0 && uid != os.Geteuid() {
		return nil, fmt.Errorf("--owner %s: only root can run the server as another user", u.Username)
	}
	return &osUser{name: u.Username, uid: uid, gid: gid}, nil
}

type walGap struct{ first, detail string }

// missingWAL is the WAL the archive lacks between meta's start and where
// the archive must reach along the path recovery follows (the newest
// timeline descending from the backup's), as status judges it.
func missingWAL(ctx context.Context, repo *storage.Repository, meta *basebackup.Meta) ([]walGap, error) {
	segSize := meta.WALSegmentSize
	start, err1 := replication.ParseLSN(meta.StartLSN)
	stop, err2 := replication.ParseLSN(meta.StopLSN)
	if segSize == 0 || err1 != nil || err2 != nil {
		return nil, nil
	}
	first := uint64(start) / segSize
	if meta.WAL == basebackup.WALInclude && stop > 0 {
		first = uint64(stop-1)/segSize + 1
	}
	ix, err := archive.LoadFrom(ctx, repo, segSize, first)
	if err != nil {
		return nil, fmt.Errorf("read the archive: %w", err)
	}
	g := ix.Graph
	path := g.Path(g.NewestFrom(max(meta.Timeline, 1), start))
	reach, err := ix.Target(ctx, repo, path)
	if err != nil {
		return nil, fmt.Errorf("read the archive: %w", err)
	}
	to := reach.Seg
	if stop > 0 && (!reach.Found || uint64(stop-1)/segSize > to) {
		to, reach.Found = uint64(stop-1)/segSize, true
	}
	if !reach.Found || to < first {
		return nil, nil
	}
	var out []walGap
	for _, gap := range ix.Gaps(path, first, to, 10) {
		f, _ := gap.Names(segSize)
		out = append(out, walGap{first: f, detail: gap.Describe(segSize) + " missing"})
	}
	return out, nil
}

// Line is the report in one line.
func (r *Report) Line() string {
	var b strings.Builder
	if r.OK {
		b.WriteString("drill ok: ")
	} else {
		b.WriteString("drill FAILED: ")
		for i, p := range r.Problems {
			if i == 3 {
				fmt.Fprintf(&b, "(and %d more); ", len(r.Problems)-3)
				break
			}
			b.WriteString(p.String() + "; ")
		}
	}
	fmt.Fprintf(&b, "backup %s (PostgreSQL %s) restored in %.1fs", r.Backup, r.ServerVersion, r.RestoreSeconds)
	if r.RecoverySeconds > 0 {
		fmt.Fprintf(&b, ", recovered in %.1fs", r.RecoverySeconds)
		if r.ReplayedTo != "" {
			fmt.Fprintf(&b, " (replayed %s of WAL to %s)", mib(r.WALReplayedBytes), r.ReplayedTo)
		}
	}
	if r.OK || r.ReplayedTo != "" {
		fmt.Fprintf(&b, ", usable after %.1fs", r.RTOSeconds)
	}
	switch {
	case r.Amcheck.Ran:
		fmt.Fprintf(&b, "; amcheck: %d databases, %d indexes, %d tables", r.Amcheck.Databases, r.Amcheck.Indexes, r.Amcheck.Tables)
	case r.Amcheck.Skipped != "":
		fmt.Fprintf(&b, "; amcheck skipped (%s)", r.Amcheck.Skipped)
	}
	if r.CheckQueries > 0 {
		fmt.Fprintf(&b, "; check-sql: %d queries", r.CheckQueries)
	}
	if r.Kept {
		fmt.Fprintf(&b, "; kept in %s", r.Scratch)
	}
	return b.String()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// Gauges are the drill's own metrics, written to --metrics-file after the
// common ones of every scheduled run (monitor.RecordRun).
func (r *Report) Gauges() []monitor.Gauge {
	return []monitor.Gauge{
		{Name: "walkeeper_drill_restore_seconds", Help: "Time the last drill took to restore its backup.", Value: r.RestoreSeconds},
		{Name: "walkeeper_drill_recovery_seconds", Help: "Time the last drill's server took from start to usable (recovery).", Value: r.RecoverySeconds},
		{Name: "walkeeper_drill_rto_seconds", Help: "Time from the start of the last drill to a usable server: restore plus recovery.", Value: r.RTOSeconds},
		{Name: "walkeeper_drill_wal_replayed_bytes", Help: "WAL the last drill replayed from the backup's start.", Value: float64(r.WALReplayedBytes)},
		{Name: "walkeeper_drill_problems", Help: "Problems the last drill found.", Value: float64(len(r.Problems))},
	}
}

// MetricNames lists the metrics of Gauges.
func MetricNames() []string {
	var out []string
	for _, g := range (&Report{}).Gauges() {
		out = append(out, g.Name)
	}
	return out
}
