package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/test/harness"
)

// BenchmarkStream1GB measures catching up on at least 1 GB of pgbench WAL
// held by replication slots: walkeeper (zstd, lz4 and none, into a local
// repository; also the WALKEEPER_BENCH_BASELINE binary) against
// pg_receivewal (uncompressed, lz4, gzip), one after
// the other so they do not share the CPU. It reports MB/s, CPU seconds per
// GB and peak RSS of each. A slot per tool holds the WAL; every run streams
// from a copy of it, so -count repeats measure the same work.
// WALKEEPER_BENCH_PROFILE_DIR=DIR writes a CPU profile of each walkeeper
// run there (DIR/walkeeper-zstd.pprof, ...).
//
//	make bench   (or: go test -run '^$' -bench Stream1GB -benchtime 1x ./test/)
func BenchmarkStream1GB(b *testing.B) {
	bin, before := benchBinaries(b, b.TempDir())
	c := harness.StartCluster(b, harness.ClusterOptions{Name: "bench-stream", ExtraConf: map[string]string{
		"max_wal_size": "4GB", "checkpoint_timeout": "30min", "shared_buffers": "256MB",
		"max_replication_slots": "20", "max_wal_senders": "20",
	}})
	runs := []struct {
		name string
		slot string
		args func(dir, endpos, slot string) (string, []string)
	}{
		{"pg_receivewal", "rw_none", func(dir, end, slot string) (string, []string) {
			return harness.PGBin("pg_receivewal"), []string{"-D", dir, "-S", slot, "-E", end, "-n", "-d", c.DSN(harness.ReplicationUser)}
		}},
		{"pg_receivewal-lz4", "rw_lz4", func(dir, end, slot string) (string, []string) {
			return harness.PGBin("pg_receivewal"), []string{"-D", dir, "-S", slot, "-E", end, "-n", "--compress=lz4", "-d", c.DSN(harness.ReplicationUser)}
		}},
		{"pg_receivewal-gzip", "rw_gzip", func(dir, end, slot string) (string, []string) {
			return harness.PGBin("pg_receivewal"), []string{"-D", dir, "-S", slot, "-E", end, "-n", "--compress=gzip", "-d", c.DSN(harness.ReplicationUser)}
		}},
	}
	// walkeeper with each codec, and the baseline binary the same way.
	for _, w := range []struct{ name, bin string }{{"walkeeper", bin}, {"walkeeper-before", before}} {
		if w.bin == "" {
			continue
		}
		for _, codec := range []string{"zstd", "lz4", "none"} {
			runs = append(runs, struct {
				name string
				slot string
				args func(dir, endpos, slot string) (string, []string)
			}{w.name + "-" + codec, strings.ReplaceAll(w.name, "-", "_") + "_" + codec, func(dir, end, slot string) (string, []string) {
				return w.bin, []string{"stream", "--repo", dir, "--compression", codec, "--slot", slot, "--endpos", end, "--dsn", c.DSN(harness.ReplicationUser)}
			}})
		}
	}
	// Encrypted (issue 16): zstd, then age to a public key, same run.
	_, recipient := benchKeys(b)
	runs = append(runs, struct {
		name string
		slot string
		args func(dir, endpos, slot string) (string, []string)
	}{"walkeeper-zstd-age", "walkeeper_zstd_age", func(dir, end, slot string) (string, []string) {
		return bin, []string{"stream", "--repo", dir, "--compression", "zstd", "--encrypt-to", recipient, "--slot", slot, "--endpos", end,
			"--dsn", c.DSN(harness.ReplicationUser)}
	}})
	for _, r := range runs {
		c.Exec(b, fmt.Sprintf("SELECT pg_create_physical_replication_slot('%s', true)", r.slot))
	}
	startLSN := lsnOfTB(b, c.QueryString(b, "SELECT pg_current_wal_lsn()::text"))
	c.Pgbench(b, "-i", "-s", "90", "-q")
	c.Exec(b, "CHECKPOINT")
	endLSN := lsnOfTB(b, c.QueryString(b, "SELECT pg_current_wal_lsn()::text"))
	end := fmt.Sprintf("%X/%X", endLSN>>32, uint32(endLSN))
	walMB := float64(endLSN-startLSN) / 1e6
	b.Logf("WAL to stream: %.0f MB (%X .. %X)", walMB, startLSN, endLSN)
	if walMB < 1000 {
		b.Fatalf("only %.0f MB of WAL", walMB)
	}
	for _, r := range runs {
		b.Run(r.name, func(b *testing.B) {
			for i := range b.N {
				// A copy of the tool's slot, so every run (-count, b.N)
				// streams the same WAL; the original never advances.
				slot := fmt.Sprintf("%s_%d_%d", r.slot, time.Now().UnixNano()%1e6, i)
				c.Exec(b, fmt.Sprintf("SELECT pg_copy_physical_replication_slot('%s', '%s')", r.slot, slot))
				dir := harness.MakeDir(b, r.name)
				path, args := r.args(dir, end, slot)
				cmd := exec.Command(path, args...)
				if filepath.Base(path) == "pg_receivewal" {
					cmd = c.Command(context.Background(), path, args...)
				}
				cmd.Env = append(cmd.Environ(), "WALKEEPER_LOG_LEVEL=warn")
				if p := os.Getenv("WALKEEPER_BENCH_PROFILE_DIR"); p != "" && filepath.Base(path) != "pg_receivewal" {
					cmd.Env = append(cmd.Env, "WALKEEPER_CPU_PROFILE="+filepath.Join(p, r.name+".pprof"))
				}
				m := measure(b, r.name, cmd, dir)
				benchRecord("stream cpu-s/GB", r.name, m.cpu.Seconds()/(walMB/1000))
				benchRecord("stream stored/WAL", r.name, m.storedMB/walMB)
				// Catch-up: the slot holds all the WAL when the tool starts.
				benchRecord("stream catch-up-s", r.name, m.wall.Seconds())
				benchRecord("stream peak-RSS-MB", r.name, m.rssMB)
				b.ReportMetric(walMB/m.wall.Seconds(), "MB/s")
				b.ReportMetric(m.cpu.Seconds()/(walMB/1000), "cpu-s/GB")
				b.ReportMetric(m.rssMB, "peak-RSS-MB")
				b.ReportMetric(m.storedMB, "stored-MB")
				b.Logf("%-20s %6.1f MB/s  %5.2f CPU s/GB  peak RSS %5.1f MB  stored %6.0f MB",
					r.name, walMB/m.wall.Seconds(), m.cpu.Seconds()/(walMB/1000), m.rssMB, m.storedMB)
				c.Exec(b, fmt.Sprintf("SELECT pg_drop_replication_slot('%s')", slot))
			}
		})
	}
}

