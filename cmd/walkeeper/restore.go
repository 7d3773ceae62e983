package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/restore"
	"github.com/walkeeper/walkeeper/storage"
)

var (
	targetDirFlag = &cli.StringFlag{Name: "target-dir", Usage: "data `DIR` to create (missing or empty), or with --delta to resync"}
	backupIDFlag  = &cli.StringFlag{Name: "backup", Value: "latest", Usage: "backup `ID` to restore, or latest (the newest complete backup; with --target-time or --target-lsn the newest that ends before the target)"}
	forceFlag     = &cli.BoolFlag{Name: "force", Usage: "empty a non-empty target directory (and tablespace locations) first"}
	deltaFlag     = &cli.BoolFlag{Name: "delta", Usage: "resync an existing data directory of the same cluster (a fallen replica, the old primary): keep the files whose size and CRC-32C match the backup's manifest, write the rest, remove what the backup does not have (not with --force)"}
	ownerFlag     = &cli.StringFlag{Name: "owner", Usage: "OS `USER` owning the restored files (default when run as root: the owner of the target's parent directory)"}
	tsMapFlag     = &cli.StringSliceFlag{Name: "tablespace-map", Usage: "relocate a tablespace: `OLD=NEW` (repeatable)"}
	parallelFlag  = &cli.IntFlag{Name: "parallel", Usage: "`N` archive chunks downloaded, verified, decompressed and extracted at once (default: the number of CPUs; memory about 16 MB each)"}
	noSyncFlag    = &cli.BoolFlag{Name: "no-sync", Usage: "skip every fsync (like pg_basebackup --no-sync): a crash of the machine can then leave a directory that starts and is corrupt; for tests and throwaway copies"}

	targetTimeFlag     = &cli.StringFlag{Name: "target-time", Usage: "recover up to this `TIMESTAMP`, with its time zone (e.g. '2026-11-26 14:30:00+00')"}
	targetLSNFlag      = &cli.StringFlag{Name: "target-lsn", Usage: "recover up to this `LSN`"}
	targetXIDFlag      = &cli.StringFlag{Name: "target-xid", Usage: "recover up to and including this transaction `ID`"}
	targetNameFlag     = &cli.StringFlag{Name: "target-name", Usage: "recover up to this restore point (pg_create_restore_point)"}
	targetTimelineFlag = &cli.StringFlag{Name: "target-timeline", Usage: "timeline to recover along: current, latest (PostgreSQL's default) or a number"}
	targetActionFlag   = &cli.StringFlag{Name: "target-action", Usage: "at the target: promote, pause (PostgreSQL's default) or shutdown"}

	asReplicaFlag       = &cli.BoolFlag{Name: "as-replica", Usage: "make a streaming read replica of the --dsn primary (standby.signal, primary_conninfo, slot)"}
	primaryConninfoFlag = &cli.StringFlag{Name: "primary-conninfo", Usage: "primary_conninfo for the replica (default: --dsn without its password)"}
	replicaSlotFlag     = &cli.StringFlag{Name: "slot", Usage: "with --as-replica: physical slot `NAME` for the replica, created on the primary when missing"}
	portFlag            = &cli.IntFlag{Name: "port", Usage: "set the restored server's port (default: what its postgresql.conf says)"}
	restoreCommandFlag  = &cli.StringFlag{Name: "restore-command", Usage: "write this `COMMAND` as restore_command instead of this binary's wal-fetch (it must contain %p; restore then leaves checking that the server can run it to you)"}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "restore",
		Usage: "restore a backup into a new data directory (or resync an existing one with --delta), to a point in time or as a read replica",
		Description: `Downloads, verifies, decompresses and extracts the backup's archive chunks
in parallel (--parallel N, default one per CPU) with bounded memory,
checking every object's checksum against backup.json, and extracts them
safely: every
entry stays inside the target directory or its tablespace's location.
Every file and directory it writes is fsynced before global/pg_control is
written, then pg_control and global/ are: a failed, interrupted or crashed
restore can never be started by mistake, and a finished one survives a
crash of the machine. A failed restore removes what it wrote and leaves
WALKEEPER_RESTORE_FAILED in the directory. On a terminal a progress bar
shows bytes and files done of the total, the rate and the time left.

The restored directory is ready to start: recovery.signal (or standby.signal
with --as-replica) and, in postgresql.auto.conf, restore_command = this
binary's wal-fetch with the repository settings (never S3 keys or passwords:
give the PostgreSQL server AWS_* in its environment or ~/.aws/credentials of
its OS user, and use ~/.pgpass for the replica's password). A point-in-time
restore also sets archive_mode = 'off', so the promoted copy never archives
into the repository it was restored from; to archive it, point
archive_command at a NEW repository and set archive_mode = on.

restore_command runs as the restored server's OS user: before writing
anything, restore checks that this user can run this binary and read a local
repository (walkeeper.json, wal/, the first WAL segment), and refuses in one
line saying what to change when it cannot. --restore-command writes your
own command instead (and skips the check).

--delta resyncs an existing data directory instead of creating one: a
replica that fell too far behind (its slot invalidated), or the old primary
after a failover. It refuses a directory a running server uses
(postmaster.pid of a live process) and one of another cluster (the system
identifier in its pg_control), removes global/pg_control first, keeps every
file whose size and checksum (CRC-32C in the default manifest) match the
backup's manifest, writes the others, removes what the backup does not have
(pg_wal contents, slots, temporary files: what PostgreSQL leaves out of a
backup), and writes pg_control last. Interrupted, the directory stays
unstartable until restore --delta runs again. It ends with one line:
"delta: kept N files (X bytes), wrote M files (Y bytes), removed K".

Examples:
  walkeeper restore --repo s3://bucket/db1 --target-dir /var/lib/postgresql/15/main \
      --target-time '2026-11-26 14:30:00+00' --target-action promote
  walkeeper restore --repo s3://bucket/db1 --target-dir /srv/replica2 --as-replica \
      --dsn "host=db1 user=walkeeper" --slot replica2 --port 5433
  walkeeper restore --repo s3://bucket/db1 --target-dir /srv/replica2 --delta --as-replica \
      --dsn "host=db1 user=walkeeper" --slot replica2 --port 5433`,
		Flags: []cli.Flag{targetDirFlag, backupIDFlag, forceFlag, deltaFlag, ownerFlag, tsMapFlag, parallelFlag, noSyncFlag,
			targetTimeFlag, targetLSNFlag, targetXIDFlag, targetNameFlag, targetTimelineFlag, targetActionFlag,
			asReplicaFlag, primaryConninfoFlag, replicaSlotFlag, portFlag, restoreCommandFlag},
		Action: restoreAction,
	})
}

