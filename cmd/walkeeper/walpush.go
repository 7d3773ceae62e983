package main

import (
	"errors"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/storage/archive"
)

func init() {
	commands = append(commands, &cli.Command{
		Name:      "wal-push",
		Usage:     "store one WAL file in the repository, for PostgreSQL's archive_command",
		ArgsUsage: "PATH",
		Description: `Stores the file PATH (relative to the data directory, where PostgreSQL runs
archive_command) in the repository under its name, compressed and
checksummed, and exits 0 only once it is durable. For postgresql.conf:

  archive_mode = on
  archive_command = '/usr/local/bin/walkeeper wal-push --repo s3://bucket/db1 %p'

Accepted names: WAL segments, NAME.partial, timeline history files and
backup history files (000000010000000000000002.00000028.backup). The
repository must already have walkeeper.json (written by 'walkeeper backup' or
'walkeeper stream'); a segment's header must match it (system identifier,
segment size), so another cluster's WAL is refused. A file already stored
with the same content is success ("already stored"); different content is
refused and never overwritten. Details: docs/wal-fetch.md.

Into an encrypted repository, wal-push needs only the public key:
  archive_command = '/usr/local/bin/walkeeper wal-push --repo s3://bucket/db1 --encrypt-to age1... %p'
(or WALKEEPER_ENCRYPT_TO in the server's environment); without it the push
is refused. docs/encryption.md.`,
		Action: walPushAction,
	})
}

func walPushAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("wal-push needs one PATH (in archive_command: %%p), got %d arguments", c.NArg())
	}
	repo, err := openRepository(c)
	if err != nil {
		return err
	}
	res, err := archive.PushWAL(c.Context, repo, c.Args().First())
	if errors.Is(err, archive.ErrInvalidName) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	switch {
	case res.AlreadyStored:
		slog.Info("WAL file already stored with the same content", "file", res.Name, "object", res.Key)
	case res.Replaced:
		slog.Info("replaced a shorter partial segment", "file", res.Name, "object", res.Key, "bytes", res.Size)
	default:
		slog.Debug("stored WAL file", "file", res.Name, "object", res.Key, "bytes", res.Size,
			"duration", res.Duration.Round(1e6).String())
	}
	return nil
}
