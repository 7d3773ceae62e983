package monitor

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/internal/units"
	"github.com/walkeeper/walkeeper/storage"
)

// Level is the outcome of one doctor check.
type Level string

// Check outcomes. Only LevelFail makes doctor exit non-zero; LevelSkip means
// the check could not apply (no --dsn, no --repo, no connection, or an S3
// repository for a local-disk check).
const (
	LevelOK   Level = "OK"
	LevelWarn Level = "WARN"
	LevelFail Level = "FAIL"
	LevelSkip Level = "SKIP"
)

// CheckResult is one line of doctor's report.
type CheckResult struct {
	Check  string `json:"check"`
	Status Level  `json:"status"`
	Detail string `json:"detail"`
	// Hint says what to do; set for WARN and FAIL.
	Hint string `json:"hint,omitempty"`
}

// DoctorOptions configures RunDoctor. At least one of DSN and Repo is set.
type DoctorOptions struct {
	DSN string
	// Repo is nil when no repository was given.
	Repo *storage.Repository
	// LocalPath is the directory of a local repository ("" for S3).
	LocalPath string
	// Slot is the replication slot (empty: the stream heartbeat's, else
	// DefaultSlot).
	Slot string
	// MaxSlotRetained warns when the slot holds back more WAL than this.
	MaxSlotRetained int64
	// MinFreePercent and MinFreeBytes warn when the local repository's
	// file system has less free space (either one; zero disables it).
	MinFreePercent float64
	MinFreeBytes   int64
	// Timeout bounds connecting and each query or S3 call.
	Timeout time.Duration
}

// doctorCheck is one named check. needs says what it cannot run without.
type doctorCheck struct {
	name  string
	needs need
	run   func(*doctor, context.Context) CheckResult
}

type need int

const (
	needNothing need = iota
	needServer
	needRepo
)

// doctorChecks is the report's order: server settings, access, the slot,
// then the repository.
var doctorChecks = []doctorCheck{
	{"connect", needNothing, (*doctor).connect},
	{"server_version", needServer, (*doctor).serverVersion},
	{"wal_level", needServer, (*doctor).walLevel},
	{"max_wal_senders", needServer, (*doctor).maxWALSenders},
	{"max_replication_slots", needServer, (*doctor).maxReplicationSlots},
	{"replication_connection", needServer, (*doctor).replicationConnection},
	{"replication_role", needServer, (*doctor).replicationRole},
	{"slot", needServer, (*doctor).slotHealth},
	{"max_slot_wal_keep_size", needServer, (*doctor).maxSlotWALKeepSize},
	{"archive_command", needServer, (*doctor).archiveCommand},
	{"summarize_wal", needServer, (*doctor).summarizeWAL},
	{"repository_identity", needRepo, (*doctor).repositoryIdentity},
	{"repository_access", needRepo, (*doctor).repositoryAccess},
	{"repository_locks", needRepo, (*doctor).repositoryLocks},
	{"free_space", needRepo, (*doctor).freeSpace},
}

// CheckNames lists doctor's checks in report order.
func CheckNames() []string {
	names := make([]string, len(doctorChecks))
	for i, c := range doctorChecks {
		names[i] = c.name
	}
	return names
}

type doctor struct {
	opts DoctorOptions
	sess *sqlSession // nil without a connection
	srv  ServerStatus
	// The role doctor connected as.
	user, clientAddr        string
	superuser, replRole     bool
	slotName, slotSource    string
	replConnErr             error
	replConnTried, roleRead bool
}

