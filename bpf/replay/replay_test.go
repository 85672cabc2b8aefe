package replay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// Replay through the kernel programs (BPF_PROG_TEST_RUN): these tests need
// root and skip without it (fail in CI).

// synthTraffic is a capture taken on hostA/host6: conversations of every
// kind the datapath tells apart, interleaved pseudo-randomly, with
// retransmitted (identical) frames in and out, ARP both ways, VLAN tags, fragments,
// ICMP errors quoting earlier packets, an outgoing frame too short for its
// IPv4 header, a jumbo frame and a multicast sender. span is the time the
// capture covers.
func synthTraffic(tb testing.TB, seed int64, convs int, span time.Duration) []pkt {
	rng := rand.New(rand.NewSource(seed))
	var streams [][][]byte
	peer := func(i int) netip.Addr {
		return netip.AddrFrom4([4]byte{198, 51, byte(100 + i/250), byte(1 + i%250)})
	}
	peer6n := func(i int) netip.Addr {
		b := peer6.As16()
		b[15] = byte(i)
		b[14] = byte(i >> 8)
		return netip.AddrFrom16(b)
	}
	for i := 0; i < convs; i++ {
		p, p6 := peer(i), peer6n(i+1)
		cport := uint16(33000 + rng.Intn(20000))
		var s [][]byte
		switch i % 9 {
		case 0: // inbound TCP to 22, accepted, data both ways, a retransmission
			s = append(s, ipFrame(tb, p, hostA, tcpSeg(cport, 22, "S", 0)...),
				ipFrame(tb, hostA, p, tcpSeg(22, cport, "SA", 0)...),
				ipFrame(tb, p, hostA, tcpSeg(cport, 22, "A", 0)...))
			d := ipFrame(tb, p, hostA, tcpSeg(cport, 22, "PA", 100+rng.Intn(400))...)
			s = append(s, d, d, ipFrame(tb, hostA, p, tcpSeg(22, cport, "PA", 1200)...))
		case 1: // inbound TCP to a closed port: RST
			s = append(s, ipFrame(tb, p, hostA, tcpSeg(cport, 6379, "S", 0)...),
				ipFrame(tb, hostA, p, tcpSeg(6379, cport, "RA", 0)...))
		case 2: // outbound HTTPS, the SYN retransmitted
			syn := ipFrame(tb, hostA, p, tcpSeg(cport, 443, "S", 0)...)
			s = append(s, syn, syn,
				ipFrame(tb, p, hostA, tcpSeg(443, cport, "SA", 0)...),
				ipFrame(tb, hostA, p, tcpSeg(cport, 443, "A", 0)...),
				ipFrame(tb, p, hostA, tcpSeg(443, cport, "PA", 1400)...))
		case 3: // UDP client (DNS) and an answer
			s = append(s, ipFrame(tb, hostA, p, udpDgram(cport, 53, 40)...), ipFrame(tb, p, hostA, udpDgram(53, cport, 120)...))
		case 4: // UDP to a local port nobody answers, then port unreachable
			q := ipFrame(tb, p, hostA, udpDgram(cport, 161, 30)...)
			s = append(s, q, ser(tb, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4},
				&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: hostA.AsSlice(), DstIP: p.AsSlice()},
				&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(q[14:14+28])))
		case 5: // ping in, reply out; a mid-stream TCP packet without handshake
			s = append(s, ipFrame(tb, p, hostA, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 7, Seq: 1}),
				ipFrame(tb, hostA, p, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(0, 0), Id: 7, Seq: 1}),
				ipFrame(tb, p, hostA, tcpSeg(cport, 9000, "A", 10)...))
		case 6: // IPv6 TCP inbound and IPv6 UDP outbound
			s = append(s, ipFrame(tb, p6, host6, tcpSeg(cport, 8443, "S", 0)...),
				ipFrame(tb, host6, p6, tcpSeg(8443, cport, "SA", 0)...),
				ipFrame(tb, host6, p6, udpDgram(cport+1, 123, 48)...), ipFrame(tb, p6, host6, udpDgram(123, cport+1, 48)...))
		case 7: // VLAN-tagged syslog in, and a fragmented datagram
			s = append(s, ser(tb, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeDot1Q},
				&layers.Dot1Q{VLANIdentifier: 42, Type: layers.EthernetTypeIPv4},
				&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: p.AsSlice(), DstIP: hostA.AsSlice()},
				&layers.UDP{SrcPort: layers.UDPPort(cport), DstPort: 514}, gopacket.Payload("<13>hello")))
			for off := uint16(0); off < 3; off++ {
				ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: p.AsSlice(),
					DstIP: hostA.AsSlice(), Id: uint16(i), FragOffset: off * 185}
				if off < 2 {
					ip.Flags = layers.IPv4MoreFragments
				}
				var pl gopacket.SerializableLayer = gopacket.Payload(make([]byte, 1480))
				if off == 0 {
					s = append(s, ser(tb, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv4}, ip,
						&layers.UDP{SrcPort: layers.UDPPort(cport), DstPort: 4739}, gopacket.Payload(make([]byte, 1472))))
					continue
				}
				s = append(s, ser(tb, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv4}, ip, pl))
			}
		case 8: // ARP both ways
			arp := func(src, dst net.HardwareAddr, sip, dip netip.Addr, op uint16) []byte {
				return ser(tb, &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeARP},
					&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6,
						ProtAddressSize: 4, Operation: op, SourceHwAddress: src, SourceProtAddress: sip.AsSlice(),
						DstHwAddress: dst, DstProtAddress: dip.AsSlice()})
			}
			s = append(s, arp(macB, macA, p, hostA, 1), arp(macA, macB, hostA, p, 2))
		}
		streams = append(streams, s)
	}
	// Oddities: a short outgoing frame (IPv4 header cut: test_run refuses
	// it for TC), a jumbo frame, a multicast sender.
	short := ipFrame(tb, hostA, peer(0), udpDgram(1, 2, 0)...)[:30]
	jumbo := ipFrame(tb, peer(1), hostA, tcpSeg(40000, 22, "PA", 9000)...)
	mdns := ipFrame(tb, peer(2), netip.MustParseAddr("224.0.0.251"), udpDgram(5353, 5353, 50)...)
	streams = append(streams, [][]byte{short}, [][]byte{jumbo}, [][]byte{mdns, mdns})

	// Interleave: pick a random stream with packets left, keep its order.
	var out []pkt
	total := 0
	for _, s := range streams {
		total += len(s)
	}
	step := span / time.Duration(total)
	ts := epoch
	for n := 0; n < total; n++ {
		i := rng.Intn(len(streams))
		for len(streams[i]) == 0 {
			i = (i + 1) % len(streams)
		}
		out = append(out, pkt{ts: ts, frame: streams[i][0]})
		streams[i] = streams[i][1:]
		ts = ts.Add(step)
		if n == total/2 {
			// A burst: the appliance forwards the same syslog datagram
			// five times in a row.
			burst := ipFrame(tb, hostA, peer(3), udpDgram(40514, 514, 64)...)
			for k := 0; k < 5; k++ {
				out = append(out, pkt{ts: ts, frame: burst})
			}
		}
	}
	return out
}

