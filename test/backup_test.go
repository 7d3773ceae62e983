package test

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// listBackups runs `walkeeper list --json`.
func listBackups(t *testing.T, env []string, repoURL string) []map[string]any {
	t.Helper()
	stdout, stderr, code := runWalkeeper(t, env, "list", "--json", "--repo", repoURL)
	if code != 0 {
		t.Fatalf("list: exit %d: %s", code, stderr)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatalf("list --json: %v\n%s", err, stdout)
	}
	return rows
}

func countStatus(rows []map[string]any, status string) int {
	n := 0
	for _, r := range rows {
		if r["status"] == status {
			n++
		}
	}
	return n
}

// runBackup runs `walkeeper backup` and returns the ID it printed.
func runBackup(t *testing.T, env []string, repoURL, dsn string, extra ...string) string {
	t.Helper()
	args := append([]string{"backup", "--repo", repoURL, "--dsn", dsn}, extra...)
	stdout, stderr, code := runWalkeeper(t, env, args...)
	if code != 0 {
		t.Fatalf("backup: exit %d:\n%s", code, stderr)
	}
	id := strings.TrimSuffix(stdout, "\n")
	if strings.Contains(id, "\n") || len(id) < 16 {
		t.Fatalf("backup printed %q, want the ID alone on its line", stdout)
	}
	return id
}

type manifestFile struct {
	Path      string `json:"Path"`
	Size      int64  `json:"Size"`
	Algorithm string `json:"Checksum-Algorithm"`
	Checksum  string `json:"Checksum"`
}

// checkBackupAgainstManifest reads the stored manifest and every stored
// archive and checks that each file the manifest lists is in an archive with
// the right size and CRC-32C. It returns the names of pg_wal entries.
func checkBackupAgainstManifest(t *testing.T, repo *storage.Repository, meta *basebackup.Meta) (walFiles []string) {
	t.Helper()
	objs := map[string]basebackup.Object{}
	for _, o := range meta.Objects {
		objs[o.Name] = o
	}
	var manifest struct {
		Files []manifestFile `json:"Files"`
	}
	if err := json.Unmarshal(readObject(t, repo, objs["backup_manifest"].Key), &manifest); err != nil {
		t.Fatalf("stored backup_manifest: %v", err)
	}
	if len(manifest.Files) < 100 {
		t.Fatalf("manifest lists only %d files", len(manifest.Files))
	}
	type seen struct {
		size int64
		crc  string
	}
	found := map[string]seen{}
	// A file stored as parts: its CRC runs on over the parts, which come
	// one after the other in chunk order.
	var partName string
	var partCRC hash.Hash32
	var partLen, partSize int64
	for _, ts := range meta.Tablespaces {
		names := ts.Chunks
		if meta.Layout() == basebackup.LayoutSingle {
			names = []string{ts.Archive}
		} else if len(names) == 0 {
			t.Fatalf("tablespace %q (%s) has no chunks", ts.OID, ts.Archive)
		}
		prefix := ""
		if ts.OID != "" {
			prefix = "pg_tblspc/" + ts.OID + "/"
		}
		for _, name := range names {
			o, ok := objs[name]
			if !ok {
				t.Fatalf("archive %s of tablespace %q not in backup.json", name, ts.OID)
			}
			if meta.Chunked() && o.Archive != ts.Archive {
				t.Errorf("chunk %s: archive %q, want %q", name, o.Archive, ts.Archive)
			}
			// Every chunk is a complete tar by itself: the reader sees the
			// end of the archive at a header boundary, never mid-file.
			r, err := repo.Open(context.Background(), o.Key)
			if err != nil {
				t.Fatal(err)
			}
			tr := tar.NewReader(r)
			files := 0
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("%s: %v", o.Name, err)
				}
				if h.Typeflag != tar.TypeReg {
					continue
				}
				var n int64
				var crc uint32
				if off, ok := h.PAXRecords[basebackup.PartOffsetRecord]; ok {
					if meta.Layout() != basebackup.LayoutParts {
						t.Errorf("%s: %s is stored as parts in a backup of layout %d", o.Name, h.Name, meta.Layout())
					}
					size, _ := strconv.ParseInt(h.PAXRecords[basebackup.FileSizeRecord], 10, 64)
					if off == "0" {
						files++
						partName, partCRC, partLen, partSize = h.Name, crc32.New(crc32.MakeTable(crc32.Castagnoli)), 0, size
					} else if h.Name != partName || off != strconv.FormatInt(partLen, 10) || size != partSize {
						t.Fatalf("%s: part of %s at %s (file %d bytes) follows %d bytes of %s", o.Name, h.Name, off, size, partLen, partName)
					}
					m, err := io.Copy(partCRC, tr)
					if err != nil {
						t.Fatal(err)
					}
					if partLen += m; partLen < partSize {
						continue
					}
					n, crc, partName = partLen, partCRC.Sum32(), ""
				} else {
					files++
					c := crc32.New(crc32.MakeTable(crc32.Castagnoli))
					var err error
					if n, err = io.Copy(c, tr); err != nil {
						t.Fatal(err)
					}
					crc = c.Sum32()
				}
				// PostgreSQL prints the CRC-32C's bytes in memory order.
				sum := hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, crc))
				if _, dup := found[prefix+h.Name]; dup {
					t.Errorf("%s: %s is in two archives", o.Name, prefix+h.Name)
				}
				found[prefix+h.Name] = seen{n, sum}
				if strings.HasPrefix(h.Name, "pg_wal/") && !strings.Contains(h.Name, "archive_status") {
					walFiles = append(walFiles, strings.TrimPrefix(h.Name, "pg_wal/"))
				}
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				t.Fatalf("%s: %v", o.Name, err)
			}
			r.Close()
			if meta.Chunked() && files != o.Files {
				t.Errorf("chunk %s holds %d files, backup.json says %d", o.Name, files, o.Files)
			}
		}
	}
	if partName != "" {
		t.Errorf("%s: %d of its %d bytes are stored", partName, partLen, partSize)
	}
	for _, f := range manifest.Files {
		got, ok := found[f.Path]
		if !ok {
			t.Errorf("manifest file %s is in no stored archive", f.Path)
			continue
		}
		if got.size != f.Size || f.Algorithm != "CRC32C" || got.crc != f.Checksum {
			t.Errorf("%s: archive has %d bytes crc %s; manifest says %d bytes %s %s", f.Path, got.size, got.crc, f.Size, f.Algorithm, f.Checksum)
		}
	}
	return walFiles
}

