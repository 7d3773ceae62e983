package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Environment variables understood by the harness.
const (
	// EnvPGBin overrides the directory holding the PostgreSQL binaries.
	EnvPGBin = "WALKEEPER_PG_BIN"
	// EnvVersityGW overrides the path of the versitygw binary.
	EnvVersityGW = "WALKEEPER_VERSITYGW"
	// EnvCI, when true, turns missing dependencies into test failures
	// instead of skips.
	EnvCI = "CI"
)

// DefaultPGBinDir is where the PostgreSQL 15 server binaries live unless
// EnvPGBin says otherwise.
const DefaultPGBinDir = "/usr/lib/postgresql/15/bin"

// PostgresOSUser is the OS account PostgreSQL programs run as when the tests
// run as root.
const PostgresOSUser = "postgres"

// requiredPGBinaries are checked by RequirePG.
var requiredPGBinaries = []string{"initdb", "postgres", "pg_basebackup", "pgbench"}

// IsCI reports whether the environment variable CI is set to a true value
// (for example CI=true). Under CI, missing dependencies fail tests instead of
// skipping them.
func IsCI() bool {
	v, err := strconv.ParseBool(strings.TrimSpace(os.Getenv(EnvCI)))
	return err == nil && v
}

// missingDependency fails the test under CI and skips it otherwise.
func missingDependency(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if IsCI() {
		t.Fatalf("missing test dependency (CI=true, so this is fatal): %s", msg)
	}
	t.Skipf("skipping: missing test dependency: %s", msg)
}

// RequireRoot skips the test (fails it under CI, which runs as root) unless
// it runs as root: for tests about files that belong to another OS user
// than the one running walkeeper.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missingDependency(t, "root (the test needs files owned by another OS user)")
	}
}

// PGBinDir returns the directory holding the PostgreSQL binaries: the value
// of WALKEEPER_PG_BIN if set, DefaultPGBinDir otherwise.
func PGBinDir() string {
	if d := strings.TrimSpace(os.Getenv(EnvPGBin)); d != "" {
		return d
	}
	return DefaultPGBinDir
}

// PGBin returns the full path of the PostgreSQL program name (for example
// "pg_waldump") in PGBinDir. It does not check that the file exists; call
// RequirePG first, or RequirePGBin for programs RequirePG does not check.
func PGBin(name string) string {
	return filepath.Join(PGBinDir(), name)
}

// RequirePG skips the test (fails it under CI) unless the PostgreSQL
// binaries the harness needs are present and, when running as root, the
// postgres OS user exists.
func RequirePG(t testing.TB) {
	t.Helper()
	RequirePGBin(t, requiredPGBinaries...)
	if _, err := postgresUser(); err != nil {
		missingDependency(t, "%v", err)
	}
}

// RequirePGBin skips the test (fails it under CI) unless each named program
// exists as an executable file in PGBinDir.
func RequirePGBin(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if err := checkExecutable(PGBin(name)); err != nil {
			missingDependency(t, "PostgreSQL program %s: %v (set %s to the PostgreSQL 15 bin directory)", name, err, EnvPGBin)
		}
	}
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// RequireS3 skips the test (fails it under CI) unless the versitygw binary
// can be found (see VersityGWPath).
func RequireS3(t testing.TB) {
	t.Helper()
	if _, err := VersityGWPath(); err != nil {
		missingDependency(t, "%v", err)
	}
}

var (
	versityOnce sync.Once
	versityPath string
	versityErr  error
)

// VersityGWPath locates the versitygw binary. It uses WALKEEPER_VERSITYGW if
// set, and otherwise searches $GOBIN, the bin directories of $GOPATH,
// `go env GOPATH`/bin, $HOME/go/bin and finally $PATH. The result is cached.
func VersityGWPath() (string, error) {
	versityOnce.Do(func() { versityPath, versityErr = findVersityGW() })
	return versityPath, versityErr
}

