package main

import (
	"fmt"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise it comes from the module's build information.
var version = ""

func appVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

const appDescription = `walkeeper keeps a physical replication slot on a PostgreSQL primary, streams
its WAL into a repository (a local directory or S3) with compression, takes
base backups over the same protocol, and restores from the repository: to a
point in time, or as a new read replica.

Every flag can also be set with an environment variable WALKEEPER_<FLAG> (for
--s3-endpoint: WALKEEPER_S3_ENDPOINT) and in the TOML file given by --config
(keys are flag names: repo = "s3://bucket/prefix"). Precedence, lowest first:
default, config file, environment, command line. The common flags may come
before or after the command name. Connection settings follow libpq: --dsn takes
a conninfo string or URL, and PGHOST, PGPORT, PGUSER, PGPASSWORD, PGPASSFILE,
PGSSLMODE... apply. S3 credentials come from the AWS chain (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles).

Exit codes:
  0  success
  1  failure (the message says what failed and what to do), also a run
     that lost its repository lock to another run mid-way
  2  usage: unknown flag or command, bad flag value, bad config file
  3  another walkeeper run holds the repository lock
  4  wal-fetch: the requested file is not in the repository
  5  verify, status, doctor: the check ran and found problems (1 means it
     could not run)
  126  wal-fetch --fatal-errors: any other failure (PostgreSQL aborts recovery)`

// commands lists the subcommands; each lives in its own file.
var commands []*cli.Command

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "walkeeper",
		Usage:                "PostgreSQL WAL streaming, base backups and restore into a local or S3 repository",
		Description:          appDescription,
		Version:              appVersion(),
		Flags:                withEnv(commonFlags),
		Commands:             commonCommands(commands),
		EnableBashCompletion: false,
		HideHelpCommand:      true,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{fmt.Errorf("%w: run 'walkeeper --help'", err)}
		},
		Before: func(c *cli.Context) error {
			return applySettings(c)
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("unknown command %q: run 'walkeeper --help' for the list", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		// Only main exits.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	return app
}

// commonCommands gives every command the common flags, the settings
// resolution (config file, environment, flags) and one-line usage errors.
func commonCommands(cmds []*cli.Command) []*cli.Command {
	for _, cmd := range cmds {
		cmd.Flags = append(withEnv(commonFlags), withEnv(cmd.Flags)...)
		before := cmd.Before
		cmd.Before = func(c *cli.Context) error {
			if err := applySettings(c); err != nil {
				return err
			}
			if before != nil {
				return before(c)
			}
			return nil
		}
		cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return usageError{fmt.Errorf("%s: %w: run 'walkeeper %s --help'", cmd.Name, err, cmd.Name)}
		}
	}
	return cmds
}
