// Package backuptest fabricates repository content (backups, WAL, history
// files) for the tests of retention and verify, through the repository API,
// so the same fixtures run on the memory, local and S3 backends.
package backuptest
