package bpf

// Hooks for the benchmark harness (cmd/flowbench) and the Go benchmarks.
// A recorder never needs them.

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// BenchFlowMap returns the flow map the programs currently count into, for
// benchmarks that time raw batch operations on it.
func (c *Collector) BenchFlowMap() *ebpf.Map {
	c.moveMu.Lock()
	defer c.moveMu.Unlock()
	return c.flowMaps[c.gen]
}

// BenchLoadFlows writes flows into the flow map with BPF_MAP_UPDATE_BATCH,
// as if the datapath had counted them: benchmarks fill the map to a given
// size in a fraction of a second instead of running a packet per key.
// Interface names are resolved against the current attachments, then
// "ifN"; anything else gets index 0. Times become CLOCK_MONOTONIC
// nanoseconds, the inverse of what ReadMaps does. Existing keys are
// overwritten. The map must not be a per-CPU variant.
func (c *Collector) BenchLoadFlows(flows []snapshot.Flow) error {
	if perCPU(c.flowType) {
		return fmt.Errorf("load flows: %s not supported", c.flowType)
	}
	index := map[string]uint32{}
	for _, a := range c.Attachments() {
		index[a.Iface] = uint32(a.Index)
	}
	keys := make([]flowauditFlowKey, 0, min(len(flows), batchSize))
	vals := make([]flowauditFlowValue, 0, cap(keys))
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		n, err := c.BenchFlowMap().BatchUpdate(keys, vals, &ebpf.BatchOptions{ElemFlags: uint64(ebpf.UpdateAny)})
		if err != nil {
			return fmt.Errorf("load flows: batch update (%d of %d written): %w", n, len(keys), err)
		}
		keys, vals = keys[:0], vals[:0]
		return nil
	}
	for i := range flows {
		f := &flows[i]
		k := flowauditFlowKey{Port: f.Port, Proto: uint8(f.Proto), DirFlags: uint8(f.Direction)}
		k.Peer = f.Peer.As16() // IPv4 as ::ffff:a.b.c.d, as the datapath stores it
		if idx, ok := index[f.Interface]; ok {
			k.Ifindex = idx
		} else {
			var n uint32
			if _, err := fmt.Sscanf(f.Interface, "if%d", &n); err == nil {
				k.Ifindex = n
			}
		}
		if f.DirectionInferred {
			k.DirFlags |= flowFlagInferred
		}
		if f.Fragment {
			k.DirFlags |= flowFlagFragment
		}
		e := f.Evidence
		v := flowauditFlowValue{
			PacketsIn: f.PacketsIn, BytesIn: f.BytesIn, PacketsOut: f.PacketsOut, BytesOut: f.BytesOut,
			FirstJiffies: c.boot.jiffies(f.FirstSeen), LastJiffies: c.boot.jiffies(f.LastSeen),
			SynIn: u32(e.SynIn), SynackOut: u32(e.SynAckOut), RstOut: u32(e.RstOut),
			IcmpClosedOut: u32(e.ICMPClosedOut), IcmpFilteredOut: u32(e.ICMPFilteredOut),
			SynOut: u32(e.SynOut), SynackIn: u32(e.SynAckIn), RstIn: u32(e.RstIn),
			IcmpClosedIn: u32(e.ICMPClosedIn), IcmpFilteredIn: u32(e.ICMPFilteredIn),
		}
		keys, vals = append(keys, k), append(vals, v)
		if len(keys) == batchSize {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	// The datapath counts every insert (STAT_FLOW_NEW): so does this, so
	// what reads the counter (the eviction count of LRU maps, the size
	// hint of a move) sees the map as a recording leaves it. Flows are
	// taken as new keys.
	var per []uint64
	if err := c.objs.Stats.Lookup(uint32(flowauditStatSTAT_FLOW_NEW), &per); err != nil {
		return fmt.Errorf("load flows: read the insert counter: %w", err)
	}
	if len(per) == 0 {
		return nil
	}
	per[0] += uint64(len(flows))
	if err := c.objs.Stats.Update(uint32(flowauditStatSTAT_FLOW_NEW), per, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("load flows: update the insert counter: %w", err)
	}
	return nil
}

// BenchCut selects how much of the per-packet path the programs run
// (bench_cut in flowaudit.c), for measuring what each part costs on the
// live path, where the work cannot be timed apart.
type BenchCut uint8

const (
	// BenchCutNone runs the whole path: the shipped programs.
	BenchCutNone BenchCut = iota
	// BenchCutCount counts the packet (the per-CPU packet counter) and
	// stops: no parsing, no flows.
	BenchCutCount
	// BenchCutAccount parses, classifies and builds the flow key, then
	// stops before the flow-map update.
	BenchCutAccount
)

func (b BenchCut) String() string {
	switch b {
	case BenchCutNone:
		return "none"
	case BenchCutCount:
		return "count"
	case BenchCutAccount:
		return "account"
	}
	return fmt.Sprintf("BenchCut(%d)", uint8(b))
}

// BenchCounted returns the datapath's packet counters (ingress, egress)
// without reading the flow map, so a benchmark can check a run cheaply
// even when the map holds a million entries.
func (c *Collector) BenchCounted() (ingress, egress uint64, err error) {
	n, err := c.Counters()
	if err != nil {
		return 0, 0, err
	}
	return n.PacketsIngress, n.PacketsEgress, nil
}

func u32(v uint64) uint32 {
	if v > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(v)
}
