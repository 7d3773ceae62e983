package test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walkeeper/walkeeper/test/harness"
)

// haNode is a PostgreSQL server with its walkeeper health agent.
type haNode struct {
	name      string
	c         *harness.Cluster
	checkPort int
	agentProc *proc
}

// haSetup is the topology of TestHAProxyReadScaling.
type haSetup struct {
	nodes                          []*haNode
	writePort, readPort, statsPort int
	password                       string
}

// serverStatus reads one server's status (UP, DOWN, "UP 1/2", ...) from
// HAProxy's stats CSV.
func (s *haSetup) serverStatus(backend, server string) string {
	st, err := haproxyStatus(s.statsPort)
	if err != nil {
		return "stats: " + err.Error()
	}
	if v, ok := st[backend+"/"+server]; ok {
		return v
	}
	return "stats: no row for " + backend + "/" + server
}

// haproxyStatus reads every row's status (UP, DOWN, "UP 1/2", ...) from
// HAProxy's stats CSV on statsPort, keyed "backend/server" (the FRONTEND
// and BACKEND rows included, under those names).
func haproxyStatus(statsPort int) (map[string]string, error) {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/;csv", statsPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	r := csv.NewReader(resp.Body)
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		return nil, fmt.Errorf("stats CSV: %v", err)
	}
	col := -1
	for i, h := range rows[0] {
		if h == "status" {
			col = i
		}
	}
	st := map[string]string{}
	for _, row := range rows[1:] {
		if col >= 0 && len(row) > col && len(row) > 1 {
			st[row[0]+"/"+row[1]] = row[col]
		}
	}
	return st, nil
}

// waitStatus waits until HAProxy shows every named server of backend in
// state want.
func (s *haSetup) waitStatus(t *testing.T, backend, want string, servers ...string) {
	t.Helper()
	for _, srv := range servers {
		waitFor(t, time.Minute, backend+"/"+srv+" "+want, func() bool { return s.serverStatus(backend, srv) == want })
	}
}

// serverPort connects through HAProxy's port and returns the port of the
// PostgreSQL server that answered.
func (s *haSetup) serverPort(port int) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", url.QueryEscape(s.password), port))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var p int
	err = conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&p)
	return p, err
}

// reads opens n connections through the read port and counts the answers
// per server port; every failure fails the test.
func (s *haSetup) reads(t *testing.T, n int) map[int]int {
	t.Helper()
	seen := map[int]int{}
	for i := 0; i < n; i++ {
		p, err := s.serverPort(s.readPort)
		if err != nil {
			t.Fatalf("read %d of %d through HAProxy failed: %v", i+1, n, err)
		}
		seen[p]++
	}
	return seen
}

