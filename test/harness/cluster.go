package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Roles created in every cluster started by StartCluster. All of them can
// log in over TCP with the password returned by Cluster.Password; over the
// cluster's Unix socket every role is trusted.
const (
	// SuperUser is the bootstrap superuser.
	SuperUser = "postgres"
	// ReplicationUser has LOGIN and REPLICATION (but is not a superuser).
	ReplicationUser = "walkeeper"
	// NoReplicationUser has LOGIN but not REPLICATION.
	NoReplicationUser = "noreplication"
)

// harnessConfName is the configuration file the harness owns inside the data
// directory. postgresql.conf includes it at its end, so its settings win
// over postgresql.conf (but not over postgresql.auto.conf, i.e. ALTER
// SYSTEM, or command-line options).
const harnessConfName = "walkeeper_harness.conf"

// ClusterOptions configures StartCluster.
type ClusterOptions struct {
	// Name makes directory names and log messages recognizable. Default
	// "pg".
	Name string
	// ExtraConf holds additional postgresql.conf settings (for example
	// "archive_mode": "on"). They override the harness defaults. Values
	// are written as quoted strings, which PostgreSQL accepts for every
	// setting type; do not quote them yourself.
	ExtraConf map[string]string
	// WALSegSizeMB is passed to initdb --wal-segsize (a power of two
	// between 1 and 1024). Zero means the default, 16.
	WALSegSizeMB int
	// Major is the PostgreSQL major version of the server (15, 16, 17,
	// 18); 0 means PGBinDir's server (Debian's PostgreSQL 15). See
	// FindServer for where each major comes from.
	Major int
	// FsyncOff sets fsync=off for speed. This gives up crash safety of the
	// whole machine (not of a killed postmaster), so it is off by default
	// and must not be used by tests about durability.
	FsyncOff bool
	// NoDataChecksums leaves out initdb's --data-checksums, for tests of
	// damage that neither the server nor a backup notices.
	NoDataChecksums bool
}

// Cluster is a running (or stopped) PostgreSQL cluster owned by one test.
// Its methods are safe for concurrent use.
type Cluster struct {
	name     string
	dir      string
	dataDir  string
	logFile  string
	port     int
	password string
	user     *osUser
	srv      *Server
	// conf holds the non-default settings for walkeeper_harness.conf
	// (ExtraConf merged over the harness defaults, without port and
	// socket directory).
	conf map[string]string

	// env is added to the server's environment (SetEnv).
	env []string

	mu   sync.Mutex
	proc *process // nil when stopped
}

