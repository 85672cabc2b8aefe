package bpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// MoveResult describes one move of the kernel's counts into the
// collector's memory.
type MoveResult struct {
	// Flows and Overflow are the entries the emptied generation held.
	Flows, Overflow int
	// Folded lists the services folded to stay within the memory budget
	// since the previous Move returned (folds made while an export
	// returned its buckets included).
	Folded []FoldEvent
	// Took is the whole move: flip, grace period, read and delete.
	Took time.Duration
}

// Move empties the kernel's counters into the collector without losing a
// packet. The programs count into one of two generations of maps (flows_N,
// overflow_N, selected by active_gen). Move points them at the other
// generation, then updates flow_gens, which returns only after an RCU grace
// period: every program that could still hold the old generation has
// finished, since XDP and TC programs run inside an RCU read-side section.
// The old generation is then read and deleted with nobody writing to it,
// so no delete races an atomic add. A recorder calls Move periodically so
// the kernel maps never fill on a long run; ReadMaps calls it first.
// A collector attached nowhere is driven only by BPF_PROG_TEST_RUN: its
// caller must not run programs (Run) concurrently with Move or ReadMaps.
func (c *Collector) Move() (MoveResult, error) {
	c.moveMu.Lock()
	defer c.moveMu.Unlock()
	res, err := c.move()
	if err == nil {
		res.Folded, c.unreported = c.unreported, nil
	}
	return res, err
}

// move is Move with moveMu held. Folds stay in c.unreported.
func (c *Collector) move() (MoveResult, error) {
	c.mu.Lock()
	closed, attached := c.closed, len(c.attached) > 0
	c.mu.Unlock()
	if closed {
		return MoveResult{}, ErrClosed
	}
	start := time.Now()
	old := c.gen
	if err := c.objs.ActiveGen.Set(old ^ 1); err != nil {
		return MoveResult{}, fmt.Errorf("move: flip generation: %w", err)
	}
	c.gen = old ^ 1
	// Without attachments the programs run only through BPF_PROG_TEST_RUN
	// (replay, tests), whose calls have all returned: there is nobody to
	// wait for, and a grace period costs milliseconds per replayed file.
	if attached {
		if err := c.objs.FlowGens.Update(old, c.flowMaps[old], ebpf.UpdateAny); err != nil {
			return MoveResult{}, fmt.Errorf("move: wait for the programs: %w", err)
		}
	}
	var res MoveResult
	var err error
	if c.cache != nil {
		if _, err := c.cache.collect(old, c.flowMaps[old]); err != nil {
			return res, err
		}
	}
	c.reserve()
	if res.Flows, err = c.drainFlows(c.flowMaps[old]); err != nil {
		return res, err
	}
	if res.Overflow, err = c.drainOverflow(c.overflowMaps[old]); err != nil {
		return res, err
	}
	c.moves++
	c.moved += uint64(res.Flows)
	if uint32(res.Flows) > c.highWater {
		c.highWater = uint32(res.Flows)
	}
	if err := c.rotate(time.Now()); err != nil {
		return res, err
	}
	res.Took = time.Since(start)
	return res, nil
}

// drainByIteration is the fallback for kernels without batch operations
// on this map type: iterate, then delete what was read.
func (c *Collector) drainByIteration(m *ebpf.Map, ncpu int) (int, error) {
	var (
		k    flowauditFlowKey
		one  flowauditFlowValue
		per  []flowauditFlowValue
		keys []flowauditFlowKey
	)
	it := m.Iterate()
	for {
		var ok bool
		if ncpu > 1 {
			ok = it.Next(&k, &per)
		} else {
			ok = it.Next(&k, &one)
			per = []flowauditFlowValue{one}
		}
		if !ok {
			break
		}
		var v accValue
		for i := range per {
			v.addKernel(&per[i])
		}
		c.addFlow(k, &v)
		c.reportMoved(&k, &v, false)
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("move flows: %w", err)
	}
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("move flows: delete: %w", err)
		}
	}
	return len(keys), nil
}

// drainOverflow reads and deletes a quiescent overflow map.
func (c *Collector) drainOverflow(m *ebpf.Map) (int, error) {
	keys := make([]flowauditFlowKey, 256)
	vals := make([]flowauditOverflowValue, 256)
	total := 0
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookupAndDelete(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			c.addOverflow(keys[i], &vals[i])
			c.reportOverflow(&keys[i], &vals[i])
		}
		total += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("move overflow: %w", err)
		}
	}
}

// Counters are cheap figures for a progress display: they read only the
// per-CPU statistics, never the flow maps.
type Counters struct {
	PacketsIngress, PacketsEgress uint64
	// FastPath: of those, the packets the header fast path counted
	// without parsing them (the last flow on their CPU, bpf/cache.go).
	FastPath uint64
	// FlowInsertFailed: packets that lost their peer (flow map full);
	// OverflowInsertFailed: packets not counted at all.
	FlowInsertFailed, OverflowInsertFailed uint64
	// ActiveEntries estimates the entries in the kernel's current
	// generation (flows inserted since the last move).
	ActiveEntries uint64
	FlowCapacity  uint32
	// Accumulated is the number of entries in the collector's memory.
	Accumulated int
	Moves       uint64
}

// reserve sizes an empty accumulator for the entries the kernel holds
// (inserts less entries moved: one counter read), so a first move of a
// million flows fills a map made once instead of growing it twenty times.
// Capped by the flow map's size and the budget (beyond it, entries fold).
func (c *Collector) reserve() {
	acc := c.cur().target()
	if acc.flows.len() > 0 {
		return
	}
	var per []uint64
	if c.objs.Stats.Lookup(uint32(flowauditStatSTAT_FLOW_NEW), &per) != nil {
		return // only a hint
	}
	var inserted uint64
	for _, v := range per {
		inserted += v
	}
	if inserted <= c.moved {
		return
	}
	n := min(inserted-c.moved, uint64(c.flowMaps[0].MaxEntries()))
	if c.budget > 0 {
		n = min(n, uint64(c.budget))
	}
	if n > 1024 {
		acc.flows = reserveTable(int(n))
	}
}

// Counters reads the statistics without touching the flow maps, so it
// stays fast whatever their size.
func (c *Collector) Counters() (Counters, error) {
	c.moveMu.Lock()
	defer c.moveMu.Unlock()
	st, err := c.readStats()
	if err != nil {
		return Counters{}, err
	}
	out := Counters{
		PacketsIngress: st.PacketsIngress, PacketsEgress: st.PacketsEgress, FastPath: c.FastPathHits(),
		FlowInsertFailed: st.FlowInsertFailed, OverflowInsertFailed: st.OverflowInsertFailed,
		FlowCapacity: st.FlowCapacity, Moves: c.moves,
	}
	out.Accumulated = c.entries()
	if st.flowNew > c.moved {
		out.ActiveEntries = st.flowNew - c.moved
	}
	return out, nil
}

// FoldLog returns every fold the memory budget caused since Open or Reset.
func (c *Collector) FoldLog() []FoldEvent {
	c.moveMu.Lock()
	defer c.moveMu.Unlock()
	return append([]FoldEvent(nil), c.foldLog...)
}
