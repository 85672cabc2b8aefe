package replay

import (
	"encoding/binary"
	"net/netip"
)

// frameInfo is what replay needs to know about a frame before the programs
// see it: whether the datapath will treat it as IP, the addresses (for the
// local/remote decision) and the conversation it belongs to (to keep the
// packets of one conversation in order on one worker).
//
// The parser here follows parse.h's scope on purpose (Ethernet, at most two
// VLAN tags, a PPPoE session or up to 8 MPLS labels, IPv4 with IHL >= 5,
// IPv6 with at most 8 extension headers): a frame the datapath counts as
// non-IP is non-IP here too, and it reads ports where the datapath does.
type frameInfo struct {
	ip       bool
	src, dst netip.Addr
	srcMAC   [6]byte
	// proto is the IP protocol; ports is set when the datapath reads the
	// port pair (TCP, UDP, SCTP; not a non-first fragment, 4 bytes there).
	proto        uint8
	ports        bool
	sport, dport uint16
	// syn: a TCP SYN without ACK (for the local-address tie-break); rst: a
	// TCP segment with RST set. Both false when the flags were not captured.
	syn, rst bool
	// quoted: a destination-unreachable error whose quoted packet's
	// addresses are qsrc, qdst (the flow its evidence goes to).
	quoted     bool
	qsrc, qdst netip.Addr
}

// convHash is a hash of the unordered address pair of the conversation:
// the outer pair, or for an ICMP destination-unreachable error the pair of
// the packet it quotes (the error's evidence is added to that packet's
// flow, so it must stay in order with it). Only the replay pass's sharding
// needs it, so parseFrame leaves it to be computed on demand.
func (fi *frameInfo) convHash() uint64 {
	if fi.quoted {
		return pairHash(fi.qsrc, fi.qdst)
	}
	return pairHash(fi.src, fi.dst)
}

const (
	vlanMax    = 2 // parse.h VLAN_MAX_DEPTH
	ipv6ExtMax = 8 // parse.h IPV6_EXT_MAX
	mplsMax    = 8 // parse.h MPLS_MAX_LABELS
)

// decap follows parse_encap (parse.h): a PPPoE session carrying IPv4 or
// IPv6, or an MPLS label stack of at most mplsMax entries whose payload
// starts with IP version 4 or 6. It returns the IP ethertype and the offset
// of the IP header, or et unchanged when nothing IP is inside.
func decap(f []byte, et uint16, off int) (uint16, int) {
	switch et {
	case 0x8864:
		if len(f) < off+8 || f[off] != 0x11 || f[off+1] != 0 {
			return et, off
		}
		switch binary.BigEndian.Uint16(f[off+6 : off+8]) {
		case 0x0021:
			return 0x0800, off + 8
		case 0x0057:
			return 0x86dd, off + 8
		}
	case 0x8847, 0x8848:
		for i := 0; i < mplsMax; i++ {
			if len(f) < off+4 {
				return et, off
			}
			bottom := f[off+2]&0x01 != 0
			off += 4
			if !bottom {
				continue
			}
			if len(f) < off+1 {
				return et, off
			}
			switch f[off] >> 4 {
			case 4:
				return 0x0800, off
			case 6:
				return 0x86dd, off
			}
			return et, off
		}
	}
	return et, off
}

