package basebackup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// recorded replays a message sequence as a server would send it.
type recorded struct{ msgs []pgproto3.BackendMessage }

func (r *recorded) ReceiveMessage(ctx context.Context) (pgproto3.BackendMessage, error) {
	if len(r.msgs) == 0 {
		return nil, errors.New("connection closed")
	}
	m := r.msgs[0]
	r.msgs = r.msgs[1:]
	return m, nil
}

// events records what the decoder handed to the sink.
type events struct {
	log      []string
	notices  []string
	failData error
}

func (e *events) archive(name, path string) error {
	e.log = append(e.log, "archive "+name+" "+path)
	return nil
}
func (e *events) begin(res result) {
	e.log = append(e.log, fmt.Sprintf("begin %s %d", res.startLSN, len(res.tablespaces)))
}
func (e *events) manifest() error { e.log = append(e.log, "manifest"); return nil }
func (e *events) data(p []byte) error {
	if e.failData != nil {
		return e.failData
	}
	e.log = append(e.log, "data "+string(p))
	return nil
}
func (e *events) progress(n int64)       { e.log = append(e.log, fmt.Sprint("progress ", n)) }
func (e *events) notice(sev, msg string) { e.notices = append(e.notices, sev+": "+msg) }

func row(vals ...string) *pgproto3.DataRow {
	r := &pgproto3.DataRow{}
	for _, v := range vals {
		if v == "NULL" {
			r.Values = append(r.Values, nil)
		} else {
			r.Values = append(r.Values, []byte(v))
		}
	}
	return r
}

func resultSet(rows ...*pgproto3.DataRow) []pgproto3.BackendMessage {
	out := []pgproto3.BackendMessage{&pgproto3.RowDescription{}}
	for _, r := range rows {
		out = append(out, r)
	}
	return append(out, &pgproto3.CommandComplete{CommandTag: []byte("SELECT")})
}

func tagged(typ byte, body ...byte) *pgproto3.CopyData {
	return &pgproto3.CopyData{Data: append([]byte{typ}, body...)}
}

func progressMsg(n int64) *pgproto3.CopyData {
	b := binary.BigEndian.AppendUint64(nil, uint64(n))
	return tagged('p', b...)
}

func seq(parts ...[]pgproto3.BackendMessage) []pgproto3.BackendMessage {
	var out []pgproto3.BackendMessage
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func one(m ...pgproto3.BackendMessage) []pgproto3.BackendMessage { return m }

func decode(t *testing.T, major int, msgs []pgproto3.BackendMessage, s *events) (result, error) {
	t.Helper()
	d := &decoder{rx: &recorded{msgs: msgs}, sink: s, major: major, waitFirst: time.Second, idle: time.Second}
	return d.run(context.Background(), true)
}

func TestDecodeTagged15(t *testing.T) {
	msgs := seq(
		resultSet(row("0/2000028", "1")),
		resultSet(row("16384", "/srv/ts1", "120"), row("NULL", "NULL", "9000")),
		one(&pgproto3.CopyOutResponse{},
			tagged('n', []byte("16384.tar\x00/srv/ts1\x00")...),
			tagged('d', []byte("ts-bytes")...),
			progressMsg(8),
			&pgproto3.NoticeResponse{Severity: "WARNING", Message: `checksum verification failed in file "./base/5/1259", block 3: calculated 1 but expected 2`},
			tagged('n', []byte("base.tar\x00\x00")...),
			tagged('d', []byte("base-1")...),
			tagged('d', []byte("base-2")...),
			progressMsg(20),
			tagged('m'),
			tagged('d', []byte("{manifest}")...),
			&pgproto3.CopyDone{}),
		resultSet(row("0/2000100", "1")),
		one(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "XX001", Message: "checksum verification failure during base backup"},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}),
	)
	s := &events{}
	res, err := decode(t, 15, msgs, s)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"begin 0/2000028 2", "archive 16384.tar /srv/ts1", "data ts-bytes", "progress 8", "archive base.tar ",
		"data base-1", "data base-2", "progress 20", "manifest", "data {manifest}"}
	if strings.Join(s.log, "|") != strings.Join(want, "|") {
		t.Errorf("events\n got %q\nwant %q", s.log, want)
	}
	if res.startLSN != 0x2000028 || res.stopLSN != 0x2000100 || res.startTLI != 1 || res.stopTLI != 1 {
		t.Errorf("positions %+v", res)
	}
	if len(res.tablespaces) != 2 || res.tablespaces[0].Archive != "16384.tar" || res.tablespaces[1].Archive != "base.tar" ||
		res.tablespaces[1].OID != "" || res.tablespaces[1].SizeKB != 9000 {
		t.Errorf("tablespaces %+v", res.tablespaces)
	}
	if res.checksumError == nil {
		t.Error("the late checksum error was not recorded")
	}
	f, ok := parseChecksumNotice(strings.TrimPrefix(s.notices[0], "WARNING: "))
	if !ok || f.File != "./base/5/1259" || f.Block != 3 {
		t.Errorf("checksum notice parsed as %+v, %v", f, ok)
	}
}

