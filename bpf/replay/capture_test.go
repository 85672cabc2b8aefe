package replay

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

// Capture reading, link conversion, frame parsing and the local-address
// heuristic: pure Go, no kernel needed.

var (
	macA   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
	macB   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x20}
	hostA  = netip.MustParseAddr("192.0.2.10")
	peerB  = netip.MustParseAddr("198.51.100.7")
	host6  = netip.MustParseAddr("2001:db8::10")
	peer6  = netip.MustParseAddr("2001:db8:1::7")
	epoch  = time.Date(2026, 11, 26, 7, 0, 0, 0, time.UTC)
	tflags = map[string]layers.TCP{
		"S":  {SYN: true},
		"SA": {SYN: true, ACK: true},
		"A":  {ACK: true},
		"PA": {PSH: true, ACK: true},
		"RA": {RST: true, ACK: true},
	}
)

func ser(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		tb.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// ipFrame is an Ethernet frame src→dst carrying l4 (IPv4 or IPv6 by address).
func ipFrame(tb testing.TB, src, dst netip.Addr, l4 ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	smac, dmac := macB, macA
	if src == hostA || src == host6 {
		smac, dmac = macA, macB
	}
	var proto layers.IPProtocol
	switch l4[0].(type) {
	case *layers.TCP:
		proto = layers.IPProtocolTCP
	case *layers.UDP:
		proto = layers.IPProtocolUDP
	case *layers.ICMPv4:
		proto = layers.IPProtocolICMPv4
	case *layers.ICMPv6:
		proto = layers.IPProtocolICMPv6
	default:
		proto = layers.IPProtocol(253)
	}
	ls := []gopacket.SerializableLayer{}
	if src.Is4() {
		ls = append(ls, &layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()})
	} else {
		ls = append(ls, &layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv6},
			&layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()})
	}
	return ser(tb, append(ls, l4...)...)
}

func tcpSeg(sport, dport uint16, flags string, payload int) []gopacket.SerializableLayer {
	t := tflags[flags]
	t.SrcPort, t.DstPort, t.Window, t.Seq = layers.TCPPort(sport), layers.TCPPort(dport), 512, 1
	return []gopacket.SerializableLayer{&t, gopacket.Payload(make([]byte, payload))}
}

func udpDgram(sport, dport uint16, payload int) []gopacket.SerializableLayer {
	return []gopacket.SerializableLayer{&layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)},
		gopacket.Payload(make([]byte, payload))}
}

// pkt is one record of a synthetic capture.
type pkt struct {
	ts    time.Time
	frame []byte
	orig  int // wire length; 0: len(frame)
}

// writePcap writes records of link type lt as a classic pcap file.
func writePcap(tb testing.TB, path string, lt layers.LinkType, pkts []pkt) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriterNanos(f)
	if err := w.WriteFileHeader(262144, lt); err != nil {
		tb.Fatal(err)
	}
	for _, p := range pkts {
		orig := p.orig
		if orig == 0 {
			orig = len(p.frame)
		}
		ci := gopacket.CaptureInfo{Timestamp: p.ts, CaptureLength: len(p.frame), Length: orig}
		if err := w.WritePacket(ci, p.frame); err != nil {
			tb.Fatal(err)
		}
	}
}

// ngBuilder writes pcapng by hand: pcapgo's writer cannot express 16-bit
// link types or broken blocks.
type ngBuilder struct{ b bytes.Buffer }

func (n *ngBuilder) block(typ uint32, body []byte) *ngBuilder {
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	l := uint32(12 + len(body))
	binary.Write(&n.b, binary.LittleEndian, typ) //nolint:errcheck
	binary.Write(&n.b, binary.LittleEndian, l)   //nolint:errcheck
	n.b.Write(body)
	binary.Write(&n.b, binary.LittleEndian, l) //nolint:errcheck
	return n
}

func (n *ngBuilder) shb() *ngBuilder {
	body := make([]byte, 16)
	binary.LittleEndian.PutUint32(body[0:], pcapngBOM)
	binary.LittleEndian.PutUint16(body[4:], 1)
	binary.LittleEndian.PutUint64(body[8:], ^uint64(0))
	return n.block(ngSHB, body)
}

func (n *ngBuilder) idb(lt uint16, name string) *ngBuilder {
	body := make([]byte, 8)
	binary.LittleEndian.PutUint16(body[0:], lt)
	binary.LittleEndian.PutUint32(body[4:], 262144)
	if name != "" {
		opt := make([]byte, 4, 4+len(name)+3)
		binary.LittleEndian.PutUint16(opt[0:], 2) // if_name
		binary.LittleEndian.PutUint16(opt[2:], uint16(len(name)))
		opt = append(opt, name...)
		for len(opt)%4 != 0 {
			opt = append(opt, 0)
		}
		body = append(body, opt...)
		body = append(body, 0, 0, 0, 0) // opt_endofopt
	}
	return n.block(ngIDB, body)
}

