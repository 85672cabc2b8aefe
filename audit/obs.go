package audit

import (
	"net/netip"
	"sort"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// obs accumulates traffic into evidence. It takes three kinds of entry:
// ordinary flows (one peer), folded flows (the peers of a prefix, with an
// estimated count) and overflow entries (no peer at all: packets that lost
// their peer identity because the kernel flow map was full). A suspected
// flood's half-open attempts are added with addFlood: they count for the
// packets and the port's state, never as peers.
type obs struct {
	ev       Evidence
	peers    map[netip.Addr]*PeerCount
	prefixes map[netip.Prefix]*PeerCount
	// sketch merges the peer sketches of the folded entries; unsketched
	// counts the peers of folded entries that carry none.
	sketch     snapshot.PeerSketch
	unsketched uint64
	// unknown is the overflow traffic, its peers in unknownSketch (and
	// unknownUnsketched for entries without a sketch).
	unknown           snapshot.Counter
	unknownSketch     snapshot.PeerSketch
	unknownUnsketched uint64
	flood             uint64
	entries           int
	inferred          bool
	states            [4]int
}

func newObs() *obs { return &obs{peers: map[netip.Addr]*PeerCount{}} }

// peersOf is the number of distinct peers an entry stands for.
func peersOf(f *snapshot.Flow) uint64 {
	switch {
	case f.Peer.IsValid():
		return 1
	case f.Peers > 0:
		return f.Peers
	case f.PeerSketch != nil:
		return f.PeerSketch.Estimate()
	}
	return 0
}

// overflowEntry: an entry without any peer identity.
func overflowEntry(f *snapshot.Flow) bool { return !f.Peer.IsValid() && !f.Folded() }

func (o *obs) count(f *snapshot.Flow) {
	o.entries++
	o.ev.Packets += f.Packets()
	o.ev.Bytes += f.Bytes()
	o.ev.widen(f.FirstSeen, f.LastSeen)
	o.ev.Handshake.Add(f.Evidence)
	if f.DirectionInferred {
		o.inferred = true
	}
	o.states[state(f)]++
}

func (o *obs) add(f *snapshot.Flow) {
	o.count(f)
	switch {
	case f.Peer.IsValid():
		p := o.peers[f.Peer]
		if p == nil {
			p = &PeerCount{Addr: f.Peer}
			o.peers[f.Peer] = p
		}
		p.Packets += f.Packets()
		p.Bytes += f.Bytes()
	case f.Folded():
		if o.prefixes == nil {
			o.prefixes = map[netip.Prefix]*PeerCount{}
		}
		p := o.prefixes[f.PeerPrefix]
		if p == nil {
			p = &PeerCount{Prefix: f.PeerPrefix}
			o.prefixes[f.PeerPrefix] = p
		}
		p.Packets += f.Packets()
		p.Bytes += f.Bytes()
		p.Peers += peersOf(f)
		if f.PeerSketch != nil {
			o.sketch.Merge(f.PeerSketch)
		} else {
			o.unsketched += peersOf(f)
		}
	default:
		o.unknown.Packets += f.Packets()
		o.unknown.Bytes += f.Bytes()
		if f.PeerSketch != nil {
			o.unknownSketch.Merge(f.PeerSketch)
		} else {
			o.unknownUnsketched += peersOf(f)
		}
	}
}

// addFlood adds a suspected flood's half-open attempt: packets and state,
// no peer.
func (o *obs) addFlood(f *snapshot.Flow) {
	o.count(f)
	o.flood += f.Packets()
}

// widen extends the evidence's first/last seen to cover [first, last];
// a zero first is "unknown" and never moves FirstSeen.
func (e *Evidence) widen(first, last time.Time) {
	if !first.IsZero() && (e.FirstSeen.IsZero() || first.Before(e.FirstSeen)) {
		e.FirstSeen = first
	}
	if last.After(e.LastSeen) {
		e.LastSeen = last
	}
}

// empty: no traffic at all, not even a flood's.
func (o *obs) empty() bool { return o.entries == 0 }

// peerCount is the number of distinct peers with an identity: exact, or
// estimated when folded prefixes are involved (the exact peers are added
// to the prefixes' sketch so a peer in both is counted once).
func (o *obs) peerCount() (n int, estimated bool) {
	if len(o.prefixes) == 0 {
		return len(o.peers), false
	}
	if o.sketch.Empty() {
		return len(o.peers) + int(o.unsketched), true
	}
	s := o.sketch
	for a := range o.peers {
		s.Add(a)
	}
	return max(len(o.peers), int(s.Estimate()+o.unsketched)), true
}

// evidence returns the accumulated evidence with the top n peers or
// prefixes.
func (o *obs) evidence(n int) Evidence {
	ev := o.ev
	ev.Peers, ev.PeersEstimated = o.peerCount()
	ev.DirectionInferred = o.inferred
	ev.PeersUnknownPackets = o.unknown.Packets
	ev.PeersUnknown = o.unknownSketch.Estimate() + o.unknownUnsketched
	ev.FloodPackets = o.flood
	ps := make([]PeerCount, 0, len(o.peers)+len(o.prefixes))
	for _, p := range o.peers {
		ps = append(ps, *p)
	}
	for _, p := range o.prefixes {
		ps = append(ps, *p)
	}
	sortPeerCounts(ps)
	if len(ps) > n {
		ps = ps[:n]
	}
	ev.TopPeers = ps
	return ev
}

// sortPeerCounts orders by packets (most first), then addresses before
// prefixes, then by address and prefix length.
func sortPeerCounts(ps []PeerCount) {
	sort.Slice(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.Packets != b.Packets {
			return a.Packets > b.Packets
		}
		if a.Prefix.IsValid() != b.Prefix.IsValid() {
			return !a.Prefix.IsValid()
		}
		if !a.Prefix.IsValid() {
			return a.Addr.Less(b.Addr)
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c < 0
		}
		return a.Prefix.Bits() < b.Prefix.Bits()
	})
}

