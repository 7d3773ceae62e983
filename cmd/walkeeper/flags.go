package main

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/walkeeper/walkeeper/storage"
)

// Flags shared by every command, accepted before or after the command name.
var (
	configFlag = &cli.StringFlag{
		Name:  "config",
		Usage: "read settings from this TOML `FILE` (keys are flag names; unknown keys are an error)",
	}
	repoFlag = &cli.StringFlag{
		Name:  "repo",
		Usage: "repository `URL`: /abs/path, file:///abs/path or s3://bucket/prefix",
	}
	dsnFlag = &cli.StringFlag{
		Name:  "dsn",
		Usage: "PostgreSQL connection string or URL (libpq syntax; PG* variables apply)",
	}
	compressionFlag = &cli.StringFlag{
		Name:  "compression",
		Value: "zstd",
		Usage: "codec for new objects: " + storage.CodecNames,
	}
	logFormatFlag = &cli.StringFlag{
		Name:  "log-format",
		Value: "auto",
		Usage: "log format: text, json, or auto (text on a terminal, json otherwise)",
	}
	logLevelFlag = &cli.StringFlag{
		Name:  "log-level",
		Value: "info",
		Usage: "log level: debug, info, warn or error",
	}
	s3EndpointFlag = &cli.StringFlag{
		Name:  "s3-endpoint",
		Usage: "`URL` of an S3-compatible server (default: AWS)",
	}
	s3RegionFlag = &cli.StringFlag{
		Name:  "s3-region",
		Usage: "S3 region (default: from the AWS configuration, else us-east-1)",
	}
	s3PathStyleFlag = &cli.BoolFlag{
		Name:  "s3-path-style",
		Usage: "address buckets as ENDPOINT/BUCKET (most S3-compatible servers need this)",
	}
	s3PartSizeFlag = &cli.StringFlag{
		Name:  "s3-part-size",
		Value: "8MB",
		Usage: "multipart upload part `SIZE` (min 5MB); upload memory is one SIZE buffer per object being uploaded plus --s3-concurrency shared ones",
	}
	encryptToFlag = &cli.StringFlag{
		Name: "encrypt-to",
		Usage: "encrypt the repository to this age public `KEY` (age1...): all that stream, backup and wal-push need; " +
			"the private key stays off the database host (docs/encryption.md)",
	}
	identityFileFlag = &cli.StringFlag{
		Name:  "identity-file",
		Usage: "age private key `FILE` (from 'walkeeper keygen'): restore, wal-fetch and verify of contents need it",
	}
	passphraseFileFlag = &cli.StringFlag{
		Name:  "passphrase-file",
		Usage: "passphrase mode: read the repository's passphrase from `FILE` (or set " + passphraseEnv + "; never on the command line)",
	}
	s3ConcurrencyFlag = &cli.IntFlag{
		Name:  "s3-concurrency",
		Value: 4,
		Usage: "parts of one object uploaded in parallel, and the part buffers all uploads share",
	}
)

var commonFlags = []cli.Flag{
	configFlag, repoFlag, dsnFlag, compressionFlag, logFormatFlag, logLevelFlag,
	s3EndpointFlag, s3RegionFlag, s3PathStyleFlag, s3PartSizeFlag, s3ConcurrencyFlag,
	encryptToFlag, identityFileFlag, passphraseFileFlag,
}

// passphraseEnv holds the passphrase mode's secret. It has no flag: a
// command line is visible to every user of the host (ps, /proc).
const passphraseEnv = "WALKEEPER_PASSPHRASE"

// encryptionKeys reads the encryption settings of c. The passphrase comes
// from the environment or a file, never argv; nothing here logs a key.
func encryptionKeys(c *cli.Context) (storage.Keys, error) {
	k := storage.Keys{Recipient: c.String(encryptToFlag.Name), IdentityFile: c.String(identityFileFlag.Name)}
	if path := c.String(passphraseFileFlag.Name); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return k, fmt.Errorf("--passphrase-file: %w", err)
		}
		k.Passphrase = strings.TrimRight(string(data), "\r\n")
		if k.Passphrase == "" {
			return k, usagef("--passphrase-file %s is empty", path)
		}
	} else if p := os.Getenv(passphraseEnv); p != "" {
		k.Passphrase = p
	}
	if err := storage.CheckKeys(k); err != nil {
		return k, usageError{err}
	}
	return k, nil
}

// envName is the environment variable of a flag: WALKEEPER_ and the flag's
// name in upper snake case.
func envName(flag string) string {
	return "WALKEEPER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// withEnv gives every flag its environment variable, so no flag is defined
// without one.
func withEnv(flags []cli.Flag) []cli.Flag {
	for _, f := range flags {
		name := f.Names()[0]
		env := []string{envName(name)}
		switch f := f.(type) {
		case *cli.StringFlag:
			f.EnvVars = env
		case *cli.BoolFlag:
			f.EnvVars = env
		case *cli.IntFlag:
			f.EnvVars = env
		case *cli.Int64Flag:
			f.EnvVars = env
		case *cli.DurationFlag:
			f.EnvVars = env
		case *cli.StringSliceFlag:
			f.EnvVars = env
		case *cli.UintFlag:
			f.EnvVars = env
		default:
			panic(fmt.Sprintf("flag %s: type %T needs a case in withEnv", name, f))
		}
	}
	return flags
}

// definedFlags returns the flags of the command c runs.
func definedFlags(c *cli.Context) []cli.Flag {
	if c.Command != nil && c.Command.Name != "" && c.Command.Name != c.App.Name {
		return c.Command.Flags
	}
	return c.App.Flags
}

func hasFlag(flags []cli.Flag, name string) bool {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return true
		}
	}
	return false
}

