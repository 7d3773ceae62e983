package archive

import "encoding/binary"

// walPageMagic is XLOG_PAGE_MAGIC (src/include/access/xlog_internal.h),
// the first two bytes of every WAL page in native byte order, by major. It
// changes in every major whose WAL format changed and in no minor release;
// test/compat_test.go reads it from each tested server's WAL.
var walPageMagic = map[int]uint16{
	15: 0xD110,
	16: 0xD113,
	17: 0xD116,
	18: 0xD118,
}

// WALPageMagic returns the WAL page magic of a PostgreSQL major, and false
// for a major walkeeper does not know (older than 15, or newer than the
// newest tested).
func WALPageMagic(major int) (uint16, bool) {
	m, ok := walPageMagic[major]
	return m, ok
}

// MajorOfWALPageMagic returns the major whose WAL starts its pages with
// magic, and false when no known major does.
func MajorOfWALPageMagic(magic uint16) (int, bool) {
	for major, m := range walPageMagic {
		if m == magic {
			return major, true
		}
	}
	return 0, false
}

// PageMagic reads the magic of the WAL page at the start of b.
func PageMagic(b []byte) uint16 { return binary.NativeEndian.Uint16(b) }
