package drill

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrepareScratch(t *testing.T) {
	own := &osUser{name: "x", uid: os.Getuid(), gid: os.Getgid()}
	dir := t.TempDir()
	missing := filepath.Join(dir, "new")
	if created, err := prepareScratch(missing, own); err != nil || !created {
		t.Fatalf("missing directory: created=%v, %v", created, err)
	}
	if created, err := prepareScratch(missing, own); err != nil || created {
		t.Fatalf("empty directory: created=%v, %v", created, err)
	}
	os.WriteFile(filepath.Join(missing, "f"), nil, 0o600)
	if _, err := prepareScratch(missing, own); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("non-empty directory: %v", err)
	}
	pg := filepath.Join(dir, "pg")
	os.Mkdir(pg, 0o700)
	os.WriteFile(filepath.Join(pg, "PG_VERSION"), []byte("15\n"), 0o600)
	if _, err := prepareScratch(pg, own); err == nil || !strings.Contains(err.Error(), "holds a PostgreSQL data directory") {
		t.Errorf("data directory: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := prepareScratch(file, own); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file: %v", err)
	}
}

func TestReportLine(t *testing.T) {
	ok := &Report{OK: true, Backup: "B", ServerVersion: "15.18", RestoreSeconds: 2.31, RecoverySeconds: 1.4, RTOSeconds: 3.71,
		ReplayedTo: "0/5000060", WALReplayedBytes: 33_600_000, Amcheck: Amcheck{Ran: true, Databases: 2, Indexes: 3, Tables: 70}, CheckQueries: 1}
	want := "drill ok: backup B (PostgreSQL 15.18) restored in 2.3s, recovered in 1.4s (replayed 33.6 MB of WAL to 0/5000060), usable after 3.7s; amcheck: 2 databases, 3 indexes, 70 tables; check-sql: 1 queries"
	if got := ok.Line(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	bad := &Report{Backup: "B", ServerVersion: "15.18", RestoreSeconds: 1}
	bad.problem(ProblemRestore, "B", "object %s is damaged", "base.tar.zst")
	if got := bad.Line(); !strings.HasPrefix(got, "drill FAILED: restore: B: object base.tar.zst is damaged; backup B") || strings.Contains(got, "usable") {
		t.Errorf("failed line: %s", got)
	}
}