func TestDecodePerTablespace13(t *testing.T) {
	msgs := seq(
		resultSet(row("0/3000028", "2")),
		resultSet(row("16400", "/srv/ts2", "10"), row("NULL", "NULL", "50")),
		one(&pgproto3.CopyOutResponse{}, &pgproto3.CopyData{Data: []byte("ts2")}, &pgproto3.CopyDone{},
			&pgproto3.CopyOutResponse{}, &pgproto3.CopyData{Data: []byte("base")}, &pgproto3.CopyData{Data: []byte("more")}, &pgproto3.CopyDone{},
			&pgproto3.CopyOutResponse{}, &pgproto3.CopyData{Data: []byte("{m}")}, &pgproto3.CopyDone{}),
		resultSet(row("0/3000200", "2")),
		one(&pgproto3.CommandComplete{CommandTag: []byte("BASE_BACKUP")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
	)
	s := &events{}
	res, err := decode(t, 14, msgs, s)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"begin 0/3000028 2", "archive 16400.tar /srv/ts2", "data ts2", "progress 3", "archive base.tar ", "data base",
		"progress 7", "data more", "progress 11", "manifest", "data {m}"}
	if strings.Join(s.log, "|") != strings.Join(want, "|") {
		t.Errorf("events\n got %q\nwant %q", s.log, want)
	}
	if res.startTLI != 2 || res.stopLSN != 0x3000200 || res.checksumError != nil {
		t.Errorf("result %+v", res)
	}
}

func TestDecodeErrors(t *testing.T) {
	start := seq(resultSet(row("0/2000028", "1")), resultSet(row("NULL", "NULL", "1")))
	for _, tc := range []struct {
		name string
		msgs []pgproto3.BackendMessage
		sink *events
		want string
	}{
		{"server error mid-stream", seq(start, one(&pgproto3.CopyOutResponse{}, tagged('n', []byte("base.tar\x00\x00")...),
			&pgproto3.ErrorResponse{Severity: "ERROR", Code: "58P01", Message: "could not open file"})), &events{}, "could not open file"},
		{"connection lost", seq(start, one(&pgproto3.CopyOutResponse{}, tagged('d', 'x'))), &events{}, "connection closed"},
		{"unknown tag", seq(start, one(&pgproto3.CopyOutResponse{}, tagged('z'))), &events{}, "unknown CopyData type"},
		{"bad archive message", seq(start, one(&pgproto3.CopyOutResponse{}, tagged('n', 'b'))), &events{}, "malformed new-archive"},
		{"storage fails", seq(start, one(&pgproto3.CopyOutResponse{}, tagged('n', []byte("base.tar\x00\x00")...), tagged('d', 'x'))),
			&events{failData: errors.New("disk full")}, "disk full"},
		{"refused at start", one(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42501", Message: "permission denied to start WAL sender"}),
			&events{}, "REPLICATION attribute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decode(t, 15, tc.msgs, tc.sink)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