// StartCluster initializes and starts a new PostgreSQL cluster and creates
// the test roles. The cluster listens on 127.0.0.1 on a free port and on a
// Unix socket in Dir(). It is stopped and its directory removed when the
// test finishes.
//
// initdb runs with --data-checksums, -U postgres and --auth=trust; the
// harness then replaces pg_hba.conf with
//
//	local all         all                trust
//	local replication all                trust
//	host  all         all 127.0.0.1/32   scram-sha-256
//	host  replication all 127.0.0.1/32   scram-sha-256
//
// so TCP connections (DSN, ReplicationDSN) need the password.
func StartCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	srv := RequireServer(t, opts.Major)
	u := mustPostgresUser(t)
	name := opts.Name
	if name == "" {
		name = "pg"
	}
	dir := MakeDir(t, name)
	c := &Cluster{
		name:     name,
		dir:      dir,
		dataDir:  filepath.Join(dir, "data"),
		logFile:  filepath.Join(dir, "postgres.log"),
		port:     FreePort(t),
		password: randomHex(16),
		user:     u,
		srv:      srv,
		conf:     defaultConf(opts),
	}
	c.registerCleanup(t)

	args := []string{
		"-D", c.dataDir,
		"-U", SuperUser,
		"--auth=trust",
		"--encoding=UTF8",
		"--locale=C",
		// Only skips initdb's own final fsync of the new files; the
		// running server's durability is unaffected.
		"--no-sync",
		"--no-instructions",
	}
	if !opts.NoDataChecksums {
		args = append(args, "--data-checksums")
	}
	if opts.WALSegSizeMB != 0 {
		args = append(args, "--wal-segsize="+strconv.Itoa(opts.WALSegSizeMB))
	}
	if out, err := c.run(context.Background(), srv.env(), srv.bin("initdb"), args...); err != nil {
		t.Fatalf("harness: initdb for %s: %v\n%s", name, err, out)
	}
	if err := c.writeHBA(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if err := c.appendInclude(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if err := c.writeHarnessConf(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	c.Start(t)

	pw := quoteLiteral(c.password)
	c.Exec(t, fmt.Sprintf(`ALTER ROLE %s PASSWORD %s;
CREATE ROLE %s LOGIN REPLICATION PASSWORD %s;
CREATE ROLE %s LOGIN NOREPLICATION PASSWORD %s;`,
		quoteIdent(SuperUser), pw,
		quoteIdent(ReplicationUser), pw,
		quoteIdent(NoReplicationUser), pw))
	return c
}

// defaultConf returns the harness settings merged with opts.ExtraConf.
func defaultConf(opts ClusterOptions) map[string]string {
	fsync := "on"
	if opts.FsyncOff {
		fsync = "off"
	}
	conf := map[string]string{
		"listen_addresses":      "127.0.0.1",
		"wal_level":             "replica",
		"max_wal_senders":       "10",
		"max_replication_slots": "10",
		"wal_keep_size":         "0",
		"hot_standby":           "on",
		"shared_buffers":        "32MB",
		"max_connections":       "50",
		"fsync":                 fsync,
		"logging_collector":     "off",
		"log_line_prefix":       "%m [%p] %q%u@%d ",
	}
	maps.Copy(conf, opts.ExtraConf)
	return conf
}

// registerCleanup makes sure the postmaster is stopped when the test ends
// and dumps the server log tail if the test failed.
func (c *Cluster) registerCleanup(t testing.TB) {
	t.Cleanup(func() {
		if err := c.stop(); err != nil {
			t.Errorf("harness: stopping cluster %s: %v", c.name, err)
		}
		if t.Failed() {
			t.Logf("harness: last lines of %s (cluster %s):\n%s", c.logFile, c.name, tailFile(c.logFile, 40))
		}
	})
}

// writeHBA replaces pg_hba.conf.
func (c *Cluster) writeHBA() error {
	const hba = `# Written by the walkeeper test harness.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
`
	return c.writeFile(filepath.Join(c.dataDir, "pg_hba.conf"), hba, 0o600)
}

// appendInclude makes postgresql.conf include the harness configuration.
func (c *Cluster) appendInclude() error {
	path := filepath.Join(c.dataDir, "postgresql.conf")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "\n# Added by the walkeeper test harness.\ninclude '%s'\n", harnessConfName)
	return errors.Join(err, f.Close())
}

// writeHarnessConf (re)writes walkeeper_harness.conf with this cluster's
// port and socket directory.
func (c *Cluster) writeHarnessConf() error {
	conf := maps.Clone(c.conf)
	conf["port"] = strconv.Itoa(c.port)
	conf["unix_socket_directories"] = c.dir
	var b strings.Builder
	b.WriteString("# Written by the walkeeper test harness for cluster " + c.name + ".\n")
	for _, k := range slices.Sorted(maps.Keys(conf)) {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConfValue(conf[k]))
	}
	return c.writeFile(filepath.Join(c.dataDir, harnessConfName), b.String(), 0o600)
}

// writeFile writes a file and hands it to the postgres user.
func (c *Cluster) writeFile(path, content string, perm os.FileMode) error {
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		return err
	}
	if err := c.user.chown(path); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// Name returns the name given in ClusterOptions (or to CreateStandby).