// onCommandLine reports whether flag name was given on the command line of
// this context (urfave's IsSet also says yes for the environment).
func onCommandLine(c *cli.Context, name string) bool {
	if !hasFlag(definedFlags(c), name) || !c.IsSet(name) {
		return false
	}
	env, ok := os.LookupEnv(envName(name))
	return !ok || fmt.Sprint(c.Value(name)) != env
}

// applySettings resolves every setting of c in three steps, lowest first:
//  1. defaults, from the flag definitions;
//  2. the --config file, for flags not set by the environment or command line;
//  3. the environment and command line, which urfave applied already; a
//     common flag given before the command name is copied to the command.
//
// Then it sets up logging and checks the common values.
func applySettings(c *cli.Context) error {
	defined := definedFlags(c)
	// Step 3 for common flags given before the command name.
	for _, f := range commonFlags {
		name := f.Names()[0]
		if onCommandLine(c, name) {
			continue
		}
		for _, outer := range c.Lineage()[1:] {
			if outer.Command == nil && outer.App == nil {
				continue
			}
			if onCommandLine(outer, name) {
				if err := c.Set(name, fmt.Sprint(outer.Value(name))); err != nil {
					return usagef("--%s: %v", name, err)
				}
				break
			}
		}
	}
	// Step 2.
	if path := c.String(configFlag.Name); path != "" {
		var values map[string]any
		if _, err := toml.DecodeFile(path, &values); err != nil {
			return usagef("config file %s: %v", path, err)
		}
		for key, v := range values {
			if key == configFlag.Name || !knownFlag(c.App, key) {
				return usagef("config file %s: unknown setting %q: keys are flag names without dashes in front (see --help)", path, key)
			}
			if !hasFlag(defined, key) || c.IsSet(key) {
				continue // another command's setting, or overridden
			}
			items, isList := v.([]any)
			if !isList {
				items = []any{v}
			}
			for _, item := range items {
				if err := c.Set(key, fmt.Sprint(item)); err != nil {
					return usagef("config file %s: %s = %v: %v", path, key, item, err)
				}
			}
		}
	}
	if err := setupLogging(c.String(logFormatFlag.Name), c.String(logLevelFlag.Name)); err != nil {
		return err
	}
	if repo := c.String(repoFlag.Name); repo != "" {
		if _, err := storage.ParseLocation(repo); err != nil {
			return usageError{err}
		}
	}
	if _, err := storage.ParseCodec(c.String(compressionFlag.Name)); err != nil {
		return usageError{err}
	}
	if _, err := parseSize(c.String(s3PartSizeFlag.Name)); err != nil {
		return usagef("--s3-part-size: %v", err)
	}
	return nil
}

// knownFlag reports whether any command (or the app) defines flag name.
func knownFlag(app *cli.App, name string) bool {
	if hasFlag(app.Flags, name) {
		return true
	}
	for _, cmd := range app.Commands {
		if hasFlag(cmd.Flags, name) {
			return true
		}
	}
	return false
}

func setupLogging(format, level string) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return usagef("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if format == "auto" {
		format = "json"
		if term.IsTerminal(int(os.Stderr.Fd())) {
			format = "text"
		}
	}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		return usagef("--log-format %q: use text, json or auto", format)
	}
	slog.SetDefault(slog.New(h))
	return nil
}

// openRepository opens the repository the flags of c describe.
func openRepository(c *cli.Context) (*storage.Repository, error) {
	if c.String(repoFlag.Name) == "" {
		return nil, usagef("no repository given: set --repo or WALKEEPER_REPO (/abs/path or s3://bucket/prefix)")
	}
	partSize, err := parseSize(c.String(s3PartSizeFlag.Name))
	if err != nil {
		return nil, usagef("--s3-part-size: %v", err)
	}
	keys, err := encryptionKeys(c)
	if err != nil {
		return nil, err
	}
	return storage.Open(c.Context, storage.Options{
		Keys:        keys,
		Repo:        c.String(repoFlag.Name),
		Compression: c.String(compressionFlag.Name),
		S3: storage.S3Options{
			Endpoint:    c.String(s3EndpointFlag.Name),
			Region:      c.String(s3RegionFlag.Name),
			PathStyle:   c.Bool(s3PathStyleFlag.Name),
			PartSize:    partSize,
			Concurrency: c.Int(s3ConcurrencyFlag.Name),
		},
	})
}
