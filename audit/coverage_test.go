package audit

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Tests of what a snapshot version 2 adds: overflow entries (packets that
// lost their peer), folded prefixes, floods, interruptions and checkpoints.

// addrs4 returns n distinct IPv4 addresses counting up from base.
func addrs4(base string, n int) []netip.Addr {
	b := netip.MustParseAddr(base).As4()
	v := binary.BigEndian.Uint32(b[:])
	out := make([]netip.Addr, n)
	for i := range out {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], v+uint32(i))
		out[i] = netip.AddrFrom4(a)
	}
	return out
}

func sketchOf(as []netip.Addr) *snapshot.PeerSketch {
	var s snapshot.PeerSketch
	for _, a := range as {
		s.Add(a)
	}
	return &s
}

// entry builds an overflow entry (prefix "") or a folded flow of the
// given peers.
func entry(dir, proto string, port uint16, prefix string, peers []netip.Addr, pin, pout uint64, ev snapshot.Evidence) snapshot.Flow {
	f := flow(dir, proto, port, "192.0.2.1", pin, pout, ev)
	f.Peer = netip.Addr{}
	if prefix != "" {
		f.PeerPrefix = netip.MustParsePrefix(prefix)
	}
	f.PeerSketch = sketchOf(peers)
	f.Peers = f.PeerSketch.Estimate()
	return f
}

// v2 finishes a snapshot with overflow entries and consistent counters:
// every overflow packet is one whose per-peer insert failed.
func v2(s *snapshot.Snapshot, overflow ...snapshot.Flow) *snapshot.Snapshot {
	s.Overflow = overflow
	for _, f := range overflow {
		s.Stats.FlowInsertFailed += f.Packets()
	}
	if len(overflow) > 0 {
		s.Stats.FlowEntries = s.Stats.FlowCapacity
		s.Stats.OverflowCapacity = 16384
	}
	s.Sort()
	return s
}

