package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHAProxyConfigNodesFromEverywhere: --node repeated, a TOML array in the
// config file and the environment all give the same nodes, although
// urfave/cli splits slice values at commas.
func TestHAProxyConfigNodesFromEverywhere(t *testing.T) {
	bin := buildBinary(t)
	a, b := "a=10.0.0.1:5432,check=10.0.0.1:8008", "b=10.0.0.2:5432,check=8008"
	cfg := filepath.Join(t.TempDir(), "walkeeper.toml")
	os.WriteFile(cfg, []byte("node = [\""+a+"\", \""+b+"\"]\nmax-lag = \"16MB\"\n"), 0o600)
	for name, tc := range map[string]struct {
		env  []string
		args []string
	}{
		"flags":       {nil, []string{"haproxy-config", "--node", a, "--node", b, "--max-lag", "16MB"}},
		"config file": {nil, []string{"haproxy-config", "--config", cfg}},
		"environment": {[]string{"WALKEEPER_NODE=" + a + "," + b, "WALKEEPER_MAX_LAG=16MB"}, []string{"haproxy-config"}},
	} {
		stdout, stderr, code := run(t, bin, tc.env, tc.args...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", name, code, stderr)
		}
		for _, want := range []string{
			"server a 10.0.0.1:5432 check port 8008",
			"server b 10.0.0.2:5432 check port 8008",
			"GET /replica?max-lag=16MB",
		} {
			if strings.Count(stdout, want) == 0 {
				t.Errorf("%s: no %q in\n%s", name, want, stdout)
			}
		}
		if n := strings.Count(stdout, "    server "); n != 4 {
			t.Errorf("%s: %d server lines, want 4 (2 nodes x 2 backends)", name, n)
		}
	}
}

func TestHealthAndHAProxyConfigUsageErrors(t *testing.T) {
	bin := buildBinary(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"haproxy-config"}, "no nodes"},
		{[]string{"haproxy-config", "--node", "a=h:5432"}, "missing check="},
		{[]string{"haproxy-config", "--node", "a=h:5432,check=1", "--max-lag", "lots"}, "invalid max-lag"},
		{[]string{"haproxy-config", "--node", "a=h:5432,check=1", "--read-port", "5000"}, "use different ports"},
		{[]string{"health", "--dsn", "port=notaport password=hunter2"}, "invalid --dsn"},
		{[]string{"health", "--dsn", "host=x", "--check-timeout", "0s"}, "check timeout"},
	} {
		_, stderr, code := run(t, bin, nil, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "hunter2") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, stderr, exitUsage, tc.want)
		}
	}
}