// RunDoctor runs every check and returns one result per check, in order.
// It fails only if ctx ends; a failing check is a result.
func RunDoctor(ctx context.Context, opts DoctorOptions) ([]CheckResult, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultQueryTimeout
	}
	d := &doctor{opts: opts}
	defer func() {
		if d.sess != nil {
			d.sess.close()
		}
	}()
	var streams []storage.StreamStatus
	if opts.Repo != nil {
		sctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		streams, _ = opts.Repo.Streams(sctx) // repository_access reports read errors
		cancel()
	}
	d.slotName, d.slotSource = pickSlot(opts.Slot, streams, time.Now())
	var out []CheckResult
	for _, c := range doctorChecks {
		var r CheckResult
		switch {
		case c.needs == needServer && opts.DSN == "":
			r = checkSkip("no --dsn given")
		case c.needs == needServer && d.sess == nil:
			r = checkSkip("no connection to the server (see connect)")
		case c.needs == needRepo && opts.Repo == nil:
			r = checkSkip("no --repo given")
		default:
			r = c.run(d, ctx)
		}
		if err := ctx.Err(); err != nil {
			return out, err
		}
		r.Check = c.name
		out = append(out, r)
	}
	return out, nil
}

func checkOK(format string, a ...any) CheckResult {
	return CheckResult{Status: LevelOK, Detail: fmt.Sprintf(format, a...)}
}

func checkSkip(detail string) CheckResult { return CheckResult{Status: LevelSkip, Detail: detail} }

func checkWarn(detail, hint string) CheckResult {
	return CheckResult{Status: LevelWarn, Detail: oneLine(detail), Hint: hint}
}

func checkFail(detail, hint string) CheckResult {
	return CheckResult{Status: LevelFail, Detail: oneLine(detail), Hint: hint}
}

// oneLine joins the lines of a multi-line error message (pgconn reports
// one line per address tried).
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

// connect opens the SQL session the server checks share.
func (d *doctor) connect(ctx context.Context) CheckResult {
	if d.opts.DSN == "" {
		return checkSkip("no --dsn given: server checks skipped")
	}
	sess, err := openSQL(ctx, d.opts.DSN, d.opts.Timeout)
	if err != nil {
		return checkFail(err.Error(), "check --dsn (or PGHOST/PGPORT/PGUSER) and that PostgreSQL runs and accepts connections from this host")
	}
	if err := readServer(ctx, sess, &d.srv); err != nil {
		sess.close()
		return checkFail(err.Error(), "check that --dsn points at a PostgreSQL 15 or newer server")
	}
	d.sess = sess
	if row, err := sess.row(ctx, `SELECT current_user, rolsuper, rolreplication, coalesce(host(inet_client_addr()), '')
  FROM pg_roles WHERE rolname = current_user`); err == nil && row != nil {
		d.user, d.superuser, d.replRole, d.clientAddr = row[0].S, row[1].S == "t", row[2].S == "t", row[3].S
		d.roleRead = true
	}
	return checkOK("PostgreSQL %s, %s, timeline %d, at %s", d.srv.Version, d.srv.Role, d.srv.Timeline, d.srv.CurrentLSN)
}

// serverVersion reports the server's version and whether walkeeper is
// tested on its major (docs/compatibility.md).
func (d *doctor) serverVersion(ctx context.Context) CheckResult {
	row, err := d.sess.row(ctx, "SELECT current_setting('server_version'), current_setting('server_version_num')")
	if err != nil {
		return queryFailed(err)
	}
	if len(row) != 2 {
		return queryFailed(errors.New("server version query returned no row"))
	}
	version := row[0].S
	num, err := strconv.Atoi(row[1].S)
	if err != nil {
		return queryFailed(fmt.Errorf("server_version_num = %q is not a number", row[1].S))
	}
	major := num / 10000
	switch replication.SupportOf(major) {
	case replication.Unsupported:
		return checkFail(fmt.Sprintf("PostgreSQL %s is not supported: walkeeper needs PostgreSQL %d or newer", version, replication.MinMajor),
			fmt.Sprintf("upgrade the server to PostgreSQL %d or newer (tested: %s)", replication.MinMajor, replication.TestedList()))
	case replication.Untested:
		return checkWarn(replication.UntestedWarning(version, major),
			"run walkeeper verify and a test restore on this version before relying on it; see docs/compatibility.md")
	}
	return checkOK("PostgreSQL %s: a tested version (walkeeper is tested on %s)", version, replication.TestedList())
}