func restoreAction(c *cli.Context) error {
	dir := c.String(targetDirFlag.Name)
	if dir == "" {
		return usagef("restore needs --target-dir DIR")
	}
	if c.Bool(deltaFlag.Name) && c.Bool(forceFlag.Name) {
		return usagef("--delta keeps what is equal and --force empties the directory first: give one of them")
	}
	tsMap := map[string]string{}
	for _, m := range c.StringSlice(tsMapFlag.Name) {
		old, nu, ok := strings.Cut(m, "=")
		if !ok || !filepath.IsAbs(old) || !filepath.IsAbs(nu) {
			return usagef("--tablespace-map %q: use OLD=NEW with absolute paths", m)
		}
		tsMap[filepath.Clean(old)] = filepath.Clean(nu)
	}
	rec := restore.Recovery{
		TargetTime:     c.String(targetTimeFlag.Name),
		TargetLSN:      c.String(targetLSNFlag.Name),
		TargetXID:      c.String(targetXIDFlag.Name),
		TargetName:     c.String(targetNameFlag.Name),
		TargetTimeline: c.String(targetTimelineFlag.Name),
		TargetAction:   c.String(targetActionFlag.Name),
		AsReplica:      c.Bool(asReplicaFlag.Name),
		Port:           c.Int(portFlag.Name),
	}
	if err := rec.Validate(); err != nil {
		return usageError{err}
	}
	// What the restored server's restore_command uses, for restore to check
	// that the server's OS user can: this binary and a local repository.
	var repoDir, binary string
	var keyFiles []string
	if own := c.String(restoreCommandFlag.Name); own != "" {
		if !strings.Contains(own, "%p") {
			return usagef("--restore-command %q has no %%p: PostgreSQL puts the file's destination there", own)
		}
		rec.RestoreCommand = own
	} else {
		cmd, exe, files, err := walFetchCommand(c, !rec.AsReplica)
		if err != nil {
			return err
		}
		rec.RestoreCommand, binary, keyFiles = cmd, exe, files
		if loc, err := storage.ParseLocation(c.String(repoFlag.Name)); err == nil && loc.Scheme == "file" {
			repoDir = loc.Path
		}
	}
	repo, err := openRepository(c)
	if err != nil {
		return err
	}
	// Before anything is written: an encrypted repository needs the
	// private key to restore.
	if err := repo.NeedContent(c.Context); err != nil {
		return err
	}
	if rec.AsReplica {
		if err := replicaSettings(c, &rec); err != nil {
			return err
		}
	}
	if c.Int(parallelFlag.Name) < 0 {
		return usagef("--parallel must be 1 or more (0: the number of CPUs)")
	}
	// About 16 MB a worker, on top of what every command needs: give the
	// collector that much room, or it would work without end at the
	// default limit on a machine with many cores.
	workers := restore.Workers(c.Int(parallelFlag.Name))
	setMemoryLimit(max(defaultMemoryLimit, 64<<20+int64(workers)*(24<<20)))
	opts := restore.Options{
		Repo: repo, TargetDir: dir, BackupID: c.String(backupIDFlag.Name), Force: c.Bool(forceFlag.Name), Delta: c.Bool(deltaFlag.Name),
		Owner: c.String(ownerFlag.Name), TablespaceMap: tsMap, Parallel: c.Int(parallelFlag.Name),
		Recovery: rec, RepoDir: repoDir, Binary: binary, KeyFiles: keyFiles, NoSync: c.Bool(noSyncFlag.Name), Log: slog.Default(),
	}
	bar := newRestoreProgress(os.Stderr)
	if bar != nil {
		opts.Progress = bar.update
	}
	res, err := restore.Run(c.Context, opts)
	if bar != nil {
		bar.finish()
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, res.Backup.ID)
	if res.Delta != nil {
		fmt.Fprintln(c.App.ErrWriter, res.Delta.Summary(res.Wrote))
	} else {
		fmt.Fprintf(c.App.ErrWriter, "wrote %d files (%d bytes)\n", res.Wrote.Files, res.Wrote.Bytes)
	}
	return nil
}

