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
		"000000010000000000000003":                 Segment,
		"000000010000000000000003.partial":         Partial,
		"00000002.history":                         History,
		"0000000a.history":                         Other,
		"000000010000000000000003.00000028.backup": BackupLabel,
		"000000010000000000000003.0000002x.backup": Other,
		"00000001000000000000000g":                 Other,
		"walkeeper.json":                           Other,
	} {
		if k := KindOf(name); k != want {
			t.Errorf("KindOf(%q) = %v, want %v", name, k, want)
		}
	}
	if got := NameOfKey("wal/000000010000000000000003.partial.zst"); got != "000000010000000000000003.partial" {
		t.Errorf("NameOfKey = %q", got)
	}
}
