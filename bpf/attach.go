package bpf

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Ingress attach modes.
const (
	IngressAuto       = ""            // XDP native, then XDP generic, then TC
	IngressXDPNative  = "xdp-native"  // driver mode only
	IngressXDPGeneric = "xdp-generic" // skb mode only
	IngressTC         = "tc"          // TC ingress (tcx, then clsact)
)

// TC attach modes, for egress and for ingress when XDP is not used.
const (
	TCAuto   = ""       // tcx, then clsact
	TCX      = "tcx"    // tcx link only (kernel ≥ 6.6)
	TCClsact = "clsact" // legacy cls_bpf filter on a clsact qdisc
)

// AttachOptions choose how to attach to one interface.
type AttachOptions struct {
	Ingress string
	TC      string
	// ReplaceXDP allows detaching another program's netlink-attached XDP
	// program. Without it, Attach refuses and names that program. The
	// replaced program is put back, in the mode it had, when flowaudit
	// detaches (Detach, Close, or an Attach that fails half-way).
	ReplaceXDP bool
	// PinDir is a directory on a bpffs where a replaced program is pinned
	// until it is put back, so that the next Attach on the interface can
	// put it back if this process is killed by SIGKILL. "" means
	// DefaultPinDir. Without a bpffs the program is replaced anyway, with a
	// warning.
	PinDir string
}

// Attachment is flowaudit attached to one interface.
type Attachment struct {
	Iface string
	Index int
	// Ingress is the mode used: "xdp-native", "xdp-generic", "tcx" or "clsact".
	Ingress string
	// Egress is "tcx" or "clsact".
	Egress string

	links    []link.Link
	filters  []netlink.Filter
	replaced *replacedXDP // another program's XDP program, owed back
	nl       *netlink.Handle
	netns    uint64 // inode of the collector's network namespace
	inNS     func(func() error) error
	log      *zap.Logger
}

// legacy filter identity: our own priority and handle on clsact.
const (
	legacyPrio   = 0xfa17 // arbitrary, recognisable in `tc filter show`
	legacyHandle = 0xfa
)

// inNS runs fn on an OS thread in the collector's network namespace:
// interface indexes in bpf_link_create and netlink are per namespace.
func (c *Collector) inNS(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get network namespace: %w", err)
	}
	defer cur.Close()
	if !cur.Equal(c.ns) {
		if err := netns.Set(c.ns); err != nil {
			return fmt.Errorf("enter network namespace: %w", err)
		}
		defer netns.Set(cur) //nolint:errcheck // restoring our own namespace
	}
	return fn()
}

// Attach attaches the ingress and egress programs to iface.
func (c *Collector) Attach(iface string, opts AttachOptions) (*Attachment, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	nlLink, err := c.nl.LinkByName(iface)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("attach %s: %w", iface, ErrInterfaceNotFound)
		}
		return nil, fmt.Errorf("attach %s: look up interface: %w", iface, err)
	}
	idx := nlLink.Attrs().Index
	if _, ok := c.attached[idx]; ok {
		return nil, fmt.Errorf("attach %s: %w", iface, ErrAlreadyAttached)
	}
	ino, err := nsInode(c.ns)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", iface, err)
	}
	a := &Attachment{Iface: iface, Index: idx, nl: c.nl, netns: ino, inNS: c.inNS, log: c.log}
	err = c.inNS(func() error {
		// What killed runs left behind, before looking at the hooks.
		c.recoverPinned(a, opts.PinDir)
		c.cleanStaleFilters(a, nlLink)
		l, err := netlink.LinkByIndex(idx) // XDP state after any restore
		if err != nil {
			return fmt.Errorf("look up interface: %w", err)
		}
		if err := c.attachIngress(a, l, opts); err != nil {
			return err
		}
		return c.attachEgress(a, opts.TC)
	})
	if err != nil {
		a.detach()
		return nil, fmt.Errorf("attach %s: %w", iface, err)
	}
	c.attached[idx] = a
	c.log.Info("attached", zap.String("iface", iface), zap.Int("ifindex", idx),
		zap.String("ingress", a.Ingress), zap.String("egress", a.Egress))
	return a, nil
}

// Attachments returns the interfaces currently attached.
func (c *Collector) Attachments() []*Attachment {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Attachment, 0, len(c.attached))
	for _, a := range c.attached {
		out = append(out, a)
	}
	return out
}

// Detach removes flowaudit from one interface.
func (c *Collector) Detach(iface string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for idx, a := range c.attached {
		if a.Iface == iface {
			delete(c.attached, idx)
			return a.detach()
		}
	}
	return fmt.Errorf("detach %s: %w", iface, ErrInterfaceNotFound)
}