func (c *Cluster) Name() string { return c.name }

// Port returns the TCP port the cluster listens on (on 127.0.0.1). It stays
// the same across Stop and Start.
func (c *Cluster) Port() int { return c.port }

// DataDir returns the cluster's data directory (PGDATA).
func (c *Cluster) DataDir() string { return c.dataDir }

// Dir returns the cluster's own directory: the parent of DataDir, which
// also holds the Unix socket and the log file. It is owned by the postgres
// OS user, so tests can put tablespaces, archives and other files for the
// server there. It is removed when the test ends.
func (c *Cluster) Dir() string { return c.dir }

// SocketDir returns the directory holding the cluster's Unix socket.
func (c *Cluster) SocketDir() string { return c.dir }

// LogFile returns the file the postmaster's stderr (the server log) goes to.
func (c *Cluster) LogFile() string { return c.logFile }

// Password returns the password of the roles SuperUser, ReplicationUser and
// NoReplicationUser (they all share it).
func (c *Cluster) Password() string { return c.password }

// DSN returns a TCP connection URL for user on 127.0.0.1, database
// postgres, sslmode=disable, including Password() (which is right for the
// harness roles and for roles the test creates with that password).
func (c *Cluster) DSN(user string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, c.password),
		Host:     "127.0.0.1:" + strconv.Itoa(c.port),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// ReplicationDSN is DSN with replication=true added, for physical
// replication connections (IDENTIFY_SYSTEM, START_REPLICATION,
// BASE_BACKUP, ...).
func (c *Cluster) ReplicationDSN(user string) string {
	return c.DSN(user) + "&replication=true"
}

// Env returns libpq environment variables (PGHOST, PGPORT, PGUSER,
// PGPASSWORD, PGDATABASE, PGSSLMODE) that make a client connect to this
// cluster as user over TCP.
func (c *Cluster) Env(user string) []string {
	return []string{
		"PGHOST=127.0.0.1",
		"PGPORT=" + strconv.Itoa(c.port),
		"PGUSER=" + user,
		"PGPASSWORD=" + c.password,
		"PGDATABASE=postgres",
		"PGSSLMODE=disable",
	}
}

// socketConnString is a keyword/value connection string for the superuser
// over the Unix socket (trust authentication, no password needed).
func (c *Cluster) socketConnString() string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable connect_timeout=5",
		quoteConnValue(c.dir), c.port, quoteConnValue(SuperUser))
}

// connect opens a superuser connection over the Unix socket.
func (c *Cluster) connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, c.socketConnString())
}