func (n *ngBuilder) epb(iface uint32, ts time.Time, data []byte) *ngBuilder {
	body := make([]byte, 20, 20+len(data))
	us := uint64(ts.UnixMicro())
	binary.LittleEndian.PutUint32(body[0:], iface)
	binary.LittleEndian.PutUint32(body[4:], uint32(us>>32))
	binary.LittleEndian.PutUint32(body[8:], uint32(us))
	binary.LittleEndian.PutUint32(body[12:], uint32(len(data)))
	binary.LittleEndian.PutUint32(body[16:], uint32(len(data)))
	return n.block(ngEPB, append(body, data...))
}

func writeFile(tb testing.TB, name string, b []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

// readAll reads a capture with the package's reader.
func readAll(tb testing.TB, path string) ([]record, error) {
	tb.Helper()
	cp, err := openCapture(path, filepath.Base(path))
	if err != nil {
		return nil, err
	}
	defer cp.close()
	var out []record
	for {
		r, err := cp.next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		r.data = append([]byte(nil), r.data...)
		out = append(out, r)
	}
}

func threeFrames(tb testing.TB) []pkt {
	return []pkt{
		{epoch, ipFrame(tb, peerB, hostA, tcpSeg(40000, 22, "S", 0)...), 0},
		{epoch.Add(time.Second), ipFrame(tb, hostA, peerB, tcpSeg(22, 40000, "SA", 0)...), 0},
		{epoch.Add(2 * time.Second), ipFrame(tb, peerB, hostA, udpDgram(41000, 514, 100)...), 0},
	}
}

func TestReadPcapAndPcapng(t *testing.T) {
	pk := threeFrames(t)
	pcapPath := filepath.Join(t.TempDir(), "a.pcap")
	writePcap(t, pcapPath, layers.LinkTypeEthernet, pk)

	var ng ngBuilder
	ng.shb().idb(LinkSLL2, "any")
	for _, p := range pk {
		// SLL2 records: 20-byte header, then the IP packet.
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], 0x0800)
		binary.BigEndian.PutUint16(h[8:], 1) // ARPHRD_ETHER
		h[11] = 6
		copy(h[12:], p.frame[6:12])
		ng.epb(0, p.ts, append(h, p.frame[14:]...))
	}
	ngPath := writeFile(t, "a.pcapng", ng.b.Bytes())

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	raw, _ := os.ReadFile(pcapPath)
	zw.Write(raw) //nolint:errcheck
	zw.Close()
	gzPath := writeFile(t, "a.pcap.gz", gz.Bytes())

	for _, tc := range []struct {
		path string
		lt   uint32
	}{{pcapPath, LinkEthernet}, {ngPath, LinkSLL2}, {gzPath, LinkEthernet}} {
		recs, err := readAll(t, tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		if len(recs) != len(pk) {
			t.Fatalf("%s: %d records, want %d", tc.path, len(recs), len(pk))
		}
		for i, r := range recs {
			if r.linkType != tc.lt {
				t.Errorf("%s record %d: link type %d, want %d (pcapgo keeps only 8 bits)", tc.path, i, r.linkType, tc.lt)
			}
			if !r.ts.Equal(pk[i].ts) {
				t.Errorf("%s record %d: ts %v, want %v", tc.path, i, r.ts, pk[i].ts)
			}
			frame, skip := toEthernet(r.linkType, r.data, nil)
			if skip != "" {
				t.Fatalf("%s record %d: skipped: %s", tc.path, i, skip)
			}
			want := pk[i].frame
			if tc.lt == LinkSLL2 {
				want = append(append(make([]byte, 6), want[6:12]...), want[12:]...) // no destination MAC
			}
			if !bytes.Equal(frame, want) {
				t.Errorf("%s record %d: frame differs\n got %x\nwant %x", tc.path, i, frame, want)
			}
		}
		if tc.path == ngPath && recs[0].iface != "any" {
			t.Errorf("pcapng interface name %q, want any", recs[0].iface)
		}
	}
}

// TestCaptureDamage: a capture cut short or corrupt yields the records
// before the damage and a CaptureError naming the first bad packet.
// threeFramePcap is threeFrames as a classic little-endian pcap file's
// bytes, the frames, and the offset of the third record (damage tests
// change it with withUint32).
func threeFramePcap(tb testing.TB) (raw []byte, pk []pkt, rec3 int) {
	tb.Helper()
	pk = threeFrames(tb)
	good := filepath.Join(tb.TempDir(), "good.pcap")
	writePcap(tb, good, layers.LinkTypeEthernet, pk)
	raw, err := os.ReadFile(good)
	if err != nil {
		tb.Fatal(err)
	}
	return raw, pk, len(raw) - (16 + len(pk[2].frame))
}

