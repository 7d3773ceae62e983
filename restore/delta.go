package restore

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
)

// A delta restore (Options.Delta, docs/restore.md "Delta restore") makes an
// existing data directory equal to a backup, writing only what differs:
//
//  1. Before anything is written: refuse a directory a live postmaster
//     runs (postmaster.pid naming an existing process) or of another
//     cluster (the system identifier in its global/pg_control, or in the
//     marker an unfinished delta restore left), and an incremental backup.
//     The backup's manifest is loaded: each file's path, size and checksum.
//  2. global/pg_control is removed and the removal made durable; then the
//     marker (FailedMarker, naming the cluster) is written durably. From
//     here until the last step PostgreSQL refuses to start the directory.
//  3. The roots are swept: every entry the manifest does not list is
//     removed (directories no listed file lies below go whole, links too:
//     pg_tblspc's are recreated); what PostgreSQL leaves out of a backup
//     (pg_wal contents, postmaster.pid and .opts, pg_replslot and the
//     other excluded directories' contents, pgsql_tmp*, pg_internal.init,
//     unlogged relations' forks) is not in the manifest, so it goes the
//     same way and the tar recreates the directories empty. A listed file
//     of the listed size is a candidate.
//  4. The candidates are checksummed with the manifest's algorithm (CRC-32C
//     by default) by a pool of Options.Parallel readers with one buffer
//     each; a match is kept (and fsynced, so it is as durable as a written
//     one), anything else is written.
//  5. The archives are extracted as for any restore; a kept file's entry
//     is read past (the stream is still read whole and checked).
//  6. Tablespace links, backup_manifest, recovery settings; the marker is
//     removed; everything is made durable; pg_control is written last.
//
// A failure after step 2 leaves the directory as it is, without
// pg_control, with the marker saying why: running the delta restore again
// finishes it (what is already equal is kept).

// DeltaStats is what a delta restore kept and removed; what it wrote is in
// Result.Wrote.
type DeltaStats struct {
	KeptFiles, KeptBytes int64
	// Removed counts the entries (files, links, directories) removed
	// because the backup does not have them.
	Removed int64
}

// WriteStats is what a restore wrote into the data directory: files
// created and bytes written into them.
type WriteStats struct {
	Files, Bytes int64
}

// manifestEntry is one file of a backup manifest.
type manifestEntry struct {
	size int64
	algo string // CRC32C, SHA224, SHA256, SHA384, SHA512, or "" for none
	sum  string // hex, as the manifest prints it
}

// backupManifest is what a delta restore needs of backup_manifest: the
// files by path, and every directory some file lies below.
type backupManifest struct {
	files map[string]manifestEntry
	dirs  map[string]bool
}

// parseManifest reads a backup manifest as PostgreSQL writes it: one file
// per line in its Files array. Memory is one entry per file, not per byte.
func parseManifest(r io.Reader) (*backupManifest, error) {
	m := &backupManifest{files: map[string]manifestEntry{}, dirs: map[string]bool{}}
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadString('\n')
		if err != nil && err != io.EOF {
			return nil, err
		}
		body := strings.TrimSpace(line)
		if strings.HasPrefix(body, `{ "Path": `) || strings.HasPrefix(body, `{ "Encoded-Path": `) {
			body = strings.TrimSuffix(body, ",")
			var f struct {
				manifestFile
				EncodedPath string `json:"Encoded-Path"`
			}
			if err := json.Unmarshal([]byte(body), &f); err != nil {
				return nil, fmt.Errorf("manifest line %q: %w", body, err)
			}
			p := f.Path
			if f.EncodedPath != "" {
				raw, err := hex.DecodeString(f.EncodedPath)
				if err != nil {
					return nil, fmt.Errorf("manifest line %q: %w", body, err)
				}
				p = string(raw)
			}
			algo := f.Algorithm
			if algo == "NONE" {
				algo = ""
			}
			m.files[p] = manifestEntry{size: f.Size, algo: algo, sum: strings.ToLower(f.Checksum)}
			for d := path.Dir(p); d != "." && d != "/" && !m.dirs[d]; d = path.Dir(d) {
				m.dirs[d] = true
			}
		}
		if err == io.EOF {
			break
		}
	}
	if len(m.files) == 0 {
		return nil, errors.New("the manifest lists no files")
	}
	return m, nil
}

