package basebackup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walkeeper/walkeeper/internal/replication"
)

// receiver is where protocol messages come from: a *pgconn.PgConn, or a
// recorded sequence in tests.
type receiver interface {
	ReceiveMessage(ctx context.Context) (pgproto3.BackendMessage, error)
}

// sink receives the decoded stream.
type sink interface {
	// begin reports the start position and the tablespace list, before any
	// archive.
	begin(res result)
	// archive starts a new tar archive (closing the previous one): name is
	// "base.tar" or "<oid>.tar"; tsPath is the tablespace's location ("" for
	// the main data directory).
	archive(name, tsPath string) error
	// manifest starts the backup_manifest (closing the last archive).
	manifest() error
	// data appends to the current archive or manifest; p is only valid
	// during the call.
	data(p []byte) error
	// progress reports the bytes the server has sent so far.
	progress(done int64)
	// notice reports a server notice or warning.
	notice(severity, message string)
}

// Tablespace is one row of the server's tablespace list.
type Tablespace struct {
	OID      string `json:"oid,omitempty"` // "" for the main data directory
	Location string `json:"location,omitempty"`
	// SizeKB is the server's size estimate (with PROGRESS).
	SizeKB int64 `json:"-"`
	// Archive is the name of the tablespace's archive.
	Archive string `json:"archive"`
	// Chunks are the objects (by name) the archive is stored in, in order
	// (archive_layout 2; empty before).
	Chunks []string `json:"chunks,omitempty"`
}

// result is what the server reports around the archives.
type result struct {
	startLSN, stopLSN replication.LSN
	startTLI, stopTLI uint32
	tablespaces       []Tablespace
	// checksumError is set when the server ended the backup with "checksum
	// verification failure during base backup" after sending everything.
	checksumError error
}

// decoder reads a BASE_BACKUP response. waitFirst bounds the wait for the
// first message (the server runs a checkpoint first, which may be spread
// over minutes); idle bounds every later wait.
type decoder struct {
	rx        receiver
	sink      sink
	major     int
	waitFirst time.Duration
	idle      time.Duration
	got       bool
}

func (d *decoder) next(ctx context.Context) (pgproto3.BackendMessage, error) {
	for {
		timeout := d.idle
		if !d.got {
			timeout = d.waitFirst
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		msg, err := d.rx.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && pgconn.Timeout(err) {
				return nil, fmt.Errorf("the server sent nothing for %s during the backup: %w", timeout, err)
			}
			return nil, replication.Classify(err, "")
		}
		d.got = true
		switch m := msg.(type) {
		case *pgproto3.NoticeResponse:
			d.sink.notice(m.Severity, m.Message)
			continue
		case *pgproto3.ParameterStatus:
			continue
		}
		return msg, nil
	}
}

// run decodes the whole response: the start position, the tablespace list,
// the archives and manifest (one tagged CopyOut on PostgreSQL 15+, one
// CopyOut per tablespace plus one for the manifest before), the stop
// position, and ReadyForQuery.
func (d *decoder) run(ctx context.Context, wantManifest bool) (result, error) {
	var res result
	rows, err := d.resultSet(ctx)
	if err != nil {
		return res, err
	}
	if len(rows) != 1 || len(rows[0]) < 2 {
		return res, errors.New("BASE_BACKUP: unexpected start position result")
	}
	if res.startLSN, res.startTLI, err = parsePos(rows[0]); err != nil {
		return res, err
	}
	rows, err = d.resultSet(ctx)
	if err != nil {
		return res, err
	}
	for _, r := range rows {
		if len(r) < 3 {
			return res, errors.New("BASE_BACKUP: unexpected tablespace list")
		}
		ts := Tablespace{OID: string(r[0]), Location: string(r[1]), Archive: "base.tar"}
		if r[0] != nil {
			ts.Archive = string(r[0]) + ".tar"
		}
		if r[2] != nil {
			ts.SizeKB, _ = strconv.ParseInt(string(r[2]), 10, 64)
		}
		res.tablespaces = append(res.tablespaces, ts)
	}
	d.sink.begin(res)
	if d.major >= 15 {
		err = d.copyTagged(ctx)
	} else {
		err = d.copyPerTablespace(ctx, res.tablespaces, wantManifest)
	}
	if err != nil {
		return res, err
	}
	rows, err = d.resultSet(ctx)
	if err != nil {
		return res, err
	}
	if len(rows) != 1 || len(rows[0]) < 2 {
		return res, errors.New("BASE_BACKUP: unexpected stop position result")
	}
	if res.stopLSN, res.stopTLI, err = parsePos(rows[0]); err != nil {
		return res, err
	}
	// CommandComplete for BASE_BACKUP (or a late error), then ReadyForQuery.
	for {
		msg, err := d.next(ctx)
		if err != nil {
			return res, err
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return res, nil
		case *pgproto3.ErrorResponse:
			pgErr := pgconn.ErrorResponseToPgError(m)
			if pgErr.Code == "XX001" { // data_corrupted: page checksum failures
				res.checksumError = pgErr
				continue
			}
			return res, replication.Classify(pgErr, "")
		}
	}
}