func findVersityGW() (string, error) {
	if p := strings.TrimSpace(os.Getenv(EnvVersityGW)); p != "" {
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvVersityGW, p, err)
		}
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range filepath.SplitList(os.Getenv("GOPATH")) {
		if d != "" {
			dirs = append(dirs, filepath.Join(d, "bin"))
		}
	}
	if gp := goEnvGOPATH(); gp != "" {
		for _, d := range filepath.SplitList(gp) {
			dirs = append(dirs, filepath.Join(d, "bin"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("versitygw not found in %v or $PATH (install with `go install github.com/versity/versitygw/cmd/versitygw@v1.8.0`, or set %s)", dirs, EnvVersityGW)
}

// goEnvGOPATH asks the go command for GOPATH; it returns "" if that fails.
func goEnvGOPATH() string {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "env", "GOPATH").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// osUser describes the account PostgreSQL programs run as.
type osUser struct {
	name string
	uid  int
	gid  int
	home string
	// cred is non-nil when the test runs as root and children must switch
	// to the postgres user.
	cred *syscall.Credential
}

var (
	pgUserOnce sync.Once
	pgUserVal  *osUser
	pgUserErr  error
)

// postgresUser returns the account to run PostgreSQL programs as: the
// postgres OS user when running as root, the current user otherwise.
func postgresUser() (*osUser, error) {
	pgUserOnce.Do(func() { pgUserVal, pgUserErr = lookupPostgresUser() })
	return pgUserVal, pgUserErr
}

func lookupPostgresUser() (*osUser, error) {
	if os.Geteuid() != 0 {
		u := &osUser{uid: os.Geteuid(), gid: os.Getegid()}
		if cur, err := user.Current(); err == nil {
			u.name, u.home = cur.Username, cur.HomeDir
		}
		return u, nil
	}
	pu, err := user.Lookup(PostgresOSUser)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("running as root but OS user %q does not exist (PostgreSQL refuses to run as root)", PostgresOSUser)
		}
		return nil, fmt.Errorf("looking up OS user %q: %w", PostgresOSUser, err)
	}
	uid, err := strconv.Atoi(pu.Uid)
	if err != nil {
		return nil, fmt.Errorf("OS user %q has non-numeric uid %q", PostgresOSUser, pu.Uid)
	}
	gid, err := strconv.Atoi(pu.Gid)
	if err != nil {
		return nil, fmt.Errorf("OS user %q has non-numeric gid %q", PostgresOSUser, pu.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("OS user %q has uid 0", PostgresOSUser)
	}
	return &osUser{
		name: pu.Username,
		uid:  uid,
		gid:  gid,
		home: pu.HomeDir,
		// Groups is empty: the child drops all supplementary groups.
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
	}, nil
}

// mustPostgresUser returns postgresUser or reports a missing dependency.
func mustPostgresUser(t testing.TB) *osUser {
	t.Helper()
	u, err := postgresUser()
	if err != nil {
		missingDependency(t, "%v", err)
	}
	return u
}

// chown changes the owner of path to u when running as root.
func (u *osUser) chown(path string) error {
	if u.cred == nil {
		return nil
	}
	return os.Lchown(path, u.uid, u.gid)
}

// childEnv returns the environment for a child process: the current
// environment without variables for which drop returns true, with HOME
// pointing to u's home directory (when u switches users) and extra appended
// (later entries win).
func childEnv(u *osUser, drop func(key string) bool, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if drop != nil && drop(k) {
			continue
		}
		if u != nil && u.cred != nil && (k == "HOME" || k == "USER" || k == "LOGNAME") {
			continue
		}
		env = append(env, kv)
	}
	if u != nil && u.cred != nil {
		if u.home != "" {
			env = append(env, "HOME="+u.home)
		}
		env = append(env, "USER="+u.name, "LOGNAME="+u.name)
	}
	return append(env, extra...)
}

// dropPGVars drops libpq/PostgreSQL environment variables so that the
// caller's environment cannot redirect harness commands to another server.
func dropPGVars(k string) bool {
	return strings.HasPrefix(k, "PG")
}

// EnvHAProxy overrides the path of the haproxy binary.
const EnvHAProxy = "WALKEEPER_HAPROXY"

// HAProxyPath locates haproxy: WALKEEPER_HAPROXY if set, else $PATH, else
// /usr/sbin/haproxy (Debian's place, often not on a non-root $PATH).
func HAProxyPath() (string, error) {
	if p := strings.TrimSpace(os.Getenv(EnvHAProxy)); p != "" {
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvHAProxy, p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	if checkExecutable("/usr/sbin/haproxy") == nil {
		return "/usr/sbin/haproxy", nil
	}
	return "", fmt.Errorf("haproxy not found in $PATH or /usr/sbin (install it with `apt-get install haproxy`, or set %s)", EnvHAProxy)
}

// RequireHAProxy skips the test (fails it under CI) unless haproxy can be
// found (see HAProxyPath).
func RequireHAProxy(t testing.TB) {
	t.Helper()
	if _, err := HAProxyPath(); err != nil {
		missingDependency(t, "%v", err)
	}
}
