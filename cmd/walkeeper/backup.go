package main

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/walkeeper/walkeeper/basebackup"
)

var (
	labelFlag = &cli.StringFlag{
		Name:  "label",
		Usage: "backup label (default: walkeeper <ID>)",
	}
	checkpointFlag = &cli.StringFlag{
		Name:  "checkpoint",
		Value: "fast",
		Usage: "fast (start at once) or spread (let the checkpoint take its usual time, gentler on the server)",
	}
	maxRateFlag = &cli.StringFlag{
		Name:  "max-rate",
		Usage: "limit the server's transfer `RATE` per second, e.g. 50MB (32kB to 1GB)",
	}
	walModeFlag = &cli.StringFlag{
		Name:  "wal",
		Value: basebackup.WALAuto,
		Usage: "how the backup gets its WAL: auto (stream when a walkeeper stream archives into the repository, else include), stream (wait for the stream to store it) or include (inside the backup)",
	}
	chunkSizeFlag = &cli.StringFlag{
		Name:  "chunk-size",
		Value: "128MB",
		Usage: "most tar bytes in one archive chunk (one object; restore extracts chunks in parallel); a larger file is stored as parts (this size rounded down to whole MB), each starting a chunk",
	}
	walTimeoutFlag = &cli.DurationFlag{
		Name:  "wal-timeout",
		Value: 5 * time.Minute,
		Usage: "with --wal stream: how long to wait for the backup's WAL to reach the repository",
	}
	incrementalFlag = &cli.BoolFlag{
		Name:  "incremental",
		Usage: "PostgreSQL 17+ with summarize_wal = on: send and store only the blocks changed since the newest backup (a full backup when there is no usable one, the chain is at --max-chain, or the server's WAL summaries are gone; the log says why)",
	}
	maxChainFlag = &cli.IntFlag{
		Name:  "max-chain",
		Value: basebackup.DefaultMaxChain,
		Usage: "with --incremental: how many incremental backups may follow a full one before a full backup is taken again",
	}
)

func init() {
	commands = append(commands, &cli.Command{
		Name:  "backup",
		Usage: "take a base backup into the repository and print its ID",
		Description: `Runs BASE_BACKUP over a replication connection (on a primary or a hot
standby) and streams each tablespace's tar archive straight through
compression into the repository: no temporary files, bounded memory. Each
archive is cut at file boundaries into chunks of at most --chunk-size, each
a complete tar in its own object (a larger file as parts, each starting a
chunk), so restore extracts them in parallel. The
server's backup_manifest is stored unchanged; backup.json is written last and
marks the backup complete. A backup is complete only when the WAL from its
start to its stop position is available: streamed into the repository by a
running 'walkeeper stream' (the backup waits for it), or included in the
backup. Page checksum failures found by the server are logged with file and
block and recorded in backup.json.

A second backup into the same repository while one runs exits with code 3:
the lock (locks/backup.json) is created only if absent, also on S3
(If-None-Match; a server that ignores it gets the older write-then-verify
lock and a warning). A backup whose lock is taken over or removed while it
runs stops with exit 1 and is not marked complete. IDs are the UTC start
time to the millisecond plus six random hex digits
(20261126T013500.123Z-3f9a1c).
On a terminal a progress bar shows bytes done of the server's estimate; from
cron, structured logs. The backup ID is printed alone on stdout at the end.

With --incremental (PostgreSQL 17 and newer, summarize_wal = on) the server
sends only the blocks changed since the parent, the newest complete backup
on the server's timeline history; backup.json records the parent and the
chain, restore rebuilds every file from the chain, and delete keeps chains
whole. See docs/backups.md.

With --metrics-file PATH the outcome (time, duration, size, success) is
written for node-exporter's textfile collector; see docs/metrics.md.

Example (cron):
  walkeeper backup --dsn "host=db1 user=walkeeper" --repo s3://bucket/db1`,
		Flags:  []cli.Flag{labelFlag, checkpointFlag, maxRateFlag, walModeFlag, walTimeoutFlag, chunkSizeFlag, incrementalFlag, maxChainFlag, metricsFileFlag},
		Action: backupAction,
	})
}

func backupAction(c *cli.Context) error {
	start := time.Now()
	meta, err := takeBackup(c)
	var size int64
	if meta != nil {
		size = meta.StoredSize
	}
	return recordRun(c, "backup", start, size, err)
}

// takeBackup runs the backup and prints its ID.
func takeBackup(c *cli.Context) (*basebackup.Meta, error) {
	var fast bool
	switch c.String(checkpointFlag.Name) {
	case "fast":
		fast = true
	case "spread":
	default:
		return nil, usagef("--checkpoint must be fast or spread")
	}
	var rate int64
	if v := c.String(maxRateFlag.Name); v != "" {
		r, err := parseSize(v)
		if err != nil {
			return nil, usagef("--max-rate: %v", err)
		}
		if r < 32<<10 || r > 1<<30 {
			return nil, usagef("--max-rate must be between 32kB and 1GB per second")
		}
		rate = r
	}
	switch c.String(walModeFlag.Name) {
	case basebackup.WALAuto, basebackup.WALStream, basebackup.WALInclude:
	default:
		return nil, usagef("--wal must be auto, stream or include")
	}
	chunk, err := parseSize(c.String(chunkSizeFlag.Name))
	if err != nil || chunk < basebackup.MinChunkSize {
		return nil, usagef("--chunk-size must be a size of at least 1MB, e.g. 128MB")
	}
	if c.Int(maxChainFlag.Name) < 1 {
		return nil, usagef("--max-chain must be at least 1")
	}
	repo, err := openRepository(c)
	if err != nil {
		return nil, err
	}
	opts := basebackup.Options{
		ChunkSize:      chunk,
		DSN:            c.String(dsnFlag.Name),
		Repo:           repo,
		Label:          c.String(labelFlag.Name),
		FastCheckpoint: fast,
		MaxRate:        rate,
		WAL:            c.String(walModeFlag.Name),
		WALTimeout:     c.Duration(walTimeoutFlag.Name),
		Incremental:    c.Bool(incrementalFlag.Name),
		MaxChain:       c.Int(maxChainFlag.Name),
		Version:        appVersion(),
		Log:            slog.Default(),
	}
	var bar *progressbar.ProgressBar
	var mu sync.Mutex
	if term.IsTerminal(int(os.Stderr.Fd())) {
		opts.Progress = func(done, total int64) {
			mu.Lock()
			defer mu.Unlock()
			if bar == nil {
				bar = progressbar.NewOptions64(max(total, done),
					progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionSetDescription("backup"),
					progressbar.OptionShowBytes(true),
					progressbar.OptionShowCount(),
					progressbar.OptionSetPredictTime(true),
					progressbar.OptionThrottle(200*time.Millisecond),
					progressbar.OptionClearOnFinish())
			}
			if done > bar.GetMax64() {
				bar.ChangeMax64(done) // the estimate was low
			}
			bar.Set64(done)
		}
	}
	meta, err := basebackup.Run(c.Context, opts)
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(c.App.Writer, meta.ID)
	return meta, nil
}
