package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
	"github.com/walkeeper/walkeeper/test/harness"
)

// BenchmarkArchiveScale measures whether the archive operations a running
// system repeats all day cost the same whatever the size of the repository:
// storing a segment (wal-push, archive_command), fetching a stored segment
// (wal-fetch, restore_command), fetching the segment after the newest
// complete one (what a standby asks for every 5 s; the newest .partial is
// stored for it), and `status` without --dsn (cron, Nagios); `verify
// --backup latest` for information. Each is one walkeeper process (built
// without -race), timed as a whole, against a local and an S3 (versitygw)
// repository holding 1,000 and 100,000 older segment objects besides the
// real ones. The two sizes are measured alternately, run after run, so the
// noise of the machine spreads over both; each cell is the median.
//
// The repositories are real: a PostgreSQL cluster streamed into them with
// `walkeeper stream`, they hold a backup, a few complete segments and the
// newest segment as .partial (the stream was stopped with SIGTERM), and
// nothing runs against them while they are measured.
//
// Padding layout: a repository that has archived for a long time holds many
// complete segments of its timeline from before its newest backup, up to
// where retention last cut. To have room for 100,000 of them below the real
// WAL, the cluster's WAL is moved to start at segment 000000010000020000000000
// (LSN 200/0, 2 TiB into timeline 1) with pg_resetwal -l right after initdb;
// the padding is the N segments of timeline 1 just before it, so the archive
// is one contiguous run of timeline 1 whose newest part is real. Padding
// objects are valid framed objects with the repository's codec (16 MiB of
// zeros, about 2 kB stored) under the right keys; no measured operation
// reads their content. They are written as files straight into the local
// repository and into versitygw's posix directory (with the extended
// attributes versitygw gives an object it stored itself, copied from one
// padding object put through the S3 API), because 100,000 PutObject calls
// would dominate the benchmark's time and listing does not tell the
// difference.
//
// How each operation runs: wal-push stores a real complete segment of the
// cluster that the repositories lack (the one after the partial's, copied
// from pg_wal), and the stored object is deleted after each run; wal-fetch
// runs as restore_command does (in a fresh data directory, DEST
// pg_wal/RECOVERYXLOG, default --prefetch, and the detached prefetcher is
// waited for before the next run); the next missing segment is the one
// whose .partial is stored, so wal-fetch serves it zero-padded (exit 0) or
// reports it not found (exit 4): the table says which. An operation that
// takes long at 100,000 runs fewer times (not below 3), so the benchmark
// stays near 10 minutes on a 2-core machine.
//
//	go test -run '^$' -bench ArchiveScale -benchtime 1x -timeout 60m ./test/
func BenchmarkArchiveScale(b *testing.B) {
	began := time.Now()
	harness.RequirePGBin(b, "pg_resetwal")
	bin := filepath.Join(b.TempDir(), "walkeeper")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/walkeeper").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	sizes := [2]int{1000, 100000}
	a := buildArchives(b, bin)
	archiveLogf("real repositories built in %v: %d complete segments %s..%s, partial %s, backup; push %s",
		time.Since(began).Round(time.Second), len(a.segments), a.segments[0], a.segments[len(a.segments)-1], a.nextMissing, a.pushName)

	padStart := time.Now()
	for _, be := range a.backends {
		for i, n := range sizes {
			be.pad(b, be.dirs[i], a.padNames(b, n), a.padding)
		}
	}
	archiveLogf("padding written in %v", time.Since(padStart).Round(time.Second))
	for _, be := range a.backends {
		for i, n := range sizes {
			checkPadded(b, bin, be, be.urls[i], be.dirs[i], len(a.segments)+n)
		}
	}

	ops := a.operations()
	b.ResetTimer()
	for range b.N {
		measureStart := time.Now()
		var rows []archiveRow
		for _, be := range a.backends {
			for _, op := range ops {
				rows = append(rows, measureArchiveOp(b, bin, be, op))
			}
		}
		archiveLogf("measured in %v", time.Since(measureStart).Round(time.Second))
		// Printed, not logged: the testing package keeps only the first
		// ten lines of a benchmark's log.
		fmt.Fprint(os.Stdout, "\n"+formatArchiveTable(rows, sizes)+"\n")
		for _, r := range rows {
			b.ReportMetric(r.ratio(), r.be+"-"+r.key+"-"+sizeLabel(sizes[1])+"/"+sizeLabel(sizes[0]))
		}
	}
	b.StopTimer()
	archiveLogf("whole benchmark: %v", time.Since(began).Round(time.Second))
}

