package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/basebackup"

	"github.com/walkeeper/walkeeper/internal/units"
)

var jsonFlag = &cli.BoolFlag{
	Name:  "json",
	Usage: "print JSON instead of a table",
}

func init() {
	commands = append(commands, &cli.Command{
		Name:  "list",
		Usage: "list the backups in the repository, oldest first",
		Description: `Shows every backup: ID, start time, duration, start and stop LSN, timeline,
original and stored size, and status. A backup without backup.json (killed
or failed before it finished) is listed as incomplete; restore never uses it.
Order is by start time, not by ID. TYPE is full or incremental; an
incremental backup names its PARENT (the backup it was taken against) and
needs its whole chain (list --json: "chain") to be restored.`,
		Flags:  []cli.Flag{jsonFlag},
		Action: listAction,
	})
}

func listAction(c *cli.Context) error {
	repo, err := openRepository(c)
	if err != nil {
		return err
	}
	infos, err := basebackup.List(c.Context, repo)
	if err != nil {
		return err
	}
	if c.Bool(jsonFlag.Name) {
		type row struct {
			ID         string    `json:"id"`
			Status     string    `json:"status"`
			StartTime  time.Time `json:"start_time"`
			Duration   float64   `json:"duration_seconds,omitempty"`
			StartLSN   string    `json:"start_lsn,omitempty"`
			StopLSN    string    `json:"stop_lsn,omitempty"`
			Timeline   uint32    `json:"timeline,omitempty"`
			Size       int64     `json:"size,omitempty"`
			StoredSize int64     `json:"stored_size"`
			WAL        string    `json:"wal,omitempty"`
			Standby    bool      `json:"from_standby,omitempty"`
			Label      string    `json:"label,omitempty"`
			Kind       string    `json:"kind,omitempty"`
			Parent     string    `json:"parent,omitempty"`
			Chain      []string  `json:"chain,omitempty"`
		}
		rows := []row{}
		for _, i := range infos {
			r := row{ID: i.ID, Status: "incomplete", StartTime: i.StartTime(), StoredSize: i.StoredSize}
			if i.Damaged != "" {
				r.Status = "damaged"
			}
			if m := i.Meta; m != nil {
				r.Status, r.Duration, r.StartLSN, r.StopLSN, r.Timeline = "complete", m.StopTime.Sub(m.StartTime).Seconds(), m.StartLSN, m.StopLSN, m.Timeline
				r.Size, r.StoredSize, r.WAL, r.Standby, r.Label = m.Size, m.StoredSize, m.WAL, m.FromStandby, m.Label
				r.Kind, r.Parent, r.Chain = m.KindName(), m.Parent, m.Chain
			}
			rows = append(rows, r)
		}
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTART\tDURATION\tSTART LSN\tSTOP LSN\tTLI\tSIZE\tSTORED\tTYPE\tPARENT\tSTATUS")
	for _, i := range infos {
		if m := i.Meta; m != nil {
			parent := m.Parent
			if parent == "" {
				parent = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\tcomplete\n", i.ID, m.StartTime.Format(time.RFC3339),
				m.StopTime.Sub(m.StartTime).Round(time.Second), m.StartLSN, m.StopLSN, m.Timeline,
				humanSize(m.Size), humanSize(m.StoredSize), m.KindName(), parent)
			continue
		}
		status := "incomplete"
		if i.Damaged != "" {
			status = "damaged backup.json (see walkeeper verify)"
		}
		fmt.Fprintf(w, "%s\t%s\t-\t-\t-\t-\t-\t%s\t-\t-\t%s\n", i.ID, i.StartTime().Format(time.RFC3339), humanSize(i.StoredSize), status)
	}
	return w.Flush()
}

func humanSize(n int64) string { return units.FormatSize(n) }
