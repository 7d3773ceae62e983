// Command walkeeper streams PostgreSQL WAL and base backups into a
// repository (a local directory or S3) and restores from it.
//
// This package only parses flags and calls into the walstream, basebackup,
// restore and storage packages; one file per command. Only main exits:
// commands return errors, and main maps them onto the documented exit codes
// (main.go) and prints them as one line.
//
// Settings are resolved in applySettings (flags.go), lowest first: flag
// defaults, the --config TOML file, WALKEEPER_* environment variables, the
// command line.
package main
