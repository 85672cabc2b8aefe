package bpf

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Packet crafting for the tests, with gopacket. Addresses are from the
// documentation ranges: we are 192.0.2.10 / 2001:db8::10, peers are
// 198.51.100.x / 2001:db8:1::x.

var (
	macLocal = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
	macPeer  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x20}
	local4   = netip.MustParseAddr("192.0.2.10")
	local6   = netip.MustParseAddr("2001:db8::10")
	peer4    = netip.MustParseAddr("198.51.100.7")
	peer6    = netip.MustParseAddr("2001:db8:1::7")
)

// dir of a crafted packet on the wire.
type wire int

const (
	in  wire = iota // peer → local
	out             // local → peer
)

func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func eth(w wire, et layers.EthernetType) *layers.Ethernet {
	e := &layers.Ethernet{SrcMAC: macPeer, DstMAC: macLocal, EthernetType: et}
	if w == out {
		e.SrcMAC, e.DstMAC = macLocal, macPeer
	}
	return e
}

func ip4(w wire, proto layers.IPProtocol) *layers.IPv4 {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: peer4.AsSlice(), DstIP: local4.AsSlice()}
	if w == out {
		ip.SrcIP, ip.DstIP = ip.DstIP, ip.SrcIP
	}
	return ip
}

func ip6(w wire, next layers.IPProtocol) *layers.IPv6 {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: peer6.AsSlice(), DstIP: local6.AsSlice()}
	if w == out {
		ip.SrcIP, ip.DstIP = ip.DstIP, ip.SrcIP
	}
	return ip
}

// TCP flag sets.
type tcpFlags struct{ syn, ack, rst, fin, psh bool }

var (
	fSYN    = tcpFlags{syn: true}
	fSYNACK = tcpFlags{syn: true, ack: true}
	fACK    = tcpFlags{ack: true}
	fRSTACK = tcpFlags{rst: true, ack: true}
	fPSHACK = tcpFlags{psh: true, ack: true}
)

func tcp(sport, dport uint16, f tcpFlags) *layers.TCP {
	return &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: f.syn, ACK: f.ack,
		RST: f.rst, FIN: f.fin, PSH: f.psh, Window: 1024, DataOffset: 5}
}

func udp(sport, dport uint16) *layers.UDP {
	return &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
}

// tcp4 is a full IPv4 TCP frame; sport/dport as on the wire.
func tcp4(tb testing.TB, w wire, sport, dport uint16, f tcpFlags) []byte {
	return serialize(tb, eth(w, layers.EthernetTypeIPv4), ip4(w, layers.IPProtocolTCP), tcp(sport, dport, f))
}

func tcp6(tb testing.TB, w wire, sport, dport uint16, f tcpFlags) []byte {
	return serialize(tb, eth(w, layers.EthernetTypeIPv6), ip6(w, layers.IPProtocolTCP), tcp(sport, dport, f))
}

func udp4(tb testing.TB, w wire, sport, dport uint16) []byte {
	return serialize(tb, eth(w, layers.EthernetTypeIPv4), ip4(w, layers.IPProtocolUDP), udp(sport, dport), gopacket.Payload("x"))
}

func udp6(tb testing.TB, w wire, sport, dport uint16) []byte {
	return serialize(tb, eth(w, layers.EthernetTypeIPv6), ip6(w, layers.IPProtocolUDP), udp(sport, dport), gopacket.Payload("x"))
}

// quote returns the IP packet (without Ethernet) of frame, as an ICMP
// error embeds it: the IP header plus at least 8 bytes.
func quote(frame []byte) []byte { return frame[14:] }

// icmp4Err is an ICMPv4 destination-unreachable frame quoting orig.
func icmp4Err(tb testing.TB, w wire, code uint8, orig []byte) []byte {
	return serialize(tb, eth(w, layers.EthernetTypeIPv4), ip4(w, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, code)},
		gopacket.Payload(quote(orig)))
}

// icmp6Err is an ICMPv6 destination-unreachable frame quoting orig.
func icmp6Err(tb testing.TB, w wire, code uint8, orig []byte) []byte {
	return serialize(tb, eth(w, layers.EthernetTypeIPv6), ip6(w, layers.IPProtocolICMPv6),
		&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeDestinationUnreachable, code)},
		gopacket.Payload(append(make([]byte, 4), quote(orig)...))) // 4 unused bytes
}

func echo4(tb testing.TB, w wire, typ uint8) []byte {
	return serialize(tb, eth(w, layers.EthernetTypeIPv4), ip4(w, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: 1, Seq: 1})
}

func echo6(tb testing.TB, w wire, typ uint8) []byte {
	return serialize(tb, eth(w, layers.EthernetTypeIPv6), ip6(w, layers.IPProtocolICMPv6),
		&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}, gopacket.Payload([]byte{0, 1, 0, 1}))
}

// ext6 is a raw IPv6 extension header of 8*(hdrlen+1) bytes.
func ext6(next layers.IPProtocol, hdrlen uint8) gopacket.Payload {
	b := make([]byte, 8*(int(hdrlen)+1))
	b[0], b[1] = byte(next), hdrlen
	if len(b) >= 8 {
		b[2], b[3] = 1, 4 // PadN option filling the rest
		b[3] = byte(len(b) - 4)
	}
	return b
}

// frag6 is an IPv6 fragment header.
func frag6(next layers.IPProtocol, offset uint16, more bool) gopacket.Payload {
	b := make([]byte, 8)
	b[0] = byte(next)
	fo := offset << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(b[2:], fo)
	binary.BigEndian.PutUint32(b[4:], 0xabcd)
	return b
}

func vlan(id uint16, typ layers.EthernetType) *layers.Dot1Q {
	return &layers.Dot1Q{VLANIdentifier: id, Type: typ}
}
