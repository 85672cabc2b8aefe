package audit

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

var lt0 = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)

func lflow(dir snapshot.Direction, p snapshot.Proto, port uint16, peer string, ev snapshot.Evidence, pin, pout uint64) snapshot.Flow {
	return snapshot.Flow{Interface: "eth0", Direction: dir, Proto: p, Port: port, Peer: netip.MustParseAddr(peer),
		PacketsIn: pin, PacketsOut: pout, FirstSeen: lt0.Add(time.Minute), LastSeen: lt0.Add(2 * time.Minute), Evidence: ev}
}

// folded makes f an entry folded to prefix (its peers not kept one by one).
func folded(f snapshot.Flow, prefix string) snapshot.Flow {
	f.Peer, f.PeerPrefix, f.Peers = netip.Addr{}, netip.MustParsePrefix(prefix), 40
	return f
}

// TestLearnRules: what is learned and how peers are widened: a learned
// node's address to its role (written once, as the receiver's rule), a
// site zone (for a folded entry: the zone holding its prefix), an exact
// address or (--aggregate) its /24; scans, ICMP errors, neighbour
// discovery and loopback listeners are not learned; a listener without
// traffic is optional with any peer; the file validates against the
// published schema and cites its snapshots as observed documents.
func TestLearnRules(t *testing.T) {
	open := snapshot.Evidence{SynIn: 1, SynAckOut: 1}
	openOut := snapshot.Evidence{SynOut: 1, SynAckIn: 1}
	mgr := &snapshot.Snapshot{Version: 2, Hostname: "mgr-1", Start: lt0, End: lt0.Add(10 * time.Minute),
		Interfaces: []snapshot.Interface{{Name: "eth0", Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}},
		Listening: []snapshot.Socket{{Proto: snapshot.TCP, Addr: netip.MustParseAddr("0.0.0.0"), Port: 9090},
			{Proto: snapshot.TCP, Addr: netip.MustParseAddr("127.0.0.1"), Port: 6000}},
		Flows: []snapshot.Flow{
			lflow(snapshot.Inbound, snapshot.TCP, 22, "198.51.100.7", open, 10, 10),                        // ADMIN_IP
			lflow(snapshot.Inbound, snapshot.TCP, 3389, "203.0.113.66", snapshot.Evidence{SynIn: 1}, 1, 0), // a scan
			lflow(snapshot.Outbound, snapshot.TCP, 443, "203.0.113.80", openOut, 10, 10),
			lflow(snapshot.Outbound, snapshot.TCP, 443, "203.0.113.81", openOut, 10, 10),
			lflow(snapshot.Unknown, snapshot.ICMP, 3<<8|3, "203.0.113.80", snapshot.Evidence{}, 1, 0),
			lflow(snapshot.Inbound, snapshot.ICMPv6, 135<<8, "fe80::1", snapshot.Evidence{}, 2, 2),               // neighbour discovery
			folded(lflow(snapshot.Inbound, snapshot.TCP, 8443, "198.51.100.1", open, 5, 5), "198.51.100.128/25"), // ADMIN_IP
		}}
	agent := &snapshot.Snapshot{Version: 2, Start: lt0, End: lt0.Add(10 * time.Minute),
		Flows: []snapshot.Flow{lflow(snapshot.Outbound, snapshot.TCP, 9000, "192.0.2.10", openOut, 10, 10)}}
	site, err := catalog.ParseSite("site.yaml", []byte("zones:\n  ADMIN_IP: 198.51.100.0/24\n  UNUSED_NET: 10.0.0.0/8\n"))
	if err != nil {
		t.Fatal(err)
	}
	nodes := func() []LearnNode {
		return []LearnNode{{Name: "mgr-1", Role: "manager", Source: "mgr.json", Snapshot: mgr},
			{Name: "agent-1", Role: "agent", Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.30")}, Source: "agent.json", Snapshot: agent}}
	}
	data, err := Learn(nodes(), LearnOptions{Product: "mylab", Site: site})
	if err != nil {
		t.Fatal(err)
	}
	y := string(data)
	t.Log(y)
	for _, s := range []string{
		"source: observed",
		"  - id: in-tcp-22-zone-admin-ip\n    role: manager\n    direction: inbound\n    proto: tcp\n    ports: 22\n    peer: {zone: \"ADMIN_IP\"}\n    requirement: required\n",
		"  - id: in-tcp-9000-role-agent\n    role: manager\n    direction: inbound\n    proto: tcp\n    ports: 9000\n    peer: {role: \"agent\"}\n    requirement: required\n",
		"  - id: out-tcp-443-cidr-203-0-113-80-32\n",
		"  - id: in-tcp-8443-zone-admin-ip\n",
		"  - id: in-tcp-9090-any\n    role: manager\n    direction: inbound\n    proto: tcp\n    ports: 9090\n    peer: {any: true}\n    requirement: optional\n",
		"citation: {doc: observed-mgr-1, section: \"window 2026-11-26T08:00:00Z – 2026-11-26T08:10:00Z (10m0s)\"",
		"  - id: UNUSED_NET\n",
	} {
		if !strings.Contains(y, s) {
			t.Errorf("learned catalog lacks %q", s)
		}
	}
	for _, s := range []string{"3389", "6000", "icmp", "out-tcp-9000"} {
		if strings.Contains(y, s) {
			t.Errorf("learned catalog has %q", s)
		}
	}
	if err := validateCatalogYAML(t, data); err != nil {
		t.Errorf("learned catalog does not validate against the schema: %v", err)
	}
	agg, err := Learn(nodes(), LearnOptions{Product: "mylab", Site: site, Aggregate: true})
	if err != nil {
		t.Fatal(err)
	}
	if a := string(agg); !strings.Contains(a, "  - id: out-tcp-443-cidr-203-0-113-0-24\n") || strings.Contains(a, "203-0-113-81") {
		t.Errorf("--aggregate does not widen to /24:\n%s", a)
	}
	if _, err := Learn(nodes(), LearnOptions{Product: "My Lab"}); err == nil {
		t.Error("a bad product ID was accepted")
	}
}
