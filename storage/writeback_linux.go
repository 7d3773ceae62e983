package storage

import (
	"os"

	"golang.org/x/sys/unix"
)

// StartWriteback asks the kernel to begin writing [off, off+n) of f to the
// disk now, without waiting (sync_file_range SYNC_FILE_RANGE_WRITE), so
// the fsync at commit has little left to do and the disk works while the
// object is still being written. A hint: commit's fsync makes it durable.
func StartWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}
