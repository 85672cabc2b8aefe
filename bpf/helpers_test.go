package bpf

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

var (
	getenv     = os.Getenv
	executable = os.Executable
	environ    = os.Environ
)

// newPassProgram loads an XDP program that passes everything, named name,
// standing in for another tool's program.
func newPassProgram(name string) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
}

// setXDPNetlink attaches fd the pre-bpf_link way (call inside the netns).
func setXDPNetlink(iface string, fd int) error {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return err
	}
	return netlink.LinkSetXdpFdWithFlags(l, fd, 1<<2 /* XDP_FLAGS_DRV_MODE */)
}

// tcxCount counts tcx programs (ingress + egress) on the host's veth.
func tcxCount(t *testing.T, h *testenv.Host) int {
	t.Helper()
	n := 0
	err := h.Do(func() error {
		ifc, err := net.InterfaceByName(h.Iface)
		if err != nil {
			return err
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			r, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: at})
			if err != nil {
				return fmt.Errorf("query %s: %w", at, err)
			}
			n += len(r.Programs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// newTCPassProgram loads a TC program that lets everything through.
func newTCPassProgram(name string) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
}

// addBPFFilter adds a cls_bpf egress filter at priority 1, as another tool
// would (call inside the netns, clsact must exist).
func addBPFFilter(iface string, fd int, name string) error {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return err
	}
	return netlink.FilterAdd(&netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_EGRESS,
			Handle: 1, Protocol: 0x0003 /* ETH_P_ALL */, Priority: 1},
		Fd: fd, Name: name, DirectAction: true,
	})
}
