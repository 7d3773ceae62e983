package walstream

import (
	"testing"

	"github.com/walkeeper/walkeeper/storage/archive"
)

// chooseStart's cases; where the archive continues along a path is
// archive.Index.ContinueAt's job and tested there (the unclean failover
// included).
func TestChooseStart(t *testing.T) {
	const seg = 16 << 20
	for _, tc := range []struct {
		name    string
		c       archive.Continue
		srvTLI  uint32
		srvPos  LSN
		slotTLI uint32
		slotLSN LSN
		want    startPoint
		wantErr bool
	}{
		{"empty repo, no slot position", archive.Continue{}, 1, 0x3123456, 0, 0, startPoint{tli: 1, lsn: 0x3000000}, false},
		{"empty repo, slot", archive.Continue{}, 1, 0x9000000, 1, 0x4000010, startPoint{tli: 1, lsn: 0x4000000}, false},
		{"archive continues", archive.Continue{Found: true, TLI: 1, Seg: 5}, 1, 0x7000000, 1, 0x2000000, startPoint{tli: 1, lsn: 0x5000000}, false},
		{"archive ahead of server", archive.Continue{Found: true, TLI: 1, Seg: 8}, 1, 0x7000000, 0, 0, startPoint{}, true},
		// After an unclean failover the archive continues on the new
		// timeline at the segment holding the switch point, not at the
		// new slot's restart_lsn.
		{"after a failover", archive.Continue{Found: true, TLI: 2, Seg: 4}, 2, 0x9000000, 2, 0x8800000, startPoint{tli: 2, lsn: 0x4000000}, false},
		{"ancestor timeline", archive.Continue{Found: true, TLI: 1, Seg: 3}, 3, 0xA000000, 0, 0, startPoint{tli: 1, lsn: 0x3000000}, false},
		{"archive ends before the newest backup: slot", archive.Continue{Newest: archive.End{Found: true, TLI: 1, Seg: 2}}, 1, 0xA000000, 1, 0x9800000, startPoint{tli: 1, lsn: 0x9000000}, false},
	} {
		got, err := chooseStart(tc.c, tc.srvTLI, tc.srvPos, tc.slotTLI, tc.slotLSN, seg)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err = %v", tc.name, err)
			continue
		}
		if got.tli != tc.want.tli || got.lsn != tc.want.lsn {
			t.Errorf("%s: got tli %d %s, want tli %d %s", tc.name, got.tli, got.lsn, tc.want.tli, tc.want.lsn)
		}
	}
	sp, _ := chooseStart(archive.Continue{Found: true, TLI: 2, Seg: 4, HasNext: true, HoleLast: 8, HoleLastTLI: 2}, 2, 0xF000000, 0, 0, seg)
	if sp.hole != "segments 000000020000000000000004 .. 000000020000000000000008" {
		t.Errorf("hole %q", sp.hole)
	}
}
