package test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/basebackup/backuptest"
	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// TestRestoreChunkedParallel takes a backup cut into many small chunks
// (with a user tablespace) and proves the chunked layout end to end:
// restores with --parallel 1 and --parallel 4 pass pg_verifybackup and
// are file-for-file identical; the same backup rewritten into the old
// layout (one tar per tablespace, no archive_layout in backup.json, as
// walkeeper wrote it before) restores to the same files; verify passes,
// and a flipped byte in one chunk is reported by verify and refused by
// restore, naming that chunk.
func TestRestoreChunkedParallel(t *testing.T) {
	t.Parallel()
	harness.RequirePGBin(t, "pg_verifybackup")
	c := harness.StartCluster(t, harness.ClusterOptions{Name: "restore-chunks"})
	tsDir := harness.MakeDir(t, "chunks-ts")
	c.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+tsDir+"'")
	c.Pgbench(t, "-i", "-s", "1", "-q")
	c.Exec(t, "CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g, md5(g::text) FROM generate_series(1, 30000) g")
	repoDir := filepath.Join(harness.MakeDir(t, "chunks-repo"), "repo")
	target := repoTarget{name: "local", url: repoDir}
	id := runBackup(t, nil, repoDir, c.DSN(harness.ReplicationUser), "--chunk-size", "1MB")
	repo, err := storage.Open(context.Background(), storage.Options{Repo: repoDir})
	if err != nil {
		t.Fatal(err)
	}
	meta := readMeta(t, repo, id)
	// pgbench_accounts (13 MB) is larger than a chunk: stored as parts.
	if meta.Layout() != basebackup.LayoutParts {
		t.Errorf("backup.json archive_layout %d, want %d (files stored as parts)", meta.Layout(), basebackup.LayoutParts)
	}
	checkChunkSizes(t, meta, 1<<20)
	checkBackupAgainstManifest(t, repo, meta)
	if r := runVerify(t, target, 0); !r.OK || r.Backups != 1 {
		t.Fatalf("verify: %+v", r)
	}

	restoreInto := func(name, backup string, args ...string) (data, ts string) {
		t.Helper()
		data = filepath.Join(harness.MakeDir(t, name), "data")
		ts = filepath.Join(harness.MakeDir(t, name+"-ts"), "ts")
		args = append([]string{"restore", "--repo", repoDir, "--target-dir", data, "--backup", backup,
			"--tablespace-map", tsDir + "=" + ts, "--restore-command", "false %p"}, args...)
		if _, stderr, code := runWalkeeper(t, nil, args...); code != 0 {
			t.Fatalf("restore %v: exit %d\n%s", args, code, stderr)
		}
		// tablespace_map names the new location, which the manifest cannot
		// know; everything else must match it.
		if out, err := exec.Command(harness.PGBin("pg_verifybackup"), "-n", "-i", "tablespace_map", data).CombinedOutput(); err != nil {
			t.Fatalf("pg_verifybackup %s: %v\n%s", data, err, out)
		}
		return data, ts
	}
	one, oneTS := restoreInto("chunks-p1", id, "--parallel", "1")
	four, fourTS := restoreInto("chunks-p4", id, "--parallel", "4")
	want := treeDigest(t, one, oneTS)
	if got := treeDigest(t, four, fourTS); !sameDigest(t, "--parallel 4", got, want) {
		t.Error("--parallel 1 and --parallel 4 restored different files")
	}
	if len(want) < 500 {
		t.Errorf("only %d entries restored", len(want))
	}

	// The old layout: the same archives, one object per tablespace.
	oldID := oldLayoutCopy(t, repo, meta)
	old, oldTS := restoreInto("chunks-old", oldID)
	if got := treeDigest(t, old, oldTS); !sameDigest(t, "old layout", got, want) {
		t.Error("the old-layout copy restored different files")
	}

	// A flipped byte in the middle of one chunk of the base archive.
	var chunk basebackup.Object
	for _, o := range meta.Objects {
		if o.Archive == "base.tar" && o.Size > 100<<10 {
			chunk = o
		}
	}
	saved := rawObject(t, repo, chunk.Key)
	backuptest.FlipByte(t, repo, chunk.Key, len(saved)/2)
	r := runVerify(t, target, 5, "--backup", id)
	if !hasProblem(r, basebackup.ProblemCorrupt, chunk.Key) {
		t.Errorf("verify of a damaged chunk: %+v", r.Problems)
	}
	dir := filepath.Join(harness.MakeDir(t, "chunks-bad"), "data")
	_, stderr, code := runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", dir, "--backup", id,
		"--tablespace-map", tsDir+"="+filepath.Join(harness.MakeDir(t, "chunks-bad-ts"), "ts"), "--restore-command", "false %p")
	if code != 1 || !strings.Contains(stderr, chunk.Name) || !strings.Contains(stderr, "corrupt") {
		t.Errorf("restore of a damaged chunk: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err == nil {
		t.Error("a failed restore left global/pg_control")
	}
	if err := repo.Backend().Put(context.Background(), chunk.Key, bytes.NewReader(saved)); err != nil {
		t.Fatal(err)
	}
	// A chunk that backup.json lists under no tablespace: its files would
	// be missing from a restore.
	bad := *meta
	bad.Tablespaces = append([]basebackup.Tablespace(nil), meta.Tablespaces...)
	for i := range bad.Tablespaces {
		if bad.Tablespaces[i].OID == "" {
			bad.Tablespaces[i].Chunks = bad.Tablespaces[i].Chunks[1:]
		}
	}
	if err := repo.WriteJSON(context.Background(), storage.BackupMetaKey(id), bad); err != nil {
		t.Fatal(err)
	}
	if r := runVerify(t, target, 5, "--backup", id); !hasProblem(r, basebackup.ProblemBadBackupJSON, storage.BackupMetaKey(id)) {
		t.Errorf("verify of a backup.json that drops a chunk: %+v", r.Problems)
	}
	// A chunk holding only a later part of a file (it counts no file)
	// left out: restore refuses the file with a hole in it.
	bad.Tablespaces = append([]basebackup.Tablespace(nil), meta.Tablespaces...)
	dropped := ""
	for i, ts := range bad.Tablespaces {
		for j, name := range ts.Chunks {
			for _, o := range meta.Objects {
				if o.Name == name && o.Files == 0 && dropped == "" && ts.OID == "" {
					dropped = name
					bad.Tablespaces[i].Chunks = append(append([]string(nil), ts.Chunks[:j]...), ts.Chunks[j+1:]...)
				}
			}
		}
	}
	if dropped == "" {
		t.Fatal("no chunk holds a later part only")
	}
	if err := repo.WriteJSON(context.Background(), storage.BackupMetaKey(id), bad); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(harness.MakeDir(t, "chunks-hole"), "data")
	_, stderr, code = runWalkeeper(t, nil, "restore", "--repo", repoDir, "--target-dir", dir, "--backup", id,
		"--tablespace-map", tsDir+"="+filepath.Join(harness.MakeDir(t, "chunks-hole-ts"), "ts"), "--restore-command", "false %p")
	if code != 1 || !strings.Contains(stderr, "lacks parts") {
		t.Errorf("restore without the part in %s: exit %d: %s", dropped, code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err == nil {
		t.Error("a failed restore left global/pg_control")
	}
}

// oldLayoutCopy writes the backup again as walkeeper wrote backups before
// chunks: each tablespace's chunks joined into one tar object named after
// the archive, and a backup.json without archive_layout or chunks.
func oldLayoutCopy(t *testing.T, repo *storage.Repository, meta *basebackup.Meta) string {
	t.Helper()
	ctx := context.Background()
	id := "20200101T000000Z"
	objs := map[string]basebackup.Object{}
	for _, o := range meta.Objects {
		objs[o.Name] = o
	}
	old := *meta
	old.ID, old.ArchiveLayout, old.Objects, old.Tablespaces = id, 0, nil, nil
	for _, ts := range meta.Tablespaces {
		w, err := repo.Create(ctx, storage.BackupKey(id, ts.Archive))
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(w)
		for _, name := range ts.Chunks {
			r, err := repo.Open(ctx, objs[name].Key)
			if err != nil {
				t.Fatal(err)
			}
			tr := tar.NewReader(r)
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				// Layout 1 never had parts: a file stored as parts is one
				// entry again, its header sent with the first part.
				if off, ok := h.PAXRecords[basebackup.PartOffsetRecord]; ok {
					if off != "0" {
						if _, err := io.Copy(tw, tr); err != nil {
							t.Fatal(err)
						}
						continue
					}
					h.Size, _ = strconv.ParseInt(h.PAXRecords[basebackup.FileSizeRecord], 10, 64)
					h.PAXRecords, h.Format = nil, tar.FormatUnknown
				}
				if err := tw.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(tw, tr); err != nil {
					t.Fatal(err)
				}
			}
			r.Close()
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		m, err := w.Close()
		if err != nil {
			t.Fatal(err)
		}
		old.Objects = append(old.Objects, basebackup.Object{Name: ts.Archive, Key: storage.BackupKey(id, ts.Archive) + repo.Codec().Ext(),
			Size: m.Size, StoredSize: m.StoredSize, SHA256: m.Hex()})
		ts.Chunks = nil
		old.Tablespaces = append(old.Tablespaces, ts)
	}
	man := objs["backup_manifest"]
	data := readObject(t, repo, man.Key)
	key := storage.BackupKey(id, "backup_manifest")
	w, err := repo.Create(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	m, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	old.Objects = append(old.Objects, basebackup.Object{Name: "backup_manifest", Key: key + repo.Codec().Ext(), Size: m.Size, StoredSize: m.StoredSize, SHA256: m.Hex()})
	raw, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), `"archive_layout"`) || strings.Contains(string(raw), `"chunks"`) {
		t.Fatalf("the old-layout backup.json mentions chunks: %s", raw)
	}
	if err := repo.WriteJSON(ctx, storage.BackupMetaKey(id), old); err != nil {
		t.Fatal(err)
	}
	return id
}

// treeDigest maps every entry below data (and the tablespace directory
// ts, as "ts/...") to its type and content hash. Settings restore writes
// for recovery and the tablespace links (their targets differ by
// restore) are left out.
func treeDigest(t *testing.T, data, ts string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for prefix, root := range map[string]string{"": data, "ts/": ts} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			switch {
			case rel == "postgresql.auto.conf", rel == "tablespace_map", strings.HasPrefix(rel, "pg_tblspc/"):
				return nil
			case d.IsDir():
				out[prefix+rel] = "dir"
			case d.Type().IsRegular():
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(b)
				out[prefix+rel] = hex.EncodeToString(sum[:])
			default:
				out[prefix+rel] = d.Type().String()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func sameDigest(t *testing.T, what string, got, want map[string]string) bool {
	t.Helper()
	same := len(got) == len(want)
	n := 0
	for k, v := range want {
		if got[k] != v {
			same = false
			if n++; n <= 5 {
				t.Errorf("%s: %s is %q, want %q", what, k, got[k], v)
			}
		}
	}
	return same
}
