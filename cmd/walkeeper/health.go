package main

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/monitor"
)

var (
	listenFlag = &cli.StringFlag{
		Name:  "listen",
		Value: ":8008",
		Usage: "`ADDR` (host:port) the HTTP check agent listens on",
	}
	checkTimeoutFlag = &cli.DurationFlag{
		Name:  "check-timeout",
		Value: time.Second,
		Usage: "bound on each check's database round trip, connecting included; past it the answer is 503",
	}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "health",
		Usage: "HTTP check agent for HAProxy: is this node the writable primary, a fresh replica?",
		Description: `Run one agent beside each PostgreSQL server; HAProxy's HTTP checks ask it:

  GET /primary   200 on a writable primary (not in recovery and
                 default_transaction_read_only off), else 503
  GET /replica   200 on a standby whose WAL receiver is streaming, else 503
      ?max-lag=16MB  ...and at most this much WAL received but not replayed
      ?max-lag=10s   ...and replay at most this far behind (0 when all
                     received WAL is replayed)
  GET /health    200 while the agent runs; the body says whether the
                 database answered

Every answer has a JSON body: ok, reason, database, role, timeline,
in_recovery, read_only, streaming, replay_paused, lag_bytes, lag_seconds.
Each check runs one query under --check-timeout: a dead or hung server gives
503 quickly. The --dsn role needs pg_monitor (to read the WAL receiver's
status). Bad query parameters give 400. SIGTERM stops it.

Example:
  walkeeper health --listen :8008 --dsn "host=/var/run/postgresql user=walkeeper_health"`,
		Flags:  []cli.Flag{listenFlag, checkTimeoutFlag},
		Action: healthAction,
	})
}

func healthAction(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("health takes no arguments, got %q", c.Args().First())
	}
	agent, err := monitor.NewAgent(c.String(dsnFlag.Name), c.Duration(checkTimeoutFlag.Name))
	if err != nil {
		return usageError{err}
	}
	ln, err := net.Listen("tcp", c.String(listenFlag.Name))
	if err != nil {
		return fmt.Errorf("--listen %s: %w", c.String(listenFlag.Name), err)
	}
	slog.Info("health agent listening", "addr", ln.Addr().String(), "check_timeout", c.Duration(checkTimeoutFlag.Name))
	if err := agent.Serve(c.Context, ln); err != nil {
		return fmt.Errorf("health agent: %w", err)
	}
	slog.Info("health agent stopped")
	return nil
}
