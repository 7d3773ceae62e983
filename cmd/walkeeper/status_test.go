package main

import (
	"testing"
	"time"
)

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"":      0,
		"26h":   26 * time.Hour,
		"10m":   10 * time.Minute,
		"1d":    24 * time.Hour,
		"2d12h": 60 * time.Hour,
		" 90s ": 90 * time.Second,
		"1ms":   time.Millisecond,
	} {
		if got, err := parseAge(in); err != nil || got != want {
			t.Errorf("parseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"yesterday", "-5m", "0s", "d", "1.5d", "1dd", "10"} {
		if _, err := parseAge(bad); err == nil {
			t.Errorf("parseAge(%q) accepted", bad)
		}
	}
}

func TestParseFree(t *testing.T) {
	if p, b, err := parseFree("10%"); err != nil || p != 10 || b != 0 {
		t.Errorf("10%%: %v %v %v", p, b, err)
	}
	if p, b, err := parseFree("20GB"); err != nil || p != 0 || b != 20<<30 {
		t.Errorf("20GB: %v %v %v", p, b, err)
	}
	for _, bad := range []string{"110%", "x%", "lots"} {
		if _, _, err := parseFree(bad); err == nil {
			t.Errorf("parseFree(%q) accepted", bad)
		}
	}
}