func runV2(t *testing.T, s *snapshot.Snapshot, o Options) *Report {
	t.Helper()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	m, site := loadTestMatrix(t, "server", nil)
	o.Matrix, o.Site = m, site
	o.Now = func() time.Time { return t0 }
	r, err := Run(s, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Findings {
		t.Logf("%s %s: %s", f.Severity, f.ID, f.Summary)
	}
	return r
}

func findingByID(r *Report, id string) *Finding {
	for i := range r.Findings {
		if r.Findings[i].ID == id {
			return &r.Findings[i]
		}
	}
	return nil
}

func hasKind(r *Report, k Kind) []string {
	var ids []string
	for _, f := range r.Findings {
		if f.Kind == k {
			ids = append(ids, f.ID)
		}
	}
	return ids
}

func without(drop uint16) []snapshot.Flow {
	var out []snapshot.Flow
	for _, f := range serverBaseline() {
		if f.Port != drop {
			out = append(out, f)
		}
	}
	return out
}

func TestOverflowRequiredSeen(t *testing.T) {
	agents := addrs4("10.1.0.1", 40)
	s := v2(snap(10*time.Minute, without(9000)...),
		entry("in", "tcp", 9000, "", agents, 400, 380, synAck(40)))
	r := runV2(t, s, Options{})
	if ids := hasKind(r, MissingRequired); ids != nil {
		t.Errorf("required agent port seen in overflow reported missing: %v", ids)
	}
	if st := ruleStatusByID(r)["t1.server.agent"]; st != StatusPeersUnknown {
		t.Errorf("agent status %q, want %q", st, StatusPeersUnknown)
	}
	f := findingByID(r, "audit-incomplete/peers-lost")
	if f == nil || f.Severity != Medium {
		t.Fatalf("no medium audit-incomplete/peers-lost: %+v", f)
	}
	if len(f.Evidence.Services) != 1 || f.Evidence.Services[0].String() != "in tcp/9000" || f.Evidence.Services[0].Packets != 780 ||
		strings.Join(f.Evidence.Services[0].Unchecked, ",") != "zone AGENT_NETWORK" {
		t.Errorf("peers-lost services %+v", f.Evidence.Services)
	}
	if p := f.Evidence.Services[0].Peers; p < 36 || p > 44 {
		t.Errorf("estimated peers %d, want ~40", p)
	}
	for _, want := range []string{"780 packets lost their peer identity", "in tcp/9000 (780 packets, ~", "zone AGENT_NETWORK", "--max-flows"} {
		if !strings.Contains(f.Summary, want) {
			t.Errorf("peers-lost summary lacks %q: %s", want, f.Summary)
		}
	}
	if r.Coverage.Complete || r.Coverage.PeerlessPackets != 780 || len(r.Coverage.PeerlessServices) != 1 {
		t.Errorf("coverage %+v", r.Coverage)
	}
	if ids := hasKind(r, AuditIncomplete); len(ids) != 1 {
		t.Errorf("audit-incomplete findings %v: want only peers-lost (nothing was lost outright)", ids)
	}
	// The rule's evidence says how much traffic had no peer.
	for _, rs := range r.Rules {
		if rs.Rule.ID == "t1.server.agent" && (rs.Evidence.PeersUnknownPackets != 780 || rs.Evidence.Peers != 0) {
			t.Errorf("agent rule evidence %+v", rs.Evidence)
		}
	}
	// The heat-map puts those packets in a column of their own.
	if r.Columns[len(r.Columns)-1] != unknownColumn {
		t.Errorf("columns %v: no peers-unknown column", r.Columns)
	}
}

func TestOverflowVerdicts(t *testing.T) {
	agents := addrs4("10.1.0.1", 3)
	for _, tc := range []struct {
		name string
		ev   snapshot.Evidence
		pout uint64
		kind Kind
		text string
	}{
		{"closed", snapshot.Evidence{SynIn: 6, RstOut: 6}, 6, RequiredPortClosed, "unknown peers (12 packets without peer identity) were refused"},
		{"filtered", snapshot.Evidence{SynIn: 6}, 0, RequiredPortFiltered, "attempts from unknown peers (6 packets without peer identity) got no answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := v2(snap(10*time.Minute, without(9000)...), entry("in", "tcp", 9000, "", agents, 6, tc.pout, tc.ev))
			r := runV2(t, s, Options{})
			f := findingByID(r, fmt.Sprintf("%s/t1.server.agent", tc.kind))
			if f == nil || f.Severity != High {
				t.Fatalf("no high %s from overflow evidence", tc.kind)
			}
			if !strings.Contains(f.Summary, tc.text) {
				t.Errorf("summary %q lacks %q", f.Summary, tc.text)
			}
			if f.Evidence.PeersUnknownPackets == 0 || f.Evidence.Handshake.SynIn != 6 {
				t.Errorf("evidence %+v", f.Evidence)
			}
			if hasKind(r, MissingRequired) != nil {
				t.Error("missing-required next to a closed/filtered verdict")
			}
			if st := ruleStatusByID(r)["t1.server.agent"]; st != tc.name {
				t.Errorf("status %q", st)
			}
		})
	}
	// Overflow evidence joins exact flows: one answered peer keeps the port open.
	s := v2(snap(10*time.Minute, serverBaseline()...), entry("in", "tcp", 9000, "", agents, 6, 6, snapshot.Evidence{SynIn: 6, RstOut: 6}))
	r := runV2(t, s, Options{})
	if ids := append(hasKind(r, RequiredPortClosed), hasKind(r, MissingRequired)...); ids != nil {
		t.Errorf("open port with refused overflow attempts: %v", ids)
	}
	if st := ruleStatusByID(r)["t1.server.agent"]; st != StatusSeen {
		t.Errorf("agent status %q: documented peers were seen", st)
	}
}

