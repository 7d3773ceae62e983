package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/drill"
	"github.com/walkeeper/walkeeper/monitor"
	"github.com/walkeeper/walkeeper/restore"
	"github.com/walkeeper/walkeeper/storage"
)

var (
	drillBackupFlag   = &cli.StringFlag{Name: "backup", Value: "latest", Usage: "backup `ID` to drill, or latest (the newest complete backup; with a target, the newest that can reach it)"}
	drillScratchFlag  = &cli.StringFlag{Name: "scratch", Usage: "`DIR` to restore into, missing or empty; removed afterwards unless --keep (it needs the backup's size free)"}
	drillKeepFlag     = &cli.BoolFlag{Name: "keep", Usage: "leave the scratch directory (server stopped) for inspection"}
	drillPGBinFlag    = &cli.StringFlag{Name: "pg-bin", Usage: "`DIR` of the PostgreSQL server binaries (default: the backup's major version in /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin, ... or PATH)"}
	drillOwnerFlag    = &cli.StringFlag{Name: "owner", Usage: "OS `USER` the throwaway server runs as (default: the current user; postgres when run as root)"}
	drillDBUserFlag   = &cli.StringFlag{Name: "db-user", Usage: "database `USER` the checks connect as (default: the --owner name, as initdb names the superuser)"}
	drillAmcheckFlag  = &cli.BoolFlag{Name: "amcheck", Value: true, Usage: "check every B-tree index and table with amcheck (--amcheck=false to skip)"}
	drillCheckSQLFlag = &cli.StringFlag{Name: "check-sql", Usage: "`FILE` of SQL statements run after amcheck; each that returns rows must return at least one"}
	drillCheckDBFlag  = &cli.StringFlag{Name: "check-database", Value: "postgres", Usage: "database `NAME` the --check-sql statements run in"}
	drillTimeoutFlag  = &cli.DurationFlag{Name: "recovery-timeout", Value: time.Hour, Usage: "longest the throwaway server may take to recover before the drill fails"}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "drill",
		Usage: "prove a backup restores: restore it into a scratch directory, recover a throwaway server, check it, report the RTO",
		Description: `Restores a backup (the newest complete one by default) into --scratch DIR,
every tablespace moved inside it, and starts a throwaway PostgreSQL there:
its own port on a private Unix socket, no TCP, no archiving, no replication
connection, no preload libraries, 32MB of shared_buffers; these are set on
the server's command line, where no configuration file in the backup can
undo them. The server recovers from the repository to the end of the
archive (or --target-*, then promotes). Then the drill checks that it
accepts connections, runs amcheck (bt_index_check on every B-tree index,
verify_heapam on every table) in every database when the server has the
extension, and runs the --check-sql statements. It also reports WAL the
archive lacks between the backup and the end of the archive, since recovery
stops there. Afterwards it stops the server and removes what it wrote,
unless --keep.

It prints one line: restore time, recovery time, WAL replayed, the time to a
usable server (the recovery time objective) and what the checks found
(--json: a report object; --metrics-file: the outcome and these durations
for node-exporter's textfile collector). Exit code 0: the backup is sound;
5: a check failed (the line names it); 1: the drill could not run.

Run it from cron or a systemd timer on a machine with the backup's size free
and the server binaries of its major version (deploy/walkeeper-drill.timer).
It never connects to the primary and cannot archive into the repository.
An encrypted repository needs its private key (--identity-file, or
--passphrase-file), which the throwaway server's restore_command reads by
its path; without it, or if the server's OS user cannot read the file, the
drill cannot run (exit 1).

Examples:
  walkeeper drill --repo s3://bucket/db1 --scratch /var/tmp/walkeeper-drill
  walkeeper drill --repo /srv/walkeeper/db1 --scratch /srv/drill --check-sql /etc/walkeeper/drill.sql \
      --metrics-file /var/lib/node_exporter/textfile_collector/walkeeper_drill.prom`,
		Flags: []cli.Flag{drillBackupFlag, drillScratchFlag, drillKeepFlag, drillPGBinFlag, drillOwnerFlag, drillDBUserFlag,
			drillAmcheckFlag, drillCheckSQLFlag, drillCheckDBFlag, drillTimeoutFlag,
			targetTimeFlag, targetLSNFlag, targetXIDFlag, targetNameFlag, targetTimelineFlag, jsonFlag, metricsFileFlag},
		Action: drillAction,
	})
}

