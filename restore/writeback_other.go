//go:build !linux

package restore

// startWriteback is a no-op where sync_file_range does not exist: the
// fsync before pg_control writes everything.
func startWriteback(f any, off, n int64) {}
