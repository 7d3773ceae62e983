package walstream

import (
	"bytes"
	"io"
	"testing"
)

func TestSegmentAppendAndRead(t *testing.T) {
	const segSize = 4 << 20
	s := newSegment(1, LSN(3*segSize), segSize)
	if s.name() != "000000010000000000000003" {
		t.Fatalf("name %s", s.name())
	}
	var want bytes.Buffer
	for i := 0; !s.full(); i++ {
		p := bytes.Repeat([]byte{byte(i)}, min(s.room(), 1+i*7919%300000))
		want.Write(p)
		s.append(p)
		if i == 5 {
			snap, _ := io.ReadAll(s.snapshot(s.size).reader())
			if !bytes.Equal(snap, want.Bytes()) {
				t.Fatal("snapshot differs")
			}
		}
	}
	got, _ := io.ReadAll(s.snapshot(s.size).reader())
	if !bytes.Equal(got, want.Bytes()) || len(got) != segSize {
		t.Fatalf("read %d bytes, want %d equal bytes", len(got), segSize)
	}
	if s.end() != LSN(4*segSize) {
		t.Fatalf("end %v", s.end())
	}
	s.release()
}

func TestParseLSN(t *testing.T) {
	for in, want := range map[string]LSN{"0/0": 0, "16/B374D848": 0x16B374D848, "FFFFFFFF/FFFFFFFF": ^LSN(0)} {
		got, err := ParseLSN(in)
		if err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0", "0/", "/0", "0/0x", "1/2/3", "123456789/0", "G/0", "0/1 "} {
		if _, err := ParseLSN(in); err == nil {
			t.Errorf("ParseLSN(%q) accepted", in)
		}
	}
}