func parseFrame(f []byte) (fi frameInfo) {
	if len(f) < ethHdrLen {
		return fi
	}
	copy(fi.srcMAC[:], f[6:12])
	et := binary.BigEndian.Uint16(f[12:14])
	off := ethHdrLen
	for i := 0; i < vlanMax && (et == 0x8100 || et == 0x88a8); i++ {
		if len(f) < off+4 {
			return fi
		}
		et = binary.BigEndian.Uint16(f[off+2 : off+4])
		off += 4
	}
	et, off = decap(f, et, off)
	var proto uint8
	var l4 int
	var frag bool
	switch et {
	case 0x0800:
		fi.src, fi.dst, proto, l4, frag, fi.ip = ipv4(f, off)
	case 0x86dd:
		fi.src, fi.dst, proto, l4, frag, fi.ip = ipv6(f, off)
	}
	if !fi.ip {
		return fi
	}
	fi.proto = proto
	if frag || l4 < 0 {
		return fi
	}
	if (proto == 6 || proto == 17 || proto == 132) && len(f) >= l4+4 {
		fi.ports = true
		fi.sport = binary.BigEndian.Uint16(f[l4 : l4+2])
		fi.dport = binary.BigEndian.Uint16(f[l4+2 : l4+4])
	}
	switch {
	case proto == 6 && len(f) >= l4+14:
		fl := f[l4+13]
		fi.syn = fl&0x02 != 0 && fl&0x10 == 0
		fi.rst = fl&0x04 != 0
	case proto == 1 && et == 0x0800 && len(f) >= l4+8 && f[l4] == 3,
		proto == 58 && et == 0x86dd && len(f) >= l4+8 && f[l4] == 1:
		// Destination unreachable: the quoted packet follows the 8-byte
		// ICMP header and is of the same IP version.
		var s, d netip.Addr
		var ok bool
		if et == 0x0800 {
			s, d, _, _, _, ok = ipv4(f, l4+8)
		} else {
			s, d, _, _, _, ok = ipv6(f, l4+8)
		}
		if ok {
			fi.quoted, fi.qsrc, fi.qdst = true, s, d
		}
	}
	return fi
}

// ipv4 reads an IPv4 header at off: addresses, protocol, the offset of the
// L4 header, whether it is a non-first fragment. ok is false when the
// datapath would not count it as IP (header cut, IHL < 5).
func ipv4(f []byte, off int) (src, dst netip.Addr, proto uint8, l4 int, frag, ok bool) {
	if len(f) < off+20 {
		return
	}
	ihl := int(f[off]&0x0f) * 4
	if ihl < 20 {
		return
	}
	src = netip.AddrFrom4([4]byte(f[off+12 : off+16]))
	dst = netip.AddrFrom4([4]byte(f[off+16 : off+20]))
	proto = f[off+9]
	frag = binary.BigEndian.Uint16(f[off+6:off+8])&0x1fff != 0
	return src, dst, proto, off + ihl, frag, true
}

// ipv6 is ipv4 for IPv6, walking the extension headers parse.h walks.
// l4 is -1 when the chain is cut or longer than the cap.
func ipv6(f []byte, off int) (src, dst netip.Addr, proto uint8, l4 int, frag, ok bool) {
	if len(f) < off+40 {
		return
	}
	src = netip.AddrFrom16([16]byte(f[off+8 : off+24]))
	dst = netip.AddrFrom16([16]byte(f[off+24 : off+40]))
	next := f[off+6]
	pos := off + 40
	for i := 0; i < ipv6ExtMax; i++ {
		switch next {
		case 0, 43, 60, 135: // hop-by-hop, routing, destination options, mobility
			if len(f) < pos+2 {
				return src, dst, next, -1, false, true
			}
			next, pos = f[pos], pos+(int(f[pos+1])+1)*8
		case 44: // fragment
			if len(f) < pos+8 {
				return src, dst, next, -1, false, true
			}
			next = f[pos]
			if binary.BigEndian.Uint16(f[pos+2:pos+4])&0xfff8 != 0 {
				return src, dst, next, -1, true, true
			}
			pos += 8
		default:
			return src, dst, next, pos, false, true
		}
	}
	return src, dst, next, -1, false, true
}

// pairHash hashes an unordered address pair (multiply and xor-shift over
// its four 64-bit words; it only spreads conversations over workers).
func pairHash(a, b netip.Addr) uint64 {
	if b.Less(a) {
		a, b = b, a
	}
	x, y := a.As16(), b.As16()
	h := uint64(14695981039346656037)
	for _, w := range [4]uint64{
		binary.LittleEndian.Uint64(x[:8]), binary.LittleEndian.Uint64(x[8:]),
		binary.LittleEndian.Uint64(y[:8]), binary.LittleEndian.Uint64(y[8:]),
	} {
		h = (h ^ w) * 0x9e3779b97f4a7c15
		h ^= h >> 29
	}
	return fmix64(h)
}

// fmix64 is MurmurHash3's 64-bit finaliser: every input bit reaches the
// low bits, which pick the worker.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
