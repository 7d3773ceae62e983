package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/basebackup"
)

var (
	verifyBackupFlag = &cli.StringFlag{
		Name:  "backup",
		Usage: "check only backup `ID` (or latest) and the WAL it needs",
	}
	verifyParallelFlag = &cli.IntFlag{
		Name:  "parallel",
		Value: 4,
		Usage: "objects read at once",
	}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "verify",
		Usage: "re-read every object and check checksums, backups and WAL continuity",
		Description: `Reads every object of the repository in full (or, with --backup, one backup's
objects and the WAL it needs) and checks its SHA-256; checks each backup's
objects against its backup.json and its backup_manifest; checks that the WAL
from every complete backup's start to the newest stored WAL has no gap,
following timeline history files, and that the segments agree with those
files. A backup directory without backup.json is reported (except the one a
running backup writes).

Prints one line per problem and a summary (--json: a report object). Exit
code 0: no problem; 5: problems found; 1: the check could not run.`,
		Flags:  []cli.Flag{verifyBackupFlag, verifyParallelFlag, jsonFlag, metricsFileFlag},
		Action: verifyAction,
	})
}

// verifyAction verifies and records the run in --metrics-file (size: the
// bytes read; success: no problem found).
func verifyAction(c *cli.Context) error {
	start := time.Now()
	read, err := verifyRun(c)
	return recordRun(c, "verify", start, read, err)
}

func verifyRun(c *cli.Context) (int64, error) {
	parallel := c.Int(verifyParallelFlag.Name)
	if parallel < 1 || parallel > 256 {
		return 0, usagef("--parallel must be between 1 and 256")
	}
	repo, err := openRepository(c)
	if err != nil {
		return 0, err
	}
	report, err := basebackup.Verify(c.Context, repo, basebackup.VerifyOptions{
		Backup: c.String(verifyBackupFlag.Name), Parallel: parallel, Log: slog.Default(),
	})
	if err != nil {
		return 0, err
	}
	w := c.App.Writer
	if c.Bool(jsonFlag.Name) {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return 0, err
		}
	} else {
		for _, p := range report.Problems {
			fmt.Fprintf(w, "PROBLEM %s %s: %s\n", p.Kind, p.Key, p.Detail)
		}
		for _, n := range report.Notes {
			fmt.Fprintf(w, "note: %s\n", n)
		}
		status := "OK"
		if !report.OK {
			status = fmt.Sprintf("%d problems", len(report.Problems))
		}
		fmt.Fprintf(w, "%s: %d objects (%s) read, %d complete backups checked\n", status, report.ObjectsChecked,
			humanSize(report.BytesRead), report.Backups)
	}
	if !report.OK {
		return report.BytesRead, fmt.Errorf("%w: %d in %s (see the report above)", errProblems, len(report.Problems), repo)
	}
	return report.BytesRead, nil
}