// checkChunkSizes checks the cuts: the base archive is in several chunks,
// and a chunk exceeds the limit only when it holds one file.
func checkChunkSizes(t *testing.T, meta *basebackup.Meta, limit int64) {
	t.Helper()
	objs := map[string]basebackup.Object{}
	for _, o := range meta.Objects {
		objs[o.Name] = o
	}
	for _, ts := range meta.Tablespaces {
		if ts.OID == "" && len(ts.Chunks) < 3 {
			t.Errorf("base archive in %d chunks, want several at a 1 MB chunk size", len(ts.Chunks))
		}
		for _, name := range ts.Chunks {
			// The 1024 bytes of end-of-archive blocks come on top, and a
			// part's two headers: no chunk is larger, as a file too large
			// for one is stored as parts.
			if o := objs[name]; o.Size > limit+1024+3*512 {
				t.Errorf("chunk %s: %d bytes in %d files, over the %d byte limit", name, o.Size, o.Files, limit)
			}
		}
	}
}

func readMeta(t *testing.T, repo *storage.Repository, id string) *basebackup.Meta {
	t.Helper()
	var m basebackup.Meta
	if err := repo.ReadJSON(context.Background(), storage.BackupMetaKey(id), &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// TestBackupWithTablespace backs up a pgbench database with a user
// tablespace (WAL included, as no stream runs) and checks every manifest
// file against the stored archives, on both backends.
func TestBackupWithTablespace(t *testing.T) {
	for _, target := range repoTargets(t) {
		t.Run(target.name, func(t *testing.T) {
			c := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-" + target.name})
			tsDir := harness.MakeDir(t, "tablespace")
			c.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+tsDir+"'")
			c.Pgbench(t, "-i", "-s", "2", "-q")
			c.Exec(t, "CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
			// Small chunks, so that the base archive is cut many times.
			id := runBackup(t, target.env, target.url, c.DSN(harness.ReplicationUser), "--chunk-size", "1MB")
			repo := target.open(t)
			meta := readMeta(t, repo, id)
			if meta.WAL != basebackup.WALInclude || len(meta.Tablespaces) != 2 || meta.FromStandby {
				t.Errorf("backup.json: wal %q, %d tablespaces, from standby %v", meta.WAL, len(meta.Tablespaces), meta.FromStandby)
			}
			// pgbench_accounts (26 MB) is larger than a chunk: stored as parts.
			if meta.ArchiveLayout != basebackup.LayoutParts {
				t.Errorf("backup.json: archive_layout %d, want %d (files stored as parts)", meta.ArchiveLayout, basebackup.LayoutParts)
			}
			checkChunkSizes(t, meta, 1<<20)
			walFiles := checkBackupAgainstManifest(t, repo, meta)
			startSeg := strings.Replace(meta.StartLSN, "/", "", 1)
			if len(walFiles) == 0 {
				t.Errorf("no WAL inside the backup (start %s)", startSeg)
			}
			rows := listBackups(t, target.env, target.url)
			if len(rows) != 1 || rows[0]["status"] != "complete" || rows[0]["id"] != id {
				t.Errorf("list: %v", rows)
			}
			t.Logf("backup %s: %d objects, %d bytes stored of %d, WAL files inside: %v", id, len(meta.Objects), meta.StoredSize, meta.Size, walFiles)
		})
	}
}

// TestBackupWaitsForStreamedWAL: with a stream running, the backup takes
// its WAL from the repository (auto mode), and backup.json is written only
// once the WAL from start to stop is stored. Without a stream, --wal stream
// times out naming the missing segment and leaves no backup behind.
func TestBackupWaitsForStreamedWAL(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-stream"})
	repoDir := filepath.Join(t.TempDir(), "repo")
	c.Pgbench(t, "-i", "-s", "1", "-q")

	_, stderr, code := runWalkeeper(t, nil, "backup", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--wal", "stream", "--wal-timeout", "3s")
	if code != 1 || !strings.Contains(stderr, "did not reach the repository") || !strings.Contains(stderr, "WAL segment 0000") {
		t.Fatalf("--wal stream without a stream: exit %d, %s", code, stderr)
	}
	if rows := listBackups(t, nil, repoDir); len(rows) != 0 {
		t.Fatalf("failed backup left %v", rows)
	}

	wk := startWalkeeper(t, nil, "stream", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	waitFor(t, time.Minute, "the stream heartbeat", func() bool {
		s, _ := repo.Streams(context.Background())
		return len(s) == 1 && s[0].Live(time.Now())
	})
	id := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser))
	meta := readMeta(t, repo, id)
	if meta.WAL != basebackup.WALStream {
		t.Fatalf("backup.json wal = %q, want stream", meta.WAL)
	}
	walFiles := checkBackupAgainstManifest(t, repo, meta)
	if len(walFiles) != 0 {
		t.Errorf("stream-mode backup carries WAL: %v", walFiles)
	}
	end, _ := repoEnd(context.Background(), repo)
	if stop := lsnOf(t, meta.StopLSN); end < stop {
		t.Errorf("repository ends at %X, before the backup's stop LSN %X", end, stop)
	}
	if code := wk.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("stream exit %d", code)
	}
}

// TestBackupKilledMidway kills a slow backup with SIGKILL: list shows it as
// incomplete, and the next backup recovers the stale lock and succeeds.
func TestBackupKilledMidway(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-kill"})
	c.Pgbench(t, "-i", "-s", "5", "-q")
	repoDir := filepath.Join(t.TempDir(), "repo")
	p := startWalkeeper(t, nil, "backup", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--max-rate", "2MB")
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	waitFor(t, time.Minute, "the backup to store data", func() bool {
		infos, _ := basebackup.List(context.Background(), repo)
		return len(infos) == 1 && dirSize(t, repoDir) > 1<<20
	})
	p.cmd.Process.Kill()
	<-p.done
	rows := listBackups(t, nil, repoDir)
	if countStatus(rows, "complete") != 0 {
		t.Fatalf("a killed backup is listed complete: %v", rows)
	}
	if countStatus(rows, "incomplete") != 1 {
		t.Fatalf("the killed backup is not listed as incomplete: %v", rows)
	}
	stdout, _, _ := runWalkeeper(t, nil, "list", "--repo", repoDir)
	if !strings.Contains(stdout, "incomplete") {
		t.Errorf("list table: %s", stdout)
	}
	id := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser))
	rows = listBackups(t, nil, repoDir)
	if countStatus(rows, "complete") != 1 || rows[len(rows)-1]["id"] != id {
		t.Fatalf("after the next backup: %v", rows)
	}
}