// archiveLogf prints a progress line on standard error (the testing
// package keeps only the first ten lines of a benchmark's log).
func archiveLogf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "archive-scale: "+format+"\n", args...)
}

// archiveStartWAL is where pg_resetwal moves the cluster's WAL, so that
// 100,000 older segments of timeline 1 fit below it.
const archiveStartWAL = "000000010000020000000000"

// archives is the real repositories and what the operations need.
type archives struct {
	backends    []*archiveBackend
	segSize     uint64
	codec       storage.Codec
	segments    []string // the real complete segments, sorted
	nextMissing string   // the segment after the newest complete one (stored as .partial)
	pushName    string   // a real complete segment of the cluster the repositories do not have
	pushPath    string   // its copy, taken from pg_wal
	padding     []byte   // one stored padding object
}

// archiveBackend is one kind of repository, in two copies: [0] padded with
// 1,000, [1] with 100,000 segments.
type archiveBackend struct {
	name string
	env  []string
	urls [2]string
	dirs [2]string // the directory holding the repository's files
	// remove deletes a stored object (the pushed segment) from copy i.
	remove func(tb testing.TB, i int, key string)
	// pad writes padding objects named names into the repository in dir.
	pad func(tb testing.TB, dir string, names []string, data []byte)
}

// buildArchives starts a cluster whose WAL starts at archiveStartWAL,
// streams it into a local and an S3 repository, takes a backup into each,
// stops the streams (leaving the newest segment as .partial), keeps a copy
// of the next complete segment for wal-push, stops the cluster and copies
// each repository, so that both copies hold the same real objects.
func buildArchives(b *testing.B, bin string) *archives {
	c := harness.StartCluster(b, harness.ClusterOptions{Name: "bench-archive"})
	c.Stop(b)
	if out, err := c.RunAsPostgres(b, "pg_resetwal", "-l", archiveStartWAL, "-D", c.DataDir()); err != nil {
		b.Fatalf("pg_resetwal: %v\n%s", err, out)
	}
	c.Start(b)

	localParent := harness.MakeDir(b, "archive-local")
	localDirs := [2]string{filepath.Join(localParent, "repo-1k"), filepath.Join(localParent, "repo-100k")}
	local := &archiveBackend{
		name: "local",
		urls: localDirs,
		dirs: localDirs,
		remove: func(tb testing.TB, i int, key string) {
			if err := os.Remove(filepath.Join(localDirs[i], filepath.FromSlash(key))); err != nil {
				tb.Fatal(err)
			}
		},
		pad: padFiles,
	}

	srv := harness.StartS3(b)
	buckets := [2]string{srv.Bucket, srv.NewBucket(b)}
	s3be := &archiveBackend{
		name: "s3",
		env:  append(srv.Env(), "WALKEEPER_S3_ENDPOINT="+srv.Endpoint, "WALKEEPER_S3_PATH_STYLE=true"),
		urls: [2]string{"s3://" + buckets[0] + "/cluster", "s3://" + buckets[1] + "/cluster"},
		dirs: [2]string{filepath.Join(srv.Dir, buckets[0], "cluster"), filepath.Join(srv.Dir, buckets[1], "cluster")},
		remove: func(tb testing.TB, i int, key string) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := srv.Client().DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(buckets[i]), Key: aws.String("cluster/" + key)}); err != nil {
				tb.Fatal(err)
			}
		},
	}
	s3be.pad = func(tb testing.TB, dir string, names []string, data []byte) {
		// The first object goes through the S3 API; the others are copies
		// of its file with its extended attributes.
		bucket := filepath.Base(filepath.Dir(dir))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := srv.Client().PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("cluster/" + names[0]),
			Body: bytes.NewReader(data)}); err != nil {
			tb.Fatal(err)
		}
		padFilesLike(tb, dir, names[0], names[1:])
	}
	a := &archives{backends: []*archiveBackend{local, s3be}}

	var streams []*bgProcess
	for i, be := range a.backends {
		streams = append(streams, startBackground(b, bin, be.env, "stream", "--repo", be.urls[0],
			"--dsn", c.DSN(harness.ReplicationUser), "--slot", fmt.Sprintf("archive_%d", i)))
	}
	waitQuery(b, c, "SELECT count(*) = 2 FROM pg_replication_slots WHERE slot_name LIKE 'archive\\_%' AND active", "the streams' slots", streams)
	c.Exec(b, "CREATE TABLE archive_bench (g int)")
	insertAndSwitch := func() string {
		c.Exec(b, "INSERT INTO archive_bench SELECT generate_series(1, 1000)")
		return c.QueryString(b, "SELECT pg_walfile_name(pg_switch_wal())")
	}
	for range 3 {
		insertAndSwitch()
	}
	for _, be := range a.backends {
		cmd := exec.Command(bin, "backup", "--repo", be.urls[0], "--dsn", c.DSN(harness.ReplicationUser), "--checkpoint", "fast")
		cmd.Env = append(append(os.Environ(), "WALKEEPER_LOG_LEVEL=warn"), be.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: backup: %v\n%s", be.name, err, out)
		}
	}
	for range 2 {
		insertAndSwitch()
	}
	c.Exec(b, "INSERT INTO archive_bench SELECT generate_series(1, 1000)") // WAL for the partial
	end := c.QueryString(b, "SELECT pg_current_wal_lsn()::text")
	// The slot follows what is durable in the repository, the partial
	// included.
	for i := range a.backends {
		slot := fmt.Sprintf("archive_%d", i)
		waitQuery(b, c, fmt.Sprintf("SELECT coalesce((SELECT restart_lsn >= '%s' FROM pg_replication_slots WHERE slot_name = '%s'), false)", end, slot),
			"slot "+slot+" at "+end, streams[i:i+1])
		if code := streams[i].stop(b, syscall.SIGTERM); code != 0 {
			b.Fatalf("%s: stream exit code %d:\n%s", a.backends[i].name, code, streams[i].output())
		}
	}

	var cfg storage.Config
	if data, err := os.ReadFile(filepath.Join(local.dirs[0], storage.ConfigKey)); err != nil {
		b.Fatal(err)
	} else if err := json.Unmarshal(data, &cfg); err != nil {
		b.Fatal(err)
	}
	a.segSize = cfg.WALSegmentSize
	var partial string
	for _, be := range a.backends {
		var segs []string
		var part string
		for _, file := range walFiles(b, be.dirs[0]) {
			base, codec, _ := storage.SplitExt(file)
			switch archive.KindOf(base) {
			case archive.Segment:
				segs = append(segs, base)
				a.codec = codec
			case archive.Partial:
				part = base[:24]
			}
		}
		sort.Strings(segs)
		if a.segments == nil {
			a.segments, partial = segs, part
		} else if !slices.Equal(segs, a.segments) || part != partial {
			b.Fatalf("%s holds %v and partial %q, local holds %v and %q", be.name, segs, part, a.segments, partial)
		}
	}
	if len(a.segments) < 3 || partial == "" {
		b.Fatalf("want at least 3 complete segments and a partial, have %v and %q", a.segments, partial)
	}
	lastName, _ := archive.ParseName(a.segments[len(a.segments)-1], a.segSize)
	a.nextMissing = archive.SegmentName(lastName.TLI, lastName.Seg+1, a.segSize)
	if partial != a.nextMissing {
		b.Fatalf("the partial is %s, want the segment after the newest complete one, %s", partial, a.nextMissing)
	}
	if got := insertAndSwitch(); got != a.nextMissing {
		b.Fatalf("pg_switch_wal completed %s, want %s", got, a.nextMissing)
	}
	a.pushName = insertAndSwitch()
	data, err := os.ReadFile(filepath.Join(c.DataDir(), "pg_wal", a.pushName))
	if err != nil {
		b.Fatal(err)
	}
	a.pushPath = filepath.Join(b.TempDir(), a.pushName)
	if err := os.WriteFile(a.pushPath, data, 0o600); err != nil {
		b.Fatal(err)
	}
	c.Stop(b) // nothing but the measured commands runs from here on

	for _, be := range a.backends {
		copyTree(b, be.dirs[0], be.dirs[1])
	}
	a.padding = paddingObject(b, a.codec, int(a.segSize))
	return a
}

