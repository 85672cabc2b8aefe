package bpf

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// ServiceHint is one endpoint of a capture and its fan-in: the number of
// distinct counterpart ports it exchanged packets with. Replay computes
// them over the whole capture; the port heuristic then takes the end of a
// conversation with the larger fan-in as the service (docs/ARCHITECTURE.md,
// "Direction"). A live recording loads none.
type ServiceHint struct {
	Proto snapshot.Proto
	Addr  netip.Addr
	Port  uint16
	Fan   uint32
}

// ServiceHintCapacity is how many hints the programs' map holds.
func (c *Collector) ServiceHintCapacity() int { return int(c.objs.ServiceHints.MaxEntries()) }

// SetServiceHints replaces the fan-in hints. Beyond ServiceHintCapacity the
// hints with the largest fan-in are kept (ties in protocol, address, port
// order); stored is how many were loaded. Nothing may be counting meanwhile.
func (c *Collector) SetServiceHints(hints []ServiceHint) (stored int, err error) {
	if err := clearMap(c.objs.ServiceHints); err != nil {
		return 0, err
	}
	if err := c.objs.HintsLoaded.Set(uint32(0)); err != nil {
		return 0, fmt.Errorf("service hints: %w", err)
	}
	hs := append([]ServiceHint(nil), hints...)
	if len(hs) > c.ServiceHintCapacity() {
		sort.Slice(hs, func(i, j int) bool {
			a, b := hs[i], hs[j]
			switch {
			case a.Fan != b.Fan:
				return a.Fan > b.Fan
			case a.Proto != b.Proto:
				return a.Proto < b.Proto
			case a.Addr != b.Addr:
				return a.Addr.Less(b.Addr)
			}
			return a.Port < b.Port
		})
		hs = hs[:c.ServiceHintCapacity()]
	}
	for _, h := range hs {
		if h.Fan == 0 {
			continue
		}
		// As16: IPv4 as ::ffff:a.b.c.d, as the programs keep it.
		k := flowauditEndpointKey{Addr: h.Addr.As16(), Port: h.Port, Proto: uint8(h.Proto)}
		if err := c.objs.ServiceHints.Update(&k, h.Fan, ebpf.UpdateAny); err != nil {
			return stored, fmt.Errorf("service hint %s %s/%d: %w", h.Addr, h.Proto, h.Port, err)
		}
		stored++
	}
	if stored > 0 {
		if err := c.objs.HintsLoaded.Set(uint32(1)); err != nil {
			return stored, fmt.Errorf("service hints: %w", err)
		}
	}
	return stored, nil
}
