package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// S3Region is the region of every S3Server.
const S3Region = "us-east-1"

// S3Server is a running Versity S3 Gateway (versitygw) with a posix backend,
// listening on 127.0.0.1 and owned by one test. Clients must use path-style
// addressing.
type S3Server struct {
	// Endpoint is the base URL, e.g. "http://127.0.0.1:40123".
	Endpoint string
	// AccessKey and SecretKey are the gateway's root credentials (random
	// per server).
	AccessKey, SecretKey string
	// Region is S3Region.
	Region string
	// Bucket is a freshly created, empty bucket with a random name.
	Bucket string
	// Dir is the posix backend root: each bucket is a subdirectory. Tests
	// may inspect it but should not write to it.
	Dir string

	logFile string
	proc    *process
}

// StartS3 starts a versitygw posix gateway on a free port with random root
// credentials, waits until it answers HTTP requests and creates a bucket
// with a fresh random name (S3Server.Bucket). The gateway is stopped and its
// directory removed when the test ends.
//
// The gateway is started as
//
//	versitygw --access KEY --secret SECRET --region us-east-1 \
//	    --port 127.0.0.1:PORT --quiet posix DIR
//
// with root credentials passed as flags; they are random and only valid for
// this throw-away server. VGW_* and ROOT_* environment variables are
// removed from its environment so that they cannot change its behavior.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	RequireS3(t)
	bin, _ := VersityGWPath()

	base, err := os.MkdirTemp("", "walkeeper-s3-")
	if err != nil {
		t.Fatalf("harness: create S3 directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(base); err != nil {
			t.Errorf("harness: remove %s: %v", base, err)
		}
	})
	root := filepath.Join(base, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatalf("harness: %v", err)
	}
	port := FreePort(t)
	s := &S3Server{
		Endpoint:  "http://127.0.0.1:" + strconv.Itoa(port),
		AccessKey: "WK" + strings.ToUpper(randomHex(9)),
		SecretKey: randomHex(20),
		Region:    S3Region,
		Dir:       root,
		logFile:   filepath.Join(base, "versitygw.log"),
	}

	logf, err := os.OpenFile(s.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("harness: open versitygw log: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin,
		"--access", s.AccessKey,
		"--secret", s.SecretKey,
		"--region", s.Region,
		"--port", "127.0.0.1:"+strconv.Itoa(port),
		"--quiet",
		"posix", root)
	cmd.Dir = base
	cmd.Env = childEnv(nil, func(k string) bool {
		return strings.HasPrefix(k, "VGW_") || strings.HasPrefix(k, "ROOT_")
	})
	cmd.Stdout = logf
	cmd.Stderr = logf
	p, err := startProcess(cmd, nil)
	if err != nil {
		t.Fatalf("harness: start versitygw: %v", err)
	}
	s.proc = p
	t.Cleanup(func() {
		// SIGTERM lets versitygw shut down; it is killed after a timeout.
		// The gateway gives its own connections up to 10 s to finish (its
		// shutDownDuration), so it gets longer than that. Needing the kill
		// is logged, not failed: a gateway slow to close is no fault of
		// the code under test, whose results are checked by then; failing
		// to kill it is.
		err := p.stop(syscall.SIGTERM, 20*time.Second)
		if err != nil && !errors.Is(err, errKilled) {
			t.Errorf("harness: stop versitygw: %v", err)
		} else if err != nil {
			t.Logf("harness: stop versitygw: %v", err)
		}
		if t.Failed() {
			t.Logf("harness: last lines of %s:\n%s", s.logFile, tailFile(s.logFile, 40))
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.waitReady(ctx); err != nil {
		t.Fatalf("harness: versitygw: %v\nlast lines of %s:\n%s", err, s.logFile, tailFile(s.logFile, 40))
	}
	s.Bucket = s.NewBucket(t)
	return s
}

// waitReady waits until the gateway answers an HTTP request (any status:
// an anonymous request is expected to be refused with 403).
func (s *S3Server) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	var lastErr error
	for delay := 20 * time.Millisecond; ; delay = min(delay*2, 500*time.Millisecond) {
		if s.proc.exited() {
			return fmt.Errorf("versitygw exited: %v", s.proc.exitErr())
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last error: %v)", ctx.Err(), lastErr)
		case <-s.proc.done:
		case <-time.After(delay):
		}
	}
}

// Env returns the environment variables AWS SDKs and tools read for
// credentials and region: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_REGION (us-east-1). It also sets AWS_EC2_METADATA_DISABLED=true so an
// SDK never waits for an instance metadata service. The endpoint is not
// included; use Endpoint with path-style addressing.
func (s *S3Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + s.Region,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Client returns an S3 client for this server: static root credentials,
// BaseEndpoint = Endpoint, path-style addressing. It reads no shared AWS
// configuration or environment.
func (s *S3Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
}

// CreateBucket creates the bucket name with a signed CreateBucket request
// and fails the test on error.
func (s *S3Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("harness: create bucket %s: %v", name, err)
	}
}

// NewBucket creates a bucket with a fresh random name and returns the name.
func (s *S3Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := "walkeeper-test-" + randomHex(8)
	s.CreateBucket(t, name)
	return name
}

// Pause stops the gateway process (SIGSTOP): connections are accepted by the
// kernel but nothing answers, as with a hung storage service. Resume
// continues it; cleanup resumes it too.
func (s *S3Server) Pause(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.proc.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("harness: pause versitygw: %v", err)
	}
	t.Cleanup(func() { syscall.Kill(s.proc.cmd.Process.Pid, syscall.SIGCONT) })
}

// Resume continues a paused gateway.
func (s *S3Server) Resume(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.proc.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatalf("harness: resume versitygw: %v", err)
	}
}