// waitQuery waits until sql returns true.
func waitQuery(tb testing.TB, c *harness.Cluster, sql, what string, procs []*bgProcess) {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for c.QueryString(tb, sql) != "t" {
		if time.Now().After(deadline) {
			var out strings.Builder
			for _, p := range procs {
				out.WriteString(p.output())
			}
			tb.Fatalf("timed out waiting for %s:\n%s", what, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// padNames returns the names of the n segments of timeline 1 just before
// the real WAL, as stored keys.
func (a *archives) padNames(tb testing.TB, n int) []string {
	firstName, _ := archive.ParseName(a.segments[0], a.segSize)
	first := firstName.Seg
	if first <= uint64(n) {
		tb.Fatalf("the real WAL starts at segment %d: no room for %d older ones", first, n)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = archivetest.WALKey(archive.SegmentName(1, first-1-uint64(i), a.segSize)) + a.codec.Ext()
	}
	return names
}

// paddingObject is the stored form of a segment of zeros.
func paddingObject(tb testing.TB, codec storage.Codec, segSize int) []byte {
	ctx := context.Background()
	mem := storage.NewMemory()
	w, err := storage.NewRepository(mem, codec).Create(ctx, archivetest.WALKey("000000010000000000000001"))
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(make([]byte, segSize)); err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	rc, err := mem.Get(ctx, archivetest.WALKey("000000010000000000000001")+codec.Ext(), 0, -1)
	if err != nil {
		tb.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// padFiles writes data under each key of names into the local repository
// in dir, as the local backend stores objects (mode 0600).
func padFiles(tb testing.TB, dir string, names []string, data []byte) {
	parallelFiles(tb, names, func(name string) error {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		return os.WriteFile(p, data, 0o600)
	})
}

// walFiles returns the names of the files under dir's wal/, in any
// layout (a group directory's files by their own name).
func walFiles(tb testing.TB, dir string) []string {
	var out []string
	err := filepath.WalkDir(filepath.Join(dir, "wal"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			out = append(out, d.Name())
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// padFilesLike copies the file of key model in dir, with its mode and
// extended attributes, under each key of names.
func padFilesLike(tb testing.TB, dir, model string, names []string) {
	src := filepath.Join(dir, filepath.FromSlash(model))
	data, err := os.ReadFile(src)
	if err != nil {
		tb.Fatal(err)
	}
	st, err := os.Stat(src)
	if err != nil {
		tb.Fatal(err)
	}
	attrs, err := listXattrs(src)
	if err != nil {
		tb.Fatal(err)
	}
	// Group directories as versitygw makes them: like the model's.
	dirSt, err := os.Stat(filepath.Dir(src))
	if err != nil {
		tb.Fatal(err)
	}
	dirAttrs, err := listXattrs(filepath.Dir(src))
	if err != nil {
		tb.Fatal(err)
	}
	var dirsMu sync.Mutex
	made := map[string]bool{filepath.Dir(src): true}
	parallelFiles(tb, names, func(name string) error {
		p := filepath.Join(dir, filepath.FromSlash(name))
		dirsMu.Lock()
		if parent := filepath.Dir(p); !made[parent] {
			if err := os.Mkdir(parent, dirSt.Mode().Perm()); err != nil && !os.IsExist(err) {
				dirsMu.Unlock()
				return err
			}
			if err := setXattrs(parent, dirAttrs); err != nil {
				dirsMu.Unlock()
				return err
			}
			made[parent] = true
		}
		dirsMu.Unlock()
		if err := os.WriteFile(p, data, st.Mode().Perm()); err != nil {
			return err
		}
		return setXattrs(p, attrs)
	})
}

// parallelFiles calls fn for every name, four at a time.
func parallelFiles(tb testing.TB, names []string, fn func(string) error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	next := make(chan string)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range next {
				if err := fn(name); err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, name := range names {
		next <- name
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		tb.Fatal(firstErr)
	}
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// copyTree copies the files and directories under src to dst, with their
// modes and extended attributes (versitygw keeps an object's metadata in
// them).
func copyTree(tb testing.TB, src, dst string) {
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if err := os.MkdirAll(target, 0o700); err != nil {
				return err
			}
		} else {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(target, data, 0o600); err != nil {
				return err
			}
		}
		if err := os.Chmod(target, info.Mode().Perm()); err != nil {
			return err
		}
		attrs, err := listXattrs(p)
		if err != nil {
			return err
		}
		return setXattrs(target, attrs)
	})
	if err != nil {
		tb.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}

func listXattrs(path string) (map[string][]byte, error) {
	buf := make([]byte, 64<<10)
	n, err := syscall.Listxattr(path, buf)
	if err != nil {
		return nil, fmt.Errorf("listxattr %s: %w", path, err)
	}
	attrs := map[string][]byte{}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := syscall.Getxattr(path, name, v)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", path, name, err)
		}
		attrs[name] = v[:m]
	}
	return attrs, nil
}

func setXattrs(path string, attrs map[string][]byte) error {
	for name, v := range attrs {
		if err := syscall.Setxattr(path, name, v, 0); err != nil {
			return fmt.Errorf("setxattr %s %s: %w", path, name, err)
		}
	}
	return nil
}

// checkPadded counts the segment objects in the repository's directory
// (want: the real ones and the padding), then runs `status --json` once
// (which also warms the caches) and checks that it sees one partial and no
// gap. status lists only the WAL from the oldest backup on, so its segment
// count leaves the older padding out.
func checkPadded(b *testing.B, bin string, be *archiveBackend, url, dir string, want int) {
	stored := 0
	for _, n := range walFiles(b, dir) {
		if base, _, _ := storage.SplitExt(n); archive.KindOf(base) == archive.Segment {
			stored++
		}
	}
	if stored != want {
		b.Fatalf("%s: %s holds %d segment objects, want %d", be.name, dir, stored, want)
	}
	began := time.Now()
	res := runArchiveCmd(b, bin, be.env, "", "status", "--repo", url, "--json")
	if res.code != 0 && res.code != 5 {
		b.Fatalf("%s: status %s: exit %d\n%s%s", be.name, url, res.code, res.stdout, res.stderr)
	}
	var st struct {
		Repository struct {
			WALSegments int               `json:"wal_segments"`
			WALPartials int               `json:"wal_partials"`
			WALGaps     []json.RawMessage `json:"wal_gaps"`
			NewestWAL   map[string]any    `json:"newest_wal"`
		} `json:"repository"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &st); err != nil {
		b.Fatalf("%s: status --json: %v\n%s", be.name, err, res.stdout)
	}
	r := st.Repository
	if r.WALPartials != 1 || len(r.WALGaps) != 0 {
		b.Fatalf("%s: %s lists %d partials, gaps %v; want 1, none", be.name, url, r.WALPartials, r.WALGaps)
	}
	archiveLogf("%-5s %-60s %6d segment objects, status lists %d (from the backup on), newest WAL %v, exit %d, problems %q (status --json: %v)",
		be.name, url, stored, r.WALSegments, r.NewestWAL["name"], res.code, st.Problems, time.Since(began).Round(time.Millisecond))
}

// archiveOp is one measured operation.
type archiveOp struct {
	key, name string
	// okCodes are the accepted exit codes.
	okCodes []int
	// args returns the command line for a repository; dir is a fresh data
	// directory with pg_wal/ (the working directory, as PostgreSQL runs
	// restore_command and archive_command there).
	args func(url, dir string) []string
	// check inspects a run's result (dir as given to args).
	check func(tb testing.TB, dir string, code int)
	// after cleans up after a run on copy i (dir as given to args).
	after func(tb testing.TB, be *archiveBackend, i int, dir string)
	// info: not one of the four operations, reported for information.
	info bool
}

func (a *archives) operations() []archiveOp {
	segFetched := func(tb testing.TB, dir string, code int) {
		if code != 0 {
			return
		}
		st, err := os.Stat(filepath.Join(dir, "pg_wal", "RECOVERYXLOG"))
		if err != nil || st.Size() != int64(a.segSize) {
			tb.Fatalf("wal-fetch wrote no complete segment: %v", err)
		}
	}
	waitSpool := func(tb testing.TB, _ *archiveBackend, _ int, dir string) {
		waitSpoolFree(tb, filepath.Join(dir, "pg_wal", ".walkeeper-prefetch"))
	}
	return []archiveOp{
		{
			key: "wal-push", name: "wal-push (new segment)", okCodes: []int{0},
			args: func(url, _ string) []string { return []string{"wal-push", "--repo", url, a.pushPath} },
			after: func(tb testing.TB, be *archiveBackend, i int, _ string) {
				key := archivetest.WALKey(a.pushName) + a.codec.Ext()
				if _, err := os.Stat(filepath.Join(be.dirs[i], filepath.FromSlash(key))); err != nil {
					tb.Fatalf("wal-push stored nothing: %v", err)
				}
				be.remove(tb, i, key)
			},
		},
		{
			key: "fetch-stored", name: "wal-fetch (stored segment)", okCodes: []int{0},
			args: func(url, _ string) []string {
				return []string{"wal-fetch", "--repo", url, a.segments[0], "pg_wal/RECOVERYXLOG"}
			},
			check: segFetched,
			after: waitSpool,
		},
		{
			key: "fetch-next", name: "wal-fetch (next missing)", okCodes: []int{0, 4},
			args: func(url, _ string) []string {
				return []string{"wal-fetch", "--repo", url, a.nextMissing, "pg_wal/RECOVERYXLOG"}
			},
			check: segFetched,
			after: waitSpool,
		},
		{
			key: "status", name: "status (no --dsn)", okCodes: []int{0, 5},
			args: func(url, _ string) []string { return []string{"status", "--repo", url} },
		},
		{
			key: "verify", name: "verify --backup latest", okCodes: []int{0, 5}, info: true,
			args: func(url, _ string) []string { return []string{"verify", "--repo", url, "--backup", "latest"} },
		},
	}
}

// waitSpoolFree waits until no detached prefetcher holds the spool's lock,
// so that it does not run during the next measurement.
func waitSpoolFree(tb testing.TB, spool string) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		f, err := os.Open(filepath.Join(spool, ".lock"))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err != nil {
			tb.Fatal(err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		f.Close()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the prefetcher in %s did not exit", spool)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// archiveRow is one line of the table.
type archiveRow struct {
	op, key, be string
	info        bool
	times       [2][]time.Duration
	codes       map[int]bool
}

func (r archiveRow) median(i int) time.Duration {
	d := slices.Clone(r.times[i])
	slices.Sort(d)
	n := len(d)
	if n%2 == 1 {
		return d[n/2]
	}
	return (d[n/2-1] + d[n/2]) / 2
}

func (r archiveRow) ratio() float64 {
	return r.median(1).Seconds() / r.median(0).Seconds()
}

// Repetitions per cell: up to archiveMaxRuns, fewer (not below
// archiveMinRuns) when one round of both sizes takes long, so that an
// operation takes about archiveOpBudget.
const (
	archiveMaxRuns  = 7
	archiveMinRuns  = 3
	archiveOpBudget = 100 * time.Second
)

// measureArchiveOp runs op against both copies of be alternately (the
// order flips every round) and returns the timings.
func measureArchiveOp(b *testing.B, bin string, be *archiveBackend, op archiveOp) archiveRow {
	row := archiveRow{op: op.name, key: op.key, be: be.name, info: op.info, codes: map[int]bool{}}
	runs := archiveMaxRuns
	for round := 0; round < runs; round++ {
		order := []int{0, 1}
		if round%2 == 1 {
			order = []int{1, 0}
		}
		var roundTime time.Duration
		for _, i := range order {
			dir, err := os.MkdirTemp("", "walkeeper-archive-data-")
			if err != nil {
				b.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(dir, "pg_wal"), 0o700); err != nil {
				b.Fatal(err)
			}
			res := runArchiveCmd(b, bin, be.env, dir, op.args(be.urls[i], dir)...)
			if !slices.Contains(op.okCodes, res.code) {
				b.Fatalf("%s %s on %s: exit %d\n%s%s", be.name, op.name, be.urls[i], res.code, res.stdout, res.stderr)
			}
			if op.check != nil {
				op.check(b, dir, res.code)
			}
			if op.after != nil {
				op.after(b, be, i, dir)
			}
			os.RemoveAll(dir)
			row.times[i] = append(row.times[i], res.wall)
			row.codes[res.code] = true
			roundTime += res.wall
		}
		if round == 0 {
			runs = max(archiveMinRuns, min(archiveMaxRuns, int(archiveOpBudget/roundTime)))
		}
	}
	archiveLogf("%-5s %-28s %v | %v", be.name, op.name, roundedAll(row.times[0]), roundedAll(row.times[1]))
	return row
}

func roundedAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(time.Millisecond)
	}
	return out
}

// formatArchiveTable prints the rows side by side.
func formatArchiveTable(rows []archiveRow, sizes [2]int) string {
	var sb strings.Builder
	head := fmt.Sprintf("%-30s %-7s %12s %12s %9s %5s  %s", "operation", "backend",
		sizeLabel(sizes[0])+" segs", sizeLabel(sizes[1])+" segs", sizeLabel(sizes[1])+"/"+sizeLabel(sizes[0]), "runs", "exit codes")
	sb.WriteString(head + "\n" + strings.Repeat("-", len(head)+8) + "\n")
	for _, r := range rows {
		name := r.op
		if r.info {
			name += " (info)"
		}
		var codes []string
		for _, c := range slices.Sorted(maps.Keys(r.codes)) {
			codes = append(codes, fmt.Sprintf("%d%s", c, exitMeaning(r.key, c)))
		}
		fmt.Fprintf(&sb, "%-30s %-7s %10.3f s %10.3f s %8.1fx %5d  %s\n", name, r.be,
			r.median(0).Seconds(), r.median(1).Seconds(), r.ratio(), len(r.times[0]), strings.Join(codes, ", "))
	}
	sb.WriteString("(median wall time of one walkeeper process per cell; both sizes measured alternately)\n")
	return sb.String()
}

// sizeLabel writes 1000 as 1k.
func sizeLabel(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

func exitMeaning(key string, code int) string {
	switch {
	case key == "fetch-next" && code == 0:
		return " (partial served, zero-padded)"
	case key == "fetch-next" && code == 4:
		return " (not found)"
	case code == 5:
		return " (problems reported)"
	}
	return ""
}

// archiveResult is one finished walkeeper process.
type archiveResult struct {
	wall           time.Duration
	code           int
	stdout, stderr string
}

// runArchiveCmd runs the binary in dir (when not empty) and times it.
func runArchiveCmd(tb testing.TB, bin string, env []string, dir string, args ...string) archiveResult {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "WALKEEPER_LOG_FORMAT=text"), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	began := time.Now()
	err := cmd.Run()
	res := archiveResult{wall: time.Since(began), stdout: o.String(), stderr: e.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		tb.Fatalf("walkeeper %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// bgProcess is a walkeeper process running in the background.
type bgProcess struct {
	cmd  *exec.Cmd
	out  *os.File
	done chan struct{}
}

func startBackground(tb testing.TB, bin string, env []string, args ...string) *bgProcess {
	tb.Helper()
	out, err := os.CreateTemp(tb.TempDir(), "walkeeper-*.log")
	if err != nil {
		tb.Fatal(err)
	}
	p := &bgProcess{cmd: exec.Command(bin, args...), out: out, done: make(chan struct{})}
	p.cmd.Env = append(append(os.Environ(), "WALKEEPER_LOG_FORMAT=text"), env...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	tb.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		out.Close()
	})
	return p
}

func (p *bgProcess) output() string {
	data, _ := os.ReadFile(p.out.Name())
	return string(data)
}

// stop sends sig and returns the exit code.
func (p *bgProcess) stop(tb testing.TB, sig syscall.Signal) int {
	tb.Helper()
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		tb.Fatalf("walkeeper did not exit after %v:\n%s", sig, p.output())
	}
	return p.cmd.ProcessState.ExitCode()
}
