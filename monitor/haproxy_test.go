package monitor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

func TestParseHAProxyNode(t *testing.T) {
	for in, want := range map[string]HAProxyNode{
		"db1=10.0.0.1:5432,check=10.0.0.1:8008": {"db1", "10.0.0.1", 5432, "10.0.0.1", 8008},
		"db-2=db2.example:5433,check=8009":      {"db-2", "db2.example", 5433, "db2.example", 8009},
		"v6=[::1]:5432,check=[::1]:8008":        {"v6", "::1", 5432, "::1", 8008},
	} {
		got, err := ParseHAProxyNode(in)
		if err != nil || got != want {
			t.Errorf("ParseHAProxyNode(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "db1", "db1=10.0.0.1:5432", "db 1=h:5432,check=8008", "db1=h:0,check=8008",
		"db1=h:5432,check=h:99999", "db1=h,check=8008", "db1=h:5432,check=8008,weight=3", "=h:5432,check=8008"} {
		if _, err := ParseHAProxyNode(in); err == nil {
			t.Errorf("ParseHAProxyNode(%q) accepted", in)
		}
	}
}

func testOptions() HAProxyOptions {
	return HAProxyOptions{
		Nodes: []HAProxyNode{
			{"a", "127.0.0.1", 5432, "127.0.0.1", 8008},
			{"b", "127.0.0.2", 5433, "::1", 8009},
			// A container name that does not resolve yet, agent beside it.
			{"c", "pg-c.invalid", 5434, "pg-c.invalid", 8010},
		},
		Bind: "127.0.0.1", WritePort: 5000, ReadPort: 5001, StatsPort: 8404,
		MaxLag: &MaxLag{Bytes: 16 << 20}, CheckInterval: 200 * time.Millisecond, Fall: 2, Rise: 1,
	}
}

func TestHAProxyConfigRejectsBadOptions(t *testing.T) {
	for name, mod := range map[string]func(*HAProxyOptions){
		"no nodes":       func(o *HAProxyOptions) { o.Nodes = nil },
		"duplicate node": func(o *HAProxyOptions) { o.Nodes[1].Name = "a" },
		"same ports":     func(o *HAProxyOptions) { o.ReadPort = o.WritePort },
		"stats port":     func(o *HAProxyOptions) { o.StatsPort = o.ReadPort },
		"bad port":       func(o *HAProxyOptions) { o.WritePort = 70000 },
		"interval":       func(o *HAProxyOptions) { o.CheckInterval = 0 },
		"fall":           func(o *HAProxyOptions) { o.Fall = 0 },
		"bind":           func(o *HAProxyOptions) { o.Bind = "a b" },
	} {
		o := testOptions()
		mod(&o)
		if err := WriteHAProxyConfig(&strings.Builder{}, o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestHAProxyConfigIsValid renders configurations and has HAProxy itself
// check them (haproxy -c).
func TestHAProxyConfigIsValid(t *testing.T) {
	harness.RequireHAProxy(t)
	bin, _ := harness.HAProxyPath()
	noLag := testOptions()
	noLag.MaxLag, noLag.StatsPort, noLag.Bind = nil, 0, ""
	byTime := testOptions()
	byTime.MaxLag = &MaxLag{Time: 5 * time.Second, ByTime: true}
	withDNS := testOptions()
	withDNS.DNS = "127.0.0.11:53"
	for name, tc := range map[string]struct {
		o    HAProxyOptions
		want []string
	}{
		"bytes": {testOptions(), []string{
			"option httpchk GET /replica?max-lag=16MB", "option httpchk GET /primary",
			"server b 127.0.0.2:5433 check addr [::1] port 8009",
			"server c pg-c.invalid:5434 check port 8010", "server a 127.0.0.1:5432 check port 8008", "bind 127.0.0.1:8404",
			"use_backend pg_replicas if { nbsrv(pg_replicas) gt 0 }",
			"default-server inter 200ms fall 2 rise 1 on-marked-down shutdown-sessions"}},
		"time": {byTime, []string{"GET /replica?max-lag=5s"}},
		"dns": {withDNS, []string{"resolvers dns\n    nameserver dns1 127.0.0.11:53",
			"init-addr last,libc,none resolvers dns resolve-prefer ipv4"}},
		"no lag": {noLag, []string{"GET /replica\n", "bind :5000"}},
	} {
		var b strings.Builder
		if err := WriteHAProxyConfig(&b, tc.o); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cfg := b.String()
		for _, w := range tc.want {
			if !strings.Contains(cfg, w) {
				t.Errorf("%s: no %q in\n%s", name, w, cfg)
			}
		}
		if name == "no lag" && strings.Contains(cfg, "listen stats") {
			t.Errorf("stats section without a stats port")
		}
		file := filepath.Join(t.TempDir(), "haproxy.cfg")
		os.WriteFile(file, []byte(cfg), 0o600)
		if out, err := exec.Command(bin, "-c", "-f", file).CombinedOutput(); err != nil {
			t.Errorf("%s: haproxy -c: %v\n%s\n%s", name, err, out, cfg)
		}
	}
}
