package bpf

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/internal/hugemem"
)

// batchSize is the number of entries per BPF_MAP_LOOKUP_BATCH call.
const batchSize = 8192

// Read is one read of everything counted so far, as plain Go values.
type Read struct {
	// Since is the start of what the read covers: the oldest bucket of a
	// sliding window (Options.Window); zero without a window (since Open
	// or Reset).
	Since time.Time
	Flows []snapshot.Flow
	// Overflow: per-service counts of packets whose per-peer flow could
	// not be stored (flow map full), peers unknown.
	Overflow []snapshot.Flow
	Stats    snapshot.Stats
}

// ReadMaps moves what the kernel counted since the last move into the
// collector's memory (see Move) and returns everything accumulated since
// Open or Reset — or, with Options.Window, about the last window of it
// (window.go): flows sorted, overflow entries and statistics. Interface
// names come from the attachments; a flow on an interface flowaudit is no
// longer attached to is named by its index.
//
// The collector's lock is held only for the move and to lend the
// accumulated counts out (window.go: no copy); merging the buckets,
// converting and sorting happen outside it, so the periodic moves of a
// recorder never wait for an export, however large. Concurrent ReadMaps
// calls run one after the other.
func (c *Collector) ReadMaps() (*Read, error) {
	c.exportMu.Lock()
	defer c.exportMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	names := map[uint32]string{}
	for idx, a := range c.attached {
		names[uint32(idx)] = a.Iface
	}
	c.mu.Unlock()

	c.moveMu.Lock()
	if _, err := c.move(); err != nil {
		c.moveMu.Unlock()
		return nil, err
	}
	r, accs, err := c.readLocked()
	if err != nil {
		c.moveMu.Unlock()
		return nil, err
	}
	c.moveMu.Unlock()
	defer func() {
		c.moveMu.Lock()
		c.returnLent()
		c.moveMu.Unlock()
	}()

	// What a drain appended unindexed (flowTable.index) stays so: the
	// conversion only walks the entries, and the index is built by the
	// first lookup that needs it — a later move into the same bucket, or
	// merging back a delta — never for a one-shot export (record).
	acc := mergeLent(accs)
	r.Stats.FoldedFlows = acc.folded
	r.Flows = c.sortedFlows(acc, names)
	for k, e := range acc.overflow {
		f := c.toFlow(&k, &e.accValue, names)
		f.Peer = netip.Addr{}
		sk := e.sketch
		f.PeerSketch = &sk
		f.Peers = sk.Estimate()
		r.Overflow = append(r.Overflow, f)
	}
	snapshot.SortFlows(r.Overflow)
	return r, nil
}

// sortedFlows converts acc's entries into flows in snapshot.SortFlows'
// order. It orders small keys, then writes every flow once at its place —
// never moving 256-byte flows, which hold pointers the garbage collector
// would have to follow through each move — and does both on two
// goroutines. TestSortedFlowsMatchSimplePath compares it with converting
// in any order and sorting with SortFlows.
func (c *Collector) sortedFlows(acc *accumulator, names map[uint32]string) []snapshot.Flow {
	ents := acc.flows.ents
	n := len(ents)
	ifn := map[uint32]string{}
	var list []string
	for i := range ents {
		if i > 0 && ents[i].k.Ifindex == ents[i-1].k.Ifindex {
			continue
		}
		ix := ents[i].k.Ifindex
		if _, ok := ifn[ix]; ok {
			continue
		}
		name := ifaceName(ix, names)
		ifn[ix] = name
		if !slices.Contains(list, name) {
			list = append(list, name)
		}
	}
	hook := c.exportHook
	o := snapshot.NewOrderer(list)
	if o == nil {
		return c.convertThenSort(acc, ifn, hook)
	}
	// The small keys first, from the entries' key fields alone; the flows
	// are allocated only once the keys are sorted. The collection that a
	// quarter of a gigabyte of flows sets off then finds the keys already
	// in place, and no goroutine allocates while it marks (an allocation
	// during marking is charged as scan work: building the keys after the
	// flows' allocation cost twice the keys themselves).
	keys := hugemem.Make[snapshot.OrderKey](n)[:n]
	var bad atomic.Bool
	inHalves(n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			var f snapshot.Flow
			keyFields(&f, &ents[i].k, ifn)
			k, ok := o.Key(&f, i)
			if !ok {
				bad.Store(true)
				return
			}
			keys[i] = k
		}
	})
	if bad.Load() {
		return c.convertThenSort(acc, ifn, hook)
	}
	snapshot.SortKeys(keys)
	// Where each entry goes: the entries are then read in order and the
	// flows written each at its place (a scatter of writes, which the
	// CPU does not wait for, instead of a gather of reads from random
	// entries, each a cache miss it waits for).
	at := hugemem.Make[int32](n)[:n]
	for j := range keys {
		at[keys[j].Index()] = int32(j)
	}
	out := snapshot.MakeFlows(n)[:n]
	if hook != nil {
		hook()
	}
	inHalves(n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			c.putFlow(&out[at[i]], acc, &ents[i], ifn)
		}
	})
	return out
}

