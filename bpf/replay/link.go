package replay

import (
	"encoding/binary"
	"fmt"

	"github.com/gopacket/gopacket/layers"
)

// Link types replay turns into Ethernet frames (LINKTYPE_* values of the
// pcap and pcapng formats).
const (
	LinkNull     = 0   // BSD loopback: 4-byte address family, host byte order
	LinkEthernet = 1   // Ethernet II / 802.3
	LinkRawBSD   = 12  // DLT_RAW as BSDs write it into files
	LinkRawOBSD  = 14  // DLT_RAW as OpenBSD writes it
	LinkRaw      = 101 // raw IPv4 or IPv6, version from the first nibble
	LinkLoop     = 108 // OpenBSD loopback: address family, network byte order
	LinkSLL      = 113 // Linux cooked capture v1
	LinkIPv4     = 228 // raw IPv4
	LinkIPv6     = 229 // raw IPv6
	LinkSLL2     = 276 // Linux cooked capture v2
)

// SupportedLinkTypes describes what replay reads, for error messages.
const SupportedLinkTypes = "Ethernet (1), Linux cooked capture SLL (113) and SLL2 (276), raw IP (101, 228, 229, and 12/14 as BSD DLT_RAW) and BSD loopback (0, 108)"

// LinkTypeSupported reports whether replay converts frames of link type lt.
func LinkTypeSupported(lt uint32) bool {
	switch lt {
	case LinkNull, LinkEthernet, LinkRawBSD, LinkRawOBSD, LinkRaw, LinkLoop, LinkSLL, LinkIPv4, LinkIPv6, LinkSLL2:
		return true
	}
	return false
}

// LinkTypeName names a link type for messages: "Ethernet (1)", and
// "unnamed (N)" for one neither this package nor gopacket knows.
func LinkTypeName(lt uint32) string {
	names := map[uint32]string{
		LinkNull: "BSD loopback", LinkEthernet: "Ethernet", LinkRawBSD: "raw IP", LinkRawOBSD: "raw IP",
		LinkRaw: "raw IP", LinkLoop: "OpenBSD loopback", LinkSLL: "Linux cooked SLL", LinkIPv4: "raw IPv4",
		LinkIPv6: "raw IPv6", LinkSLL2: "Linux cooked SLL2", 127: "IEEE 802.11 radiotap", 105: "IEEE 802.11",
		9: "PPP", 50: "PPP in HDLC framing", 104: "Cisco HDLC", 107: "Frame Relay", 8: "SLIP",
		100: "ATM RFC 1483", 106: "Linux ATM CLIP", 123: "SunATM", 129: "ARCNET (Linux)", 137: "Juniper ATM1",
		178: "Juniper Ethernet", 195: "IEEE 802.15.4 with FCS", 226: "Solaris ipnet", 231: "D-Bus", 239: "NFLOG",
		242: "IP over InfiniBand", 253: "Linux netlink", 258: "Apple PKTAP", 271: "Linux vsock", 281: "Broadcom switch tag",
		282: "Broadcom switch tag, prepended", 284: "Marvell DSA tag", 285: "Marvell EDSA tag",
	}
	if lt >= 147 && lt <= 162 {
		return fmt.Sprintf("USER%d (%d)", lt-147, lt)
	}
	if n, ok := names[lt]; ok {
		return fmt.Sprintf("%s (%d)", n, lt)
	}
	if lt <= 255 {
		if s := layers.LinkType(lt).String(); s != "" && s[0] != 'U' { // not "UnknownLinkType(…)"
			return fmt.Sprintf("%s (%d)", s, lt)
		}
	}
	// The messages read "unsupported link type NAME (N)": no "link type" here.
	return fmt.Sprintf("unnamed (%d)", lt)
}

// ARPHRD_* values of an SLL header that carry no network frame.
const (
	arphrdNetlink   = 824
	arphrdIEEE80211 = 801
	arphrdPrism     = 802
	arphrdRadiotap  = 803
)

// SLL protocol values below 0x0600 that stand for 802.3 frames.
const (
	sllP8023 = 0x0001 // Novell 802.3 without 802.2 LLC
	sllP8022 = 0x0004 // 802.2 LLC
)

const ethHdrLen = 14

