package basebackup

import (
	"strings"
	"testing"
)

// TestBrokenChainIsNoParent: a backup whose chain has a member that is
// missing or incomplete cannot be a parent (an incremental on it could not
// be restored); an intact chain can.
func TestBrokenChainIsNoParent(t *testing.T) {
	full := &Meta{ID: "A"}
	inc1 := &Meta{ID: "B", Parent: "A", Chain: []string{"A"}}
	inc2 := &Meta{ID: "C", Parent: "B", Chain: []string{"A", "B"}}
	all := []Info{{ID: "A", Complete: true, Meta: full}, {ID: "B", Complete: true, Meta: inc1}, {ID: "C", Complete: true, Meta: inc2}}
	if why := brokenChain(all, inc2); why != "" {
		t.Errorf("intact chain refused: %s", why)
	}
	if why := brokenChain(all, full); why != "" {
		t.Errorf("a full backup refused: %s", why)
	}
	missing := []Info{all[0], all[2]}
	if why := brokenChain(missing, inc2); !strings.Contains(why, "backup B it depends on is missing or incomplete") {
		t.Errorf("missing middle member: %q", why)
	}
	incomplete := []Info{all[0], {ID: "B"}, all[2]}
	if why := brokenChain(incomplete, inc2); !strings.Contains(why, "backup B") {
		t.Errorf("incomplete middle member: %q", why)
	}
}
