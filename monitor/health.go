package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/internal/units"
)

// Roles a node can report.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"
	RoleUnknown = "unknown" // the database did not answer
)

// NodeState is what one check reads from the database.
type NodeState struct {
	InRecovery bool
	// ReadOnly is default_transaction_read_only as the check's session sees it.
	ReadOnly bool
	Timeline uint32
	// Streaming: a pg_stat_wal_receiver row with status 'streaming'.
	Streaming bool
	// ReceiverStatusHidden: a WAL receiver runs but its status is NULL,
	// which is what a role without pg_read_all_stats sees.
	ReceiverStatusHidden bool
	ReplayPaused         bool
	// LagBytes is pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn() (at
	// least 0); nil on a primary or before anything was received.
	LagBytes *int64
	// LagSeconds is 0 when everything received is replayed, else
	// now() - pg_last_xact_replay_timestamp(); nil on a primary or when no
	// transaction has been replayed since the server started.
	LagSeconds *float64
}

// Role is primary or replica.
func (s NodeState) Role() string {
	if s.InRecovery {
		return RoleReplica
	}
	return RolePrimary
}

// MaxLag is the ?max-lag= limit of /replica: a size in bytes of WAL
// received but not replayed, or a replay delay.
type MaxLag struct {
	Bytes  int64
	Time   time.Duration
	ByTime bool
}

// ParseMaxLag reads "16MB", "1048576" (bytes: PostgreSQL's units, see
// units.ParseSize) or "5s", "500ms", "2m" (a Go duration).
func ParseMaxLag(s string) (MaxLag, error) {
	if b, err := units.ParseSize(s); err == nil {
		return MaxLag{Bytes: b}, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < 0 {
		return MaxLag{}, fmt.Errorf("invalid max-lag %q: use a size (16MB) or a duration (10s)", s)
	}
	return MaxLag{Time: d, ByTime: true}, nil
}

// String is the limit as ParseMaxLag reads it back (bytes as a plain
// number or an exact kB/MB/GB), with no character a URL or HAProxy's config would escape.
func (m MaxLag) String() string {
	if m.ByTime {
		return m.Time.String()
	}
	for _, u := range []struct {
		unit string
		mult int64
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}} {
		if m.Bytes > 0 && m.Bytes%u.mult == 0 {
			return strconv.FormatInt(m.Bytes/u.mult, 10) + u.unit
		}
	}
	return strconv.FormatInt(m.Bytes, 10)
}

// PrimaryVerdict says whether the node takes writes: not in recovery and
// default_transaction_read_only off.
func (s NodeState) PrimaryVerdict() (bool, string) {
	switch {
	case s.InRecovery:
		return false, "in recovery (a standby)"
	case s.ReadOnly:
		return false, "default_transaction_read_only is on"
	}
	return true, "writable primary"
}

// ReplicaVerdict says whether the node serves reads as a replica: in
// recovery, streaming from its upstream, and (with max) not further behind
// than max. A lag that cannot be measured counts as too far behind.
func (s NodeState) ReplicaVerdict(max *MaxLag) (bool, string) {
	switch {
	case !s.InRecovery:
		return false, "not in recovery (a primary)"
	case s.ReceiverStatusHidden:
		return false, "cannot read pg_stat_wal_receiver.status: GRANT pg_monitor to the check's role"
	case !s.Streaming:
		return false, "not streaming (no WAL receiver in state streaming)"
	}
	paused := ""
	if s.ReplayPaused {
		paused = " (replay paused)"
	}
	if max != nil {
		if max.ByTime {
			if s.LagSeconds == nil {
				return false, "replay lag unknown (no transaction replayed since start) with WAL waiting to be replayed" + paused
			}
			if lag := time.Duration(*s.LagSeconds * float64(time.Second)); lag > max.Time {
				return false, fmt.Sprintf("replay lag %s exceeds max-lag %s%s", lag.Round(time.Millisecond), max.Time, paused)
			}
		} else {
			if s.LagBytes == nil {
				return false, "replay lag unknown (nothing received from the primary yet)" + paused
			}
			if *s.LagBytes > max.Bytes {
				return false, fmt.Sprintf("replay lag %d bytes exceeds max-lag %d bytes%s", *s.LagBytes, max.Bytes, paused)
			}
		}
	}
	return true, "streaming replica" + paused
}

