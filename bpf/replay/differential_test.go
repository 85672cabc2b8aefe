package replay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// The differential test: every capture of tcpdump's test corpus is replayed
// through the programs and decoded by tshark, an independent dissector. The
// oracle applies flowaudit's documented parser scope and direction rule
// (docs/ARCHITECTURE.md) to tshark's decode and predicts, per file:
//
//   - the frames replay reads, and those it skips (with the reason);
//   - which frames the datapath counts as IP, and the rest as non-IP;
//   - per IP protocol, the packet total (all IP frames);
//   - per (protocol, service port), the packet count, where the service
//     port is chosen from tshark's ports by the rule recomputed here
//     (SYN/SYN-ACK, remembered orientation, UDP sent by the local side,
//     ephemeral range, lower port), and ICMP carries type<<8|code.
//
// Frames whose L4 decode tshark and a line-rate parser legitimately see
// differently are excluded from the per-port comparison only, by named
// class; for each protocol the snapshot must then hold exactly that many
// packets more than predicted, spread over ports, and never fewer on any
// port. Every class is counted and listed in docs/REPLAY.md
// (FLOWAUDIT_DIFF_REPORT=file writes the table).

// corpusDir finds tcpdump's test captures: $FLOWAUDIT_CORPUS, else
// ../shared/corpus/tcpdump-tests beside the repository.
func corpusDir(t *testing.T) string {
	if d := os.Getenv("FLOWAUDIT_CORPUS"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "..", "shared", "corpus", "tcpdump-tests")
}

// tsharkFields are the fields the oracle reads; order matters (tf*).
var tsharkFields = []string{
	"frame.number", "frame.protocols", "frame.cap_len", "eth.type", "vlan.etype",
	"ip.version", "ip.hdr_len", "ip.len", "ip.src", "ip.dst", "ip.proto", "ip.frag_offset",
	"ipv6.version", "ipv6.plen", "ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.hopopts.nxt", "ipv6.hopopts.len",
	"ipv6.routing.nxt", "ipv6.routing.len", "ipv6.dstopts.nxt", "ipv6.dstopts.len", "ipv6.fraghdr.nxt", "ipv6.fraghdr.offset",
	"tcp.srcport", "tcp.dstport", "tcp.flags", "udp.srcport", "udp.dstport", "sctp.srcport", "sctp.dstport",
	"icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code",
	"pppoe.version", "pppoe.type", "pppoe.code", "ppp.protocol", "mpls.bottom",
}

const (
	tfNumber = iota
	tfProtocols
	tfCapLen
	tfEthType
	tfVlanEtype
	tfIPVersion
	tfIPHdrLen
	tfIPLen
	tfIPSrc
	tfIPDst
	tfIPProto
	tfIPFragOff
	tfIP6Version
	tfIP6Plen
	tfIP6Src
	tfIP6Dst
	tfIP6Nxt
	tfIP6HopNxt
	tfIP6HopLen
	tfIP6RoutingNxt
	tfIP6RoutingLen
	tfIP6DstoptsNxt
	tfIP6DstoptsLen
	tfIP6FragNxt
	tfIP6FragOff
	tfTCPSrc
	tfTCPDst
	tfTCPFlags
	tfUDPSrc
	tfUDPDst
	tfSCTPSrc
	tfSCTPDst
	tfICMPType
	tfICMPCode
	tfICMP6Type
	tfICMP6Code
	tfPPPoEVersion
	tfPPPoEType
	tfPPPoECode
	tfPPPProtocol
	tfMPLSBottom
	tfCount
)

// tsFrame is one line of tshark's output: every field, all occurrences.
type tsFrame [tfCount][]string

func (f *tsFrame) first(i int) (string, bool) {
	if len(f[i]) == 0 || f[i][0] == "" {
		return "", false
	}
	return f[i][0], true
}

func (f *tsFrame) num(i, occ int) (uint64, bool) {
	if occ >= len(f[i]) || f[i][occ] == "" {
		return 0, false
	}
	v, err := strconv.ParseUint(f[i][occ], 0, 64)
	return v, err == nil
}