// walFetchCommand builds restore_command: this binary's absolute path,
// wal-fetch and the repository settings, never secrets; keyFiles are the
// key files it names by their absolute paths. fatal makes storage errors
// abort recovery instead of looking like the end of the archive.
func walFetchCommand(c *cli.Context, fatal bool) (cmd, exe string, keyFiles []string, err error) {
	if exe, err = os.Executable(); err != nil {
		return "", "", nil, err
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return "", "", nil, err
	}
	args := []string{exe, "wal-fetch", "--repo", c.String(repoFlag.Name)}
	if v := c.String(s3EndpointFlag.Name); v != "" {
		args = append(args, "--s3-endpoint", v)
	}
	if v := c.String(s3RegionFlag.Name); v != "" {
		args = append(args, "--s3-region", v)
	}
	if c.Bool(s3PathStyleFlag.Name) {
		args = append(args, "--s3-path-style")
	}
	// The key by its path: the file is read by wal-fetch, so no secret
	// lands in postgresql.auto.conf. The server's OS user must be able to
	// read it.
	if v := c.String(identityFileFlag.Name); v != "" {
		abs, err := filepath.Abs(v)
		if err != nil {
			return "", "", nil, err
		}
		args = append(args, "--identity-file", abs)
		keyFiles = append(keyFiles, abs)
	}
	if v := c.String(passphraseFileFlag.Name); v != "" {
		abs, err := filepath.Abs(v)
		if err != nil {
			return "", "", nil, err
		}
		args = append(args, "--passphrase-file", abs)
		keyFiles = append(keyFiles, abs)
	} else if os.Getenv(passphraseEnv) != "" {
		return "", "", nil, usagef("restore_command cannot carry the passphrase of %s: give it with --passphrase-file FILE "+
			"(readable by the server's OS user) instead", passphraseEnv)
	}
	if fatal {
		args = append(args, "--fatal-errors")
	}
	for i, a := range args {
		args[i] = shellQuote(a)
	}
	return strings.Join(args, " ") + " %f %p", exe, keyFiles, nil
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./:=@,+-]+$`)

func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// replicaSettings fills primary_conninfo and primary_slot_name, creating
// the slot on the primary when it is missing.
func replicaSettings(c *cli.Context, rec *restore.Recovery) error {
	dsn := c.String(dsnFlag.Name)
	slot := c.String(replicaSlotFlag.Name)
	rec.PrimaryConninfo = c.String(primaryConninfoFlag.Name)
	if rec.PrimaryConninfo == "" {
		ci, hasPassword, err := conninfoWithoutPassword(dsn, slot)
		if err != nil {
			return err
		}
		rec.PrimaryConninfo = ci
		if hasPassword {
			slog.Warn("primary_conninfo is written without the password from --dsn: give the replica's OS user a ~/.pgpass line (host:port:replication:user:password) or pass --primary-conninfo")
		}
	}
	if slot == "" {
		return nil
	}
	if err := replication.ValidateSlotName(slot); err != nil {
		return usageError{err}
	}
	rec.PrimarySlot = slot
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	conn, err := replication.Connect(ctx, dsn, "walkeeper restore", 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	s, created, err := replication.EnsurePhysicalSlot(ctx, conn, slot, true)
	if err != nil {
		return err
	}
	if created {
		slog.Info("created physical replication slot on the primary", "slot", slot)
	} else if s.RestartLSN == 0 {
		// Invalidated (max_slot_wal_keep_size) or never reserved: the
		// replica could never stream from it. It is this replica's slot,
		// so it starts again from now, as a new one would.
		if _, err := conn.Exec(ctx, "DROP_REPLICATION_SLOT "+replication.QuoteIdent(slot)).ReadAll(); err != nil {
			return fmt.Errorf("slot %q holds no WAL (invalidated?) and could not be dropped to create it again: %w", slot, replication.Classify(err, slot))
		}
		if _, _, err := replication.EnsurePhysicalSlot(ctx, conn, slot, true); err != nil {
			return err
		}
		slog.Info("created the physical replication slot on the primary again: it held no WAL (invalidated, or never reserved)", "slot", slot)
	}
	return nil
}

var passfileRE = regexp.MustCompile(`(?:^|[\s?&])passfile=([^\s&]+)`)
var sslmodeRE = regexp.MustCompile(`(?:^|[\s?&])sslmode=([^\s&]+)`)
var passwordKeyRE = regexp.MustCompile(`(?:^|[\s?&])password=|://[^/@]*:[^/@]*@`)

