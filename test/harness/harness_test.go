package harness_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walkeeper/walkeeper/test/harness"
)

func TestFreePortUnique(t *testing.T) {
	seen := map[int]bool{}
	for range 20 {
		p := harness.FreePort(t)
		if p <= 0 || p > 65535 || seen[p] {
			t.Fatalf("bad or repeated port %d", p)
		}
		seen[p] = true
	}
}

func TestMakeDir(t *testing.T) {
	harness.RequirePG(t)
	var dir string
	t.Run("create", func(t *testing.T) {
		dir = harness.MakeDir(t, "make dir/../x")
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("mode = %v, want 0755", fi.Mode().Perm())
		}
		if filepath.Dir(dir) != filepath.Clean(os.TempDir()) {
			t.Errorf("dir %s not directly under %s", dir, os.TempDir())
		}
		if os.Geteuid() == 0 {
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid == 0 {
				t.Errorf("dir owned by root, want postgres")
			}
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory %s not removed at cleanup: %v", dir, err)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := harness.StartCluster(t, harness.ClusterOptions{
		Name:      "primary",
		ExtraConf: map[string]string{"application_name": "it's a test"},
	})

	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one'), (2, 'two')")
	if got := c.QueryString(t, "SELECT v FROM t WHERE id = $1", 2); got != "two" {
		t.Errorf("v = %q, want two", got)
	}
	for setting, want := range map[string]string{
		"data_checksums":   "on",
		"wal_level":        "replica",
		"fsync":            "on",
		"listen_addresses": "127.0.0.1",
		"application_name": "it's a test",
	} {
		if got := c.QueryString(t, "SELECT current_setting($1)", setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	if v := c.QueryString(t, "SHOW server_version_num"); os.Getenv(harness.EnvPGBin) == "" && !strings.HasPrefix(v, "15") {
		t.Errorf("server_version_num = %s, want 15xxxx", v)
	}
	if got := c.QueryRows(t, "SELECT rolname, rolreplication, rolsuper FROM pg_roles WHERE rolname IN ($1, $2) ORDER BY 1",
		harness.ReplicationUser, harness.NoReplicationUser); !slices.EqualFunc(got, [][]string{
		{"noreplication", "f", "f"}, {"walkeeper", "t", "f"},
	}, slices.Equal) {
		t.Errorf("roles = %v", got)
	}

	// TCP connections need the password.
	for _, user := range []string{harness.SuperUser, harness.ReplicationUser, harness.NoReplicationUser} {
		conn, err := pgx.Connect(ctx, c.DSN(user))
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		var who string
		if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != user {
			t.Errorf("current_user = %q, %v; want %s", who, err, user)
		}
		conn.Close(ctx)
	}
	bad := strings.Replace(c.DSN(harness.ReplicationUser), c.Password(), "wrong", 1)
	if conn, err := pgx.Connect(ctx, bad); err == nil {
		conn.Close(ctx)
		t.Errorf("connecting with a wrong password succeeded")
	}

	// Physical replication connections: allowed for walkeeper only.
	rc, err := pgconn.Connect(ctx, c.ReplicationDSN(harness.ReplicationUser))
	if err != nil {
		t.Fatalf("replication connect: %v", err)
	}
	res, err := rc.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		t.Errorf("IDENTIFY_SYSTEM: %v %v", res, err)
	}
	rc.Close(ctx)
	if rc, err := pgconn.Connect(ctx, c.ReplicationDSN(harness.NoReplicationUser)); err == nil {
		rc.Close(ctx)
		t.Errorf("replication connection as %s succeeded", harness.NoReplicationUser)
	}

	// pgbench.
	c.Pgbench(t, "-i", "-s", "1", "-q")
	c.Pgbench(t, "-t", "20", "-c", "2")
	if got := c.QueryString(t, "SELECT count(*) FROM pgbench_accounts"); got != "100000" {
		t.Errorf("pgbench_accounts rows = %s", got)
	}
	out, err := c.RunAsPostgres(t, "pg_controldata", c.DataDir())
	if err != nil || !strings.Contains(out, "Data page checksum version:           1") {
		t.Errorf("pg_controldata: %v\n%s", err, out)
	}

	// Crash and restart on the same port.
	c.Exec(t, "INSERT INTO t VALUES (3, 'three')")
	port := c.Port()
	c.Kill(t)
	if c.Running() {
		t.Fatal("running after Kill")
	}
	c.Start(t)
	if c.Port() != port || c.QueryString(t, "SELECT v FROM t WHERE id = 3") != "three" {
		t.Errorf("data or port lost across crash restart")
	}
	c.Stop(t)
	c.Start(t)
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	// Standby and promotion.
	s := c.CreateStandby(t, "standby")
	if s.Port() == c.Port() || s.DataDir() == c.DataDir() {
		t.Fatalf("standby shares port or data dir with primary")
	}
	c.Exec(t, "INSERT INTO t VALUES (4, 'four')")
	lsn := c.QueryString(t, "SELECT pg_current_wal_insert_lsn()")
	waitFor(t, 30*time.Second, func() bool {
		return s.QueryString(t, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn) == "t"
	})
	if got := s.QueryString(t, "SELECT v FROM t WHERE id = 4"); got != "four" {
		t.Errorf("standby v = %q", got)
	}
	if got := s.QueryString(t, "SELECT pg_is_in_recovery()"); got != "t" {
		t.Fatalf("standby not in recovery")
	}
	s.Promote(t)
	s.Exec(t, "CHECKPOINT")
	if got := s.QueryString(t, "SELECT timeline_id FROM pg_control_checkpoint()"); got != "2" {
		t.Errorf("timeline after promotion = %s, want 2", got)
	}
	s.Exec(t, "INSERT INTO t VALUES (5, 'five')")
	if _, err := os.Stat(filepath.Join(s.Dir(), "postgres.log")); err != nil || s.LogFile() != filepath.Join(s.Dir(), "postgres.log") {
		t.Errorf("standby log file: %v", err)
	}
}

func TestS3(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := harness.StartS3(t)
	if !strings.HasPrefix(srv.Bucket, "walkeeper-test-") {
		t.Fatalf("bucket = %q", srv.Bucket)
	}
	env := srv.Env()
	for _, want := range []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey, "AWS_REGION=us-east-1"} {
		if !slices.Contains(env, want) {
			t.Errorf("Env() lacks %s", want)
		}
	}

	client := srv.Client()
	body := []byte("hello, walkeeper\n")
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(srv.Bucket),
		Key:    aws.String("dir/obj.txt"),
		Body:   bytes.NewReader(body),
	}); err != nil {
		t.Fatalf("PutObject: %v", err)
	}
	got, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String("dir/obj.txt")})
	if err != nil {
		t.Fatalf("GetObject: %v", err)
	}
	data, err := io.ReadAll(got.Body)
	got.Body.Close()
	if err != nil || !bytes.Equal(data, body) {
		t.Fatalf("GetObject body = %q, %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, srv.Bucket, "dir", "obj.txt")); err != nil {
		t.Errorf("object not in posix backend: %v", err)
	}

	second := srv.NewBucket(t)
	lb, err := client.ListBuckets(ctx, &s3.ListBucketsInput{})
	if err != nil {
		t.Fatalf("ListBuckets: %v", err)
	}
	var names []string
	for _, b := range lb.Buckets {
		names = append(names, aws.ToString(b.Name))
	}
	if !slices.Contains(names, srv.Bucket) || !slices.Contains(names, second) {
		t.Errorf("ListBuckets = %v, want %s and %s", names, srv.Bucket, second)
	}

	// Wrong credentials are rejected.
	bad := *srv
	bad.SecretKey = "wrong"
	if _, err := bad.Client().ListBuckets(ctx, &s3.ListBucketsInput{}); err == nil {
		t.Errorf("ListBuckets with a wrong secret succeeded")
	}
}