// resultSet reads one result set (RowDescription, DataRows, CommandComplete).
func (d *decoder) resultSet(ctx context.Context) ([][][]byte, error) {
	var rows [][][]byte
	for {
		msg, err := d.next(ctx)
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
		case *pgproto3.DataRow:
			row := make([][]byte, len(m.Values))
			for i, v := range m.Values {
				if v != nil {
					row[i] = append([]byte{}, v...)
				}
			}
			rows = append(rows, row)
		case *pgproto3.CommandComplete:
			return rows, nil
		case *pgproto3.ErrorResponse:
			return nil, replication.Classify(pgconn.ErrorResponseToPgError(m), "")
		default:
			return nil, fmt.Errorf("BASE_BACKUP: unexpected %T while reading a result", msg)
		}
	}
}

// copyTagged decodes PostgreSQL 15's single CopyOut stream whose CopyData
// messages start with a type byte: 'n' new archive (name, tablespace path),
// 'd' data, 'p' progress (int64), 'm' manifest follows.
func (d *decoder) copyTagged(ctx context.Context) error {
	msg, err := d.next(ctx)
	if err != nil {
		return err
	}
	if err := expectCopyOut(msg); err != nil {
		return err
	}
	for {
		msg, err := d.next(ctx)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				return errors.New("BASE_BACKUP: empty CopyData message")
			}
			body := m.Data[1:]
			switch m.Data[0] {
			case 'n':
				name, rest, ok := cstring(body)
				path, _, ok2 := cstring(rest)
				if !ok || !ok2 {
					return errors.New("BASE_BACKUP: malformed new-archive message")
				}
				if err := d.sink.archive(name, path); err != nil {
					return err
				}
			case 'd':
				if err := d.sink.data(body); err != nil {
					return err
				}
			case 'p':
				if len(body) != 8 {
					return errors.New("BASE_BACKUP: malformed progress message")
				}
				d.sink.progress(int64(binary.BigEndian.Uint64(body)))
			case 'm':
				if err := d.sink.manifest(); err != nil {
					return err
				}
			default:
				return fmt.Errorf("BASE_BACKUP: unknown CopyData type %q", m.Data[0])
			}
		case *pgproto3.CopyDone:
			return nil
		case *pgproto3.ErrorResponse:
			return replication.Classify(pgconn.ErrorResponseToPgError(m), "")
		default:
			return fmt.Errorf("BASE_BACKUP: unexpected %T in the archive stream", msg)
		}
	}
}

// copyPerTablespace decodes PostgreSQL 13 and 14: one CopyOut of raw tar
// data per tablespace, in the order of the tablespace list, then one for the
// manifest when it was requested.
func (d *decoder) copyPerTablespace(ctx context.Context, tss []Tablespace, wantManifest bool) error {
	var sent int64
	streams := len(tss)
	if wantManifest {
		streams++
	}
	for i := 0; i < streams; i++ {
		msg, err := d.next(ctx)
		if err != nil {
			return err
		}
		if err := expectCopyOut(msg); err != nil {
			return err
		}
		if i < len(tss) {
			err = d.sink.archive(tss[i].Archive, tss[i].Location)
		} else {
			err = d.sink.manifest()
		}
		if err != nil {
			return err
		}
		for done := false; !done; {
			msg, err := d.next(ctx)
			if err != nil {
				return err
			}
			switch m := msg.(type) {
			case *pgproto3.CopyData:
				if err := d.sink.data(m.Data); err != nil {
					return err
				}
				if i < len(tss) {
					sent += int64(len(m.Data))
					d.sink.progress(sent)
				}
			case *pgproto3.CopyDone:
				done = true
			case *pgproto3.ErrorResponse:
				return replication.Classify(pgconn.ErrorResponseToPgError(m), "")
			default:
				return fmt.Errorf("BASE_BACKUP: unexpected %T in tablespace stream %d", msg, i)
			}
		}
	}
	return nil
}

func expectCopyOut(msg pgproto3.BackendMessage) error {
	switch m := msg.(type) {
	case *pgproto3.CopyOutResponse:
		return nil
	case *pgproto3.ErrorResponse:
		return replication.Classify(pgconn.ErrorResponseToPgError(m), "")
	}
	return fmt.Errorf("BASE_BACKUP: expected CopyOutResponse, got %T", msg)
}

func cstring(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

func parsePos(row [][]byte) (replication.LSN, uint32, error) {
	lsn, err := replication.ParseLSN(string(row[0]))
	if err != nil {
		return 0, 0, fmt.Errorf("BASE_BACKUP returned %w", err)
	}
	tli, err := strconv.ParseUint(string(row[1]), 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("BASE_BACKUP returned timeline %q", row[1])
	}
	return lsn, uint32(tli), nil
}

// ChecksumFailure is one page whose checksum failed on the server.
type ChecksumFailure struct {
	File  string `json:"file"`
	Block int64  `json:"block"`
}

var checksumNoticeRE = regexp.MustCompile(`checksum verification failed in file "([^"]+)", block (\d+)`)

// parseChecksumNotice extracts the file and block from the server's
// warning for a page checksum failure.
func parseChecksumNotice(msg string) (ChecksumFailure, bool) {
	m := checksumNoticeRE.FindStringSubmatch(msg)
	if m == nil {
		return ChecksumFailure{}, false
	}
	b, _ := strconv.ParseInt(m[2], 10, 64)
	return ChecksumFailure{File: m[1], Block: b}, true
}
