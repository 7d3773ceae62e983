package storage

import "testing"

func TestSegmentNameRoundTrip(t *testing.T) {
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
		tli, segno, err := ParseSegmentName(tc.name, tc.segSize)
		if err != nil || tli != tc.tli || segno != tc.segno {
			t.Errorf("ParseSegmentName(%s) = %d,%#x,%v", tc.name, tli, segno, err)
		}
	}
	if _, _, err := ParseSegmentName("0000000100000000000001000", 16<<20); err == nil {
		t.Error("25 digits accepted")
	}
	if _, _, err := ParseSegmentName("000000010000000000000100", 16<<20); err == nil {
		t.Error("segment 0x100 within an id accepted for 16MB segments")
	}
	if !IsHistoryName("0000000A.history") || IsHistoryName("0000000a.history") {
		t.Error("IsHistoryName")
	}
}

func TestSplitExt(t *testing.T) {
	base, c, ok := SplitExt("wal/000000010000000000000001.partial.zst")
	if base != "wal/000000010000000000000001.partial" || c != CodecZstd || !ok {
		t.Errorf("got %s %v %v", base, c, ok)
	}
	base, c, ok = SplitExt("wal/00000002.history")
	if base != "wal/00000002.history" || c != CodecNone || ok {
		t.Errorf("got %s %v %v", base, c, ok)
	}
}

func TestValidateKey(t *testing.T) {
	for _, k := range []string{"a", "wal/0001.zst", "backups/20260101T000000Z/base.tar.zst"} {
		if err := ValidateKey(k); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	for _, k := range []string{"", "/a", "a/", "a//b", "../a", "a/../b", "a/.tmp", "a b", "a\\b"} {
		if err := ValidateKey(k); err == nil {
			t.Errorf("%q accepted", k)
		}
	}
}

func TestParseWALName(t *testing.T) {
	for name, want := range map[string]struct {
		kind WALKind
		seg  string
	}{
		"000000010000000000000003":                 {WALSegment, "000000010000000000000003"},
		"000000010000000000000003.partial":         {WALPartial, "000000010000000000000003"},
		"00000002.history":                         {WALHistory, ""},
		"000000010000000000000003.00000028.backup": {WALBackupLabel, "000000010000000000000003"},
		"000000010000000000000003.0000002x.backup": {WALOther, ""},
		"00000001000000000000000g":                 {WALOther, ""},
		"walkeeper.json":                           {WALOther, ""},
	} {
		if k, seg := ParseWALName(name); k != want.kind || seg != want.seg {
			t.Errorf("ParseWALName(%q) = %d, %q; want %d, %q", name, k, seg, want.kind, want.seg)
		}
	}
	if got := WALNameOf("wal/000000010000000000000003.partial.zst"); got != "000000010000000000000003.partial" {
		t.Errorf("WALNameOf = %q", got)
	}
}