// Conn returns a new superuser connection (over the Unix socket), closed
// when the test ends.
func (c *Cluster) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := c.connect(ctx)
	if err != nil {
		t.Fatalf("harness: connect to cluster %s: %v", c.name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// Exec runs sql as the superuser and fails the test on error. Without
// args, sql may contain several statements (simple query protocol).
func (c *Cluster) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if err := c.exec(sql, args...); err != nil {
		t.Fatalf("harness: cluster %s: exec %q: %v", c.name, sql, err)
	}
}

func (c *Cluster) exec(sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// QueryString runs sql as the superuser and returns the first column of the
// single result row in PostgreSQL's text format (for example "on", "t",
// "16/3000060"). NULL is returned as "". The test fails on error or if
// the query does not return exactly one row.
func (c *Cluster) QueryString(t testing.TB, sql string, args ...any) string {
	t.Helper()
	rows := c.QueryRows(t, sql, args...)
	if len(rows) != 1 || len(rows[0]) == 0 {
		t.Fatalf("harness: cluster %s: query %q returned %d rows, want exactly 1", c.name, sql, len(rows))
	}
	return rows[0][0]
}

// QueryRow is an alias of QueryString.
func (c *Cluster) QueryRow(t testing.TB, sql string, args ...any) string {
	t.Helper()
	return c.QueryString(t, sql, args...)
}

// QueryRows runs sql as the superuser and returns all rows, each value in
// PostgreSQL's text format (NULL as ""). The test fails on error.
func (c *Cluster) QueryRows(t testing.TB, sql string, args ...any) [][]string {
	t.Helper()
	rows, err := c.queryRows(sql, args...)
	if err != nil {
		t.Fatalf("harness: cluster %s: query %q: %v", c.name, sql, err)
	}
	return rows
}

func (c *Cluster) queryRows(sql string, args ...any) ([][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	// The simple protocol returns every value as text.
	qargs := append([]any{pgx.QueryExecModeSimpleProtocol}, args...)
	rows, err := conn.Query(ctx, sql, qargs...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]string
	for rows.Next() {
		raw := rows.RawValues()
		row := make([]string, len(raw))
		for i, v := range raw {
			row[i] = string(v)
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

// Start starts the postmaster of a stopped cluster (same data directory,
// same port) and waits until it accepts connections. After Kill, this runs
// crash recovery.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil && !c.proc.exited() {
		t.Fatalf("harness: cluster %s is already running", c.name)
	}
	logf, err := os.OpenFile(c.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("harness: open log file: %v", err)
	}
	defer logf.Close() // the child has its own copy of the descriptor
	if err := c.user.chown(c.logFile); err != nil {
		t.Fatalf("harness: chown log file: %v", err)
	}
	cmd := exec.Command(c.srv.bin("postgres"), "-D", c.dataDir)
	cmd.Dir = c.dir
	cmd.Env = append(childEnv(c.user, dropPGVars, c.srv.env()...), c.env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	p, err := startProcess(cmd, c.user)
	if err != nil {
		t.Fatalf("harness: start postgres for cluster %s: %v", c.name, err)
	}
	c.proc = p

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := c.waitReady(ctx, p); err != nil {
		t.Fatalf("harness: cluster %s: %v\nlast lines of %s:\n%s", c.name, err, c.logFile, tailFile(c.logFile, 40))
	}
}

// WaitReady waits until the cluster accepts superuser connections and runs
// queries (a standby accepts them once it reached a consistent state), the
// postmaster exits, or ctx is done.
func (c *Cluster) WaitReady(ctx context.Context) error {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("cluster %s is not running", c.name)
	}
	return c.waitReady(ctx, p)
}

func (c *Cluster) waitReady(ctx context.Context, p *process) error {
	var lastErr error
	for delay := 20 * time.Millisecond; ; delay = min(delay*2, 500*time.Millisecond) {
		if p.exited() {
			return fmt.Errorf("postmaster exited: %v", p.exitErr())
		}
		lastErr = c.ping(ctx)
		if lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last error: %v)", ctx.Err(), lastErr)
		case <-p.done:
		case <-time.After(delay):
		}
	}
}

func (c *Cluster) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "SELECT 1")
	return err
}

// Running reports whether the postmaster is running.
func (c *Cluster) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc != nil && !c.proc.exited()
}

// Stop shuts the cluster down cleanly (SIGINT, "fast" shutdown) and waits
// for the postmaster to exit; after a timeout it SIGKILLs the postmaster
// and all its descendants and fails the test. Stopping a stopped cluster does nothing.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if err := c.stop(); err != nil {
		t.Fatalf("harness: stop cluster %s: %v", c.name, err)
	}
}

func (c *Cluster) stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return nil
	}
	p := c.proc
	c.proc = nil
	if p.exited() {
		return nil
	}
	return p.stop(syscall.SIGINT, stopTimeout)
}

// Kill simulates a crash: it SIGKILLs the postmaster and all its
// descendants (backends, auxiliary processes, archive commands) at once and
// waits until they are gone. The data
// directory keeps postmaster.pid; Start runs crash recovery.
func (c *Cluster) Kill(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		t.Fatalf("harness: kill cluster %s: not running", c.name)
	}
	p := c.proc
	c.proc = nil
	if err := p.killGroup(); err != nil {
		t.Fatalf("harness: kill cluster %s: %v", c.name, err)
	}
}