// setting reads one server setting.
func (d *doctor) setting(ctx context.Context, name string) (string, error) {
	row, err := d.sess.row(ctx, "SELECT current_setting($1)", name)
	if err != nil {
		return "", err
	}
	if row == nil {
		return "", fmt.Errorf("setting %s: no row", name)
	}
	return row[0].S, nil
}

func (d *doctor) intSetting(ctx context.Context, name string) (int, error) {
	v, err := d.setting(ctx, name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("setting %s = %q is not a number", name, v)
	}
	return n, nil
}

func (d *doctor) count(ctx context.Context, sql string, args ...string) (int, error) {
	row, err := d.sess.row(ctx, sql, args...)
	if err != nil {
		return 0, err
	}
	if row == nil {
		return 0, errors.New("count returned no row")
	}
	return strconv.Atoi(row[0].S)
}

func queryFailed(err error) CheckResult {
	return checkFail(err.Error(), "check the connection and the role's privileges")
}

func (d *doctor) walLevel(ctx context.Context) CheckResult {
	v, err := d.setting(ctx, "wal_level")
	if err != nil {
		return queryFailed(err)
	}
	if v == "minimal" {
		return checkFail("wal_level = minimal: the server writes too little WAL to stream, back up or restore",
			"set wal_level = replica and restart PostgreSQL")
	}
	return checkOK("wal_level = %s", v)
}

func (d *doctor) maxWALSenders(ctx context.Context) CheckResult {
	n, err := d.intSetting(ctx, "max_wal_senders")
	if err != nil {
		return queryFailed(err)
	}
	if n == 0 {
		return checkFail("max_wal_senders = 0: the server accepts no replication connection",
			"set max_wal_senders = 10 (wal_level must be replica) and restart PostgreSQL")
	}
	used, err := d.count(ctx, "SELECT count(*) FROM pg_stat_replication")
	if err != nil {
		return queryFailed(err)
	}
	switch free := n - used; {
	case free <= 0:
		return checkFail(fmt.Sprintf("all %d WAL senders are in use", n),
			"raise max_wal_senders and restart PostgreSQL, or stop another replication client")
	case free == 1:
		return checkWarn(fmt.Sprintf("only 1 of %d WAL senders is free: a stream and a backup need one each", n),
			"raise max_wal_senders and restart PostgreSQL")
	default:
		return checkOK("max_wal_senders = %d, %d in use", n, used)
	}
}

func (d *doctor) maxReplicationSlots(ctx context.Context) CheckResult {
	n, err := d.intSetting(ctx, "max_replication_slots")
	if err != nil {
		return queryFailed(err)
	}
	if n == 0 {
		return checkFail("max_replication_slots = 0: walkeeper stream cannot create its slot",
			"set max_replication_slots = 10 and restart PostgreSQL")
	}
	used, err := d.count(ctx, "SELECT count(*) FROM pg_replication_slots")
	if err != nil {
		return queryFailed(err)
	}
	mine, err := d.count(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", d.slotName)
	if err != nil {
		return queryFailed(err)
	}
	if used >= n && mine == 0 {
		return checkFail(fmt.Sprintf("all %d replication slots are in use and slot %q does not exist", n, d.slotName),
			"raise max_replication_slots and restart PostgreSQL, or drop an unused slot (pg_drop_replication_slot)")
	}
	return checkOK("max_replication_slots = %d, %d in use", n, used)
}

// replicationConnection opens a replication connection as walkeeper stream
// and backup do: the check for pg_hba.conf's replication line.
func (d *doctor) replicationConnection(ctx context.Context) CheckResult {
	conn, err := replication.Connect(ctx, d.opts.DSN, "walkeeper doctor", d.opts.Timeout)
	if err == nil {
		ictx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
		var sys replication.System
		sys, err = replication.Identify(ictx, conn)
		cancel()
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn.Close(cctx)
		cancel()
		if err == nil {
			return checkOK("replication connection works (system identifier %s)", sys.SystemID)
		}
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "REPLICATION attribute"):
		return checkFail(msg, fmt.Sprintf("ALTER ROLE %s REPLICATION (as a superuser)", replication.QuoteIdent(d.roleName())))
	case strings.Contains(msg, "WAL sender"):
		return checkFail(msg, "raise max_wal_senders and restart PostgreSQL (see max_wal_senders)")
	case strings.Contains(msg, "pg_hba.conf") || strings.Contains(msg, "28000"):
		return checkFail(msg, "add to pg_hba.conf and reload: "+hbaLine(d.roleName(), d.clientAddr))
	}
	return checkFail(msg, "check --dsn and pg_hba.conf ("+hbaLine(d.roleName(), d.clientAddr)+")")
}

