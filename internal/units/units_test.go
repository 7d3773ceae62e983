package units

import "testing"

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 512: "512B", 1536: "1.5kB", 16 << 20: "16.0MB", 3 << 30: "3.0GB", -2048: "-2.0kB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
	for s, want := range map[string]int64{"16MB": 16 << 20, "512kB": 512 << 10, "1GiB": 1 << 30, "100": 100} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
}