// withUint32 is a copy of b with v written little-endian at off.
func withUint32(b []byte, off int, v uint32) []byte {
	c := append([]byte(nil), b...)
	binary.LittleEndian.PutUint32(c[off:], v)
	return c
}

func TestCaptureDamage(t *testing.T) {
	raw, pk, rec3 := threeFramePcap(t)
	corruptLen := withUint32(raw, rec3+8, 1<<30)
	origBelowCap := withUint32(raw, rec3+12, 10)

	var ng ngBuilder
	ng.shb().idb(LinkEthernet, "")
	for _, p := range pk {
		ng.epb(0, p.ts, p.frame)
	}
	ngRaw := ng.b.Bytes()
	ngRec3 := len(ngRaw) - (32 + (len(pk[2].frame)+3)/4*4)
	ngBadLen := withUint32(ngRaw, ngRec3+4, 13) // not a multiple of 4
	ngBadCap := withUint32(ngRaw, ngRec3+20, 1<<30)

	cases := []struct {
		name      string
		data      []byte
		records   int
		packet    int // 0: no error
		truncated bool
	}{
		{"pcap complete", raw, 3, 0, false},
		{"pcap cut between records", raw[:rec3], 2, 0, false},
		{"pcap cut inside a record header", raw[:rec3+7], 2, 3, true},
		{"pcap cut inside record data", raw[:len(raw)-5], 2, 3, true},
		{"pcap record claims 1 GiB", corruptLen, 2, 3, false},
		{"pcap original length below captured length is read", origBelowCap, 3, 0, false},
		{"pcapng complete", ngRaw, 3, 0, false},
		{"pcapng cut between blocks", ngRaw[:ngRec3], 2, 0, false},
		{"pcapng cut inside a block", ngRaw[:len(ngRaw)-6], 2, 3, true},
		{"pcapng block length not a multiple of 4", ngBadLen, 2, 3, false},
		{"pcapng captured length beyond its block", ngBadCap, 2, 3, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := readAll(t, writeFile(t, "c", tc.data))
			if len(recs) != tc.records {
				t.Errorf("%d records, want %d", len(recs), tc.records)
			}
			var ce *CaptureError
			switch {
			case tc.packet == 0 && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.packet == 0:
			case !errors.As(err, &ce):
				t.Fatalf("error %v, want a *CaptureError", err)
			case ce.Packet != tc.packet || ce.Truncated != tc.truncated:
				t.Errorf("CaptureError packet %d truncated %v, want packet %d truncated %v (%v)", ce.Packet, ce.Truncated, tc.packet, tc.truncated, ce)
			}
			if tc.name == "pcap original length below captured length is read" && recs[2].origLen != len(recs[2].data) {
				t.Errorf("original length %d, want it raised to the captured %d", recs[2].origLen, len(recs[2].data))
			}
		})
	}
	for _, bad := range [][]byte{nil, []byte("hello world, not a capture at all"), raw[:20]} {
		if _, err := readAll(t, writeFile(t, "bad", bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestToEthernet(t *testing.T) {
	ip4 := ipFrame(t, peerB, hostA, udpDgram(41000, 514, 4)...)[14:]
	ip6 := ipFrame(t, peer6, host6, udpDgram(41000, 514, 4)...)[14:]
	eth := func(et uint16, src []byte, payload []byte) []byte {
		return withEthernet(et, src, payload, nil)
	}
	sll := func(hatype, proto uint16, payload []byte) []byte {
		h := make([]byte, 16)
		binary.BigEndian.PutUint16(h[2:], hatype)
		binary.BigEndian.PutUint16(h[4:], 6)
		copy(h[6:], macB)
		binary.BigEndian.PutUint16(h[14:], proto)
		return append(h, payload...)
	}
	u32 := func(bo binary.ByteOrder, v uint32, p []byte) []byte {
		b := make([]byte, 4)
		bo.PutUint32(b, v)
		return append(b, p...)
	}
	llc := []byte{0x42, 0x42, 0x03, 0, 0, 0}
	for _, tc := range []struct {
		name string
		lt   uint32
		in   []byte
		want []byte
		skip string
	}{
		{"ethernet as is", LinkEthernet, ipFrame(t, peerB, hostA, udpDgram(1, 2, 0)...), ipFrame(t, peerB, hostA, udpDgram(1, 2, 0)...), ""},
		{"ethernet runt", LinkEthernet, make([]byte, 13), nil, SkipRunt},
		{"sll ipv4, source MAC kept", LinkSLL, sll(1, 0x0800, ip4), eth(0x0800, macB, ip4), ""},
		{"sll 802.2 becomes an 802.3 frame", LinkSLL, sll(1, 0x0004, llc), eth(uint16(len(llc)), macB, llc), ""},
		{"sll vlan tag stays", LinkSLL, sll(1, 0x8100, append([]byte{0, 10, 8, 0}, ip4...)), eth(0x8100, macB, append([]byte{0, 10, 8, 0}, ip4...)), ""},
		{"sll netlink is not a network frame", LinkSLL, sll(824, 0, []byte{1, 2, 3}), nil, SkipNotNetwork},
		{"sll header cut", LinkSLL, make([]byte, 15), nil, SkipLinkHeaderCut},
		{"raw ipv4", LinkRaw, ip4, eth(0x0800, nil, ip4), ""},
		{"raw ipv6", LinkRaw, ip6, eth(0x86dd, nil, ip6), ""},
		{"raw version 5", LinkRaw, append([]byte{0x50}, ip4[1:]...), nil, SkipRawVersion},
		{"bsd dlt_raw 12", LinkRawBSD, ip6, eth(0x86dd, nil, ip6), ""},
		{"linktype ipv4 trusts the link type", LinkIPv4, append([]byte{0x50}, ip4[1:]...), eth(0x0800, nil, append([]byte{0x50}, ip4[1:]...)), ""},
		{"linktype ipv6", LinkIPv6, ip6, eth(0x86dd, nil, ip6), ""},
		{"null little-endian AF_INET", LinkNull, u32(binary.LittleEndian, 2, ip4), eth(0x0800, nil, ip4), ""},
		{"null big-endian AF_INET6 (darwin 30)", LinkNull, u32(binary.BigEndian, 30, ip6), eth(0x86dd, nil, ip6), ""},
		{"null AF_INET6 linux 10", LinkNull, u32(binary.LittleEndian, 10, ip6), eth(0x86dd, nil, ip6), ""},
		{"loop network order", LinkLoop, u32(binary.BigEndian, 24, ip6), eth(0x86dd, nil, ip6), ""},
		{"null unknown family", LinkNull, u32(binary.LittleEndian, 7, ip4), nil, SkipLoopFamily},
		{"unsupported link type", 127, ip4, nil, SkipLinkType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, skip := toEthernet(tc.lt, tc.in, nil)
			if skip != tc.skip || !bytes.Equal(got, tc.want) {
				t.Errorf("got %x skip %q\nwant %x skip %q", got, skip, tc.want, tc.skip)
			}
		})
	}
	// SLL2: protocol first, link-layer address at 12.
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], 0x86dd)
	binary.BigEndian.PutUint16(h[8:], 1)
	h[11] = 6
	copy(h[12:], macA)
	if got, _ := toEthernet(LinkSLL2, append(h, ip6...), nil); !bytes.Equal(got, eth(0x86dd, macA, ip6)) {
		t.Errorf("sll2: got %x", got)
	}
}