// TestConcurrentBackups starts two backups at once: one is refused with the
// documented "locked" exit code.
func TestConcurrentBackups(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-lock"})
	c.Pgbench(t, "-i", "-s", "2", "-q")
	repoDir := filepath.Join(t.TempDir(), "repo")
	args := []string{"backup", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--max-rate", "8MB"}
	a := startWalkeeper(t, nil, args...)
	b := startWalkeeper(t, nil, args...)
	<-a.done
	<-b.done
	codes := []int{a.cmd.ProcessState.ExitCode(), b.cmd.ProcessState.ExitCode()}
	if !(codes[0] == 0 && codes[1] == 3 || codes[0] == 3 && codes[1] == 0) {
		t.Fatalf("exit codes %v, want one 0 and one 3\nA: %s\nB: %s", codes, a.output(), b.output())
	}
	loser := a
	if codes[1] == 3 {
		loser = b
	}
	if !strings.Contains(loser.output(), "locked") {
		t.Errorf("refused backup says: %s", loser.output())
	}
	if rows := listBackups(t, nil, repoDir); countStatus(rows, "complete") != 1 || len(rows) != 1 {
		t.Errorf("list: %v", rows)
	}
}

// TestConcurrentBackupsS3 releases two backups into one S3 repository at the
// same instant, five times: each time exactly one succeeds and the other
// exits 3 without writing anything; every backup directory holds only its
// own objects, and verify passes.
func TestConcurrentBackupsS3(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-lock-s3"})
	c.Pgbench(t, "-i", "-s", "1", "-q")
	target := repoTargets(t)[1]
	if target.name != "s3" {
		t.Fatalf("repoTargets()[1] is %s, want s3", target.name)
	}
	args := []string{"backup", "--repo", target.url, "--dsn", c.DSN(harness.ReplicationUser), "--wal", "include"}
	winners := map[string]int{} // backup ID -> pid of the run that printed it
	for trial := range 5 {
		// Both processes wait on a pipe, then run at once when it closes.
		var gates []*os.File
		var runs []*proc
		for range 2 {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("/bin/sh", append([]string{"-c", `read go; exec "$0" "$@"`, walkeeperBin}, args...)...)
			cmd.Stdin = r
			runs = append(runs, startWalkeeperCmd(t, cmd, target.env, args))
			r.Close()
			gates = append(gates, w)
		}
		for _, w := range gates {
			w.Close()
		}
		codes := make([]int, 2)
		for i, p := range runs {
			<-p.done
			codes[i] = p.cmd.ProcessState.ExitCode()
		}
		if !(codes[0] == 0 && codes[1] == 3 || codes[0] == 3 && codes[1] == 0) {
			t.Fatalf("trial %d: exit codes %v, want one 0 and one 3\nA: %s\nB: %s", trial, codes, runs[0].output(), runs[1].output())
		}
		winner, loser := runs[0], runs[1]
		if codes[0] == 3 {
			winner, loser = loser, winner
		}
		if !strings.Contains(loser.output(), "locked") {
			t.Errorf("trial %d: refused backup says: %s", trial, loser.output())
		}
		var id string
		for _, line := range strings.Split(winner.output(), "\n") {
			if line != "" && !strings.HasPrefix(line, "{") {
				id = line
			}
		}
		if _, dup := winners[id]; dup || id == "" {
			t.Fatalf("trial %d: backup printed ID %q (IDs so far %v):\n%s", trial, id, winners, winner.output())
		}
		winners[id] = winner.cmd.Process.Pid
	}

	rows := listBackups(t, target.env, target.url)
	if len(rows) != 5 || countStatus(rows, "complete") != 5 {
		t.Fatalf("list after 5 trials: %v", rows)
	}
	repo := target.open(t)
	ctx := context.Background()
	for id, pid := range winners {
		meta := readMeta(t, repo, id)
		own := map[string]bool{storage.BackupKey(id, "started.json"): true, storage.BackupMetaKey(id): true}
		for _, o := range meta.Objects {
			own[o.Key] = true
		}
		var stored []string
		if err := repo.Backend().List(ctx, storage.BackupKey(id, ""), func(o storage.ObjectInfo) error {
			stored = append(stored, o.Key)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(stored) != len(own) {
			t.Errorf("backup %s holds %v, its backup.json lists %v", id, stored, own)
		}
		for _, k := range stored {
			if !own[k] {
				t.Errorf("backup %s holds %s, which its backup.json does not list", id, k)
			}
		}
		var started struct {
			ID  string `json:"id"`
			PID int    `json:"pid"`
		}
		if err := repo.ReadJSON(ctx, storage.BackupKey(id, "started.json"), &started); err != nil {
			t.Fatal(err)
		}
		if started.ID != id || started.PID != pid {
			t.Errorf("backups/%s/started.json = %+v, want id %s pid %d (the run that printed the ID)", id, started, id, pid)
		}
	}
	runVerify(t, target, 0)
}

// TestBackupLosesItsLock: while a backup into S3 runs, another run takes
// its lock over. The backup notices (at the latest before it would write
// backup.json), fails with exit 1 naming the new holder, marks nothing
// complete, removes what it wrote and leaves the new holder's lock alone.
func TestBackupLosesItsLock(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-lost-lock"})
	c.Pgbench(t, "-i", "-s", "2", "-q")
	target := repoTargets(t)[1]
	repo := target.open(t)
	ctx := context.Background()
	p := startWalkeeper(t, target.env, "backup", "--repo", target.url, "--dsn", c.DSN(harness.ReplicationUser), "--wal", "include", "--max-rate", "4MB")
	waitFor(t, time.Minute, "the backup to start writing", func() bool {
		infos, _ := basebackup.List(ctx, repo)
		return len(infos) == 1
	})
	taker := storage.LockInfo{Token: "taker", Command: "backup", Host: "other-host", PID: 4242, Started: time.Now().UTC(), Heartbeat: time.Now().UTC()}
	if err := repo.WriteJSON(ctx, storage.LockKey("backup"), taker); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Minute):
		t.Fatal("the backup did not end")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(p.output(), "lost the repository lock") || !strings.Contains(p.output(), "other-host") {
		t.Fatalf("backup that lost its lock: exit %d, want 1 naming the new holder:\n%s", code, p.output())
	}
	if rows := listBackups(t, target.env, target.url); countStatus(rows, "complete") != 0 {
		t.Fatalf("a backup that lost its lock is listed complete: %v", rows)
	}
	var held storage.LockInfo
	if err := repo.ReadJSON(ctx, storage.LockKey("backup"), &held); err != nil || held.Token != "taker" {
		t.Fatalf("the lock after the backup stopped: %+v, %v; want the taker's", held, err)
	}
}

// TestBackupFromStandby takes the backup from a hot standby.
func TestBackupFromStandby(t *testing.T) {
	primary := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-primary"})
	primary.Pgbench(t, "-i", "-s", "1", "-q")
	standby := primary.CreateStandby(t, "backup-standby")
	repoDir := filepath.Join(t.TempDir(), "repo")
	id := runBackup(t, nil, repoDir, standby.DSN(harness.ReplicationUser))
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	meta := readMeta(t, repo, id)
	if !meta.FromStandby {
		t.Error("backup.json does not say it came from a standby")
	}
	checkBackupAgainstManifest(t, repo, meta)
}

// TestBackupErrors: unreachable server, missing privileges, no free WAL
// sender and storage failing mid-backup give a clear error and no complete
// backup.
func TestBackupErrors(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-errors", ExtraConf: map[string]string{"max_wal_senders": "1"}})
	c.Pgbench(t, "-i", "-s", "3", "-q")
	port := harness.FreePort(t)
	for _, tc := range []struct{ name, dsn, want string }{
		{"unreachable", "host=127.0.0.1 port=" + strconv.Itoa(port) + " user=walkeeper connect_timeout=2", "cannot reach PostgreSQL"},
		{"no REPLICATION", c.DSN(harness.NoReplicationUser), "REPLICATION"},
	} {
		repoDir := filepath.Join(t.TempDir(), "repo")
		_, stderr, code := runWalkeeper(t, nil, "backup", "--repo", repoDir, "--dsn", tc.dsn)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, %s", tc.name, code, stderr)
		}
		if files := listAll(t, repoDir); len(files) != 0 {
			t.Errorf("%s: wrote %v", tc.name, files)
		}
	}

	// Every WAL sender busy.
	repoDir := filepath.Join(t.TempDir(), "repo")
	wk := startWalkeeper(t, nil, "stream", "--repo", filepath.Join(t.TempDir(), "other"), "--dsn", c.DSN(harness.ReplicationUser), "--slot", "wk")
	waitFor(t, time.Minute, "the stream to take the only WAL sender", func() bool {
		return c.QueryString(t, "SELECT count(*) FROM pg_stat_replication") == "1"
	})
	_, stderr, code := runWalkeeper(t, nil, "backup", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser))
	if code != 1 || !strings.Contains(stderr, "max_wal_senders") {
		t.Errorf("WAL senders exhausted: exit %d, %s", code, stderr)
	}
	wk.stop(t, syscall.SIGTERM)

	// Storage fails mid-backup: the backups directory is replaced by a file.
	p := startWalkeeper(t, nil, "backup", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser), "--max-rate", "4MB")
	waitFor(t, time.Minute, "the backup to write", func() bool {
		entries, _ := os.ReadDir(filepath.Join(repoDir, "backups"))
		return len(entries) > 0
	})
	os.RemoveAll(filepath.Join(repoDir, "backups"))
	os.WriteFile(filepath.Join(repoDir, "backups"), []byte("in the way"), 0o600)
	<-p.done
	if code := p.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("storage failure: exit %d:\n%s", code, p.output())
	}
	os.Remove(filepath.Join(repoDir, "backups"))
	if rows := listBackups(t, nil, repoDir); countStatus(rows, "complete") != 0 {
		t.Errorf("storage failure left a complete backup: %v", rows)
	}
}

