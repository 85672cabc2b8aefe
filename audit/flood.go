package audit

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// A flood is one inbound service that received, within the window, at
// least Options.FloodPeers distinct peers, or at least Options.FloodSYNs
// SYNs that never completed a handshake at Options.FloodRate per second or
// more: a (spoofed-source) SYN or packet flood. It is reported once per
// service; its half-open attempts are set apart so that they neither list
// thousands of peers in other findings nor make a required rule "seen",
// while still counting for the port's state.

// Flood thresholds (docs/FINDINGS.md explains the choice).
const (
	DefaultFloodPeers = 10_000
	DefaultFloodSYNs  = 10_000
	DefaultFloodRate  = 100
)

// group is the traffic of one service: ordinary flows, folded entries and
// overflow entries.
type group struct {
	// exact holds the ordinary flows as runs of consecutive flows of the
	// snapshot (sub-slices of its Flows or Overflow): flows come sorted by
	// service within an interface, so a service has about one run per
	// interface rather than a pointer per flow to fault in (8 MiB for a
	// million flows).
	exact  [][]snapshot.Flow
	nExact int
	// mixedKeys: the ordinary flows differ in interface or
	// direction-inferred flag (see oneKeySpace).
	mixedKeys        bool
	folded, overflow []*snapshot.Flow
}

// addExact adds the ordinary flow list[i], extending the last run when
// it ends at list[i-1].
func (g *group) addExact(list []snapshot.Flow, i int) {
	if g.nExact > 0 {
		f, first := &list[i], &g.exact[0][0]
		g.mixedKeys = g.mixedKeys || f.Interface != first.Interface || f.DirectionInferred != first.DirectionInferred
	}
	g.nExact++
	if n := len(g.exact); n > 0 && i > 0 {
		if r := g.exact[n-1]; len(r) <= i && &r[len(r)-1] == &list[i-1] {
			g.exact[n-1] = list[i-len(r) : i+1]
			return
		}
	}
	g.exact = append(g.exact, list[i:i+1])
}

// eachExact yields the index (among the group's ordinary flows) and the
// address of each ordinary flow, in the order they were added.
func (g *group) eachExact(yield func(int, *snapshot.Flow) bool) {
	n := 0
	for _, r := range g.exact {
		for i := range r {
			if !yield(n, &r[i]) {
				return
			}
			n++
		}
	}
}

func (g *group) each(fn func(f *snapshot.Flow)) {
	for _, f := range g.eachExact {
		fn(f)
	}
	for _, l := range [][]*snapshot.Flow{g.folded, g.overflow} {
		for _, f := range l {
			fn(f)
		}
	}
}

// halfOpen is how many of an entry's inbound SYNs never completed a
// handshake. An ordinary flow is half-open when its peer sent nothing but
// SYNs. For folded and overflow entries, which mix peers, every completed
// handshake needs at least one non-SYN packet from its peer, so at least
// SynIn − (PacketsIn − SynIn) SYNs stayed half-open: a lower bound.
func halfOpen(f *snapshot.Flow) uint64 {
	if f.Proto != snapshot.TCP || f.Direction != snapshot.Inbound {
		return 0
	}
	syn := f.Evidence.SynIn
	if f.Peer.IsValid() {
		if syn > 0 && f.PacketsIn == syn {
			return syn
		}
		return 0
	}
	if 2*syn > f.PacketsIn {
		return 2*syn - f.PacketsIn
	}
	return 0
}

// floodLike: an entry that looks like a flood's traffic. TCP: half-open
// (an overflow entry only when it holds no non-SYN packet at all, so that
// real traffic that lost its peer still makes the service seen). Other
// protocols: folded or ordinary flows nobody answered.
func floodLike(f *snapshot.Flow) bool {
	if f.Proto == snapshot.TCP {
		if overflowEntry(f) {
			return f.Evidence.SynIn > 0 && f.PacketsIn <= f.Evidence.SynIn
		}
		return halfOpen(f) > 0
	}
	return !overflowEntry(f) && f.PacketsOut == 0
}

// flood is one flooded service.
type flood struct {
	svc      service
	trigger  []string
	peers    uint64
	estimate bool
	halfOpen uint64
	rate     float64
	rateOf   string
	// span is what the rate is measured over: the half-open entries' first
	// to last seen for a SYN flood, else the flood traffic's.
	span Evidence
	// traffic is the flood-like traffic (or, if there is none, the
	// service's); sources its source prefixes.
	traffic *obs
	sources map[netip.Prefix]*PeerCount
	// last is the source counted last: flows come sorted by peer, so one
	// /24's peers follow each other and need one map look-up between them.
	last *PeerCount
}