func TestParseFrame(t *testing.T) {
	udp := ipFrame(t, hostA, peerB, udpDgram(41000, 161, 4)...)
	icmpErr := ser(t, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: net.IP{203, 0, 113, 1}, DstIP: hostA.AsSlice()},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 13)}, gopacket.Payload(udp[14:]))
	vlan := ser(t, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeDot1Q},
		&layers.Dot1Q{VLANIdentifier: 5, Type: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: peerB.AsSlice(), DstIP: hostA.AsSlice()},
		&layers.TCP{SrcPort: 1, DstPort: 2, SYN: true, DataOffset: 5})
	ihl4 := append([]byte(nil), udp...)
	ihl4[14] = 0x44
	v6hop := ser(t, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv6},
		&layers.IPv6{Version: 6, NextHeader: layers.IPProtocolIPv6HopByHop, SrcIP: peer6.AsSlice(), DstIP: host6.AsSlice()},
		gopacket.Payload{byte(layers.IPProtocolTCP), 0, 1, 4, 0, 0, 0, 0},
		&layers.TCP{SrcPort: 1, DstPort: 2, SYN: true, DataOffset: 5})

	if fi := parseFrame(udp); !fi.ip || fi.src != hostA || fi.dst != peerB || fi.syn {
		t.Errorf("udp: %+v", fi)
	}
	if fi, u := parseFrame(icmpErr), parseFrame(udp); !fi.ip || fi.convHash() != u.convHash() {
		t.Errorf("icmp error: conversation %x, want the quoted packet's %x", fi.convHash(), u.convHash())
	}
	if fi := parseFrame(vlan); !fi.ip || !fi.syn || fi.src != peerB {
		t.Errorf("vlan: %+v", fi)
	}
	if fi := parseFrame(ihl4); fi.ip {
		t.Errorf("IHL 4 is not IP for the datapath")
	}
	if fi := parseFrame(v6hop); !fi.ip || !fi.syn || fi.src != peer6 {
		t.Errorf("ipv6 hop-by-hop then tcp syn: %+v", fi)
	}
	if pairHash(hostA, peerB) != pairHash(peerB, hostA) {
		t.Error("pairHash is not symmetric")
	}
}

