package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/restore"
	"github.com/walkeeper/walkeeper/storage"
)

var (
	prefetchFlag = &cli.IntFlag{
		Name:  "prefetch",
		Value: 8,
		Usage: "after a segment, download up to `N` following segments in the background into pg_wal/" + restore.PrefetchDirName + " (0: off)",
	}
	fatalErrorsFlag = &cli.BoolFlag{
		Name:  "fatal-errors",
		Usage: "exit with code 126 instead of 1 on errors other than not found, so PostgreSQL stops recovery instead of taking a storage outage for the end of the archive",
	}
	spoolFlag = &cli.StringFlag{
		Name:  "spool",
		Usage: "prefetch spool `DIR` (absolute)",
	}
	lockFDFlag = &cli.IntFlag{
		Name:  "lock-fd",
		Usage: "inherited descriptor holding the spool lock",
	}
)

// fatalError is a wal-fetch failure under --fatal-errors: exit code 126,
// which makes PostgreSQL abort recovery.
type fatalError struct{ err error }

func (e fatalError) Error() string { return e.err.Error() }
func (e fatalError) Unwrap() error { return e.err }

// prefetchTimeout bounds one background prefetcher.
const prefetchTimeout = 10 * time.Minute

func init() {
	commands = append(commands, &cli.Command{
		Name:      "wal-fetch",
		Usage:     "copy one WAL file from the repository, for PostgreSQL's restore_command",
		ArgsUsage: "NAME DEST",
		Description: `Writes the WAL file NAME (a segment such as 000000010000000000000003, a
timeline history file such as 00000002.history, or NAME.partial) from the
repository to DEST, atomically and verified; DEST is replaced if it exists.
For postgresql.conf:

  restore_command = '/usr/local/bin/walkeeper wal-fetch --repo s3://bucket/db1 %f %p'

Exit code 4, with nothing printed, when the file is not in the repository:
PostgreSQL takes that as the end of the archive. Any other failure exits 1,
or 126 with --fatal-errors, which makes PostgreSQL abort recovery instead of
ending it early (use it for point-in-time recovery).

A segment stored only as NAME.partial is served zero-padded to the segment
size, so a restore reaches the last second the stream stored. Each call looks
up its one name, whatever the repository's size.

After a complete segment, up to --prefetch following segments are downloaded
in the background into pg_wal/` + restore.PrefetchDirName + `; the next wal-fetch
takes its segment from there. Details: docs/wal-fetch.md.`,
		Flags:  []cli.Flag{prefetchFlag, fatalErrorsFlag},
		Action: walFetchAction,
	})
	commands = append(commands, &cli.Command{
		Name:      "wal-prefetch",
		Hidden:    true,
		Usage:     "download the segments after SEGMENT into a prefetch spool (started by wal-fetch)",
		ArgsUsage: "SEGMENT",
		Flags:     []cli.Flag{prefetchFlag, spoolFlag, lockFDFlag},
		Action:    walPrefetchAction,
	})
}

func walFetchAction(c *cli.Context) error {
	err := walFetch(c)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, storage.ErrNotFound) && !errors.Is(err, errRepoSetup):
		return fmt.Errorf("%w: %w", errWALFetch, err)
	case c.Bool(fatalErrorsFlag.Name):
		return fatalError{err}
	}
	return err
}

// errRepoSetup marks failures to open the repository, which are never
// "not found".
var errRepoSetup = errors.New("repository setup")