// roleName is the role doctor connected as.
func (d *doctor) roleName() string {
	if d.user != "" {
		return d.user
	}
	if cfg, err := pgconn.ParseConfig(d.opts.DSN); err == nil && cfg.User != "" {
		return cfg.User
	}
	return "<user>"
}

// hbaLine is the pg_hba.conf line that admits role's replication
// connections from addr (the client address the server saw; empty for a
// Unix socket).
func hbaLine(role, addr string) string {
	switch {
	case addr == "":
		return fmt.Sprintf("local replication %s peer", role)
	case strings.Contains(addr, ":"):
		return fmt.Sprintf("host replication %s %s/128 scram-sha-256", role, addr)
	}
	return fmt.Sprintf("host replication %s %s/32 scram-sha-256", role, addr)
}

func (d *doctor) replicationRole(ctx context.Context) CheckResult {
	if !d.roleRead {
		return checkSkip("could not read the role's attributes from pg_roles")
	}
	switch {
	case d.superuser:
		return checkOK("role %q is a superuser (a role with only REPLICATION is enough)", d.user)
	case d.replRole:
		return checkOK("role %q has REPLICATION", d.user)
	}
	return checkFail(fmt.Sprintf("role %q has neither REPLICATION nor SUPERUSER: it cannot stream or back up", d.user),
		fmt.Sprintf("ALTER ROLE %s REPLICATION (as a superuser), or use a role that has it", replication.QuoteIdent(d.user)))
}

func (d *doctor) slotHealth(ctx context.Context) CheckResult {
	sl, err := readSlot(ctx, d.sess, d.slotName, &d.srv)
	if err != nil {
		return queryFailed(err)
	}
	name := d.slotName
	switch {
	case !sl.Exists && d.slotSource == "stream":
		return checkWarn(fmt.Sprintf("slot %q, named by the stream heartbeat in the repository, does not exist on this server", name),
			"start walkeeper stream --slot "+name+" (it creates the slot), or check that --dsn is the primary the stream uses")
	case !sl.Exists:
		return checkOK("slot %q does not exist yet: walkeeper stream creates it", name)
	case sl.Type != "physical":
		return checkFail(fmt.Sprintf("slot %q is a %s slot", name, sl.Type), "walkeeper needs a physical slot: choose another --slot")
	case sl.WALStatus == "lost":
		return checkFail(replication.Invalidated(name, sl.InvalidationReason))
	}
	retained := "unknown"
	if sl.LagBytes != nil {
		retained = units.FormatSize(*sl.LagBytes)
		if d.opts.MaxSlotRetained > 0 && *sl.LagBytes > d.opts.MaxSlotRetained {
			return checkWarn(fmt.Sprintf("slot %q holds back %s of WAL (more than %s; wal_status=%s)", name, retained, units.FormatSize(d.opts.MaxSlotRetained), sl.WALStatus),
				"check that walkeeper stream runs and keeps up (walkeeper status)")
		}
	}
	if !sl.Active {
		return checkWarn(fmt.Sprintf("slot %q is not active: no stream is connected, and the server keeps WAL for it (%s so far)", name, retained),
			"start walkeeper stream --slot "+name+", or drop the slot if it is no longer used")
	}
	return checkOK("slot %q is active, restart_lsn %s, holds back %s, wal_status=%s", name, sl.RestartLSN, retained, sl.WALStatus)
}