// BenchmarkBackup1GB backs up the same database (pgbench plus a table of
// random bytes, over 1 GB in all) with walkeeper (zstd and lz4; also the
// WALKEEPER_BENCH_BASELINE binary), pg_basebackup -Ft -X fetch
// --compress=client-zstd and client-lz4, and pgBackRest (zst,
// process-max 2) when it is installed, one after the other, and reports
// wall time, CPU time, peak RSS and stored size of each. Then it restores:
// walkeeper's zstd backup with --parallel 1, 2 and the default, and with
// --no-sync at --parallel 1 and 2 (core scaling with the disk out of the
// way), the baseline's with the baseline (the same five), and pgBackRest's
// with process-max 2, each into an empty directory with every file
// fsynced (each tool's default, but for --no-sync), `sync` (not timed)
// before each, and times the disk's floor (the restored bytes written into
// one file and fsynced) to say how far each restore is from the disk.
//
//	make bench   (or: go test -run '^$' -bench Backup1GB -benchtime 1x ./test/)
func BenchmarkBackup1GB(b *testing.B) {
	bin, before := benchBinaries(b, harness.MakeDir(b, "bench-backup-bin"))
	c := harness.StartCluster(b, harness.ClusterOptions{Name: "bench-backup", ExtraConf: map[string]string{
		"max_wal_size": "4GB", "shared_buffers": "256MB",
	}})
	c.Pgbench(b, "-i", "-s", "45", "-q")
	c.Exec(b, "CREATE TABLE random_bytes (b bytea)")
	c.Exec(b, "ALTER TABLE random_bytes ALTER b SET STORAGE EXTERNAL")
	c.Exec(b, `INSERT INTO random_bytes SELECT (SELECT decode(string_agg(md5(random()::text || g::text || x::text), ''), 'hex')
		FROM generate_series(1, 64) x) FROM generate_series(1, 400000) g`)
	// Nothing left for autovacuum: otherwise it sets hint bits and
	// visibility during the first backups, and they include more WAL.
	c.Exec(b, "VACUUM (FREEZE, ANALYZE)")
	c.Exec(b, "CHECKPOINT")
	dbSize := c.QueryString(b, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database")
	b.Logf("database size: %s bytes", dbSize)
	dbBytes, _ := strconv.ParseFloat(dbSize, 64)
	pgbackrest, _ := exec.LookPath("pgbackrest")
	s3srv := harness.StartS3(b)
	s3env := append(s3srv.Env(), "WALKEEPER_S3_ENDPOINT="+s3srv.Endpoint, "WALKEEPER_S3_PATH_STYLE=true")
	b.ResetTimer()
	for range b.N {
		type job struct {
			name string
			cmd  func(dir string) *exec.Cmd
		}
		repos := map[string]string{}
		idFile, recipient := benchKeys(b)
		walkeeperBackup := func(bin, codec string, extra ...string) func(dir string) *exec.Cmd {
			return func(dir string) *exec.Cmd {
				cmd := exec.Command(bin, append([]string{"backup", "--repo", dir, "--compression", codec, "--dsn", c.DSN(harness.ReplicationUser),
					"--checkpoint", "fast", "--wal", "include"}, extra...)...)
				cmd.Env = append(os.Environ(), "WALKEEPER_LOG_LEVEL=warn")
				return cmd
			}
		}
		backups := []job{
			{"walkeeper-zstd", walkeeperBackup(bin, "zstd")},
			{"walkeeper-lz4", walkeeperBackup(bin, "lz4")},
			{"walkeeper-zstd-age", walkeeperBackup(bin, "zstd", "--encrypt-to", recipient)},
		}
		// To S3 (Versity S3 Gateway on this machine, data on the same
		// disk): the figure issue 13 compares with WAL-G's to S3.
		s3url := "s3://" + s3srv.Bucket + "/bench"
		backups = append(backups, job{"walkeeper-zstd-s3", func(string) *exec.Cmd {
			cmd := walkeeperBackup(bin, "zstd")(s3url)
			cmd.Env = append(cmd.Env, s3env...)
			return cmd
		}})
		repos["walkeeper-zstd-s3"] = filepath.Join(s3srv.Dir, s3srv.Bucket)
		if before != "" {
			backups = append(backups, job{"walkeeper-before-zstd", walkeeperBackup(before, "zstd")},
				job{"walkeeper-before-lz4", walkeeperBackup(before, "lz4")})
		}
		for _, codec := range []string{"zstd", "lz4"} {
			backups = append(backups, job{"pg_basebackup-client-" + codec, func(dir string) *exec.Cmd {
				return c.Command(context.Background(), harness.PGBin("pg_basebackup"), "-D", filepath.Join(dir, "out"), "-Ft", "-X", "fetch",
					"--compress=client-"+codec, "-c", "fast", "-d", c.DSN(harness.ReplicationUser))
			}})
		}
		// Server-side compression (issue 13, item 3): the walsender
		// compresses, with and without zstd worker threads; measured with
		// pg_basebackup to see when it pays off (docs/backups.md).
		for _, spec := range []string{"server-zstd", "server-zstd:workers=2"} {
			name := "pg_basebackup-" + strings.ReplaceAll(strings.ReplaceAll(spec, ":", "-"), "=", "-")
			backups = append(backups, job{name, func(dir string) *exec.Cmd {
				return c.Command(context.Background(), harness.PGBin("pg_basebackup"), "-D", filepath.Join(dir, "out"), "-Ft", "-X", "fetch",
					"--compress="+spec, "-c", "fast", "-d", c.DSN(harness.ReplicationUser))
			}})
		}
		var brConf string
		if pgbackrest != "" {
			brDir := harness.MakeDir(b, "bench-pgbackrest")
			brConf = filepath.Join(brDir, "pgbackrest.conf")
			conf := fmt.Sprintf("[global]\nrepo1-path=%s/repo\nlog-path=%s\nlock-path=%s\nlog-level-console=warn\nlog-level-file=off\n"+
				"compress-type=zst\nprocess-max=2\nstart-fast=y\narchive-check=n\n\n[bench]\npg1-path=%s\npg1-port=%d\npg1-socket-path=%s\n",
				brDir, brDir, brDir, c.DataDir(), c.Port(), c.SocketDir())
			if err := os.WriteFile(brConf, []byte(conf), 0o644); err != nil {
				b.Fatal(err)
			}
			giveToPostgres(b, brDir)
			if out, err := c.Command(context.Background(), pgbackrest, "--config", brConf, "--stanza", "bench", "stanza-create").CombinedOutput(); err != nil {
				b.Fatalf("pgbackrest stanza-create: %v\n%s", err, out)
			}
			repos["pgbackrest-process-max-2"] = brDir
			backups = append(backups, job{"pgbackrest-process-max-2", func(string) *exec.Cmd {
				return c.Command(context.Background(), pgbackrest, "--config", brConf, "--stanza", "bench", "--type", "full", "backup")
			}})
		}
		for _, r := range backups {
			dir := repos[r.name]
			if dir == "" {
				dir = harness.MakeDir(b, "bench-"+r.name)
				repos[r.name] = dir
			}
			m := measure(b, r.name, r.cmd(dir), dir)
			benchRecord("backup wall-s", r.name, m.wall.Seconds())
			benchRecord("backup cpu-s/GB", r.name, m.cpu.Seconds()/(dbBytes/1e9))
			benchRecord("backup peak-RSS-MB", r.name, m.rssMB)
			b.ReportMetric(m.wall.Seconds(), r.name+"-wall-s")
			b.Logf("backup  %-26s wall %6.1f s  CPU %6.1f s  peak RSS %6.1f MB  stored %7.1f MB",
				r.name, m.wall.Seconds(), m.cpu.Seconds(), m.rssMB, m.storedMB)
		}
		walkeeperRestore := func(bin, repo string, args ...string) func(dir string) *exec.Cmd {
			return func(dir string) *exec.Cmd {
				return exec.Command(bin, append([]string{"restore", "--repo", repo, "--target-dir", dir, "--log-level", "warn",
					"--restore-command", "false %p"}, args...)...)
			}
		}
		restores := []job{
			{"walkeeper-parallel-1", walkeeperRestore(bin, repos["walkeeper-zstd"], "--parallel", "1")},
			{"walkeeper-parallel-2", walkeeperRestore(bin, repos["walkeeper-zstd"], "--parallel", "2")},
			{"walkeeper-zstd", walkeeperRestore(bin, repos["walkeeper-zstd"])},
			{"walkeeper-zstd-age", walkeeperRestore(bin, repos["walkeeper-zstd-age"], "--identity-file", idFile)},
			{"walkeeper-zstd-s3", func(dir string) *exec.Cmd {
				cmd := walkeeperRestore(bin, s3url)(dir)
				cmd.Env = append(os.Environ(), s3env...)
				return cmd
			}},
		}
		// The same without fsync: how the workers scale with cores when
		// the disk is not the limit (with fsync, two workers restore at
		// about this machine's disk bandwidth).
		restores = append(restores,
			job{"walkeeper-no-sync-parallel-1", walkeeperRestore(bin, repos["walkeeper-zstd"], "--parallel", "1", "--no-sync")},
			job{"walkeeper-no-sync-parallel-2", walkeeperRestore(bin, repos["walkeeper-zstd"], "--parallel", "2", "--no-sync")})
		if before != "" {
			restores = append(restores,
				job{"walkeeper-before-zstd", walkeeperRestore(before, repos["walkeeper-before-zstd"])},
				job{"walkeeper-before-parallel-1", walkeeperRestore(before, repos["walkeeper-before-zstd"], "--parallel", "1")},
				job{"walkeeper-before-parallel-2", walkeeperRestore(before, repos["walkeeper-before-zstd"], "--parallel", "2")},
				job{"walkeeper-before-no-sync-parallel-1", walkeeperRestore(before, repos["walkeeper-before-zstd"], "--parallel", "1", "--no-sync")},
				job{"walkeeper-before-no-sync-parallel-2", walkeeperRestore(before, repos["walkeeper-before-zstd"], "--parallel", "2", "--no-sync")})
		}
		if brConf != "" {
			restores = append(restores, job{"pgbackrest-process-max-2", func(dir string) *exec.Cmd {
				return c.Command(context.Background(), pgbackrest, "--config", brConf, "--stanza", "bench", "--pg1-path", dir, "restore")
			}})
		}
		// One untimed restore first: the first writes of a freshly booted
		// VM into memory it has not touched cost several times more (the
		// host backs the pages), which would go to whichever tool runs
		// first.
		warm := harness.MakeDir(b, "bench-restore-warm")
		if out, err := walkeeperRestore(bin, repos["walkeeper-zstd"], "--no-sync")(filepath.Join(warm, "data")).CombinedOutput(); err != nil {
			b.Fatalf("warm-up restore: %v\n%s", err, out)
		}
		restored := dirSize(b, warm)
		os.RemoveAll(warm)
		// The disk's floor for a restore: the same number of bytes written
		// sequentially into one file and fsynced, as dd conv=fsync would.
		// With fsync no restore can be faster, so parallel-1 over this is
		// the most --parallel 2 can gain on this machine.
		floor := diskWriteFloor(b, restored)
		benchRecord("restore wall-s", "disk-write-fsync", floor.Seconds())
		b.Logf("restore %-26s wall %6.1f s  (%.0f MB in one file, fsynced: %.0f MB/s)",
			"disk-write-fsync", floor.Seconds(), float64(restored)/1e6, float64(restored)/1e6/floor.Seconds())
		for _, r := range restores {
			parent := harness.MakeDir(b, "bench-restore-"+r.name)
			dir := filepath.Join(parent, "data")
			if strings.HasPrefix(r.name, "pgbackrest") {
				dir = parent // pgBackRest restores into an existing empty directory
			}
			if out, err := exec.Command("sync").CombinedOutput(); err != nil {
				b.Fatalf("sync: %v %s", err, out)
			}
			m := measure(b, "restore "+r.name, r.cmd(dir), dir)
			benchRecord("restore wall-s", r.name, m.wall.Seconds())
			benchRecord("restore cpu-s/GB", r.name, m.cpu.Seconds()/(dbBytes/1e9))
			benchRecord("restore peak-RSS-MB", r.name, m.rssMB)
			b.Logf("restore %-26s wall %6.1f s  CPU %6.1f s  peak RSS %6.1f MB  restored %7.1f MB",
				r.name, m.wall.Seconds(), m.cpu.Seconds(), m.rssMB, m.storedMB)
			os.RemoveAll(parent)
		}
	}
}

// diskWriteFloor writes n bytes into one new file in 1 MiB writes, fsyncs
// it and returns how long that took.
func diskWriteFloor(b *testing.B, n int64) time.Duration {
	b.Helper()
	dir := harness.MakeDir(b, "bench-disk-floor")
	defer os.RemoveAll(dir)
	if out, err := exec.Command("sync").CombinedOutput(); err != nil {
		b.Fatalf("sync: %v %s", err, out)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	began := time.Now()
	f, err := os.Create(filepath.Join(dir, "floor"))
	if err != nil {
		b.Fatal(err)
	}
	for left := n; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return time.Since(began)
}

// benchKeys writes a fresh age key pair for the encrypted runs.
func benchKeys(b *testing.B) (identityFile, recipient string) {
	id, rec, err := storage.GenerateKeyPair()
	if err != nil {
		b.Fatal(err)
	}
	identityFile = filepath.Join(harness.MakeDir(b, "bench-keys"), "key.txt")
	if err := os.WriteFile(identityFile, []byte(id+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	return identityFile, rec
}

// run is what one benchmarked command cost.
type run struct {
	wall, cpu       time.Duration
	rssMB, storedMB float64
}

// measure runs cmd to completion and reads its wall time, CPU time (user +
// system), peak RSS and the size of what it wrote into dir.
func measure(b *testing.B, name string, cmd *exec.Cmd, dir string) run {
	b.Helper()
	cmd.Stderr = os.Stderr
	began := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	wall := time.Since(began)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return run{
		wall:     wall,
		cpu:      time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		rssMB:    float64(ru.Maxrss) / 1024,
		storedMB: float64(dirSize(b, dir)) / 1e6,
	}
}

func lsnOfTB(tb testing.TB, s string) uint64 {
	var hi, lo uint64
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		tb.Fatal(err)
	}
	return hi<<32 | lo
}

func dirSize(tb testing.TB, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n
}
