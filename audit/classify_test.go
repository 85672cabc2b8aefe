package audit

import (
	"net/netip"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func TestClassify(t *testing.T) {
	m, site := loadTestMatrix(t, "server", nil)
	s := snap(10*60e9,
		flow("in", "tcp", 22, "192.0.2.10", 40, 38, synAck(2)),                                     // documented, in zone
		flow("in", "tcp", 22, "10.1.4.4", 4, 3, synAck(1)),                                         // out of zone
		flow("in", "tcp", 9000, "fd00:1::7", 12, 11, synAck(1)),                                    // documented, IPv6 zone
		flow("in", "udp", 514, "10.2.0.9", 500, 0, snapshot.Evidence{}),                            // one-way, unanswered
		flow("in", "tcp", 6379, "10.1.4.4", 1, 1, snapshot.Evidence{SynIn: 1, RstOut: 1}),          // undocumented, closed
		flow("out", "tcp", 443, "203.0.113.80", 30, 25, snapshot.Evidence{SynOut: 1, SynAckIn: 1}), // dns peer, site binds no host: unverified
		flow("?", "icmpv6", 135<<8, "fe80::1", 3, 3, snapshot.Evidence{}),                          // infrastructure
	)
	frag := flow("?", "udp", 0, "10.2.0.9", 2, 0, snapshot.Evidence{})
	frag.Fragment = true
	s.Flows = append(s.Flows, frag)

	got := Classify(s, m, site)
	want := []struct {
		kind  FlowKind
		rule  string
		state string
	}{
		{FlowDocumented, "t1.server.ssh", StateOpen},
		{FlowOutOfZone, "t1.server.ssh", StateOpen},
		{FlowDocumented, "t1.server.agent", StateOpen},
		{FlowDocumented, "t1.server.syslog", StateUnanswered},
		{FlowUndocumented, "", StateClosed},
		{FlowUnverified, "t1.server.updates", StateOpen},
		{FlowInfrastructure, "", StateUnanswered},
		{FlowUnclassified, "", StateUnanswered},
	}
	if len(got) != len(want) {
		t.Fatalf("%d classes, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		rule := ""
		if len(g.Rules) > 0 {
			rule = g.Rules[0].ID
		}
		if g.Kind != w.kind || rule != w.rule || g.State != w.state || g.Flow != &s.Flows[i] {
			t.Errorf("flow %d (%s %s/%d %s): got %s %q %s, want %s %q %s", i, g.Flow.Direction, g.Flow.Proto, g.Flow.Port, g.Flow.Peer,
				g.Kind, rule, g.State, w.kind, w.rule, w.state)
		}
	}

	// The engine agrees: what Classify calls documented is "seen" in the
	// report's rule status, the out-of-zone peer is a finding.
	rep, err := Run(s, Options{Matrix: m, Site: site})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]string{}
	for _, r := range rep.Rules {
		status[r.Rule.ID] = r.Status
	}
	for _, id := range []string{"t1.server.ssh", "t1.server.agent", "t1.server.syslog"} {
		if status[id] != StatusSeen {
			t.Errorf("rule %s: report status %q, Classify says documented", id, status[id])
		}
	}
	if status["t1.server.updates"] != StatusUnverified {
		t.Errorf("updates: status %q, want unverified", status["t1.server.updates"])
	}

	// Without a matrix every auditable flow is undocumented.
	for i, c := range Classify(s, nil, nil) {
		if c.Kind != FlowUndocumented && c.Kind != FlowInfrastructure && c.Kind != FlowUnclassified {
			t.Errorf("no matrix, flow %d: %s", i, c.Kind)
		}
	}
}

func TestSuspectedScanners(t *testing.T) {
	m, site := loadTestMatrix(t, "server", nil)
	var flows []snapshot.Flow
	for p := uint16(1); p <= 12; p++ {
		flows = append(flows, flow("in", "tcp", 1000+p, "203.0.113.66", 1, 1, snapshot.Evidence{SynIn: 1, RstOut: 1}))
	}
	flows = append(flows, flow("in", "tcp", 22, "192.0.2.10", 40, 38, synAck(2)))
	rep, err := Run(snap(10*60e9, flows...), Options{Matrix: m, Site: site})
	if err != nil {
		t.Fatal(err)
	}
	sc := SuspectedScanners(rep)
	if len(sc) != 1 || !sc[netip.MustParseAddr("203.0.113.66")] {
		t.Errorf("scanners %v", sc)
	}
}