func (d *doctor) maxSlotWALKeepSize(ctx context.Context) CheckResult {
	v, err := d.setting(ctx, "max_slot_wal_keep_size")
	if err != nil {
		return queryFailed(err)
	}
	if v == "-1" {
		return checkWarn("max_slot_wal_keep_size = -1: a slot whose stream stops keeps WAL without limit and can fill the server's disk",
			"set max_slot_wal_keep_size (e.g. '50GB': more than the WAL written while a stream may be down) and reload; walkeeper status reports a slot that had to be given up")
	}
	return checkOK("max_slot_wal_keep_size = %s", v)
}

func (d *doctor) archiveCommand(ctx context.Context) CheckResult {
	mode, err := d.setting(ctx, "archive_mode")
	if err != nil {
		return queryFailed(err)
	}
	if mode == "off" {
		return checkOK("archive_mode = off (walkeeper stream archives the WAL)")
	}
	lib, _ := d.setting(ctx, "archive_library")
	cmd, cmdErr := d.setting(ctx, "archive_command")
	major, _ := replication.ParseMajor(d.srv.Version)
	return judgeArchiving(major, mode, lib, cmd, cmdErr)
}

// summarizeWAL reports whether the server can take incremental backups
// (backup --incremental): PostgreSQL 17+ with summarize_wal = on. Off is
// not a problem for full backups, so it is reported, never warned about.
func (d *doctor) summarizeWAL(ctx context.Context) CheckResult {
	major, _ := replication.ParseMajor(d.srv.Version)
	if major != 0 && major < 17 {
		return checkSkip(fmt.Sprintf("PostgreSQL %s has no incremental backups (17 and newer)", d.srv.Version))
	}
	v, err := d.setting(ctx, "summarize_wal")
	if err != nil {
		return queryFailed(err)
	}
	if v != "on" {
		return checkOK("summarize_wal = %s: backup --incremental needs it on (ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf()); full backups do not", v)
	}
	keep, _ := d.setting(ctx, "wal_summary_keep_time")
	return checkOK("summarize_wal = on (wal_summary_keep_time = %s): incremental backups can be taken", keep)
}

// judgeArchiving is the archive_command check for a server of major with
// archive_mode on or always. archive_library (15+) wins over
// archive_command on 15; from 16 on the server refuses to archive when
// both are set.
func judgeArchiving(major int, mode, lib, cmd string, cmdErr error) CheckResult {
	cmd = strings.TrimSpace(cmd)
	switch {
	case lib != "" && cmdErr == nil && cmd != "" && major >= 16:
		return checkFail(fmt.Sprintf("archive_library %q and archive_command %q are both set: PostgreSQL %d refuses to archive (the archiver exits with an error) and keeps every WAL segment", lib, cmd, major),
			"keep one of them: for walkeeper wal-push, ALTER SYSTEM RESET archive_library and reload")
	case lib != "" && cmdErr == nil && cmd != "":
		return checkWarn(fmt.Sprintf("archive_library %q is set, so PostgreSQL %d ignores archive_command %q", lib, major, cmd),
			"to archive with walkeeper wal-push, ALTER SYSTEM RESET archive_library and reload")
	case lib != "":
		return checkOK("archive_mode = %s with archive_library %q", mode, lib)
	case cmdErr != nil:
		return checkSkip(fmt.Sprintf("archive_mode = %s, but archive_command is not readable by this role (%v); grant pg_read_all_settings to check it", mode, cmdErr))
	}
	const want = "archive_command = 'walkeeper wal-push %p' (with WALKEEPER_REPO in the server's environment)"
	switch {
	case cmd == "":
		return checkWarn(fmt.Sprintf("archive_mode = %s with an empty archive_command: the server keeps every WAL segment in pg_wal", mode),
			"set "+want+" and reload, or archive_mode = off and restart")
	case !strings.Contains(cmd, "walkeeper") || !strings.Contains(cmd, "wal-push"):
		return checkWarn(fmt.Sprintf("archive_mode = %s and archive_command %q is not walkeeper wal-push", mode, cmd),
			"fine if another archive is intended; to archive into this repository set "+want)
	}
	return checkOK("archive_mode = %s, archive_command %q", mode, cmd)
}