func TestOverflowUndocumented(t *testing.T) {
	peers := addrs4("198.51.100.1", 5)
	s := v2(snap(10*time.Minute, serverBaseline()...),
		entry("in", "tcp", 6379, "", peers, 10, 10, synAck(5)),
		entry("in", "tcp", 23, "", peers, 5, 5, snapshot.Evidence{SynIn: 5, RstOut: 5}),
		entry("out", "udp", 53, "", peers, 8, 8, snapshot.Evidence{}))
	r := runV2(t, s, Options{})
	for id, want := range map[string]string{
		"unexpected-open-port/tcp/6379":     "tcp/6379 answers unknown peers (20 packets without peer identity) but the matrix documents",
		"undocumented-flow/inbound/tcp/23":  "unknown peers (10 packets without peer identity) tried undocumented inbound tcp/23",
		"undocumented-flow/outbound/udp/53": "this host connects to udp/53 with unknown peers (16 packets without peer identity)",
	} {
		f := findingByID(r, id)
		if f == nil {
			t.Errorf("no %s for a service seen only in overflow", id)
			continue
		}
		if !strings.HasPrefix(f.Summary, want) {
			t.Errorf("%s: %q, want prefix %q", id, f.Summary, want)
		}
		if f.Evidence.Peers != 0 || f.Evidence.PeersUnknownPackets == 0 || len(f.Evidence.TopPeers) != 0 {
			t.Errorf("%s: evidence %+v", id, f.Evidence)
		}
	}
	// Which services lost their peers, most packets first.
	f := findingByID(r, "audit-incomplete/peers-lost")
	var got []string
	for _, s := range f.Evidence.Services {
		got = append(got, s.String())
	}
	if strings.Join(got, " ") != "in tcp/6379 out udp/53 in tcp/23" {
		t.Errorf("peers-lost services %v", got)
	}
}

func TestFoldedPrefixes(t *testing.T) {
	in7 := addrs4("10.1.7.1", 30)
	out := addrs4("198.51.100.1", 12)
	admin := addrs4("192.0.2.1", 20)                       // 192.0.2.0/24 holds ADMIN_IP 192.0.2.10/32 and others
	s := v2(snap(10*time.Minute, append(without(9000)[1:], // no exact ssh, no exact agents
		entry("in", "tcp", 9000, "10.1.7.0/24", in7, 300, 290, synAck(30)),
		entry("in", "tcp", 22, "198.51.100.0/24", out, 40, 36, synAck(12)),
		entry("in", "tcp", 22, "192.0.2.0/24", admin, 80, 76, synAck(20)),
	)...))
	s.Stats.FoldedFlows, s.Stats.FlowBudget = 62, 1000
	if s.Flows[0].Port == 22 && s.Flows[0].Peer.IsValid() {
		t.Fatal("fixture still has an exact ssh flow")
	}
	r := runV2(t, s, Options{})
	st := ruleStatusByID(r)

	// Inside the zone: seen, no finding.
	if st["t1.server.agent"] != StatusSeen || findingByID(r, "missing-required/t1.server.agent") != nil {
		t.Errorf("agent prefix inside AGENT_NETWORK: status %q", st["t1.server.agent"])
	}
	// Disjoint from the zone: peer-out-of-zone names the prefix.
	f := findingByID(r, "peer-out-of-zone/t1.server.ssh/tcp/22")
	if f == nil || f.Severity != High {
		t.Fatal("no peer-out-of-zone for a folded prefix outside ADMIN_IP")
	}
	if len(f.Evidence.TopPeers) != 1 || f.Evidence.TopPeers[0].Prefix != netip.MustParsePrefix("198.51.100.0/24") || !f.Evidence.PeersEstimated {
		t.Errorf("out-of-zone evidence %+v", f.Evidence)
	}
	if p := f.Evidence.Peers; p < 10 || p > 14 {
		t.Errorf("out-of-zone peers %d, want ~12", p)
	}
	if !strings.HasPrefix(f.Summary, "~") || peersCell(*f) != "198.51.100.0/24" {
		t.Errorf("summary %q cell %q", f.Summary, peersCell(*f))
	}
	// Straddling the zone's edge: peers unknown, no out-of-zone claim for
	// it, no missing-required, reported as incomplete for tcp/22.
	if st["t1.server.ssh"] != StatusPeersUnknown || findingByID(r, "missing-required/t1.server.ssh") != nil {
		t.Errorf("ssh status %q", st["t1.server.ssh"])
	}
	for _, p := range f.Evidence.TopPeers {
		if p.Prefix.Contains(netip.MustParseAddr("192.0.2.10")) {
			t.Errorf("straddling prefix %s claimed out of zone", p.Prefix)
		}
	}
	z := findingByID(r, "audit-incomplete/zones-unchecked")
	if z == nil || z.Severity != Medium || len(z.Evidence.Services) != 1 || z.Evidence.Services[0].String() != "in tcp/22" ||
		strings.Join(z.Evidence.Services[0].Unchecked, ",") != "zone ADMIN_IP" || z.Evidence.Packets != 156 {
		t.Fatalf("zones-unchecked %+v", z)
	}
	fo := findingByID(r, "audit-incomplete/folded")
	if fo == nil || fo.Severity != Low || len(fo.Evidence.Services) != 2 || !strings.Contains(fo.Summary, "62 per-peer flows") ||
		!strings.Contains(fo.Summary, "budget of 1000 flows") || strings.Join(fo.Evidence.Services[0].Folded, ",") != "/24" {
		t.Errorf("folded %+v", fo)
	}
	if ids := hasKind(r, MissingRequired); ids != nil {
		t.Errorf("missing-required %v", ids)
	}
	// Heat-map: inside → the zone, disjoint → other, straddling → unknown.
	for _, row := range r.Observed {
		switch row.Port {
		case "9000":
			if row.Cells["AGENT_NETWORK"] != 590 {
				t.Errorf("agent row %v", row.Cells)
			}
		case "22":
			if row.Cells[otherColumn] != 76 || row.Cells[unknownColumn] != 156 {
				t.Errorf("ssh row %v", row.Cells)
			}
		}
	}

	// Classify agrees, and is safe for every entry without a peer.
	classes := Classify(s, loadMatrixOnly(t), siteOnly(t))
	kinds := map[string]FlowKind{}
	for _, c := range classes {
		if c.Flow.Folded() {
			kinds[c.Flow.PeerPrefix.String()] = c.Kind
		}
	}
	want := map[string]FlowKind{"10.1.7.0/24": FlowDocumented, "198.51.100.0/24": FlowOutOfZone, "192.0.2.0/24": FlowUnverified}
	for p, k := range want {
		if kinds[p] != k {
			t.Errorf("Classify(%s) = %s, want %s", p, kinds[p], k)
		}
	}
	s.Flows = append(s.Flows, entry("in", "tcp", 9000, "", in7, 1, 0, snapshot.Evidence{SynIn: 1}))
	c := Classify(s, loadMatrixOnly(t), siteOnly(t))
	if last := c[len(c)-1]; last.Kind != FlowUnverified || len(last.Rules) != 1 || last.Rules[0].ID != "t1.server.agent" {
		t.Errorf("flow without a peer: %s %v", last.Kind, last.Rules)
	}
}

