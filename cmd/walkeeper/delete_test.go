package main

import (
	"testing"
	"time"
)

func TestParseBefore(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2025-01-02T03:04:05Z", time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
		{"2025-01-02T03:04:05+01:00", time.Date(2025, 1, 2, 2, 4, 5, 0, time.UTC)},
		{"2025-01-02 03:04:05", time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
		{"2025-01-02", time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC)},
		{"7d", now.Add(-7 * 24 * time.Hour)},
		{"168h", now.Add(-168 * time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
	} {
		got, err := parseBefore(tc.in, now)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseBefore(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-7d", "-1h", "2025-13-01", "7x"} {
		if _, err := parseBefore(bad, now); err == nil {
			t.Errorf("parseBefore(%q): no error", bad)
		}
	}
}
