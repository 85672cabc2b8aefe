// Package replay feeds a packet capture (pcap or pcapng) through
// flowaudit's own XDP and TC programs with BPF_PROG_TEST_RUN and turns what
// they counted into a snapshot, the same file a live recording writes. The
// design, the local-address heuristic and every known difference from a
// live recording are in docs/REPLAY.md.
//
// A replay reads the file twice: a scan (packet count, time range, the
// addresses for the local-address heuristic) and the replay itself. Frames
// whose source address is local go through the TC egress program, all
// others through the ingress program (XDP by default), on a pool of
// workers that keeps the packets of one conversation in capture order.
package replay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

// MaxFrame is the longest frame given to a program: the largest linear
// frame BPF_PROG_TEST_RUN builds for an XDP program on 4 KiB pages
// (4096 - 256 bytes of headroom - 320 of skb_shared_info). Longer frames
// (jumbo frames, offload super-packets captured on a host) are cut to it;
// their bytes beyond it are reported in Result.MissingBytes.
const MaxFrame = 3520

// DefaultEphemeralPorts is the client port range replay assumes unless
// told otherwise: Linux's default net.ipv4.ip_local_port_range. The
// replaying machine's own setting says nothing about the captured host.
var DefaultEphemeralPorts = [2]uint16{32768, 60999}

// DNSRing is the DNS ring size (bpf.Options.DNSRing) for a replay's
// collector: 8 MiB, ~6 300 answers, so that a batch of frames is not cut
// short for its DNS answers (a batch holds at most half a ring's worth,
// and the ring is drained before a batch that would not fit). With the
// live default (512 KiB) a batch of make bench's capture, whose every
// eighth frame is an answer, ends after ~1 600 frames instead of 4 096,
// and the reader waits for the ring more often; the result is the same.
const DNSRing = 8 << 20

// Verdicts the programs must return for every frame (they never drop).
const (
	xdpPass = 2          // XDP_PASS
	tcxNext = 0xffffffff // TCX_NEXT (-1)
)

// Options configure Run.
type Options struct {
	// Local are the addresses (or prefixes) of the host the capture was
	// taken on. Empty: the most frequent address of each IP version is
	// taken (see docs/REPLAY.md).
	Local []netip.Prefix
	// Listening are local services known by other means; they are loaded
	// into the programs' local-port set, as sock_diag does live, and
	// written to the snapshot.
	Listening []snapshot.Socket
	// Workers is the number of parallel BPF_PROG_TEST_RUN workers
	// (default: one per CPU; per packet one per CPU but one, which the
	// reader uses). The result does not depend on it.
	Workers int
	// PerPacket selects the per-packet path: one BPF_PROG_TEST_RUN per
	// frame through flowaudit_xdp / flowaudit_tc_egress (the collector must
	// be opened with bpf.LoadLive), first/last seen known to a time slice
	// (Resolution). The default batch path runs many frames per call
	// through flowaudit_replay (bpf.LoadReplay) with each frame's capture
	// time, and first/last seen are exact. docs/REPLAY.md.
	PerPacket bool
	// Resolution bounds the error of a flow's first/last seen on the
	// per-packet path; zero picks max(1s, capture length / 1000). The
	// batch path ignores it.
	Resolution time.Duration
	// Ingress is the program for incoming frames: bpf.HookXDP (default)
	// or bpf.HookTCIngress, which implies PerPacket (the batch program
	// counts incoming frames as XDP does).
	Ingress bpf.Hook
	// Interface names the capture's interface in the snapshot. Empty: the
	// pcapng interface name when the packets come from exactly one named
	// interface, else "replay".
	Interface   string
	ToolVersion string
	// Progress, when set, is called about ten times a second.
	Progress func(Progress)
	Logger   *zap.Logger
}

// Progress is a progress report: the scan counts bytes of the file, the
// replay counts packets.
type Progress struct {
	Phase       string // "scan" or "replay"
	Done, Total int64
}

// LocalChoice records what replay took as local and why.
type LocalChoice struct {
	// From is "--local-addr" (given) or "heuristic" (most frequent
	// address of each IP version), or "none" (no IP packets).
	From     string
	Prefixes []netip.Prefix
	// Addrs are the local addresses: the chosen ones, or the given
	// single addresses plus every capture address inside a given prefix.
	Addrs []netip.Addr
	// Share: for each address, the fraction of the IP packets of its
	// version it appears in (as source or destination).
	Share map[netip.Addr]float64
}

// Result is a replay's outcome.
type Result struct {
	Snapshot  *snapshot.Snapshot
	Format    string         // "pcap" or "pcapng"
	LinkType  map[uint32]int // records per link type
	Packets   int            // records read
	Replayed  int            // frames given to the programs
	Calls     int            // BPF_PROG_TEST_RUN calls (per-packet path: identical consecutive frames for TC share one)
	PerPacket bool           // the per-packet path ran (Options.PerPacket)
	Skipped   map[string]int // records not replayed, by reason
	Local     LocalChoice
	// Snapped counts records cut by the capture's snap length, Cut the
	// frames cut to MaxFrame; MissingBytes is the wire bytes neither
	// reached the programs (the snapshot's byte counts are short by it).
	Snapped, Cut int
	MissingBytes uint64
	// EgressViaXDP (per-packet path) counts outgoing frames too short for
	// their IP header, which test_run refuses for TC programs: they went
	// through XDP, which counts them identically (non-IP, truncated), and
	// the snapshot's per-hook packet counts were corrected. The batch path
	// counts them as outgoing directly.
	EgressViaXDP int
	Resolution   time.Duration // per-packet path; 0 on the batch path (exact)
	Slices       int           // time slices (per-packet path, see Options.Resolution)
	// Flushes counts batches the batch path ran early because a peer
	// whose flows another worker had in the batch came up (see conflict).
	Flushes int
	Elapsed time.Duration // wall time of the replay pass
	// BadTimestamps counts records whose timestamp was outside
	// [MinTimestamp, MaxTimestamp) and was replaced; BadTimes lists the
	// first maxBadTimes of them.
	BadTimestamps int
	BadTimes      []BadTimestamp
	// ServiceHints is the number of endpoints whose fan-in (distinct
	// counterpart ports, at least 2) the port heuristic was given;
	// HintsDropped those beyond the programs' map (the smallest fan-ins).
	// ConvsUntracked counts conversations seen after the scan's
	// conversation table was full, which gave no fan-in evidence.
	ServiceHints, HintsDropped, ConvsUntracked int
	// Err is set when the file could not be read to its end; the
	// snapshot holds every packet before Err.Packet.
	Err *CaptureError
}

