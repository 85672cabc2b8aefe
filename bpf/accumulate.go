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
// Memory is bounded by a budget in entries. Beyond it, the services with
// the most peers are folded: their per-peer entries merge into one entry
// per /24 (IPv4) or /48 (IPv6) prefix, and if that is not enough, into one
// "other peers" entry (/0) per address family. A folded entry keeps a
// HyperLogLog sketch of the peers it absorbed (the same sketch the kernel
// keeps for overflow entries), and a service once folded stays folded, so
// its later peers go straight into their prefix.

// Fold levels, stored in flow_key.pad[0] of an accumulator key (the kernel
// always leaves the padding zero).
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
	budget   int // entries; 0: unlimited
	flows    map[flowauditFlowKey]accValue
	sketches map[flowauditFlowKey]*snapshot.PeerSketch // folded entries only
	overflow map[flowauditFlowKey]*overflowEntry
	levels   map[flowauditFlowKey]uint8 // service key → fold level
	folded   uint64                     // per-peer entries merged into a folded one
}

func newAccumulator(budget int) *accumulator {
	return &accumulator{
		budget:   budget,
		flows:    map[flowauditFlowKey]accValue{},
		sketches: map[flowauditFlowKey]*snapshot.PeerSketch{},
		overflow: map[flowauditFlowKey]*overflowEntry{},
		levels:   map[flowauditFlowKey]uint8{},
	}
}

// size is the number of entries the budget counts.
func (a *accumulator) size() int { return len(a.flows) + len(a.overflow) }

// serviceOf strips the peer (and the fold level) from a key.
func serviceOf(k flowauditFlowKey) flowauditFlowKey {
	k.Peer = [16]uint8{}
	k.Pad = [3]uint8{}
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
	k.Pad = [3]uint8{level}
	return k
}

// prefixOf returns the prefix a folded key stands for.
func prefixOf(k *flowauditFlowKey) netip.Prefix {
	addr := peerOf(k)
	bits := 0
	if k.Pad[0] == foldPrefix {
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
	cur := a.flows[k]
	cur.add(v)
	a.flows[k] = cur
}

// mergeFolded merges an exact entry (k a kernel key; sk nil) or an already
// folded one (sk its sketch) into its entry at level.
func (a *accumulator) mergeFolded(k flowauditFlowKey, level uint8, v *accValue, sk *snapshot.PeerSketch) {
	fk := foldKey(k, level)
	s := a.sketches[fk]
	if s == nil {
		s = new(snapshot.PeerSketch)
		a.sketches[fk] = s
	}
	if sk != nil {
		s.Merge(sk)
	} else {
		s.Add(peerOf(&k))
		a.folded++
	}
	cur := a.flows[fk]
	cur.add(v)
	a.flows[fk] = cur
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

// enforce folds services until the accumulator is within its budget (with
// 10 % headroom, so folding does not run on every move), and returns what
// it folded. Services with the most exact peers fold to prefixes first;
// when only folded entries are left, those with the most prefixes fold to
// "other peers". Overflow entries are never folded: there is one per
// service at most.
func (a *accumulator) enforce() []FoldEvent {
	if a.budget <= 0 || a.size() <= a.budget {
		return nil
	}
	target := a.budget * 9 / 10
	var events []FoldEvent
	for _, level := range []uint8{foldPrefix, foldOther} {
		for a.size() > target {
			picked := a.pick(level, a.size()-target)
			if len(picked) == 0 {
				break
			}
			events = append(events, a.fold(picked, level)...)
		}
	}
	return events
}

// pick chooses the services to fold to level: those with the most entries
// below that level, until their entries add up to excess.
func (a *accumulator) pick(level uint8, excess int) map[flowauditFlowKey]bool {
	count := map[flowauditFlowKey]int{}
	for k := range a.flows {
		if k.Pad[0] < level {
			count[serviceOf(k)]++
		}
	}
	type svc struct {
		k flowauditFlowKey
		n int
	}
	order := make([]svc, 0, len(count))
	for k, n := range count {
		if n > 1 || level == foldOther { // one exact peer gains nothing from a prefix
			order = append(order, svc{k, n})
		}
	}
	sort.Slice(order, func(i, j int) bool {
		if order[i].n != order[j].n {
			return order[i].n > order[j].n
		}
		return keyLess(&order[i].k, &order[j].k)
	})
	picked := map[flowauditFlowKey]bool{}
	sum := 0
	for _, s := range order {
		if sum >= excess {
			break
		}
		picked[s.k] = true
		sum += s.n
	}
	return picked
}

// fold re-keys every entry of the picked services to level, in one pass.
func (a *accumulator) fold(picked map[flowauditFlowKey]bool, level uint8) []FoldEvent {
	merged := map[flowauditFlowKey]int{}
	for k, v := range a.flows {
		svc := serviceOf(k)
		if !picked[svc] || k.Pad[0] >= level {
			continue
		}
		delete(a.flows, k)
		sk := a.sketches[k]
		delete(a.sketches, k)
		a.mergeFolded(k, level, &v, sk)
		merged[svc]++
	}
	events := make([]FoldEvent, 0, len(picked))
	for svc := range picked {
		a.levels[svc] = level
		name := "prefix"
		if level == foldOther {
			name = "other"
		}
		events = append(events, FoldEvent{Ifindex: svc.Ifindex, Direction: snapshot.Direction(svc.Dir),
			Proto: snapshot.Proto(svc.Proto), Port: svc.Port, Level: name, Entries: merged[svc]})
	}
	sort.Slice(events, func(i, j int) bool { return events[i].Entries > events[j].Entries })
	return events
}

func keyLess(a, b *flowauditFlowKey) bool {
	switch {
	case a.Ifindex != b.Ifindex:
		return a.Ifindex < b.Ifindex
	case a.Dir != b.Dir:
		return a.Dir < b.Dir
	case a.Proto != b.Proto:
		return a.Proto < b.Proto
	case a.Port != b.Port:
		return a.Port < b.Port
	case a.Flags != b.Flags:
		return a.Flags < b.Flags
	case a.Pad != b.Pad:
		return a.Pad[0] < b.Pad[0]
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
func (a *accumulator) merge(o *accumulator) {
	for svc, lvl := range o.levels {
		if lvl > a.levels[svc] {
			a.levels[svc] = lvl
		}
	}
	// Entries already in a of a service o folded further are re-keyed.
	a.refold()
	for k, v := range o.flows {
		lvl := max(a.levels[serviceOf(k)], k.Pad[0])
		if lvl == foldNone {
			cur := a.flows[k]
			cur.add(&v)
			a.flows[k] = cur
			continue
		}
		a.mergeFolded(k, lvl, &v, o.sketches[k])
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
	for k, v := range a.flows {
		lvl := a.levels[serviceOf(k)]
		if lvl <= k.Pad[0] {
			continue
		}
		delete(a.flows, k)
		sk := a.sketches[k]
		delete(a.sketches, k)
		if sk == nil { // an exact entry: mergeFolded counts it as folded
			a.mergeFolded(k, lvl, &v, nil)
			continue
		}
		a.mergeFolded(k, lvl, &v, sk)
	}
}