// runTshark decodes a capture: one tsFrame per frame.
func runTshark(ctx context.Context, path, cfgDir string) ([]tsFrame, error) {
	args := []string{"-n", "-r", path, "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE",
		"-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,", "-E", "separator=/t"}
	for _, f := range tsharkFields {
		args = append(args, "-e", f)
	}
	cmd := exec.CommandContext(ctx, "tshark", args...)
	cmd.Env = append(os.Environ(), "WIRESHARK_CONFIG_DIR="+cfgDir, "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("tshark: %w", ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("tshark: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	var frames []tsFrame
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) != tfCount {
			return nil, fmt.Errorf("tshark: line with %d columns, want %d: %q", len(cols), tfCount, sc.Text())
		}
		var f tsFrame
		for i, c := range cols {
			if c != "" {
				f[i] = strings.Split(c, ",")
			}
		}
		frames = append(frames, f)
	}
	return frames, sc.Err()
}

// protoPort is a flow's protocol and service port.
type protoPort struct {
	proto snapshot.Proto
	port  uint16
}

func (p protoPort) String() string { return fmt.Sprintf("%s/%d", p.proto, p.port) }

// prediction is the oracle's expectation for one file.
type prediction struct {
	frames  int
	skipped map[string]int
	nonIP   int
	proto   map[snapshot.Proto]int
	port    map[protoPort]int
	// excluded: per protocol, frames left out of the per-port comparison.
	excluded map[snapshot.Proto]int
	// unknownProto: IP frames whose protocol tshark did not decode.
	unknownProto int
	classes      map[string]int // difference classes seen in this file
}

// oracle predicts what the datapath counts, from tshark's decode.
type oracle struct {
	local []netip.Prefix
	eph   [2]uint16
	conns map[oracleConn]oracleDir
	p     *prediction
	// convs, when set, collects the conversations (a first pass); fan is
	// the fan-in computed from them (docs/ARCHITECTURE.md, "Direction").
	convs map[oracleConv]uint8
	fan   map[oracleEnd]int
}

type oracleEnd struct {
	addr  netip.Addr
	port  uint16
	proto uint8
}

// oracleConv is a conversation, a < b (address, then port).
type oracleConv struct{ a, b oracleEnd }

// note records that src sent to dst; TCP RST segments do not count.
func (o *oracle) note(proto uint8, sport, dport uint16, flags uint8, flagsKnown bool, src, dst netip.Addr) {
	if proto == 6 && flagsKnown && flags&0x04 != 0 {
		return
	}
	s, d := oracleEnd{src, sport, proto}, oracleEnd{dst, dport, proto}
	k, bit := oracleConv{s, d}, uint8(1)
	if d.addr.Less(s.addr) || d.addr == s.addr && d.port < s.port {
		k, bit = oracleConv{d, s}, 2
	}
	o.convs[k] |= bit
}

// fanIn: per endpoint, the distinct counterpart ports of the
// conversations in which both ends sent; kept when at least 2.
func fanIn(convs map[oracleConv]uint8) map[oracleEnd]int {
	ports := map[oracleEnd]map[uint16]bool{}
	add := func(e oracleEnd, p uint16) {
		if ports[e] == nil {
			ports[e] = map[uint16]bool{}
		}
		ports[e][p] = true
	}
	for k, sent := range convs {
		if sent == 3 {
			add(k.a, k.b.port)
			add(k.b, k.a.port)
		}
	}
	fan := map[oracleEnd]int{}
	for e, ps := range ports {
		if len(ps) >= 2 {
			fan[e] = len(ps)
		}
	}
	return fan
}

type oracleConn struct {
	peer         netip.Addr
	lport, rport uint16
	proto        uint8
}

type oracleDir struct {
	dir      snapshot.Direction
	inferred bool
}

func newOracle(local []netip.Prefix, eph [2]uint16) *oracle {
	return &oracle{local: local, eph: eph, conns: map[oracleConn]oracleDir{}, p: &prediction{
		skipped: map[string]int{}, proto: map[snapshot.Proto]int{}, port: map[protoPort]int{},
		excluded: map[snapshot.Proto]int{}, classes: map[string]int{}}}
}