func TestChooseLocal(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	sc := &scanResult{addrs: map[netip.Addr]*addrCount{
		a("192.0.2.10"):    {packets: 90},
		a("192.0.2.11"):    {packets: 60, synIn: 3},
		a("192.0.2.12"):    {packets: 60, synIn: 9},
		a("224.0.0.251"):   {packets: 95}, // multicast: never local
		a("2001:db8::5"):   {packets: 4},
		a("2001:db8::4"):   {packets: 4},
		a("ff02::1"):       {packets: 9},
		a("198.51.100.77"): {packets: 10},
	}, ipPackets: [2]int{100, 10}}
	lc := chooseLocal(sc, nil)
	if lc.From != "heuristic" || len(lc.Addrs) != 2 || lc.Addrs[0] != a("192.0.2.10") || lc.Addrs[1] != a("2001:db8::4") {
		t.Errorf("heuristic chose %v (%s), want 192.0.2.10 and the lower of the tied IPv6 addresses", lc.Addrs, lc.From)
	}
	if lc.Share[a("192.0.2.10")] != 0.9 {
		t.Errorf("share %v", lc.Share)
	}
	// A tie on packets goes to the address that received more SYNs.
	delete(sc.addrs, a("192.0.2.10"))
	if lc := chooseLocal(sc, nil); lc.Addrs[0] != a("192.0.2.12") {
		t.Errorf("tie: chose %v, want the SYN receiver 192.0.2.12", lc.Addrs)
	}
	// Then to an address that was not a DHCP server, and to one that does
	// not look like a directed broadcast address (never sent, received
	// from several); both before the lower address (192.0.2.100 here).
	// An address that merely never sent is not broadcast-like.
	for _, tc := range []struct {
		name string
		a, b addrCount
	}{
		{"the other is a DHCP server", addrCount{packets: 60, sent: 30}, addrCount{packets: 60, sent: 30, dhcpServer: 2}},
		{"the other is broadcast-like", addrCount{packets: 60, sent: 1}, addrCount{packets: 60, senders2: true}},
		{"the DHCP rule first", addrCount{packets: 60, senders2: true}, addrCount{packets: 60, sent: 5, dhcpServer: 5}},
	} {
		a1, b1 := tc.a, tc.b
		lc := chooseLocal(&scanResult{addrs: map[netip.Addr]*addrCount{a("192.0.2.200"): &a1, a("192.0.2.100"): &b1},
			ipPackets: [2]int{60, 0}}, nil)
		if lc.Addrs[0] != a("192.0.2.200") {
			t.Errorf("tie, %s: chose %v, want 192.0.2.200", tc.name, lc.Addrs)
		}
	}
	quiet := addrCount{packets: 60}
	if lc := chooseLocal(&scanResult{addrs: map[netip.Addr]*addrCount{a("192.0.2.200"): {packets: 60, sent: 60}, a("192.0.2.100"): &quiet},
		ipPackets: [2]int{60, 0}}, nil); lc.Addrs[0] != a("192.0.2.100") {
		t.Errorf("tie with an address that never sent (one sender): chose %v, want the lower address", lc.Addrs)
	}
	given := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("203.0.113.9/32")}
	lc = chooseLocal(sc, given)
	want := []netip.Addr{a("192.0.2.11"), a("192.0.2.12"), a("203.0.113.9")}
	if lc.From != "--local-addr" || len(lc.Addrs) != len(want) {
		t.Fatalf("given: %v (%s), want %v", lc.Addrs, lc.From, want)
	}
	for i := range want {
		if lc.Addrs[i] != want[i] {
			t.Errorf("given: %v, want %v", lc.Addrs, want)
		}
	}
	if lc := chooseLocal(&scanResult{addrs: map[netip.Addr]*addrCount{}}, nil); lc.From != "none" || len(lc.Addrs) != 0 {
		t.Errorf("no IP: %+v", lc)
	}
}

