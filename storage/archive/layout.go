package archive

import (
	"context"
	"fmt"
	"strings"

	"github.com/walkeeper/walkeeper/storage"
)

// Layout is where a repository keeps its WAL files, decided by its format
// version (walkeeper.json's format_version):
//
//	format 1  wal/<name>                         every file in one directory
//	format 2  wal/<TTTTTTTTXXXXXXXX>/<name>      segments, partials, backup
//	                                             history files (and, format 3,
//	                                             ranges) grouped by timeline and
//	                                             4 GB of WAL (the first 16 digits
//	                                             of the name)
//	          wal/<TTTTTTTT>.history             timeline history files stay
//	                                             at the top in every format
//
// A group is a directory on a local disk and a common key prefix on S3, so
// a listing that starts at a segment (status, the stream's start) skips the
// groups before it without reading their names: on a filesystem, and on an
// S3 server that keeps objects as files (versitygw's posix backend), a
// listing of a flat directory reads every name in it, which made status
// cost what the whole archive holds. Keys sort as names do (a group is a
// prefix of every name in it), so the order of a listing is the order of
// WAL in both formats.
type Layout struct {
	grouped bool
}

// LayoutFor is the layout of repository format version format.
func LayoutFor(format int) Layout { return Layout{grouped: format >= 2} }

// LayoutOf is repo's layout: walkeeper.json's format version, read once
// per Repository (storage.Repository.Format).
func LayoutOf(ctx context.Context, repo *storage.Repository) (Layout, error) {
	f, err := repo.Format(ctx)
	if err != nil {
		return Layout{}, fmt.Errorf("repository format: %w", err)
	}
	return LayoutFor(f), nil
}

// groupLen is the length of a group's name: timeline and the high 32 bits
// of the segment number.
const groupLen = 16

// Key is the repository key (without codec extension) of the WAL file
// name in this layout.
func (l Layout) Key(name string) string {
	if l.grouped {
		switch KindOf(name) {
		case Segment, Partial, BackupLabel, Range:
			return storage.WALPrefix + name[:groupLen] + "/" + name
		}
	}
	return storage.WALPrefix + name
}

// HistoryKey is the key (without codec extension) of timeline tli's
// history file, the same in every layout.
func HistoryKey(tli uint32) string { return storage.WALPrefix + HistoryName(tli) }

// Grouped reports whether segments are kept in groups (format 2 on).
func (l Layout) Grouped() bool { return l.grouped }

// Key is the repository key (without codec extension) of the WAL file name
// in repo's layout.
func Key(ctx context.Context, repo *storage.Repository, name string) (string, error) {
	l, err := LayoutOf(ctx, repo)
	if err != nil {
		return "", err
	}
	return l.Key(name), nil
}

// NameOfKey is the WAL file name a stored key under wal/ holds, in either
// layout: the key's last element without the codec extension.
func NameOfKey(key string) string {
	base, _, _ := storage.SplitExt(key)
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		return base[i+1:]
	}
	return base
}
