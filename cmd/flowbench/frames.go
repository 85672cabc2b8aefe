package main

import (
	"fmt"
	"github.com/flowaudit/flowaudit/bpf"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/dns/dnsmessage"
)

// Frames for the measurements, crafted with gopacket. Addresses are from
// the documentation ranges: the measured host is 192.0.2.10 /
// 2001:db8::10, the peer 198.51.100.7 / 2001:db8:1::7.
var (
	macLocal = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
	macPeer  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x20}
	local4   = netip.MustParseAddr("192.0.2.10")
	local6   = netip.MustParseAddr("2001:db8::10")
	peer4    = netip.MustParseAddr("198.51.100.7")
	peer6    = netip.MustParseAddr("2001:db8:1::7")
)

// packetCase is one kind of packet the per-packet cost is measured for.
type packetCase struct {
	name string
	// in is the frame as it arrives (XDP), out the frame this host sends
	// (TC egress).
	in, out []byte
	// listen, if set, is a local TCP port put into the listening-socket
	// set (as sock_diag would in a live recording) before measuring.
	listen uint16
	// coll is the collector the case is measured with.
	coll costCollector
}

// costCollector: how part 1 opens flowaudit for a case.
type costCollector int

const (
	// collLive: as a live recording runs it (the socket set complete).
	collLive costCollector = iota
	// collReplay: as replay runs it, with no socket set (Options.SocketsKnown false).
	collReplay
	// collNoFast: live, the header fast path off: every packet is parsed
	// and classified (part 1 repeats one frame, which the fast path would
	// otherwise take every time after the first).
	collNoFast
	// collNoCache: live, the flow cache (and with it the fast path) off:
	// every packet also looks its flow up in flows_N, as a packet of a
	// flow other than the last one on its CPU does.
	collNoCache
	numCollectors
)

// options returns the collector's bpf.Options.
func (cc costCollector) options(entries uint32) bpf.Options {
	return bpf.Options{FlowEntries: entries, EphemeralPorts: [2]uint16{32768, 60999}, SocketsKnown: cc != collReplay,
		NoFastPath: cc == collNoFast, NoFlowCache: cc == collNoCache}
}

func serialize(ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		panic(fmt.Sprintf("serialize: %v", err)) // only fixed, valid layer stacks are built here
	}
	return append([]byte(nil), buf.Bytes()...)
}

// endpoints of one direction: in = peer → local, out = local → peer.
type endpoints struct {
	srcMAC, dstMAC net.HardwareAddr
	src4, dst4     netip.Addr
	src6, dst6     netip.Addr
}

func dirOf(inbound bool) endpoints {
	if inbound {
		return endpoints{macPeer, macLocal, peer4, local4, peer6, local6}
	}
	return endpoints{macLocal, macPeer, local4, peer4, local6, peer6}
}

func (e endpoints) eth(t layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: e.srcMAC, DstMAC: e.dstMAC, EthernetType: t}
}

func (e endpoints) ip4(p layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 1, Flags: layers.IPv4DontFragment, Protocol: p,
		SrcIP: e.src4.AsSlice(), DstIP: e.dst4.AsSlice()}
}

func (e endpoints) ip6(next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: e.src6.AsSlice(), DstIP: e.dst6.AsSlice()}
}

// tcpAck is a mid-stream TCP segment (ACK, no SYN): the common case.
func tcpAck(sport, dport uint16) *layers.TCP {
	return &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), ACK: true, Seq: 1000, Ack: 2000,
		Window: 1024, DataOffset: 5}
}

func udpHdr(sport, dport uint16) *layers.UDP {
	return &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
}

// ext6 is an IPv6 hop-by-hop or destination-options header of 8 bytes
// (one PadN option filling it).
func ext6(next layers.IPProtocol) gopacket.Payload {
	return gopacket.Payload{byte(next), 0, 1, 4, 0, 0, 0, 0}
}

