package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/internal/replication"
	"github.com/walkeeper/walkeeper/monitor"
)

var (
	monitorSlotFlag = &cli.StringFlag{
		Name:  "slot",
		Usage: "replication slot `NAME` to report (default: the slot of the stream heartbeat in the repository, else walkeeper)",
	}
	maxBackupAgeFlag = &cli.StringFlag{
		Name:  "max-backup-age",
		Usage: "exit 5 when the newest complete backup finished longer ago than `DURATION` (e.g. 26h, 1d), or there is none",
	}
	maxWALAgeFlag = &cli.StringFlag{
		Name:  "max-wal-age",
		Usage: "exit 5 when the newest stored WAL is older than `DURATION` (e.g. 10m), or there is none",
	}
	queryTimeoutFlag = &cli.DurationFlag{
		Name:  "timeout",
		Value: monitor.DefaultQueryTimeout,
		Usage: "limit for connecting to the server and for each query or storage call",
	}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "status",
		Usage: "summarise the repository, server, slot and stream; exit 5 when stale (for cron and Nagios)",
		Description: `Reports the repository (complete and incomplete backups, the newest backup
and its age, the newest stored WAL with its timeline, end LSN and age, gaps in
the WAL since the oldest complete backup, total stored size), the stream
heartbeats (alive, host, pid, flushed LSN, last heard) and, with --dsn, the
server (reachable, primary or standby, timeline, current LSN, version) and the
replication slot (active, restart_lsn, wal_status, safe_wal_size with
max_slot_wal_keep_size, WAL held back). A null safe_wal_size comes with its
reason: unlimited (max_slot_wal_keep_size = -1), lost (no WAL left) or
no_wal_reserved.

Exit codes: 0 when the repository could be read and nothing is wrong; 5 when
a threshold is exceeded (--max-backup-age, --max-wal-age; an empty repository
with a threshold counts as stale), the WAL has a gap, the slot is lost (or
missing when named by --slot or a stream heartbeat), or the server given by
--dsn is unreachable; 1 when the repository cannot be read. The reasons are
printed under "Status" (and in the JSON's "problems").

Example (Nagios/cron):
  walkeeper status --repo s3://bucket/db1 --dsn "host=db1 user=walkeeper" \
      --max-backup-age 26h --max-wal-age 10m`,
		Flags:  []cli.Flag{jsonFlag, monitorSlotFlag, maxBackupAgeFlag, maxWALAgeFlag, queryTimeoutFlag},
		Action: statusAction,
	})
}

func statusAction(c *cli.Context) error {
	maxBackup, err := parseAge(c.String(maxBackupAgeFlag.Name))
	if err != nil {
		return usagef("--max-backup-age: %v", err)
	}
	maxWAL, err := parseAge(c.String(maxWALAgeFlag.Name))
	if err != nil {
		return usagef("--max-wal-age: %v", err)
	}
	slot := c.String(monitorSlotFlag.Name)
	if slot != "" {
		if err := replication.ValidateSlotName(slot); err != nil {
			return usageError{err}
		}
	}
	repo, err := openRepository(c)
	if err != nil {
		return err
	}
	rep, err := monitor.CollectStatus(c.Context, monitor.StatusOptions{
		Repo: repo, DSN: c.String(dsnFlag.Name), Slot: slot,
		MaxBackupAge: maxBackup, MaxWALAge: maxWAL, Timeout: c.Duration(queryTimeoutFlag.Name),
	})
	if err != nil {
		return err
	}
	if c.Bool(jsonFlag.Name) {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(c.App.Writer)
	}
	if err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("%w: %s", errProblems, strings.Join(rep.Problems, "; "))
	}
	return nil
}

// parseAge parses a Go duration ("26h", "10m", "90s") with days allowed in
// front ("1d", "2d12h"). Empty means no limit.
func parseAge(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	const hint = "use a duration like 26h, 10m, 90s or 1d"
	var d time.Duration
	rest := s
	if days, after, ok := strings.Cut(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100000 {
			return 0, fmt.Errorf("invalid duration %q: %s", s, hint)
		}
		d, rest = time.Duration(n)*24*time.Hour, after
	}
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: %s", s, hint)
		}
		d += r
	}
	if d <= 0 {
		return 0, fmt.Errorf("invalid duration %q: must be positive (%s)", s, hint)
	}
	return d, nil
}
