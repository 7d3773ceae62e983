package monitor

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/walkeeper/walkeeper/storage"
)

func TestCheckNamesUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, n := range CheckNames() {
		if seen[n] || n == "" || strings.ContainsAny(n, " \t") {
			t.Errorf("check name %q repeated or not one word", n)
		}
		seen[n] = true
	}
}

func TestHBALine(t *testing.T) {
	for addr, want := range map[string]string{
		"10.0.0.5": "host replication walkeeper 10.0.0.5/32 scram-sha-256",
		"::1":      "host replication walkeeper ::1/128 scram-sha-256",
		"":         "local replication walkeeper peer",
	} {
		if got := hbaLine("walkeeper", addr); got != want {
			t.Errorf("hbaLine(%q) = %q, want %q", addr, got, want)
		}
	}
}

// failingDelete is a backend whose Delete fails, like a bucket policy
// without s3:DeleteObject.
type failingDelete struct{ storage.Backend }

func (failingDelete) Delete(context.Context, string) error { return errors.New("AccessDenied") }

// TestDoctorRepositoryOnly: without --dsn the server checks are skipped; the
// object-store probe leaves nothing behind, and a backend that cannot
// delete fails repository_access.
func TestDoctorRepositoryOnly(t *testing.T) {
	ctx := context.Background()
	mem := storage.NewMemory()
	results, err := RunDoctor(ctx, DoctorOptions{Repo: storage.NewRepository(mem, storage.CodecZstd)})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Level{}
	for _, r := range results {
		got[r.Check] = r.Status
	}
	for name, want := range map[string]Level{"connect": LevelSkip, "wal_level": LevelSkip, "repository_identity": LevelOK,
		"repository_access": LevelOK, "repository_locks": LevelOK, "free_space": LevelSkip} {
		if got[name] != want {
			t.Errorf("%s: %s, want %s", name, got[name], want)
		}
	}
	mem.List(ctx, "", func(o storage.ObjectInfo) error {
		t.Errorf("the probe left %s", o.Key)
		return nil
	})
	if Failures(results) != 0 {
		t.Errorf("failures: %v", results)
	}

	results, err = RunDoctor(ctx, DoctorOptions{Repo: storage.NewRepository(failingDelete{mem}, storage.CodecZstd)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Check == "repository_access" && (r.Status != LevelFail || !strings.Contains(r.Detail, "delete") || r.Hint == "") {
			t.Errorf("repository_access with a failing delete: %+v", r)
		}
	}
}

// TestJudgeArchiving: archive_library and archive_command together are a
// warning on PostgreSQL 15 (the library wins) and a failure from 16 on
// (the server refuses to archive).
func TestJudgeArchiving(t *testing.T) {
	const wk = "walkeeper wal-push --repo /r %p"
	for _, tc := range []struct {
		major          int
		lib, cmd, want string
		cmdErr         error
		level          Level
	}{
		{15, "basic_archive", wk, "ignores archive_command", nil, LevelWarn},
		{16, "basic_archive", wk, "refuses to archive", nil, LevelFail},
		{18, "basic_archive", wk, "refuses to archive", nil, LevelFail},
		{17, "basic_archive", "", "archive_library", nil, LevelOK},
		{17, "", wk, "wal-push", nil, LevelOK},
		{17, "", "", "empty archive_command", nil, LevelWarn},
		{17, "", "cp %p /mnt/%f", "not walkeeper", nil, LevelWarn},
		{17, "", "", "not readable", errors.New("permission denied"), LevelSkip},
	} {
		r := judgeArchiving(tc.major, "on", tc.lib, tc.cmd, tc.cmdErr)
		if r.Status != tc.level || !strings.Contains(r.Detail, tc.want) {
			t.Errorf("PostgreSQL %d, archive_library %q, archive_command %q: %s %q, want %s with %q", tc.major, tc.lib, tc.cmd, r.Status, r.Detail, tc.level, tc.want)
		}
	}
}