// verdict of a group of attempts: open if any was answered.
func (o *obs) verdict() flowState { return verdictOf(o.states) }

// verdictOf is the verdict of several groups' flow states together.
func verdictOf(states ...[4]int) flowState {
	var n [4]int
	for _, s := range states {
		for i := range n {
			n[i] += s[i]
		}
	}
	switch {
	case n[stateOpen] > 0:
		return stateOpen
	case n[stateClosed] > 0:
		return stateClosed
	case n[stateFiltered] > 0:
		return stateFiltered
	}
	return stateUnanswered
}

func mergeObs(dst, src *obs) {
	for _, p := range src.peers {
		q := dst.peers[p.Addr]
		if q == nil {
			q = &PeerCount{Addr: p.Addr}
			dst.peers[p.Addr] = q
		}
		q.Packets += p.Packets
		q.Bytes += p.Bytes
	}
	for _, p := range src.prefixes {
		if dst.prefixes == nil {
			dst.prefixes = map[netip.Prefix]*PeerCount{}
		}
		q := dst.prefixes[p.Prefix]
		if q == nil {
			q = &PeerCount{Prefix: p.Prefix}
			dst.prefixes[p.Prefix] = q
		}
		q.Packets += p.Packets
		q.Bytes += p.Bytes
		q.Peers += p.Peers
	}
	dst.sketch.Merge(&src.sketch)
	dst.unsketched += src.unsketched
	dst.unknown.Packets += src.unknown.Packets
	dst.unknown.Bytes += src.unknown.Bytes
	dst.unknownSketch.Merge(&src.unknownSketch)
	dst.unknownUnsketched += src.unknownUnsketched
	dst.flood += src.flood
	dst.entries += src.entries
	dst.ev.Packets += src.ev.Packets
	dst.ev.Bytes += src.ev.Bytes
	dst.ev.widen(src.ev.FirstSeen, src.ev.LastSeen)
	dst.ev.Handshake.Add(src.ev.Handshake)
	dst.inferred = dst.inferred || src.inferred
	for i := range dst.states {
		dst.states[i] += src.states[i]
	}
}

// merged returns a new obs holding all of os.
func merged(os ...*obs) *obs {
	all := newObs()
	for _, o := range os {
		mergeObs(all, o)
	}
	return all
}