// withTCP serialises the layers with the TCP checksum computed over the
// right pseudo header.
func withTCP(net gopacket.NetworkLayer, t *layers.TCP) *layers.TCP {
	if err := t.SetNetworkLayerForChecksum(net); err != nil {
		panic(err)
	}
	return t
}

func withUDP(net gopacket.NetworkLayer, u *layers.UDP) *layers.UDP {
	if err := u.SetNetworkLayerForChecksum(net); err != nil {
		panic(err)
	}
	return u
}

// Ports: the peer is a client on 40000-41000 of a service on 9000 (TCP)
// or 514 (UDP syslog).
func ipv4TCP(inbound bool) []byte {
	e := dirOf(inbound)
	sp, dp := uint16(40000), uint16(9000)
	if !inbound {
		sp, dp = dp, sp
	}
	ip := e.ip4(layers.IPProtocolTCP)
	return serialize(e.eth(layers.EthernetTypeIPv4), ip, withTCP(ip, tcpAck(sp, dp)))
}

// ipv4TCPOutbound: a mid-stream segment of a connection this host opened
// (local port 50000 to the peer's 443).
func ipv4TCPOutbound(inbound bool) []byte {
	e := dirOf(inbound)
	sp, dp := uint16(443), uint16(50000)
	if !inbound {
		sp, dp = dp, sp
	}
	ip := e.ip4(layers.IPProtocolTCP)
	return serialize(e.eth(layers.EthernetTypeIPv4), ip, withTCP(ip, tcpAck(sp, dp)))
}

func ipv4UDP(inbound bool) []byte {
	e := dirOf(inbound)
	sp, dp := uint16(41000), uint16(514)
	if !inbound {
		sp, dp = dp, sp
	}
	ip := e.ip4(layers.IPProtocolUDP)
	return serialize(e.eth(layers.EthernetTypeIPv4), ip, withUDP(ip, udpHdr(sp, dp)), gopacket.Payload("<13>bench"))
}