// skip reasons: frames of a supported link type that replay does not feed
// to the programs, each counted in Result.Skipped.
const (
	SkipLinkHeaderCut = "link-layer header cut off"
	SkipNotNetwork    = "not a network frame (netlink or 802.11 in a cooked capture)"
	SkipRawVersion    = "raw IP record with an IP version other than 4 or 6"
	SkipLoopFamily    = "loopback record of an address family other than IPv4/IPv6"
	SkipRunt          = "shorter than an Ethernet header"
	SkipLinkType      = "interface with an unsupported link type (pcapng)"
)

// toEthernet converts one record of link type lt to an Ethernet frame. The
// result is data itself for Ethernet, otherwise it is built in buf (which
// may be reused between calls). A non-empty skip names why the record is
// not a frame the programs could see.
func toEthernet(lt uint32, data, buf []byte) (frame []byte, skip string) {
	switch lt {
	case LinkEthernet:
		if len(data) < ethHdrLen {
			return nil, SkipRunt
		}
		return data, ""
	case LinkSLL:
		// pkttype(2) hatype(2) halen(2) addr(8) protocol(2)
		if len(data) < 16 {
			return nil, SkipLinkHeaderCut
		}
		hatype := binary.BigEndian.Uint16(data[2:4])
		halen := binary.BigEndian.Uint16(data[4:6])
		return cooked(hatype, halen, data[6:14], binary.BigEndian.Uint16(data[14:16]), data[16:], buf)
	case LinkSLL2:
		// protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) halen(1) addr(8)
		if len(data) < 20 {
			return nil, SkipLinkHeaderCut
		}
		hatype := binary.BigEndian.Uint16(data[8:10])
		return cooked(hatype, uint16(data[11]), data[12:20], binary.BigEndian.Uint16(data[0:2]), data[20:], buf)
	case LinkRaw, LinkRawBSD, LinkRawOBSD:
		if len(data) == 0 {
			return nil, SkipLinkHeaderCut
		}
		switch data[0] >> 4 {
		case 4:
			return withEthernet(0x0800, nil, data, buf), ""
		case 6:
			return withEthernet(0x86dd, nil, data, buf), ""
		}
		return nil, SkipRawVersion
	case LinkIPv4:
		return withEthernet(0x0800, nil, data, buf), ""
	case LinkIPv6:
		return withEthernet(0x86dd, nil, data, buf), ""
	case LinkNull, LinkLoop:
		if len(data) < 4 {
			return nil, SkipLinkHeaderCut
		}
		var fam uint32
		if lt == LinkLoop {
			fam = binary.BigEndian.Uint32(data)
		} else {
			// Host byte order of the capturing machine: the family is
			// small, so a value with high bits set was written the other way.
			fam = binary.LittleEndian.Uint32(data)
			if fam > 0xffff {
				fam = binary.BigEndian.Uint32(data)
			}
		}
		switch fam {
		case 2: // AF_INET everywhere
			return withEthernet(0x0800, nil, data[4:], buf), ""
		case 10, 23, 24, 28, 30: // AF_INET6: Linux, Windows, Net/OpenBSD, FreeBSD, Darwin
			return withEthernet(0x86dd, nil, data[4:], buf), ""
		}
		return nil, SkipLoopFamily
	}
	return nil, SkipLinkType
}

// cooked builds the Ethernet frame a Linux cooked (SLL/SLL2) record stands
// for: source MAC from the link-layer address when it is a MAC, no
// destination MAC (the cooked header does not keep it), the protocol as
// the type field, or for 802.3 frames the length as on the wire.
func cooked(hatype, halen uint16, addr []byte, proto uint16, payload, buf []byte) ([]byte, string) {
	switch hatype {
	case arphrdNetlink, arphrdIEEE80211, arphrdPrism, arphrdRadiotap:
		return nil, SkipNotNetwork
	}
	var src []byte
	if halen == 6 {
		src = addr[:6]
	}
	if proto == sllP8023 || proto == sllP8022 {
		n := len(payload)
		if n > 1500 {
			n = 1500
		}
		proto = uint16(n)
	}
	return withEthernet(proto, src, payload, buf), ""
}

// withEthernet prepends an Ethernet header (zero destination MAC, src or
// zero source MAC, ethertype et) to payload, in buf.
func withEthernet(et uint16, src, payload, buf []byte) []byte {
	n := ethHdrLen + len(payload)
	if cap(buf) < n {
		buf = make([]byte, n, n+n/2)
	}
	b := buf[:n]
	clear(b[:12])
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:14], et)
	copy(b[14:], payload)
	return b
}