func (d *doctor) repositoryIdentity(ctx context.Context) CheckResult {
	cctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	cfg, err := d.opts.Repo.Config(cctx)
	if errors.Is(err, storage.ErrNotFound) {
		return checkOK("new repository %s: the first stream or backup records the server's identity", d.opts.Repo)
	}
	if err != nil {
		return checkFail(fmt.Sprintf("cannot read %s in %s: %v", storage.ConfigKey, d.opts.Repo, err), d.repoHint())
	}
	if d.sess == nil {
		return checkOK("repository of system %s, PostgreSQL %d (no server to compare with)", cfg.SystemIdentifier, cfg.PGMajorVersion)
	}
	row, err := d.sess.row(ctx, `SELECT system_identifier::text, current_setting('server_version_num')::int / 10000,
  current_setting('wal_segment_size') FROM pg_control_system()`)
	if err != nil || row == nil {
		return queryFailed(fmt.Errorf("read the server's system identifier: %v", err))
	}
	var diffs []string
	if row[0].S != cfg.SystemIdentifier {
		diffs = append(diffs, fmt.Sprintf("system identifier %s, server has %s", cfg.SystemIdentifier, row[0].S))
	}
	if major, _ := strconv.Atoi(row[1].S); cfg.PGMajorVersion != 0 && major != cfg.PGMajorVersion {
		diffs = append(diffs, fmt.Sprintf("PostgreSQL %d, server runs %d", cfg.PGMajorVersion, major))
	}
	if len(diffs) > 0 {
		return checkFail("the repository belongs to another cluster: "+strings.Join(diffs, "; "),
			"use a different --repo for this server, or check that --dsn points at the cluster this repository archives")
	}
	return checkOK("repository belongs to this server (system identifier %s)", cfg.SystemIdentifier)
}

func (d *doctor) repoHint() string {
	if d.opts.LocalPath != "" {
		return "check that the directory exists and that this user may read and write it"
	}
	return "check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE), the bucket's policy (s3:PutObject, GetObject, DeleteObject, ListBucket), --s3-endpoint and --s3-region"
}

// repositoryAccess checks that walkeeper can write where the repository
// lives: for a directory by permissions (nothing is written), for S3 by
// writing, listing, reading back and deleting one probe object under
// locks/.
func (d *doctor) repositoryAccess(ctx context.Context) CheckResult {
	if d.opts.LocalPath != "" {
		dir, exists := existingDir(d.opts.LocalPath)
		if err := syscall.Access(dir, 2|1); err != nil { // W_OK|X_OK
			return checkFail(fmt.Sprintf("%s is not writable by this user: %v", dir, err), d.repoHint())
		}
		if !exists {
			return checkOK("%s does not exist yet; %s is writable, so the first stream or backup creates it", d.opts.LocalPath, dir)
		}
		return checkOK("%s is writable", dir)
	}
	if err := d.s3Probe(ctx); err != nil {
		return checkFail(err.Error(), d.repoHint())
	}
	return checkOK("wrote, listed, read back and deleted a probe object in %s", d.opts.Repo)
}

