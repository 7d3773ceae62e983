package restore

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/walkeeper/walkeeper/internal/replication"
)

// Recovery is what restore writes for PostgreSQL's startup: a signal file
// and settings appended to postgresql.auto.conf.
type Recovery struct {
	// RestoreCommand fetches archived WAL (this binary's wal-fetch).
	RestoreCommand string
	// Point in time: at most one target kind.
	TargetTime, TargetLSN, TargetXID, TargetName string
	// TargetTimeline: "current", "latest" or a number ("" keeps
	// PostgreSQL's default, latest).
	TargetTimeline string
	// TargetAction: promote, pause or shutdown ("" keeps PostgreSQL's
	// default, pause, when a target is set).
	TargetAction string
	// AsReplica writes standby.signal instead of recovery.signal.
	AsReplica       bool
	PrimaryConninfo string
	PrimarySlot     string
	// Port, when not 0, sets the port.
	Port int
}

var xidRE = regexp.MustCompile(`^[0-9]+$`)

// Validate checks the settings before anything is written.
func (r Recovery) Validate() error {
	n := 0
	for _, v := range []string{r.TargetTime, r.TargetLSN, r.TargetXID, r.TargetName} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("give at most one of --target-time, --target-lsn, --target-xid, --target-name")
	}
	if r.AsReplica && n > 0 {
		return fmt.Errorf("--as-replica follows the primary: it cannot be combined with a recovery target")
	}
	if r.TargetLSN != "" {
		if _, err := replication.ParseLSN(r.TargetLSN); err != nil {
			return fmt.Errorf("--target-lsn: %w", err)
		}
	}
	if r.TargetXID != "" && !xidRE.MatchString(r.TargetXID) {
		return fmt.Errorf("--target-xid %q: give a transaction ID number", r.TargetXID)
	}
	if r.TargetTime != "" {
		if _, err := ParseTargetTime(r.TargetTime); err != nil {
			return err
		}
	}
	switch r.TargetAction {
	case "", "promote", "pause", "shutdown":
	default:
		return fmt.Errorf("--target-action %q: use promote, pause or shutdown", r.TargetAction)
	}
	if t := r.TargetTimeline; t != "" && t != "current" && t != "latest" {
		if _, err := strconv.ParseUint(t, 10, 32); err != nil {
			return fmt.Errorf("--target-timeline %q: use current, latest or a timeline number", t)
		}
	}
	if r.Port < 0 || r.Port > 65535 {
		return fmt.Errorf("--port %d is not a port", r.Port)
	}
	return nil
}

// ParseTargetTime accepts the timestamps PostgreSQL accepts most often,
// with their time zone: RFC 3339 and "2006-01-02 15:04:05[.fraction]±zone"
// (or " UTC"). The zone is required: restore compares the time with the
// backups' ends to choose one, while PostgreSQL would read a time without
// a zone in the restored server's TimeZone, which restore cannot know.
func ParseTargetTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z0700",
		"2006-01-02 15:04:05.999999999Z07"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	for _, suffix := range []string{" UTC", " GMT"} {
		if rest, ok := strings.CutSuffix(s, suffix); ok {
			if t, err := time.Parse("2006-01-02 15:04:05.999999999", rest); err == nil {
				return t, nil
			}
		}
	}
	if _, err := time.Parse("2006-01-02 15:04:05.999999999", s); err == nil {
		return time.Time{}, fmt.Errorf("--target-time %q has no time zone: add one, such as %s+00 (PostgreSQL would read it in the restored server's TimeZone)", s, s)
	}
	return time.Time{}, fmt.Errorf("--target-time %q: use a timestamp with a numeric time zone, such as 2026-11-26 14:30:00+00 or 2026-11-26T14:30:00Z", s)
}

// confQuote quotes a value for postgresql.conf.
func confQuote(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }

// write creates the signal file and appends the settings.
func (r Recovery) write(dd *dataDir, dir string) error {
	signal := "recovery.signal"
	if r.AsReplica {
		signal = "standby.signal"
	}
	if err := dd.writeFile(filepath.Join(dir, signal), nil); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n# Added by walkeeper restore at %s\n", time.Now().UTC().Format(time.RFC3339))
	set := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s = %s\n", k, confQuote(v))
		}
	}
	set("restore_command", r.RestoreCommand)
	set("recovery_target_time", r.TargetTime)
	set("recovery_target_lsn", r.TargetLSN)
	set("recovery_target_xid", r.TargetXID)
	set("recovery_target_name", r.TargetName)
	set("recovery_target_timeline", r.TargetTimeline)
	set("recovery_target_action", r.TargetAction)
	set("primary_conninfo", r.PrimaryConninfo)
	set("primary_slot_name", r.PrimarySlot)
	if r.Port != 0 {
		fmt.Fprintf(&b, "port = %d\n", r.Port)
	}
	if !r.AsReplica {
		// The copy has the primary's system identifier and archive
		// settings: once promoted it would pass wal-push's checks and
		// store its own timeline in the repository it came from, which
		// restores, verify and the stream would then follow.
		b.WriteString("# A restored copy must not archive into the repository it was restored from.\n" +
			"# To archive it, point archive_command at a NEW repository, then archive_mode = on.\n")
		set("archive_mode", "off")
	}
	p := filepath.Join(dir, "postgresql.auto.conf")
	old, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	return dd.writeFile(p, append(old, b.String()...))
}