func loadMatrixOnly(t *testing.T) *catalog.Matrix {
	m, _ := loadTestMatrix(t, "server", nil)
	return m
}

func siteOnly(t *testing.T) *catalog.Site {
	_, s := loadTestMatrix(t, "server", nil)
	return s
}

// halfOpenFlows: n peers from base each sending syns SYNs to port, all
// answered with SYN-ACK and never completed, spread over span.
func halfOpenFlows(port uint16, base string, n int, syns uint64, span time.Duration) []snapshot.Flow {
	out := make([]snapshot.Flow, 0, n)
	for i, a := range addrs4(base, n) {
		f := flow("in", "tcp", port, a.String(), syns, syns, snapshot.Evidence{SynIn: syns, SynAckOut: syns})
		f.FirstSeen = t0.Add(time.Minute + span*time.Duration(i)/time.Duration(n))
		f.LastSeen = f.FirstSeen
		out = append(out, f)
	}
	return out
}

func TestFloodHalfOpenSYNs(t *testing.T) {
	// 200 out-of-zone peers send 100 SYNs each to ssh within 10 s.
	s := snap(10*time.Minute, append(serverBaseline(), halfOpenFlows(22, "198.51.100.1", 200, 100, 10*time.Second)...)...)
	r := runV2(t, s, Options{})
	fl := findingByID(r, "flood-suspected/tcp/22")
	if fl == nil || fl.Severity != Medium {
		t.Fatal("no flood-suspected for 20000 half-open SYNs in 10 s")
	}
	ev := fl.Evidence
	// The service's distinct peers: the 200 flooders and the admin.
	if ev.Flood.Trigger != "half-open-syns" || ev.Flood.HalfOpenSYNs != 20000 || ev.Flood.Peers != 201 || ev.Peers != 201 || ev.PeersEstimated {
		t.Errorf("flood evidence %+v %+v", ev, ev.Flood)
	}
	if ev.Flood.Rate < 1900 || ev.Flood.Rate > 2100 || ev.Flood.RateOf != "half-open SYNs" {
		t.Errorf("rate %v %s, want ~2000 half-open SYNs/s", ev.Flood.Rate, ev.Flood.RateOf)
	}
	if len(ev.TopPeers) != 1 || ev.TopPeers[0].Prefix != netip.MustParsePrefix("198.51.100.0/24") || ev.TopPeers[0].Peers != 200 {
		t.Errorf("top sources %+v", ev.TopPeers)
	}
	for _, want := range []string{"suspected SYN flood on inbound tcp/22", "201 distinct peers", "20000 SYNs never completed", "198.51.100.0/24"} {
		if !strings.Contains(fl.Summary, want) {
			t.Errorf("summary lacks %q: %s", want, fl.Summary)
		}
	}
	// No per-peer noise: no out-of-zone finding with 200 peers, no scanner.
	if ids := append(hasKind(r, PeerOutOfZone), hasKind(r, ScanSuspected)...); ids != nil {
		t.Errorf("flood made per-peer findings %v", ids)
	}
	if len(r.Findings) != 2 { // the flood and the optional update check
		t.Errorf("%d findings, want the flood and optional-in-use only", len(r.Findings))
	}
	if st := ruleStatusByID(r)["t1.server.ssh"]; st != StatusSeen {
		t.Errorf("ssh status %q", st)
	}

	// The same SYNs spread over the window (33/s) are no flood: just
	// out-of-zone attempts.
	s = snap(10*time.Minute, append(serverBaseline(), halfOpenFlows(22, "198.51.100.1", 200, 100, 9*time.Minute)...)...)
	r = runV2(t, s, Options{})
	if hasKind(r, FloodSuspected) != nil || findingByID(r, "peer-out-of-zone/t1.server.ssh/tcp/22") == nil {
		t.Errorf("slow SYNs: flood %v, out-of-zone %v", hasKind(r, FloodSuspected), hasKind(r, PeerOutOfZone))
	}
	// Thresholds are options; a negative one disables its criterion.
	r = runV2(t, s, Options{FloodRate: -1})
	if hasKind(r, FloodSuspected) == nil {
		t.Error("FloodRate -1: no flood for 20000 half-open SYNs")
	}
	r = runV2(t, s, Options{FloodRate: -1, FloodSYNs: -1})
	if hasKind(r, FloodSuspected) != nil {
		t.Error("FloodSYNs -1: flood reported")
	}
}

