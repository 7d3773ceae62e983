package main

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/walstream"
)

var (
	slotFlag = &cli.StringFlag{
		Name:  "slot",
		Usage: "physical replication `NAME` to stream from (created with reserved WAL when missing)",
	}
	noCreateSlotFlag = &cli.BoolFlag{
		Name:  "no-create-slot",
		Usage: "fail instead of creating a missing slot",
	}
	applicationNameFlag = &cli.StringFlag{
		Name:  "application-name",
		Usage: "application_name reported to the server, for synchronous_standby_names (default: the slot name)",
	}
	statusIntervalFlag = &cli.DurationFlag{
		Name:  "status-interval",
		Value: 10 * time.Second,
		Usage: "longest time between status updates to the server (it also gets one whenever the stored position moves)",
	}
	partialIntervalFlag = &cli.DurationFlag{
		Name:  "partial-interval",
		Value: time.Second,
		Usage: "store the unfinished segment as .partial this often, so the repository lags the server by about this much",
	}
	synchronousFlag = &cli.BoolFlag{
		Name:  "synchronous",
		Usage: "store and acknowledge every received message, so the stream can be a synchronous standby",
	}
	endposFlag = &cli.StringFlag{
		Name:  "endpos",
		Usage: "stop once WAL up to this `LSN` (e.g. 0/5000000) is stored, like pg_receivewal -E",
	}
	metricsListenFlag = &cli.StringFlag{
		Name:  "metrics-listen",
		Usage: "serve Prometheus metrics at http://`ADDR`/metrics (e.g. 127.0.0.1:9187 or :9187); see docs/metrics.md",
	}
	shutdownTimeoutFlag = &cli.DurationFlag{
		Name:  "shutdown-timeout",
		Value: 2 * time.Minute,
		Usage: "on SIGINT/SIGTERM, how long the stream may take to store what it received before it exits (1 when that WAL is not stored: the slot keeps it)",
	}
	queueSegmentsFlag = &cli.IntFlag{
		Name:  "queue-segments",
		Value: 2,
		Usage: "finished segments that may wait for storage; memory is about (N+2) x wal_segment_size",
	}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "stream",
		Usage: "stream WAL from a physical replication slot into the repository until stopped",
		Description: `Connects with replication=true, creates the physical slot with reserved WAL
when it is missing, and stores every WAL segment in the repository
(compressed, checksummed). The unfinished segment is stored as .partial every
--partial-interval, so the repository is about a second behind the server.
The slot's flush position only moves once WAL is durable in the repository:
if walkeeper's host dies, the primary still holds everything not yet stored.

Run it as a daemon (systemd). SIGINT/SIGTERM store the partial segment,
report the final position and exit 0, all within --shutdown-timeout: if
storage is down and received WAL cannot be stored by then, the stream exits
1 naming that WAL (the slot keeps it: the next start stores it). Lost
connections are retried with backoff (1s doubling to 30s); a failure before
the first successful start exits non-zero at once, so a misconfiguration is
seen immediately.

With --metrics-listen ADDR, Prometheus metrics (walkeeper_stream_*: positions,
lag, segments stored, upload errors, queue depth) are served at /metrics until
the stream stops.

Example:
  walkeeper stream --dsn "host=db1 user=walkeeper" --repo s3://bucket/db1 --slot walkeeper`,
		Flags: []cli.Flag{slotFlag, noCreateSlotFlag, applicationNameFlag, statusIntervalFlag,
			partialIntervalFlag, synchronousFlag, endposFlag, queueSegmentsFlag, shutdownTimeoutFlag, metricsListenFlag},
		Action: streamAction,
	})
}

func streamAction(c *cli.Context) error {
	slot := c.String(slotFlag.Name)
	if slot == "" {
		return usagef("stream needs --slot NAME (or WALKEEPER_SLOT)")
	}
	if err := walstream.ValidateSlotName(slot); err != nil {
		return usageError{err}
	}
	var endpos walstream.LSN
	if v := c.String(endposFlag.Name); v != "" {
		lsn, err := walstream.ParseLSN(v)
		if err != nil {
			return usagef("--endpos: %v", err)
		}
		endpos = lsn
	}
	if c.Duration(statusIntervalFlag.Name) <= 0 {
		return usagef("--status-interval must be positive")
	}
	if c.Duration(shutdownTimeoutFlag.Name) <= 0 {
		return usagef("--shutdown-timeout must be positive")
	}
	if c.Int(queueSegmentsFlag.Name) < 1 {
		return usagef("--queue-segments must be at least 1")
	}
	partial := c.Duration(partialIntervalFlag.Name)
	if partial <= 0 {
		partial = -1 // disabled
	}
	repo, err := openRepository(c)
	if err != nil {
		return err
	}
	var metrics *walstream.Metrics
	if addr := c.String(metricsListenFlag.Name); addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return usagef("--metrics-listen %q: want HOST:PORT or :PORT", addr)
		}
		metrics = walstream.NewMetrics(slot)
		srv, err := walstream.ServeMetrics(addr, metrics)
		if err != nil {
			return fmt.Errorf("--metrics-listen %s: %w (is another process using the port?)", addr, err)
		}
		slog.Info("serving metrics", "url", "http://"+srv.Addr()+"/metrics")
		defer srv.Close()
	}
	return walstream.Run(c.Context, walstream.Options{
		DSN:             c.String(dsnFlag.Name),
		Slot:            slot,
		CreateSlot:      !c.Bool(noCreateSlotFlag.Name),
		ApplicationName: c.String(applicationNameFlag.Name),
		StatusInterval:  c.Duration(statusIntervalFlag.Name),
		PartialInterval: partial,
		Synchronous:     c.Bool(synchronousFlag.Name),
		EndPos:          endpos,
		QueueSegments:   c.Int(queueSegmentsFlag.Name),
		ShutdownTimeout: c.Duration(shutdownTimeoutFlag.Name),
		Repo:            repo,
		Log:             slog.Default(),
		Metrics:         metrics,
	})
}
