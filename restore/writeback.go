package restore

import (
	"os"

	"github.com/walkeeper/walkeeper/storage"
)

// Early writeback. Without it the page cache holds a restore's files until
// the fsyncs, so the disk idles while the workers decompress and the
// workers idle while the disk writes (on a 2-core machine with a 440 MB/s
// disk, a 1.2 GB restore took 5.7 s with one worker and 4.7 s with two,
// about half of it waiting on the fsyncs at the end). Every writebackAfter
// bytes written to a file, the kernel is asked to start writing them (sync_file_range
// SYNC_FILE_RANGE_WRITE, as PostgreSQL's *_flush_after settings do): the
// disk works while the workers go on (3.7 s and 2.5 s). It is a hint only:
// the syncers' fsync of every file before pg_control is what makes the
// restore durable. The call returns at once unless the disk's queue is
// full, when the restore is waiting for the disk anyway. (Handing the
// ranges to a goroutine of their own measured the same.)

// writebackAfter is how many bytes of a file are written before their
// writeback is started.
const writebackAfter = 8 << 20

// fileWriter writes a file (or one part of it) sequentially from off
// through WriteAt, starting the writeback of every writebackAfter bytes.
type fileWriter struct {
	f          outFile
	pos, start int64
	writeback  bool
}

func (d *dataDir) newFileWriter(f outFile, off int64) *fileWriter {
	return &fileWriter{f: f, pos: off, start: off, writeback: !d.noSync}
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.pos)
	w.pos += int64(n)
	if w.writeback && w.pos-w.start >= writebackAfter {
		if cf, ok := w.f.(countedFile); ok {
			if f, ok := cf.outFile.(*os.File); ok {
				storage.StartWriteback(f, w.start, w.pos-w.start)
			}
		}
		w.start = w.pos
	}
	return n, err
}