// ipv4DNS: a DNS answer from the peer's port 53 (inbound, handed to
// userspace through the ring buffer: passive DNS) and the query this host
// sends (outbound, counted only).
func ipv4DNS(inbound bool) []byte {
	e := dirOf(inbound)
	sp, dp := uint16(53), uint16(41000)
	if !inbound {
		sp, dp = dp, sp
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, Response: inbound})
	b.EnableCompression()
	name := dnsmessage.MustNewName("data.example-vendor.com.")
	if err := b.StartQuestions(); err != nil {
		panic(err)
	}
	if err := b.Question(dnsmessage.Question{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		panic(err)
	}
	if inbound {
		if err := b.StartAnswers(); err != nil {
			panic(err)
		}
		if err := b.AResource(dnsmessage.ResourceHeader{Name: name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: [4]byte{203, 0, 113, 7}}); err != nil {
			panic(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		panic(err)
	}
	ip := e.ip4(layers.IPProtocolUDP)
	return serialize(e.eth(layers.EthernetTypeIPv4), ip, withUDP(ip, udpHdr(sp, dp)), gopacket.Payload(msg))
}

// ipv6TCPExt: hop-by-hop options, destination options, then TCP.
func ipv6TCPExt(inbound bool) []byte {
	e := dirOf(inbound)
	sp, dp := uint16(40000), uint16(9000)
	if !inbound {
		sp, dp = dp, sp
	}
	ip := e.ip6(layers.IPProtocolIPv6HopByHop)
	t := tcpAck(sp, dp)
	// TCP is serialised on its own, behind the raw extension headers; its
	// checksum covers the IPv6 pseudo header, which ignores them.
	if err := t.SetNetworkLayerForChecksum(ip); err != nil {
		panic(err)
	}
	tcpBytes := serialize(t)
	return serialize(e.eth(layers.EthernetTypeIPv6), ip,
		ext6(layers.IPProtocolIPv6Destination), ext6(layers.IPProtocolTCP), gopacket.Payload(tcpBytes))
}

// vlanTCP: one 802.1Q tag (VLAN 100) around IPv4 TCP.
func vlanTCP(inbound bool) []byte {
	e := dirOf(inbound)
	sp, dp := uint16(40000), uint16(9000)
	if !inbound {
		sp, dp = dp, sp
	}
	ip := e.ip4(layers.IPProtocolTCP)
	return serialize(e.eth(layers.EthernetTypeDot1Q), &layers.Dot1Q{VLANIdentifier: 100, Type: layers.EthernetTypeIPv4},
		ip, withTCP(ip, tcpAck(sp, dp)))
}

// fragment4: a non-first IPv4 fragment (offset 1480) of a UDP datagram.
func fragment4(inbound bool) []byte {
	e := dirOf(inbound)
	ip := e.ip4(layers.IPProtocolUDP)
	ip.Flags = layers.IPv4MoreFragments
	ip.FragOffset = 1480 / 8
	return serialize(e.eth(layers.EthernetTypeIPv4), ip, gopacket.Payload(make([]byte, 32)))
}

// icmpPortUnreach: destination unreachable / port unreachable quoting the
// UDP datagram it answers. Arriving (XDP): the peer refuses our datagram
// to its port 514. Leaving (TC egress): we refuse the peer's datagram to
// our port 9999.
func icmpPortUnreach(inbound bool) []byte {
	e := dirOf(inbound)
	// The quoted datagram travelled the other way.
	q := dirOf(!inbound)
	sp, dp := uint16(41000), uint16(514)
	if !inbound {
		dp = 9999
	}
	qip := q.ip4(layers.IPProtocolUDP)
	quoted := serialize(qip, withUDP(qip, udpHdr(sp, dp)), gopacket.Payload("<13>bench"))
	return serialize(e.eth(layers.EthernetTypeIPv4), e.ip4(layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)},
		gopacket.Payload(quoted))
}

// packetCases lists the measured packet kinds in table order.
func packetCases() []packetCase {
	var out []packetCase
	for _, c := range []struct {
		name   string
		fn     func(bool) []byte
		listen uint16
		coll   costCollector
	}{
		{"IPv4 TCP to a listening port", ipv4TCP, 9000, collLive},
		{"the same, header fast path off", ipv4TCP, 9000, collNoFast},
		{"the same, flow cache off", ipv4TCP, 9000, collNoCache},
		{"IPv4 TCP, own outbound connection", ipv4TCPOutbound, 0, collLive},
		{"IPv4 TCP, no socket set (replay)", ipv4TCP, 0, collReplay},
		{"IPv4 UDP", ipv4UDP, 0, collLive},
		// Beside IPv4 UDP: the same path plus the passive DNS hand-over.
		// At this repeat count the ring buffer is full after a few hundred
		// answers, so XDP mostly measures a dropped (counted) answer.
		{"IPv4 UDP DNS answer (ring full: dropped)", ipv4DNS, 0, collLive},
		{"IPv6 TCP + 2 ext hdrs", ipv6TCPExt, 9000, collLive},
		{"VLAN IPv4 TCP", vlanTCP, 9000, collLive},
		{"IPv4 non-first fragment", fragment4, 0, collLive},
		{"ICMP port unreachable (UDP)", icmpPortUnreach, 0, collLive},
	} {
		out = append(out, packetCase{name: c.name, in: padFrame(c.fn(true)), out: padFrame(c.fn(false)), listen: c.listen, coll: c.coll})
	}
	return out
}

// padFrame pads to the 60-byte Ethernet minimum (64 on the wire with FCS).
func padFrame(b []byte) []byte {
	for len(b) < 60 {
		b = append(b, 0)
	}
	return b
}

// generatorFrame is the line-rate test's frame: 60 bytes, IPv4 UDP from
// src to dst, to a destination MAC that is not the receiver's, so the
// receiving stack marks it PACKET_OTHERHOST and drops it in ip_rcv.
func generatorFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 1, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolUDP,
		SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	f := serialize(&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}, ip,
		withUDP(ip, udpHdr(sport, dport)), gopacket.Payload(make([]byte, 18)))
	return padFrame(f)
}