func (o *oracle) isLocal(a netip.Addr) bool {
	for _, p := range o.local {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Link-layer header length of each link type, and tshark's name for it.
func linkHeader(lt uint32) (hdr int, dissector string) {
	switch lt {
	case LinkEthernet:
		return 14, "eth"
	case LinkSLL:
		return 16, "sll"
	case LinkSLL2:
		return 20, "sll"
	case LinkNull:
		return 4, "null"
	case LinkLoop:
		return 4, "loop"
	case LinkRaw, LinkRawBSD, LinkRawOBSD:
		return 0, "raw"
	}
	return 0, "" // 228/229: tshark starts with ip/ipv6
}

// Difference classes (docs/REPLAY.md lists each with its counts).
const (
	classIPInEncap  = "IP inside an encapsulation the datapath does not parse (non-IP): "
	classMPLSDeep   = "IP under more than 8 MPLS labels (non-IP)"
	classPPPoECtl   = "IP in a PPPoE session with a version, type or code other than 1, 1, 0 (non-IP)"
	classIPv4Cut    = "IPv4 header cut by the snap length (non-IP)"
	classIPv4IHL    = "IPv4 header length below 20 (non-IP)"
	classIPVersion  = "IP version field disagrees with the ethertype (non-IP)"
	classIPv6Cut    = "IPv6 header cut by the snap length (non-IP)"
	classVLAN3      = "more than two VLAN tags (non-IP)"
	classExtCap     = "IPv6 extension-header chain longer than 8 (portless)"
	classL3Len      = "IP length field shorter than the captured headers (TSO/BIG TCP, malformed): tshark stops at it, the datapath reads on"
	classL4Quirk    = "L4 header captured but not decoded by tshark (malformed-packet exception)"
	classTsharkStop = "IP header tshark did not finish decoding"
)

// frame applies the datapath's documented scope to one tshark frame.
func (o *oracle) frame(lt uint32, f *tsFrame) {
	p := o.p
	p.frames++
	capLen64, _ := f.num(tfCapLen, 0)
	capLen := int(capLen64)
	hdr, link := linkHeader(lt)
	protos := strings.Split(strings.Join(f[tfProtocols], ","), ":")
	// What replay skips before the programs see anything.
	switch {
	case lt == LinkEthernet && capLen < 14:
		p.skipped[SkipRunt]++
		return
	case (lt == LinkSLL || lt == LinkSLL2 || lt == LinkNull || lt == LinkLoop) && capLen < hdr,
		(lt == LinkRaw || lt == LinkRawBSD || lt == LinkRawOBSD) && capLen == 0:
		p.skipped[SkipLinkHeaderCut]++
		return
	}
	i := 0
	if link != "" && len(protos) > 0 && protos[0] == link {
		i = 1
	}
	if i < len(protos) && protos[i] == "ethertype" {
		i++
	}
	// VLAN tags: 802.1Q (0x8100) or 802.1ad (0x88a8); tshark also takes
	// 0x9100 for a tag, the datapath does not.
	tags := 0
	outer, _ := f.num(tfEthType, 0)
	for i < len(protos) && (protos[i] == "vlan" || protos[i] == "ieee8021ad") {
		if tags == 0 && outer != 0x8100 && outer != 0x88a8 && lt == LinkEthernet {
			break
		}
		tags++
		i++
		if i < len(protos) && protos[i] == "ethertype" {
			i++
		}
	}
	nonIP := func(class string) {
		p.nonIP++
		if class != "" {
			p.classes[class]++
		}
	}
	// A PPPoE session or an MPLS stack between Ethernet/VLAN and IP
	// (parse_encap): its length, and whether the datapath goes on to IP.
	encap, encapClass := 0, ""
	if tags <= 2 && i < len(protos) {
		switch protos[i] {
		case "pppoes":
			v, _ := f.num(tfPPPoEVersion, 0)
			ty, _ := f.num(tfPPPoEType, 0)
			code, _ := f.num(tfPPPoECode, 0)
			i++
			if i < len(protos) && protos[i] == "ppp" {
				i++
			}
			encap = 8
			pp, _ := f.num(tfPPPProtocol, 0)
			if v != 1 || ty != 1 || code != 0 {
				encapClass = classPPPoECtl
			} else if pp != 0x21 && pp != 0x57 {
				encapClass = classIPInEncap + "ppp"
			}
		case "mpls":
			i++
			labels := 0
			for ; labels < len(f[tfMPLSBottom]); labels++ {
				if b, _ := f.num(tfMPLSBottom, labels); b == 1 {
					labels++
					break
				}
			}
			encap = 4 * labels
			if labels > 8 {
				encapClass = classMPLSDeep
			}
		}
	}
	var l3 string
	if i < len(protos) {
		l3 = protos[i]
	}
	if encapClass != "" && (l3 == "ip" || l3 == "ipv6") {
		nonIP(encapClass)
		return
	}
	switch lt {
	case LinkRaw, LinkRawBSD, LinkRawOBSD:
		// Replay takes the version from the first nibble, as tshark does.
		if l3 != "ip" && l3 != "ipv6" {
			p.skipped[SkipRawVersion]++
			return
		}
	case LinkNull, LinkLoop:
		if l3 != "ip" && l3 != "ipv6" {
			p.skipped[SkipLoopFamily]++
			return
		}
	}
	if tags > 2 {
		l3 = "" // the datapath stops after two tags
	}
	if l3 != "ip" && l3 != "ipv6" {
		for _, q := range protos[i:] {
			if q == "ip" || q == "ipv6" {
				if tags > 2 {
					nonIP(classVLAN3)
					return
				}
				nonIP(classIPInEncap + orDash(l3))
				return
			}
		}
		nonIP("")
		return
	}
	off := hdr + 4*tags + encap // the IP header in the record
	v4 := l3 == "ip"
	// tshark follows the version nibble when it disagrees with the
	// ethertype (0x0800 holding an IPv6 header); the datapath does not.
	if v, ok := f.num(tfIPVersion, 0); v4 && ok && v != 4 {
		nonIP(classIPVersion)
		return
	}
	if v, ok := f.num(tfIP6Version, 0); !v4 && ok && v != 6 {
		nonIP(classIPVersion)
		return
	}
	var (
		proto    uint8
		frag     bool
		cut      bool // no L4 for the datapath (extension headers cut or over the cap)
		l4off    int  // offset of the L4 header in the record
		l3end    int  // where the IP length field says the packet ends
		src, dst netip.Addr
		l4i      = i + 1 // index of the L4 dissector in protos
	)
	if v4 {
		if capLen < off+20 {
			nonIP(classIPv4Cut)
			return
		}
		hl, ok := f.num(tfIPHdrLen, 0)
		if !ok || hl < 20 {
			nonIP(classIPv4IHL)
			return
		}
		var err1, err2 error
		s, _ := f.first(tfIPSrc)
		d, _ := f.first(tfIPDst)
		src, err1 = netip.ParseAddr(s)
		dst, err2 = netip.ParseAddr(d)
		pr, ok := f.num(tfIPProto, 0)
		if err1 != nil || err2 != nil || !ok {
			// tshark stopped inside the header (e.g. a total length below
			// the header length): IP for the datapath, protocol unknown.
			p.unknownProto++
			p.classes[classTsharkStop]++
			return
		}
		proto = uint8(pr)
		fo, _ := f.num(tfIPFragOff, 0)
		frag = fo != 0
		l4off = off + int(hl)
		tl, _ := f.num(tfIPLen, 0)
		l3end = off + int(tl)
	} else {
		if capLen < off+40 {
			nonIP(classIPv6Cut)
			return
		}
		s, _ := f.first(tfIP6Src)
		d, _ := f.first(tfIP6Dst)
		var err1, err2 error
		src, err1 = netip.ParseAddr(s)
		dst, err2 = netip.ParseAddr(d)
		nxt, ok := f.num(tfIP6Nxt, 0)
		if err1 != nil || err2 != nil || !ok {
			p.unknownProto++
			p.classes[classTsharkStop]++
			return
		}
		plen, _ := f.num(tfIP6Plen, 0)
		l3end = off + 40 + int(plen)
		next, pos := uint8(nxt), off+40
		occ := map[int]int{}
		walked := 0
	walk:
		for ; walked < 8; walked++ {
			var nf, lf, need int
			switch next {
			case 0:
				nf, lf, need = tfIP6HopNxt, tfIP6HopLen, 2
			case 43:
				nf, lf, need = tfIP6RoutingNxt, tfIP6RoutingLen, 2
			case 60:
				nf, lf, need = tfIP6DstoptsNxt, tfIP6DstoptsLen, 2
			case 44:
				nf, lf, need = tfIP6FragNxt, -1, 8
			default:
				break walk
			}
			if capLen < pos+need {
				cut = true // counted under the cut header's type, no ports
				break walk
			}
			n, ok := f.num(nf, occ[nf])
			occ[nf]++
			length := 8
			if lf >= 0 {
				l, ok2 := f.num(lf, occ[lf])
				occ[lf]++
				ok = ok && ok2
				length = (int(l) + 1) * 8
			}
			if !ok {
				p.unknownProto++
				p.classes[classL3Len]++
				return
			}
			l4i++
			if next == 44 {
				if fo, _ := f.num(tfIP6FragOff, occ[nf]-1); fo != 0 {
					next, frag = uint8(n), true
					break walk
				}
			}
			next, pos = uint8(n), pos+length
		}
		if !cut && !frag && walked == 8 && (next == 0 || next == 43 || next == 60 || next == 44) {
			cut = true
			p.classes[classExtCap]++
		}
		proto, l4off = next, pos
	}
	sp := snapshot.Proto(proto)
	p.proto[sp]++
	egress := o.isLocal(src)
	// L4: what the datapath reads is decided by the captured bytes; its
	// values come from tshark.
	var need int
	var l4 string
	switch proto {
	case 6, 17, 132:
		need, l4 = 4, map[uint8]string{6: "tcp", 17: "udp", 132: "sctp"}[proto]
	case 1:
		need, l4 = 2, "icmp"
	case 58:
		need, l4 = 2, "icmpv6"
	}
	if frag || cut || need == 0 || capLen < l4off+need {
		p.port[protoPort{sp, 0}]++
		return
	}
	fields := map[uint8][]int{6: {tfTCPSrc, tfTCPDst}, 17: {tfUDPSrc, tfUDPDst}, 132: {tfSCTPSrc, tfSCTPDst},
		1: {tfICMPType, tfICMPCode}, 58: {tfICMP6Type, tfICMP6Code}}[proto]
	if proto == 6 && capLen >= l4off+14 {
		fields = append(fields, tfTCPFlags)
	}
	var vals []uint64
	for _, fi := range fields {
		v, ok := f.num(fi, 0)
		if !ok || l4i >= len(protos) || protos[l4i] != l4 {
			// The datapath reads these bytes; tshark did not decode them.
			p.excluded[sp]++
			reads := need
			if len(fields) == 3 {
				reads = 14 // TCP flags
			}
			if l3end < l4off+reads {
				p.classes[classL3Len]++
			} else {
				p.classes[classL4Quirk]++
			}
			return
		}
		vals = append(vals, v)
	}
	switch {
	case proto == 1 && (vals[0] == 8 || vals[0] == 0):
		p.port[protoPort{sp, 8 << 8}]++
	case proto == 58 && (vals[0] == 128 || vals[0] == 129):
		p.port[protoPort{sp, 128 << 8}]++
	case proto == 1 || proto == 58:
		p.port[protoPort{sp, uint16(vals[0]<<8 | vals[1])}]++
	default:
		var flags uint8
		if len(vals) == 3 {
			flags = uint8(vals[2])
		}
		if o.convs != nil {
			o.note(proto, uint16(vals[0]), uint16(vals[1]), flags, len(vals) == 3, src, dst)
			return
		}
		p.port[protoPort{sp, o.servicePort(proto, uint16(vals[0]), uint16(vals[1]), flags, src, dst, egress)}]++
	}
}

func orDash(s string) string {
	if s == "" {
		return "(nothing)"
	}
	return s
}

// servicePort recomputes the documented direction rule
// (docs/ARCHITECTURE.md, "Direction") without the local-port set, which
// replay leaves empty.
func (o *oracle) servicePort(proto uint8, sport, dport uint16, flags uint8, src, dst netip.Addr, egress bool) uint16 {
	lport, rport, peer, self := dport, sport, src, dst
	if egress {
		lport, rport, peer, self = sport, dport, dst, src
	}
	key := oracleConn{peer, lport, rport, proto}
	eph := func(p uint16) bool { return p >= o.eph[0] && p <= o.eph[1] }
	var d oracleDir
	switch known, ok := o.conns[key]; {
	case proto == 6 && flags&0x02 != 0:
		// SYN opens, SYN-ACK answers; remembered.
		openerIsPeer := flags&0x10 == 0 != egress
		d.dir = snapshot.Outbound
		if openerIsPeer {
			d.dir = snapshot.Inbound
		}
		o.conns[key] = d
	case ok:
		d = known
	case (lport == 0) != (rport == 0):
		// Port 0 is never the service.
		d.inferred, d.dir = true, snapshot.Inbound
		if lport == 0 {
			d.dir = snapshot.Outbound
		}
		if proto != 6 {
			o.conns[key] = d
		}
	case proto != 6 && egress:
		d.dir = snapshot.Outbound
		o.conns[key] = d
	default:
		d.inferred = true
		fl, fr := o.fan[oracleEnd{self, lport, proto}], o.fan[oracleEnd{peer, rport, proto}]
		switch {
		case eph(lport) != eph(rport):
			d.dir = snapshot.Inbound
			if eph(lport) {
				d.dir = snapshot.Outbound
			}
		case fl != fr:
			d.dir = snapshot.Inbound
			if fr > fl {
				d.dir = snapshot.Outbound
			}
		case lport != rport:
			d.dir = snapshot.Inbound
			if lport > rport {
				d.dir = snapshot.Outbound
			}
		default:
			d.dir = snapshot.Inbound
		}
		if proto != 6 {
			o.conns[key] = d
		}
	}
	if d.dir == snapshot.Outbound {
		return rport
	}
	return lport
}

// fileOutcome is one file's comparison.
type fileOutcome struct {
	name     string
	linkType string
	frames   int
	status   string // "compared", "unsupported link type", ...
	classes  map[string]int
	skipped  map[string]int
	problems []string

	replayTime, tsharkTime time.Duration
}

func compareFile(ctx context.Context, c *bpf.Collector, path, cfgDir string) fileOutcome {
	out := fileOutcome{name: filepath.Base(path), classes: map[string]int{}, skipped: map[string]int{}}
	fail := func(format string, args ...any) { out.problems = append(out.problems, fmt.Sprintf(format, args...)) }
	t0 := time.Now()
	// The batch path (no time slices; flow times are not compared).
	res, err := Run(ctx, c, path, Options{Workers: 1})
	out.replayTime = time.Since(t0)
	var lte *LinkTypeError
	if errors.As(err, &lte) {
		// Nothing to compare; tshark is not run (it reads many of these,
		// a third of the corpus, and the time is better spent elsewhere).
		out.status = "unsupported link type"
		names := make([]string, len(lte.LinkTypes))
		for i, lt := range lte.LinkTypes {
			names[i] = LinkTypeName(lt)
		}
		out.linkType = strings.Join(names, ", ")
		out.frames = lte.Records
		if lte.Records == 0 { // a pcap: count its records
			out.frames, err = countRecords(path)
			if err != nil {
				fail("count records: %v", err)
			}
		}
		return out
	}
	if err != nil {
		fail("replay: %v", err) // no corpus file is damaged: a reader bug
		return out
	}
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	t0 = time.Now()
	frames, terr := runTshark(tctx, path, cfgDir)
	out.tsharkTime = time.Since(t0)
	out.frames = len(frames)
	if terr != nil {
		fail("%v", terr)
		return out
	}
	out.status = "compared"
	lts := make([]string, 0, len(res.LinkType))
	for lt := range res.LinkType {
		lts = append(lts, LinkTypeName(lt))
	}
	sort.Strings(lts)
	out.linkType = strings.Join(lts, ", ")
	if len(res.LinkType) > 1 {
		fail("several link types in one file; the oracle handles one")
		return out
	}
	var lt uint32
	for k := range res.LinkType {
		lt = k
	}
	if res.Packets != len(frames) {
		fail("replay read %d records, tshark %d frames", res.Packets, len(frames))
		return out
	}
	// First pass: the conversations, for the fan-in; second: the counts.
	pre := newOracle(res.Local.Prefixes, res.Snapshot.EphemeralPorts)
	pre.convs = map[oracleConv]uint8{}
	for i := range frames {
		pre.frame(lt, &frames[i])
	}
	o := newOracle(res.Local.Prefixes, res.Snapshot.EphemeralPorts)
	o.fan = fanIn(pre.convs)
	for i := range frames {
		o.frame(lt, &frames[i])
	}
	out.classes, out.skipped = o.p.classes, o.p.skipped
	compareCounts(res, o.p, fail)
	return out
}

// countRecords reads a capture to its end and counts its records.
func countRecords(path string) (int, error) {
	cp, err := openCapture(path, filepath.Base(path))
	if err != nil {
		return 0, err
	}
	defer cp.close()
	for {
		if _, err := cp.next(); err == io.EOF {
			return cp.read, nil
		} else if err != nil {
			return cp.read, err
		}
	}
}

// compareCounts checks the snapshot against the prediction.
func compareCounts(res *Result, p *prediction, fail func(string, ...any)) {
	s := res.Snapshot
	if fmt.Sprint(res.Skipped) != fmt.Sprint(p.skipped) {
		fail("skipped %v, predicted %v", res.Skipped, p.skipped)
	}
	if seen := s.Stats.PacketsIngress + s.Stats.PacketsEgress; seen != uint64(res.Replayed) {
		fail("programs saw %d packets, replay fed %d", seen, res.Replayed)
	}
	var nonIP uint64
	for _, ctr := range s.Stats.NonIP {
		nonIP += ctr.Packets
	}
	if nonIP != uint64(p.nonIP) {
		fail("non-IP: snapshot %d, predicted %d", nonIP, p.nonIP)
	}
	gotProto := map[snapshot.Proto]int{}
	gotPort := map[protoPort]int{}
	for _, f := range s.Flows {
		n := int(f.Packets())
		gotProto[f.Proto] += n
		gotPort[protoPort{f.Proto, f.Port}] += n
	}
	// Per protocol: exactly the predicted total, plus a share of the
	// frames whose protocol tshark did not decode.
	unknown := 0
	for pr := range union(gotProto, p.proto) {
		d := gotProto[pr] - p.proto[pr]
		if d < 0 || (d > 0 && p.unknownProto == 0) {
			fail("%s packets: snapshot %d, tshark %d", pr, gotProto[pr], p.proto[pr])
		}
		unknown += d
	}
	if unknown != p.unknownProto {
		fail("IP packets of protocols tshark did not decode: snapshot %d more than predicted, %d predicted", unknown, p.unknownProto)
	}
	extra := map[snapshot.Proto]int{}
	for pp := range union(gotPort, p.port) {
		d := gotPort[pp] - p.port[pp]
		if d < 0 {
			fail("%s: snapshot %d packets, tshark %d", pp, gotPort[pp], p.port[pp])
		}
		extra[pp.proto] += d
	}
	for pr := range union(extra, p.excluded) {
		if want := p.excluded[pr] + gotProto[pr] - p.proto[pr]; extra[pr] != want {
			var lines []string
			for pp := range union(gotPort, p.port) {
				if pp.proto == pr && gotPort[pp] != p.port[pp] {
					lines = append(lines, fmt.Sprintf("%s snapshot %d tshark %d", pp, gotPort[pp], p.port[pp]))
				}
			}
			sort.Strings(lines)
			fail("%s: %d packets on other ports than predicted, %d excluded by class: %s", pr, extra[pr], p.excluded[pr], strings.Join(lines, "; "))
		}
	}
}

func union[K comparable](a, b map[K]int) map[K]bool {
	u := map[K]bool{}
	for k := range a {
		u[k] = true
	}
	for k := range b {
		u[k] = true
	}
	return u
}

func TestDifferentialTshark(t *testing.T) {
	if testing.Short() {
		t.Skip("replays the whole tcpdump corpus")
	}
	dir := corpusDir(t)
	files, _ := filepath.Glob(filepath.Join(dir, "*.pcap"))
	ng, _ := filepath.Glob(filepath.Join(dir, "*.pcapng"))
	files = append(files, ng...)
	sort.Strings(files)
	if len(files) == 0 {
		if testenv.Required() {
			t.Fatalf("no captures in %s (set FLOWAUDIT_CORPUS)", dir)
		}
		t.Skipf("no captures in %s (set FLOWAUDIT_CORPUS)", dir)
	}
	testenv.RequireBPF(t)
	testenv.RequireTool(t, "tshark")
	cfgDir := t.TempDir()
	start := time.Now()

	const parallel = 2
	outcomes := make([]fileOutcome, len(files))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		c, err := bpf.Open(bpf.Options{EphemeralPorts: DefaultEphemeralPorts, Programs: Programs(Options{})})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				outcomes[i] = compareFile(context.Background(), c, files[i], cfgDir)
			}
		}()
	}
	for i := range files {
		next <- i
	}
	close(next)
	wg.Wait()

	rep := summarize(outcomes)
	var replayTime, tsharkTime time.Duration
	for _, o := range outcomes {
		replayTime += o.replayTime
		tsharkTime += o.tsharkTime
	}
	t.Logf("time spent (both workers): replay %s, tshark %s", replayTime.Round(time.Millisecond), tsharkTime.Round(time.Millisecond))
	failed := 0
	for _, o := range outcomes {
		if len(o.problems) > 0 {
			failed++
			t.Errorf("%s (%s): %s", o.name, o.linkType, strings.Join(o.problems, "\n\t"))
		}
	}
	t.Logf("%d files in %s: %d compared and equal, %d failed; %s", len(files), time.Since(start).Round(time.Second),
		rep.compared-failed, failed, rep.brief)
	if path := os.Getenv("FLOWAUDIT_DIFF_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(rep.table), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type report struct {
	compared int
	brief    string
	table    string
}

