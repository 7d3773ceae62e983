package restore

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to begin writing [off, off+n) of f to the
// disk now, without waiting for it (sync_file_range SYNC_FILE_RANGE_WRITE).
// It is a hint: the fsync before pg_control still makes the file durable.
func startWriteback(f any, off, n int64) {
	sc, ok := f.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}