func (c *Collector) attachIngress(a *Attachment, l netlink.Link, opts AttachOptions) error {
	mode := opts.Ingress
	if mode != IngressTC {
		if cur := attachedXDP(l); cur.id != 0 {
			if !opts.ReplaceXDP {
				if mode == IngressAuto {
					// Leave the other program alone and count at TC ingress instead.
					c.log.Warn("another XDP program is attached; counting ingress at TC instead (use --replace-xdp to replace it)",
						zap.String("iface", a.Iface), zap.String("xdp", cur.String()))
					return c.attachTC(a, ebpf.AttachTCXIngress, opts.TC, &a.Ingress)
				}
				return fmt.Errorf("%w: %s; not replacing it (ask with --replace-xdp, or use --ingress tc)", ErrXDPInUse, cur)
			}
			r, err := c.replaceXDP(a, l, cur, opts.PinDir) // runs inside inNS
			if err != nil {
				return err
			}
			a.replaced = r
		}
	}
	try := func(flags link.XDPAttachFlags, name string) error {
		lk, err := link.AttachXDP(link.XDPOptions{Program: c.objs.FlowauditXdp, Interface: a.Index, Flags: flags})
		if err != nil {
			return err
		}
		a.links = append(a.links, lk)
		a.Ingress = name
		return nil
	}
	switch mode {
	case IngressXDPNative:
		return wrapPerm(try(link.XDPDriverMode, IngressXDPNative), "attach XDP (native)")
	case IngressXDPGeneric:
		return wrapPerm(try(link.XDPGenericMode, IngressXDPGeneric), "attach XDP (generic)")
	case IngressTC:
		return c.attachTC(a, ebpf.AttachTCXIngress, opts.TC, &a.Ingress)
	case IngressAuto:
		errNative := try(link.XDPDriverMode, IngressXDPNative)
		if errNative == nil {
			return nil
		}
		if errors.Is(errNative, unix.EPERM) {
			return fmt.Errorf("attach XDP: %w", ErrPermission)
		}
		c.log.Warn("native XDP unavailable, trying generic mode", zap.String("iface", a.Iface), zap.Error(errNative))
		errGeneric := try(link.XDPGenericMode, IngressXDPGeneric)
		if errGeneric == nil {
			return nil
		}
		c.log.Warn("generic XDP unavailable, counting ingress at TC", zap.String("iface", a.Iface), zap.Error(errGeneric))
		return c.attachTC(a, ebpf.AttachTCXIngress, opts.TC, &a.Ingress)
	default:
		return fmt.Errorf("unknown ingress mode %q (want xdp-native, xdp-generic or tc)", mode)
	}
}

func (c *Collector) attachEgress(a *Attachment, mode string) error {
	switch mode {
	case TCAuto, TCX, TCClsact:
	default:
		return fmt.Errorf("unknown TC mode %q (want tcx or clsact)", mode)
	}
	return c.attachTC(a, ebpf.AttachTCXEgress, mode, &a.Egress)
}

// attachTC attaches a TC program with tcx, falling back to a cls_bpf filter
// on clsact when tcx is missing (kernel < 6.6) or when mode asks for it.
func (c *Collector) attachTC(a *Attachment, at ebpf.AttachType, mode string, used *string) error {
	prog := c.objs.FlowauditTcEgress
	if at == ebpf.AttachTCXIngress {
		prog = c.objs.FlowauditTcIngress
	}
	if mode != TCClsact {
		lk, err := link.AttachTCX(link.TCXOptions{Interface: a.Index, Program: prog, Attach: at})
		if err == nil {
			a.links = append(a.links, lk)
			*used = TCX
			return nil
		}
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("attach tcx: %w", ErrPermission)
		}
		if mode == TCX {
			return fmt.Errorf("attach tcx: %w", err)
		}
		c.log.Warn("tcx unavailable, falling back to clsact + cls_bpf (left behind if flowaudit is killed; the next run removes it)",
			zap.String("iface", a.Iface), zap.Error(err))
	}
	if err := c.attachClsact(a, prog, at == ebpf.AttachTCXIngress); err != nil {
		return err
	}
	*used = TCClsact
	return nil
}

func (c *Collector) attachClsact(a *Attachment, prog *ebpf.Program, ingress bool) error {
	// Add clsact only if missing; an existing qdisc (and the filters of
	// other tools on it) is never replaced or deleted.
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: a.Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := c.nl.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return wrapPerm(err, "add clsact qdisc")
	}
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	if ingress {
		parent = netlink.HANDLE_MIN_INGRESS
	}
	// Another live flowaudit may hold our priority: take the next handle.
	handle := uint32(legacyHandle)
	existing, err := c.nl.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: a.Index}}, parent)
	if err != nil {
		return wrapPerm(err, "list clsact filters")
	}
	for used := true; used; {
		used = false
		for _, f := range existing {
			if at := f.Attrs(); at.Priority == legacyPrio && at.Handle == handle {
				used, handle = true, handle+1
			}
		}
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: a.Index,
			Parent:    parent,
			Handle:    handle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  legacyPrio,
		},
		Fd:           prog.FD(),
		Name:         filterName(os.Getpid()), // lets a later run tell whether we are alive
		DirectAction: true,
	}
	if err := c.nl.FilterAdd(f); err != nil {
		return wrapPerm(err, "add cls_bpf filter")
	}
	a.filters = append(a.filters, f)
	return nil
}

func wrapPerm(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%s: %w", what, ErrPermission)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (a *Attachment) detach() error {
	var errs []error
	for _, l := range a.links {
		errs = append(errs, l.Close())
	}
	a.links = nil
	if a.replaced != nil { // our XDP link is gone: the other program can go back
		errs = append(errs, a.restoreXDP())
	}
	for _, f := range a.filters {
		if err := a.nl.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("remove cls_bpf filter from %s: %w", a.Iface, err))
		}
	}
	a.filters = nil
	return errors.Join(errs...)
}