// newHash returns the manifest algorithm's hash and how to print its sum.
func newHash(algo string) (hash.Hash, func([]byte) string, bool) {
	hexOf := func(b []byte) string { return hex.EncodeToString(b) }
	switch algo {
	case "CRC32C":
		// PostgreSQL prints the CRC's bytes in memory (little-endian)
		// order; Sum is big-endian.
		return crc32.New(castagnoli), func(b []byte) string {
			return crc32cHex(binary.BigEndian.Uint32(b))
		}, true
	case "SHA224":
		return sha256.New224(), hexOf, true
	case "SHA256":
		return sha256.New(), hexOf, true
	case "SHA384":
		return sha512.New384(), hexOf, true
	case "SHA512":
		return sha512.New(), hexOf, true
	}
	return nil, nil, false
}

// controlSystemID reads the system identifier from pg_control's content:
// its first field, in the byte order of the machine that wrote it (this
// one, for a data directory it can run).
func controlSystemID(data []byte) (string, error) {
	if len(data) < 8 {
		return "", fmt.Errorf("%d bytes, too short for pg_control", len(data))
	}
	return strconv.FormatUint(binary.NativeEndian.Uint64(data[:8]), 10), nil
}

var markerSysIDRE = regexp.MustCompile(`(?m)^system_identifier: ([0-9]+)$`)

// liveServer returns the PID postmaster.pid in dir names when that process
// exists (0 when there is no such file or its process is gone).
func liveServer(dir string) int {
	data, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid == 0 {
		return 0
	}
	pid = max(pid, -pid) // a single-user backend writes its PID negated
	if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
		return pid
	}
	return 0
}

// checkDeltaTarget refuses, before anything is written, a target that a
// delta restore of a backup of cluster systemID must not touch. A missing
// or empty target (or one holding only a failed restore's marker) passes:
// every file is then written.
func checkDeltaTarget(target string, systemID string) error {
	entries, err := os.ReadDir(target)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("target %s: %w", target, err)
	}
	if len(entries) == 0 || (len(entries) == 1 && entries[0].Name() == FailedMarker) {
		return nil // nothing to keep: every file is written
	}
	if pid := liveServer(target); pid != 0 {
		return fmt.Errorf("%s is the data directory of a running server (postmaster.pid: PID %d): stop it first (pg_ctl stop -D %s), then restore --delta", target, pid, target)
	}
	if st, err := os.Lstat(filepath.Join(target, "pg_wal")); err == nil && st.Mode()&fs.ModeSymlink != 0 {
		dest, _ := os.Readlink(filepath.Join(target, "pg_wal"))
		return fmt.Errorf("%s/pg_wal is a symbolic link (to %s): restore --delta writes nothing through links; make pg_wal a directory again, or restore with --force (without --delta)", target, dest)
	}
	var have, from string
	if data, err := os.ReadFile(filepath.Join(target, "global", "pg_control")); err == nil {
		if have, err = controlSystemID(data); err != nil {
			return fmt.Errorf("%s/global/pg_control: %w: restore with --force (without --delta) to replace the directory", target, err)
		}
		from = "its global/pg_control"
	} else if note, err := os.ReadFile(filepath.Join(target, FailedMarker)); err == nil {
		if m := markerSysIDRE.FindSubmatch(note); m != nil {
			have, from = string(m[1]), FailedMarker
		}
	}
	switch {
	case have == "":
		return fmt.Errorf("%s has no global/pg_control (nor a %s naming its cluster): restore --delta cannot tell which cluster it belongs to; restore with --force (without --delta) to replace it", target, FailedMarker)
	case have != systemID:
		return fmt.Errorf("%s belongs to another cluster (system identifier %s in %s; the backup's is %s): restore into another directory, or with --force (without --delta) to replace it", target, have, from, systemID)
	}
	return nil
}

// delta is the state of a delta restore.
type delta struct {
	manifest *backupManifest
	keep     map[string]bool // manifest paths kept; read-only once extraction starts
	started  bool            // pg_control is gone: failure leaves the marker
	stats    DeltaStats
	removed  atomic.Int64
}

// candidate is an existing file that may be kept.
type candidate struct {
	key, path string
	entry     manifestEntry
}