// agent asks a node's health agent and returns the status and JSON body.
func (n *haNode) agent(t *testing.T, path string) (int, map[string]any) {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", n.checkPort, path))
	if err != nil {
		t.Fatalf("health agent of %s: %v", n.name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var body map[string]any
	json.Unmarshal(b, &body)
	if body == nil {
		body = map[string]any{"raw": string(b)}
	}
	return resp.StatusCode, body
}

// TestHAProxyReadScaling runs a primary and two replicas seeded with
// walkeeper backup + restore --as-replica, one walkeeper health agent per
// node and HAProxy with the configuration walkeeper haproxy-config prints,
// and checks the routing through failures: writes reach the primary, reads
// spread over fresh replicas, a stopped or lagging replica leaves the
// rotation, no replica means reads go to the primary, and the write port
// follows a promotion.
func TestHAProxyReadScaling(t *testing.T) {
	harness.RequireHAProxy(t)
	primary := harness.StartCluster(t, harness.ClusterOptions{Name: "ha-primary"})
	repoDir := filepath.Join(harness.MakeDir(t, "ha-repo"), "repo")
	startWalkeeperAsPostgres(t, nil, "stream", "--repo", repoDir, "--dsn", primary.DSN(harness.ReplicationUser), "--slot", "wk")
	// The stream (as postgres) writes walkeeper.json before it streams; a
	// backup (as root) that came first would create it root-only, and the
	// replicas' restore_command could not read the repository (restore
	// refuses that).
	waitFor(t, time.Minute, "the stream to start", func() bool {
		return primary.QueryString(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wk' AND active") == "1"
	})
	primary.Exec(t, "CREATE TABLE routed (id int PRIMARY KEY, note text); CREATE TABLE filler (id int, pad text)")
	runBackup(t, nil, repoDir, primary.DSN(harness.ReplicationUser))

	s := &haSetup{password: primary.Password()}
	s.nodes = append(s.nodes, &haNode{name: "primary", c: primary})
	for _, name := range []string{"replica1", "replica2"} {
		r := primary.RestoreTarget(t, name)
		conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s sslmode=disable application_name=%s",
			primary.Port(), harness.ReplicationUser, primary.Password(), name)
		_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", r.DataDir(), "--as-replica",
			"--dsn", primary.DSN(harness.ReplicationUser), "--primary-conninfo", conninfo, "--slot", name, "--port", strconv.Itoa(r.Port()))
		if code != 0 {
			t.Fatalf("restore --as-replica %s: exit %d: %s", name, code, stderr)
		}
		r.SetEnv([]string{raceEnv})
		r.StartRestored(t)
		s.nodes = append(s.nodes, &haNode{name: name, c: r})
	}
	p, r1, r2 := s.nodes[0], s.nodes[1], s.nodes[2]
	for _, r := range []*haNode{r1, r2} {
		waitFor(t, 2*time.Minute, r.name+" to stream", func() bool {
			return r.c.QueryString(t, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), '')") == "streaming"
		})
	}

	args := []string{"haproxy-config", "--bind", "127.0.0.1", "--max-lag", "1MB", "--check-interval", "200ms", "--fall", "2", "--rise", "1"}
	for _, n := range s.nodes {
		n.checkPort = harness.FreePort(t)
		n.agentProc = startWalkeeper(t, nil, "health", "--listen", "127.0.0.1:"+strconv.Itoa(n.checkPort), "--dsn", n.c.DSN(harness.SuperUser), "--check-timeout", "1s")
		args = append(args, "--node", fmt.Sprintf("%s=127.0.0.1:%d,check=127.0.0.1:%d", n.name, n.c.Port(), n.checkPort))
	}
	s.writePort, s.readPort, s.statsPort = harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	args = append(args, "--write-port", strconv.Itoa(s.writePort), "--read-port", strconv.Itoa(s.readPort), "--stats-port", strconv.Itoa(s.statsPort))
	cfg, stderr, code := runWalkeeper(t, nil, args...)
	if code != 0 {
		t.Fatalf("haproxy-config: exit %d: %s", code, stderr)
	}
	t.Logf("walkeeper %s\n%s", strings.Join(args, " "), cfg)
	for _, n := range s.nodes {
		waitFor(t, time.Minute, "the health agent of "+n.name, func() bool {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", n.checkPort))
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	harness.StartHAProxy(t, cfg, s.writePort, s.readPort, s.statsPort)
	s.waitStatus(t, "pg_primary", "UP", "primary")
	s.waitStatus(t, "pg_primary", "DOWN", "replica1", "replica2")
	s.waitStatus(t, "pg_replicas", "UP", "replica1", "replica2")
	s.waitStatus(t, "pg_replicas", "DOWN", "primary")

	// The agent's answers themselves.
	if code, body := p.agent(t, "/primary"); code != 200 || body["role"] != "primary" {
		t.Errorf("primary /primary: %d %v", code, body)
	}
	if code, body := r1.agent(t, "/primary"); code != 503 || body["role"] != "replica" {
		t.Errorf("replica /primary: %d %v", code, body)
	}
	if code, body := r1.agent(t, "/replica?max-lag=10s"); code != 200 || body["streaming"] != true || body["timeline"] != float64(1) {
		t.Errorf("replica /replica?max-lag=10s: %d %v", code, body)
	}
	for _, bad := range []string{"/replica?max-lag=lots", "/primary?max-lag=1MB", "/replica?lag=1"} {
		if code, _ := r1.agent(t, bad); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}

	t.Run("writes reach the primary", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", url.QueryEscape(s.password), s.writePort))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "INSERT INTO routed VALUES (1, 'through the write port')"); err != nil {
			t.Fatal(err)
		}
		if got := p.c.QueryString(t, "SELECT note FROM routed WHERE id = 1"); got != "through the write port" {
			t.Errorf("the primary has %q", got)
		}
	})

	t.Run("reads spread over the replicas", func(t *testing.T) {
		seen := s.reads(t, 10)
		if seen[r1.c.Port()] == 0 || seen[r2.c.Port()] == 0 || seen[p.c.Port()] != 0 {
			t.Errorf("answers per port %v: want both replicas (%d, %d), not the primary (%d)", seen, r1.c.Port(), r2.c.Port(), p.c.Port())
		}
	})

	t.Run("a stopped replica leaves the rotation", func(t *testing.T) {
		r2.c.Stop(t)
		if code, body := r2.agent(t, "/replica"); code != 503 || body["database"] != "down" {
			t.Errorf("agent of a stopped server: %d %v", code, body)
		}
		if code, body := r2.agent(t, "/health"); code != 200 || body["database"] != "down" {
			t.Errorf("/health of a stopped server: %d %v", code, body)
		}
		s.waitStatus(t, "pg_replicas", "DOWN", "replica2")
		if seen := s.reads(t, 10); seen[r1.c.Port()] != 10 {
			t.Errorf("answers per port %v: want all from replica1 (%d)", seen, r1.c.Port())
		}
		r2.c.Start(t)
		s.waitStatus(t, "pg_replicas", "UP", "replica2")
	})

	t.Run("a replica whose replay is paused leaves the rotation", func(t *testing.T) {
		r1.c.Exec(t, "SELECT pg_wal_replay_pause()")
		// Over 1MB of WAL: replica1 receives it but does not replay it.
		p.c.Exec(t, "INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g")
		s.waitStatus(t, "pg_replicas", "DOWN", "replica1")
		code, body := r1.agent(t, "/replica?max-lag=1MB")
		if lag, _ := body["lag_bytes"].(float64); code != 503 || body["replay_paused"] != true || lag <= 1<<20 {
			t.Errorf("paused replica: %d %v", code, body)
		}
		if seen := s.reads(t, 6); seen[r2.c.Port()] != 6 {
			t.Errorf("answers per port %v: want all from replica2 (%d)", seen, r2.c.Port())
		}
		r1.c.Exec(t, "SELECT pg_wal_replay_resume()")
		s.waitStatus(t, "pg_replicas", "UP", "replica1")
		if seen := s.reads(t, 10); seen[r1.c.Port()] == 0 || seen[r2.c.Port()] == 0 {
			t.Errorf("answers per port %v: want both replicas again", seen)
		}
	})

	t.Run("reads fall back to the primary without replicas", func(t *testing.T) {
		r1.c.Stop(t)
		r2.c.Stop(t)
		s.waitStatus(t, "pg_replicas", "DOWN", "replica1", "replica2")
		if seen := s.reads(t, 6); seen[p.c.Port()] != 6 {
			t.Errorf("answers per port %v: want all from the primary (%d)", seen, p.c.Port())
		}
		r1.c.Start(t)
		s.waitStatus(t, "pg_replicas", "UP", "replica1")
		if seen := s.reads(t, 4); seen[r1.c.Port()] != 4 {
			t.Errorf("answers per port %v: want all from replica1 (%d) again", seen, r1.c.Port())
		}
	})

	t.Run("the write port follows a promotion", func(t *testing.T) {
		p.c.Stop(t)
		s.waitStatus(t, "pg_primary", "DOWN", "primary")
		r1.c.Promote(t)
		s.waitStatus(t, "pg_primary", "UP", "replica1")
		port, err := s.serverPort(s.writePort)
		if err != nil || port != r1.c.Port() {
			t.Fatalf("the write port reached port %d (%v), want the promoted replica1 (%d)", port, err, r1.c.Port())
		}
		if code, body := r1.agent(t, "/primary"); code != 200 || body["timeline"] != float64(2) {
			t.Errorf("promoted replica1 /primary: %d %v", code, body)
		}
	})

	if code := r1.agentProc.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("health agent exit code %d after SIGTERM, want 0", code)
	}
}
