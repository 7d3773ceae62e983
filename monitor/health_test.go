package monitor

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestParseMaxLag(t *testing.T) {
	for in, want := range map[string]MaxLag{
		"16MB":    {Bytes: 16 << 20},
		"1048576": {Bytes: 1 << 20},
		"0":       {Bytes: 0},
		"512kB":   {Bytes: 512 << 10},
		"5s":      {Time: 5 * time.Second, ByTime: true},
		"500ms":   {Time: 500 * time.Millisecond, ByTime: true},
		"2m":      {Time: 2 * time.Minute, ByTime: true},
	} {
		got, err := ParseMaxLag(in)
		if err != nil || got != want {
			t.Errorf("ParseMaxLag(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		// String reads back to the same limit.
		if back, err := ParseMaxLag(got.String()); err != nil || back != got {
			t.Errorf("ParseMaxLag(%q.String() = %q) = %+v, %v", in, got.String(), back, err)
		}
	}
	for _, in := range []string{"", "lots", "-5s", "-1", "16XB", "1.5MB"} {
		if _, err := ParseMaxLag(in); err == nil {
			t.Errorf("ParseMaxLag(%q) accepted", in)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestVerdicts(t *testing.T) {
	primary := NodeState{Timeline: 1}
	streaming := NodeState{InRecovery: true, Streaming: true, LagBytes: ptr(int64(100)), LagSeconds: ptr(0.5)}
	paused := streaming
	paused.ReplayPaused, paused.LagBytes, paused.LagSeconds = true, ptr(int64(32<<20)), ptr(40.0)
	mb, tenS := &MaxLag{Bytes: 1 << 20}, &MaxLag{Time: 10 * time.Second, ByTime: true}
	for _, tc := range []struct {
		name    string
		st      NodeState
		max     *MaxLag
		primary bool
		replica bool
		reason  string
	}{
		{"primary", primary, nil, true, false, "not in recovery"},
		{"read-only primary", NodeState{ReadOnly: true}, nil, false, false, "not in recovery"},
		{"streaming replica", streaming, nil, false, true, "streaming replica"},
		{"streaming replica within bytes", streaming, mb, false, true, "streaming replica"},
		{"streaming replica within time", streaming, tenS, false, true, "streaming replica"},
		{"paused replica without limit", paused, nil, false, true, "replay paused"},
		{"paused replica over bytes", paused, mb, false, false, "exceeds max-lag"},
		{"paused replica over time", paused, tenS, false, false, "exceeds max-lag"},
		{"not streaming", NodeState{InRecovery: true}, nil, false, false, "not streaming"},
		{"receiver hidden", NodeState{InRecovery: true, ReceiverStatusHidden: true}, nil, false, false, "pg_monitor"},
		{"lag unknown", NodeState{InRecovery: true, Streaming: true}, tenS, false, false, "unknown"},
	} {
		p, _ := tc.st.PrimaryVerdict()
		r, reason := tc.st.ReplicaVerdict(tc.max)
		if p != tc.primary || r != tc.replica || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s: primary %v, replica %v (%q); want %v, %v, reason with %q", tc.name, p, r, reason, tc.primary, tc.replica, tc.reason)
		}
	}
	if ok, reason := (NodeState{ReadOnly: true}).PrimaryVerdict(); ok || !strings.Contains(reason, "default_transaction_read_only") {
		t.Errorf("read-only primary: %v %q", ok, reason)
	}
}

func TestParseState(t *testing.T) {
	st, err := parseState([][]byte{[]byte("t"), []byte("f"), []byte("3"), []byte("t"), []byte("f"), []byte("t"), []byte("2048"), []byte("1.25")})
	if err != nil || !st.InRecovery || st.ReadOnly || st.Timeline != 3 || !st.Streaming || !st.ReplayPaused || *st.LagBytes != 2048 || *st.LagSeconds != 1.25 {
		t.Errorf("parseState: %+v, %v", st, err)
	}
	st, err = parseState([][]byte{[]byte("f"), []byte("f"), []byte("1"), []byte("f"), []byte("f"), []byte("f"), nil, nil})
	if err != nil || st.LagBytes != nil || st.LagSeconds != nil || st.Role() != RolePrimary {
		t.Errorf("parseState primary: %+v, %v", st, err)
	}
}

// TestAgentDeadDatabase: with nothing listening, or a server that accepts
// and never answers, every endpoint answers quickly with 503 (200 for
// /health, which reports the database down), and bad parameters get 400.
func TestAgentDeadDatabase(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it open, say nothing
		}
	}()
	refused, _ := net.Listen("tcp", "127.0.0.1:0")
	refusedAddr := refused.Addr().String()
	refused.Close()

	for name, addr := range map[string]string{"refused": refusedAddr, "silent": silent.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			host, port, _ := net.SplitHostPort(addr)
			agent, err := NewAgent("host="+host+" port="+port+" user=x password=secret sslmode=disable", 300*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer agent.Close()
			srv := httptest.NewServer(agent.Handler())
			defer srv.Close()
			for path, want := range map[string]int{
				"/primary":              503,
				"/replica":              503,
				"/replica?max-lag=16MB": 503,
				"/health":               200,
				"/replica?max-lag=x":    400,
				"/primary?max-lag=1MB":  400,
				"/nope":                 404,
			} {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
				resp, err := http.DefaultClient.Do(req)
				cancel()
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				var rep Report
				if resp.StatusCode != 400 && resp.StatusCode != 404 {
					if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil || rep.Database != "down" || rep.Role != RoleUnknown || strings.Contains(rep.Reason, "secret") {
						t.Errorf("%s: body %+v, %v", path, rep, err)
					}
				}
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
				}
			}
		})
	}
}

func TestNewAgentRejectsBadDSN(t *testing.T) {
	if _, err := NewAgent("host=x port=notaport password=secret", time.Second); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("NewAgent with a bad DSN: %v", err)
	}
}