// waitFor polls cond until it is true or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServerTools: a server without its own client tools (the npm
// packages ship none) borrows PGBinDir's psql and pgbench, which work for
// SQL against newer servers, and no version-specific tool.
func TestServerTools(t *testing.T) {
	srv := &harness.Server{Major: 17, Version: "17.10", BinDir: t.TempDir()}
	for _, name := range []string{"psql", "pgbench"} {
		if p, err := srv.Tool(name); err != nil || p != harness.PGBin(name) {
			t.Errorf("Tool(%s) = %q, %v; want %s", name, p, err, harness.PGBin(name))
		}
	}
	for _, name := range []string{"pg_waldump", "pg_receivewal", "pg_verifybackup", "pg_basebackup"} {
		if p, err := srv.Tool(name); err == nil || !strings.Contains(err.Error(), "PostgreSQL 17") {
			t.Errorf("Tool(%s) = %q, %v; want an error naming PostgreSQL 17", name, p, err)
		}
	}
}

// TestServersOfEveryMajor starts a cluster of each major the harness can
// find (skipped, or failed under CI, when one is missing) and checks the
// server it runs and that its library directory is in use.
func TestServersOfEveryMajor(t *testing.T) {
	for _, major := range []int{15, 16, 17, 18} {
		t.Run(strconv.Itoa(major), func(t *testing.T) {
			srv := harness.RequireServer(t, major)
			c := harness.StartCluster(t, harness.ClusterOptions{Name: "major" + strconv.Itoa(major), Major: major})
			if got := c.QueryString(t, "SELECT current_setting('server_version_num')::int / 10000"); got != strconv.Itoa(major) || c.Major() != major {
				t.Fatalf("asked for PostgreSQL %d, runs %s (harness says %d)", major, got, c.Major())
			}
			if !strings.HasPrefix(c.QueryString(t, "SHOW server_version"), srv.Version) {
				t.Errorf("server_version %q, harness found %s", c.QueryString(t, "SHOW server_version"), srv.Version)
			}
			// The borrowed client works against it.
			if out := c.Pgbench(t, "-i", "-s", "1", "-q"); !strings.Contains(out, "done") {
				t.Errorf("pgbench -i: %s", out)
			}
		})
	}
}