func TestFloodDistinctPeers(t *testing.T) {
	// 1200 peers send one unanswered datagram each to an undocumented UDP
	// port; a threshold of 1000 peers makes it a flood.
	var flows []snapshot.Flow
	for _, a := range addrs4("203.0.113.0", 256) {
		flows = append(flows, flow("in", "udp", 5353, a.String(), 1, 0, snapshot.Evidence{}))
	}
	for _, a := range addrs4("198.18.0.0", 944) {
		flows = append(flows, flow("in", "udp", 5353, a.String(), 1, 0, snapshot.Evidence{}))
	}
	s := snap(10*time.Minute, append(serverBaseline(), flows...)...)
	r := runV2(t, s, Options{FloodPeers: 1000})
	fl := findingByID(r, "flood-suspected/udp/5353")
	if fl == nil {
		t.Fatal("no flood for 1200 distinct peers")
	}
	if fl.Evidence.Flood.Trigger != "peers" || fl.Evidence.Flood.Peers != 1200 || fl.Evidence.Flood.RateOf != "packets" ||
		!strings.HasPrefix(fl.Summary, "suspected flood on inbound udp/5353: 1200 distinct peers") {
		t.Errorf("flood %+v: %s", fl.Evidence.Flood, fl.Summary)
	}
	if top := fl.Evidence.TopPeers; len(top) != 5 || top[0].Prefix.String() != "198.18.0.0/24" || top[0].Peers != 256 {
		t.Errorf("top sources %+v", top)
	}
	// The port's state is still reported, once, without the peer list.
	u := findingByID(r, "undocumented-flow/inbound/udp/5353")
	if u == nil || u.Evidence.Peers != 0 || u.Evidence.FloodPackets != 1200 || !strings.HasPrefix(u.Summary, "the sources of a suspected flood tried") {
		t.Errorf("undocumented port under flood: %+v", u)
	}
	// With the default threshold (10000) it is an ordinary undocumented flow.
	r = runV2(t, s, Options{})
	if hasKind(r, FloodSuspected) != nil || findingByID(r, "undocumented-flow/inbound/udp/5353").Evidence.Peers != 1200 {
		t.Error("1200 peers reported as a flood with the default threshold")
	}
}

