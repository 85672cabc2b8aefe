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
	// peers holds the exact peers' packets and bytes, by value: no
	// allocation per peer.
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

// peerTally is one exact peer with its tally.
type peerTally struct {
	addr netip.Addr
	tally
}

// peerList holds an obs's exact peers: a flat slice in arrival order
// rather than a map. A million-peer map costs a page fault per 4 KiB of
// control groups when made and a probe per flow; the slice is filled
// sequentially (in one huge page per 2 MiB when presized, see reserve).
// Flows arrive sorted by (interface, direction, protocol, port, peer), so
// one service's peers come in address order and a repeat of the last peer
// is merged on the spot; the list is put in normal form (sorted by address,
// each address once) only when counted or walked (sorted).
type peerList struct {
	ps []peerTally
	// unsorted: some entry was appended at or below an earlier one, so ps
	// may be out of order and hold an address twice until sorted.
	unsorted bool
}

// reserve presizes an empty list for n entries.
func (l *peerList) reserve(n int) {
	if len(l.ps) == 0 && n > cap(l.ps) {
		l.ps = hugemem.Make[peerTally](n)
	}
}

// add counts t for peer a.
func (l *peerList) add(a netip.Addr, t tally) {
	if n := len(l.ps); n > 0 {
		last := &l.ps[n-1]
		if last.addr == a {
			last.packets += t.packets
			last.bytes += t.bytes
			return
		}
		if !l.unsorted && a.Less(last.addr) {
			l.unsorted = true
		}
	}
	l.ps = append(l.ps, peerTally{a, t})
}

// sorted returns the list in normal form: by address, each address once
// with its tallies summed.
func (l *peerList) sorted() []peerTally {
	if l.unsorted {
		l.ps = sortPeers(l.ps)
		l.unsorted = false
	}
	return l.ps
}

// sortPeers sorts ps by address and merges the entries of one address. It
// is a natural merge sort: ps is cut where an address is not above its
// predecessor into strictly ascending runs (a rule's peers come as one run
// per service and interface), and neighbouring runs are merged pairwise
// until one is left, so k runs cost log2(k) passes over ps, not a full
// sort. The result is in ps or in a buffer of its size.
func sortPeers(ps []peerTally) []peerTally {
	runs := []int{0}
	for i := 1; i < len(ps); i++ {
		if !ps[i-1].addr.Less(ps[i].addr) {
			runs = append(runs, i)
		}
	}
	if len(runs) == 1 {
		return ps
	}
	runs = append(runs, len(ps))
	n := len(ps)
	src, dst := ps, hugemem.Make[peerTally](n)[:n]
	for len(runs) > 2 {
		// next overwrites runs behind the pairs still to be read.
		next := runs[:1]
		w := 0
		for i := 0; i+1 < len(runs); i += 2 {
			lo, mid, hi := runs[i], runs[i+1], runs[i+1]
			if i+2 < len(runs) {
				hi = runs[i+2]
			}
			w = mergePeers(dst, w, src[lo:mid], src[mid:hi])
			next = append(next, w)
		}
		runs = next
		src, dst = dst[:w], src[:n]
	}
	return src
}

// mergePeers merges the strictly ascending runs a and b into dst from w
// on, one entry per address, and returns the end of what it wrote.
func mergePeers(dst []peerTally, w int, a, b []peerTally) int {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := a[i].addr.Compare(b[j].addr); {
		case c < 0:
			dst[w] = a[i]
			i++
		case c > 0:
			dst[w] = b[j]
			j++
		default:
			t := a[i]
			t.packets += b[j].packets
			t.bytes += b[j].bytes
			dst[w] = t
			i++
			j++
		}
		w++
	}
	w += copy(dst[w:], a[i:])
	w += copy(dst[w:], b[j:])
	return w
}

func newObs() *obs { return &obs{} }

// peerSets are the lists holding o's exact peers, its own or its parts',
// each in normal form.
func (o *obs) peerSets() [][]peerTally {
	if o.parts == nil {
		return [][]peerTally{o.peers.sorted()}
	}
	sets := make([][]peerTally, 0, len(o.parts))
	for _, p := range o.parts {
		if ps := p.peers.sorted(); len(ps) > 0 {
			sets = append(sets, ps)
		}
	}
	return sets
}

// forEachPeer calls fn once for every distinct exact peer of o with its
// packets and bytes summed over the parts, in address order. The parts
// are walked together, like a merge: the next peer is the lowest of their
// heads (a merged obs has a handful of parts, so a linear scan for it is
// cheaper than a heap).
func (o *obs) forEachPeer(fn func(a netip.Addr, t tally)) {
	sets := o.peerSets()
	switch len(sets) {
	case 0:
		return
	case 1:
		for _, p := range sets[0] {
			fn(p.addr, p.tally)
		}
		return
	}
	at := make([]int, len(sets))
	for {
		low := -1
		for i, s := range sets {
			if at[i] < len(s) && (low < 0 || s[at[i]].addr.Less(sets[low][at[low]].addr)) {
				low = i
			}
		}
		if low < 0 {
			return
		}
		a := sets[low][at[low]].addr
		var t tally
		for i, s := range sets {
			if at[i] < len(s) && s[at[i]].addr == a {
				t.packets += s[at[i]].packets
				t.bytes += s[at[i]].bytes
				at[i]++
			}
		}
		fn(a, t)
	}
}

// exactPeers is the number of distinct exact peers.
func (o *obs) exactPeers() int {
	sets := o.peerSets()
	switch len(sets) {
	case 0:
		return 0
	case 1:
		return len(sets[0])
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
		o.peers.add(f.Peer, tally{f.Packets(), f.Bytes()})
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
	for _, ps := range o.peerSets() {
		for _, p := range ps {
			s.Add(p.addr) // a peer in several sets: the sketch counts it once
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

// mergeObs adds src to dst, copying src's peers into dst's own list (dst
// must not be a merged obs).
func mergeObs(dst, src *obs) {
	src.forEachPeer(dst.peers.add)
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
