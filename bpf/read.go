package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// batchSize is the number of entries per BPF_MAP_LOOKUP_BATCH call.
const batchSize = 4096

// Read is one read of the maps: flows and statistics, as plain Go values.
type Read struct {
	Flows []snapshot.Flow
	Stats snapshot.Stats
}

// ReadMaps reads every flow (batch lookup, per-CPU values summed) and the
// statistics. Interface names come from the attachments; a flow on an
// interface flowaudit is no longer attached to is named by its index.
func (c *Collector) ReadMaps() (*Read, error) {
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

	keys, vals, err := c.dumpFlows()
	if err != nil {
		return nil, err
	}
	// Stats after flows: every loss up to the flow read is included.
	st, err := c.readStats()
	if err != nil {
		return nil, err
	}
	st.FlowEntries = uint32(len(keys))
	if c.flowType == ebpf.LRUHash || c.flowType == ebpf.LRUCPUHash {
		// Nothing deletes from the flow map, so every insert that is no
		// longer present was evicted.
		if st.FlowEvictions = st.flowNew - uint64(len(keys)); st.flowNew < uint64(len(keys)) {
			st.FlowEvictions = 0
		}
	}
	r := &Read{Stats: st.Stats, Flows: make([]snapshot.Flow, 0, len(keys))}
	for i := range keys {
		r.Flows = append(r.Flows, c.toFlow(&keys[i], &vals[i], names))
	}
	snapshot.SortFlows(r.Flows)
	return r, nil
}

// dumpFlows returns all flow entries, with per-CPU values already summed.
func (c *Collector) dumpFlows() ([]flowauditFlowKey, []flowauditFlowValue, error) {
	m := c.objs.Flows
	percpu := perCPU(c.flowType)
	ncpu := 1
	if percpu {
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return nil, nil, fmt.Errorf("possible CPUs: %w", err)
		}
		ncpu = n
	}
	var (
		keys   []flowauditFlowKey
		vals   []flowauditFlowValue
		cursor ebpf.MapBatchCursor
		kbuf   = make([]flowauditFlowKey, batchSize)
		vbuf   = make([]flowauditFlowValue, batchSize*ncpu)
	)
	for {
		n, err := m.BatchLookup(&cursor, kbuf, vbuf, nil)
		keys = append(keys, kbuf[:n]...)
		for i := 0; i < n; i++ {
			v := vbuf[i*ncpu]
			for cpu := 1; cpu < ncpu; cpu++ {
				addValue(&v, &vbuf[i*ncpu+cpu])
			}
			vals = append(vals, v)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return c.iterateFlows(percpu)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read flows: %w", err)
		}
	}
	return keys, vals, nil
}

// iterateFlows is the fallback for kernels without batch lookup on this map type.
func (c *Collector) iterateFlows(percpu bool) ([]flowauditFlowKey, []flowauditFlowValue, error) {
	var keys []flowauditFlowKey
	var vals []flowauditFlowValue
	var k flowauditFlowKey
	if percpu {
		var pv []flowauditFlowValue
		it := c.objs.Flows.Iterate()
		for it.Next(&k, &pv) {
			v := pv[0]
			for i := 1; i < len(pv); i++ {
				addValue(&v, &pv[i])
			}
			keys, vals = append(keys, k), append(vals, v)
		}
		return keys, vals, it.Err()
	}
	var v flowauditFlowValue
	it := c.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		keys, vals = append(keys, k), append(vals, v)
	}
	return keys, vals, it.Err()
}

// addValue merges one CPU's value into v: counters add, first seen takes
// the earliest non-zero, last seen the latest.
func addValue(v, o *flowauditFlowValue) {
	v.PacketsIn += o.PacketsIn
	v.BytesIn += o.BytesIn
	v.PacketsOut += o.PacketsOut
	v.BytesOut += o.BytesOut
	if o.FirstJiffies != 0 && (v.FirstJiffies == 0 || o.FirstJiffies < v.FirstJiffies) {
		v.FirstJiffies = o.FirstJiffies
	}
	if o.LastJiffies > v.LastJiffies {
		v.LastJiffies = o.LastJiffies
	}
	v.SynIn += o.SynIn
	v.SynackOut += o.SynackOut
	v.RstOut += o.RstOut
	v.IcmpClosedOut += o.IcmpClosedOut
	v.IcmpFilteredOut += o.IcmpFilteredOut
	v.SynOut += o.SynOut
	v.SynackIn += o.SynackIn
	v.RstIn += o.RstIn
	v.IcmpClosedIn += o.IcmpClosedIn
	v.IcmpFilteredIn += o.IcmpFilteredIn
}

func (c *Collector) toFlow(k *flowauditFlowKey, v *flowauditFlowValue, names map[uint32]string) snapshot.Flow {
	name, ok := names[k.Ifindex]
	if !ok {
		name = fmt.Sprintf("if%d", k.Ifindex)
	}
	first := c.boot.wall(v.FirstJiffies)
	last := c.boot.wall(v.LastJiffies)
	if last.IsZero() {
		last = first // evidence-only entry (ICMP error for a flow not seen)
	}
	return snapshot.Flow{
		Interface:         name,
		Direction:         snapshot.Direction(k.Dir),
		DirectionInferred: k.Flags&flowFlagInferred != 0,
		Fragment:          k.Flags&flowFlagFragment != 0,
		Proto:             snapshot.Proto(k.Proto),
		Port:              k.Port,
		Peer:              netip.AddrFrom16(k.Peer).Unmap(),
		PacketsIn:         v.PacketsIn,
		BytesIn:           v.BytesIn,
		PacketsOut:        v.PacketsOut,
		BytesOut:          v.BytesOut,
		FirstSeen:         first,
		LastSeen:          last,
		Evidence: snapshot.Evidence{
			SynIn: uint64(v.SynIn), SynAckOut: uint64(v.SynackOut), RstOut: uint64(v.RstOut),
			ICMPClosedOut: uint64(v.IcmpClosedOut), ICMPFilteredOut: uint64(v.IcmpFilteredOut),
			SynOut: uint64(v.SynOut), SynAckIn: uint64(v.SynackIn), RstIn: uint64(v.RstIn),
			ICMPClosedIn: uint64(v.IcmpClosedIn), ICMPFilteredIn: uint64(v.IcmpFilteredIn),
		},
	}
}

// flow_key.flags, as in flowaudit.c.
const (
	flowFlagInferred = 1 << 0
	flowFlagFragment = 1 << 1
)

type statsRead struct {
	snapshot.Stats
	flowNew uint64
}

func (c *Collector) readStats() (statsRead, error) {
	var st statsRead
	st.FlowCapacity = c.objs.Flows.MaxEntries()
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
	} {
		v, err := get(f.idx)
		if err != nil {
			return st, err
		}
		*f.dst = v
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
