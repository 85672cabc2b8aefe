package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// Verdicts: the programs must pass every packet.
const (
	xdpPass = 2          // XDP_PASS
	tcxNext = 0xffffffff // TCX_NEXT (-1)
)

// key is the part of a flow the parser decides, plus its counters.
type key struct {
	dir      snapshot.Direction
	proto    snapshot.Proto
	port     uint16
	peer     netip.Addr
	inferred bool
	frag     bool
}

// keyOf is a flow's key.
func keyOf(f snapshot.Flow) key {
	return key{dir: f.Direction, proto: f.Proto, port: f.Port, peer: f.Peer, inferred: f.DirectionInferred, frag: f.Fragment}
}

func (k key) String() string {
	s := fmt.Sprintf("%s %s/%d %s", k.dir, k.proto, k.port, k.peer)
	if k.inferred {
		s += " inferred"
	}
	if k.frag {
		s += " frag"
	}
	return s
}

type counts struct {
	pin, pout uint64
	ev        snapshot.Evidence
}

type sent struct {
	hook  Hook
	frame []byte
}

// ingress/egress send a frame through XDP / TC egress. The TC ingress
// program shares the parser; testParserTC runs every case through it.
func ingress(f []byte) sent { return sent{HookXDP, f} }
func egress(f []byte) sent  { return sent{HookTCEgress, f} }

type parserCase struct {
	name  string
	local []snapshot.Socket // local services known from sock_diag
	pkts  []sent
	want  map[key]counts
	nonIP map[string]uint64 // ethertype → packets
	trunc uint64            // packets counted as truncated
	// xdpOnly: BPF_PROG_TEST_RUN for skb programs rejects frames shorter
	// than their L3 header (EINVAL), so the TC variant cannot feed them.
	xdpOnly bool
	// hints: fan-in hints, as replay loads them.
	hints []ServiceHint
}

func k4(dir snapshot.Direction, p snapshot.Proto, port uint16) key {
	return key{dir: dir, proto: p, port: port, peer: peer4}
}

func k6(dir snapshot.Direction, p snapshot.Proto, port uint16) key {
	return key{dir: dir, proto: p, port: port, peer: peer6}
}

func (k key) inf() key   { k.inferred = true; return k }
func (k key) frg() key   { k.frag = true; return k }
func pi(n uint64) counts { return counts{pin: n} }

const (
	in_  = snapshot.Inbound
	out_ = snapshot.Outbound
	unk  = snapshot.Unknown
)

