package test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/test/harness"
)

// walkeeperBin is the binary under test, built once by TestMain into a
// directory every user can read (restore_command runs it as postgres).
var walkeeperBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "walkeeper-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	walkeeperBin = filepath.Join(dir, "walkeeper")
	build := exec.Command("go", "build", "-race", "-o", walkeeperBin, "../cmd/walkeeper")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build walkeeper: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	printBenchTable(os.Stdout)
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoTarget is a repository the binary and the test both use.
type repoTarget struct {
	name string
	url  string
	env  []string // AWS_* and WALKEEPER_S3_* for S3
	open func(t *testing.T) *storage.Repository
}

// repoTargets returns a fresh local and a fresh S3 repository.
func repoTargets(t *testing.T) []repoTarget {
	// Under a directory the postgres user can enter: restore_command runs
	// wal-fetch as postgres (see giveToPostgres).
	local := filepath.Join(harness.MakeDir(t, "repo"), "repo")
	targets := []repoTarget{{
		name: "local",
		url:  local,
		open: func(t *testing.T) *storage.Repository {
			r, err := storage.Open(context.Background(), storage.Options{Repo: local})
			if err != nil {
				t.Fatal(err)
			}
			return r
		},
	}}
	return append(targets, s3Target(harness.StartS3(t)))
}

// s3Target is a repository in srv's bucket.
func s3Target(srv *harness.S3Server) repoTarget {
	bucket := srv.Bucket
	env := append(srv.Env(), "WALKEEPER_S3_ENDPOINT="+srv.Endpoint, "WALKEEPER_S3_PATH_STYLE=true")
	return repoTarget{
		name: "s3",
		url:  "s3://" + bucket + "/cluster",
		env:  env,
		open: func(t *testing.T) *storage.Repository {
			r, err := storage.Open(context.Background(), storage.Options{
				Repo: "s3://" + bucket + "/cluster",
				S3: storage.S3Options{Endpoint: srv.Endpoint, PathStyle: true, Region: "us-east-1",
					Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, "")},
			})
			if err != nil {
				t.Fatal(err)
			}
			return r
		},
	}
}

// giveToPostgres hands a local repository written by the (root) test to the
// postgres OS user, as if walkeeper had run as postgres, so restore_command
// (wal-fetch, run by the server) can read it.
func giveToPostgres(t testing.TB, dir string) {
	t.Helper()
	if os.Geteuid() != 0 || strings.HasPrefix(dir, "s3://") {
		return
	}
	if out, err := exec.Command("chown", "-R", "postgres:postgres", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown %s: %v %s", dir, err, out)
	}
}

// proc is a walkeeper process running in the background.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	done   chan struct{}
	err    error
	killed bool
}

type lockedWriter struct{ p *proc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

// startWalkeeper starts the binary with args; it is killed at cleanup.
func startWalkeeper(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startWalkeeperCmd(t, exec.Command(walkeeperBin, args...), env, args)
}

// startWalkeeperAsPostgres runs the binary as the postgres OS user (when the
// test runs as root), as an operator would run `stream` next to the server
// so that the server's restore_command can read a local repository.
func startWalkeeperAsPostgres(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(walkeeperBin, args...)
	return startWalkeeperCmd(t, cmd, append(env, asPostgres(t, cmd)...), args)
}

// asPostgres makes cmd run as the postgres OS user when the test runs as
// root and returns the environment that user needs (HOME).
func asPostgres(t *testing.T, cmd *exec.Cmd) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	return []string{"HOME=" + u.HomeDir}
}

func startWalkeeperCmd(t *testing.T, cmd *exec.Cmd, env, args []string) *proc {
	t.Helper()
	return startWalkeeperOwned(t, t, cmd, env, args)
}

// startWalkeeperOwned starts the process for t and kills it when owner
// (t or a parent test of t) ends, so a subtest can start a process later
// subtests use.
func startWalkeeperOwned(t, owner *testing.T, cmd *exec.Cmd, env, args []string) *proc {
	t.Helper()
	p := &proc{cmd: cmd, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "WALKEEPER_LOG_FORMAT=json", "GORACE=atexit_sleep_ms=0")
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = lockedWriter{p}, lockedWriter{p}
	if p.cmd.SysProcAttr == nil {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	p.cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	owner.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if owner.Failed() {
			t.Logf("walkeeper %s output:\n%s", strings.Join(args, " "), p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// stop sends sig and waits for the exit code.
func (p *proc) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("walkeeper did not exit after %v", sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// runWalkeeper runs the binary to completion.
func runWalkeeper(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runWalkeeperUser(t, false, env, args...)
}

// runWalkeeperAsPostgres runs the binary to completion as the postgres OS
// user (when the test runs as root), as an operator runs commands whose
// files the server reads or writes (archive_command into the repository).
func runWalkeeperAsPostgres(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runWalkeeperUser(t, true, env, args...)
}

func runWalkeeperUser(t *testing.T, postgres bool, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, walkeeperBin, args...)
	cmd.Env = append(os.Environ(), "WALKEEPER_LOG_FORMAT=json", "GORACE=atexit_sleep_ms=0")
	if postgres {
		cmd.Env = append(cmd.Env, asPostgres(t, cmd)...)
	}
	cmd.Env = append(cmd.Env, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

// waitFor polls cond until it is true or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// walObjects lists the repository's WAL objects by base name (without the
// codec extension): complete segments, partials and history files.
func walObjects(t *testing.T, repo *storage.Repository) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := repo.Backend().List(context.Background(), storage.WALPrefix, func(o storage.ObjectInfo) error {
		out[archive.NameOfKey(o.Key)] = o.Key
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// completeSegments returns the sorted names of complete segments stored.
func completeSegments(t *testing.T, repo *storage.Repository) []string {
	var names []string
	for name := range walObjects(t, repo) {
		if archive.KindOf(name) == archive.Segment {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// readObject reads and verifies one stored object.
func readObject(t *testing.T, repo *storage.Repository, key string) []byte {
	t.Helper()
	r, err := repo.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return data
}
