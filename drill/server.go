package drill

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walkeeper/walkeeper/internal/replication"
)

// binaries is a directory of PostgreSQL server programs of one major.
type binaries struct {
	dir   string
	major int
}

// findBinaries finds the server programs for the backup's server version:
// dir when given (its postgres must be of that major), else the usual
// places of packaged servers, then PATH.
func findBinaries(dir, serverVersion string) (*binaries, error) {
	major, err := replication.ParseMajor(serverVersion)
	if err != nil {
		return nil, fmt.Errorf("the backup records server_version %q: %w", serverVersion, err)
	}
	if dir != "" {
		got, err := postgresMajor(dir)
		if err != nil {
			return nil, fmt.Errorf("--pg-bin %s: %w", dir, err)
		}
		if got != major {
			return nil, fmt.Errorf("--pg-bin %s holds PostgreSQL %d, the backup is of PostgreSQL %d: give the %d binaries' directory", dir, got, major, major)
		}
		return &binaries{dir: dir, major: major}, nil
	}
	candidates := []string{
		fmt.Sprintf("/usr/lib/postgresql/%d/bin", major), // Debian, Ubuntu
		fmt.Sprintf("/usr/pgsql-%d/bin", major),          // PGDG RPMs
		fmt.Sprintf("/usr/local/pgsql-%d/bin", major),
		"/usr/local/pgsql/bin", // built from source
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, c := range candidates {
		if got, err := postgresMajor(c); err == nil && got == major {
			return &binaries{dir: c, major: major}, nil
		}
	}
	return nil, fmt.Errorf("no PostgreSQL %d server binaries found (looked in %s and PATH): install the PostgreSQL %d server or give --pg-bin DIR",
		major, strings.Join(candidates[:4], ", "), major)
}

// postgresMajor runs dir/postgres --version.
func postgresMajor(dir string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return 0, fmt.Errorf("no runnable postgres there: %w", err)
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return 0, fmt.Errorf("postgres --version printed %q", out)
	}
	return replication.ParseMajor(f[2])
}

func (b *binaries) path(name string) string { return filepath.Join(b.dir, name) }

// server is the throwaway postmaster.
type server struct {
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
	port    int
	sockDir string
	logPath string
	log     *slog.Logger
}

// startServer starts postgres on dataDir as own, with the overrides the
// package documentation lists.
func startServer(ctx context.Context, bin *binaries, own *osUser, dataDir, scratch string, log *slog.Logger) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	sockDir, err := os.MkdirTemp("", "wk-drill-")
	if err != nil {
		return nil, err
	}
	s := &server{done: make(chan struct{}), port: port, sockDir: sockDir, logPath: filepath.Join(scratch, "postgres.log"), log: log}
	hba := filepath.Join(scratch, "pg_hba.conf")
	ident := filepath.Join(scratch, "pg_ident.conf")
	files := map[string]string{
		hba:   "# walkeeper drill: a throwaway server, local connections only\nlocal all all trust\n",
		ident: "",
	}
	// A Debian-style cluster keeps its configuration outside the data
	// directory: the backup then has none, and postgres needs one.
	if _, err := os.Stat(filepath.Join(dataDir, "postgresql.conf")); errors.Is(err, os.ErrNotExist) {
		files[filepath.Join(dataDir, "postgresql.conf")] = "# written by walkeeper drill: the backup had no postgresql.conf\n"
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			os.RemoveAll(sockDir)
			return nil, err
		}
	}
	for _, p := range append([]string{sockDir}, hba, ident, filepath.Join(dataDir, "postgresql.conf")) {
		if os.Geteuid() == 0 {
			if err := os.Chown(p, own.uid, own.gid); err != nil {
				os.RemoveAll(sockDir)
				return nil, err
			}
		}
	}
	settings := [][2]string{
		{"data_directory", dataDir},
		{"hba_file", hba},
		{"ident_file", ident},
		{"external_pid_file", ""},
		{"port", fmt.Sprint(port)},
		{"listen_addresses", ""},
		{"unix_socket_directories", sockDir},
		{"archive_mode", "off"},
		{"archive_command", ""},
		{"archive_library", ""},
		{"archive_cleanup_command", ""},
		{"recovery_end_command", ""},
		{"primary_conninfo", ""},
		{"primary_slot_name", ""},
		{"synchronous_standby_names", ""},
		{"shared_preload_libraries", ""},
		{"ssl", "off"},
		{"hot_standby", "off"},
		{"autovacuum", "off"},
		{"shared_buffers", "32MB"},
		{"logging_collector", "off"},
		{"log_destination", "stderr"},
		{"cluster_name", "walkeeper-drill"},
	}
	args := []string{"-D", dataDir}
	for _, kv := range settings {
		args = append(args, "-c", kv[0]+"="+kv[1])
	}
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		os.RemoveAll(sockDir)
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin.path("postgres"), args...)
	cmd.Dir = scratch
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(own.uid), Gid: uint32(own.gid)}
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("start %s: %w", bin.path("postgres"), err)
	}
	s.cmd = cmd
	go func() {
		s.exitErr = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

// serverEnv is this process's environment (the repository's credentials
// for restore_command) without the libpq and PostgreSQL variables that
// would point the server or its restore_command elsewhere.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "PGDATA" || k == "PGPORT" || k == "PGHOST" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *server) connect(ctx context.Context, user, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=10 application_name=walkeeper_drill",
		s.sockDir, s.port, quoteConninfo(user), quoteConninfo(db)))
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return pgx.ConnectConfig(cctx, cfg)
}

func quoteConninfo(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// waitUsable waits until the server accepts connections out of recovery,
// and returns a connection to database postgres.
func (s *server) waitUsable(ctx context.Context, user string) (*pgx.Conn, error) {
	var lastErr error
	for {
		select {
		case <-s.done:
			return nil, fmt.Errorf("the server exited during recovery (%v): %s", s.exitErr, s.logTail())
		default:
		}
		conn, err := s.connect(ctx, user, "postgres")
		if err == nil {
			var inRecovery bool
			err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
			if err == nil && !inRecovery {
				return conn, nil
			}
			conn.Close(context.Background())
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = errors.New("still in recovery")
			}
			return nil, fmt.Errorf("the server was not usable within the time allowed (--recovery-timeout; last: %v): %s", lastErr, s.logTail())
		case <-s.done:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// logTail is the server log's last FATAL or PANIC line, else its last line.
func (s *server) logTail() string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return "no server log"
	}
	var last, fatal string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		last = line
		if strings.Contains(line, "FATAL:") || strings.Contains(line, "PANIC:") {
			fatal = line
		}
	}
	if fatal != "" {
		return "server log: " + fatal
	}
	return "server log: " + last
}

// stop shuts the server down (fast, then killed after 30 s) and removes
// the socket directory.
func (s *server) stop() {
	defer os.RemoveAll(s.sockDir)
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
		return
	case <-time.After(30 * time.Second):
	}
	s.log.Warn("drill: the throwaway server did not stop in 30 s: killing it")
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
}

func queryString(ctx context.Context, conn *pgx.Conn, sql string, args ...any) (string, error) {
	var s string
	err := conn.QueryRow(ctx, sql, args...).Scan(&s)
	return s, err
}
