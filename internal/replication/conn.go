package replication

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ValidateSlotName checks a slot name the way PostgreSQL does.
func ValidateSlotName(name string) error {
	if !slotNameRE.MatchString(name) {
		return fmt.Errorf("invalid slot name %q: use 1 to 63 lower-case letters, digits and underscores", name)
	}
	return nil
}

// ErrPermanent marks errors that reconnecting cannot fix: bad credentials,
// missing privileges, a slot of the wrong kind, a repository of another
// cluster.
var ErrPermanent = errors.New("permanent")

// ErrWALRemoved marks the server's "requested WAL segment ... has already
// been removed": the WAL asked for is gone from the server.
var ErrWALRemoved = errors.New("the server already removed WAL that is needed")

type permanent struct{ err error }

func (p permanent) Error() string   { return p.err.Error() }
func (p permanent) Unwrap() []error { return []error{p.err, ErrPermanent} }

// Permanent marks err as permanent.
func Permanent(err error) error { return permanent{err} }

// Permanentf formats a permanent error.
func Permanentf(f string, a ...any) error { return permanent{fmt.Errorf(f, a...)} }

// Connect opens a physical replication connection (replication=true) with
// the given application_name. timeout bounds connecting.
func Connect(ctx context.Context, dsn, appName string, timeout time.Duration) (*pgconn.PgConn, error) {
	return connect(ctx, dsn, appName, timeout, true)
}

// ConnectSQL opens an ordinary connection to the same server, in the
// database the DSN names (postgres when it names none).
func ConnectSQL(ctx context.Context, dsn, appName string, timeout time.Duration) (*pgconn.PgConn, error) {
	return connect(ctx, dsn, appName, timeout, false)
}

func connect(ctx context.Context, dsn, appName string, timeout time.Duration, repl bool) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, Permanentf("invalid --dsn: %v", Redact(err))
	}
	delete(cfg.RuntimeParams, "replication")
	if repl {
		cfg.RuntimeParams["replication"] = "true"
		sessionAttrsFromStartup(cfg)
		cfg.BuildFrontend = bufferedFrontend
	} else if cfg.Database == "" {
		cfg.Database = "postgres"
	}
	cfg.RuntimeParams["application_name"] = appName
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > timeout {
		cfg.ConnectTimeout = timeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, Classify(err, "")
	}
	return conn, nil
}

// readBuffer is how much a replication connection reads from its socket at
// once. pgproto3 reads with an 8 kB buffer, so every CopyData message of a
// BASE_BACKUP (32 kB of tar) or of WAL (up to 128 kB) took several read
// calls; with the buffer a read takes whatever the socket holds, up to
// this. Memory: one buffer per replication connection.
const readBuffer = 256 << 10

// bufferedFrontend is pgproto3's frontend reading through a readBuffer.
func bufferedFrontend(r io.Reader, w io.Writer) *pgproto3.Frontend {
	return pgproto3.NewFrontend(bufio.NewReaderSize(r, readBuffer), w)
}

// System describes the server at the other end of a replication connection.
type System struct {
	SystemID      string
	Timeline      uint32
	XLogPos       LSN
	SegSize       uint64
	Major         int
	ServerVersion string
	// InRecovery is true on a standby.
	InRecovery bool
}

// Identify runs IDENTIFY_SYSTEM and SHOW wal_segment_size and reads the
// version the server reported. Servers older than MinMajor are refused;
// callers log WarnUntested for newer ones.
func Identify(ctx context.Context, conn *pgconn.PgConn) (System, error) {
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return System{}, Classify(err, "")
	}
	out := System{SystemID: sys.SystemID, Timeline: uint32(sys.Timeline), XLogPos: sys.XLogPos}
	res, err := conn.Exec(ctx, "SHOW wal_segment_size").ReadAll()
	if err != nil {
		return System{}, Classify(err, "")
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return System{}, errors.New("SHOW wal_segment_size returned no row")
	}
	if out.SegSize, err = parseGUCSize(string(res[0].Rows[0][0])); err != nil {
		return System{}, err
	}
	out.ServerVersion = conn.ParameterStatus("server_version")
	if out.Major, err = ParseMajor(out.ServerVersion); err != nil {
		return System{}, err
	}
	if err := CheckVersion(out.ServerVersion, out.Major); err != nil {
		return System{}, err
	}
	out.InRecovery = conn.ParameterStatus("in_hot_standby") == "on"
	return out, nil
}

// parseGUCSize parses a size as SHOW prints it ("16MB", "1GB").
func parseGUCSize(v string) (uint64, error) {
	mult := uint64(1)
	for _, u := range []struct {
		s string
		m uint64
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(v, u.s) {
			v, mult = strings.TrimSuffix(v, u.s), u.m
			break
		}
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cannot parse wal_segment_size %q", v)
	}
	return n * mult, nil
}