func openCollector(tb testing.TB) *bpf.Collector {
	tb.Helper()
	testenv.RequireBPF(tb)
	c, err := bpf.Open(bpf.Options{EphemeralPorts: DefaultEphemeralPorts, FlowEntries: 1 << 16, Programs: bpf.LoadLive | bpf.LoadReplay})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

var localPrefixes = []netip.Prefix{netip.PrefixFrom(hostA, 32), netip.PrefixFrom(host6, 128)}

// reference feeds frames one by one with Collector.Run, choosing the hook
// the way docs/REPLAY.md describes it, and returns what the maps hold.
func reference(t *testing.T, c *bpf.Collector, pkts []pkt) *bpf.Read {
	t.Helper()
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	local := func(a netip.Addr) bool { return a == hostA || a == host6 }
	egressViaXDP := 0
	for i, p := range pkts {
		f := p.frame
		if len(f) > MaxFrame {
			f = f[:MaxFrame]
		}
		hook := bpf.HookXDP
		et := binary.BigEndian.Uint16(f[12:14])
		switch {
		case et == 0x0800 && len(f) >= 34:
			if local(netip.AddrFrom4([4]byte(f[26:30]))) {
				hook = bpf.HookTCEgress
			}
		case et == 0x8100 && len(f) >= 38 && binary.BigEndian.Uint16(f[16:18]) == 0x0800:
			if local(netip.AddrFrom4([4]byte(f[30:34]))) {
				hook = bpf.HookTCEgress
			}
		case et == 0x86dd && len(f) >= 54:
			if local(netip.AddrFrom16([16]byte(f[22:38]))) {
				hook = bpf.HookTCEgress
			}
		case et == 0x0800 || et == 0x86dd:
			if net.HardwareAddr(f[6:12]).String() == macA.String() {
				egressViaXDP++ // too short for TC
			}
		default:
			if net.HardwareAddr(f[6:12]).String() == macA.String() {
				hook = bpf.HookTCEgress
			}
		}
		if _, err := c.Run(hook, f); err != nil {
			t.Fatalf("packet %d: %v", i+1, err)
		}
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	r.Stats.PacketsIngress -= uint64(egressViaXDP)
	r.Stats.PacketsEgress += uint64(egressViaXDP)
	return r
}

// flowsText renders flows without interface names and timestamps.
func flowsText(flows []snapshot.Flow) string {
	var lines []string
	for _, f := range flows {
		f.Interface, f.FirstSeen, f.LastSeen = "", time.Time{}, time.Time{}
		lines = append(lines, fmt.Sprintf("%+v", f))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func statsText(s snapshot.Stats) string {
	s.FlowCapacity = 0
	return fmt.Sprintf("%+v", s)
}

func diffText(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	in := map[string]int{}
	for _, l := range bl {
		in[l]++
	}
	var out []string
	for _, l := range al {
		if in[l] > 0 {
			in[l]--
			continue
		}
		out = append(out, "- "+l)
	}
	for l, n := range in {
		for ; n > 0; n-- {
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// TestReplayMatchesDirectFeed: the snapshot of a replay holds exactly what
// feeding the frames one by one in capture order gives, for any number of
// workers (conversations stay in order on one worker; identical frames
// become one test_run with repeat), on both paths; on the batch path the
// whole snapshot, first/last seen included, is the same for every number
// of workers.
func TestReplayMatchesDirectFeed(t *testing.T) {
	c := openCollector(t)
	pkts := synthTraffic(t, 1, 300, 20*time.Second)
	path := filepath.Join(t.TempDir(), "synth.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, pkts)
	ref := reference(t, c, pkts)
	if len(ref.Flows) < 200 {
		t.Fatalf("reference has only %d flows", len(ref.Flows))
	}
	var batchOne string
	for _, tc := range []struct {
		workers   int
		perPacket bool
	}{{1, true}, {2, true}, {4, true}, {7, true}, {1, false}, {2, false}, {4, false}, {7, false}} {
		workers := tc.workers
		res, err := Run(context.Background(), c, path, Options{Local: localPrefixes, Workers: workers, PerPacket: tc.perPacket})
		if err != nil {
			t.Fatal(err)
		}
		if !tc.perPacket {
			// Calls carry many frames; the outgoing IPv4 frame too short
			// for its header is counted as outgoing directly.
			if res.EgressViaXDP != 0 || res.Calls*4 > res.Replayed || res.Cut != 1 ||
				res.MissingBytes != uint64(jumboLen(pkts)-MaxFrame) || res.Slices != 0 {
				t.Errorf("batch, workers=%d: egress via XDP %d, calls %d for %d frames, cut %d, missing bytes %d, slices %d",
					workers, res.EgressViaXDP, res.Calls, res.Replayed, res.Cut, res.MissingBytes, res.Slices)
			}
			if d := diffText(flowsText(ref.Flows), flowsText(res.Snapshot.Flows)); d != "" {
				t.Errorf("batch, workers=%d: flows differ from the direct feed (-direct +replay):\n%s", workers, d)
			}
			if statsText(res.Snapshot.Stats) != statsText(ref.Stats) {
				t.Errorf("batch, workers=%d: stats %s, direct feed %s", workers, statsText(res.Snapshot.Stats), statsText(ref.Stats))
			}
			all := fullText(res.Snapshot)
			if batchOne == "" {
				batchOne = all
			} else if d := diffText(batchOne, all); d != "" {
				t.Errorf("batch, workers=%d: snapshot differs from workers=1 (-1 +%d):\n%s", workers, workers, d)
			}
			continue
		}
		if d := diffText(flowsText(ref.Flows), flowsText(res.Snapshot.Flows)); d != "" {
			t.Errorf("workers=%d: flows differ from the direct feed (-direct +replay):\n%s", workers, d)
		}
		if statsText(res.Snapshot.Stats) != statsText(ref.Stats) {
			t.Errorf("workers=%d: stats %s, direct feed %s", workers, statsText(res.Snapshot.Stats), statsText(ref.Stats))
		}
		// Identical consecutive outgoing frames (TC) share a call; XDP
		// runs them one by one (xdpRepeatMin).
		if res.Packets != len(pkts) || res.Replayed != len(pkts) || res.Calls >= res.Replayed {
			t.Errorf("workers=%d: packets %d replayed %d calls %d (want %d, %d, fewer calls: outgoing duplicates share one)",
				workers, res.Packets, res.Replayed, res.Calls, len(pkts), len(pkts))
		}
		if res.EgressViaXDP != 1 || res.Cut != 1 || res.MissingBytes != uint64(jumboLen(pkts)-MaxFrame) {
			t.Errorf("workers=%d: egress via XDP %d, cut %d, missing bytes %d", workers, res.EgressViaXDP, res.Cut, res.MissingBytes)
		}
	}
}

// fullText is every flow with its first/last seen, the stats and the DNS
// rows of a snapshot, one line each.
func fullText(s *snapshot.Snapshot) string {
	var lines []string
	for _, set := range [][]snapshot.Flow{s.Flows, s.Overflow} {
		for _, f := range set {
			lines = append(lines, fmt.Sprintf("%+v", f))
		}
	}
	lines = append(lines, statsText(s.Stats))
	if s.DNS != nil {
		lines = append(lines, fmt.Sprintf("%+v", *s.DNS))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func jumboLen(pkts []pkt) int {
	for _, p := range pkts {
		if len(p.frame) > MaxFrame {
			return len(p.frame)
		}
	}
	return 0
}

// TestReplaySemantics pins what a replay of a small capture must say, key
// by key, independently of the programs' own test_run tests.
func TestReplaySemantics(t *testing.T) {
	c := openCollector(t)
	cport := uint16(40000)
	pkts := []pkt{}
	add := func(f []byte) {
		pkts = append(pkts, pkt{ts: epoch.Add(time.Duration(len(pkts)) * time.Second), frame: f})
	}
	add(ipFrame(t, peerB, hostA, tcpSeg(cport, 22, "S", 0)...))
	add(ipFrame(t, hostA, peerB, tcpSeg(22, cport, "SA", 0)...))
	add(ipFrame(t, peerB, hostA, tcpSeg(cport, 22, "A", 0)...))
	add(ipFrame(t, hostA, peerB, udpDgram(50000, 53, 30)...))
	add(ipFrame(t, peerB, hostA, udpDgram(53, 50000, 90)...))
	path := filepath.Join(t.TempDir(), "small.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, pkts)
	res, err := Run(context.Background(), c, path, Options{ToolVersion: "test"})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Snapshot
	if res.Local.From != "heuristic" || len(res.Local.Addrs) != 1 || res.Local.Addrs[0] != hostA {
		// Both addresses are in every packet; hostA received the SYN.
		t.Errorf("local %+v, want 192.0.2.10 by the heuristic", res.Local)
	}
	if s.Source != "replay:small.pcap" || !s.Start.Equal(epoch) || !s.End.Equal(epoch.Add(4*time.Second)) || s.Tool.Version != "test" {
		t.Errorf("header: source %q start %v end %v tool %+v", s.Source, s.Start, s.End, s.Tool)
	}
	if len(s.Interfaces) != 1 || s.Interfaces[0].Name != "replay" || len(s.Interfaces[0].Addresses) != 1 {
		t.Errorf("interfaces %+v", s.Interfaces)
	}
	want := map[string]string{
		"inbound tcp/22":  "in 2 out 1 ev {SynIn:1 SynAckOut:1 RstOut:0 ICMPClosedOut:0 ICMPFilteredOut:0 SynOut:0 SynAckIn:0 RstIn:0 ICMPClosedIn:0 ICMPFilteredIn:0}",
		"outbound udp/53": "in 1 out 1 ev {SynIn:0 SynAckOut:0 RstOut:0 ICMPClosedOut:0 ICMPFilteredOut:0 SynOut:0 SynAckIn:0 RstIn:0 ICMPClosedIn:0 ICMPFilteredIn:0}",
	}
	got := map[string]string{}
	for _, f := range s.Flows {
		if f.Peer != peerB || f.DirectionInferred || f.Interface != "replay" {
			t.Errorf("flow %+v", f)
		}
		got[fmt.Sprintf("%s %s/%d", f.Direction, f.Proto, f.Port)] = fmt.Sprintf("in %d out %d ev %+v", f.PacketsIn, f.PacketsOut, f.Evidence)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("flows\n got %v\nwant %v", got, want)
	}
	if s.Stats.PacketsIngress != 3 || s.Stats.PacketsEgress != 2 {
		t.Errorf("ingress %d egress %d, want 3 and 2", s.Stats.PacketsIngress, s.Stats.PacketsEgress)
	}
	// The snapshot file round-trips through the reader audit uses.
	out := filepath.Join(t.TempDir(), "snap.json")
	if err := snapshot.WriteFile(out, s); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.ReadFile(out); err != nil {
		t.Fatal(err)
	}
}

// TestReplayFlowTimes: first/last seen come from packet timestamps, never
// later than the true first packet minus nothing or earlier than it minus
// the resolution (and the mirror for last seen).
func TestReplayFlowTimes(t *testing.T) {
	c := openCollector(t)
	type span struct{ first, last time.Time }
	truth := map[uint16]span{}
	var pkts []pkt
	// Three services, each used in its own stretch of a 60 s capture.
	for sec := 0; sec < 60; sec++ {
		port := uint16(1000 + sec/20)
		ts := epoch.Add(time.Duration(sec)*time.Second + 300*time.Millisecond)
		pkts = append(pkts, pkt{ts: ts, frame: ipFrame(t, peerB, hostA, udpDgram(41000, port, 10)...)})
		sp := truth[port]
		if sp.first.IsZero() {
			sp.first = ts
		}
		sp.last = ts
		truth[port] = sp
	}
	path := filepath.Join(t.TempDir(), "times.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, pkts)
	// The batch path: exact.
	r, err := Run(context.Background(), c, path, Options{Local: localPrefixes})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Snapshot.Flows) != len(truth) {
		t.Errorf("batch: %d flows, want %d", len(r.Snapshot.Flows), len(truth))
	}
	for _, f := range r.Snapshot.Flows {
		if tr := truth[f.Port]; !f.FirstSeen.Equal(tr.first) || !f.LastSeen.Equal(tr.last) {
			t.Errorf("batch: port %d seen %s..%s, true %s..%s", f.Port, f.FirstSeen.Format("05.000"), f.LastSeen.Format("05.000"),
				tr.first.Format("05.000"), tr.last.Format("05.000"))
		}
	}
	for _, res := range []time.Duration{time.Second, 7 * time.Second} {
		r, err := Run(context.Background(), c, path, Options{Local: localPrefixes, Resolution: res, PerPacket: true})
		if err != nil {
			t.Fatal(err)
		}
		if r.Slices < int(60*time.Second/res)/2 {
			t.Errorf("resolution %s: only %d time slices", res, r.Slices)
		}
		for _, f := range r.Snapshot.Flows {
			tr := truth[f.Port]
			if f.FirstSeen.After(tr.first) || f.FirstSeen.Before(tr.first.Add(-res)) ||
				f.LastSeen.Before(tr.last) || f.LastSeen.After(tr.last.Add(res)) {
				t.Errorf("resolution %s: port %d seen %s..%s, true %s..%s", res, f.Port,
					f.FirstSeen.Format("05.000"), f.LastSeen.Format("05.000"), tr.first.Format("05.000"), tr.last.Format("05.000"))
			}
		}
	}
}

// TestReplayDamagedCapture: a capture cut short gives the snapshot of the
// packets before the cut and a CaptureError with the index.
func TestReplayDamagedCapture(t *testing.T) {
	c := openCollector(t)
	pkts := synthTraffic(t, 2, 40, 5*time.Second)
	dir := t.TempDir()
	full := filepath.Join(dir, "full.pcap")
	writePcap(t, full, layers.LinkTypeEthernet, pkts)
	raw, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(dir, "cut.pcap")
	if err := os.WriteFile(cut, raw[:len(raw)-3], 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), c, cut, Options{Local: localPrefixes})
	var ce *CaptureError
	if !errors.As(err, &ce) || !ce.Truncated || ce.Packet != len(pkts) || res == nil || res.Err != ce {
		t.Fatalf("err %v (%T), want a truncated CaptureError at packet %d with a result", err, err, len(pkts))
	}
	ref := reference(t, c, pkts[:len(pkts)-1])
	if d := diffText(flowsText(ref.Flows), flowsText(res.Snapshot.Flows)); d != "" {
		t.Errorf("partial snapshot differs from the packets before the cut:\n%s", d)
	}
	if !res.Snapshot.End.Equal(pkts[len(pkts)-2].ts) {
		t.Errorf("end %v, want the last complete packet's %v", res.Snapshot.End, pkts[len(pkts)-2].ts)
	}
}

// TestReplayLinkTypes: the same traffic as Linux cooked (SLL, SLL2) and
// raw IP captures gives the same IP flows as the Ethernet capture.
func TestReplayLinkTypes(t *testing.T) {
	c := openCollector(t)
	var ipOnly []pkt
	for _, p := range synthTraffic(t, 3, 90, 5*time.Second) {
		if et := binary.BigEndian.Uint16(p.frame[12:14]); (et == 0x0800 || et == 0x86dd) && len(p.frame) >= 54 && len(p.frame) <= MaxFrame {
			ipOnly = append(ipOnly, p)
		}
	}
	dir := t.TempDir()
	eth := filepath.Join(dir, "eth.pcap")
	writePcap(t, eth, layers.LinkTypeEthernet, ipOnly)
	conv := func(name string, lt layers.LinkType, f func([]byte) []byte) string {
		var out []pkt
		for _, p := range ipOnly {
			out = append(out, pkt{ts: p.ts, frame: f(p.frame)})
		}
		path := filepath.Join(dir, name)
		writePcap(t, path, lt, out)
		return path
	}
	sll := conv("sll.pcap", layers.LinkTypeLinuxSLL, func(f []byte) []byte {
		h := make([]byte, 16)
		binary.BigEndian.PutUint16(h[2:], 1)
		binary.BigEndian.PutUint16(h[4:], 6)
		copy(h[6:], f[6:12])
		copy(h[14:], f[12:14])
		return append(h, f[14:]...)
	})
	raw := conv("raw.pcap", layers.LinkTypeRaw, func(f []byte) []byte { return f[14:] })
	var ng ngBuilder
	ng.shb().idb(LinkSLL2, "eth7")
	for _, p := range ipOnly {
		h := make([]byte, 20)
		copy(h[0:], p.frame[12:14])
		binary.BigEndian.PutUint16(h[8:], 1)
		h[11] = 6
		copy(h[12:], p.frame[6:12])
		ng.epb(0, p.ts, append(h, p.frame[14:]...))
	}
	sll2 := writeFile(t, "sll2.pcapng", ng.b.Bytes())

	want, err := Run(context.Background(), c, eth, Options{Local: localPrefixes})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{sll, raw, sll2} {
		got, err := Run(context.Background(), c, path, Options{Local: localPrefixes})
		if err != nil {
			t.Fatal(err)
		}
		if d := diffText(flowsText(want.Snapshot.Flows), flowsText(got.Snapshot.Flows)); d != "" {
			t.Errorf("%s: flows differ from the Ethernet capture's:\n%s", filepath.Base(path), d)
		}
		if path == sll2 && got.Snapshot.Interfaces[0].Name != "eth7" {
			t.Errorf("interface %q, want the pcapng name eth7", got.Snapshot.Interfaces[0].Name)
		}
	}
	// A pcapng file mixing an Ethernet interface with an 802.11 one: the
	// 802.11 records are skipped and counted, the rest replayed.
	var mixed ngBuilder
	mixed.shb().idb(LinkEthernet, "eth0").idb(127, "wlan0mon")
	for i, p := range ipOnly {
		mixed.epb(0, p.ts, p.frame)
		if i%3 == 0 {
			mixed.epb(1, p.ts, []byte{0, 0, 8, 0, 0, 0, 0, 0})
		}
	}
	got, err := Run(context.Background(), c, writeFile(t, "mixed.pcapng", mixed.b.Bytes()), Options{Local: localPrefixes})
	if err != nil {
		t.Fatal(err)
	}
	if d := diffText(flowsText(want.Snapshot.Flows), flowsText(got.Snapshot.Flows)); d != "" {
		t.Errorf("mixed pcapng: flows differ from the Ethernet capture's:\n%s", d)
	}
	if n := (len(ipOnly) + 2) / 3; got.Skipped[SkipLinkType] != n || got.Snapshot.Interfaces[0].Name != "eth0" {
		t.Errorf("mixed pcapng: skipped %v (want %d 802.11 records), interface %q (want eth0, the only replayed one)",
			got.Skipped, n, got.Snapshot.Interfaces[0].Name)
	}

	// A link type replay cannot convert is refused, by name.
	wifi := conv("wifi.pcap", layers.LinkTypeIEEE80211Radio, func(f []byte) []byte { return f })
	_, err = Run(context.Background(), c, wifi, Options{})
	var lte *LinkTypeError
	if !errors.Is(err, ErrUnsupportedLinkType) || !errors.As(err, &lte) || !strings.Contains(err.Error(), "IEEE 802.11 radiotap (127)") {
		t.Errorf("radiotap capture: %v", err)
	}
}

// TestReplayBadTimestamps: a pcapng whose packets carry 64-bit timestamps
// far out of range still gives a snapshot: the packets are replayed, their
// timestamps replaced and reported by packet number, the window and flow
// times are those of the valid timestamps, and the snapshot file is
// written and reads back.
func TestReplayBadTimestamps(t *testing.T) {
	c := openCollector(t)
	path, pkts := badTimesCapture(t)
	core, logs := observer.New(zap.WarnLevel)
	res, err := Run(context.Background(), c, path, Options{Local: localPrefixes, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Snapshot
	if res.Replayed != 5 || s.Stats.PacketsIngress+s.Stats.PacketsEgress != 5 {
		t.Errorf("replayed %d, programs saw %d, want all 5", res.Replayed, s.Stats.PacketsIngress+s.Stats.PacketsEgress)
	}
	if !s.Start.Equal(pkts[1].ts) || !s.End.Equal(pkts[3].ts) {
		t.Errorf("window %s – %s, want the valid timestamps %s – %s", s.Start, s.End, pkts[1].ts, pkts[3].ts)
	}
	for _, f := range s.Flows {
		if f.FirstSeen.Before(s.Start) || f.LastSeen.After(s.End) {
			t.Errorf("flow %s/%d seen %s – %s, outside the window", f.Proto, f.Port, f.FirstSeen, f.LastSeen)
		}
	}
	if res.BadTimestamps != 3 || len(res.BadTimes) != 3 || res.BadTimes[0].Packet != 1 || res.BadTimes[2].Packet != 5 {
		t.Errorf("bad timestamps %d: %+v", res.BadTimestamps, res.BadTimes)
	}
	var packets []int64
	for _, e := range logs.FilterMessage("timestamp out of range").All() {
		packets = append(packets, e.ContextMap()["packet"].(int64))
	}
	if fmt.Sprint(packets) != "[1 3 5]" || logs.FilterMessageSnippet("3 packets have timestamps outside 1970-01-01 – 2106-02-07").Len() != 1 {
		t.Errorf("warnings name packets %v; log: %v", packets, logs.All())
	}
	out := filepath.Join(t.TempDir(), "snap.json")
	if err := snapshot.WriteFile(out, s); err != nil {
		t.Fatalf("snapshot not written: %v", err)
	}
	if back, err := snapshot.ReadFile(out); err != nil || !back.End.Equal(pkts[3].ts) {
		t.Fatalf("read back: %v", err)
	}
}

// TestReplayDirectionWithoutHandshake: a capture that starts mid-connection
// (no SYN), client 172.16.30.190 ports 8868–8881 to a server's 31600, both
// ports outside the ephemeral range. The lower-port rule made 14 inbound
// flows on the client's ports; the server's port talked to 14 distinct
// ports (fan-in), so it is the service, seen from either end. A reply
// from source port 0 (Geneve) makes the local port the service.
func TestReplayDirectionWithoutHandshake(t *testing.T) {
	c := openCollector(t)
	srv, cli := netip.MustParseAddr("172.16.30.10"), netip.MustParseAddr("172.16.30.190")
	vtep := netip.MustParseAddr("172.16.30.77")
	frame := func(src, dst netip.Addr, l4 ...gopacket.SerializableLayer) []byte {
		return ser(t, append([]gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: map[bool]layers.IPProtocol{true: layers.IPProtocolTCP, false: layers.IPProtocolUDP}[len(l4) == 2 && isTCP(l4[0])],
				SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}}, l4...)...)
	}
	var pkts []pkt
	add := func(f []byte) {
		pkts = append(pkts, pkt{ts: epoch.Add(time.Duration(len(pkts)) * time.Millisecond), frame: f})
	}
	for round := 0; round < 3; round++ {
		for p := uint16(8868); p <= 8881; p++ {
			add(frame(cli, srv, tcpSeg(p, 31600, "PA", 100)...))
			add(frame(srv, cli, tcpSeg(31600, p, "A", 0)...))
		}
	}
	add(frame(vtep, cli, udpDgram(0, 6081, 80)...))
	path := filepath.Join(t.TempDir(), "midstream.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, pkts)

	for _, tc := range []struct {
		local netip.Addr
		want  string
	}{
		{cli, "inbound udp/6081 172.16.30.77 inferred 1; outbound tcp/31600 172.16.30.10 inferred 84"},
		{srv, "inbound tcp/31600 172.16.30.190 inferred 84"},
	} {
		res, err := Run(context.Background(), c, path, Options{Local: []netip.Prefix{netip.PrefixFrom(tc.local, 32)}})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range res.Snapshot.Flows {
			if f.Peer == vtep && tc.local == srv {
				continue // not the server's traffic
			}
			got = append(got, fmt.Sprintf("%s %s/%d %s inferred %d", f.Direction, f.Proto, f.Port, f.Peer, f.Packets()))
			if !f.DirectionInferred {
				got[len(got)-1] = strings.Replace(got[len(got)-1], "inferred", "decided", 1)
			}
		}
		if strings.Join(got, "; ") != tc.want {
			t.Errorf("local %s: flows\n %s\nwant\n %s", tc.local, strings.Join(got, "\n "), tc.want)
		}
		if res.ServiceHints < 1 {
			t.Errorf("local %s: %d service hints loaded", tc.local, res.ServiceHints)
		}
	}
}

func isTCP(l gopacket.SerializableLayer) bool { _, ok := l.(*layers.TCP); return ok }

// TestReplayEncapsulations: the same traffic inside a PPPoE session over
// QinQ, and under an MPLS label stack, gives the flows of the plain
// Ethernet capture (local addresses are found inside the encapsulation).
func TestReplayEncapsulations(t *testing.T) {
	c := openCollector(t)
	var ipOnly []pkt
	for _, p := range synthTraffic(t, 4, 90, 5*time.Second) {
		if et := binary.BigEndian.Uint16(p.frame[12:14]); (et == 0x0800 || et == 0x86dd) && len(p.frame) >= 54 && len(p.frame) <= MaxFrame-16 {
			ipOnly = append(ipOnly, p)
		}
	}
	dir := t.TempDir()
	eth := filepath.Join(dir, "eth.pcap")
	writePcap(t, eth, layers.LinkTypeEthernet, ipOnly)
	wrap := func(name string, f func(et uint16) []byte) string {
		var out []pkt
		for _, p := range ipOnly {
			hdr := append(append([]byte(nil), p.frame[:12]...), f(binary.BigEndian.Uint16(p.frame[12:14]))...)
			out = append(out, pkt{ts: p.ts, frame: append(hdr, p.frame[14:]...)})
		}
		path := filepath.Join(dir, name)
		writePcap(t, path, layers.LinkTypeEthernet, out)
		return path
	}
	pppoe := wrap("pppoe-qinq.pcap", func(et uint16) []byte {
		ppp := uint16(0x0021)
		if et == 0x86dd {
			ppp = 0x0057
		}
		return []byte{0x88, 0xa8, 0, 100, 0x81, 0x00, 0, 200, 0x88, 0x64, 0x11, 0, 0x12, 0x34, 0, 0, byte(ppp >> 8), byte(ppp)}
	})
	mpls := wrap("mpls.pcap", func(uint16) []byte {
		return []byte{0x88, 0x47, 0, 0x10, 0x00, 0x40, 0, 0x11, 0x01, 0x40}
	})
	want, err := Run(context.Background(), c, eth, Options{Local: localPrefixes})
	if err != nil {
		t.Fatal(err)
	}
	// Flows without byte counts; the bytes differ by the headers added.
	noBytes := func(fs []snapshot.Flow) (out []snapshot.Flow, bytes uint64) {
		for _, f := range fs {
			bytes += f.Bytes()
			f.BytesIn, f.BytesOut = 0, 0
			out = append(out, f)
		}
		return out, bytes
	}
	wantFlows, wantBytes := noBytes(want.Snapshot.Flows)
	for path, extra := range map[string]uint64{pppoe: 16, mpls: 8} {
		got, err := Run(context.Background(), c, path, Options{Local: localPrefixes})
		if err != nil {
			t.Fatal(err)
		}
		gotFlows, gotBytes := noBytes(got.Snapshot.Flows)
		if gotBytes != wantBytes+extra*uint64(len(ipOnly)) {
			t.Errorf("%s: %d bytes, want %d + %d per frame", filepath.Base(path), gotBytes, wantBytes, extra)
		}
		if d := diffText(flowsText(wantFlows), flowsText(gotFlows)); d != "" {
			t.Errorf("%s: flows differ from the Ethernet capture's:\n%s", filepath.Base(path), d)
		}
		if got.Snapshot.Stats.PacketsEgress != want.Snapshot.Stats.PacketsEgress || len(got.Snapshot.Stats.NonIP) != 0 {
			t.Errorf("%s: egress %d (want %d), non-IP %v", filepath.Base(path), got.Snapshot.Stats.PacketsEgress,
				want.Snapshot.Stats.PacketsEgress, got.Snapshot.Stats.NonIP)
		}
	}
}