// spoofedFlood is issue 11's case: a random-source SYN flood of ~100 000
// peers on the agent port fills the flow map. 3000 flood peers got a flow
// (some of them inside AGENT_NETWORK), 60 000 were folded into /24
// prefixes and "other peers" by the recorder, 37 000 landed in the overflow
// entry — with the real agents' traffic, which lost its peers too.
func spoofedFlood(realAgents bool) *snapshot.Snapshot {
	base := without(9000)
	var flows []snapshot.Flow
	flows = append(flows, halfOpenFlows(9000, "198.18.0.0", 2500, 1, 30*time.Second)...)
	flows = append(flows, halfOpenFlows(9000, "10.1.200.0", 500, 1, 30*time.Second)...) // spoofed, inside the zone
	// Folded: 200 /24s of 150 peers each, and "other peers" of 30 000.
	for i := 0; i < 200; i++ {
		net := fmt.Sprintf("100.%d.%d.0", 64+i/100, i%100)
		peers := addrs4(net, 150)
		f := entry("in", "tcp", 9000, net+"/24", peers, 150, 150, snapshot.Evidence{SynIn: 150, SynAckOut: 150})
		f.FirstSeen, f.LastSeen = t0.Add(time.Minute), t0.Add(time.Minute+30*time.Second)
		flows = append(flows, f)
	}
	other := entry("in", "tcp", 9000, "0.0.0.0/0", addrs4("172.16.0.0", 30000), 30000, 30000, snapshot.Evidence{SynIn: 30000, SynAckOut: 30000})
	other.FirstSeen, other.LastSeen = t0.Add(time.Minute), t0.Add(time.Minute+30*time.Second)
	flows = append(flows, other)
	// Overflow: 37 000 spoofed SYNs; with real agents, 40 of them and 4000
	// packets of their sessions.
	peers := addrs4("11.0.0.0", 37000)
	syn, pin, pout := uint64(37000), uint64(37000), uint64(37000)
	if realAgents {
		peers = append(peers, addrs4("10.1.4.1", 40)...)
		syn, pin, pout = syn+40, pin+4000, pout+3900
	}
	ov := entry("in", "tcp", 9000, "", peers, pin, pout, snapshot.Evidence{SynIn: syn, SynAckOut: syn})
	ov.FirstSeen, ov.LastSeen = t0.Add(time.Minute), t0.Add(2*time.Minute)
	// Other findings that must stay on top: an undocumented open port and
	// an out-of-zone SSH login.
	flows = append(flows, flow("in", "tcp", 6379, "10.1.4.4", 6, 5, synAck(1)), flow("in", "tcp", 22, "10.1.4.4", 9, 8, synAck(1)))
	s := snap(10*time.Minute, append(base, flows...)...)
	s.Stats.FoldedFlows, s.Stats.FlowBudget = 60000, 5000
	return v2(s, ov)
}

