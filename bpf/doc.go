// Package bpf loads flowaudit's eBPF programs, attaches them to network
// interfaces and reads what they counted.
//
// Data flows one way: packets → BPF maps (this package) → snapshot.Snapshot
// → audit. The programs (flowaudit.c, parse.h) never drop or modify a
// packet: XDP returns XDP_PASS, TC returns TCX_NEXT.
//
// A typical live use:
//
//	c, err := bpf.Open(bpf.Options{Logger: log})
//	defer c.Close()
//	_, err = c.Attach("eth0", bpf.AttachOptions{})
//	... wait ...
//	snap, err := c.Snapshot()
//
// Programs are attached with bpf_link objects (XDP link, tcx link), so they
// detach by themselves when the process exits, even after SIGKILL. Only the
// legacy clsact fallback (kernels before 6.6) cannot do that; Close removes
// its filter and leaves the qdisc alone.
package bpf
