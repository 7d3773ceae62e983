package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/walkeeper/walkeeper/drill"
	"github.com/walkeeper/walkeeper/monitor"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
	"github.com/walkeeper/walkeeper/walstream"
)

// scrape fetches a Prometheus text page and returns its samples by series
// (name plus labels as written, e.g. `walkeeper_stream_info{slot="wk",...}`).
func scrape(t *testing.T, url string) (map[string]float64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// TestStreamMetrics runs a stream with --metrics-listen, makes WAL and
// checks that the scraped positions and counters follow; then takes a
// backup with --metrics-file, and a failing one, and reads the textfile.
func TestStreamMetrics(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "metrics"})
	repoDir := filepath.Join(t.TempDir(), "repo")
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	url := "http://" + addr + "/metrics"
	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser),
		"--slot", "wk", "--metrics-listen", addr)

	var first map[string]float64
	waitFor(t, time.Minute, "the stream to report up=1", func() bool {
		m, err := scrape(t, url)
		first = m
		return err == nil && m["walkeeper_stream_up"] == 1
	})
	if first[`walkeeper_stream_info{slot="wk",system_identifier="`+c.QueryString(t, "SELECT system_identifier::text FROM pg_control_system()")+`",timeline="1"}`] != 1 {
		t.Errorf("no info metric with slot, system identifier and timeline: %v", first)
	}
	if first["go_goroutines"] == 0 || first["process_start_time_seconds"] == 0 {
		t.Error("Go or process collector missing")
	}
	for range 2 {
		switchAndWait(t, c)
	}
	last := switchAndWait(t, c)
	// Everything before the server's current segment is in complete
	// segments now: the stream must store up to there.
	lastSegEnd := float64(lsnOf(t, c.QueryString(t, "SELECT pg_current_wal_lsn()")) / segSize * segSize)
	var second map[string]float64
	waitFor(t, time.Minute, "stored_lsn to reach the end of "+last, func() bool {
		m, err := scrape(t, url)
		second = m
		return err == nil && m["walkeeper_stream_stored_lsn_bytes"] >= lastSegEnd
	})
	for _, name := range []string{"flushed_lsn_bytes", "received_lsn_bytes", "server_wal_end_lsn_bytes"} {
		if v := second["walkeeper_stream_"+name]; v < lastSegEnd {
			t.Errorf("%s = %v, below stored_lsn %v", name, v, lastSegEnd)
		}
	}
	if second["walkeeper_stream_segments_stored_total"] < first["walkeeper_stream_segments_stored_total"]+3 {
		t.Errorf("segments_stored_total went from %v to %v over three segment switches",
			first["walkeeper_stream_segments_stored_total"], second["walkeeper_stream_segments_stored_total"])
	}
	if second["walkeeper_stream_flushed_lsn_bytes"] <= first["walkeeper_stream_flushed_lsn_bytes"] {
		t.Errorf("flushed_lsn did not advance: %v then %v", first["walkeeper_stream_flushed_lsn_bytes"], second["walkeeper_stream_flushed_lsn_bytes"])
	}
	if second["walkeeper_stream_stored_lsn_bytes"] <= first["walkeeper_stream_stored_lsn_bytes"] {
		t.Errorf("stored_lsn did not advance: %v then %v", first["walkeeper_stream_stored_lsn_bytes"], second["walkeeper_stream_stored_lsn_bytes"])
	}
	if b := second["walkeeper_stream_stored_bytes_total"]; b == 0 || b >= 3*segSize {
		t.Errorf("stored_bytes_total = %v for three compressible segments, want the compressed size", b)
	}
	if second["walkeeper_stream_upload_errors_total"] != 0 || second["walkeeper_stream_queue_capacity"] != 2 {
		t.Errorf("upload errors %v, queue capacity %v", second["walkeeper_stream_upload_errors_total"], second["walkeeper_stream_queue_capacity"])
	}

	// A backup with --metrics-file, while the stream archives.
	promDir := t.TempDir()
	promFile := filepath.Join(promDir, "walkeeper_backup.prom")
	before := time.Now()
	id := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser), "--metrics-file", promFile)
	got, err := monitor.ReadTextfile(promFile)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	if err != nil {
		t.Fatal(err)
	}
	meta := readMeta(t, repo, id)
	if got["walkeeper_backup_success"] != 1 || got["walkeeper_backup_size_bytes"] != float64(meta.StoredSize) ||
		got["walkeeper_backup_last_success_timestamp_seconds"] < float64(before.Unix()) ||
		got["walkeeper_backup_last_run_timestamp_seconds"] != got["walkeeper_backup_last_success_timestamp_seconds"] {
		t.Errorf("after a successful backup (stored size %d): %v", meta.StoredSize, got)
	}
	okAt := got["walkeeper_backup_last_success_timestamp_seconds"]
	_, stderr, code := runWalkeeper(t, nil, "backup", "--repo", repoDir, "--metrics-file", promFile,
		"--dsn", "host=127.0.0.1 port="+strconv.Itoa(harness.FreePort(t))+" user=walkeeper connect_timeout=2")
	if code != 1 {
		t.Fatalf("backup against a closed port: exit %d: %s", code, stderr)
	}
	got, _ = monitor.ReadTextfile(promFile)
	if got["walkeeper_backup_success"] != 0 || got["walkeeper_backup_last_success_timestamp_seconds"] != okAt ||
		got["walkeeper_backup_last_run_timestamp_seconds"] < okAt {
		t.Errorf("after a failed backup the last success must stay %v: %v", okAt, got)
	}
	if entries, _ := os.ReadDir(promDir); len(entries) != 1 {
		t.Errorf("metrics directory holds %v, want only the .prom file", entries)
	}

	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d:\n%s", code, wk.output())
	}
	if _, err := scrape(t, url); err == nil {
		t.Error("metrics still served after the stream stopped")
	}
}