// TestBackupReportsChecksumFailures damages a page on disk: the backup
// completes, warns with the file and block, and records them in backup.json.
func TestBackupReportsChecksumFailures(t *testing.T) {
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "backup-checksum"})
	c.Exec(t, "CREATE TABLE damaged AS SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
	c.Exec(t, "CHECKPOINT")
	rel := c.QueryString(t, "SELECT pg_relation_filepath('damaged')")
	c.Stop(t)
	path := filepath.Join(c.DataDir(), rel)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 8192+300) // block 1
	b[0] ^= 0xFF
	f.WriteAt(b, 8192+300)
	f.Close()
	c.Start(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	stdout, stderr, code := runWalkeeper(t, nil, "backup", "--repo", repoDir, "--dsn", c.DSN(harness.ReplicationUser))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "page checksum failure") || !strings.Contains(stderr, rel) {
		t.Errorf("no warning naming %s: %s", rel, stderr)
	}
	repo, _ := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	meta := readMeta(t, repo, strings.TrimSpace(stdout))
	if len(meta.ChecksumFailures) != 1 || !strings.HasSuffix(meta.ChecksumFailures[0].File, rel) || meta.ChecksumFailures[0].Block != 1 {
		t.Errorf("backup.json checksum_failures = %+v, want %s block 1", meta.ChecksumFailures, rel)
	}
}
