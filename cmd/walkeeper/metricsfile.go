package main

import (
	"errors"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/monitor"
	"github.com/walkeeper/walkeeper/storage"
)

// metricsFileFlag is shared by the commands run from cron or a systemd timer
// (backup; delete and verify): add it to the command's Flags and end the
// action with recordRun.
var metricsFileFlag = &cli.StringFlag{
	Name: "metrics-file",
	Usage: "after the run, write its outcome for node-exporter's textfile collector to `PATH` " +
		"(e.g. /var/lib/node_exporter/textfile_collector/walkeeper_backup.prom); see docs/metrics.md",
}

// recordRun writes the outcome of a run of command to --metrics-file, when
// that flag is set, and returns the error the action should return.
//
// Use it as the last statement of an action:
//
//	start := time.Now()
//	size, err := doTheWork(...)
//	return recordRun(c, "verify", start, size, err)
//
// runErr is returned unchanged, so exit codes are kept; a failure to write
// the file is logged then and only returned when the run itself succeeded.
// A run that found the repository lock held (exit 3) writes nothing: the
// run holding the lock reports. bytes is the size of what the run produced
// or processed (backup: its stored size); see monitor.RecordRun for the
// metrics.
func recordRun(c *cli.Context, command string, start time.Time, bytes int64, runErr error) error {
	path := c.String(metricsFileFlag.Name)
	if path == "" || errors.Is(runErr, storage.ErrLocked) {
		return runErr
	}
	err := monitor.RecordRun(path, monitor.Run{
		Command: command, Start: start, End: time.Now(), Bytes: bytes, OK: runErr == nil,
	})
	if err == nil {
		return runErr
	}
	if runErr != nil {
		slog.Error("could not write the metrics file", "path", path, "error", err)
		return runErr
	}
	return err
}