// summarize builds the class table of docs/REPLAY.md.
func summarize(outcomes []fileOutcome) report {
	type agg struct{ files, frames int }
	status := map[string]*agg{}
	classes := map[string]*agg{}
	var r report
	for _, o := range outcomes {
		key := o.status
		if o.status == "unsupported link type" {
			key += ": " + o.linkType
		}
		if status[key] == nil {
			status[key] = &agg{}
		}
		status[key].files++
		status[key].frames += o.frames
		if o.status == "compared" {
			r.compared++
		}
		add := func(name string, n int) {
			if classes[name] == nil {
				classes[name] = &agg{}
			}
			classes[name].files++
			classes[name].frames += n
		}
		for c, n := range o.classes {
			add(c, n)
		}
		for c, n := range o.skipped {
			add("skipped by replay: "+c, n)
		}
	}
	var b strings.Builder
	b.WriteString("| files | frames | outcome |\n|---:|---:|---|\n")
	for _, k := range sortedKeys(status) {
		fmt.Fprintf(&b, "| %d | %d | %s |\n", status[k].files, status[k].frames, k)
	}
	b.WriteString("\n| files | frames | class |\n|---:|---:|---|\n")
	for _, k := range sortedKeys(classes) {
		fmt.Fprintf(&b, "| %d | %d | %s |\n", classes[k].files, classes[k].frames, k)
	}
	r.table = b.String()
	r.brief = fmt.Sprintf("outcomes %d kinds, %d difference classes", len(status), len(classes))
	return r
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestOracleServicePort pins the oracle's copy of the direction rule on
// the cases docs/ARCHITECTURE.md spells out, so that it cannot drift into
// agreeing with whatever the datapath does.
func TestOracleServicePort(t *testing.T) {
	o := newOracle([]netip.Prefix{netip.PrefixFrom(hostA, 32)}, DefaultEphemeralPorts)
	steps := []struct {
		name         string
		proto        uint8
		sport, dport uint16
		flags        uint8
		src, dst     netip.Addr
		want         uint16
	}{
		{"SYN in: the local port", 6, 40000, 22, 0x02, peerB, hostA, 22},
		{"SYN-ACK out of the same connection", 6, 22, 40000, 0x12, hostA, peerB, 22},
		{"mid-stream TCP, ephemeral vs well-known", 6, 443, 50000, 0x10, peerB, hostA, 443},
		{"mid-stream TCP, both high: the lower port", 6, 61000, 9000, 0x10, peerB, hostA, 9000},
		{"UDP sent by the local side: remote port", 17, 9999, 2055, 0, hostA, peerB, 2055},
		{"its answer joins", 17, 2055, 9999, 0, peerB, hostA, 2055},
		{"UDP in, both ephemeral: the lower, remembered", 17, 50001, 40001, 0, peerB, hostA, 40001},
		{"the answer from the local side stays on it", 17, 40001, 50001, 0, hostA, peerB, 40001},
		{"same port both ends", 17, 123, 123, 0, peerB, hostA, 123},
		{"SYN out: the remote port", 6, 50000, 8080, 0x02, hostA, peerB, 8080},
		{"UDP in from port 0: the local port", 17, 0, 50000, 0, peerB, hostA, 50000},
		{"UDP out to port 0: the local port", 17, 6081, 0, 0, hostA, peerB, 6081},
		{"mid-stream TCP, both low, the peer's port has the larger fan-in", 6, 31600, 8868, 0x10, peerB, hostA, 31600},
		{"mid-stream TCP, both low, our port has the larger fan-in", 6, 2000, 9000, 0x10, peerB, hostA, 9000},
		{"fan-in does not override the ephemeral range", 6, 50000, 22, 0x10, peerB, hostA, 22},
	}
	o.fan = map[oracleEnd]int{{peerB, 31600, 6}: 12, {hostA, 9000, 6}: 3, {peerB, 2000, 6}: 2, {peerB, 50000, 6}: 40}
	for _, s := range steps {
		if got := o.servicePort(s.proto, s.sport, s.dport, s.flags, s.src, s.dst, o.isLocal(s.src)); got != s.want {
			t.Errorf("%s: port %d, want %d", s.name, got, s.want)
		}
	}
}