// convertThenSort is sortedFlows for entries an Orderer cannot rank:
// convert in any order, then sort the flows themselves.
func (c *Collector) convertThenSort(acc *accumulator, ifn map[uint32]string, hook func()) []snapshot.Flow {
	ents := acc.flows.ents
	n := len(ents)
	out := snapshot.MakeFlows(n)[:n]
	inHalves(n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			c.putFlow(&out[i], acc, &ents[i], ifn)
		}
	})
	if hook != nil {
		hook()
	}
	snapshot.SortFlows(out)
	return out
}

// inHalves runs fn over [0, n) in two halves on two goroutines (one for a
// small n).
func inHalves(n int, fn func(lo, hi int)) {
	if n < 1<<14 {
		fn(0, n)
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(n/2, n)
	}()
	fn(0, n/2)
	<-done
}

// ifaceName names an interface index: the attachment's name, or ifN for
// an interface flowaudit is no longer attached to.
func ifaceName(ix uint32, names map[uint32]string) string {
	if name, ok := names[ix]; ok {
		return name
	}
	return fmt.Sprintf("if%d", ix)
}

// putFlow converts one accumulated entry into f, which must be zero; ifn
// names every interface index of the entries. A folded entry gets its
// prefix, its own copy of the sketch and the estimate from it.
func (c *Collector) putFlow(f *snapshot.Flow, acc *accumulator, e *flowEntry, ifn map[uint32]string) {
	c.fillFlow(f, &e.k, &e.v, ifn)
	if e.k.fold() != foldNone {
		sk := acc.sketches[e.k]
		f.PeerSketch = &sk
		f.Peers = sk.Estimate()
	}
}

// readLocked reads the statistics right after a move (every loss up to it
// is included) and lends the buckets out. The caller holds moveMu and, if
// it succeeds, must call returnLent after reading the accumulators.
func (c *Collector) readLocked() (*Read, []*accumulator, error) {
	st, err := c.readStats()
	if err != nil {
		return nil, nil, err
	}
	if c.window <= 0 && (c.flowType == ebpf.LRUHash || c.flowType == ebpf.LRUCPUHash) {
		active, err := countEntries(c.flowMaps[c.gen])
		if err != nil {
			return nil, nil, err
		}
		// Only a move deletes from a flow map: every insert neither moved
		// nor still present was evicted.
		if gone := c.moved + uint64(active); st.flowNew > gone {
			st.FlowEvictions = st.flowNew - gone
		}
	}
	r := &Read{}
	if c.window > 0 {
		r.Since = c.buckets[0].start
		st.since(&c.buckets[0].stats)
	}
	r.Stats = st.Stats
	return r, c.lend(), nil
}