// deltaMarker is the text of FailedMarker during and after a failed delta
// restore; the system identifier line lets the next run check the cluster.
func (r *restorer) deltaMarker(cause error) []byte {
	state := fmt.Sprintf("walkeeper restore --delta of backup %s started at %s and has not finished.", r.meta.ID, time.Now().UTC().Format(time.RFC3339))
	if cause != nil {
		state = fmt.Sprintf("walkeeper restore --delta of backup %s failed at %s:\n%v", r.meta.ID, time.Now().UTC().Format(time.RFC3339), cause)
	}
	return fmt.Appendf(nil, "%s\nThis directory is not a usable data directory (global/pg_control is missing). Run restore --delta again to finish the resync, or restore with --force to replace it.\nsystem_identifier: %s\n",
		state, r.meta.SystemIdentifier)
}

// deltaBegin is steps 2 to 4: pg_control away, the marker, the sweep and
// the comparison.
func (r *restorer) deltaBegin(ctx context.Context, manifest *backupManifest) error {
	d := r.delta
	d.manifest = manifest
	pgControl := filepath.Join(r.target, "global", "pg_control")
	if _, err := os.Lstat(pgControl); err == nil {
		if err := r.dd.removeNow(pgControl); err != nil {
			return fmt.Errorf("remove global/pg_control: %w", err)
		}
	}
	d.started = true
	if err := r.dd.writeFileNow(filepath.Join(r.target, FailedMarker), r.deltaMarker(nil)); err != nil {
		return err
	}
	var cands []candidate
	for oid, root := range r.roots {
		if err := r.sweep(oid, root, "", &cands); err != nil {
			return err
		}
	}
	d.stats.Removed = d.removed.Load()
	return r.compare(ctx, cands)
}

// sweep removes what the backup does not have below root/rel and collects
// the candidates to compare.
func (r *restorer) sweep(oid, root, rel string, cands *[]candidate) error {
	dir := filepath.Join(root, filepath.FromSlash(rel))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	m := r.delta.manifest
	for _, e := range entries {
		erel := path.Join(rel, e.Name())
		key := manifestPath(oid, erel)
		p := filepath.Join(dir, e.Name())
		switch {
		case rel == "" && oid == "" && (e.Name() == FailedMarker):
			continue
		case rel == "" && oid != "" && !m.dirs[key]:
			// A tablespace location may hold other servers' version
			// directories: only the backup's own is this restore's.
			r.log.Info("left alone in tablespace location: not part of the backup", "entry", p)
			continue
		case e.Type()&fs.ModeSymlink != 0:
			if err := r.remove(p, false); err != nil {
				return err
			}
		case e.IsDir():
			if !m.dirs[key] {
				if err := r.remove(p, true); err != nil {
					return err
				}
				continue
			}
			r.dd.changed(p) // fsynced before pg_control, as a written one
			if err := r.sweep(oid, root, erel, cands); err != nil {
				return err
			}
		case e.Type().IsRegular():
			ent, listed := m.files[key]
			if !listed {
				if err := r.remove(p, false); err != nil {
					return err
				}
				continue
			}
			info, err := e.Info()
			if err != nil {
				return err
			}
			if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
				// Shared with another name (pg_upgrade --link): writing
				// in place would change the other too.
				if err := r.dd.removeAll(p); err != nil {
					return err
				}
				continue
			}
			if info.Size() == ent.size && ent.algo != "" {
				*cands = append(*cands, candidate{key, p, ent})
			}
		default: // sockets, FIFOs, devices: never in a backup
			if err := r.remove(p, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// remove removes p (a directory with everything below it) and counts the
// entries removed.
func (r *restorer) remove(p string, isDir bool) error {
	n := int64(1)
	if isDir {
		filepath.WalkDir(p, func(_ string, _ fs.DirEntry, err error) error {
			if err == nil {
				n++
			}
			return nil
		})
		n-- // the walk counted p itself
	}
	if err := r.dd.removeAll(p); err != nil {
		return fmt.Errorf("remove %s (not in the backup): %w", p, err)
	}
	r.delta.removed.Add(n)
	r.log.Debug("removed: not in the backup", "path", p)
	return nil
}

// compare checksums the candidates, Options.Parallel at a time with one
// buffer each, and keeps those equal to the manifest's.
func (r *restorer) compare(ctx context.Context, cands []candidate) error {
	d := r.delta
	d.keep = make(map[string]bool, len(cands))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Parallel)
	for _, c := range cands {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			same, err := r.sameAsBackup(c)
			if err != nil {
				return err
			}
			if same {
				mu.Lock()
				d.keep[c.key] = true
				d.stats.KeptFiles++
				d.stats.KeptBytes += c.entry.size
				mu.Unlock()
			}
			return nil
		})
	}
	return g.Wait()
}

var readBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// manifestSum reads rd to its end and returns its size and its checksum as
// backup_manifest prints it for algo; ok is false for no algorithm or one
// walkeeper cannot compute.
func manifestSum(algo string, rd io.Reader) (n int64, sum string, ok bool, err error) {
	h, sumOf, ok := newHash(algo)
	if !ok {
		return 0, "", false, nil
	}
	buf := readBufs.Get().(*[]byte)
	defer readBufs.Put(buf)
	if n, err = io.CopyBuffer(h, rd, *buf); err != nil {
		return n, "", true, err
	}
	return n, sumOf(h.Sum(nil)), true, nil
}

// sameAsBackup reports whether the file c.path has the manifest's
// checksum; a file kept is fsynced (it may hold pages a killed server
// left in the page cache).
func (r *restorer) sameAsBackup(c candidate) (bool, error) {
	if _, _, ok := newHash(c.entry.algo); !ok {
		return false, nil
	}
	f, err := r.dd.fs.OpenRead(c.path)
	if err != nil {
		return false, fmt.Errorf("compare %s: %w", c.path, err)
	}
	defer f.Close()
	n, sum, _, err := manifestSum(c.entry.algo, f)
	if err != nil {
		return false, fmt.Errorf("compare %s: %w", c.path, err)
	}
	if n != c.entry.size || sum != c.entry.sum {
		return false, nil
	}
	if !r.opts.NoSync {
		if err := f.Sync(); err != nil {
			return false, fmt.Errorf("fsync %s: %w", c.path, err)
		}
	}
	return true, nil
}

// kept reports whether the file rel of tablespace oid is kept as it is.
func (d *delta) kept(oid, rel string) bool { return d.keep[manifestPath(oid, rel)] }

// Summary is the one line a delta restore reports.
func (s DeltaStats) Summary(w WriteStats) string {
	return fmt.Sprintf("delta: kept %d files (%d bytes), wrote %d files (%d bytes), removed %d", s.KeptFiles, s.KeptBytes, w.Files, w.Bytes, s.Removed)
}

// deltaBackup refuses a backup a delta restore cannot compare against.
func deltaBackup(meta *basebackup.Meta) error {
	if meta.IsIncremental() {
		return fmt.Errorf("backup %s is incremental: its manifest has checksums of the INCREMENTAL files, not of the files restore rebuilds, so --delta could keep none of them; "+
			"restore --delta --backup %s (the full backup of its chain), or take a full backup first", meta.ID, meta.Chain[0])
	}
	if meta.SystemIdentifier == "" {
		return fmt.Errorf("backup %s records no system identifier: --delta cannot check that the directory is of its cluster; restore with --force instead", meta.ID)
	}
	for _, o := range meta.Objects {
		if o.Name == "backup_manifest" {
			return nil
		}
	}
	return fmt.Errorf("backup %s has no backup_manifest: --delta compares files with the manifest's checksums; restore with --force instead", meta.ID)
}

// loadManifest reads and parses the backup's manifest object.
func loadManifest(ctx context.Context, repo *storage.Repository, meta *basebackup.Meta) (*backupManifest, error) {
	for _, o := range meta.Objects {
		if o.Name != "backup_manifest" {
			continue
		}
		rd, err := repo.Open(ctx, o.Key)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", o.Key, err)
		}
		defer rd.Close()
		m, err := parseManifest(rd)
		if err != nil {
			return nil, fmt.Errorf("backup %s: backup_manifest: %w", meta.ID, err)
		}
		if err := finishObject(rd, o, meta.ID); err != nil {
			return nil, err
		}
		return m, nil
	}
	return nil, fmt.Errorf("backup %s has no backup_manifest", meta.ID)
}