// TestStreamMetricsListenErrors: a malformed or busy address is an error
// before anything streams, not a stream silently without metrics.
func TestStreamMetricsListenErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	repoDir := filepath.Join(t.TempDir(), "repo")
	for _, tc := range []struct {
		addr string
		code int
		want string
	}{
		{"127.0.0.1", 2, "want HOST:PORT"},
		{ln.Addr().String(), 1, "address already in use"},
	} {
		_, stderr, code := runWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", "host=127.0.0.1 port=1 connect_timeout=1",
			"--slot", "wk", "--metrics-listen", tc.addr)
		if code != tc.code || !strings.Contains(stderr, "--metrics-listen") || !strings.Contains(stderr, tc.want) {
			t.Errorf("--metrics-listen %s: exit %d: %s", tc.addr, code, stderr)
		}
	}
}

// TestMonitoringFilesUseRealMetrics parses deploy/prometheus's alert rules
// and deploy/grafana's dashboard and checks that every walkeeper_* metric
// they name is one the stream or the textfile writer produces.
func TestMonitoringFilesUseRealMetrics(t *testing.T) {
	known := map[string]bool{}
	for _, n := range walstream.MetricNames() {
		known[n] = true
	}
	for _, cmd := range []string{"backup", "delete", "verify", "drill"} {
		for _, n := range monitor.RunMetricNames(cmd) {
			known[n] = true
		}
	}
	for _, n := range drill.MetricNames() {
		known[n] = true
	}
	metricRef := regexp.MustCompile(`walkeeper_[a-z0-9_]+`)
	check := func(where, expr string) int {
		refs := metricRef.FindAllString(expr, -1)
		for _, name := range refs {
			if !known[name] {
				t.Errorf("%s: unknown metric %s in %q", where, name, expr)
			}
		}
		return len(refs)
	}

	data, err := os.ReadFile("../deploy/prometheus/walkeeper-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("walkeeper-alerts.yml: %v", err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
				t.Errorf("rule %+v needs alert, expr, labels.severity and annotations.summary", r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for: %v", r.Alert, err)
				}
			}
			if check("alert "+r.Alert, r.Expr) == 0 {
				t.Errorf("alert %s names no walkeeper metric", r.Alert)
			}
			alerts = append(alerts, r.Alert)
		}
	}
	for _, want := range []string{"WalkeeperStreamDown", "WalkeeperStreamLagHigh", "WalkeeperUploadErrors",
		"WalkeeperPartialTooOld", "WalkeeperBackupTooOld", "WalkeeperBackupFailed", "WalkeeperVerifyFailed",
		"WalkeeperDrillFailed", "WalkeeperDrillTooOld"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alert %s missing (have %v)", want, alerts)
		}
	}

	f, err := os.Open("../deploy/grafana/walkeeper-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw, _ := io.ReadAll(f)
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("walkeeper-dashboard.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) < 6 {
		t.Errorf("dashboard: title %q, uid %q, %d panels", dash.Title, dash.UID, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			check("panel "+p.Title, target.Expr)
		}
	}
}
