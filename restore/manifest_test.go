package restore

import "testing"

func TestFullLabel(t *testing.T) {
	in := "START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\nCHECKPOINT LOCATION: 0/7000080\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-02 01:56:24 UTC\nLABEL: x\nSTART TIMELINE: 1\nINCREMENTAL FROM LSN: 0/5000028\nINCREMENTAL FROM TLI: 1\n"
	want := "START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\nCHECKPOINT LOCATION: 0/7000080\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-02 01:56:24 UTC\nLABEL: x\nSTART TIMELINE: 1\n"
	if got := string(fullLabel([]byte(in))); got != want {
		t.Errorf("fullLabel:\n%s\nwant\n%s", got, want)
	}
}

func TestManifestLine(t *testing.T) {
	f := manifestFile{Path: "base/5/16384", Size: 8192, LastModified: "2026-12-02 01:56:24 GMT", Algorithm: "CRC32C", Checksum: crc32cHex(0x12345678)}
	want := `{ "Path": "base/5/16384", "Size": 8192, "Last-Modified": "2026-12-02 01:56:24 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "78563412" }`
	if got := f.line(); got != want {
		t.Errorf("line:\n%s\nwant\n%s", got, want)
	}
}