// conninfoWithoutPassword derives primary_conninfo from the --dsn: host,
// port, user, sslmode and passfile, never the password.
func conninfoWithoutPassword(dsn, appName string) (string, bool, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", false, usagef("invalid --dsn: %v", replication.Redact(err))
	}
	parts := []string{"host=" + conninfoQuote(cfg.Host), "port=" + strconv.Itoa(int(cfg.Port)), "user=" + conninfoQuote(cfg.User)}
	if m := sslmodeRE.FindStringSubmatch(dsn); m != nil {
		parts = append(parts, "sslmode="+conninfoQuote(m[1]))
	}
	if m := passfileRE.FindStringSubmatch(dsn); m != nil {
		parts = append(parts, "passfile="+conninfoQuote(m[1]))
	}
	if appName == "" {
		appName = "walkeeper_replica"
	}
	parts = append(parts, "application_name="+conninfoQuote(appName))
	return strings.Join(parts, " "), passwordKeyRE.MatchString(dsn), nil
}

func conninfoQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// restoreProgress draws restore's progress bar on a terminal: bytes done
// of the total with rate and ETA, and files done of the total.
type restoreProgress struct {
	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	w     *os.File
	files int64
}

// newRestoreProgress returns nil when w is not a terminal: cron and
// systemd get the logs only.
func newRestoreProgress(w *os.File) *restoreProgress {
	if !term.IsTerminal(int(w.Fd())) {
		return nil
	}
	return &restoreProgress{w: w}
}

func (p *restoreProgress) update(pr restore.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil {
		p.bar = progressbar.NewOptions64(max(pr.TotalBytes, 1),
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetDescription("restore"),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish())
	}
	if pr.Files != p.files {
		p.files = pr.Files
		if pr.TotalFiles > 0 {
			p.bar.Describe(fmt.Sprintf("restore %d/%d files", pr.Files, pr.TotalFiles))
		} else {
			p.bar.Describe(fmt.Sprintf("restore %d files", pr.Files))
		}
	}
	p.bar.Set64(min(pr.Bytes, p.bar.GetMax64()))
}

func (p *restoreProgress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
	}
}