// stateQuery reads everything one check needs in one round trip. Functions
// that fail on one kind of node are only reached through CASE on the other.
const stateQuery = `SELECT r,
  current_setting('default_transaction_read_only')::bool,
  CASE WHEN r THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                            (SELECT timeline_id FROM pg_control_checkpoint()))
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8 END,
  (SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming') > 0,
  (SELECT count(*) FROM pg_stat_wal_receiver WHERE status IS NULL) > 0,
  CASE WHEN r THEN pg_is_wal_replay_paused() ELSE false END,
  CASE WHEN r THEN greatest(pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn(), 0)::int8 END,
  CASE WHEN NOT r THEN NULL
       WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
       ELSE greatest(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 0)::float8 END
FROM (SELECT pg_is_in_recovery() AS r) s`

// Agent answers HAProxy's HTTP checks for one PostgreSQL server.
type Agent struct {
	dsn     string
	timeout time.Duration
	// idle holds connections between checks; a connection that saw any
	// error is closed instead of returned.
	idle chan *pgconn.PgConn

	mu     sync.Mutex
	lastUp *bool // for logging changes of reachability only
}

// agentIdleConns bounds the connections kept between checks: HAProxy runs
// a few checks per node at once (write, read and fallback backends).
const agentIdleConns = 4

// NewAgent checks the DSN and returns an agent whose every database check
// is bounded by checkTimeout (connecting included).
func NewAgent(dsn string, checkTimeout time.Duration) (*Agent, error) {
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		return nil, fmt.Errorf("invalid --dsn: %w", replication.Redact(err))
	}
	if checkTimeout <= 0 {
		return nil, errors.New("the check timeout must be positive")
	}
	return &Agent{dsn: dsn, timeout: checkTimeout, idle: make(chan *pgconn.PgConn, agentIdleConns)}, nil
}

// Close closes the idle connections.
func (a *Agent) Close() {
	for {
		select {
		case conn := <-a.idle:
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Close(ctx)
			cancel()
		default:
			return
		}
	}
}

// Check reads the node's state, within the check timeout.
func (a *Agent) Check(ctx context.Context) (NodeState, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	st, err := a.check(ctx)
	a.noteReachability(err)
	return st, err
}

func (a *Agent) check(ctx context.Context) (NodeState, error) {
	var conn *pgconn.PgConn
	select {
	case conn = <-a.idle:
	default:
	}
	if conn == nil || conn.IsClosed() {
		var err error
		if conn, err = replication.ConnectSQL(ctx, a.dsn, "walkeeper health", a.timeout); err != nil {
			return NodeState{}, err
		}
	}
	res, err := conn.Exec(ctx, stateQuery).ReadAll()
	if err == nil && (len(res) != 1 || len(res[0].Rows) != 1) {
		err = errors.New("state query returned no row")
	}
	var st NodeState
	if err == nil {
		st, err = parseState(res[0].Rows[0])
	}
	if err != nil {
		// A timeout leaves the connection unusable; never reuse it after
		// an error. Closing must not delay the answer.
		go func() {
			cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
			defer ccancel()
			conn.Close(cctx)
		}()
		if ctx.Err() != nil {
			return NodeState{}, fmt.Errorf("no answer within %v: %w", a.timeout, ctx.Err())
		}
		return NodeState{}, replication.Classify(err, "")
	}
	select {
	case a.idle <- conn:
	default:
		go conn.Close(context.Background())
	}
	return st, nil
}

func parseState(row [][]byte) (NodeState, error) {
	if len(row) != 8 {
		return NodeState{}, fmt.Errorf("state query returned %d columns", len(row))
	}
	b := func(v []byte) bool { return string(v) == "t" }
	st := NodeState{
		InRecovery:           b(row[0]),
		ReadOnly:             b(row[1]),
		Streaming:            b(row[3]),
		ReceiverStatusHidden: b(row[4]),
		ReplayPaused:         b(row[5]),
	}
	if row[2] != nil {
		tli, err := strconv.ParseUint(string(row[2]), 10, 32)
		if err != nil {
			return NodeState{}, fmt.Errorf("timeline %q: %v", row[2], err)
		}
		st.Timeline = uint32(tli)
	}
	if row[6] != nil {
		n, err := strconv.ParseInt(string(row[6]), 10, 64)
		if err != nil {
			return NodeState{}, fmt.Errorf("lag bytes %q: %v", row[6], err)
		}
		st.LagBytes = &n
	}
	if row[7] != nil {
		f, err := strconv.ParseFloat(string(row[7]), 64)
		if err != nil {
			return NodeState{}, fmt.Errorf("lag seconds %q: %v", row[7], err)
		}
		st.LagSeconds = &f
	}
	return st, nil
}