// QuoteIdent quotes an identifier (a slot name) for a replication command.
func QuoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// QuoteLiteral quotes a string literal for a replication command.
func QuoteLiteral(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// Classify turns server and network errors into one-line errors with a
// hint, marking those that reconnecting cannot fix as permanent. slot, when
// not empty, names the slot in slot-related messages.
func Classify(err error, slot string) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "28P01":
			return Permanentf("password authentication failed: check the password in --dsn, PGPASSWORD or the pgpass file")
		case pgErr.Code == "28000" && strings.Contains(pgErr.Message, "pg_hba.conf"):
			return Permanentf("the server refused the connection (%s): add a 'host replication ROLE ADDRESS scram-sha-256' line to pg_hba.conf and reload", pgErr.Message)
		case pgErr.Code == "42501" || strings.Contains(pgErr.Message, "permission to start WAL sender") ||
			strings.Contains(pgErr.Message, "must be superuser or replication role"):
			return Permanentf("the role lacks the REPLICATION attribute (%s): ALTER ROLE ... REPLICATION, or connect as a role that has it", pgErr.Message)
		case pgErr.Code == "53300":
			return fmt.Errorf("the server has no free connection or WAL sender (%s): raise max_wal_senders (or max_connections), or stop another client", pgErr.Message)
		case pgErr.Code == "55006" || strings.Contains(pgErr.Message, "is active for PID"):
			return fmt.Errorf("replication slot %q is in use by another process (%s)", slot, pgErr.Message)
		case strings.Contains(pgErr.Message, "logical replication slot"):
			return Permanentf("replication slot %q is a logical slot; walkeeper needs a physical slot: choose another --slot", slot)
		case strings.Contains(pgErr.Message, "can no longer access replication slot"):
			// PostgreSQL 18 refuses an invalidated slot at START_REPLICATION;
			// older servers start streaming and fail at the missing WAL.
			reason := ""
			if m := invalidatedDetailRE.FindStringSubmatch(pgErr.Detail); m != nil {
				reason = m[1]
			}
			what, hint := Invalidated(slot, reason)
			return Permanentf("%s: %s", what, hint)
		case strings.Contains(pgErr.Message, "has already been removed"):
			return Permanent(fmt.Errorf("%w (%s): the archive has a gap; take a new base backup", ErrWALRemoved, pgErr.Message))
		}
		return fmt.Errorf("server: %s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
	}
	var netErr *net.OpError
	if errors.As(err, &netErr) || strings.Contains(err.Error(), "dial") {
		return fmt.Errorf("cannot reach PostgreSQL: %v: check --dsn and that the server is running", Redact(err))
	}
	return Redact(err)
}

var passwordRE = regexp.MustCompile(`(?i)(password=|://[^:/@]*:)[^ @]*`)

// Redact removes passwords from an error message.
func Redact(err error) error {
	msg := err.Error()
	clean := passwordRE.ReplaceAllString(msg, "${1}****")
	if clean == msg {
		return err
	}
	return errors.New(clean)
}

// Slot is what READ_REPLICATION_SLOT says about a slot.
type Slot struct {
	Exists     bool
	Type       string // "physical" or "logical"
	RestartLSN LSN    // 0 when not reserved (or invalidated)
	RestartTLI uint32
}

// ReadSlot runs READ_REPLICATION_SLOT (PostgreSQL 15+).
func ReadSlot(ctx context.Context, conn *pgconn.PgConn, name string) (Slot, error) {
	res, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+QuoteIdent(name)).ReadAll()
	if err != nil {
		return Slot{}, Classify(err, name)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return Slot{}, errors.New("unexpected READ_REPLICATION_SLOT result")
	}
	row := res[0].Rows[0]
	if row[0] == nil {
		return Slot{}, nil
	}
	s := Slot{Exists: true, Type: string(row[0])}
	if row[1] != nil {
		if s.RestartLSN, err = ParseLSN(string(row[1])); err != nil {
			return Slot{}, err
		}
	}
	if row[2] != nil {
		tli, _ := strconv.ParseUint(string(row[2]), 10, 32)
		s.RestartTLI = uint32(tli)
	}
	return s, nil
}

// EnsurePhysicalSlot returns the physical slot name, creating it with
// reserved WAL (CREATE_REPLICATION_SLOT ... PHYSICAL RESERVE_WAL) when it is
// missing and create is true. A logical slot of that name is refused.
func EnsurePhysicalSlot(ctx context.Context, conn *pgconn.PgConn, name string, create bool) (Slot, bool, error) {
	s, err := ReadSlot(ctx, conn, name)
	if err != nil {
		return Slot{}, false, err
	}
	created := false
	if !s.Exists {
		if !create {
			return Slot{}, false, Permanentf("replication slot %q does not exist: create it (SELECT pg_create_physical_replication_slot('%s', true)) or drop --no-create-slot", name, name)
		}
		_, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+QuoteIdent(name)+" PHYSICAL RESERVE_WAL").ReadAll()
		var pgErr *pgconn.PgError
		if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42710") { // 42710: created meanwhile
			return Slot{}, false, fmt.Errorf("create replication slot %q: %w", name, Classify(err, name))
		}
		created = err == nil
		if s, err = ReadSlot(ctx, conn, name); err != nil {
			return Slot{}, false, err
		}
	}
	if s.Type != "physical" {
		return Slot{}, false, Permanentf("replication slot %q is a %s slot; walkeeper needs a physical slot: choose another --slot", name, s.Type)
	}
	return s, created, nil
}
