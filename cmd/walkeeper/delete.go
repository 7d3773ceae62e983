package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/basebackup"
)

var (
	retainFlag = &cli.IntFlag{
		Name:  "retain",
		Usage: "keep the `N` newest complete backups, delete older ones",
	}
	beforeFlag = &cli.StringFlag{
		Name:  "before",
		Usage: "delete complete backups that started before `TIME`: RFC 3339, \"2006-01-02 15:04:05\" or \"2006-01-02\" (UTC), or an age such as 7d or 168h",
	}
	dryRunFlag = &cli.BoolFlag{
		Name:  "dry-run",
		Usage: "print what would be deleted and change nothing",
	}
	deleteForceFlag = &cli.BoolFlag{
		Name:  "force",
		Usage: "allow deleting every complete backup",
	}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "delete",
		Usage: "delete old backups and the WAL only they needed",
		Description: `Deletes whole backups, oldest first by start time (not by ID), and then the
WAL that no kept backup needs: segments below the start segment of every kept
complete backup. Timeline history files always stay. --retain N keeps the N
newest complete backups; --before TIME deletes the complete backups that
started before TIME; with both, a backup goes only when both say so.
Incomplete backups (no backup.json) older than the oldest kept backup go too,
once nothing was written to them for 24 hours and they are not the running
backup's.

Deleting every complete backup needs --force. backup.json goes first, so an
interrupted delete leaves an incomplete backup, never a broken complete one.
delete is safe while 'stream' and 'backup' run: it only removes backups
older than the ones it keeps and WAL older than the oldest kept backup's
start, and a lock keeps two deletes apart. --dry-run prints the plan.

Example (cron, keep two weeks of nightly backups):
  walkeeper delete --repo s3://bucket/db1 --retain 14`,
		Flags:  []cli.Flag{retainFlag, beforeFlag, dryRunFlag, deleteForceFlag, jsonFlag, metricsFileFlag},
		Action: deleteAction,
	})
}

// deleteAction runs retention and, unless it is a dry run, records the run
// in --metrics-file (size: the stored bytes deleted).
func deleteAction(c *cli.Context) error {
	start := time.Now()
	freed, err := deleteRun(c)
	if c.Bool(dryRunFlag.Name) {
		return err
	}
	return recordRun(c, "delete", start, freed, err)
}

func deleteRun(c *cli.Context) (int64, error) {
	opts := basebackup.RetentionOptions{
		Retain: -1,
		Force:  c.Bool(deleteForceFlag.Name),
		DryRun: c.Bool(dryRunFlag.Name),
		Now:    time.Now(),
		Log:    slog.Default(),
	}
	if c.IsSet(retainFlag.Name) {
		if opts.Retain = c.Int(retainFlag.Name); opts.Retain < 0 {
			return 0, usagef("--retain must be 0 or more")
		}
	}
	if v := c.String(beforeFlag.Name); v != "" {
		t, err := parseBefore(v, opts.Now)
		if err != nil {
			return 0, usagef("--before: %v", err)
		}
		opts.Before = t
	}
	if opts.Retain < 0 && opts.Before.IsZero() {
		return 0, usagef("say what to delete: --retain N (keep the N newest backups) or --before TIME")
	}
	repo, err := openRepository(c)
	if err != nil {
		return 0, err
	}
	res, err := basebackup.Retention(c.Context, repo, opts)
	if err != nil {
		return 0, err
	}
	if c.Bool(jsonFlag.Name) {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return res.Bytes, enc.Encode(res)
	}
	w := c.App.Writer
	verb := "deleted"
	if res.DryRun {
		verb = "would delete"
	}
	for _, b := range res.Backups {
		status := "complete"
		if !b.Complete {
			status = "incomplete"
		}
		fmt.Fprintf(w, "%s backup %s (%s, started %s): %d objects, %s\n", verb, b.ID, status,
			b.StartTime.UTC().Format(time.RFC3339), b.Objects, humanSize(b.Bytes))
	}
	if res.WAL.Objects > 0 {
		fmt.Fprintf(w, "%s WAL %s .. %s: %d objects, %s (kept from segment %s on)\n", verb, res.WAL.First, res.WAL.Last,
			res.WAL.Objects, humanSize(res.WAL.Bytes), res.WAL.Cutoff)
	}
	for _, n := range res.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	fmt.Fprintf(w, "%s %d backups and %d WAL objects, %s; %d complete backups kept\n", verb, len(res.Backups),
		res.WAL.Objects, humanSize(res.Bytes), len(res.Kept))
	return res.Bytes, nil
}

// parseBefore parses --before: a time (RFC 3339, or UTC "2006-01-02
// 15:04:05" / "2006-01-02") or an age before now, as parseAge reads it
// ("7d", "36h", "2d12h").
func parseBefore(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if s != "" {
		if d, err := parseAge(s); err == nil {
			return now.Add(-d), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a time (2006-01-02T15:04:05Z, \"2006-01-02 15:04:05\") nor an age (7d, 168h)", s)
}