// maxBadTimes bounds Result.BadTimes; maxBadTimesLogged the warnings.
const (
	maxBadTimes       = 100
	maxBadTimesLogged = 10
)

// Run replays the capture at path through c's programs and returns the
// snapshot. It resets c's maps first; c must not be attached to any
// interface. When the file is cut short or corrupt, Run returns the result
// for the packets before the damage together with a *CaptureError.
func Run(ctx context.Context, c *bpf.Collector, path string, o Options) (*Result, error) {
	if len(c.Attachments()) > 0 {
		return nil, errors.New("replay needs a collector that is not attached to any interface")
	}
	if o.Ingress != bpf.HookTCIngress {
		o.Ingress = bpf.HookXDP
	} else {
		o.PerPacket = true
	}
	if o.Workers <= 0 {
		// Per packet, the reader needs a CPU of its own to keep the
		// workers busy; with batches it has less to do per frame than a
		// worker (measured: docs/REPLAY.md).
		o.Workers = max(1, runtime.NumCPU()-1)
		if !o.PerPacket {
			o.Workers = runtime.NumCPU()
		}
	}
	switch {
	case o.PerPacket && !c.LiveLoaded():
		return nil, errors.New("the per-packet replay path needs a collector opened with bpf.LoadLive")
	case !o.PerPacket && !c.ReplayLoaded():
		return nil, bpf.ErrNoReplayProgram
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	name := filepath.Base(path)

	sc, err := scan(ctx, path, name, o.Progress)
	if err != nil {
		return nil, err
	}
	res := &Result{Format: sc.format, LinkType: sc.linkTypes, Skipped: map[string]int{}, Err: sc.err,
		BadTimestamps: sc.badTimestamps, BadTimes: sc.badTimes, ConvsUntracked: sc.convsUntracked}
	logBadTimes(o.Logger, name, res)
	res.Local = chooseLocal(sc, o.Local)
	logLocal(o.Logger, res.Local)
	res.PerPacket = o.PerPacket
	if o.PerPacket {
		res.Resolution = o.Resolution
		if res.Resolution <= 0 {
			res.Resolution = autoResolution(sc.first, sc.last)
		}
	}

	if err := c.Reset(); err != nil {
		return nil, err
	}
	if err := c.SetLocalPorts(o.Listening); err != nil {
		return nil, err
	}
	hints := serviceHints(sc.convs)
	stored, err := c.SetServiceHints(hints)
	if err != nil {
		return nil, err
	}
	res.ServiceHints, res.HintsDropped = stored, len(hints)-stored
	if res.HintsDropped > 0 || res.ConvsUntracked > 0 {
		o.Logger.Warn("fan-in evidence incomplete: the direction of some conversations without a handshake falls back to the lower port",
			zap.Int("endpoints_loaded", stored), zap.Int("endpoints_dropped", res.HintsDropped),
			zap.Int("conversations_untracked", res.ConvsUntracked))
	}
	r := newReplayer(c, o, res, sc)
	if err := r.replay(ctx, path, name, sc.packets, sc.firstValid); err != nil {
		return nil, err
	}
	res.Snapshot.Source = "replay:" + name
	res.Snapshot.Tool.Name = "flowaudit"
	res.Snapshot.Tool.Version = o.ToolVersion
	res.Snapshot.Interfaces = []snapshot.Interface{{Name: r.ifname, Addresses: res.Local.Addrs}}
	res.Snapshot.Listening = append([]snapshot.Socket(nil), o.Listening...)
	res.Snapshot.Start, res.Snapshot.End = sc.first.UTC(), sc.last.UTC()
	res.Snapshot.Sort()
	if err := res.Snapshot.Validate(); err != nil {
		return nil, fmt.Errorf("replay produced an invalid snapshot: %w", err)
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

// Programs is the program set a collector for Run with o must load
// (bpf.Options.Programs): the batch program, or for the per-packet path
// the live programs.
func Programs(o Options) bpf.ProgramSet {
	if o.PerPacket || o.Ingress == bpf.HookTCIngress {
		return bpf.LoadLive
	}
	return bpf.LoadReplay
}

// autoResolution keeps the number of time slices at about 1000 at most:
// each costs up to a kernel tick of waiting.
func autoResolution(first, last time.Time) time.Duration {
	r := last.Sub(first) / 1000
	if r < time.Second {
		return time.Second
	}
	return r.Round(time.Second)
}

// scanResult is what the first pass learns.
type scanResult struct {
	format      string
	packets     int // records read before EOF or the error
	first, last time.Time
	// firstValid is the first valid timestamp in file order: records
	// before it with an invalid one get it (BadTimestamp).
	firstValid    time.Time
	badTimestamps int
	badTimes      []BadTimestamp
	linkTypes     map[uint32]int
	ifaces        map[string]int // pcapng interface names of replayable records
	addrs         map[netip.Addr]*addrCount
	ipPackets     [2]int // IPv4, IPv6 packets
	macOf         map[macIP]struct{}
	// convs: per conversation with ports, which ends sent a packet that
	// is not a TCP RST (fan-in evidence, serviceHints).
	convs          map[conv]uint8
	convsUntracked int
	dirs           map[dirKey]*dirState // cache, see directed
	err            *CaptureError
}

// addrCount is what the local-address heuristic knows of an address: IP
// packets it appears in, TCP SYNs it received, packets it sent, packets
// it sent as a DHCP server (UDP 67→68, 547→546), and whether at least two
// addresses sent to it (sender: the first one).
type addrCount struct {
	packets, synIn, sent, dhcpServer int
	sender                           netip.Addr
	senders2                         bool
}

// broadcastLike: an address that never sent but received from several
// senders, as a directed broadcast address (192.0.2.255) does. Without
// the prefix nothing more certain can be said.
func (ac *addrCount) broadcastLike() bool { return ac.sent == 0 && ac.senders2 }

// endpoint is one end of conversations: address, port, IP protocol.
type endpoint struct {
	addr  netip.Addr
	port  uint16
	proto uint8
}

func (e endpoint) less(o endpoint) bool {
	if e.addr != o.addr {
		return e.addr.Less(o.addr)
	}
	return e.port < o.port
}

// conv is a conversation between two endpoints of one protocol, a < b.
type conv struct{ a, b endpoint }

// maxConvs bounds the scan's conversation table (~100 bytes each); a
// variable for tests.
var maxConvs = 1 << 21

// Bits of scanResult.convs: which end sent.
const (
	convSentA = 1 << iota
	convSentB
)

// dirKey is what the scan remembers of a direction of a conversation
// (dirState), so that most packets need one map lookup.
type dirKey struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
	ports        bool
}

// dirState: the address counts of both ends, the last source MAC noted in
// macOf, and whether noteConv has recorded that the source sent.
type dirState struct {
	src, dst  *addrCount
	mac       [6]byte
	macSeen   bool
	convNoted bool
}

// maxDirs bounds the scan's cache of directions (~150 bytes each); when
// full it starts again empty (it only saves lookups). A variable for tests.
var maxDirs = 1 << 20

// directed returns the state of the packet's direction, creating the
// address counts of both ends the first time.
func (sc *scanResult) directed(fi *frameInfo) *dirState {
	k := dirKey{fi.src, fi.dst, fi.sport, fi.dport, fi.proto, fi.ports}
	if st := sc.dirs[k]; st != nil {
		return st
	}
	if len(sc.dirs) >= maxDirs {
		clear(sc.dirs)
	}
	st := &dirState{src: sc.addrCount(fi.src), dst: sc.addrCount(fi.dst)}
	sc.dirs[k] = st
	return st
}

// countIP counts an IP packet for the local-address heuristic and the
// fan-in evidence.
func (sc *scanResult) countIP(fi *frameInfo) {
	st := sc.directed(fi)
	st.src.packets++
	if fi.dst != fi.src {
		ac := st.dst
		ac.packets++
		switch {
		case !ac.sender.IsValid():
			ac.sender = fi.src
		case ac.sender != fi.src:
			ac.senders2 = true
		}
	}
	if fi.syn {
		st.dst.synIn++
	}
	st.src.sent++
	if fi.proto == 17 && fi.ports && (fi.sport == 67 && fi.dport == 68 || fi.sport == 547 && fi.dport == 546) {
		st.src.dhcpServer++
	}
	if !st.convNoted && sc.noteConv(fi) {
		st.convNoted = true
	}
	if !st.macSeen || st.mac != fi.srcMAC {
		sc.macOf[macIP{fi.srcMAC, fi.src}] = struct{}{}
		st.mac, st.macSeen = fi.srcMAC, true
	}
}

func (sc *scanResult) addrCount(a netip.Addr) *addrCount {
	ac := sc.addrs[a]
	if ac == nil {
		ac = &addrCount{}
		sc.addrs[a] = ac
	}
	return ac
}

// noteConv records that src sent to dst, unless it is a TCP RST (an
// answer that says nothing listens: scans without SYN draw them). It
// reports whether the conversation's table entry has the sender's bit set
// (then later packets of the direction need not be noted again, except a
// RST, which notes nothing).
func (sc *scanResult) noteConv(fi *frameInfo) bool {
	if !fi.ports || (fi.proto == 6 && fi.rst) {
		return false
	}
	s := endpoint{fi.src, fi.sport, fi.proto}
	d := endpoint{fi.dst, fi.dport, fi.proto}
	k, bit := conv{s, d}, uint8(convSentA)
	if d.less(s) {
		k, bit = conv{d, s}, convSentB
	}
	old, ok := sc.convs[k]
	if !ok && len(sc.convs) >= maxConvs {
		sc.convsUntracked++
		return false
	}
	if old&bit == 0 {
		sc.convs[k] = old | bit
	}
	return true
}

// serviceHints computes the fan-in of every endpoint: the number of
// distinct counterpart ports of the conversations in which both ends
// sent. Endpoints with a fan-in of at least 2 are returned (sorted).
func serviceHints(convs map[conv]uint8) []bpf.ServiceHint {
	type peerPort struct {
		e    endpoint
		port uint16
	}
	seen := map[peerPort]struct{}{}
	fan := map[endpoint]uint32{}
	add := func(e endpoint, port uint16) {
		if _, ok := seen[peerPort{e, port}]; !ok {
			seen[peerPort{e, port}] = struct{}{}
			fan[e]++
		}
	}
	for k, sent := range convs {
		if sent == convSentA|convSentB {
			add(k.a, k.b.port)
			add(k.b, k.a.port)
		}
	}
	var out []bpf.ServiceHint
	for e, n := range fan {
		if n >= 2 {
			out = append(out, bpf.ServiceHint{Proto: snapshot.Proto(e.proto), Addr: e.addr, Port: e.port, Fan: n})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		if a.Addr != b.Addr {
			return a.Addr.Less(b.Addr)
		}
		return a.Port < b.Port
	})
	return out
}

type macIP struct {
	mac [6]byte
	ip  netip.Addr
}

// moreLocal: a is a better guess than b for the captured host's address
// of its IP version (docs/REPLAY.md, "Local addresses").
func (sc *scanResult) moreLocal(a, b netip.Addr) bool {
	ac, bc := sc.addrs[a], sc.addrs[b]
	switch {
	case ac.packets != bc.packets:
		return ac.packets > bc.packets
	case ac.synIn != bc.synIn:
		return ac.synIn > bc.synIn
	case (ac.dhcpServer > 0) != (bc.dhcpServer > 0):
		// A DHCP exchange: the host is the client, the server its peer.
		return ac.dhcpServer == 0
	case ac.broadcastLike() != bc.broadcastLike():
		return !ac.broadcastLike()
	default:
		return a.Less(b)
	}
}

// macsOf: the non-zero MAC addresses a sent from.
func (sc *scanResult) macsOf(a netip.Addr) map[[6]byte]bool {
	m := map[[6]byte]bool{}
	for mi := range sc.macOf {
		if mi.ip == a && mi.mac != ([6]byte{}) {
			m[mi.mac] = true
		}
	}
	return m
}

func intersects(a, b map[[6]byte]bool) bool {
	for k := range a {
		if b[k] {
			return true
		}
	}
	return false
}

func scan(ctx context.Context, path, name string, progress func(Progress)) (*scanResult, error) {
	cp, err := openCapture(path, name)
	if err != nil {
		return nil, err
	}
	defer cp.close()
	sc := &scanResult{format: cp.format, linkTypes: map[uint32]int{}, ifaces: map[string]int{},
		addrs: map[netip.Addr]*addrCount{}, macOf: map[macIP]struct{}{}, convs: map[conv]uint8{}, dirs: map[dirKey]*dirState{}}
	valid := 0      // records with a valid timestamp
	var early []int // records with an invalid timestamp before the first valid one
	if cp.format == "pcap" && !LinkTypeSupported(cp.linkType) {
		return nil, &LinkTypeError{File: name, LinkTypes: []uint32{cp.linkType}}
	}
	var buf []byte
	last := time.Now()
	for {
		rec, err := cp.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			var ce *CaptureError
			if errors.As(err, &ce) {
				sc.err = ce
				break
			}
			return nil, err
		}
		sc.packets++
		if sc.packets&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if progress != nil && time.Since(last) > 100*time.Millisecond {
				progress(Progress{Phase: "scan", Done: cp.bytesRead(), Total: cp.size})
				last = time.Now()
			}
		}
		switch {
		case rec.badTS:
			sc.badTimestamps++
			if len(sc.badTimes) < maxBadTimes {
				// Used is filled in below for records before the first
				// valid timestamp (rec.ts is zero for them here).
				sc.badTimes = append(sc.badTimes, BadTimestamp{Packet: sc.packets, Raw: rec.raw, Used: rec.ts})
				if valid == 0 {
					early = append(early, len(sc.badTimes)-1)
				}
			}
		default:
			if valid == 0 {
				sc.firstValid = rec.ts
			}
			valid++
			if valid == 1 || rec.ts.Before(sc.first) {
				sc.first = rec.ts
			}
			if valid == 1 || rec.ts.After(sc.last) {
				sc.last = rec.ts
			}
		}
		sc.linkTypes[rec.linkType]++
		if !LinkTypeSupported(rec.linkType) {
			continue
		}
		if rec.iface != "" {
			sc.ifaces[rec.iface]++
		}
		var frame []byte
		frame, _ = toEthernet(rec.linkType, rec.data, buf)
		if frame == nil {
			continue
		}
		if len(frame) > 0 && rec.linkType != LinkEthernet {
			buf = frame[:0]
		}
		fi := parseFrame(frame)
		if !fi.ip {
			continue
		}
		fam := 0
		if fi.src.Is6() {
			fam = 1
		}
		sc.ipPackets[fam]++
		sc.countIP(&fi)
	}
	if valid == 0 && sc.packets > 0 {
		// No valid timestamp at all: every record gets the epoch.
		sc.firstValid, sc.first, sc.last = MinTimestamp, MinTimestamp, MinTimestamp
	}
	for _, i := range early {
		sc.badTimes[i].Used = sc.firstValid
	}
	if progress != nil {
		progress(Progress{Phase: "scan", Done: cp.size, Total: cp.size})
	}
	if sc.packets > 0 {
		e := &LinkTypeError{File: name, Records: sc.packets}
		for lt := range sc.linkTypes {
			if LinkTypeSupported(lt) {
				e = nil
				break
			}
			e.LinkTypes = append(e.LinkTypes, lt)
		}
		if e != nil {
			sort.Slice(e.LinkTypes, func(i, j int) bool { return e.LinkTypes[i] < e.LinkTypes[j] })
			return nil, e
		}
	}
	return sc, nil
}

