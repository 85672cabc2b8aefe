package bpf

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// The header fast path (flowaudit.c, fast_take): a plain IPv4 TCP/UDP
// frame that looks like the one that stamped its CPU's cache slot is
// counted in the slot without being parsed. These tests hold it to "the
// counts are those of the whole path": by case, against the collector
// with the fast path off, and across changes of the local port set.

// fastCounts is what a read tells about one flow, times excluded (two
// collectors never read at the same jiffy).
type fastCounts struct {
	pin, pout, bin, bout uint64
	ev                   snapshot.Evidence
}

// readCounts reads c and returns its flows by key and its stats.
func readCounts(t *testing.T, c *Collector) (map[key]fastCounts, snapshot.Stats) {
	t.Helper()
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	got := map[key]fastCounts{}
	for _, f := range r.Flows {
		got[keyOf(f)] = fastCounts{f.PacketsIn, f.PacketsOut, f.BytesIn, f.BytesOut, f.Evidence}
	}
	return got, r.Stats
}

// TestFastPathTakesPlainFrames: ten copies of each frame on one CPU. The
// fast path takes the nine after the first exactly when the frame is plain
// IPv4 TCP/UDP without SYN or RST, not a DNS answer coming in, and its
// direction came from the local port set (a local service, or TCP with the
// socket set complete); the counts are those of the collector without it.
func TestFastPathTakesPlainFrames(t *testing.T) {
	testenv.RequireBPF(t)
	if !loadsInOrder {
		t.Skip("the fast path is off on this architecture")
	}
	onOneCPU(t)
	local := []snapshot.Socket{
		{Proto: snapshot.TCP, Addr: netip.IPv4Unspecified(), Port: 22},
		{Proto: snapshot.UDP, Addr: netip.IPv4Unspecified(), Port: 514},
		{Proto: snapshot.UDP, Addr: netip.IPv4Unspecified(), Port: 53},
	}
	udpPadded := func(w wire, sport, dport uint16) []byte {
		return serialize(t, eth(w, layers.EthernetTypeIPv4), ip4(w, layers.IPProtocolUDP), udp(sport, dport),
			gopacket.Payload(make([]byte, 18))) // a 60-byte frame, as on the wire
	}
	vlanUDP := serialize(t, eth(in, layers.EthernetTypeDot1Q), vlan(7, layers.EthernetTypeIPv4),
		ip4(in, layers.IPProtocolUDP), udp(41000, 514), gopacket.Payload("x"))
	optsIP := ip4(in, layers.IPProtocolTCP)
	optsIP.Options = []layers.IPv4Option{{OptionType: 1, OptionLength: 1}, {OptionType: 1, OptionLength: 1},
		{OptionType: 1, OptionLength: 1}, {OptionType: 0, OptionLength: 1}}
	optsTCP := serialize(t, eth(in, layers.EthernetTypeIPv4), optsIP, tcp(40000, 22, fACK))
	fragIP := ip4(in, layers.IPProtocolUDP)
	fragIP.FragOffset = 100
	frag := serialize(t, eth(in, layers.EthernetTypeIPv4), fragIP, gopacket.Payload(make([]byte, 16)))
	dns := serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(in, layers.IPProtocolUDP),
		withUDP(t, udp(53, 41000), ip4(in, layers.IPProtocolUDP)),
		gopacket.Payload(dnsAnswer(t, []string{"example.com"}, netip.MustParseAddr("203.0.113.7"))))
	ackIn := tcp4(t, in, 40000, 22, fACK)

	for _, tc := range []struct {
		name         string
		socketsKnown bool
		s            sent
		fast         bool
		dnsAnswers   uint64
	}{
		{"tcp ack to a local service", false, ingress(ackIn), true, 0},
		{"tcp ack from a local service", false, egress(tcp4(t, out, 22, 40000, fPSHACK)), true, 0},
		{"tcp ack to no service, sockets known", true, ingress(tcp4(t, in, 443, 40001, fACK)), true, 0},
		{"tcp ack to no service, sockets unknown", false, ingress(tcp4(t, in, 443, 40001, fACK)), false, 0},
		{"udp to a bound port, 43 bytes", false, ingress(udp4(t, in, 41000, 514)), true, 0},
		{"udp to a bound port, 60 bytes", false, ingress(udpPadded(in, 41000, 514)), true, 0},
		{"udp to no socket", true, ingress(udp4(t, in, 41000, 515)), false, 0},
		{"udp sent from no socket", true, egress(udp4(t, out, 41000, 123)), false, 0},
		{"dns answer to a bound port 53", true, ingress(dns), false, 10},
		{"syn to a local service", true, ingress(tcp4(t, in, 40000, 22, fSYN)), false, 0},
		{"syn-ack from a local service", true, egress(tcp4(t, out, 22, 40000, fSYNACK)), false, 0},
		{"rst to a local service", true, ingress(tcp4(t, in, 40000, 22, fRSTACK)), false, 0},
		{"vlan-tagged udp to a bound port", true, ingress(vlanUDP), false, 0},
		{"ipv4 options, tcp ack to a local service", true, ingress(optsTCP), false, 0},
		{"non-first fragment", true, ingress(frag), false, 0},
		{"ipv6 tcp ack to a local service", true, ingress(tcp6(t, in, 40000, 22, fACK)), false, 0},
		{"tcp ack cut before its flags", true, sent{HookXDP, ackIn[:14+20+13]}, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got [2]map[key]fastCounts
			var stats [2]snapshot.Stats
			for i, noFast := range []bool{false, true} {
				c, err := Open(Options{SocketsKnown: tc.socketsKnown, NoFastPath: noFast, EphemeralPorts: [2]uint16{32768, 60999}})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if err := c.SetLocalPorts(local); err != nil {
					t.Fatal(err)
				}
				runN(t, c, tc.s, 10)
				hits := c.FastPathHits()
				want := uint64(0)
				if tc.fast && !noFast {
					want = 9
				}
				if hits != want {
					t.Errorf("fast path off=%v: %d of 10 copies taken by the fast path, want %d", noFast, hits, want)
				}
				if n, err := c.Counters(); err != nil || n.FastPath != hits || n.PacketsIngress+n.PacketsEgress != 10 {
					t.Errorf("fast path off=%v: counters %+v (%v), want 10 packets, %d of them by the fast path", noFast, n, err, hits)
				}
				got[i], stats[i] = readCounts(t, c)
				d, err := c.DNS()
				if err != nil {
					t.Fatal(err)
				}
				if d.Answers != tc.dnsAnswers {
					t.Errorf("fast path off=%v: %d DNS answers handed over, want %d", noFast, d.Answers, tc.dnsAnswers)
				}
			}
			if fmt.Sprint(got[0]) != fmt.Sprint(got[1]) {
				t.Errorf("flows with the fast path %v\nwithout %v", got[0], got[1])
			}
			var n uint64
			for _, f := range got[0] {
				n += f.pin + f.pout
			}
			if n != 10 {
				t.Errorf("%d packets in flows, want 10: %v", n, got[0])
			}
			if stats[0].Truncated != stats[1].Truncated || stats[0].PacketsIngress+stats[0].PacketsEgress != 10 {
				t.Errorf("stats with the fast path %+v\nwithout %+v", stats[0], stats[1])
			}
		})
	}
}

