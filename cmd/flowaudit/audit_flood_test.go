package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// The flood thresholds reach the engine through --flood-peers,
// --flood-syns and --flood-rate, shared by audit and watch.
func TestAuditFloodFlags(t *testing.T) {
	flows := cleanFlows()
	start := time.Date(2026, 11, 26, 8, 1, 0, 0, time.UTC)
	// 300 peers, 10 half-open SYNs each, within 30 s, to the SSH port.
	for i := 0; i < 300; i++ {
		f := tflow(snapshot.Inbound, snapshot.TCP, 22, fmt.Sprintf("198.51.100.%d", i%250), snapshot.Evidence{SynIn: 10, SynAckOut: 10})
		if i >= 250 {
			f.Peer = netip.MustParseAddr(fmt.Sprintf("198.51.101.%d", i-250))
		}
		f.FirstSeen = start.Add(time.Duration(i) * 100 * time.Millisecond)
		f.LastSeen = f.FirstSeen
		flows = append(flows, f)
	}
	snap := writeSnap(t, flows...)
	for _, tc := range []struct {
		name  string
		args  []string
		flood bool
	}{
		{"defaults: 3000 half-open SYNs are no flood", nil, false},
		{"--flood-syns 2000", []string{"--flood-syns", "2000"}, true},
		{"--flood-syns 2000 --flood-rate 500", []string{"--flood-syns", "2000", "--flood-rate", "500"}, false},
		{"--flood-peers 300", []string{"--flood-peers", "300"}, true},
		{"--flood-peers 302", []string{"--flood-peers", "302"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errb := runCLI(t, auditArgs(snap, tc.args...)...)
			if code != exitFindings {
				t.Fatalf("exit %d\n%s\n%s", code, out, errb)
			}
			if got := strings.Contains(out, "flood-suspected"); got != tc.flood {
				t.Errorf("flood-suspected reported: %v, want %v\n%s", got, tc.flood, out)
			}
			// Without a flood the attempts are out-of-zone SSH logins.
			if got := strings.Contains(out, "peer-out-of-zone"); got == tc.flood {
				t.Errorf("peer-out-of-zone reported: %v with flood %v\n%s", got, tc.flood, out)
			}
		})
	}
	code, out, _ := runCLI(t, "audit", "--help")
	if code != exitClean || !strings.Contains(out, "--flood-peers") || !strings.Contains(out, "--flood-rate") {
		t.Errorf("help lacks the flood flags:\n%s", out)
	}
}
