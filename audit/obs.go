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
//
// An obs made by merged shares its sources' per-peer tallies instead of
// copying them (parts): a million peers are counted once, not once per
// merge.
type obs struct {
	ev Evidence
	// peers holds the exact peers' packets and bytes, by value: no
	// allocation per peer, nothing for the collector to chase.
	peers map[netip.Addr]tally
	// parts are the obs a merged obs stands for, whose peers are its
	// own (peers is then empty).
	parts    []*obs
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

// tally is one peer's packets and bytes.
type tally struct{ packets, bytes uint64 }

func newObs() *obs { return &obs{peers: map[netip.Addr]tally{}} }

// peerSets are the maps holding o's exact peers: its own, or its parts'.
func (o *obs) peerSets() []map[netip.Addr]tally {
	if o.parts == nil {
		return []map[netip.Addr]tally{o.peers}
	}
	sets := make([]map[netip.Addr]tally, 0, len(o.parts))
	for _, p := range o.parts {
		if len(p.peers) > 0 {
			sets = append(sets, p.peers)
		}
	}
	return sets
}

// forEachPeer calls fn once for every distinct exact peer of o with its
// packets and bytes summed over the parts.
func (o *obs) forEachPeer(fn func(a netip.Addr, t tally)) {
	sets := o.peerSets()
	for i, m := range sets {
	next:
		for a, t := range m {
			for _, earlier := range sets[:i] {
				if _, ok := earlier[a]; ok {
					continue next // counted with the first set holding it
				}
			}
			for _, later := range sets[i+1:] {
				if u, ok := later[a]; ok {
					t.packets += u.packets
					t.bytes += u.bytes
				}
			}
			fn(a, t)
		}
	}
}

// exactPeers is the number of distinct exact peers.
func (o *obs) exactPeers() int {
	sets := o.peerSets()
	if len(sets) == 1 {
		return len(sets[0])
	}
	n := 0
	for i, m := range sets {
	next:
		for a := range m {
			for _, earlier := range sets[:i] {
				if _, ok := earlier[a]; ok {
					continue next
				}
			}
			n++
		}
	}
	return n
}

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
		t := o.peers[f.Peer]
		t.packets += f.Packets()
		t.bytes += f.Bytes()
		o.peers[f.Peer] = t
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
	exact := o.exactPeers()
	if len(o.prefixes) == 0 {
		return exact, false
	}
	if o.sketch.Empty() {
		return exact + int(o.unsketched), true
	}
	s := o.sketch
	for _, m := range o.peerSets() {
		for a := range m {
			s.Add(a) // a peer in several sets: the sketch counts it once
		}
	}
	return max(exact, int(s.Estimate()+o.unsketched)), true
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
	top := topPeers{n: n, ps: make([]PeerCount, 0, min(n, ev.Peers+len(o.prefixes)))}
	o.forEachPeer(func(a netip.Addr, t tally) {
		top.offer(PeerCount{Addr: a, Packets: t.packets, Bytes: t.bytes})
	})
	for _, p := range o.prefixes {
		top.offer(*p)
	}
	ev.TopPeers = top.ps
	return ev
}

// topPeers keeps the first n peer counts in sortPeerCounts' order, without
// sorting (or even holding) all of them.
type topPeers struct {
	n  int
	ps []PeerCount // sorted, at most n
}

func (t *topPeers) offer(p PeerCount) {
	if t.n <= 0 {
		return
	}
	if len(t.ps) == t.n && !peerCountLess(&p, &t.ps[len(t.ps)-1]) {
		return
	}
	i := sort.Search(len(t.ps), func(i int) bool { return peerCountLess(&p, &t.ps[i]) })
	if len(t.ps) < t.n {
		t.ps = append(t.ps, PeerCount{})
	}
	copy(t.ps[i+1:], t.ps[i:len(t.ps)-1])
	t.ps[i] = p
}

// sortPeerCounts orders by packets (most first), then addresses before
// prefixes, then by address and prefix length.
func sortPeerCounts(ps []PeerCount) {
	sort.Slice(ps, func(i, j int) bool { return peerCountLess(&ps[i], &ps[j]) })
}

func peerCountLess(a, b *PeerCount) bool {
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

// mergeObs adds src to dst, copying src's peers into dst's own map (dst
// must not be a merged obs).
func mergeObs(dst, src *obs) {
	src.forEachPeer(func(a netip.Addr, t tally) {
		q := dst.peers[a]
		q.packets += t.packets
		q.bytes += t.bytes
		dst.peers[a] = q
	})
	mergeCounts(dst, src)
}

// mergeCounts adds everything of src but its exact peers to dst.
func mergeCounts(dst, src *obs) {
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

// merged returns a new obs holding all of os. Its exact peers stay in
// os (parts): os must not change while it is in use.
func merged(os ...*obs) *obs {
	all := &obs{}
	for _, o := range os {
		if o.parts != nil {
			all.parts = append(all.parts, o.parts...)
		} else {
			all.parts = append(all.parts, o)
		}
		mergeCounts(all, o)
	}
	if all.parts == nil {
		all.parts = []*obs{}
	}
	return all
}
