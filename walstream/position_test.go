package walstream

import "testing"

func TestChooseStart(t *testing.T) {
	const seg = 16 << 20
	hist := []historyEntry{{1, 0x5000100}, {2, 0x9000000}}
	for _, tc := range []struct {
		name    string
		r       repoEnd
		srvTLI  uint32
		srvPos  LSN
		history []historyEntry
		slotTLI uint32
		slotLSN LSN
		want    startPoint
		wantErr bool
	}{
		{"empty repo, no slot position", repoEnd{}, 1, 0x3123456, nil, 0, 0, startPoint{1, 0x3000000, ""}, false},
		{"empty repo, slot", repoEnd{}, 1, 0x9000000, nil, 1, 0x4000010, startPoint{1, 0x4000000, ""}, false},
		{"repo complete segment", repoEnd{found: true, tli: 1, end: 0x5000000}, 1, 0x7000000, nil, 1, 0x2000000, startPoint{1, 0x5000000, ""}, false},
		{"repo partial", repoEnd{found: true, tli: 1, end: 0x5000123}, 1, 0x7000000, nil, 0, 0, startPoint{1, 0x5000000, ""}, false},
		{"repo ahead of server", repoEnd{found: true, tli: 1, end: 0x8000000}, 1, 0x7000000, nil, 0, 0, startPoint{}, true},
		{"ancestor timeline before switch", repoEnd{found: true, tli: 1, end: 0x4000000}, 3, 0xA000000, hist, 0, 0, startPoint{1, 0x4000000, ""}, false},
		{"ancestor exactly at switch", repoEnd{found: true, tli: 2, end: 0x9000000}, 3, 0xA000000, hist, 0, 0, startPoint{3, 0x9000000, ""}, false},
		{"ancestor past switch: other history, use slot", repoEnd{found: true, tli: 1, end: 0x6000000}, 3, 0xA000000, hist, 3, 0x9800000, startPoint{3, 0x9000000, ""}, false},
		{"repo on unknown newer timeline: server position", repoEnd{found: true, tli: 4, end: 0x6000000}, 3, 0xA000000, hist, 0, 0, startPoint{3, 0xA000000, ""}, false},
	} {
		got, err := chooseStart(tc.r, tc.srvTLI, tc.srvPos, tc.history, tc.slotTLI, tc.slotLSN, seg)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err = %v", tc.name, err)
			continue
		}
		if got.tli != tc.want.tli || got.lsn != tc.want.lsn {
			t.Errorf("%s: got tli %d %s, want tli %d %s", tc.name, got.tli, got.lsn, tc.want.tli, tc.want.lsn)
		}
	}
}

func TestParseHistory(t *testing.T) {
	h, err := parseHistory([]byte("1\t0/5000100\tno recovery target specified\n\n2\t0/9000000\tat restore point \"x\"\n"))
	if err != nil || len(h) != 2 || h[0] != (historyEntry{1, 0x5000100}) || h[1] != (historyEntry{2, 0x9000000}) {
		t.Fatalf("got %v, %v", h, err)
	}
	if _, err := parseHistory([]byte("x\ty\n")); err == nil {
		t.Fatal("garbage accepted")
	}
}
