package audit

import (
	"net/netip"
	"sort"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/internal/hugemem"
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
	// peers holds the flows of the exact peers.
	peers peerList
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

// peerList holds the flows whose exact peers an obs counts: pointers to
// the snapshot's own flows, in arrival order, 8 bytes each. The flows
// already hold each peer and its packets; a map by peer, or even a list
// of peers and tallies (40 bytes each), is fresh memory the audit must
// fault in, and on the VM flowaudit is benchmarked on that costs about a
// millisecond per MiB even in huge pages (a million flows: ~35 MiB).
// Flows arrive sorted by (interface, direction, protocol, port, peer), so
// one service's peers come in address order: the list is sorted (a merge
// of its runs) only if some flow came out of order, and the flows of one
// peer, then adjacent, are summed when walked.
type peerList struct {
	fs []*snapshot.Flow
	// unsorted: some flow's peer is below its predecessor's.
	unsorted bool
	// dups: some peer may have more than one flow.
	dups bool
}

// reserve presizes an empty list for n flows.
func (l *peerList) reserve(n int) {
	if len(l.fs) == 0 && n > cap(l.fs) {
		l.fs = hugemem.Make[*snapshot.Flow](n)
	}
}

// add counts f's packets and bytes for its peer.
func (l *peerList) add(f *snapshot.Flow) {
	if n := len(l.fs); n > 0 {
		switch c := f.Peer.Compare(l.fs[n-1].Peer); {
		case c < 0:
			l.unsorted = true
		case c == 0:
			l.dups = true
		}
	}
	l.fs = append(l.fs, f)
}

// sorted returns the flows sorted by peer (dups says whether a peer may
// have several, then adjacent).
func (l *peerList) sorted() peerRun {
	if l.unsorted {
		var dup bool
		l.fs, dup = sortByPeer(l.fs)
		l.dups = l.dups || dup
		l.unsorted = false
	}
	return peerRun{l.fs, l.dups}
}

// peerRun is flows sorted by peer; dups: a peer may have several.
type peerRun struct {
	fs   []*snapshot.Flow
	dups bool
}

// at returns the peer of the flow at i with the packets and bytes of all
// its flows, and the index after them.
func (r peerRun) at(i int) (netip.Addr, tally, int) {
	f := r.fs[i]
	a, t := f.Peer, tally{f.Packets(), f.Bytes()}
	for i++; r.dups && i < len(r.fs) && r.fs[i].Peer == a; i++ {
		t.packets += r.fs[i].Packets()
		t.bytes += r.fs[i].Bytes()
	}
	return a, t, i
}

// sortByPeer sorts fs by peer and reports whether two flows share one. It
// is a natural merge sort: fs is cut where a peer is below its
// predecessor into ascending runs (a rule's flows come as one run per
// service and interface), and neighbouring runs are merged pairwise until
// one is left, so k runs cost log2(k) passes over fs, not a full sort.
// The result is in fs or in a buffer of its size.
func sortByPeer(fs []*snapshot.Flow) (sorted []*snapshot.Flow, dup bool) {
	runs := []int{0}
	for i := 1; i < len(fs); i++ {
		if fs[i].Peer.Less(fs[i-1].Peer) {
			runs = append(runs, i)
		}
	}
	if len(runs) == 1 {
		return fs, false
	}
	runs = append(runs, len(fs))
	n := len(fs)
	src, dst := fs, hugemem.Make[*snapshot.Flow](n)[:n]
	for len(runs) > 2 {
		// next overwrites runs behind the pairs still to be read.
		next := runs[:1]
		w := 0
		for i := 0; i+1 < len(runs); i += 2 {
			lo, mid, hi := runs[i], runs[i+1], runs[i+1]
			if i+2 < len(runs) {
				hi = runs[i+2]
			}
			var d bool
			w, d = mergeByPeer(dst, w, src[lo:mid], src[mid:hi])
			dup = dup || d
			next = append(next, w)
		}
		runs = next
		src, dst = dst[:w], src[:n]
	}
	return src, dup
}

// mergeByPeer merges the runs a and b, each sorted by peer, into dst from
// w on, and returns the end of what it wrote and whether a peer of a is
// also one of b.
func mergeByPeer(dst []*snapshot.Flow, w int, a, b []*snapshot.Flow) (int, bool) {
	i, j, dup := 0, 0, false
	for i < len(a) && j < len(b) {
		c := a[i].Peer.Compare(b[j].Peer)
		if c <= 0 {
			dup = dup || c == 0
			dst[w] = a[i]
			i++
		} else {
			dst[w] = b[j]
			j++
		}
		w++
	}
	w += copy(dst[w:], a[i:])
	w += copy(dst[w:], b[j:])
	return w, dup
}

func newObs() *obs { return &obs{} }

// peerSets are the flows of o's exact peers, its own or its parts', each
// sorted by peer.
func (o *obs) peerSets() []peerRun {
	if o.parts == nil {
		return []peerRun{o.peers.sorted()}
	}
	sets := make([]peerRun, 0, len(o.parts))
	for _, p := range o.parts {
		if r := p.peers.sorted(); len(r.fs) > 0 {
			sets = append(sets, r)
		}
	}
	return sets
}

// forEachPeer calls fn once for every distinct exact peer of o with its
// packets and bytes summed over its flows and the parts, in address
// order. The parts are walked together, like a merge: the next peer is
// the lowest of their heads (a merged obs has a handful of parts, so a
// linear scan for it is cheaper than a heap).
func (o *obs) forEachPeer(fn func(a netip.Addr, t tally)) {
	sets := o.peerSets()
	switch len(sets) {
	case 0:
		return
	case 1:
		r := sets[0]
		for i := 0; i < len(r.fs); {
			a, t, next := r.at(i)
			fn(a, t)
			i = next
		}
		return
	}
	at := make([]int, len(sets))
	for {
		low := -1
		for i, r := range sets {
			if at[i] < len(r.fs) && (low < 0 || r.fs[at[i]].Peer.Less(sets[low].fs[at[low]].Peer)) {
				low = i
			}
		}
		if low < 0 {
			return
		}
		a := sets[low].fs[at[low]].Peer
		var t tally
		for i, r := range sets {
			if at[i] < len(r.fs) && r.fs[at[i]].Peer == a {
				_, u, next := r.at(at[i])
				t.packets += u.packets
				t.bytes += u.bytes
				at[i] = next
			}
		}
		fn(a, t)
	}
}

// exactPeers is the number of distinct exact peers.
func (o *obs) exactPeers() int {
	sets := o.peerSets()
	switch {
	case len(sets) == 0:
		return 0
	case len(sets) == 1 && !sets[0].dups:
		return len(sets[0].fs)
	}
	n := 0
	o.forEachPeer(func(netip.Addr, tally) { n++ })
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
		o.peers.add(f)
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
	for _, r := range o.peerSets() {
		for _, f := range r.fs {
			s.Add(f.Peer) // a peer in several flows or sets: the sketch counts it once
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
		// Most peers cannot enter a full list (offer orders by packets
		// first): no PeerCount is built for them.
		if top.n <= 0 || len(top.ps) == top.n && t.packets < top.ps[len(top.ps)-1].Packets {
			return
		}
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

// mergeObs adds src to dst, copying src's peers into dst's own list (dst
// must not be a merged obs): each as a flow of its own holding the peer's
// sums (the sources, a flood's attempts, take no peers, so this is rare).
func mergeObs(dst, src *obs) {
	src.forEachPeer(func(a netip.Addr, t tally) {
		dst.peers.add(&snapshot.Flow{Peer: a, PacketsIn: t.packets, BytesIn: t.bytes})
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
