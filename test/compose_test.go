package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/walkeeper/walkeeper/test/harness"
)

// composeHAProxyArgs is the command deploy/compose/README.md shows.
var composeHAProxyArgs = []string{"haproxy-config", "--bind", "*", "--write-port", "5000", "--read-port", "5001",
	"--stats-port", "8404", "--max-lag", "16MB", "--check-interval", "2s", "--dns", "127.0.0.11:53",
	"--node", "primary=primary:5432,check=primary:8008",
	"--node", "replica1=replica1:5432,check=replica1:8008",
	"--node", "replica2=replica2:5432,check=replica2:8008"}

// TestComposeFiles checks what can be checked of deploy/compose without a
// Docker daemon: haproxy.cfg is exactly what `walkeeper haproxy-config`
// prints for the README's command and HAProxy accepts it; the compose files
// parse and wire the services the README describes; the scripts parse.
func TestComposeFiles(t *testing.T) {
	harness.RequireHAProxy(t)
	dir := "../deploy/compose"
	stdout, stderr, code := runWalkeeper(t, nil, composeHAProxyArgs...)
	if code != 0 {
		t.Fatalf("haproxy-config: exit %d: %s", code, stderr)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg) != stdout {
		t.Errorf("deploy/compose/haproxy.cfg is not what the README's haproxy-config command prints; regenerate it:\n%s", stdout)
	}
	bin, _ := harness.HAProxyPath()
	if out, err := exec.Command(bin, "-c", "-f", filepath.Join(dir, "haproxy.cfg")).CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s", err, out)
	}
	readme, _ := os.ReadFile(filepath.Join(dir, "README.md"))
	for _, a := range []string{"--dns 127.0.0.11:53", "--node replica2=replica2:5432,check=replica2:8008"} {
		if !strings.Contains(string(readme), a) {
			t.Errorf("README.md does not show %q", a)
		}
	}

	type service struct {
		Command     []string          `yaml:"command"`
		Entrypoint  []string          `yaml:"entrypoint"`
		NetworkMode string            `yaml:"network_mode"`
		Environment map[string]string `yaml:"environment"`
	}
	type composeFile struct {
		Services map[string]service `yaml:"services"`
	}
	parse := func(f string) map[string]service {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		var c composeFile
		if err := yaml.Unmarshal(data, &c); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		return c.Services
	}
	s3 := parse("docker-compose.s3.yml")
	s := parse("docker-compose.yml")
	if c := s["stream"].Command; len(c) < 2 || c[1] != "stream" {
		t.Errorf("stream service runs %v", c)
	}
	for _, r := range []string{"replica1", "replica2"} {
		if len(s[r].Entrypoint) == 0 || s[r].Entrypoint[0] != "replica-entrypoint.sh" || s[r].Environment["REPLICA_SLOT"] != r {
			t.Errorf("%s: entrypoint %v, slot %q", r, s[r].Entrypoint, s[r].Environment["REPLICA_SLOT"])
		}
		if !strings.HasPrefix(s3[r].Environment["WALKEEPER_REPO"], "${WALKEEPER_REPO") {
			t.Errorf("%s: the S3 variant does not set WALKEEPER_REPO", r)
		}
	}
	for _, node := range []string{"primary", "replica1", "replica2"} {
		h := s["health-"+node]
		if h.NetworkMode != "service:"+node || len(h.Command) < 2 || h.Command[1] != "health" {
			t.Errorf("health-%s: network_mode %q, command %v", node, h.NetworkMode, h.Command)
		}
	}
	for _, script := range []string{"primary-init.sh", "replica-entrypoint.sh", "backup-loop.sh", "../demo/demo.sh"} {
		if out, err := exec.Command("bash", "-n", filepath.Join(dir, script)).CombinedOutput(); err != nil {
			t.Errorf("%s: %v %s", script, err, out)
		}
	}
}
