package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/monitor"
	"github.com/walkeeper/walkeeper/storage"
)

var (
	maxSlotRetainedFlag = &cli.StringFlag{
		Name:  "max-slot-retained",
		Value: "1GB",
		Usage: "warn when the slot holds back more WAL than `SIZE`",
	}
	minFreeSpaceFlag = &cli.StringFlag{
		Name:  "min-free-space",
		Value: "10%",
		Usage: "warn when the local repository's file system has less free space than this percentage or `SIZE` (e.g. 10% or 20GB)",
	}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "doctor",
		Usage: "check every prerequisite on the server and the repository; one line per check",
		Description: `Prints OK, WARN, FAIL or SKIP per check, with a hint under each WARN and
FAIL. With --dsn: connect, server_version (a version walkeeper is tested on:
15 to 18; newer is a warning, older a failure), wal_level, max_wal_senders,
max_replication_slots, replication_connection (pg_hba.conf),
replication_role, slot (lost, inactive, holding back more than
--max-slot-retained), max_slot_wal_keep_size, archive_command. With --repo: repository_identity (walkeeper.json matches the
server), repository_access (S3: write, list, read and delete a probe object
under locks/; a directory: permissions), repository_locks (whether an S3
server honours the conditional writes the locks need), free_space (local
repository).

Exit codes: 0 when no check failed (warnings allowed), 5 when any check
failed, 2 when neither --dsn nor --repo is given.

Example:
  walkeeper doctor --dsn "host=db1 user=walkeeper" --repo s3://bucket/db1`,
		Flags:  []cli.Flag{jsonFlag, monitorSlotFlag, maxSlotRetainedFlag, minFreeSpaceFlag, queryTimeoutFlag},
		Action: doctorAction,
	})
}

func doctorAction(c *cli.Context) error {
	opts := monitor.DoctorOptions{
		DSN:     c.String(dsnFlag.Name),
		Slot:    c.String(monitorSlotFlag.Name),
		Timeout: c.Duration(queryTimeoutFlag.Name),
	}
	if opts.Slot != "" {
		if err := replication.ValidateSlotName(opts.Slot); err != nil {
			return usageError{err}
		}
	}
	var err error
	if opts.MaxSlotRetained, err = parseSize(c.String(maxSlotRetainedFlag.Name)); err != nil {
		return usagef("--max-slot-retained: %v", err)
	}
	if opts.MinFreePercent, opts.MinFreeBytes, err = parseFree(c.String(minFreeSpaceFlag.Name)); err != nil {
		return usagef("--min-free-space: %v", err)
	}
	if repoURL := c.String(repoFlag.Name); repoURL != "" {
		loc, err := storage.ParseLocation(repoURL)
		if err != nil {
			return usageError{err}
		}
		if loc.Scheme == "file" {
			opts.LocalPath = loc.Path
		}
		if opts.Repo, err = openRepository(c); err != nil {
			return err
		}
	}
	if opts.DSN == "" && opts.Repo == nil {
		return usagef("doctor needs --dsn, --repo or both (or WALKEEPER_DSN / WALKEEPER_REPO)")
	}
	results, err := monitor.RunDoctor(c.Context, opts)
	if err != nil {
		return err
	}
	if c.Bool(jsonFlag.Name) {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		err = enc.Encode(results)
	} else {
		err = monitor.WriteDoctorText(c.App.Writer, results)
	}
	if err != nil {
		return err
	}
	if n := monitor.Failures(results); n > 0 {
		var names []string
		for _, r := range results {
			if r.Status == monitor.LevelFail {
				names = append(names, r.Check)
			}
		}
		return fmt.Errorf("%w: %d check(s) failed: %s (hints above)", errProblems, n, strings.Join(names, ", "))
	}
	return nil
}

// parseFree parses "10%" or a size such as "20GB".
func parseFree(s string) (percent float64, bytes int64, err error) {
	t := strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v < 0 || v > 100 {
			return 0, 0, fmt.Errorf("invalid percentage %q: use a number from 0 to 100 followed by %%", s)
		}
		return v, 0, nil
	}
	n, err := parseSize(t)
	return 0, n, err
}
