package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Hook selects the program BPF_PROG_TEST_RUN feeds a frame through.
type Hook int

const (
	HookXDP       Hook = iota // ingress, XDP program
	HookTCIngress             // ingress, TC program
	HookTCEgress              // egress, TC program
)

func (h Hook) String() string {
	return [...]string{"xdp", "tc-ingress", "tc-egress"}[h]
}

// Program returns the program behind a hook (for benchmarks).
func (c *Collector) Program(h Hook) *ebpf.Program {
	switch h {
	case HookTCIngress:
		return c.objs.FlowauditTcIngress
	case HookTCEgress:
		return c.objs.FlowauditTcEgress
	default:
		return c.objs.FlowauditXdp
	}
}

// Run feeds one Ethernet frame through a program with BPF_PROG_TEST_RUN and
// returns the program's verdict. The frame is not changed; ifindex is
// recorded in the flow key (0 unless a context is given).
func (c *Collector) Run(h Hook, frame []byte) (uint32, error) {
	ret, err := c.Program(h).Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		return 0, fmt.Errorf("test_run %s: %w", h, err)
	}
	return ret, nil
}
