package replay

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"testing"
)

// countIPPlain is the scan's accounting of an IP packet as it was before
// countIP remembered directions (dirState): five map operations a packet.
func (sc *scanResult) countIPPlain(fi *frameInfo) {
	for i, a := range []netip.Addr{fi.src, fi.dst} {
		ac := sc.addrs[a]
		if ac == nil {
			ac = &addrCount{}
			sc.addrs[a] = ac
		}
		if i == 0 || a != fi.src {
			ac.packets++
		}
		if i == 1 && fi.syn {
			ac.synIn++
		}
		if i == 1 && a != fi.src {
			switch {
			case !ac.sender.IsValid():
				ac.sender = fi.src
			case ac.sender != fi.src:
				ac.senders2 = true
			}
		}
	}
	if src := sc.addrs[fi.src]; src != nil {
		src.sent++
		if fi.proto == 17 && fi.ports && (fi.sport == 67 && fi.dport == 68 || fi.sport == 547 && fi.dport == 546) {
			src.dhcpServer++
		}
	}
	sc.noteConv(fi)
	sc.macOf[macIP{fi.srcMAC, fi.src}] = struct{}{}
}

func newScanResult() *scanResult {
	return &scanResult{addrs: map[netip.Addr]*addrCount{}, macOf: map[macIP]struct{}{}, convs: map[conv]uint8{}, dirs: map[dirKey]*dirState{}}
}

// scanText is everything the heuristic and the fan-in take from a scan.
func scanText(sc *scanResult) string {
	var lines []string
	for a, ac := range sc.addrs {
		lines = append(lines, fmt.Sprintf("addr %s %+v", a, *ac))
	}
	for k, v := range sc.convs {
		lines = append(lines, fmt.Sprintf("conv %+v %d", k, v))
	}
	for m := range sc.macOf {
		lines = append(lines, fmt.Sprintf("mac %+v", m))
	}
	lines = append(lines, fmt.Sprintf("untracked %d", sc.convsUntracked))
	sort.Strings(lines)
	return fmt.Sprint(lines)
}

// TestScanCountIPMatchesPlain: the scan's accounting with the direction
// cache gives exactly what the plain accounting gives, on every capture of
// the tcpdump corpus and on a synthetic one with a full direction cache
// and conversation table.
func TestScanCountIPMatchesPlain(t *testing.T) {
	files := corpusFiles(t)
	n := 0
	for _, path := range files {
		a, b := newScanResult(), newScanResult()
		err := Frames(path, func(frame []byte) bool {
			if fi := parseFrame(frame); fi.ip {
				a.countIP(&fi)
				b.countIPPlain(&fi)
			}
			return true
		})
		if err != nil {
			continue // unsupported link types and the like: nothing to count
		}
		n++
		if sa, sb := scanText(a), scanText(b); sa != sb {
			t.Errorf("%s: scan with the direction cache differs:\n%s", filepath.Base(path), diffText(sb, sa))
		}
	}
	if n < len(files)/2 {
		t.Errorf("only %d of %d captures read", n, len(files))
	}
	// Full tables: the cache starts again, the conversation table stops
	// taking new conversations and counts them as untracked.
	defer func(c, d int) { maxConvs, maxDirs = c, d }(maxConvs, maxDirs)
	maxConvs, maxDirs = 3000, 1000
	a, b := newScanResult(), newScanResult()
	for i := 0; i < 4000; i++ {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		for _, fi := range []frameInfo{
			{ip: true, src: src, dst: hostA, proto: 6, ports: true, sport: 40000, dport: 443, syn: i%3 == 0},
			{ip: true, src: hostA, dst: src, proto: 6, ports: true, sport: 443, dport: 40000, rst: i%5 == 0},
		} {
			a.countIP(&fi)
			b.countIPPlain(&fi)
		}
	}
	for i := 0; i < 500; i++ { // the first directions again, after the cache was cleared
		src := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		fi := frameInfo{ip: true, src: src, dst: hostA, proto: 6, ports: true, sport: 40000, dport: 443}
		a.countIP(&fi)
		b.countIPPlain(&fi)
	}
	if a.convsUntracked == 0 {
		t.Errorf("conversation table never full (%d entries)", len(a.convs))
	}
	if sa, sb := scanText(a), scanText(b); sa != sb {
		t.Errorf("full tables: scan with the direction cache differs (%d vs %d lines)", len(sa), len(sb))
	}
}