// epbMicros is an enhanced packet block with a raw timestamp in
// microseconds (the default resolution), for timestamps time.Time cannot
// turn into microseconds.
func (n *ngBuilder) epbMicros(iface uint32, us uint64, data []byte) *ngBuilder {
	body := make([]byte, 20, 20+len(data))
	binary.LittleEndian.PutUint32(body[0:], iface)
	binary.LittleEndian.PutUint32(body[4:], uint32(us>>32))
	binary.LittleEndian.PutUint32(body[8:], uint32(us))
	binary.LittleEndian.PutUint32(body[12:], uint32(len(data)))
	binary.LittleEndian.PutUint32(body[16:], uint32(len(data)))
	return n.block(ngEPB, append(body, data...))
}

// farFuture is a pcapng timestamp tshark shows in the year ~586 000.
const farFuture = ^uint64(0) - 1<<20

// badTimesCapture: five packets, the first, third and fifth with a 64-bit
// timestamp far out of range.
func badTimesCapture(tb testing.TB) (string, []pkt) {
	pkts := threeFrames(tb)
	pkts = append(pkts, pkt{epoch.Add(3 * time.Second), ipFrame(tb, peerB, hostA, udpDgram(41000, 514, 10)...), 0},
		pkt{epoch.Add(4 * time.Second), ipFrame(tb, peerB, hostA, udpDgram(41000, 514, 20)...), 0})
	var ng ngBuilder
	ng.shb().idb(LinkEthernet, "eth0")
	for i, p := range pkts {
		if i%2 == 0 {
			ng.epbMicros(0, farFuture-uint64(i), p.frame)
		} else {
			ng.epb(0, p.ts, p.frame)
		}
	}
	return writeFile(tb, "bad-times.pcapng", ng.b.Bytes()), pkts
}