// sourcePrefix is the /24 (IPv4) or /48 (IPv6) of a peer.
func sourcePrefix(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 48
	if a.Is4() {
		bits = 24
	}
	p, _ := a.Prefix(bits)
	return p
}

// distinctPeers counts the distinct peers of a group: exactly when it has
// only ordinary flows, else with the union of their sketches.
func distinctPeers(g *group) (n uint64, estimated bool) {
	if len(g.folded)+len(g.overflow) == 0 && g.oneKeySpace() {
		return uint64(g.nExact), false
	}
	set := make(map[netip.Addr]struct{}, g.nExact)
	for _, f := range g.eachExact {
		set[f.Peer] = struct{}{}
	}
	if len(g.folded)+len(g.overflow) == 0 {
		return uint64(len(set)), false
	}
	var sk snapshot.PeerSketch
	var extra uint64
	for a := range set {
		sk.Add(a)
	}
	for _, l := range [][]*snapshot.Flow{g.folded, g.overflow} {
		for _, f := range l {
			if f.PeerSketch != nil {
				sk.Merge(f.PeerSketch)
			} else {
				extra += peersOf(f)
			}
		}
	}
	return max(uint64(len(set)), sk.Estimate()+extra), true
}

// oneKeySpace reports whether flows of one service also share their
// interface and direction-inferred flag: the snapshot keys them by peer
// then, so each has a different peer and no set is needed to count them.
// It is decided as the flows are added (addExact), not in a pass of its own.
func (g *group) oneKeySpace() bool { return !g.mixedKeys }

// detectFlood decides whether an inbound service is flooded.
func (a *auditor) detectFlood(s service, g *group) *flood {
	if s.dir != snapshot.Inbound || (a.o.FloodPeers <= 0 && a.o.FloodSYNs <= 0) {
		return nil
	}
	var half uint64
	var span Evidence
	upper := uint64(g.nExact)
	g.each(func(f *snapshot.Flow) {
		if h := halfOpen(f); h > 0 {
			half += h
			span.widen(f.FirstSeen, f.LastSeen)
		}
		if !f.Peer.IsValid() {
			upper += peersOf(f)
		}
	})
	rate := float64(half) / spanSeconds(span)
	fl := &flood{svc: s, halfOpen: half}
	if a.o.FloodSYNs > 0 && half >= uint64(a.o.FloodSYNs) && (a.o.FloodRate < 0 || rate >= a.o.FloodRate) {
		fl.trigger = append(fl.trigger, "half-open-syns")
	}
	if a.o.FloodPeers > 0 && (upper >= uint64(a.o.FloodPeers) || len(fl.trigger) > 0) {
		fl.peers, fl.estimate = distinctPeers(g)
		if fl.peers >= uint64(a.o.FloodPeers) {
			fl.trigger = append([]string{"peers"}, fl.trigger...)
		}
	}
	if len(fl.trigger) == 0 {
		return nil
	}
	if fl.peers == 0 {
		fl.peers, fl.estimate = distinctPeers(g)
	}
	fl.traffic = newObs()
	fl.sources = map[netip.Prefix]*PeerCount{}
	take := func(f *snapshot.Flow) {
		fl.traffic.addFlood(f)
		switch {
		case f.Peer.IsValid():
			fl.source(sourcePrefix(f.Peer), 1, f)
		case f.Folded():
			fl.source(f.PeerPrefix, peersOf(f), f)
		default:
			fl.traffic.unknown.Packets += f.Packets()
			fl.traffic.unknown.Bytes += f.Bytes()
		}
	}
	g.each(func(f *snapshot.Flow) {
		if floodLike(f) {
			take(f)
		}
	})
	if fl.traffic.empty() {
		g.each(take)
	}
	fl.rateOf, fl.rate, fl.span = "half-open SYNs", rate, span
	if s.proto != snapshot.TCP || half == 0 {
		fl.span = fl.traffic.ev
		fl.rateOf, fl.rate = "packets", float64(fl.traffic.ev.Packets)/spanSeconds(fl.span)
	}
	return fl
}

func (fl *flood) source(p netip.Prefix, peers uint64, f *snapshot.Flow) {
	c := fl.last
	if c == nil || c.Prefix != p {
		c = fl.sources[p]
		if c == nil {
			c = &PeerCount{Prefix: p}
			fl.sources[p] = c
		}
		fl.last = c
	}
	c.Peers += peers
	c.Packets += f.Packets()
	c.Bytes += f.Bytes()
}

