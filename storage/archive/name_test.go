package archive

import "testing"

func TestSegmentNames(t *testing.T) {
	for _, tc := range []struct {
		tli     uint32
		segno   uint64
		segSize uint64
		name    string
	}{
		{1, 1, 16 << 20, "000000010000000000000001"},
		{1, 0x100, 16 << 20, "000000010000000100000000"},
		{2, 0x1FF, 16 << 20, "0000000200000001000000FF"},
		{3, 5, 1 << 30, "000000030000000100000001"},
		{0xA, 0x40, 64 << 20, "0000000A0000000100000000"},
	} {
		if got := SegmentName(tc.tli, tc.segno, tc.segSize); got != tc.name {
			t.Errorf("SegmentName(%d,%#x,%d) = %s, want %s", tc.tli, tc.segno, tc.segSize, got, tc.name)
		}
		n, err := ParseName(tc.name, tc.segSize)
		if err != nil || n.TLI != tc.tli || n.Seg != tc.segno || n.Kind != Segment {
			t.Errorf("ParseName(%s) = %+v, %v", tc.name, n, err)
		}
	}
}

func TestKindOf(t *testing.T) {
	for name, want := range map[string]Kind{
		"000000010000000000000003":                         Segment,
		"000000010000000000000003.partial":                 Partial,
		"00000002.history":                                 History,
		"0000000a.history":                                 Other,
		"000000010000000000000003.00000028.backup":         BackupLabel,
		"000000010000000000000003.0000002x.backup":         Other,
		"00000001000000000000000g":                         Other,
		"000000010000000000000003.00A10000-00A10400.range": Range,
		"000000010000000000000003.00A10000.00A10400.range": Other,
		"000000010000000000000003.00a10000-00A10400.range": Other,
		"walkeeper.json":                                   Other,
	} {
		if k := KindOf(name); k != want {
			t.Errorf("KindOf(%q) = %v, want %v", name, k, want)
		}
	}
	if got := NameOfKey("wal/000000010000000000000003.partial.zst"); got != "000000010000000000000003.partial" {
		t.Errorf("NameOfKey = %q", got)
	}
}

func TestRangeNames(t *testing.T) {
	const size = 16 << 20
	name := RangeName(1, 3, size, 0xA10000, 0xA10400)
	if name != "000000010000000000000003.00A10000-00A10400.range" {
		t.Fatalf("RangeName = %s", name)
	}
	n, err := ParseName(name, size)
	if err != nil || n != (Name{Kind: Range, TLI: 1, Seg: 3, Offset: 0xA10000, End: 0xA10400}) {
		t.Fatalf("ParseName(%s) = %+v, %v", name, n, err)
	}
	if n.File(size) != name || n.SegmentFile(size) != "000000010000000000000003" {
		t.Fatalf("File = %s, SegmentFile = %s", n.File(size), n.SegmentFile(size))
	}
	for _, bad := range []string{
		"000000010000000000000003.00A10400-00A10400.range", // empty
		"000000010000000000000003.00A10400-00A10000.range", // backwards
		"000000010000000000000003.00000000-01000001.range", // past the segment
	} {
		if _, err := ParseName(bad, size); err == nil {
			t.Errorf("ParseName(%s) accepted", bad)
		}
	}
	// A segment's ranges sort after its name and before the next
	// segment's, so a listing of the segment's prefix finds only them.
	next := SegmentName(1, 4, size)
	if !(name > SegmentName(1, 3, size) && name < next && name[:25] == SegmentName(1, 3, size)+".") {
		t.Errorf("%s does not sort between its segment and %s", name, next)
	}
}