func walFetch(c *cli.Context) error {
	if c.NArg() != 2 {
		return usagef("wal-fetch needs NAME and DEST (in restore_command: %%f %%p), got %d arguments", c.NArg())
	}
	name, dest := c.Args().Get(0), c.Args().Get(1)
	prefetch := c.Int(prefetchFlag.Name)
	if prefetch < 0 {
		return usagef("--prefetch must be 0 or more")
	}
	repo, err := openRepository(c)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			err = fmt.Errorf("%w: %w", errRepoSetup, err)
		}
		return err
	}
	// Missing keys are a failure (exit 1), never "not found": recovery
	// would take that for the end of the archive and promote.
	if err := repo.NeedContent(c.Context); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%w: %w", errRepoSetup, err)
	}
	var opts restore.FetchOptions
	if prefetch > 0 {
		opts.Spool = restore.PrefetchDir(dest)
	}
	start := time.Now()
	res, err := restore.FetchWAL(c.Context, repo, name, dest, opts)
	if errors.Is(err, restore.ErrInvalidWALName) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	slog.Debug("fetched WAL file", "file", name, "object", res.Key, "bytes", res.Size, "from_prefetch", res.FromSpool,
		"padded_partial", res.Partial, "duration", time.Since(start).Round(time.Millisecond).String())
	if prefetch > 0 && res.CompleteSegment() {
		startPrefetcher(c, name, opts.Spool, prefetch)
	}
	return nil
}

// startPrefetcher starts a detached `walkeeper wal-prefetch` for the
// segments after name, unless one is running. It takes the spool lock here
// and hands the locked descriptor to the child, which holds it until it
// exits, so two prefetchers never run at once. Prefetching is only an
// optimization: failures are logged at debug level and otherwise ignored.
func startPrefetcher(c *cli.Context, name, spool string, count int) {
	spool, err := filepath.Abs(spool)
	if err == nil {
		err = startPrefetcherErr(c, name, spool, count)
	}
	if err != nil {
		slog.Debug("prefetch not started", "after", name, "error", err)
	}
}

func startPrefetcherErr(c *cli.Context, name, spool string, count int) error {
	lock, ok, err := restore.LockSpool(spool)
	if err != nil || !ok {
		return err // !ok: a prefetcher is running
	}
	defer lock.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"wal-prefetch"}
	for _, f := range []string{repoFlag.Name, logFormatFlag.Name, logLevelFlag.Name, s3EndpointFlag.Name,
		s3RegionFlag.Name, s3PartSizeFlag.Name, s3ConcurrencyFlag.Name} {
		if v := fmt.Sprint(c.Value(f)); v != "" {
			args = append(args, "--"+f+"="+v)
		}
	}
	args = append(args, "--"+s3PathStyleFlag.Name+"="+strconv.FormatBool(c.Bool(s3PathStyleFlag.Name)),
		"--prefetch="+strconv.Itoa(count), "--spool="+spool, "--lock-fd=3", name)
	cmd := exec.Command(exe, args...)
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{lock} // descriptor 3 in the child
	// Its own session: PostgreSQL waits for restore_command only, and the
	// prefetcher must outlive it. Standard streams are /dev/null.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

func walPrefetchAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("wal-prefetch needs the SEGMENT after which to prefetch")
	}
	spool := c.String(spoolFlag.Name)
	if !filepath.IsAbs(spool) {
		return usagef("wal-prefetch needs --spool with an absolute path")
	}
	if fd := c.Int(lockFDFlag.Name); fd > 0 {
		lock := os.NewFile(uintptr(fd), "spool lock")
		if lock == nil {
			return fmt.Errorf("--lock-fd %d is not an open descriptor", fd)
		}
		defer lock.Close()
		if err := restore.LockFile(lock); err != nil {
			return fmt.Errorf("spool lock: %w", err)
		}
	} else {
		lock, ok, err := restore.LockSpool(spool)
		if err != nil {
			return err
		}
		if !ok {
			return nil // another prefetcher is running
		}
		defer lock.Close()
	}
	repo, err := openRepository(c)
	if err != nil {
		return err
	}
	if err := repo.NeedContent(c.Context); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, prefetchTimeout)
	defer cancel()
	start := time.Now()
	n, err := restore.Prefetch(ctx, repo, restore.PrefetchOptions{
		After: c.Args().First(),
		Count: c.Int(prefetchFlag.Name),
		Spool: spool,
	})
	slog.Debug("prefetched WAL segments", "after", c.Args().First(), "segments", n,
		"duration", time.Since(start).Round(time.Millisecond).String())
	return err
}
