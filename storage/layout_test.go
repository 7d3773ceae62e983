package storage

import "testing"

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