// chooseLocal decides which addresses are local (docs/REPLAY.md).
func chooseLocal(sc *scanResult, given []netip.Prefix) LocalChoice {
	lc := LocalChoice{Share: map[netip.Addr]float64{}}
	share := func(a netip.Addr) float64 {
		fam := 0
		if a.Is6() {
			fam = 1
		}
		if sc.ipPackets[fam] == 0 || sc.addrs[a] == nil {
			return 0
		}
		return float64(sc.addrs[a].packets) / float64(sc.ipPackets[fam])
	}
	if len(given) > 0 {
		lc.From = "--local-addr"
		lc.Prefixes = append(lc.Prefixes, given...)
		seen := map[netip.Addr]bool{}
		for _, p := range given {
			if p.IsSingleIP() {
				seen[p.Addr()] = true
			}
		}
		for a := range sc.addrs {
			for _, p := range given {
				if p.Contains(a) {
					seen[a] = true
				}
			}
		}
		for a := range seen {
			lc.Addrs = append(lc.Addrs, a)
		}
	} else {
		lc.From = "heuristic"
		best := [2]netip.Addr{}
		pick := func(keep func(netip.Addr) bool) {
			for a := range sc.addrs {
				if !candidate(a) || !keep(a) {
					continue
				}
				fam := 0
				if a.Is6() {
					fam = 1
				}
				if b := best[fam]; !b.IsValid() || sc.moreLocal(a, b) {
					best[fam] = a
				}
			}
		}
		pick(func(netip.Addr) bool { return true })
		// One host: the chosen IPv4 and IPv6 addresses should be sent
		// from the same MAC address. When they are not, the address with
		// the larger share anchors the other version, which is chosen
		// again among the addresses that host's MAC sent from (an IPv6
		// conversation with one peer, whose neighbour discovery tips the
		// count toward the peer, is decided by the IPv4 side).
		if best[0].IsValid() && best[1].IsValid() {
			macs := [2]map[[6]byte]bool{sc.macsOf(best[0]), sc.macsOf(best[1])}
			if len(macs[0]) > 0 && len(macs[1]) > 0 && !intersects(macs[0], macs[1]) {
				anchor := 0
				if share(best[1]) > share(best[0]) {
					anchor = 1
				}
				other := 1 - anchor
				prev := best[other]
				best[other] = netip.Addr{}
				fromAnchor := map[netip.Addr]bool{} // one pass: captures can hold millions of addresses
				for mi := range sc.macOf {
					if macs[anchor][mi.mac] {
						fromAnchor[mi.ip] = true
					}
				}
				pick(func(a netip.Addr) bool { return a.Is6() == (other == 1) && fromAnchor[a] })
				if !best[other].IsValid() {
					best[other] = prev
				}
			}
		}
		for _, a := range best {
			if a.IsValid() {
				lc.Addrs = append(lc.Addrs, a)
				lc.Prefixes = append(lc.Prefixes, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		if len(lc.Addrs) == 0 {
			lc.From = "none"
		}
	}
	sort.Slice(lc.Addrs, func(i, j int) bool { return lc.Addrs[i].Less(lc.Addrs[j]) })
	for _, a := range lc.Addrs {
		lc.Share[a] = share(a)
	}
	return lc
}

// candidate: only a unicast address can be a host's own.
func candidate(a netip.Addr) bool {
	return !a.IsMulticast() && !a.IsUnspecified() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// logBadTimes warns about records whose timestamps were replaced.
func logBadTimes(log *zap.Logger, name string, res *Result) {
	if res.BadTimestamps == 0 {
		return
	}
	for i, b := range res.BadTimes {
		if i == maxBadTimesLogged {
			break
		}
		log.Warn("timestamp out of range", zap.String("file", name), zap.Int("packet", b.Packet),
			zap.String("timestamp", b.RawText()), zap.String("replaced_by", b.Used.Format(time.RFC3339Nano)))
	}
	log.Warn(fmt.Sprintf("%d packets have timestamps outside %s – %s: each got the timestamp of the packet before it (the first valid one for those before any); the snapshot's window and flow times ignore them",
		res.BadTimestamps, MinTimestamp.Format("2006-01-02"), MaxTimestamp.Format("2006-01-02")), zap.String("file", name))
}

func logLocal(log *zap.Logger, lc LocalChoice) {
	for _, a := range lc.Addrs {
		log.Info("local address", zap.String("addr", a.String()), zap.String("from", lc.From),
			zap.String("share_of_ip_packets", fmt.Sprintf("%.1f%%", 100*lc.Share[a])))
		if lc.From == "heuristic" && lc.Share[a] < 0.5 {
			log.Warn("the most frequent address appears in fewer than half of the packets: the capture may not have been taken on one host; pass --local-addr",
				zap.String("addr", a.String()))
		}
	}
	if lc.From == "none" {
		log.Warn("no IP packets: nothing is local, every frame goes through the ingress program")
	}
}

// job is one test_run: a frame, its hook, how many identical consecutive
// frames it stands for, and the index of the first (for errors).
type job struct {
	frame  []byte
	hook   bpf.Hook
	repeat uint32
	index  int
}

// slice is one time slice of the capture: the packets' timestamps span
// [cmin, cmax], and every stamp the programs wrote for them is at most
// stamp (and later than the previous slice's stamp).
type slice struct {
	stamp      time.Time // the programs' clock when the slice was done
	cmin, cmax time.Time
}

type replayer struct {
	c        *bpf.Collector
	o        Options
	res      *Result
	progs    [3]*ebpf.Program
	local    []netip.Prefix
	localMAC map[[6]byte]bool
	ifname   string

	// Batch path: stamps are the distinct capture times in file order
	// (Unix ns); a frame is stamped base+i for stamps[i]. With more than
	// one worker, present and lent (shardFor) for the batch being filled.
	stamps  []int64
	base    uint64
	present [][presentBits / 64]uint64
	lent    map[netip.Addr]int
	// dnsCap: DNS answers a batch may hold (half the DNS ring's).
	dnsCap int

	cur     *batch     // being filled by the reader
	spare   *batch     // free for the next swap
	running chan error // the batch the workers are running, if any
	slices  []slice
	tick    time.Duration // resolution of the programs' clock
	calls   atomic.Int64  // BPF_PROG_TEST_RUN calls
	ticked  bool          // the current slice has waited for the clock
}

func newReplayer(c *bpf.Collector, o Options, res *Result, sc *scanResult) *replayer {
	r := &replayer{c: c, o: o, res: res, local: res.Local.Prefixes, localMAC: map[[6]byte]bool{},
		cur: newBatch(o.Workers), spare: newBatch(o.Workers), tick: c.Tick(), dnsCap: math.MaxInt}
	if room := c.DNSRoom(0); room > 0 {
		r.dnsCap = max(1, room/2)
	}
	if !o.PerPacket {
		r.base = c.JiffiesAt(time.Now())
		r.stamps = make([]int64, 0, min(sc.packets, 1<<20))
		if o.Workers > 1 {
			r.present = make([][presentBits / 64]uint64, o.Workers)
			r.lent = map[netip.Addr]int{}
		}
	}
	for _, h := range []bpf.Hook{bpf.HookXDP, bpf.HookTCIngress, bpf.HookTCEgress} {
		r.progs[h] = c.Program(h)
	}
	// A non-IP frame is outgoing when it comes from the MAC address of
	// a local IP sender.
	for mi := range sc.macOf {
		if mi.mac != ([6]byte{}) && r.isLocal(mi.ip) {
			r.localMAC[mi.mac] = true
		}
	}
	r.ifname = o.Interface
	if r.ifname == "" {
		r.ifname = "replay"
		if len(sc.ifaces) == 1 {
			for n := range sc.ifaces {
				r.ifname = n
			}
		}
	}
	return r
}

func (r *replayer) isLocal(a netip.Addr) bool {
	for _, p := range r.local {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// tcRefuses: BPF_PROG_TEST_RUN refuses an skb whose IPv4/IPv6 header is
// not all there (net/bpf/test_run.c, since 2026 also in stable kernels).
func tcRefuses(f []byte) bool {
	switch uint16(f[12])<<8 | uint16(f[13]) {
	case 0x0800:
		return len(f) < ethHdrLen+20
	case 0x86dd:
		return len(f) < ethHdrLen+40
	}
	return false
}

func (r *replayer) replay(ctx context.Context, path, name string, packets int, firstValid time.Time) error {
	cp, err := openCapture(path, name)
	if err != nil {
		return err
	}
	defer cp.close()
	cp.fallback = firstValid
	// On an early return (cancelled, a failed run) the workers must be
	// done with the collector before the caller closes it.
	defer r.wait() //nolint:errcheck // the error that made us return is reported
	res := r.res
	start := time.Now()
	var (
		buf                    []byte
		chunkStart, cmin, cmax time.Time
		inChunk                int
		lastProgress           = time.Now()
	)
	for i := 1; i <= packets; i++ {
		rec, err := cp.next()
		if err != nil {
			// The scan read this far: the file changed under us.
			return fmt.Errorf("%s: reading packet %d again: %w", name, i, err)
		}
		res.Packets++
		if i&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			if r.o.Progress != nil && time.Since(lastProgress) > 100*time.Millisecond {
				r.o.Progress(Progress{Phase: "replay", Done: int64(i), Total: int64(packets)})
				lastProgress = time.Now()
			}
		}
		ts := rec.ts
		if r.o.PerPacket && inChunk > 0 && (!ts.Before(chunkStart.Add(res.Resolution)) || ts.Before(chunkStart.Add(-res.Resolution))) {
			if err := r.flush(true, cmin, cmax); err != nil {
				return err
			}
			inChunk = 0
		}
		if inChunk == 0 {
			chunkStart, cmin, cmax = ts, ts, ts
		}
		inChunk++
		if ts.Before(cmin) {
			cmin = ts
		}
		if ts.After(cmax) {
			cmax = ts
		}

		if !LinkTypeSupported(rec.linkType) {
			res.Skipped[SkipLinkType]++
			continue
		}
		frame, skip := toEthernet(rec.linkType, rec.data, buf)
		if skip != "" {
			res.Skipped[skip]++
			continue
		}
		if rec.linkType != LinkEthernet {
			buf = frame[:0]
		}
		wire := rec.origLen - len(rec.data) + len(frame)
		if len(rec.data) < rec.origLen {
			res.Snapped++
		}
		if len(frame) > MaxFrame {
			frame = frame[:MaxFrame]
			res.Cut++
		}
		if wire > len(frame) {
			res.MissingBytes += uint64(wire - len(frame))
		}
		fi := parseFrame(frame)
		hook := r.o.Ingress
		if (fi.ip && r.isLocal(fi.src)) || (!fi.ip && r.localMAC[fi.srcMAC]) {
			hook = bpf.HookTCEgress
		}
		if !r.o.PerPacket {
			res.Replayed++
			if err := r.addFrame(frame, &fi, hook == bpf.HookTCEgress, ts, i); err != nil {
				return err
			}
			continue
		}
		if hook != bpf.HookXDP && tcRefuses(frame) {
			if hook == bpf.HookTCEgress {
				res.EgressViaXDP++
			}
			hook = bpf.HookXDP
		}
		res.Replayed++
		shard := 0
		if fi.ip && len(r.cur.shards) > 1 {
			shard = int(fi.convHash() % uint64(len(r.cur.shards)))
		}
		dns := r.dnsAnswer(&fi, hook != bpf.HookTCEgress)
		r.cur.dns += dns
		jobs := r.cur.shards[shard]
		if n := len(jobs); n > 0 && jobs[n-1].hook == hook && jobs[n-1].repeat < 1<<30 && bytes.Equal(jobs[n-1].frame, frame) {
			jobs[n-1].repeat++
		} else {
			r.cur.shards[shard] = append(jobs, job{frame: r.cur.arena.copy(frame), hook: hook, repeat: 1, index: i})
			r.cur.frames++
		}
		if r.cur.frames >= batchFrames || r.cur.arena.size() >= batchBytes || r.cur.dns >= r.dnsCap {
			if err := r.dispatch(); err != nil {
				return err
			}
		}
	}
	if err := r.flush(r.o.PerPacket, cmin, cmax); err != nil {
		return err
	}
	res.Elapsed = time.Since(start)
	res.Calls = int(r.calls.Load())
	if r.o.Progress != nil {
		r.o.Progress(Progress{Phase: "replay", Done: int64(packets), Total: int64(packets)})
	}
	return r.finish()
}

// Batches: the reader fills one while the workers run the other.
const (
	batchFrames = 4096
	batchBytes  = 8 << 20
)

// batch is a set of queued frames, one job list (per-packet path) or call
// list (batch path) per worker.
type batch struct {
	shards [][]job
	calls  [][]call
	fill   []callFill
	arena  arena
	frames int
	dns    int // frames that may be DNS answers (dnsAnswer)
}

func newBatch(workers int) *batch {
	return &batch{shards: make([][]job, workers), calls: make([][]call, workers), fill: make([]callFill, workers)}
}

// dispatch hands the current batch to the workers, after the previous one
// is done, and gives the reader a free batch. The first batch of a time
// slice waits until the programs' clock has moved past the previous
// slice's stamp.
func (r *replayer) dispatch() error {
	if err := r.wait(); err != nil {
		return err
	}
	if r.cur.frames == 0 {
		return nil
	}
	if n := len(r.slices); n > 0 && !r.ticked {
		if err := r.waitTick(r.slices[n-1].stamp); err != nil {
			return err
		}
		r.ticked = true
	}
	b := r.cur
	if b.dns > 0 {
		r.c.DNSRoom(b.dns)
	}
	for i := range b.fill {
		b.seal(i)
	}
	clear(r.present)
	clear(r.lent)
	r.cur, r.spare = r.spare, nil
	done := make(chan error, 1)
	r.running = done
	go func() {
		var wg sync.WaitGroup
		errs := make([]error, len(b.shards))
		for i := range b.shards {
			if len(b.shards[i]) == 0 && len(b.calls[i]) == 0 {
				continue
			}
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				if r.o.PerPacket {
					errs[i] = r.runJobs(b.shards[i])
				} else {
					errs[i] = r.runCalls(b.calls[i])
				}
			}(i)
		}
		wg.Wait()
		for i := range b.shards {
			b.shards[i] = b.shards[i][:0]
			b.calls[i] = b.calls[i][:0]
		}
		b.arena.reset()
		b.frames, b.dns = 0, 0
		r.spare = b
		done <- errors.Join(errs...)
	}()
	return nil
}

// wait waits for the running batch, if any.
func (r *replayer) wait() error {
	if r.running == nil {
		return nil
	}
	err := <-r.running
	r.running = nil
	return err
}

// flush runs everything queued and waits for it. With endSlice it closes
// the time slice [cmin, cmax]: it notes the programs' clock, and the next
// slice's frames run only once that clock has moved on, so that a flow's
// first/last-seen stamps tell which slice its packets were in.
func (r *replayer) flush(endSlice bool, cmin, cmax time.Time) error {
	if err := r.dispatch(); err != nil {
		return err
	}
	if err := r.wait(); err != nil {
		return err
	}
	if !endSlice {
		return nil
	}
	now, err := r.c.KernelNow()
	if err != nil {
		return err
	}
	r.slices = append(r.slices, slice{stamp: now, cmin: cmin, cmax: cmax})
	r.ticked = false
	r.res.Slices++
	return nil
}

// waitTick waits until the programs' (coarse, tick-driven) clock is past t.
func (r *replayer) waitTick(t time.Time) error {
	for {
		now, err := r.c.KernelNow()
		if err != nil {
			return err
		}
		if now.After(t) {
			return nil
		}
		time.Sleep(r.tick / 4)
	}
}

// captureTime maps a stamp of the programs to the capture time span of
// the slice it was written in.
func (r *replayer) captureTime(stamp time.Time) (cmin, cmax time.Time) {
	i := sort.Search(len(r.slices), func(i int) bool { return !r.slices[i].stamp.Before(stamp) })
	if i == len(r.slices) {
		i-- // cannot happen: the last slice's stamp is taken after every run
	}
	return r.slices[i].cmin, r.slices[i].cmax
}

// runJobs feeds one shard's frames, in order, on one locked OS thread with
// signals blocked: an interrupted test_run with repeat > 1 would be
// retried from the start by cilium/ebpf after some repetitions already
// counted, so it must not be interrupted.
func (r *replayer) runJobs(jobs []job) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, &old); err != nil {
		return fmt.Errorf("block signals: %w", err)
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil) //nolint:errcheck // restoring a mask read just before
	calls := 0
	defer func() { r.calls.Add(int64(calls)) }()
	for i := range jobs {
		j := &jobs[i]
		want := uint32(xdpPass)
		if j.hook != bpf.HookXDP {
			want = tcxNext
		}
		// Identical frames: one call with a repeat count, except for XDP
		// below xdpRepeatMin (see there).
		runs, repeat := uint32(1), j.repeat
		if j.hook == bpf.HookXDP && repeat < xdpRepeatMin {
			runs, repeat = repeat, 1
		}
		for ; runs > 0; runs-- {
			calls++
			ret, err := r.progs[j.hook].Run(&ebpf.RunOptions{Data: j.frame, Repeat: repeat})
			if err != nil {
				return fmt.Errorf("packet %d (%d bytes) via %s: BPF_PROG_TEST_RUN: %w", j.index, len(j.frame), j.hook, err)
			}
			if ret != want {
				return fmt.Errorf("packet %d via %s: verdict %#x, want %#x: the program must never drop", j.index, j.hook, ret, want)
			}
		}
	}
	return nil
}

// xdpRepeatMin: BPF_PROG_TEST_RUN with a repeat count above one swaps the
// kernel's XDP dispatcher in and out around the run, which waits for RCU
// grace periods: ~200 ms per call on this project's CI VM (kernel 6.18),
// against ~3 µs for a single run. Identical frames for XDP are therefore
// run one by one unless there are enough of them to pay for it; for TC
// programs a repeat count costs nothing extra (measured: docs/REPLAY.md).
const xdpRepeatMin = 1 << 16

// finish reads the maps and builds the snapshot, with each flow's first
// and last seen mapped back to capture time.
func (r *replayer) finish() error {
	read, err := r.c.ReadMaps()
	if err != nil {
		return err
	}
	st := read.Stats
	st.PacketsIngress -= uint64(r.res.EgressViaXDP)
	st.PacketsEgress += uint64(r.res.EgressViaXDP)
	var stampErr error
	toCapture := func(in []snapshot.Flow) []snapshot.Flow {
		out := make([]snapshot.Flow, len(in))
		for i, f := range in {
			f.Interface = r.ifname
			if !r.o.PerPacket {
				var err1, err2 error
				f.FirstSeen, err1 = r.captureStamp(f.FirstSeen)
				f.LastSeen, err2 = r.captureStamp(f.LastSeen)
				// By file order, as the per-packet path: in a capture
				// whose time goes backwards, last may be before first.
				stampErr = errors.Join(stampErr, err1, err2)
			} else if len(r.slices) > 0 {
				f.FirstSeen, _ = r.captureTime(f.FirstSeen)
				_, f.LastSeen = r.captureTime(f.LastSeen)
				f.FirstSeen, f.LastSeen = f.FirstSeen.UTC(), f.LastSeen.UTC()
			}
			out[i] = f
		}
		return out
	}
	s := &snapshot.Snapshot{Version: snapshot.FormatVersion, EphemeralPorts: r.c.EphemeralPorts(), Stats: st,
		Flows: toCapture(read.Flows)}
	if len(read.Overflow) > 0 {
		s.Overflow = toCapture(read.Overflow)
	}
	// Passive DNS: the capture's DNS answers went through the same
	// programs; their times map back to capture time like the flows'.
	if stampErr != nil {
		return stampErr
	}
	var conv func(time.Time) (time.Time, time.Time)
	switch {
	case !r.o.PerPacket:
		conv = func(t time.Time) (time.Time, time.Time) {
			c, err := r.captureStamp(t)
			if err != nil {
				stampErr = err
			}
			return c, c
		}
	case len(r.slices) > 0:
		conv = r.captureTime
	}
	if s.DNS, err = r.c.DNSWithTime(conv); err != nil {
		return err
	}
	if stampErr != nil {
		return stampErr
	}
	if s.DNS != nil && s.DNS.Answers == 0 && s.DNS.Dropped == 0 {
		s.DNS = nil // a capture without DNS answers: nothing to say
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		s.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	r.res.Snapshot = s
	return nil
}

// arena holds the frames of one flush in a few large blocks.
type arena struct {
	blocks [][]byte
	cur    int
	used   int
}

const arenaBlock = 1 << 20

func (a *arena) copy(f []byte) []byte {
	if len(a.blocks) == 0 || len(a.blocks[a.cur])+len(f) > cap(a.blocks[a.cur]) {
		if len(a.blocks) > 0 {
			a.cur++
		}
		if a.cur == len(a.blocks) {
			a.blocks = append(a.blocks, make([]byte, 0, arenaBlock))
		}
	}
	b := a.blocks[a.cur]
	n := len(b)
	b = append(b, f...)
	a.blocks[a.cur] = b
	a.used += len(f)
	return b[n:len(b):len(b)]
}

func (a *arena) size() int { return a.used }

// alloc returns n bytes (at most arenaBlock) of the arena.
func (a *arena) alloc(n int) []byte {
	if len(a.blocks) == 0 || len(a.blocks[a.cur])+n > cap(a.blocks[a.cur]) {
		if len(a.blocks) > 0 {
			a.cur++
		}
		if a.cur == len(a.blocks) {
			a.blocks = append(a.blocks, make([]byte, 0, arenaBlock))
		}
	}
	b := a.blocks[a.cur]
	m := len(b)
	b = b[:m+n]
	a.blocks[a.cur] = b
	a.used += n
	return b[m : m+n : m+n]
}

func (a *arena) reset() {
	for i := range a.blocks {
		a.blocks[i] = a.blocks[i][:0]
	}
	a.cur, a.used = 0, 0
}

// Frames calls fn with every record of the capture at path as the Ethernet
// frame the programs would be given (converted, cut to MaxFrame), in
// order, leaving out the records replay skips. The frame is only valid
// during the call; fn returns false to stop. Tests and the fuzzer's seed
// corpus use it.
func Frames(path string, fn func(frame []byte) bool) error {
	cp, err := openCapture(path, filepath.Base(path))
	if err != nil {
		return err
	}
	defer cp.close()
	var buf []byte
	for {
		rec, err := cp.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		frame, skip := toEthernet(rec.linkType, rec.data, buf)
		if skip != "" {
			continue
		}
		if rec.linkType != LinkEthernet {
			buf = frame[:0]
		}
		if len(frame) > MaxFrame {
			frame = frame[:MaxFrame]
		}
		if !fn(frame) {
			return nil
		}
	}
}

// Batch path (docs/REPLAY.md): the reader packs each worker's frames into
// calls of flowaudit_replay, [window][D_1][F_1]...[D_n][F_n].

// call is one BPF_PROG_TEST_RUN of flowaudit_replay; index is the packet
// number of its first frame (for errors).
type call struct {
	data  []byte
	index int
}

// callFill is the call a worker's frames are being packed into.
type callFill struct {
	buf   []byte
	pos   int // buf[:pos] is packed
	n     int // frames in it
	index int
}

// seal closes worker i's open call, if any.
func (b *batch) seal(i int) {
	f := &b.fill[i]
	if f.n > 0 {
		b.calls[i] = append(b.calls[i], call{data: f.buf[:f.pos], index: f.index})
	}
	*f = callFill{}
}

// stamp returns the programs' clock value for a frame captured at ts:
// base plus the index of ts among the distinct capture times so far (in
// file order, consecutive equal times sharing one).
func (r *replayer) stamp(ts time.Time) uint64 {
	ns := ts.UnixNano()
	if n := len(r.stamps); n == 0 || r.stamps[n-1] != ns {
		r.stamps = append(r.stamps, ns)
	}
	return r.base + uint64(len(r.stamps)-1)
}

// captureStamp maps a time ReadMaps converted from a stamp back to the
// capture time the stamp stands for. The zero time stays zero.
func (r *replayer) captureStamp(t time.Time) (time.Time, error) {
	if t.IsZero() {
		return t, nil
	}
	j := r.c.JiffiesAt(t)
	if j < r.base || j-r.base >= uint64(len(r.stamps)) {
		return time.Time{}, fmt.Errorf("replay: a program stamp (%d) outside the stamps given (%d from %d)", j, len(r.stamps), r.base)
	}
	return time.Unix(0, r.stamps[j-r.base]).UTC(), nil
}

// Batch path, several workers: a flow is keyed by its peer (a frame's
// source incoming, its destination outgoing), and so is the connection
// table, so a frame goes to its peer's worker (peerShard) and every flow
// is fed by one worker, in file order. An ICMP destination-unreachable
// error also touches the flows of the far end of the packet it quotes:
// when that address's worker is another one, the address is lent to the
// error's worker for the rest of the batch (lent), unless it already has
// frames in the batch (present, a per-worker bit set of addresses: a
// false positive only costs a batch run early); then the batch is run
// first (Result.Flushes).

// presentBits: the size of a worker's bit set of addresses in the batch.
const presentBits = 1 << 16

// addrHash mixes an address into 64 bits (fmix64 of its two halves).
func addrHash(a netip.Addr) uint64 {
	b := a.As16()
	return fmix64(binary.LittleEndian.Uint64(b[:8])*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(b[8:]))
}

// peerShard returns the worker the flows of a go to in the batch being
// filled, and a's hash.
func (r *replayer) peerShard(a netip.Addr) (int, uint64) {
	h := addrHash(a)
	if len(r.lent) > 0 {
		if s, ok := r.lent[a]; ok {
			return s, h
		}
	}
	return int(h % uint64(len(r.present))), h
}

func (r *replayer) markPresent(shard int, h uint64) {
	i := h >> 48 // the top bits: the worker came from the low ones
	r.present[shard][i/64] |= 1 << (i % 64)
}

func (r *replayer) isPresent(shard int, h uint64) bool {
	i := h >> 48
	return r.present[shard][i/64]&(1<<(i%64)) != 0
}

// shardFor picks the worker of an IP frame and notes the addresses whose
// flows it touches; flush is set when the batch must run first.
func (r *replayer) shardFor(fi *frameInfo, egress bool) (shard int, flush bool) {
	peer, q := fi.src, fi.qdst
	if egress {
		peer, q = fi.dst, fi.qsrc
	}
	shard, h := r.peerShard(peer)
	if fi.quoted {
		qs, qh := r.peerShard(q)
		if qs != shard {
			if r.isPresent(qs, qh) {
				return 0, true
			}
			r.lent[q] = shard
		}
		r.markPresent(shard, qh)
	}
	r.markPresent(shard, h)
	return shard, false
}

// addFrame queues a frame for the batch path.
func (r *replayer) addFrame(frame []byte, fi *frameInfo, egress bool, ts time.Time, index int) error {
	stamp := r.stamp(ts)
	shard := 0
	if fi.ip && len(r.present) > 1 {
		var flush bool
		if shard, flush = r.shardFor(fi, egress); flush {
			r.res.Flushes++
			if err := r.dispatch(); err != nil {
				return err
			}
			shard, _ = r.shardFor(fi, egress) // the batch is empty: nothing to run first
		}
	}
	b := r.cur
	need := len(frame) + bpf.ReplayDescLen
	f := &b.fill[shard]
	if f.n == 0 || len(f.buf)-f.pos < need || f.n == bpf.ReplayBatchMax {
		b.seal(shard)
		f.buf = b.arena.alloc(bpf.ReplayBatchBytes)
		f.pos = bpf.ReplayWindow
		f.index = index
	}
	bpf.PutReplayDesc(f.buf[f.pos:], stamp, len(frame), egress)
	f.pos += bpf.ReplayDescLen
	f.pos += copy(f.buf[f.pos:], frame)
	f.n++
	b.dns += r.dnsAnswer(fi, !egress)
	if b.frames++; b.frames >= batchFrames || b.arena.size() >= batchBytes || b.dns >= r.dnsCap {
		return r.dispatch()
	}
	return nil
}

// dnsAnswer is 1 when the programs may hand the frame to the DNS ring (an
// incoming TCP or UDP frame from port 53), else 0. A batch holds at most
// dnsCap of them, and dispatch makes room for them in the ring before it
// runs the batch: the programs submit answers far faster than the reader
// parses them, and a full ring drops answers (snapshot.DNS.Dropped).
func (r *replayer) dnsAnswer(fi *frameInfo, ingress bool) int {
	if ingress && fi.ip && fi.ports && fi.sport == 53 && (fi.proto == 6 || fi.proto == 17) {
		return 1
	}
	return 0
}

// runCalls runs one worker's calls in order, on one locked OS thread with
// signals blocked as runJobs does.
func (r *replayer) runCalls(calls []call) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, &old); err != nil {
		return fmt.Errorf("block signals: %w", err)
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil) //nolint:errcheck // restoring a mask read just before
	defer r.calls.Add(int64(len(calls)))
	for i := range calls {
		c := &calls[i]
		if err := r.c.RunReplayBatch(c.data); err != nil {
			return fmt.Errorf("packet %d: %w", c.index, err)
		}
	}
	return nil
}