// Command returns an exec.Cmd that runs the PostgreSQL program bin (a name
// resolved by Server.Tool, or a path containing a slash) as the postgres OS user, with
// working directory Dir(), the libpq environment of Env(SuperUser) plus
// PGDATA, in its own process group with Pdeathsig set. When ctx is done the
// process group is SIGKILLed. Callers set Stdin/Stdout/Stderr and run it;
// see the package documentation for the Pdeathsig thread caveat.
func (c *Cluster) Command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	path := c.resolveBin(bin)
	return newCommand(ctx, c.user, c.dir, c.toolEnv(path), path, args...)
}

// RunAsPostgres runs the PostgreSQL program bin (a name resolved by
// Server.Tool, or a path containing a slash) as the postgres OS user against this cluster
// (environment as for Command: PGPASSWORD is set, the password never
// appears on a command line) and returns its combined output. It is bounded
// by a 5 minute timeout. It does not fail the test; t is only used for
// Helper.
func (c *Cluster) RunAsPostgres(t testing.TB, bin string, args ...string) (string, error) {
	t.Helper()
	path := c.resolveBin(bin)
	return c.run(context.Background(), c.toolEnv(path), path, args...)
}

// Pgbench runs pgbench as the postgres OS user against this cluster, as the
// superuser, in database postgres (for example Pgbench(t, "-i", "-s", "1")
// or Pgbench(t, "-T", "5", "-c", "2")), and fails the test on error. It
// returns pgbench's output.
func (c *Cluster) Pgbench(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.RunAsPostgres(t, "pgbench", args...)
	if err != nil {
		t.Fatalf("harness: cluster %s: %v\n%s", c.name, err, out)
	}
	return out
}

// run runs a short-lived command as the postgres OS user in Dir().
func (c *Cluster) run(ctx context.Context, extraEnv []string, bin string, args ...string) (string, error) {
	return runCommand(ctx, c.user, c.dir, childEnv(c.user, dropPGVars, extraEnv...), bin, args...)
}

func (c *Cluster) toolEnv(path string) []string {
	return append(append(c.Env(SuperUser), "PGDATA="+c.dataDir), c.srv.toolEnv(path)...)
}

// resolveBin finds a program for this cluster's server; one it cannot
// have (pg_waldump of another major) resolves to a path in its own bin
// directory that does not exist, so running it fails naming that path.
func (c *Cluster) resolveBin(bin string) string {
	if strings.ContainsRune(bin, '/') {
		return bin
	}
	if p, err := c.srv.Tool(bin); err == nil {
		return p
	}
	return c.srv.bin(bin)
}

// Server returns the PostgreSQL installation the cluster runs.
func (c *Cluster) Server() *Server { return c.srv }

// Major returns the cluster's PostgreSQL major version.
func (c *Cluster) Major() int { return c.srv.Major }

// SetConf changes harness settings (as ClusterOptions.ExtraConf does; an
// empty value removes one) from the cluster's next start, or for a
// restore target from StartRestored. Settings in postgresql.auto.conf
// (ALTER SYSTEM, walkeeper restore) still win.
func (c *Cluster) SetConf(t testing.TB, conf map[string]string) {
	t.Helper()
	for k, v := range conf {
		if v == "" {
			delete(c.conf, k)
		} else {
			c.conf[k] = v
		}
	}
	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); err != nil {
		return // not initialized or restored yet: StartRestored writes it
	}
	if err := c.writeHarnessConf(); err != nil {
		t.Fatalf("harness: %v", err)
	}
}

