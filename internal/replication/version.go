package replication

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
)

// The PostgreSQL majors walkeeper supports (docs/compatibility.md).
// Older servers are refused: BASE_BACKUP's tagged CopyOut stream and
// READ_REPLICATION_SLOT arrived in 15. Newer servers than the newest tested
// one are used with one warning: the replication protocol has stayed
// compatible across majors, but nobody has proven it for them yet.
const (
	// MinMajor is the oldest supported major.
	MinMajor = 15
	// NewestTestedMajor is the newest major the compatibility suite runs on.
	NewestTestedMajor = 18
)

// TestedMajors lists the majors CI proves walkeeper against
// (test/compat_test.go), oldest first.
func TestedMajors() []int {
	var out []int
	for m := MinMajor; m <= NewestTestedMajor; m++ {
		out = append(out, m)
	}
	return out
}

// TestedList is TestedMajors for messages: "15, 16, 17, 18".
func TestedList() string {
	var s []string
	for _, m := range TestedMajors() {
		s = append(s, strconv.Itoa(m))
	}
	return strings.Join(s, ", ")
}

// ParseMajor reads the major from a server_version ("16.4", "18beta1",
// "15.10 (Debian 15.10-1.pgdg120+1)", "19devel").
func ParseMajor(serverVersion string) (int, error) {
	v := strings.TrimSpace(serverVersion)
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	n, err := strconv.Atoi(v[:end])
	if err != nil || n < 10 {
		// 9.6 and older have two-part majors; all of them are refused
		// anyway, but say so rather than "cannot parse".
		if strings.HasPrefix(v, "9.") || strings.HasPrefix(v, "8.") {
			return 9, nil
		}
		return 0, fmt.Errorf("cannot parse server_version %q", serverVersion)
	}
	return n, nil
}

// Support is how walkeeper treats a server major.
type Support int

// Support levels.
const (
	// Tested: a major the compatibility suite runs on.
	Tested Support = iota
	// Untested: newer than NewestTestedMajor; allowed with a warning.
	Untested
	// Unsupported: older than MinMajor; refused.
	Unsupported
)

// SupportOf classifies a major.
func SupportOf(major int) Support {
	switch {
	case major < MinMajor:
		return Unsupported
	case major > NewestTestedMajor:
		return Untested
	}
	return Tested
}

// CheckVersion refuses servers older than MinMajor with a permanent error
// naming the version.
func CheckVersion(serverVersion string, major int) error {
	if SupportOf(major) == Unsupported {
		return Permanentf("PostgreSQL %s is not supported: walkeeper needs PostgreSQL %d or newer (tested: %s)",
			serverVersion, MinMajor, TestedList())
	}
	return nil
}

// UntestedWarning is the one line to log for a server newer than the
// newest tested major, or "" for a tested one.
func UntestedWarning(serverVersion string, major int) string {
	if SupportOf(major) != Untested {
		return ""
	}
	return fmt.Sprintf("PostgreSQL %s is newer than the versions walkeeper is tested on (%s): it should work, but check docs/compatibility.md and report problems",
		serverVersion, TestedList())
}

var warned sync.Map // server_version -> struct{}

// WarnUntested logs UntestedWarning once per process and server version,
// so a stream that reconnects does not repeat it.
func WarnUntested(log *slog.Logger, sys System) {
	msg := UntestedWarning(sys.ServerVersion, sys.Major)
	if msg == "" {
		return
	}
	if _, dup := warned.LoadOrStore(sys.ServerVersion, struct{}{}); dup {
		return
	}
	log.Warn(msg, "server_version", sys.ServerVersion, "tested", TestedList())
}