func TestSpoofedFloodIntoFoldedAndOverflow(t *testing.T) {
	start := time.Now()
	r := runV2(t, spoofedFlood(true), Options{})
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("audit took %s", d)
	}
	floods := hasKind(r, FloodSuspected)
	if len(floods) != 1 || floods[0] != "flood-suspected/tcp/9000" {
		t.Fatalf("floods %v, want one on tcp/9000", floods)
	}
	fl := findingByID(r, floods[0])
	fe := fl.Evidence.Flood
	if fe.Trigger != "peers,half-open-syns" || !fl.Evidence.PeersEstimated {
		t.Errorf("trigger %q estimated %v", fe.Trigger, fl.Evidence.PeersEstimated)
	}
	// 3000 + 30 000 + 30 000 + 37 040 distinct peers, estimated (HyperLogLog, ~9 % standard error).
	if fe.Peers < 80_000 || fe.Peers > 120_000 {
		t.Errorf("estimated peers %d, want ~100 000", fe.Peers)
	}
	// 3000 exact + 60 000 folded half-open SYNs, and at least 37 040 − 3960 in the overflow entry.
	if fe.HalfOpenSYNs < 96_000 || fe.HalfOpenSYNs > 100_040 {
		t.Errorf("half-open SYNs %d", fe.HalfOpenSYNs)
	}
	// Measured over the half-open entries, the overflow entry's minute included.
	if fe.Span != "1m0s" || fe.Rate < 1550 || fe.Rate > 1700 || fe.RateOf != "half-open SYNs" {
		t.Errorf("span %s rate %v", fe.Span, fe.Rate)
	}
	top := fl.Evidence.TopPeers
	if len(top) != 5 || top[0].Prefix.Bits() != 0 || !strings.HasPrefix(top[0].String(), "other peers (~") {
		t.Errorf("top sources %v", top)
	}
	// The real agents' traffic in the overflow entry keeps the required
	// rule seen: no false missing-required.
	if ids := hasKind(r, MissingRequired); ids != nil {
		t.Errorf("missing-required under a flood with real traffic: %v", ids)
	}
	if st := ruleStatusByID(r)["t1.server.agent"]; st != StatusPeersUnknown {
		t.Errorf("agent status %q", st)
	}
	// No per-peer noise from the flood: the only out-of-zone finding is the
	// SSH login, no scanner, no agent out-of-zone with 100 000 peers.
	if ids := hasKind(r, PeerOutOfZone); len(ids) != 1 || ids[0] != "peer-out-of-zone/t1.server.ssh/tcp/22" {
		t.Errorf("out-of-zone findings %v", ids)
	}
	if ids := hasKind(r, ScanSuspected); ids != nil {
		t.Errorf("scanners %v", ids)
	}
	// The flood does not bury the conformance findings: highs first, and
	// within its severity the flood comes after every conformance kind.
	if r.Findings[0].Severity != High || r.Findings[1].Severity != High {
		t.Errorf("top findings %s, %s", r.Findings[0].ID, r.Findings[1].ID)
	}
	idx := map[string]int{}
	for i, f := range r.Findings {
		idx[f.ID] = i
	}
	for _, id := range []string{"unexpected-open-port/tcp/6379", "peer-out-of-zone/t1.server.ssh/tcp/22", "audit-incomplete/peers-lost"} {
		i, ok := idx[id]
		if !ok || i > idx[floods[0]] {
			t.Errorf("%s at %d (present %v), flood at %d", id, i, ok, idx[floods[0]])
		}
	}
	for _, f := range r.Findings[idx[floods[0]]+1:] {
		if f.Severity == Medium {
			t.Errorf("medium %s sorted after the flood", f.ID)
		}
	}
	// Incomplete, precisely: peers lost on tcp/9000, folding, no loss.
	for _, id := range []string{"audit-incomplete/peers-lost", "audit-incomplete/folded"} {
		if findingByID(r, id) == nil {
			t.Errorf("no %s", id)
		}
	}
	if findingByID(r, "audit-incomplete/not-counted") != nil {
		t.Error("not-counted without lost packets")
	}

	// The same flood without real traffic: the spoofed SYNs (some from
	// inside AGENT_NETWORK) do not make the rule seen.
	r = runV2(t, spoofedFlood(false), Options{})
	m := findingByID(r, "missing-required/t1.server.agent")
	if m == nil || !strings.Contains(m.Summary, "a suspected flood's half-open attempts do not count") {
		t.Fatalf("flood only: missing-required %+v", m)
	}
	if m.Evidence.FloodPackets == 0 {
		t.Error("missing-required does not say how much flood traffic there was")
	}
	if len(hasKind(r, FloodSuspected)) != 1 {
		t.Error("flood not reported once")
	}
}