// sibling is a new cluster beside c (same roles and settings, its own
// directory and port) whose data directory does not exist yet.
func (c *Cluster) sibling(t testing.TB, name string) *Cluster {
	s := &Cluster{
		name:     name,
		dir:      MakeDir(t, name),
		port:     FreePort(t),
		password: c.password,
		user:     c.user,
		srv:      c.srv,
		conf:     maps.Clone(c.conf),
	}
	s.dataDir = filepath.Join(s.dir, "data")
	s.logFile = filepath.Join(s.dir, "postgres.log")
	s.registerCleanup(t)
	return s
}

// CreateStandby takes a base backup of this (running) cluster with
// pg_basebackup -R -X stream as ReplicationUser over TCP into a new
// directory, starts it on a new free port and waits until it is in
// recovery and its WAL receiver is streaming. The standby inherits this
// cluster's configuration and roles; it is stopped and removed when the
// test ends.
func (c *Cluster) CreateStandby(t testing.TB, name string) *Cluster {
	t.Helper()
	if name == "" {
		name = c.name + "-standby"
	}
	basebackup, err := c.srv.Tool("pg_basebackup")
	if err != nil {
		t.Fatalf("harness: standby of %s: %v: seed it with walkeeper restore --as-replica instead", c.name, err)
	}
	s := c.sibling(t, name)

	env := []string{
		"PGHOST=127.0.0.1",
		"PGPORT=" + strconv.Itoa(c.port),
		"PGUSER=" + ReplicationUser,
		"PGPASSWORD=" + c.password,
		"PGSSLMODE=disable",
	}
	out, err := s.run(context.Background(), append(env, c.srv.toolEnv(basebackup)...), basebackup,
		"-D", s.dataDir, "-R", "-X", "stream", "-c", "fast", "--no-sync")
	if err != nil {
		t.Fatalf("harness: base backup of %s for standby %s: %v\n%s", c.name, name, err, out)
	}
	if err := s.writeHarnessConf(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	s.Start(t)

	ctx, cancel := context.WithTimeout(context.Background(), replicationTimeout)
	defer cancel()
	err = s.poll(ctx, func() (bool, error) {
		rows, err := s.queryRows(`SELECT pg_is_in_recovery(), coalesce((SELECT status FROM pg_stat_wal_receiver), '')`)
		if err != nil {
			return false, err
		}
		return rows[0][0] == "t" && rows[0][1] == "streaming", nil
	})
	if err != nil {
		t.Fatalf("harness: standby %s is not streaming from %s: %v\nlast lines of %s:\n%s", name, c.name, err, s.logFile, tailFile(s.logFile, 40))
	}
	return s
}

// Promote promotes a standby (pg_promote) and waits until
// pg_is_in_recovery() is false.
func (c *Cluster) Promote(t testing.TB) {
	t.Helper()
	if got := c.QueryString(t, "SELECT pg_promote(true, 60)"); got != "t" {
		t.Fatalf("harness: pg_promote on %s returned %q", c.name, got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), replicationTimeout)
	defer cancel()
	err := c.poll(ctx, func() (bool, error) {
		rows, err := c.queryRows("SELECT pg_is_in_recovery()")
		if err != nil {
			return false, err
		}
		return rows[0][0] == "f", nil
	})
	if err != nil {
		t.Fatalf("harness: promote %s: %v", c.name, err)
	}
}

// poll calls cond until it returns true, the postmaster exits or ctx is
// done. Errors from cond are retried and reported on timeout.
func (c *Cluster) poll(ctx context.Context, cond func() (bool, error)) error {
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		if !c.Running() {
			return fmt.Errorf("postmaster is not running (last error: %v)", lastErr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// randomHex returns 2n random hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// quoteLiteral quotes an SQL string literal (standard_conforming_strings).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// quoteConfValue quotes a postgresql.conf value: backslashes and single
// quotes are escaped inside single quotes.
func quoteConfValue(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// quoteConnValue quotes a value for a keyword/value connection string.
func quoteConnValue(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", `\'`) + "'"
}