// spanSeconds is the length of an evidence's first–last seen span in
// seconds, at least one: a burst within one second is a rate per second.
func spanSeconds(e Evidence) float64 {
	if e.FirstSeen.IsZero() || e.LastSeen.IsZero() {
		return 1
	}
	return math.Max(e.LastSeen.Sub(e.FirstSeen).Seconds(), 1)
}

// takes reports whether an entry of the flooded service is set apart as
// the flood's. TCP: every flood-like (half-open) entry, wherever its peer
// is, so that spoofed addresses inside a zone do not make a rule seen.
// Other protocols, where no handshake tells a flood's packet from a
// client's: only unanswered traffic that would otherwise be listed peer by
// peer (undocumented or out of zone).
func (fl *flood) takes(f *snapshot.Flow, noisy bool) bool {
	if fl == nil || !floodLike(f) {
		return false
	}
	return f.Proto == snapshot.TCP || noisy
}

// finding reports the flood once.
func (a *auditor) floodFinding(fl *flood) {
	s := fl.svc
	ev := fl.traffic.evidence(0)
	ev.Peers, ev.PeersEstimated = int(fl.peers), fl.estimate
	ev.FloodPackets = 0
	ev.PeersUnknownPackets = fl.traffic.unknown.Packets
	ev.PeersUnknown = 0
	srcs := make([]PeerCount, 0, len(fl.sources))
	for _, p := range fl.sources {
		srcs = append(srcs, *p)
	}
	sortPeerCounts(srcs)
	if len(srcs) > a.o.TopPeers {
		srcs = srcs[:a.o.TopPeers]
	}
	ev.TopPeers = srcs
	span := time.Duration(0)
	if !fl.span.FirstSeen.IsZero() && !fl.span.LastSeen.IsZero() {
		span = fl.span.LastSeen.Sub(fl.span.FirstSeen)
	}
	ev.Flood = &FloodEvidence{
		Trigger: strings.Join(fl.trigger, ","), Peers: fl.peers, HalfOpenSYNs: fl.halfOpen,
		Start: fl.span.FirstSeen, End: fl.span.LastSeen, Span: roundDur(span).String(),
		Rate: math.Round(fl.rate*10) / 10, RateOf: fl.rateOf,
		PeersThreshold: a.o.FloodPeers, SYNThreshold: a.o.FloodSYNs, RateThreshold: a.o.FloodRate,
	}
	port := portLabel(s.proto, s.port)
	what := "flood"
	if s.proto == snapshot.TCP && fl.halfOpen > 0 {
		what = "SYN flood"
	}
	peers := fmt.Sprintf("%d distinct peers", fl.peers)
	if fl.estimate {
		peers = "~" + peers
	}
	var b strings.Builder
	fmt.Fprintf(&b, "suspected %s on inbound %s/%s: %s", what, s.proto, port, peers)
	if fl.halfOpen > 0 {
		fmt.Fprintf(&b, ", %d SYNs never completed", fl.halfOpen)
	}
	fmt.Fprintf(&b, ", %s %s/s over %s", fmtRate(fl.rate), fl.rateOf, ev.Flood.Span)
	if len(srcs) > 0 {
		names := make([]string, 0, 3)
		for i, p := range srcs {
			if i == 3 {
				break
			}
			names = append(names, prefixName(p.Prefix))
		}
		fmt.Fprintf(&b, ", top sources %s", strings.Join(names, ", "))
	}
	b.WriteString("; reported once: its half-open attempts count for the port's state but are left out of the per-peer findings")
	a.add(&Finding{
		ID: fmt.Sprintf("flood-suspected/%s/%d", s.proto, s.port), Kind: FloodSuspected, Severity: Medium,
		Direction: s.dir, Proto: s.proto.String(), Port: port, Evidence: ev, Summary: b.String(),
	})
}

// prefixName is a prefix, or "other peers" for /0 (the recorder's last
// folding level).
func prefixName(p netip.Prefix) string {
	if p.Bits() == 0 {
		return "other peers"
	}
	return p.String()
}

// fmtRate prints a rate with one decimal below 10/s.
func fmtRate(r float64) string {
	if r < 10 {
		return fmt.Sprintf("%.1f", r)
	}
	return fmt.Sprintf("%.0f", r)
}

// roundDur rounds a span for people: to the second, or the millisecond
// below one second.
func roundDur(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}