func parserCases(t *testing.T) []parserCase {
	synIn22 := tcp4(t, in, 40000, 22, fSYN)
	udpIn161 := udp4(t, in, 41000, 161)
	udpOut2055 := udp4(t, out, 40001, 2055)
	udp6In161 := udp6(t, in, 41000, 161)
	ip4opts := func(ihl uint8) []byte {
		ip := ip4(in, layers.IPProtocolTCP)
		for i := 0; i < 4*(int(ihl)-5)-1; i++ {
			ip.Options = append(ip.Options, layers.IPv4Option{OptionType: 1, OptionLength: 1}) // NOPs
		}
		ip.Options = append(ip.Options, layers.IPv4Option{OptionType: 0, OptionLength: 1})
		f := serialize(t, eth(in, layers.EthernetTypeIPv4), ip, tcp(40000, 8443, fSYN))
		if got := f[14] & 0x0f; got != ihl {
			t.Fatalf("crafted IHL %d, want %d", got, ihl)
		}
		return f
	}
	frag4 := func(offset uint16, mf bool, payload gopacket.SerializableLayer) []byte {
		ip := ip4(in, layers.IPProtocolUDP)
		ip.FragOffset = offset
		if mf {
			ip.Flags = layers.IPv4MoreFragments
		}
		return serialize(t, eth(in, layers.EthernetTypeIPv4), ip, payload)
	}
	ipv6Ext := func(chain ...gopacket.SerializableLayer) []byte {
		ls := append([]gopacket.SerializableLayer{eth(in, layers.EthernetTypeIPv6)}, chain...)
		return serialize(t, ls...)
	}
	raw4 := func(proto layers.IPProtocol, payload []byte) []byte {
		return serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(in, proto), gopacket.Payload(payload))
	}
	qinq := serialize(t, &layers.Ethernet{SrcMAC: macPeer, DstMAC: macLocal, EthernetType: layers.EthernetTypeQinQ},
		&layers.Dot1Q{VLANIdentifier: 100, Type: layers.EthernetTypeDot1Q}, vlan(200, layers.EthernetTypeIPv4),
		ip4(in, layers.IPProtocolTCP), tcp(40000, 443, fSYN))
	tripleTag := serialize(t, &layers.Ethernet{SrcMAC: macPeer, DstMAC: macLocal, EthernetType: layers.EthernetTypeDot1Q},
		vlan(1, layers.EthernetTypeDot1Q), vlan(2, layers.EthernetTypeDot1Q), vlan(3, layers.EthernetTypeIPv4),
		ip4(in, layers.IPProtocolTCP), tcp(40000, 443, fSYN))
	arp := serialize(t, &layers.Ethernet{SrcMAC: macPeer, DstMAC: macLocal, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: 1, SourceHwAddress: macPeer, SourceProtAddress: peer4.AsSlice(), DstHwAddress: make([]byte, 6), DstProtAddress: local4.AsSlice()})
	sctp := func(w wire, s, d uint16) []byte {
		return serialize(t, eth(w, layers.EthernetTypeIPv4), ip4(w, layers.IPProtocolSCTP),
			&layers.SCTP{SrcPort: layers.SCTPPort(s), DstPort: layers.SCTPPort(d)}, gopacket.Payload(make([]byte, 16)))
	}
	full := tcp4(t, in, 40000, 22, fSYN)
	// PPPoE session: ver/type 0x11, code 0, session 1, a length, the PPP protocol.
	pppoe := func(w wire, ppp uint16, tags []uint16, inner ...gopacket.SerializableLayer) []byte {
		et := layers.EthernetType(0x8864)
		ls := []gopacket.SerializableLayer{}
		for i := len(tags) - 1; i >= 0; i-- {
			ls = append([]gopacket.SerializableLayer{vlan(tags[i], et)}, ls...)
			et = layers.EthernetTypeDot1Q
			if i == 0 && len(tags) == 2 {
				et = layers.EthernetTypeQinQ
			}
		}
		ls = append([]gopacket.SerializableLayer{eth(w, et)}, ls...)
		ls = append(ls, gopacket.Payload{0x11, 0, 0, 1, 0, 40, byte(ppp >> 8), byte(ppp)})
		return serialize(t, append(ls, inner...)...)
	}
	// MPLS: labels 100, 101, …, the last one bottom of stack.
	mpls := func(w wire, labels int, inner ...gopacket.SerializableLayer) []byte {
		var stack gopacket.Payload
		for i := 0; i < labels; i++ {
			lse := uint32(100+i)<<12 | 64
			if i == labels-1 {
				lse |= 0x100
			}
			stack = binary.BigEndian.AppendUint32(stack, lse)
		}
		return serialize(t, append([]gopacket.SerializableLayer{eth(w, layers.EthernetTypeMPLSUnicast), stack}, inner...)...)
	}
	pppoeSyn := pppoe(in, 0x0021, nil, ip4(in, layers.IPProtocolTCP), tcp(40000, 22, fSYN))
	hint := func(a netip.Addr, p snapshot.Proto, port uint16, fan uint32) ServiceHint {
		return ServiceHint{Proto: p, Addr: a, Port: port, Fan: fan}
	}

	return []parserCase{
		{name: "ipv4 tcp syn to a service", pkts: []sent{ingress(synIn22)},
			want: map[key]counts{k4(in_, snapshot.TCP, 22): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "ipv4 tcp handshake and data, inbound",
			pkts: []sent{ingress(synIn22), egress(tcp4(t, out, 22, 40000, fSYNACK)), ingress(tcp4(t, in, 40000, 22, fACK)),
				egress(tcp4(t, out, 22, 40000, fPSHACK)), ingress(tcp4(t, in, 40000, 22, fACK))},
			want: map[key]counts{k4(in_, snapshot.TCP, 22): {pin: 3, pout: 2, ev: snapshot.Evidence{SynIn: 1, SynAckOut: 1}}}},
		{name: "closed port: SYN in, RST out",
			pkts: []sent{ingress(tcp4(t, in, 40000, 6379, fSYN)), egress(tcp4(t, out, 6379, 40000, fRSTACK))},
			want: map[key]counts{k4(in_, snapshot.TCP, 6379): {pin: 1, pout: 1, ev: snapshot.Evidence{SynIn: 1, RstOut: 1}}}},
		{name: "filtered port: SYN in, nothing back",
			pkts: []sent{ingress(tcp4(t, in, 40000, 9001, fSYN)), ingress(tcp4(t, in, 40000, 9001, fSYN))},
			want: map[key]counts{k4(in_, snapshot.TCP, 9001): {pin: 2, ev: snapshot.Evidence{SynIn: 2}}}},
		{name: "outbound connection",
			pkts: []sent{egress(tcp4(t, out, 50000, 443, fSYN)), ingress(tcp4(t, in, 443, 50000, fSYNACK)),
				egress(tcp4(t, out, 50000, 443, fACK)), ingress(tcp4(t, in, 443, 50000, fPSHACK))},
			want: map[key]counts{k4(out_, snapshot.TCP, 443): {pin: 2, pout: 2, ev: snapshot.Evidence{SynOut: 1, SynAckIn: 1}}}},
		{name: "outbound connection refused",
			pkts: []sent{egress(tcp4(t, out, 50000, 50052, fSYN)), ingress(tcp4(t, in, 50052, 50000, fRSTACK))},
			want: map[key]counts{k4(out_, snapshot.TCP, 50052): {pin: 1, pout: 1, ev: snapshot.Evidence{SynOut: 1, RstIn: 1}}}},
		{name: "mid-stream tcp, no socket known: heuristic, flagged",
			pkts: []sent{ingress(tcp4(t, in, 443, 50000, fACK)), egress(tcp4(t, out, 50000, 443, fACK))},
			want: map[key]counts{k4(out_, snapshot.TCP, 443).inf(): {pin: 1, pout: 1}}},
		{name: "mid-stream tcp to a known listener (ephemeral-range service port)",
			local: []snapshot.Socket{{Proto: snapshot.TCP, Port: 50051}},
			pkts:  []sent{ingress(tcp4(t, in, 40000, 50051, fPSHACK)), egress(tcp4(t, out, 50051, 40000, fACK))},
			want:  map[key]counts{k4(in_, snapshot.TCP, 50051): {pin: 1, pout: 1}}},
		{name: "mid-stream tcp, both ports high: lower port is the service, flagged",
			pkts: []sent{ingress(tcp4(t, in, 61000, 9000, fACK))},
			want: map[key]counts{k4(in_, snapshot.TCP, 9000).inf(): pi(1)}},
		{name: "udp client: we send first, reply joins the flow",
			pkts: []sent{egress(udp4(t, out, 40001, 53)), ingress(udp4(t, in, 53, 40001))},
			want: map[key]counts{k4(out_, snapshot.UDP, 53): {pin: 1, pout: 1}}},
		{name: "udp service known from sock_diag",
			local: []snapshot.Socket{{Proto: snapshot.UDP, Port: 514}},
			pkts:  []sent{ingress(udp4(t, in, 41000, 514)), ingress(udp4(t, in, 41001, 514))},
			want:  map[key]counts{k4(in_, snapshot.UDP, 514): pi(2)}},
		{name: "udp answered by an unknown service: the guess is remembered, the answer joins",
			pkts: []sent{ingress(udp4(t, in, 41000, 514)), egress(udp4(t, out, 514, 41000)), ingress(udp4(t, in, 41000, 514))},
			want: map[key]counts{k4(in_, snapshot.UDP, 514).inf(): {pin: 2, pout: 1}}},
		{name: "udp to a port without socket: inbound, flagged",
			pkts: []sent{ingress(udpIn161)},
			want: map[key]counts{k4(in_, snapshot.UDP, 161).inf(): pi(1)}},
		{name: "icmp port unreachable out is closed evidence on the udp flow",
			pkts: []sent{ingress(udpIn161), egress(icmp4Err(t, out, 3, udpIn161))},
			want: map[key]counts{
				k4(in_, snapshot.UDP, 161).inf(): {pin: 1, ev: snapshot.Evidence{ICMPClosedOut: 1}},
				k4(unk, snapshot.ICMP, 0x0303):   {pout: 1},
			}},
		{name: "icmp admin-prohibited in is filtered evidence on our outbound flow",
			pkts: []sent{egress(udpOut2055), ingress(icmp4Err(t, in, 13, udpOut2055))},
			want: map[key]counts{
				k4(out_, snapshot.UDP, 2055):   {pout: 1, ev: snapshot.Evidence{ICMPFilteredIn: 1}},
				k4(unk, snapshot.ICMP, 0x030d): {pin: 1},
			}},
		{name: "icmp error quoting tcp to a closed port",
			pkts: []sent{ingress(full), egress(icmp4Err(t, out, 3, full))},
			want: map[key]counts{
				k4(in_, snapshot.TCP, 22):      {pin: 1, ev: snapshot.Evidence{SynIn: 1, ICMPClosedOut: 1}},
				k4(unk, snapshot.ICMP, 0x0303): {pout: 1},
			}},
		{name: "icmpv6 port unreachable out",
			pkts: []sent{ingress(udp6In161), egress(icmp6Err(t, out, 4, udp6In161))},
			want: map[key]counts{
				k6(in_, snapshot.UDP, 161).inf(): {pin: 1, ev: snapshot.Evidence{ICMPClosedOut: 1}},
				k6(unk, snapshot.ICMPv6, 0x0104): {pout: 1},
			}},
		{name: "icmp echo in and reply out share a key",
			pkts: []sent{ingress(echo4(t, in, 8)), egress(echo4(t, out, 0))},
			want: map[key]counts{k4(in_, snapshot.ICMP, 0x0800): {pin: 1, pout: 1}}},
		{name: "icmpv6 echo out and reply in",
			pkts: []sent{egress(echo6(t, out, 128)), ingress(echo6(t, in, 129))},
			want: map[key]counts{k6(out_, snapshot.ICMPv6, 0x8000): {pin: 1, pout: 1}}},
		{name: "ipv4 options ihl 6", pkts: []sent{ingress(ip4opts(6))},
			want: map[key]counts{k4(in_, snapshot.TCP, 8443): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "ipv4 options ihl 15", pkts: []sent{ingress(ip4opts(15))},
			want: map[key]counts{k4(in_, snapshot.TCP, 8443): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "ipv4 first fragment has ports", pkts: []sent{ingress(frag4(0, true, udp(41000, 514)))},
			want: map[key]counts{k4(in_, snapshot.UDP, 514).inf(): pi(1)}},
		{name: "ipv4 non-first fragment: port 0, fragment flag",
			pkts: []sent{ingress(frag4(185, false, gopacket.Payload(make([]byte, 40))))},
			want: map[key]counts{k4(unk, snapshot.UDP, 0).frg(): pi(1)}},
		{name: "ipv6 tcp after hop-by-hop and destination options",
			pkts: []sent{ingress(ipv6Ext(ip6(in, layers.IPProtocolIPv6HopByHop), ext6(layers.IPProtocolIPv6Destination, 0),
				ext6(layers.IPProtocolTCP, 1), tcp(40000, 443, fSYN)))},
			want: map[key]counts{k6(in_, snapshot.TCP, 443): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "ipv6 routing header then udp",
			pkts: []sent{ingress(ipv6Ext(ip6(in, layers.IPProtocolIPv6Routing), ext6(layers.IPProtocolUDP, 2), udp(41000, 514)))},
			want: map[key]counts{k6(in_, snapshot.UDP, 514).inf(): pi(1)}},
		{name: "ipv6 first fragment has ports",
			pkts: []sent{ingress(ipv6Ext(ip6(in, layers.IPProtocolIPv6Fragment), frag6(layers.IPProtocolUDP, 0, true), udp(41000, 4739)))},
			want: map[key]counts{k6(in_, snapshot.UDP, 4739).inf(): pi(1)}},
		{name: "ipv6 non-first fragment",
			pkts: []sent{ingress(ipv6Ext(ip6(in, layers.IPProtocolIPv6Fragment), frag6(layers.IPProtocolUDP, 100, false), gopacket.Payload(make([]byte, 24))))},
			want: map[key]counts{k6(unk, snapshot.UDP, 0).frg(): pi(1)}},
		{name: "ipv6 six extension headers (the cap is 8)",
			pkts: []sent{ingress(ipv6Ext(ip6(in, layers.IPProtocolIPv6HopByHop), ext6(layers.IPProtocolIPv6Destination, 0),
				ext6(layers.IPProtocolIPv6Routing, 0), ext6(layers.IPProtocolIPv6Destination, 0), ext6(layers.IPProtocolIPv6Destination, 0),
				ext6(layers.IPProtocolIPv6Fragment, 0), frag6(layers.IPProtocolTCP, 0, false), tcp(40000, 22, fSYN)))},
			want: map[key]counts{k6(in_, snapshot.TCP, 22): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "ipv6 nine extension headers: over the cap, counted portless",
			pkts: []sent{ingress(ipv6Ext(ip6(in, layers.IPProtocolIPv6Destination), ext6(layers.IPProtocolIPv6Destination, 0),
				ext6(layers.IPProtocolIPv6Destination, 0), ext6(layers.IPProtocolIPv6Destination, 0), ext6(layers.IPProtocolIPv6Destination, 0),
				ext6(layers.IPProtocolIPv6Destination, 0), ext6(layers.IPProtocolIPv6Destination, 0), ext6(layers.IPProtocolIPv6Destination, 0),
				ext6(layers.IPProtocolIPv6Destination, 0), ext6(layers.IPProtocolTCP, 0), tcp(40000, 22, fSYN)))},
			want:  map[key]counts{k6(unk, snapshot.Proto(60), 0): pi(1)},
			trunc: 1},
		{name: "vlan tagged", pkts: []sent{ingress(serialize(t, eth(in, layers.EthernetTypeDot1Q), vlan(10, layers.EthernetTypeIPv4),
			ip4(in, layers.IPProtocolUDP), udp(41000, 514)))},
			want: map[key]counts{k4(in_, snapshot.UDP, 514).inf(): pi(1)}},
		{name: "qinq 802.1ad + 802.1Q", pkts: []sent{ingress(qinq)},
			want: map[key]counts{k4(in_, snapshot.TCP, 443): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "three vlan tags: beyond the cap, non-IP", pkts: []sent{ingress(tripleTag)},
			nonIP: map[string]uint64{"0x8100": 1}},
		{name: "gre (wccp)", pkts: []sent{ingress(serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(in, layers.IPProtocolGRE),
			&layers.GRE{Protocol: layers.EthernetType(0x883e)}, gopacket.Payload(make([]byte, 8))))},
			want: map[key]counts{k4(unk, snapshot.GRE, 0): pi(1)}},
		{name: "esp and ah by protocol number",
			pkts: []sent{ingress(raw4(layers.IPProtocolESP, make([]byte, 16))), ingress(raw4(layers.IPProtocolAH, make([]byte, 16)))},
			want: map[key]counts{k4(unk, snapshot.ESP, 0): pi(1), k4(unk, snapshot.AH, 0): pi(1)}},
		{name: "sctp ports", pkts: []sent{egress(sctp(out, 40000, 3868)), ingress(sctp(in, 3868, 40000))},
			want: map[key]counts{k4(out_, snapshot.SCTP, 3868): {pin: 1, pout: 1}}},
		{name: "arp is counted by ethertype", pkts: []sent{ingress(arp)}, nonIP: map[string]uint64{"0x0806": 1}},
		{name: "truncated: ipv4 header cut", pkts: []sent{ingress(full[:14+12])},
			nonIP: map[string]uint64{"0x0800": 1}, trunc: 1, xdpOnly: true},
		{name: "truncated: ipv4 ihl below 5", pkts: []sent{ingress(func() []byte { f := append([]byte(nil), full...); f[14] = 0x44; return f }())},
			nonIP: map[string]uint64{"0x0800": 1}, trunc: 1},
		{name: "truncated: tcp with 2 bytes", pkts: []sent{ingress(full[:14+20+2])},
			want: map[key]counts{k4(unk, snapshot.TCP, 0): pi(1)}, trunc: 1},
		{name: "truncated: tcp ports but no flags (snaplen)", pkts: []sent{ingress(full[:14+20+8])},
			want: map[key]counts{k4(in_, snapshot.TCP, 22).inf(): pi(1)}, trunc: 1},
		{name: "truncated: udp ports only", pkts: []sent{ingress(udpIn161[:14+20+4])},
			want: map[key]counts{k4(in_, snapshot.UDP, 161).inf(): pi(1)}},
		{name: "truncated: ipv6 header cut", pkts: []sent{ingress(tcp6(t, in, 40000, 22, fSYN)[:14+30])},
			nonIP: map[string]uint64{"0x86dd": 1}, trunc: 1, xdpOnly: true},
		{name: "truncated: ipv6 extension header cut",
			pkts: []sent{ingress(ipv6Ext(ip6(in, layers.IPProtocolIPv6HopByHop), ext6(layers.IPProtocolTCP, 0))[:14+40+1])},
			want: map[key]counts{k6(unk, snapshot.Proto(0), 0): pi(1)}, trunc: 1},
		{name: "truncated: icmp error quote cut",
			pkts: []sent{egress(icmp4Err(t, out, 3, udpIn161[:14+10]))},
			want: map[key]counts{k4(unk, snapshot.ICMP, 0x0303): {pout: 1}}},
		{name: "truncated: ethernet only", pkts: []sent{ingress(full[:14])},
			nonIP: map[string]uint64{"0x0800": 1}, trunc: 1, xdpOnly: true},
		{name: "malformed: ipv4 ethertype, version 6 (ip_rcv drops it)",
			pkts:  []sent{ingress(func() []byte { f := append([]byte(nil), full...); f[14] = 0x65; return f }())},
			nonIP: map[string]uint64{"0x0800": 1}, trunc: 1},
		{name: "malformed: ipv6 ethertype, version 0",
			pkts: []sent{ingress(func() []byte {
				f := tcp6(t, in, 40000, 22, fSYN)
				f[14] &= 0x0f
				return f
			}())},
			nonIP: map[string]uint64{"0x86dd": 1}, trunc: 1},
		{name: "pppoe session, ipv4 tcp syn in", pkts: []sent{ingress(pppoeSyn)},
			want: map[key]counts{k4(in_, snapshot.TCP, 22): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "pppoe session over qinq, ipv6 udp out and its answer",
			pkts: []sent{egress(pppoe(out, 0x0057, []uint16{100, 200}, ip6(out, layers.IPProtocolUDP), udp(40001, 53), gopacket.Payload("q"))),
				ingress(pppoe(in, 0x0057, []uint16{100, 200}, ip6(in, layers.IPProtocolUDP), udp(53, 40001), gopacket.Payload("a")))},
			want: map[key]counts{k6(out_, snapshot.UDP, 53): {pin: 1, pout: 1}}},
		{name: "pppoe session, lcp: non-IP under 0x8864",
			pkts:  []sent{ingress(pppoe(in, 0xc021, nil, gopacket.Payload{1, 1, 0, 4}))},
			nonIP: map[string]uint64{"0x8864": 1}},
		{name: "pppoe discovery (0x8863) is not a session",
			pkts:  []sent{ingress(serialize(t, eth(in, layers.EthernetType(0x8863)), gopacket.Payload{0x11, 0x09, 0, 0, 0, 0}))},
			nonIP: map[string]uint64{"0x8863": 1}},
		{name: "pppoe with code 0x09 (PADI) under the session ethertype: not IP",
			pkts:  []sent{ingress(func() []byte { f := append([]byte(nil), pppoeSyn...); f[15] = 0x09; return f }())},
			nonIP: map[string]uint64{"0x8864": 1}},
		{name: "truncated: pppoe header cut", pkts: []sent{ingress(pppoeSyn[:14+6])},
			nonIP: map[string]uint64{"0x8864": 1}, trunc: 1},
		{name: "truncated: ipv4 header cut inside pppoe", pkts: []sent{ingress(pppoeSyn[:14+8+12])},
			nonIP: map[string]uint64{"0x8864": 1}, trunc: 1},
		{name: "mpls one label, ipv4 tcp syn in",
			pkts: []sent{ingress(mpls(in, 1, ip4(in, layers.IPProtocolTCP), tcp(40000, 443, fSYN)))},
			want: map[key]counts{k4(in_, snapshot.TCP, 443): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "mpls eight labels (the cap), ipv6 udp",
			pkts: []sent{egress(mpls(out, 8, ip6(out, layers.IPProtocolUDP), udp(40001, 514), gopacket.Payload("x")))},
			want: map[key]counts{k6(out_, snapshot.UDP, 514): {pout: 1}}},
		{name: "mpls nine labels: beyond the cap, non-IP",
			pkts:  []sent{ingress(mpls(in, 9, ip4(in, layers.IPProtocolTCP), tcp(40000, 443, fSYN)))},
			nonIP: map[string]uint64{"0x8847": 1}},
		{name: "mpls pseudowire control word (first nibble 0): non-IP",
			pkts:  []sent{ingress(mpls(in, 2, gopacket.Payload{0, 0, 0, 1}, eth(in, layers.EthernetTypeIPv4), ip4(in, layers.IPProtocolTCP), tcp(40000, 443, fSYN)))},
			nonIP: map[string]uint64{"0x8847": 1}},
		{name: "mpls inside a vlan",
			pkts: []sent{ingress(serialize(t, eth(in, layers.EthernetTypeDot1Q), vlan(7, layers.EthernetTypeMPLSUnicast),
				gopacket.Payload{0, 0x64, 0x11, 0x40}, ip4(in, layers.IPProtocolUDP), udp(41000, 514), gopacket.Payload("x")))},
			want: map[key]counts{k4(in_, snapshot.UDP, 514).inf(): pi(1)}},
		{name: "truncated: mpls stack cut before its bottom", pkts: []sent{ingress(mpls(in, 3, ip4(in, layers.IPProtocolTCP), tcp(40000, 443, fSYN))[:14+6])},
			nonIP: map[string]uint64{"0x8847": 1}, trunc: 1},
		{name: "port 0 is never the service: a reply from port 0 to a local ephemeral port",
			pkts: []sent{ingress(udp4(t, in, 0, 50000)), egress(udp4(t, out, 50000, 0))},
			want: map[key]counts{k4(in_, snapshot.UDP, 50000).inf(): {pin: 1, pout: 1}}},
		{name: "port 0 is never the service: we send to port 0 first",
			pkts: []sent{egress(udp4(t, out, 6081, 0))},
			want: map[key]counts{k4(in_, snapshot.UDP, 6081).inf(): {pout: 1}}},
		{name: "fan-in: the remote port that talked to many ports is the service (no handshake, both ports low)",
			hints: []ServiceHint{hint(peer4, snapshot.TCP, 31600, 12)},
			pkts:  []sent{ingress(tcp4(t, in, 31600, 8868, fPSHACK)), egress(tcp4(t, out, 8868, 31600, fACK))},
			want:  map[key]counts{k4(out_, snapshot.TCP, 31600).inf(): {pin: 1, pout: 1}}},
		{name: "fan-in: the local end with the larger fan-in is the service",
			hints: []ServiceHint{hint(local4, snapshot.UDP, 9000, 5), hint(peer4, snapshot.UDP, 2000, 2)},
			pkts:  []sent{ingress(udp4(t, in, 2000, 9000)), egress(udp4(t, out, 9000, 2000))},
			want:  map[key]counts{k4(in_, snapshot.UDP, 9000).inf(): {pin: 1, pout: 1}}},
		{name: "fan-in: equal fan-ins fall back to the lower port",
			hints: []ServiceHint{hint(local4, snapshot.TCP, 9000, 3), hint(peer4, snapshot.TCP, 2000, 3)},
			pkts:  []sent{ingress(tcp4(t, in, 9000, 2000, fACK))},
			want:  map[key]counts{k4(in_, snapshot.TCP, 2000).inf(): pi(1)}},
		{name: "fan-in: the ephemeral range decides first",
			hints: []ServiceHint{hint(peer4, snapshot.TCP, 50000, 40)},
			pkts:  []sent{ingress(tcp4(t, in, 50000, 22, fACK))},
			want:  map[key]counts{k4(in_, snapshot.TCP, 22).inf(): pi(1)}},
		{name: "fan-in: a handshake decides before any hint",
			hints: []ServiceHint{hint(peer4, snapshot.TCP, 31600, 12)},
			pkts:  []sent{ingress(tcp4(t, in, 31600, 8868, fSYN))},
			want:  map[key]counts{k4(in_, snapshot.TCP, 8868): {pin: 1, ev: snapshot.Evidence{SynIn: 1}}}},
		{name: "ipv6 mobility header is a protocol, not an extension header to walk over",
			pkts: []sent{ingress(ipv6Ext(ip6(in, layers.IPProtocol(135)), gopacket.Payload{59, 0, 5, 0, 0, 0, 0, 0}))},
			want: map[key]counts{k6(unk, snapshot.Proto(135), 0): pi(1)}},
	}
}

func TestParser(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range parserCases(t) {
		t.Run(tc.name, func(t *testing.T) { runParserCase(t, c, tc, nil) })
	}
}

// TestParserTCIngress runs every ingress packet through the TC ingress
// program instead of XDP: same parser, same expected keys.
func TestParserTCIngress(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range parserCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			if tc.xdpOnly {
				t.Skip("test_run rejects this truncated frame for skb programs")
			}
			runParserCase(t, c, tc, func(h Hook) Hook {
				if h == HookXDP {
					return HookTCIngress
				}
				return h
			})
		})
	}
}

func runParserCase(t *testing.T, c *Collector, tc parserCase, mapHook func(Hook) Hook) {
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetLocalPorts(tc.local); err != nil {
		t.Fatal(err)
	}
	if n, err := c.SetServiceHints(tc.hints); err != nil || n != len(tc.hints) {
		t.Fatalf("service hints: %d of %d loaded: %v", n, len(tc.hints), err)
	}
	var totalBytes uint64
	for i, p := range tc.pkts {
		h := p.hook
		if mapHook != nil {
			h = mapHook(h)
		}
		if len(p.frame) < 14 && h != HookXDP {
			t.Fatalf("packet %d: test_run needs a full Ethernet header on TC", i)
		}
		ret, err := c.Run(h, p.frame)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		want := uint32(xdpPass)
		if h != HookXDP {
			want = tcxNext
		}
		if ret != want {
			t.Fatalf("packet %d via %s: verdict %#x, want %#x (never drop)", i, h, ret, want)
		}
		totalBytes += uint64(len(p.frame))
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	got := map[key]counts{}
	var gotBytes uint64
	for _, f := range r.Flows {
		k := keyOf(f)
		if _, dup := got[k]; dup {
			t.Errorf("duplicate key %s", k)
		}
		got[k] = counts{pin: f.PacketsIn, pout: f.PacketsOut, ev: f.Evidence}
		gotBytes += f.BytesIn + f.BytesOut
	}
	want := tc.want
	if want == nil {
		want = map[key]counts{}
	}
	if diff := diffFlows(got, want); diff != "" {
		t.Errorf("flows differ (-missing +unexpected):\n%s", diff)
	}
	gotNonIP := map[string]uint64{}
	for et, ctr := range r.Stats.NonIP {
		gotNonIP[et] = ctr.Packets
		gotBytes += ctr.Bytes
	}
	if fmt.Sprint(gotNonIP) != fmt.Sprint(nonNil(tc.nonIP)) {
		t.Errorf("non-IP = %v, want %v", gotNonIP, tc.nonIP)
	}
	if gotBytes != totalBytes {
		t.Errorf("bytes accounted %d, sent %d", gotBytes, totalBytes)
	}
	if r.Stats.Truncated != tc.trunc {
		t.Errorf("truncated = %d, want %d", r.Stats.Truncated, tc.trunc)
	}
	if n := r.Stats.PacketsIngress + r.Stats.PacketsEgress; n != uint64(len(tc.pkts)) {
		t.Errorf("packets seen %d, sent %d", n, len(tc.pkts))
	}
	if r.Stats.FlowInsertFailed != 0 {
		t.Errorf("flow insert failures: %d", r.Stats.FlowInsertFailed)
	}
}

func nonNil(m map[string]uint64) map[string]uint64 {
	if m == nil {
		return map[string]uint64{}
	}
	return m
}

func diffFlows(got, want map[key]counts) string {
	var lines []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			lines = append(lines, fmt.Sprintf("- %s %+v", k, w))
		case g != w:
			lines = append(lines, fmt.Sprintf("- %s %+v\n+ %s %+v", k, w, k, g))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			lines = append(lines, fmt.Sprintf("+ %s %+v", k, g))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// socketsKnownCases: the live recorder keeps the local socket set complete
// (Options.SocketsKnown), so TCP direction needs no guess.
func socketsKnownCases(t *testing.T) []parserCase {
	return []parserCase{
		{name: "mid-stream tcp without listener: our connection, not a guess",
			pkts: []sent{ingress(tcp4(t, in, 443, 50000, fACK)), egress(tcp4(t, out, 50000, 443, fACK))},
			want: map[key]counts{k4(out_, snapshot.TCP, 443): {pin: 1, pout: 1}}},
		{name: "mid-stream tcp, both ports high, no listener: still ours",
			pkts: []sent{ingress(tcp4(t, in, 61000, 9000, fACK))},
			want: map[key]counts{k4(out_, snapshot.TCP, 61000): pi(1)}},
		{name: "mid-stream tcp to a listener",
			local: []snapshot.Socket{{Proto: snapshot.TCP, Port: 9000}},
			pkts:  []sent{ingress(tcp4(t, in, 61000, 9000, fACK)), egress(tcp4(t, out, 9000, 61000, fACK))},
			want:  map[key]counts{k4(in_, snapshot.TCP, 9000): {pin: 1, pout: 1}}},
		{name: "closed port: the RST out still answers the peer's SYN",
			pkts: []sent{ingress(tcp4(t, in, 40000, 6379, fSYN)), egress(tcp4(t, out, 6379, 40000, fRSTACK))},
			want: map[key]counts{k4(in_, snapshot.TCP, 6379): {pin: 1, pout: 1, ev: snapshot.Evidence{SynIn: 1, RstOut: 1}}}},
		{name: "outbound refused: SYN out and RST in share the flow",
			pkts: []sent{egress(tcp4(t, out, 50000, 50052, fSYN)), ingress(tcp4(t, in, 50052, 50000, fRSTACK))},
			want: map[key]counts{k4(out_, snapshot.TCP, 50052): {pin: 1, pout: 1, ev: snapshot.Evidence{SynOut: 1, RstIn: 1}}}},
		{name: "a SYN-ACK we send teaches a listener the refresh has not seen yet",
			pkts: []sent{ingress(tcp4(t, in, 40000, 8443, fSYN)), egress(tcp4(t, out, 8443, 40000, fSYNACK)),
				ingress(tcp4(t, in, 40000, 8443, fACK)), egress(tcp4(t, out, 8443, 40000, fPSHACK)),
				ingress(tcp4(t, in, 40001, 8443, fPSHACK))},
			want: map[key]counts{k4(in_, snapshot.TCP, 8443): {pin: 3, pout: 2, ev: snapshot.Evidence{SynIn: 1, SynAckOut: 1}}}},
		{name: "udp still uses the remembered orientation",
			pkts: []sent{egress(udp4(t, out, 40001, 53)), ingress(udp4(t, in, 53, 40001))},
			want: map[key]counts{k4(out_, snapshot.UDP, 53): {pin: 1, pout: 1}}},
	}
}

func TestParserSocketsKnown(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{EphemeralPorts: [2]uint16{32768, 60999}, SocketsKnown: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range socketsKnownCases(t) {
		t.Run(tc.name, func(t *testing.T) { runParserCase(t, c, tc, nil) })
	}
	// Every case of the main table that involves no TCP mid-stream guess
	// gives the same keys in this mode.
	for _, tc := range parserCases(t) {
		inferredTCP := false
		for k := range tc.want {
			if k.proto == snapshot.TCP && k.inferred {
				inferredTCP = true
			}
		}
		if inferredTCP {
			continue
		}
		t.Run("same/"+tc.name, func(t *testing.T) { runParserCase(t, c, tc, nil) })
	}
}
