package test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/walkeeper/walkeeper/monitor"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// runDoctor runs `walkeeper doctor --json` and returns the results by check
// name.
func runDoctor(t *testing.T, env []string, args ...string) (map[string]monitor.CheckResult, string, int) {
	t.Helper()
	stdout, stderr, code := runWalkeeper(t, env, append([]string{"doctor", "--json"}, args...)...)
	var results []monitor.CheckResult
	if err := json.Unmarshal([]byte(stdout), &results); err != nil {
		t.Fatalf("doctor --json (exit %d) printed %q: %v\n%s", code, stdout, err, stderr)
	}
	byName := map[string]monitor.CheckResult{}
	for _, r := range results {
		byName[r.Check] = r
	}
	if len(byName) != len(monitor.CheckNames()) {
		t.Fatalf("doctor reported %d checks, want %v", len(byName), monitor.CheckNames())
	}
	return byName, stderr, code
}

// wantStatus fails unless every named check has status want.
func wantStatus(t *testing.T, results map[string]monitor.CheckResult, want monitor.Level, names ...string) {
	t.Helper()
	for _, n := range names {
		if r := results[n]; r.Status != want {
			t.Errorf("check %s: %s (%s; hint %q), want %s", n, r.Status, r.Detail, r.Hint, want)
		}
	}
}

// TestDoctorNamesMisconfiguration: on a server with wal_level=minimal and
// no WAL senders, doctor exits 5 and names both settings with the fix.
func TestDoctorNamesMisconfiguration(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "doctor-minimal",
		ExtraConf: map[string]string{"wal_level": "minimal", "max_wal_senders": "0"}})
	if _, stderr, code := runWalkeeper(t, nil, "doctor"); code != 2 || !strings.Contains(stderr, "--dsn, --repo or both") {
		t.Errorf("doctor without --dsn and --repo: exit %d: %s", code, stderr)
	}
	stdout, stderr, code := runWalkeeper(t, nil, "doctor", "--dsn", c.DSN(harness.SuperUser))
	if code != 5 || !strings.Contains(stderr, "wal_level") {
		t.Fatalf("doctor on wal_level=minimal: exit %d, want 5: %s\n%s", code, stderr, stdout)
	}
	var walLevel string
	for _, line := range strings.Split(stdout, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == "wal_level" {
			walLevel = line
		}
	}
	if !strings.HasPrefix(walLevel, "FAIL") || !strings.Contains(walLevel, "minimal") ||
		!strings.Contains(stdout, "hint: set wal_level = replica and restart") {
		t.Errorf("wal_level line %q; report:\n%s", walLevel, stdout)
	}

	results, _, code := runDoctor(t, nil, "--dsn", c.DSN(harness.SuperUser))
	if code != 5 {
		t.Errorf("doctor --json: exit %d", code)
	}
	wantStatus(t, results, monitor.LevelFail, "wal_level", "max_wal_senders", "replication_connection")
	if h := results["replication_connection"].Hint; !strings.Contains(h, "max_wal_senders") {
		t.Errorf("replication_connection hint %q, want max_wal_senders", h)
	}
	wantStatus(t, results, monitor.LevelOK, "connect", "replication_role", "max_replication_slots")
	wantStatus(t, results, monitor.LevelSkip, "repository_identity", "repository_access", "repository_locks", "free_space")
}

// TestDoctorPassesOnAGoodSetup: a default server with the REPLICATION role
// and a local or S3 repository passes (exit 0, the S3 probe works and
// leaves nothing behind); the role without REPLICATION fails with the ALTER
// ROLE hint; a repository of another cluster fails repository_identity.
func TestDoctorPassesOnAGoodSetup(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "doctor"})
	dsn := c.DSN(harness.ReplicationUser)
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			results, stderr, code := runDoctor(t, target.env, "--dsn", dsn, "--repo", target.url)
			if code != 0 {
				t.Fatalf("doctor on a good setup: exit %d: %s\n%v", code, stderr, results)
			}
			wantStatus(t, results, monitor.LevelOK, "connect", "wal_level", "max_wal_senders", "max_replication_slots",
				"replication_connection", "replication_role", "slot", "repository_identity", "repository_access", "repository_locks")
			// PostgreSQL's default max_slot_wal_keep_size = -1 is a warning.
			wantStatus(t, results, monitor.LevelWarn, "max_slot_wal_keep_size")
			if target.name == "s3" {
				wantStatus(t, results, monitor.LevelSkip, "free_space")
				if d := results["repository_access"].Detail; !strings.Contains(d, "probe") {
					t.Errorf("repository_access: %q, want the probe", d)
				}
				if d := results["repository_locks"].Detail; !strings.Contains(d, "If-None-Match, If-Match and conditional deletes") {
					t.Errorf("repository_locks: %q, want versitygw's conditional writes", d)
				}
				var left []string
				target.open(t).Backend().List(context.Background(), "", func(o storage.ObjectInfo) error {
					left = append(left, o.Key)
					return nil
				})
				if len(left) != 0 {
					t.Errorf("the S3 probe left %v", left)
				}
			} else {
				wantStatus(t, results, monitor.LevelOK, "free_space")
			}

			// A repository that belongs to another cluster.
			if _, err := target.open(t).Init(context.Background(), storage.Config{SystemIdentifier: "1234567890", PGMajorVersion: 15, WALSegmentSize: 16 << 20}); err != nil {
				t.Fatal(err)
			}
			results, _, code = runDoctor(t, target.env, "--dsn", dsn, "--repo", target.url)
			wantStatus(t, results, monitor.LevelFail, "repository_identity")
			if code != 5 || !strings.Contains(results["repository_identity"].Detail, "1234567890") {
				t.Errorf("foreign repository: exit %d, %+v", code, results["repository_identity"])
			}
		})
	}

	results, stderr, code := runDoctor(t, nil, "--dsn", c.DSN(harness.NoReplicationUser))
	if code != 5 || !strings.Contains(stderr, "replication_role") {
		t.Errorf("role without REPLICATION: exit %d: %s", code, stderr)
	}
	wantStatus(t, results, monitor.LevelFail, "replication_role", "replication_connection")
	if h := results["replication_role"].Hint; !strings.Contains(h, `ALTER ROLE "noreplication" REPLICATION`) {
		t.Errorf("replication_role hint %q", h)
	}
}