// TestFastPathRepeatedParserCases runs every parser case with each packet
// sent five times in a row on one CPU, with and without the fast path,
// each case with its own local services and with every port it uses
// local, with and without the socket set complete: the flows, evidence,
// byte and truncation counts are the same both ways.
func TestFastPathRepeatedParserCases(t *testing.T) {
	testenv.RequireBPF(t)
	if !loadsInOrder {
		t.Skip("the fast path is off on this architecture")
	}
	onOneCPU(t)
	var open [2][2]*Collector // [socketsKnown][noFast]
	for sk := 0; sk < 2; sk++ {
		for nf := 0; nf < 2; nf++ {
			c, err := Open(Options{SocketsKnown: sk == 1, NoFastPath: nf == 1, EphemeralPorts: [2]uint16{32768, 60999}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			open[sk][nf] = c
		}
	}
	var hits uint64
	for _, tc := range parserCases(t) {
		for _, allLocal := range []bool{false, true} {
			local := tc.local
			if allLocal {
				local = append(append([]snapshot.Socket(nil), tc.local...), portsOf(tc.pkts)...)
			}
			for sk := 0; sk < 2; sk++ {
				t.Run(fmt.Sprintf("%s/all-local=%v/sockets-known=%v", tc.name, allLocal, sk == 1), func(t *testing.T) {
					var got [2]map[key]fastCounts
					var stats [2]snapshot.Stats
					for nf := 0; nf < 2; nf++ {
						c := open[sk][nf]
						if err := c.Reset(); err != nil {
							t.Fatal(err)
						}
						if err := c.SetLocalPorts(local); err != nil {
							t.Fatal(err)
						}
						if _, err := c.SetServiceHints(tc.hints); err != nil {
							t.Fatal(err)
						}
						for _, p := range tc.pkts {
							runN(t, c, p, 5)
						}
						if nf == 0 {
							hits += c.FastPathHits()
						} else if n := c.FastPathHits(); n != 0 {
							t.Errorf("%d fast-path hits with the fast path off", n)
						}
						got[nf], stats[nf] = readCounts(t, c)
					}
					if fmt.Sprint(got[0]) != fmt.Sprint(got[1]) {
						t.Errorf("flows with the fast path %v\nwithout %v", got[0], got[1])
					}
					if fmt.Sprint(stats[0].NonIP) != fmt.Sprint(stats[1].NonIP) || stats[0].Truncated != stats[1].Truncated ||
						stats[0].PacketsIngress != stats[1].PacketsIngress || stats[0].PacketsEgress != stats[1].PacketsEgress {
						t.Errorf("stats with the fast path %+v\nwithout %+v", stats[0], stats[1])
					}
				})
			}
		}
	}
	// Not vacuous: the cases with plain IPv4 TCP/UDP took the fast path.
	if hits == 0 {
		t.Error("the fast path took no packet in any case")
	}
	t.Logf("%d packets taken by the fast path", hits)
}

// portsOf returns a local TCP and UDP socket for both ports of every TCP
// and UDP packet (any address).
func portsOf(pkts []sent) []snapshot.Socket {
	var socks []snapshot.Socket
	for _, p := range pkts {
		pk := gopacket.NewPacket(p.frame, layers.LayerTypeEthernet, gopacket.NoCopy)
		if l := pk.Layer(layers.LayerTypeTCP); l != nil {
			tl := l.(*layers.TCP)
			for _, port := range []uint16{uint16(tl.SrcPort), uint16(tl.DstPort)} {
				socks = append(socks, snapshot.Socket{Proto: snapshot.TCP, Addr: netip.IPv4Unspecified(), Port: port})
			}
		}
		if l := pk.Layer(layers.LayerTypeUDP); l != nil {
			ul := l.(*layers.UDP)
			for _, port := range []uint16{uint16(ul.SrcPort), uint16(ul.DstPort)} {
				socks = append(socks, snapshot.Socket{Proto: snapshot.UDP, Addr: netip.IPv4Unspecified(), Port: port})
			}
		}
	}
	return socks
}

// TestFastPathFollowsLocalPorts: a stamped slot goes stale when the local
// port set changes, from userspace (SetLocalPorts) or from the programs (a
// SYN-ACK leaving a port without a known listener): the next segments of
// the same connection get the new direction, none the old.
func TestFastPathFollowsLocalPorts(t *testing.T) {
	testenv.RequireBPF(t)
	if !loadsInOrder {
		t.Skip("the fast path is off on this architecture")
	}
	onOneCPU(t)
	ack := tcp4(t, in, 40000, 9000, fACK) // peer:40000 → local:9000
	for _, how := range []string{"userspace", "kernel"} {
		t.Run(how, func(t *testing.T) {
			c := openSocketsKnown(t)
			// No listener on 9000: with the sockets known, this host is
			// the client of the peer's port 40000.
			runN(t, c, ingress(ack), 6)
			if h := c.FastPathHits(); h != 5 {
				t.Fatalf("%d of 6 segments taken by the fast path, want 5", h)
			}
			switch how {
			case "userspace":
				if err := c.SetLocalPorts([]snapshot.Socket{{Proto: snapshot.TCP, Addr: netip.IPv4Unspecified(), Port: 9000}}); err != nil {
					t.Fatal(err)
				}
			case "kernel":
				// A SYN-ACK from 9000 out: the programs learn a listener.
				runN(t, c, egress(tcp4(t, out, 9000, 40001, fSYNACK)), 1)
			}
			runN(t, c, ingress(ack), 4)
			if h := c.FastPathHits(); h != 5+3 {
				t.Errorf("%d segments taken by the fast path in all, want 8 (5, then 3 after a restamp)", h)
			}
			got, _ := readCounts(t, c)
			client := key{dir: out_, proto: snapshot.TCP, port: 40000, peer: peer4}
			server := key{dir: in_, proto: snapshot.TCP, port: 9000, peer: peer4}
			if got[client].pin != 6 || got[server].pin != 4 {
				t.Errorf("segments in as client of :40000 %d (want 6), to our :9000 %d (want 4); flows %v", got[client].pin, got[server].pin, got)
			}
		})
	}
}