func TestInterruptedAndCheckpoint(t *testing.T) {
	s := snap(4*time.Minute+10*time.Second, without(9000)...)
	s.Interrupted = &snapshot.Interruption{Signal: "SIGTERM", At: s.End, PlannedEnd: t0.Add(10 * time.Minute)}
	r := runV2(t, s, Options{})
	f := findingByID(r, "audit-incomplete/interrupted")
	if f == nil || f.Severity != Medium || f.Evidence.Interrupted == nil {
		t.Fatalf("interrupted %+v", f)
	}
	for _, want := range []string{"interrupted by SIGTERM at 2026-11-26 08:04:10Z, after 4m10s of a planned 10m0s"} {
		if !strings.Contains(f.Summary, want) || !strings.Contains(r.Coverage.Stopped, want[len("interrupted by "):]) {
			t.Errorf("summary %q / coverage %q lack %q", f.Summary, r.Coverage.Stopped, want)
		}
	}
	m := findingByID(r, "missing-required/t1.server.agent")
	if m == nil || !strings.HasSuffix(m.Summary, "; the recording was interrupted by SIGTERM at 2026-11-26 08:04:10Z, after 4m10s of a planned 10m0s") {
		t.Errorf("missing-required does not say the recording was cut short: %+v", m)
	}
	if r.Coverage.Complete || r.Coverage.Interrupted == nil {
		t.Errorf("coverage %+v", r.Coverage)
	}

	s.Interrupted = &snapshot.Interruption{Signal: "SIGINT", At: s.End}
	if f := findingByID(runV2(t, s, Options{}), "audit-incomplete/interrupted"); f == nil || f.Severity != Low {
		t.Errorf("Ctrl-C of an open-ended recording: %+v", f)
	}
	s.Interrupted = &snapshot.Interruption{Signal: "error", At: s.End, Reason: "read maps: no buffer space"}
	if f := findingByID(runV2(t, s, Options{}), "audit-incomplete/interrupted"); f == nil || f.Severity != Medium ||
		!strings.Contains(f.Summary, "stopped by an error at") || !strings.Contains(f.Summary, "(read maps: no buffer space)") {
		t.Errorf("stopped by an error: %+v", f)
	}

	s.Interrupted = nil
	s.Checkpoint = true
	r = runV2(t, s, Options{})
	c := findingByID(r, "audit-incomplete/checkpoint")
	if c == nil || c.Severity != Medium || !strings.Contains(c.Summary, "checkpoint written at 2026-11-26 08:04:10Z") {
		t.Errorf("checkpoint %+v", c)
	}
	if m := findingByID(r, "missing-required/t1.server.agent"); m == nil || !strings.Contains(m.Summary, "checkpoint") {
		t.Errorf("missing-required on a checkpoint: %+v", m)
	}
}

func TestVersion1Loss(t *testing.T) {
	// A version 1 file reads as flow_insert_failed = overflow_insert_failed:
	// every such packet was lost, none lost only its peer.
	s := snap(10*time.Minute, serverBaseline()...)
	s.Stats.FlowInsertFailed, s.Stats.OverflowInsertFailed = 9, 9
	r := runV2(t, s, Options{})
	if findingByID(r, "audit-incomplete/peers-lost") != nil || findingByID(r, "audit-incomplete/not-counted") == nil {
		t.Errorf("findings %v", hasKind(r, AuditIncomplete))
	}
	if f := findingByID(r, "audit-incomplete/not-counted"); !strings.Contains(f.Summary, "9 packets were not counted at all (the flow map of 65536 entries was full)") {
		t.Errorf("summary %s", f.Summary)
	}
}