func (d *doctor) s3Probe(ctx context.Context) error {
	b := d.opts.Repo.Backend()
	var rnd [8]byte
	rand.Read(rnd[:])
	key := storage.LocksPrefix + "doctor-probe-" + hex.EncodeToString(rnd[:])
	host, _ := os.Hostname()
	content := []byte(fmt.Sprintf("walkeeper doctor probe from %s pid %d at %s\n", host, os.Getpid(), time.Now().UTC().Format(time.RFC3339)))
	step := func(what string, fn func(context.Context) error) error {
		sctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
		defer cancel()
		if err := fn(sctx); err != nil {
			return fmt.Errorf("%s %s: %w", what, key, err)
		}
		return nil
	}
	if err := step("write", func(ctx context.Context) error { return b.Put(ctx, key, bytes.NewReader(content)) }); err != nil {
		return err
	}
	// Delete even when reading fails, so the probe leaves nothing behind.
	readErr := step("list", func(ctx context.Context) error {
		found := false
		err := b.List(ctx, key, func(o storage.ObjectInfo) error {
			found = found || o.Key == key
			return nil
		})
		if err == nil && !found {
			err = errors.New("the written object is not listed")
		}
		return err
	})
	if readErr == nil {
		readErr = step("read", func(ctx context.Context) error {
			rc, err := b.Get(ctx, key, 0, -1)
			if err != nil {
				return err
			}
			defer rc.Close()
			got, err := io.ReadAll(io.LimitReader(rc, 1<<20))
			if err == nil && !bytes.Equal(got, content) {
				err = fmt.Errorf("read back %d bytes that differ from the %d written", len(got), len(content))
			}
			return err
		})
	}
	delErr := step("delete", func(ctx context.Context) error { return b.Delete(ctx, key) })
	if readErr != nil {
		return errors.Join(readErr, delErr)
	}
	if delErr != nil {
		return delErr
	}
	return step("check deletion of", func(ctx context.Context) error {
		if _, err := b.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("still there after delete (%v)", err)
		}
		return nil
	})
}

// repositoryLocks checks that the repository's locks keep runs apart: an
// S3-compatible server may ignore conditional writes.
func (d *doctor) repositoryLocks(ctx context.Context) CheckResult {
	if d.opts.LocalPath != "" {
		if _, exists := existingDir(d.opts.LocalPath); !exists {
			return checkOK("a local directory: locks are created by hard link and refreshed under flock")
		}
	}
	sctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	exclusive, detail, err := d.opts.Repo.LocksExclusive(sctx)
	switch {
	case err != nil:
		return checkFail(err.Error(), d.repoHint())
	case !exclusive:
		return checkWarn(detail, "use an S3 server that supports conditional writes (AWS S3, Versity S3 Gateway 1.8); "+
			"until then, never start two backups or two deletes at the same moment")
	}
	return checkOK("%s", detail)
}

// existingDir returns path if it is an existing directory, else its
// nearest existing ancestor.
func existingDir(path string) (dir string, exists bool) {
	dir = filepath.Clean(path)
	for {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			return dir, dir == filepath.Clean(path)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return dir, false
		}
		dir = parent
	}
}

func (d *doctor) freeSpace(ctx context.Context) CheckResult {
	if d.opts.LocalPath == "" {
		return checkSkip("object storage: no local disk to check")
	}
	dir, _ := existingDir(d.opts.LocalPath)
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return checkFail(fmt.Sprintf("statfs %s: %v", dir, err), d.repoHint())
	}
	free := int64(st.Bavail) * st.Bsize
	total := int64(st.Blocks) * st.Bsize
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(free) / float64(total)
	}
	detail := fmt.Sprintf("%s free of %s (%.1f%%) on the file system of %s", units.FormatSize(free), units.FormatSize(total), pct, dir)
	if (d.opts.MinFreePercent > 0 && pct < d.opts.MinFreePercent) || (d.opts.MinFreeBytes > 0 && free < d.opts.MinFreeBytes) {
		return checkWarn(detail+": below the --min-free-space threshold",
			"free space or move the repository: when it fills up the stream stops and the server keeps WAL for the slot")
	}
	return checkOK("%s", detail)
}

// Failures counts the failed checks.
func Failures(results []CheckResult) int {
	n := 0
	for _, r := range results {
		if r.Status == LevelFail {
			n++
		}
	}
	return n
}

// WriteDoctorText prints one line per check (status, name, detail) and the
// hint of each warning or failure on the line below.
func WriteDoctorText(w io.Writer, results []CheckResult) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Status, r.Check, r.Detail)
		if r.Hint != "" {
			fmt.Fprintf(tw, "\t\thint: %s\n", r.Hint)
		}
	}
	return tw.Flush()
}
