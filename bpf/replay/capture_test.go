package replay

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
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
func TestCaptureDamage(t *testing.T) {
	pk := threeFrames(t)
	good := filepath.Join(t.TempDir(), "good.pcap")
	writePcap(t, good, layers.LinkTypeEthernet, pk)
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	rec3 := len(raw) - (16 + len(pk[2].frame)) // offset of the third record
	corruptLen := append([]byte(nil), raw...)
	binary.LittleEndian.PutUint32(corruptLen[rec3+8:], 1<<30)
	origBelowCap := append([]byte(nil), raw...)
	binary.LittleEndian.PutUint32(origBelowCap[rec3+12:], 10)

	var ng ngBuilder
	ng.shb().idb(LinkEthernet, "")
	for _, p := range pk {
		ng.epb(0, p.ts, p.frame)
	}
	ngRaw := ng.b.Bytes()
	ngRec3 := len(ngRaw) - (32 + (len(pk[2].frame)+3)/4*4)
	ngBadLen := append([]byte(nil), ngRaw...)
	binary.LittleEndian.PutUint32(ngBadLen[ngRec3+4:], 13) // not a multiple of 4
	ngBadCap := append([]byte(nil), ngRaw...)
	binary.LittleEndian.PutUint32(ngBadCap[ngRec3+20:], 1<<30)

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
	if fi := parseFrame(icmpErr); !fi.ip || fi.conv != parseFrame(udp).conv {
		t.Errorf("icmp error: conversation %x, want the quoted packet's %x", fi.conv, parseFrame(udp).conv)
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
