package rules

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// Traffic whose peers are not known one by one never becomes a rule — a
// rule needs its peer, and a prefix or "unknown" would allow addresses
// nobody saw. Two kinds exist in a version 2 snapshot:
//
//   - overflow entries (Snapshot.Overflow): packets counted per service
//     without their peer because the kernel flow map was full;
//   - folded entries (Flow.PeerPrefix): the peers of a service merged into
//     a /24, /48 or /0 ("other peers") because the recorder's memory budget
//     was reached.
//
// Both are listed under "Observed but NOT allowed", per service, with the
// prefixes, the estimated number of distinct peers and the packets.

type lostKind uint8

const (
	lostOverflow lostKind = iota // Snapshot.Overflow: flow map full
	lostFolded                   // Flow.PeerPrefix: memory budget
	lostNoPeer                   // neither peer nor prefix (never in a valid file)
)

type lostKey struct {
	dir   snapshot.Direction
	proto snapshot.Proto
	port  uint16
	kind  lostKind
}

type lostGroup struct {
	key          lostKey
	prefixes     []netip.Prefix
	sketch       snapshot.PeerSketch
	sketched     bool
	peerSum      uint64
	packets      uint64
	undocumented bool
}

// lose sets aside a classified flow without a peer.
func (b *builder) lose(c *audit.FlowClass, kind lostKind) {
	f := c.Flow
	if kind != lostOverflow {
		kind = lostNoPeer
		if f.Folded() {
			kind = lostFolded
		}
	}
	k := lostKey{f.Direction, f.Proto, f.Port, kind}
	if b.lost == nil {
		b.lost = map[lostKey]*lostGroup{}
	}
	g := b.lost[k]
	if g == nil {
		g = &lostGroup{key: k}
		b.lost[k] = g
	}
	if f.Folded() && !containsPrefix(g.prefixes, f.PeerPrefix) {
		g.prefixes = append(g.prefixes, f.PeerPrefix)
	}
	if !f.PeerSketch.Empty() {
		g.sketch.Merge(f.PeerSketch)
		g.sketched = true
	}
	g.peerSum += f.Peers
	g.packets += f.Packets()
	// Whether the matrix documents the service does not depend on the
	// peer; whether the peer is in zone does, and is unknown.
	if b.o.Matrix != nil && c.Kind == audit.FlowUndocumented && answered(c) {
		g.undocumented = true
	}
}

// observeOverflow sets aside the snapshot's overflow entries, classified
// like flows (the service and its state; the peer is unknown).
func (b *builder) observeOverflow() {
	if len(b.snap.Overflow) == 0 {
		return
	}
	ov := &snapshot.Snapshot{Flows: b.snap.Overflow, EphemeralPorts: b.snap.EphemeralPorts, Listening: b.snap.Listening}
	classes := audit.Classify(ov, b.o.Matrix, b.o.Site)
	for i := range classes {
		c := &classes[i]
		if c.Kind == audit.FlowInfrastructure || c.Kind == audit.FlowUnclassified || b.replyLike(c.Flow) {
			continue
		}
		b.lose(c, lostOverflow)
	}
}

// lostLeft turns the groups into NotAllowed entries.
func (b *builder) lostLeft() []Left {
	var out []Left
	for _, g := range b.lost {
		k := g.key
		l := Left{Direction: k.dir, Proto: k.proto, Ports: []uint16{k.port}, Lost: true, Packets: g.packets,
			Undocumented: g.undocumented, PeerCount: g.peerSum}
		if g.sketched {
			l.PeerCount = g.sketch.Estimate()
		}
		switch k.kind {
		case lostOverflow:
			l.Reason = "peer identity lost: flow map full (counted per service without the peer); no rule is made for unknown peers"
		case lostFolded:
			sort.Slice(g.prefixes, func(i, j int) bool { return prefixLess(g.prefixes[i], g.prefixes[j]) })
			l.Prefixes = g.prefixes
			l.Reason = fmt.Sprintf("peers folded into %s: memory budget of the recorder reached; no rule is made from a folded prefix", foldedList(g.prefixes))
		default:
			l.Reason = "no peer recorded; no rule is made for an unknown peer"
		}
		if k.dir == snapshot.Outbound && b.o.EgressPolicy == Accept {
			l.Reason += "; passes anyway while the output policy is accept"
		}
		out = append(out, l)
	}
	return out
}

// foldedList names folded prefixes, at most maxListedPeers of them; /0 is
// "other peers".
func foldedList(ps []netip.Prefix) string {
	var s []string
	for i, p := range ps {
		if i == maxListedPeers {
			s = append(s, fmt.Sprintf("(+%d more)", len(ps)-maxListedPeers))
			break
		}
		if p.Bits() == 0 {
			s = append(s, p.String()+" (other peers)")
			continue
		}
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

func containsPrefix(list []netip.Prefix, p netip.Prefix) bool {
	for _, x := range list {
		if x == p {
			return true
		}
	}
	return false
}

func prefixLess(a, b netip.Prefix) bool {
	if a.Addr() != b.Addr() {
		return a.Addr().Less(b.Addr())
	}
	return a.Bits() < b.Bits()
}
