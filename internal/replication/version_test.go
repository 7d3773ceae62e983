package replication

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestParseMajor(t *testing.T) {
	for in, want := range map[string]int{
		"15.10 (Debian 15.10-1.pgdg120+1)": 15,
		"16.14":                            16,
		"17.10":                            17,
		"18.4":                             18,
		"18beta1":                          18,
		"19devel":                          19,
		"14.12":                            14,
		"9.6.24":                           9,
	} {
		if got, err := ParseMajor(in); err != nil || got != want {
			t.Errorf("ParseMajor(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "devel", "x15"} {
		if _, err := ParseMajor(in); err == nil {
			t.Errorf("ParseMajor(%q): no error", in)
		}
	}
}

func TestSupport(t *testing.T) {
	if got := TestedList(); got != "15, 16, 17, 18" {
		t.Errorf("TestedList() = %q", got)
	}
	for _, tc := range []struct {
		version string
		major   int
		support Support
	}{
		{"14.12", 14, Unsupported},
		{"9.6.24", 9, Unsupported},
		{"15.10", 15, Tested},
		{"16.14", 16, Tested},
		{"17.10", 17, Tested},
		{"18.4", 18, Tested},
		{"19beta1", 19, Untested},
	} {
		if got := SupportOf(tc.major); got != tc.support {
			t.Errorf("SupportOf(%d) = %v, want %v", tc.major, got, tc.support)
		}
		err := CheckVersion(tc.version, tc.major)
		if (err != nil) != (tc.support == Unsupported) {
			t.Errorf("CheckVersion(%s) = %v", tc.version, err)
		}
		if err != nil && (!errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), "needs PostgreSQL 15 or newer") || !strings.Contains(err.Error(), tc.version)) {
			t.Errorf("CheckVersion(%s) = %q: want a permanent refusal naming the version", tc.version, err)
		}
		w := UntestedWarning(tc.version, tc.major)
		if (w != "") != (tc.support == Untested) {
			t.Errorf("UntestedWarning(%s) = %q", tc.version, w)
		}
		if w != "" && (!strings.Contains(w, tc.version) || !strings.Contains(w, "15, 16, 17, 18")) {
			t.Errorf("UntestedWarning(%s) = %q: want the version and the tested ones", tc.version, w)
		}
	}
}

func TestWarnUntestedOnce(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	for range 3 {
		WarnUntested(log, System{ServerVersion: "27.1-test", Major: 27})
		WarnUntested(log, System{ServerVersion: "18.4", Major: 18})
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 || !strings.Contains(buf.String(), "27.1-test") {
		t.Errorf("want one warning line for 27.1-test, got:\n%s", buf.String())
	}
}
