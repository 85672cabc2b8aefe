package bpf

import (
	"net/netip"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// MovedFlow is one entry as a move takes it out of the kernel maps, before
// the collector's windows and memory budget apply. A live consumer that
// needs cumulative counts — watch's Prometheus metrics — sums these: every
// packet the datapath counted is in exactly one MovedFlow, once.
type MovedFlow struct {
	Ifindex   uint32
	Direction snapshot.Direction
	Proto     snapshot.Proto
	// Port is the service port (ICMP: type<<8|code; 0 for protocols
	// without ports and for non-first fragments).
	Port     uint16
	Fragment bool
	// Peer is the remote address; invalid for an overflow entry, whose
	// packets lost their peer (the flow map was full).
	Peer                                     netip.Addr
	PacketsIn, BytesIn, PacketsOut, BytesOut uint64
	Evidence                                 snapshot.Evidence
}

// reportMoved hands one drained entry to Options.OnMove. The caller holds
// moveMu, so calls never overlap.
func (c *Collector) reportMoved(k *flowauditFlowKey, v *accValue, overflow bool) {
	if c.onMove == nil {
		return
	}
	m := MovedFlow{
		Ifindex: k.Ifindex, Direction: snapshot.Direction(k.dir()), Proto: snapshot.Proto(k.Proto), Port: k.Port,
		Fragment:  k.DirFlags&flowFlagFragment != 0,
		PacketsIn: v.packetsIn, BytesIn: v.bytesIn, PacketsOut: v.packetsOut, BytesOut: v.bytesOut, Evidence: v.ev,
	}
	if !overflow {
		m.Peer = peerOf(k)
	}
	c.onMove(&m)
}

// reportOverflow is reportMoved for an overflow map entry.
func (c *Collector) reportOverflow(k *flowauditFlowKey, v *flowauditOverflowValue) {
	if c.onMove == nil {
		return
	}
	var a accValue
	a.addKernel(&v.V)
	c.reportMoved(k, &a, true)
}