// noteReachability logs when the database stops or starts answering, not
// at every check.
func (a *Agent) noteReachability(err error) {
	up := err == nil
	a.mu.Lock()
	changed := a.lastUp == nil || *a.lastUp != up
	a.lastUp = &up
	a.mu.Unlock()
	if !changed {
		return
	}
	if up {
		slog.Info("database answers health checks")
	} else {
		slog.Warn("database does not answer health checks", "error", err)
	}
}

// Report is the JSON body of every endpoint.
type Report struct {
	OK           bool     `json:"ok"`
	Reason       string   `json:"reason"`
	Database     string   `json:"database"` // up or down
	Role         string   `json:"role"`
	Timeline     uint32   `json:"timeline,omitempty"`
	InRecovery   bool     `json:"in_recovery"`
	ReadOnly     bool     `json:"read_only"`
	Streaming    bool     `json:"streaming"`
	ReplayPaused bool     `json:"replay_paused"`
	LagBytes     *int64   `json:"lag_bytes"`
	LagSeconds   *float64 `json:"lag_seconds"`
	MaxLag       string   `json:"max_lag,omitempty"`
}

func newReport(st NodeState, err error) Report {
	if err != nil {
		return Report{Database: "down", Role: RoleUnknown, Reason: "database check failed: " + err.Error()}
	}
	return Report{
		Database: "up", Role: st.Role(), Timeline: st.Timeline, InRecovery: st.InRecovery,
		ReadOnly: st.ReadOnly, Streaming: st.Streaming, ReplayPaused: st.ReplayPaused,
		LagBytes: st.LagBytes, LagSeconds: st.LagSeconds,
	}
}

// Handler serves /primary, /replica (?max-lag=16MB or =10s) and /health.
// The status is 200 or 503 (400 for bad parameters); the body is a Report.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/primary", a.endpoint(func(st NodeState, _ *MaxLag) (bool, string) { return st.PrimaryVerdict() }, false))
	mux.HandleFunc("/replica", a.endpoint(NodeState.ReplicaVerdict, true))
	mux.HandleFunc("/health", a.endpoint(func(NodeState, *MaxLag) (bool, string) { return true, "agent running" }, false))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "unknown path "+r.URL.Path+": use /primary, /replica[?max-lag=16MB|10s] or /health", http.StatusNotFound)
	})
	return mux
}

func (a *Agent) endpoint(verdict func(NodeState, *MaxLag) (bool, string), lagParam bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
		default:
			w.Header().Set("Allow", "GET, HEAD, OPTIONS")
			http.Error(w, "method "+r.Method+" not allowed: use GET", http.StatusMethodNotAllowed)
			return
		}
		var max *MaxLag
		for key, vals := range r.URL.Query() {
			if key != "max-lag" || !lagParam {
				http.Error(w, fmt.Sprintf("unknown parameter %q: only /replica takes max-lag", key), http.StatusBadRequest)
				return
			}
			if len(vals) != 1 {
				http.Error(w, "give max-lag once", http.StatusBadRequest)
				return
			}
			m, err := ParseMaxLag(vals[0])
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			max = &m
		}
		st, err := a.Check(r.Context())
		rep := newReport(st, err)
		if max != nil {
			rep.MaxLag = max.String()
		}
		if err == nil {
			rep.OK, rep.Reason = verdict(st, max)
		} else if r.URL.Path == "/health" {
			rep.OK = true // the agent runs; the body says the database does not answer
		}
		code := http.StatusOK
		if !rep.OK {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		if r.Method != http.MethodHead {
			json.NewEncoder(w).Encode(rep)
		}
	}
}

// Serve answers checks on ln until ctx is done, then shuts down, letting
// checks in flight finish (they are bounded by the check timeout).
func (a *Agent) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      a.timeout + 10*time.Second,
		IdleTimeout:       time.Minute,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), a.timeout+5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	a.Close()
	return err
}