// countEntries counts a map's keys (the LRU benchmark variants only).
func countEntries(m *ebpf.Map) (int, error) {
	n := 0
	var k flowauditFlowKey
	it := m.Iterate()
	var v []byte
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

func (c *Collector) toFlow(k *flowauditFlowKey, v *accValue, names map[uint32]string) (f snapshot.Flow) {
	c.fillFlow(&f, k, v, names)
	return f
}

// keyFields sets f's key fields (zero) from k: interface, direction and
// flags, protocol, port, and the peer — or, for a folded entry, the
// prefix it stands for.
func keyFields(f *snapshot.Flow, k *flowauditFlowKey, names map[uint32]string) {
	f.Interface = ifaceName(k.Ifindex, names)
	f.Direction = snapshot.Direction(k.dir())
	f.DirectionInferred = k.DirFlags&flowFlagInferred != 0
	f.Fragment = k.DirFlags&flowFlagFragment != 0
	f.Proto = snapshot.Proto(k.Proto)
	f.Port = k.Port
	if k.fold() != foldNone {
		f.PeerPrefix = prefixOf(k)
		return
	}
	f.Peer = netip.AddrFrom16(k.Peer).Unmap()
}

// fillFlow sets f (zero) to the entry (k, v) field by field: written in
// place into a large slice, a flow costs a write barrier per pointer field
// while the garbage collector marks, not a bulk barrier over all of it.
func (c *Collector) fillFlow(f *snapshot.Flow, k *flowauditFlowKey, v *accValue, names map[uint32]string) {
	keyFields(f, k, names)
	f.PacketsIn = v.packetsIn
	f.BytesIn = v.bytesIn
	f.PacketsOut = v.packetsOut
	f.BytesOut = v.bytesOut
	f.FirstSeen = c.boot.wall(v.first)
	f.LastSeen = c.boot.wall(v.last)
	if f.LastSeen.IsZero() {
		f.LastSeen = f.FirstSeen // evidence-only entry (ICMP error for a flow not seen)
	}
	f.Evidence = v.ev
}

type statsRead struct {
	snapshot.Stats
	flowNew uint64
}

// readStats reads the kernel's counters and the collector's own (moves,
// budget, folding). The caller holds moveMu.
func (c *Collector) readStats() (statsRead, error) {
	var st statsRead
	st.FlowCapacity = c.flowMaps[0].MaxEntries()
	st.FlowEntries = c.highWater
	st.OverflowCapacity = c.overflowMaps[0].MaxEntries()
	st.Moves = c.moves
	st.FlowBudget = uint64(max(c.budget, 0))
	get := func(idx flowauditStat) (uint64, error) {
		var per []uint64
		if err := c.objs.Stats.Lookup(uint32(idx), &per); err != nil {
			return 0, fmt.Errorf("read stats[%d]: %w", idx, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		return sum, nil
	}
	for _, f := range []struct {
		idx flowauditStat
		dst *uint64
	}{
		{flowauditStatSTAT_PACKETS_INGRESS, &st.PacketsIngress},
		{flowauditStatSTAT_PACKETS_EGRESS, &st.PacketsEgress},
		{flowauditStatSTAT_FLOW_NEW, &st.flowNew},
		{flowauditStatSTAT_FLOW_INSERT_FAILED, &st.FlowInsertFailed},
		{flowauditStatSTAT_CONN_INSERT_FAILED, &st.ConnInsertFailed},
		{flowauditStatSTAT_TRUNCATED, &st.Truncated},
		{flowauditStatSTAT_OVERFLOW_INSERT_FAILED, &st.OverflowInsertFailed},
	} {
		v, err := get(f.idx)
		if err != nil {
			return st, err
		}
		*f.dst = v
	}
	if c.cache != nil {
		in, out := c.cache.fastHits()
		st.PacketsIngress += in
		st.PacketsEgress += out
	}
	ethFailed, err := get(flowauditStatSTAT_ETHERTYPE_INSERT_FAILED)
	if err != nil {
		return st, err
	}
	if ethFailed > 0 {
		st.NonIP = map[string]snapshot.Counter{"overflow": {Packets: ethFailed}}
	}
	var et uint32
	var per []flowauditEthertypeValue
	it := c.objs.Ethertypes.Iterate()
	for it.Next(&et, &per) {
		var sum snapshot.Counter
		for _, v := range per {
			sum.Packets += v.Packets
			sum.Bytes += v.Bytes
		}
		if st.NonIP == nil {
			st.NonIP = map[string]snapshot.Counter{}
		}
		st.NonIP[fmt.Sprintf("0x%04x", et)] = sum
	}
	if err := it.Err(); err != nil {
		return st, fmt.Errorf("read ethertypes: %w", err)
	}
	return st, nil
}

// Hostname and kernel release, for the snapshot header.
func hostInfo() (host, kernel string) {
	host, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	return host, kernel
}