func drillAction(c *cli.Context) error {
	start := time.Now()
	rep, err := drillRun(c)
	path := c.String(metricsFileFlag.Name)
	if path == "" || rep == nil && usageOrLocked(err) {
		return err
	}
	run := monitor.Run{Command: "drill", Start: start, End: time.Now(), OK: err == nil}
	if rep != nil {
		run.Extra = rep.Gauges()
	}
	if werr := monitor.RecordRun(path, run); werr != nil {
		slog.Error("could not write the metrics file", "path", path, "error", werr)
		if err == nil {
			return werr
		}
	}
	return err
}

func usageOrLocked(err error) bool {
	var ue usageError
	return errors.As(err, &ue) || errors.Is(err, storage.ErrLocked)
}

func drillRun(c *cli.Context) (*drill.Report, error) {
	scratch := c.String(drillScratchFlag.Name)
	if scratch == "" {
		return nil, usagef("drill needs --scratch DIR: a missing or empty directory with room for the backup, removed afterwards")
	}
	rec := restore.Recovery{
		TargetTime:     c.String(targetTimeFlag.Name),
		TargetLSN:      c.String(targetLSNFlag.Name),
		TargetXID:      c.String(targetXIDFlag.Name),
		TargetName:     c.String(targetNameFlag.Name),
		TargetTimeline: c.String(targetTimelineFlag.Name),
	}
	if err := rec.Validate(); err != nil {
		return nil, usageError{err}
	}
	var sql []byte
	if f := c.String(drillCheckSQLFlag.Name); f != "" {
		var err error
		if sql, err = os.ReadFile(f); err != nil {
			return nil, usagef("--check-sql: %v", err)
		}
	}
	cmd, exe, keyFiles, err := walFetchCommand(c, true)
	if err != nil {
		return nil, err
	}
	rec.RestoreCommand = cmd
	var repoDir string
	if loc, err := storage.ParseLocation(c.String(repoFlag.Name)); err == nil && loc.Scheme == "file" {
		repoDir = loc.Path
	}
	repo, err := openRepository(c)
	if err != nil {
		return nil, err
	}
	rep, err := drill.Run(c.Context, drill.Options{
		Repo: repo, BackupID: c.String(drillBackupFlag.Name), Scratch: scratch, Keep: c.Bool(drillKeepFlag.Name),
		PGBin: c.String(drillPGBinFlag.Name), Owner: c.String(drillOwnerFlag.Name), DBUser: c.String(drillDBUserFlag.Name),
		Amcheck: c.Bool(drillAmcheckFlag.Name), CheckSQL: string(sql), CheckSQLName: c.String(drillCheckSQLFlag.Name),
		CheckDatabase: c.String(drillCheckDBFlag.Name), Recovery: rec, RepoDir: repoDir, Binary: exe, KeyFiles: keyFiles,
		Timeout: c.Duration(drillTimeoutFlag.Name), Log: slog.Default(),
	})
	if err != nil {
		return rep, err
	}
	if c.Bool(jsonFlag.Name) {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return rep, err
		}
	} else {
		fmt.Fprintln(c.App.Writer, rep.Line())
	}
	if !rep.OK {
		return rep, fmt.Errorf("%w: the drill of backup %s found %d (%s)", errProblems, rep.Backup, len(rep.Problems), rep.Problems[0])
	}
	return rep, nil
}