// TestReadBadTimestamps: a timestamp outside 1970–2106 is replaced by the
// one of the packet before it; records before the first valid timestamp
// get the fallback (the scan's first valid timestamp, in a replay).
func TestReadBadTimestamps(t *testing.T) {
	path, pkts := badTimesCapture(t)
	recs, err := readAll(t, path)
	if err != nil || len(recs) != 5 {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	if !recs[0].badTS || recs[0].raw.Year() < 500000 || !recs[0].ts.IsZero() {
		t.Errorf("record 1: bad %v raw %v ts %v, want flagged, year ~586000, no replacement yet", recs[0].badTS, recs[0].raw, recs[0].ts)
	}
	for i, want := range map[int]time.Time{1: pkts[1].ts, 2: pkts[1].ts, 3: pkts[3].ts, 4: pkts[3].ts} {
		if !recs[i].ts.Equal(want) || recs[i].badTS != (i%2 == 0) {
			t.Errorf("record %d: ts %v bad %v, want %v", i+1, recs[i].ts, recs[i].badTS, want)
		}
	}
	sc, err := scan(context.Background(), path, "bad-times.pcapng", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !sc.first.Equal(pkts[1].ts) || !sc.last.Equal(pkts[3].ts) || !sc.firstValid.Equal(pkts[1].ts) {
		t.Errorf("scan: first %v last %v first valid %v, want the valid ones only", sc.first, sc.last, sc.firstValid)
	}
	if sc.badTimestamps != 3 || len(sc.badTimes) != 3 || sc.badTimes[0].Packet != 1 || sc.badTimes[1].Packet != 3 || sc.badTimes[2].Packet != 5 ||
		!sc.badTimes[0].Used.Equal(pkts[1].ts) || !sc.badTimes[2].Used.Equal(pkts[3].ts) {
		t.Errorf("scan: %d bad timestamps %+v, want packets 1, 3, 5 replaced by the valid neighbours", sc.badTimestamps, sc.badTimes)
	}
	if s := sc.badTimes[1].String(); !strings.Contains(s, "packet 3: timestamp 58") || !strings.Contains(s, "replaced by 2026-11-26T07:00:01Z") {
		t.Errorf("message %q", s)
	}
	// A simple packet block has no timestamp: the one before it is used.
	var spb ngBuilder
	spb.shb().idb(LinkEthernet, "").epb(0, pkts[1].ts, pkts[1].frame)
	spb.block(ngSPB, append(binary.LittleEndian.AppendUint32(nil, uint32(len(pkts[0].frame))), pkts[0].frame...))
	sc, err = scan(context.Background(), writeFile(t, "spb.pcapng", spb.b.Bytes()), "spb.pcapng", nil)
	if err != nil || sc.packets != 2 || !sc.last.Equal(pkts[1].ts) || len(sc.badTimes) != 1 || sc.badTimes[0].RawText() != "none" ||
		!sc.badTimes[0].Used.Equal(pkts[1].ts) {
		t.Errorf("simple packet block: %d packets, last %v, %+v, %v", sc.packets, sc.last, sc.badTimes, err)
	}
	// Nothing valid at all: the epoch for every record.
	var ng ngBuilder
	ng.shb().idb(LinkEthernet, "").epbMicros(0, farFuture, pkts[0].frame)
	sc, err = scan(context.Background(), writeFile(t, "all-bad.pcapng", ng.b.Bytes()), "all-bad.pcapng", nil)
	if err != nil || !sc.first.Equal(MinTimestamp) || !sc.last.Equal(MinTimestamp) || sc.badTimes[0].Used != MinTimestamp {
		t.Errorf("all bad: first %v last %v %+v %v", sc.first, sc.last, sc.badTimes, err)
	}
}

func TestLinkTypeNames(t *testing.T) {
	e := &LinkTypeError{File: "nl.pcap", LinkTypes: []uint32{253}}
	if got := e.Error(); !strings.Contains(got, "unsupported link type Linux netlink (253): replay reads") || strings.Contains(got, "link type link type") {
		t.Errorf("netlink: %q", got)
	}
	if got := LinkTypeName(4000); got != "unnamed (4000)" {
		t.Errorf("unknown link type: %q", got)
	}
}

// TestParseFrameEncapsulations: replay's frame parser follows parse_encap:
// IP inside a PPPoE session (also over QinQ) and an MPLS stack of up to 8
// labels, not beyond, not a pseudowire, not PPP control traffic.
func TestParseFrameEncapsulations(t *testing.T) {
	ipUDP := ipFrame(t, hostA, peerB, udpDgram(41000, 161, 4)...)[14:]
	ip6TCP := ipFrame(t, peer6, host6, tcpSeg(40000, 22, "S", 0)...)[14:]
	pppoe := func(ppp uint16, tags int, payload []byte) []byte {
		f := append([]byte(nil), macB...)
		f = append(f, macA...)
		for i := 0; i < tags; i++ {
			f = append(f, 0x81, 0x00, 0, byte(10+i))
		}
		f = append(f, 0x88, 0x64, 0x11, 0, 0, 7, 0, byte(len(payload)+2), byte(ppp>>8), byte(ppp))
		if tags > 0 {
			f[12], f[13] = 0x88, 0xa8
		}
		return append(f, payload...)
	}
	mpls := func(labels int, payload []byte) []byte {
		f := append(append(append([]byte(nil), macB...), macA...), 0x88, 0x47)
		for i := 0; i < labels; i++ {
			lse := uint32(16+i)<<12 | 64
			if i == labels-1 {
				lse |= 0x100
			}
			f = binary.BigEndian.AppendUint32(f, lse)
		}
		return append(f, payload...)
	}
	for _, tc := range []struct {
		name     string
		f        []byte
		ip       bool
		src      netip.Addr
		sport    uint16
		syn      bool
		wantPort bool
	}{
		{"pppoe ipv4", pppoe(0x0021, 0, ipUDP), true, hostA, 41000, false, true},
		{"pppoe over qinq ipv6", pppoe(0x0057, 2, ip6TCP), true, peer6, 40000, true, true},
		{"pppoe lcp", pppoe(0xc021, 0, []byte{1, 1, 0, 4}), false, netip.Addr{}, 0, false, false},
		{"mpls one label", mpls(1, ipUDP), true, hostA, 41000, false, true},
		{"mpls eight labels", mpls(8, ip6TCP), true, peer6, 40000, true, true},
		{"mpls nine labels", mpls(9, ipUDP), false, netip.Addr{}, 0, false, false},
		{"mpls pseudowire control word", mpls(2, append([]byte{0, 0, 0, 0}, ipUDP...)), false, netip.Addr{}, 0, false, false},
		{"mpls stack cut", mpls(3, ipUDP)[:14+6], false, netip.Addr{}, 0, false, false},
	} {
		fi := parseFrame(tc.f)
		if fi.ip != tc.ip || fi.src != tc.src || fi.sport != tc.sport || fi.syn != tc.syn || fi.ports != tc.wantPort {
			t.Errorf("%s: %+v", tc.name, fi)
		}
	}
}

// TestServiceHints: the fan-in of an endpoint counts the distinct
// counterpart ports of conversations in which both ends sent something
// other than a TCP RST; only fan-ins of 2 or more become hints.
func TestServiceHints(t *testing.T) {
	sc := &scanResult{convs: map[conv]uint8{}}
	srv, cli := netip.MustParseAddr("172.16.30.10"), netip.MustParseAddr("172.16.30.190")
	scanner := netip.MustParseAddr("203.0.113.66")
	note := func(src, dst netip.Addr, sport, dport uint16, proto uint8, rst bool) {
		sc.noteConv(&frameInfo{ip: true, src: src, dst: dst, proto: proto, ports: true, sport: sport, dport: dport, rst: rst})
	}
	for p := uint16(8868); p <= 8881; p++ {
		note(cli, srv, p, 31600, 6, false)
		note(srv, cli, 31600, p, 6, false)
	}
	// A scan without SYN from one port: the closed ports answer RST, and
	// a UDP probe nobody answers; neither is fan-in evidence.
	for p := uint16(1); p <= 50; p++ {
		note(scanner, srv, 40000, p, 6, false)
		note(srv, scanner, p, 40000, 6, true)
		note(scanner, srv, 40001, p, 17, false)
	}
	// One client port talking to one service: fan-in 1 on both ends.
	note(cli, srv, 5000, 53, 17, false)
	note(srv, cli, 53, 5000, 17, false)
	got := serviceHints(sc.convs)
	want := []bpf.ServiceHint{{Proto: snapshot.TCP, Addr: srv, Port: 31600, Fan: 14}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("hints %v, want %v", got, want)
	}
}

// dhcpExchange is a DHCP exchange as tcpdump's dhcp-rfc3004.pcap has it:
// the client's discover and request from 0.0.0.0 to the broadcast address,
// the server's offer and ack unicast to the client's new address.
func dhcpExchange(tb testing.TB) []pkt {
	srv, cli := netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("192.168.1.4")
	bcast, zero := netip.MustParseAddr("255.255.255.255"), netip.MustParseAddr("0.0.0.0")
	udp4 := func(src, dst netip.Addr, sport, dport uint16) []byte {
		return ser(tb, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
			&layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}, gopacket.Payload(make([]byte, 300)))
	}
	return []pkt{
		{epoch, udp4(zero, bcast, 68, 67), 0},
		{epoch.Add(time.Second), udp4(srv, cli, 67, 68), 0},
		{epoch.Add(2 * time.Second), udp4(zero, bcast, 68, 67), 0},
		{epoch.Add(3 * time.Second), udp4(srv, cli, 67, 68), 0},
	}
}

// TestChooseLocalDHCP: in a DHCP exchange the server and the client tie on
// packets; the captured host is the client, the server its peer.
func TestChooseLocalDHCP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dhcp.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, dhcpExchange(t))
	sc, err := scan(context.Background(), path, "dhcp.pcap", nil)
	if err != nil {
		t.Fatal(err)
	}
	if lc := chooseLocal(sc, nil); len(lc.Addrs) != 1 || lc.Addrs[0] != netip.MustParseAddr("192.168.1.4") {
		t.Errorf("chose %v, want the DHCP client 192.168.1.4, not the server", lc.Addrs)
	}
}

