package bpf

import (
	"net/netip"
	"sort"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// The recorder's own memory: every move empties a generation of the kernel
// maps into an accumulator (docs/ARCHITECTURE.md, "Moving counts out").
// It keys entries by the kernel's flow key, so nothing is converted until
// a snapshot is taken, and widens the counters to 64 bits.
//
// Memory is bounded by a budget in entries, which covers every accumulator
// the collector holds (all the buckets of a sliding window together, see
// window.go). Beyond it, the services with the most peers are folded:
// their per-peer entries merge into one entry per /24 (IPv4) or /48 (IPv6)
// prefix, and if that is not enough, into one "other peers" entry (/0) per
// address family. A folded entry keeps a HyperLogLog sketch of the peers
// it absorbed (the same sketch the kernel keeps for overflow entries), and
// a service once folded stays folded, so its later peers go straight into
// their prefix.
//
// What an entry costs (BenchmarkAccumulatorBytes, Go 1.26, amd64): a
// per-peer entry 250–280 B of heap (a 152 B entry — 24 B key, 128 B value —
// in a dense slice, plus a 33 B index slot, each times its slack, see
// flowtable.go), a folded one 460–600 B (its sketch sits in a second map).
// `make bench`
// measures what a whole watch costs per entry of budget (part 6).

// Fold levels, stored in the upper half of an accumulator key's
// dir_flags (flowkey.go; the kernel always leaves it zero).
const (
	foldNone   = 0
	foldPrefix = 1 // /24 (IPv4) or /48 (IPv6)
	foldOther  = 2 // /0: every other peer of the service
)

// Prefix lengths of foldPrefix.
const (
	foldBits4 = 24
	foldBits6 = 48
)

// accValue is one accumulated entry: the kernel's counters widened to 64
// bits (a week-long flood overflows the kernel's 32-bit SYN counters only
// between two moves, which the kernel's values never span). 128 bytes, so
// Go maps store it inline.
type accValue struct {
	packetsIn, bytesIn, packetsOut, bytesOut uint64
	first, last                              uint64 // jiffies; 0 unknown
	ev                                       snapshot.Evidence
}

func (v *accValue) addKernel(o *flowauditFlowValue) {
	v.add(&accValue{
		packetsIn: o.PacketsIn, bytesIn: o.BytesIn, packetsOut: o.PacketsOut, bytesOut: o.BytesOut,
		first: o.FirstJiffies, last: o.LastJiffies,
		ev: snapshot.Evidence{
			SynIn: uint64(o.SynIn), SynAckOut: uint64(o.SynackOut), RstOut: uint64(o.RstOut),
			ICMPClosedOut: uint64(o.IcmpClosedOut), ICMPFilteredOut: uint64(o.IcmpFilteredOut),
			SynOut: uint64(o.SynOut), SynAckIn: uint64(o.SynackIn), RstIn: uint64(o.RstIn),
			ICMPClosedIn: uint64(o.IcmpClosedIn), ICMPFilteredIn: uint64(o.IcmpFilteredIn),
		},
	})
}

// add merges o into v: counters add, first seen takes the earliest known,
// last seen the latest.
func (v *accValue) add(o *accValue) {
	v.packetsIn += o.packetsIn
	v.bytesIn += o.bytesIn
	v.packetsOut += o.packetsOut
	v.bytesOut += o.bytesOut
	if o.first != 0 && (v.first == 0 || o.first < v.first) {
		v.first = o.first
	}
	if o.last > v.last {
		v.last = o.last
	}
	v.ev.Add(o.ev)
}

// overflowEntry is a per-service entry whose peers are unknown.
type overflowEntry struct {
	accValue
	sketch snapshot.PeerSketch
}

// FoldEvent reports one service folded to a coarser level.
type FoldEvent struct {
	Ifindex   uint32
	Direction snapshot.Direction
	Proto     snapshot.Proto
	Port      uint16
	// Level is "prefix" (/24, /48) or "other" (/0).
	Level string
	// Entries is how many entries of the service were merged.
	Entries int
}

type accumulator struct {
	flows flowTable // per-peer and folded entries
	// sketches holds the sketch of every folded entry, by value: no
	// pointer per entry for the garbage collector to scan.
	sketches map[flowauditFlowKey]snapshot.PeerSketch
	overflow map[flowauditFlowKey]*overflowEntry
	levels   map[flowauditFlowKey]uint8 // service key → fold level
	folded   uint64                     // per-peer entries merged into a folded one
}

func newAccumulator() *accumulator {
	return &accumulator{
		flows:    newFlowTable(),
		sketches: map[flowauditFlowKey]snapshot.PeerSketch{},
		overflow: map[flowauditFlowKey]*overflowEntry{},
		levels:   map[flowauditFlowKey]uint8{},
	}
}

// size is the number of entries the budget counts.
func (a *accumulator) size() int { return a.flows.len() + len(a.overflow) }

// serviceOf strips the peer (and the fold level) from a key.
func serviceOf(k flowauditFlowKey) flowauditFlowKey {
	k.Peer = [16]uint8{}
	k.setFold(foldNone)
	return k
}

// peerOf is the key's peer address (IPv4 unmapped).
func peerOf(k *flowauditFlowKey) netip.Addr { return netip.AddrFrom16(k.Peer).Unmap() }

// foldKey re-keys k to the given fold level: its peer becomes the start of
// the covering prefix.
func foldKey(k flowauditFlowKey, level uint8) flowauditFlowKey {
	addr := peerOf(&k)
	bits := 0
	if level == foldPrefix {
		bits = foldBits6
		if addr.Is4() {
			bits = foldBits4
		}
	}
	p, _ := addr.Prefix(bits)
	k.Peer = p.Addr().As16()
	k.setFold(level)
	return k
}

// prefixOf returns the prefix a folded key stands for.
func prefixOf(k *flowauditFlowKey) netip.Prefix {
	addr := peerOf(k)
	bits := 0
	if k.fold() == foldPrefix {
		bits = foldBits6
		if addr.Is4() {
			bits = foldBits4
		}
	}
	return netip.PrefixFrom(addr, bits)
}

// addFlow accumulates one per-peer entry read from the kernel.
func (a *accumulator) addFlow(k flowauditFlowKey, v *accValue) {
	if lvl := a.levels[serviceOf(k)]; lvl != foldNone {
		a.mergeFolded(k, lvl, v, nil)
		return
	}
	a.flows.at(k).add(v)
}

// addNewFlow is addFlow for a key the accumulator does not hold as an
// exact entry (a drain into an empty accumulator: the kernel map's keys
// are distinct), without looking it up.
func (a *accumulator) addNewFlow(k flowauditFlowKey, v *accValue) {
	if len(a.levels) > 0 {
		if lvl := a.levels[serviceOf(k)]; lvl != foldNone {
			a.mergeFolded(k, lvl, v, nil)
			return
		}
	}
	a.flows.appendNew(k, v)
}

// mergeFolded merges an exact entry (k a kernel key; sk nil) or an already
// folded one (sk its sketch) into its entry at level.
func (a *accumulator) mergeFolded(k flowauditFlowKey, level uint8, v *accValue, sk *snapshot.PeerSketch) {
	fk := foldKey(k, level)
	s := a.sketches[fk]
	if sk != nil {
		s.Merge(sk)
	} else {
		s.Add(peerOf(&k))
		a.folded++
	}
	a.sketches[fk] = s
	a.flows.at(fk).add(v)
}

// addOverflow accumulates one per-service entry read from the kernel.
func (a *accumulator) addOverflow(k flowauditFlowKey, v *flowauditOverflowValue) {
	e := a.overflow[k]
	if e == nil {
		e = new(overflowEntry)
		a.overflow[k] = e
	}
	e.addKernel(&v.V)
	sk := snapshot.PeerSketch(v.Sketch)
	e.sketch.Merge(&sk)
}

// enforce folds services of accs until the entries the budget covers —
// fixed (entries of accumulators that must not change now, see window.go)
// plus those of accs — are within budget, with 10 % headroom so folding
// does not run on every move, and returns what it folded and the entries
// left. The services with the most entries (counted over all of accs) fold
// first, each as far as it takes to matter: to /24 and /48 prefixes when
// that at least halves its entries, straight to "other peers" when its
// peers are spread too thinly for prefixes to help (a spoofed-source
// flood), so a flood never pushes a small service into prefixes while it
// has entries left to give. A service is folded in every accumulator of
// accs, so its later peers go straight to their fold. Overflow entries are
// never folded: there is one per service at most.
func enforce(accs []*accumulator, fixed, budget int) ([]FoldEvent, int) {
	size := func() int {
		n := fixed
		for _, a := range accs {
			n += a.size()
		}
		return n
	}
	if budget <= 0 || size() <= budget {
		return nil, size()
	}
	target := budget * 9 / 10
	var events []FoldEvent
	for size() > target {
		prefix, other := plan(accs, size()-target)
		if len(prefix) == 0 && len(other) == 0 {
			break
		}
		if len(prefix) > 0 {
			events = append(events, fold(accs, prefix, foldPrefix)...)
		}
		if len(other) > 0 {
			events = append(events, fold(accs, other, foldOther)...)
		}
	}
	return events, size()
}

// enforce holds a single accumulator to budget.
func (a *accumulator) enforce(budget int) []FoldEvent {
	ev, _ := enforce([]*accumulator{a}, 0, budget)
	return ev
}

// plan chooses the services to fold and how far, largest first, until the
// entries they save add up to excess.
func plan(accs []*accumulator, excess int) (prefix, other map[flowauditFlowKey]bool) {
	type svc struct {
		k        flowauditFlowKey
		n, exact int                 // entries not yet "other peers"; exact ones
		prefixes snapshot.PeerSketch // the prefixes of the exact entries
	}
	bySvc := map[flowauditFlowKey]*svc{}
	for _, a := range accs {
		for k := range a.flows.all() {
			if k.fold() >= foldOther {
				continue
			}
			sk := serviceOf(k)
			s := bySvc[sk]
			if s == nil {
				s = &svc{k: sk}
				bySvc[sk] = s
			}
			s.n++
			if k.fold() == foldNone {
				s.exact++
				fk := foldKey(k, foldPrefix)
				s.prefixes.Add(peerOf(&fk))
			}
		}
	}
	order := make([]*svc, 0, len(bySvc))
	for _, s := range bySvc {
		order = append(order, s)
	}
	sort.Slice(order, func(i, j int) bool {
		if order[i].n != order[j].n {
			return order[i].n > order[j].n
		}
		return keyLess(&order[i].k, &order[j].k)
	})
	prefix, other = map[flowauditFlowKey]bool{}, map[flowauditFlowKey]bool{}
	saved := 0
	for len(order) > 0 && saved < excess {
		s := order[0]
		order = order[1:]
		if s.exact > 1 {
			if est := int(s.prefixes.Estimate()); est <= s.exact/2 {
				prefix[s.k] = true
				saved += s.exact - est
				// Folded to prefixes, it may still be the largest: it
				// competes again, for "other peers".
				s.n, s.exact = s.n-s.exact+est, 0
				at := sort.Search(len(order), func(i int) bool { return order[i].n < s.n })
				order = append(order[:at], append([]*svc{s}, order[at:]...)...)
				continue
			}
		}
		if s.n > 2 { // at most one "other peers" entry per address family
			other[s.k] = true
			delete(prefix, s.k) // straight to "other peers"
			saved += s.n - 2
		}
	}
	return prefix, other
}

// fold re-keys every entry of the picked services to level, in one pass
// over each accumulator, and marks the services folded in all of them.
func fold(accs []*accumulator, picked map[flowauditFlowKey]bool, level uint8) []FoldEvent {
	merged := map[flowauditFlowKey]int{}
	for _, a := range accs {
		a.flows.rekey(func(k flowauditFlowKey) bool {
			return k.fold() < level && picked[serviceOf(k)]
		}, func(k flowauditFlowKey, v *accValue) {
			var sk *snapshot.PeerSketch
			if s, ok := a.sketches[k]; ok {
				sk = &s
				delete(a.sketches, k)
			}
			a.mergeFolded(k, level, v, sk)
			merged[serviceOf(k)]++
		})
		for svc := range picked {
			a.levels[svc] = level
		}
	}
	events := make([]FoldEvent, 0, len(picked))
	for svc := range picked {
		name := "prefix"
		if level == foldOther {
			name = "other"
		}
		events = append(events, FoldEvent{Ifindex: svc.Ifindex, Direction: snapshot.Direction(svc.dir()),
			Proto: snapshot.Proto(svc.Proto), Port: svc.Port, Level: name, Entries: merged[svc]})
	}
	sort.Slice(events, func(i, j int) bool {
		if events[i].Entries != events[j].Entries {
			return events[i].Entries > events[j].Entries
		}
		return events[i].Port < events[j].Port
	})
	return events
}

func keyLess(a, b *flowauditFlowKey) bool {
	switch {
	case a.Ifindex != b.Ifindex:
		return a.Ifindex < b.Ifindex
	case a.dir() != b.dir():
		return a.dir() < b.dir()
	case a.Proto != b.Proto:
		return a.Proto < b.Proto
	case a.Port != b.Port:
		return a.Port < b.Port
	case a.flags() != b.flags():
		return a.flags() < b.flags()
	case a.fold() != b.fold():
		return a.fold() < b.fold()
	}
	for i := range a.Peer {
		if a.Peer[i] != b.Peer[i] {
			return a.Peer[i] < b.Peer[i]
		}
	}
	return false
}

// merge adds another accumulator's entries into a, folding them to the
// coarser of the two levels where a service was folded in either.
// It only reads o.
func (a *accumulator) merge(o *accumulator) {
	raised := false
	for svc, lvl := range o.levels {
		if lvl > a.levels[svc] {
			a.levels[svc] = lvl
			raised = true
		}
	}
	// Entries already in a of a service o folded further are re-keyed.
	if raised {
		a.refold()
	}
	for i := range o.flows.ents {
		k, v := o.flows.ents[i].k, &o.flows.ents[i].v
		lvl := max(a.levels[serviceOf(k)], k.fold())
		if lvl == foldNone {
			a.flows.at(k).add(v)
			continue
		}
		var sk *snapshot.PeerSketch
		if s, ok := o.sketches[k]; ok {
			sk = &s
		}
		a.mergeFolded(k, lvl, v, sk)
	}
	for k, e := range o.overflow {
		cur := a.overflow[k]
		if cur == nil {
			cur = new(overflowEntry)
			a.overflow[k] = cur
		}
		cur.add(&e.accValue)
		cur.sketch.Merge(&e.sketch)
	}
	a.folded += o.folded
}

// refold re-keys entries whose service is folded to a coarser level than
// the entry (after levels were raised by merge).
func (a *accumulator) refold() {
	a.flows.rekey(func(k flowauditFlowKey) bool {
		return a.levels[serviceOf(k)] > k.fold()
	}, func(k flowauditFlowKey, v *accValue) {
		lvl := a.levels[serviceOf(k)]
		s, ok := a.sketches[k]
		if !ok { // an exact entry: mergeFolded counts it as folded
			a.mergeFolded(k, lvl, v, nil)
			return
		}
		delete(a.sketches, k)
		a.mergeFolded(k, lvl, v, &s)
	})
}
