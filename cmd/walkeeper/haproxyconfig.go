package main

import (
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/monitor"
)

var (
	nodeFlag = &cli.StringSliceFlag{
		Name:  "node",
		Usage: "a PostgreSQL server and its health agent: `NAME=HOST:PGPORT,check=HOST:CHECKPORT` (repeat for every node; in the config file: node = [\"a=...\", \"b=...\"])",
	}
	writePortFlag     = &cli.IntFlag{Name: "write-port", Value: 5000, Usage: "port of the write listener (to the primary)"}
	readPortFlag      = &cli.IntFlag{Name: "read-port", Value: 5001, Usage: "port of the read listener (replicas round-robin, else the primary)"}
	bindFlag          = &cli.StringFlag{Name: "bind", Usage: "`ADDR` the listeners bind to (default: all addresses)"}
	statsPortFlag     = &cli.IntFlag{Name: "stats-port", Usage: "add HAProxy's stats page on this port (CSV at /;csv)"}
	maxLagFlag        = &cli.StringFlag{Name: "max-lag", Usage: "take replicas further behind than this out of the read rotation: a size (16MB) or a duration (10s)"}
	checkIntervalFlag = &cli.DurationFlag{Name: "check-interval", Value: time.Second, Usage: "HAProxy's check interval (inter)"}
	fallFlag          = &cli.IntFlag{Name: "fall", Value: 2, Usage: "failed checks in a row before a server is marked down"}
	riseFlag          = &cli.IntFlag{Name: "rise", Value: 2, Usage: "passed checks in a row before a server is marked up"}
	dnsFlag           = &cli.StringFlag{Name: "dns", Usage: "resolve node names at run time with this DNS server `HOST:PORT` (Docker: 127.0.0.11:53); default: once at start"}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "haproxy-config",
		Usage: "print a haproxy.cfg with a write port (primary) and a read port (replicas) checked by walkeeper health",
		Description: `Prints a configuration for HAProxy 2.6 or newer on stdout. Every node is
listed in both backends; the health agents decide which servers are up:
the write backend checks GET /primary, the read backend GET
/replica?max-lag=..., and the read listener falls back to the primary while
no replica passes. A server marked down has its sessions closed.

Example:
  walkeeper haproxy-config --node db1=10.0.0.1:5432,check=10.0.0.1:8008 \
      --node db2=10.0.0.2:5432,check=8008 --max-lag 16MB --stats-port 8404 \
      > /etc/haproxy/haproxy.cfg && haproxy -c -f /etc/haproxy/haproxy.cfg`,
		Flags:  []cli.Flag{nodeFlag, writePortFlag, readPortFlag, bindFlag, statsPortFlag, maxLagFlag, checkIntervalFlag, fallFlag, riseFlag, dnsFlag},
		Action: haproxyConfigAction,
	})
}

func haproxyConfigAction(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("haproxy-config takes no arguments, got %q: give nodes with --node", c.Args().First())
	}
	opts := monitor.HAProxyOptions{
		Bind:          c.String(bindFlag.Name),
		WritePort:     c.Int(writePortFlag.Name),
		ReadPort:      c.Int(readPortFlag.Name),
		StatsPort:     c.Int(statsPortFlag.Name),
		CheckInterval: c.Duration(checkIntervalFlag.Name),
		Fall:          c.Int(fallFlag.Name),
		Rise:          c.Int(riseFlag.Name),
		DNS:           c.String(dnsFlag.Name),
	}
	for _, s := range joinNodeOptions(c.StringSlice(nodeFlag.Name)) {
		n, err := monitor.ParseHAProxyNode(s)
		if err != nil {
			return usageError{err}
		}
		opts.Nodes = append(opts.Nodes, n)
	}
	if s := c.String(maxLagFlag.Name); s != "" {
		m, err := monitor.ParseMaxLag(s)
		if err != nil {
			return usagef("--max-lag: %v", err)
		}
		opts.MaxLag = &m
	}
	var out strings.Builder
	if err := monitor.WriteHAProxyConfig(&out, opts); err != nil {
		return usageError{err}
	}
	_, err := c.App.Writer.Write([]byte(out.String()))
	return err
}

// joinNodeOptions undoes the comma splitting of slice flags: urfave/cli
// splits "a=h:5432,check=h:8008" into two values, so a value that is an
// option (it has no NAME=HOST:PORT form, like check=...) rejoins the node
// before it.
func joinNodeOptions(vals []string) []string {
	var out []string
	for _, v := range vals {
		if len(out) > 0 && strings.HasPrefix(v, "check=") {
			out[len(out)-1] += "," + v
			continue
		}
		out = append(out, v)
	}
	return out
}