// The demo lab's capture (testdata/captures): the only IPv6 conversation
// is one agent's, whose neighbour discovery puts its address in more IPv6
// packets than the appliance's. The IPv4 choice's MAC address decides.
func TestChooseLocalOneHostMAC(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	appliance, agent := [6]byte{2, 0, 0, 0, 0, 0x10}, [6]byte{2, 0, 0, 0, 0, 0x35}
	sc := func(macs bool) *scanResult {
		s := &scanResult{addrs: map[netip.Addr]*addrCount{
			a("192.0.2.10"):   {packets: 100, sent: 50},
			a("192.0.2.35"):   {packets: 30, sent: 15},
			a("2001:db8::10"): {packets: 40, sent: 20, synIn: 3},
			a("2001:db8::35"): {packets: 44, sent: 24},
		}, ipPackets: [2]int{100, 44}, macOf: map[macIP]struct{}{}}
		if macs {
			for ip, mac := range map[string][6]byte{"192.0.2.10": appliance, "2001:db8::10": appliance,
				"192.0.2.35": agent, "2001:db8::35": agent} {
				s.macOf[macIP{mac, a(ip)}] = struct{}{}
			}
		}
		return s
	}
	if lc := chooseLocal(sc(true), nil); len(lc.Addrs) != 2 || lc.Addrs[0] != a("192.0.2.10") || lc.Addrs[1] != a("2001:db8::10") {
		t.Errorf("chose %v, want 192.0.2.10 and 2001:db8::10 (same MAC)", lc.Addrs)
	}
	// Without MAC addresses (e.g. a raw-IP capture) the count decides.
	if lc := chooseLocal(sc(false), nil); len(lc.Addrs) != 2 || lc.Addrs[1] != a("2001:db8::35") {
		t.Errorf("without MACs chose %v, want the most frequent 2001:db8::35", lc.Addrs)
	}
}
