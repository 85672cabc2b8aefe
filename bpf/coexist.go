package bpf

// Coexistence with the other users of the same hooks. An XDP program that
// --replace-xdp detached is put back when flowaudit detaches; while it is
// off the interface it is pinned in a bpffs, so that a run killed by
// SIGKILL (which cannot clean up) does not free it: the next Attach on that
// interface puts it back. clsact filters carry their owner's pid; a later
// run removes those whose owner is gone.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where a program replaced by --replace-xdp is pinned
// while flowaudit runs (AttachOptions.PinDir).
const DefaultPinDir = "/sys/fs/bpf/flowaudit"

// IFLA_XDP_ATTACHED values (linux/if_link.h).
const (
	xdpAttachedDrv   = 1
	xdpAttachedSkb   = 2
	xdpAttachedHw    = 3
	xdpAttachedMulti = 4
)

// xdpProg is the XDP program attached to an interface.
type xdpProg struct {
	id   ebpf.ProgramID
	name string
	mode uint32 // xdpAttached*
}

func (x xdpProg) String() string {
	if x.name == "" {
		return fmt.Sprintf("program id %d (%s mode)", x.id, xdpModeName(x.mode))
	}
	return fmt.Sprintf("%q (program id %d, %s mode)", x.name, x.id, xdpModeName(x.mode))
}

// attachedXDP describes the XDP program on l, id 0 if there is none.
func attachedXDP(l netlink.Link) xdpProg {
	x := l.Attrs().Xdp
	if x == nil || !x.Attached || x.ProgId == 0 {
		return xdpProg{}
	}
	xp := xdpProg{id: ebpf.ProgramID(x.ProgId), mode: x.AttachMode}
	if p, err := ebpf.NewProgramFromID(xp.id); err == nil {
		if info, err := p.Info(); err == nil {
			xp.name = info.Name
		}
		p.Close()
	}
	return xp
}

func xdpModeName(mode uint32) string {
	switch mode {
	case xdpAttachedDrv:
		return "native"
	case xdpAttachedSkb:
		return "generic"
	case xdpAttachedHw:
		return "offload"
	case xdpAttachedMulti:
		return "several"
	}
	return fmt.Sprintf("unknown %d", mode)
}

// xdpModeFlags are the XDP_FLAGS that attach (or detach) in mode.
func xdpModeFlags(mode uint32) int {
	if mode == xdpAttachedSkb {
		return unix.XDP_FLAGS_SKB_MODE
	}
	return unix.XDP_FLAGS_DRV_MODE
}

// ipXDPKeyword is ip-link(8)'s name of the mode, for the hints in errors.
func ipXDPKeyword(mode uint32) string {
	if mode == xdpAttachedSkb {
		return "xdpgeneric"
	}
	return "xdpdrv"
}

// replacedXDP is another program's XDP program that flowaudit detached and
// owes back.
type replacedXDP struct {
	xdpProg
	prog *ebpf.Program // our reference: keeps the program alive
	pin  string        // bpffs path, "" when it could not be pinned
}

func (r *replacedXDP) unpin() error {
	if r.pin == "" {
		return nil
	}
	err := os.Remove(r.pin)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	r.pin = ""
	return err
}

// replaceXDP takes a reference to the program on l, pins it, and detaches
// it. Runs inside the collector's namespace.
func (c *Collector) replaceXDP(a *Attachment, l netlink.Link, cur xdpProg, dir string) (*replacedXDP, error) {
	if cur.mode != xdpAttachedDrv && cur.mode != xdpAttachedSkb {
		return nil, fmt.Errorf("%w: %s; flowaudit replaces only a program attached in native or generic mode", ErrXDPInUse, cur)
	}
	p, err := ebpf.NewProgramFromID(cur.id)
	if err != nil {
		return nil, fmt.Errorf("%w: %s; no reference to it could be kept to put it back later, not replacing it: %v", ErrXDPInUse, cur, err)
	}
	r := &replacedXDP{xdpProg: cur, prog: p}
	if err := c.pinReplaced(a, r, dir); err != nil {
		c.log.Warn("the replaced XDP program is not pinned: if flowaudit is killed with SIGKILL, it is lost and its owner must attach it again",
			zap.String("iface", a.Iface), zap.String("xdp", cur.String()), zap.Error(err))
	}
	if err := netlink.LinkSetXdpFdWithFlags(l, -1, xdpModeFlags(cur.mode)); err != nil {
		r.unpin() //nolint:errcheck // best effort: the program stays attached
		p.Close()
		return nil, fmt.Errorf("%w: %s; could not detach it (a bpf_link owns it?): %v", ErrXDPInUse, cur, err)
	}
	fields := []zap.Field{zap.String("iface", a.Iface), zap.String("xdp", cur.String())}
	if r.pin != "" {
		fields = append(fields, zap.String("pinned", r.pin))
	}
	c.log.Warn("detached the existing XDP program as asked; flowaudit puts it back when it stops", fields...)
	return r, nil
}

// restoreXDP puts the replaced program back, in the mode it had, after our
// own XDP link is gone. A program someone else attached meanwhile is never
// overwritten.
func (a *Attachment) restoreXDP() error {
	r := a.replaced
	a.replaced = nil
	defer r.prog.Close()
	gone := false
	err := a.inNS(func() error {
		l, err := netlink.LinkByIndex(a.Index)
		if err != nil {
			gone = isLinkNotFound(err)
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, r.prog.FD(), xdpModeFlags(r.mode)|unix.XDP_FLAGS_UPDATE_IF_NOEXIST)
	})
	if gone {
		r.unpin() //nolint:errcheck // nothing left to put it back on
		return fmt.Errorf("put back XDP program %s on %s (index %d): the interface is gone: %w", r, a.Iface, a.Index, ErrInterfaceNotFound)
	}
	if err != nil {
		hint := ""
		if r.pin != "" {
			hint = fmt.Sprintf(" (it stays pinned: `ip link set dev %s %s pinned %s` puts it back)", a.Iface, ipXDPKeyword(r.mode), r.pin)
		}
		return fmt.Errorf("put back XDP program %s on %s: %w%s", r, a.Iface, err, hint)
	}
	if err := r.unpin(); err != nil {
		a.log.Warn("could not remove the pin of the restored XDP program", zap.String("iface", a.Iface), zap.Error(err))
	}
	a.log.Info("put back the replaced XDP program", zap.String("iface", a.Iface), zap.String("xdp", r.String()))
	return nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// --- pins ---

// owner identifies a process: its pid and its start time (clock ticks
// after boot), so a recycled pid is not mistaken for the owner.
type owner struct {
	pid   int
	start uint64
}

func selfOwner() (owner, error) {
	pid := os.Getpid()
	st, err := procStart(pid)
	return owner{pid, st}, err
}

func (o owner) alive() bool {
	st, err := procStart(o.pid)
	return err == nil && st == o.start
}

// procStart reads field 22 (starttime) of /proc/<pid>/stat.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // comm may hold spaces and parentheses
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// nsInode identifies a network namespace; interface indexes are only
// unique within one.
func nsInode(ns netns.NsHandle) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return 0, fmt.Errorf("stat network namespace: %w", err)
	}
	return st.Ino, nil
}

// xdpPin is the name of a pinned replaced program: everything needed to
// put it back, since a bpffs holds no other metadata.
//
//	replaced-xdp-<netns inode>-<ifindex>-<native|generic>-<pid>-<start>-<ifname>
//
// bpffs refuses '.' in names: dots of the interface name become '_'.
type xdpPin struct {
	netns   uint64
	ifindex int
	mode    uint32
	owner   owner
	ifname  string
}

const pinPrefix = "replaced-xdp-"

func pinIfname(ifname string) string { return strings.ReplaceAll(ifname, ".", "_") }

func (p xdpPin) name() string {
	return fmt.Sprintf("%s%d-%d-%s-%d-%d-%s", pinPrefix, p.netns, p.ifindex, xdpModeName(p.mode),
		p.owner.pid, p.owner.start, pinIfname(p.ifname))
}

func parseXDPPin(name string) (xdpPin, bool) {
	rest, ok := strings.CutPrefix(name, pinPrefix)
	if !ok {
		return xdpPin{}, false
	}
	f := strings.SplitN(rest, "-", 6)
	if len(f) != 6 || f[5] == "" {
		return xdpPin{}, false
	}
	var p xdpPin
	var err [4]error
	p.netns, err[0] = strconv.ParseUint(f[0], 10, 64)
	p.ifindex, err[1] = strconv.Atoi(f[1])
	p.owner.pid, err[2] = strconv.Atoi(f[3])
	p.owner.start, err[3] = strconv.ParseUint(f[4], 10, 64)
	if errors.Join(err[:]...) != nil {
		return xdpPin{}, false
	}
	switch f[2] {
	case "native":
		p.mode = xdpAttachedDrv
	case "generic":
		p.mode = xdpAttachedSkb
	default:
		return xdpPin{}, false
	}
	p.ifname = f[5]
	return p, true
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC
}

// pinDir makes sure dir exists on a bpffs; it never mounts one.
func pinDir(dir string) error {
	if isBPFFS(dir) {
		return nil
	}
	if parent := filepath.Dir(dir); !isBPFFS(parent) {
		return fmt.Errorf("no bpffs mounted at %s", parent)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

func pinDirOrDefault(dir string) string {
	if dir == "" {
		return DefaultPinDir
	}
	return dir
}

func (c *Collector) pinReplaced(a *Attachment, r *replacedXDP, dir string) error {
	dir = pinDirOrDefault(dir)
	if err := pinDir(dir); err != nil {
		return err
	}
	me, err := selfOwner()
	if err != nil {
		return err
	}
	path := filepath.Join(dir, xdpPin{netns: a.netns, ifindex: a.Index, mode: r.mode, owner: me, ifname: a.Iface}.name())
	if err := r.prog.Pin(path); err != nil {
		return err
	}
	r.pin = path
	return nil
}

// recoverPinned handles pins left in dir by flowaudit runs that are gone
// (killed by SIGKILL, or their restore failed): a program pinned for this
// interface is put back when the interface has no XDP program; pins of
// interfaces of this namespace that no longer exist are dropped. Pins of
// live runs and of other namespaces are left alone. Runs inside the
// collector's namespace.
func (c *Collector) recoverPinned(a *Attachment, dir string) {
	dir = pinDirOrDefault(dir)
	if !isBPFFS(dir) {
		return
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		c.log.Warn("cannot list pinned replaced XDP programs", zap.String("dir", dir), zap.Error(err))
		return
	}
	for _, e := range ents {
		p, ok := parseXDPPin(e.Name())
		if !ok || p.netns != a.netns || p.owner.alive() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		l, err := netlink.LinkByIndex(p.ifindex)
		if p.ifindex != a.Index {
			if err != nil && isLinkNotFound(err) {
				if err := os.Remove(path); err == nil {
					c.log.Warn("dropped a pinned XDP program replaced by a flowaudit that was killed: its interface is gone",
						zap.String("pin", path), zap.Int("former_pid", p.owner.pid))
				}
			}
			continue
		}
		if err != nil {
			c.log.Warn("cannot look up the interface of a pinned replaced XDP program", zap.String("pin", path), zap.Error(err))
			continue
		}
		if p.ifname != pinIfname(a.Iface) {
			c.log.Warn("a pinned replaced XDP program names another interface at this index; not putting it back",
				zap.String("iface", a.Iface), zap.String("pin", path))
			continue
		}
		c.restorePinned(a, l, p, path)
	}
}

func (c *Collector) restorePinned(a *Attachment, l netlink.Link, p xdpPin, path string) {
	prog, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		c.log.Warn("cannot open a pinned replaced XDP program", zap.String("pin", path), zap.Error(err))
		return
	}
	defer prog.Close()
	x := xdpProg{mode: p.mode}
	if info, err := prog.Info(); err == nil {
		x.id, _ = info.ID()
		x.name = info.Name
	}
	fields := []zap.Field{zap.String("iface", a.Iface), zap.String("xdp", x.String()), zap.Int("former_pid", p.owner.pid)}
	switch cur := attachedXDP(l); {
	case cur.id != 0 && cur.id == x.id:
		os.Remove(path) //nolint:errcheck // someone already put it back
		c.log.Info("a pinned replaced XDP program is already back on its interface; pin removed", fields...)
	case cur.id != 0:
		c.log.Warn("not putting back the XDP program a killed flowaudit had replaced: the interface runs another one now; remove the pin to drop it",
			append(fields, zap.String("now", cur.String()), zap.String("pin", path))...)
	default:
		if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), xdpModeFlags(p.mode)|unix.XDP_FLAGS_UPDATE_IF_NOEXIST); err != nil {
			c.log.Warn("could not put back the XDP program a killed flowaudit had replaced", append(fields, zap.String("pin", path), zap.Error(err))...)
			return
		}
		os.Remove(path) //nolint:errcheck // it is attached again: the attachment holds it
		c.log.Warn("put back the XDP program that a killed flowaudit had replaced", fields...)
	}
}

// --- clsact filters ---

// filterName names our cls_bpf filters "flowaudit:<pid>"; versions before
// it used "flowaudit".
func filterName(pid int) string { return "flowaudit:" + strconv.Itoa(pid) }

// parseFilterName reports whether name is one of our filters, and the pid
// it names (0: an older version's filter).
func parseFilterName(name string) (pid int, ok bool) {
	if name == "flowaudit" {
		return 0, true
	}
	s, ok := strings.CutPrefix(name, "flowaudit:")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(s)
	return pid, err == nil && pid > 0
}

var clsactParents = []struct {
	parent uint32
	dir    string
}{{netlink.HANDLE_MIN_INGRESS, "ingress"}, {netlink.HANDLE_MIN_EGRESS, "egress"}}

// cleanStaleFilters removes flowaudit cls_bpf filters whose owner is gone
// from the interface's clsact qdisc. The owner test is exact when every
// process's descriptors can be read (root, CAP_SYS_PTRACE): a flowaudit
// holds its TC program open as long as it runs, so a filter whose program
// no process holds is stale, whatever pid its name claims (pid namespaces
// and recycled pids cannot fool it). A flowaudit without that privilege
// (the systemd service: docs/DEPLOY.md) cannot read other users'
// descriptors; it then goes by the pid in the filter's name: the filter is
// left alone while that process exists and cannot be looked into, and
// removed when it is gone or readable and not holding it. Other filters
// and the qdisc are never touched.
func (c *Collector) cleanStaleFilters(a *Attachment, l netlink.Link) {
	for _, p := range clsactParents {
		filters, err := c.nl.FilterList(l, p.parent)
		if err != nil {
			c.log.Debug("cannot list clsact filters", zap.String("iface", a.Iface), zap.String("direction", p.dir), zap.Error(err))
			continue
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			if !ok || bf.Priority != legacyPrio {
				continue
			}
			pid, ok := parseFilterName(bf.Name)
			if !ok {
				continue
			}
			fields := []zap.Field{zap.String("iface", a.Iface), zap.String("direction", p.dir), zap.Uint16("prio", bf.Priority),
				zap.String("handle", fmt.Sprintf("0x%x", bf.Handle)), zap.String("filter", bf.Name)}
			holder, hidden := progHolder(ebpf.ProgramID(bf.Id))
			if holder != 0 {
				c.log.Warn("another flowaudit is counting on this interface through clsact; leaving its filter", append(fields, zap.Int("pid", holder))...)
				continue
			}
			if hidden[pid] || (pid == 0 && len(hidden) > 0) {
				c.log.Warn("cannot tell whether the flowaudit that added this clsact filter still runs (its descriptors are not readable without CAP_SYS_PTRACE); leaving its filter",
					append(fields, zap.Int("pid", pid))...)
				continue
			}
			if err := c.nl.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
				c.log.Warn("could not remove a clsact filter left by a flowaudit that was killed", append(fields, zap.Error(err))...)
				continue
			}
			former := zap.Int("former_pid", pid)
			if pid == 0 {
				former = zap.String("former_pid", "unknown (older flowaudit)")
			}
			c.log.Warn("removed a clsact filter left by a flowaudit that was killed", append(fields, former)...)
		}
	}
}

// progHolder returns the pid of a process holding BPF program id open
// through a file descriptor, 0 if none does, and the processes whose
// descriptors could not be read (another user's, without CAP_SYS_PTRACE):
// any of them may hold it.
func progHolder(id ebpf.ProgramID) (int, map[int]bool) {
	if id == 0 {
		return 0, nil
	}
	want := fmt.Sprintf("prog_id:\t%d\n", id)
	hidden := map[int]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, pe := range procs {
		pid, err := strconv.Atoi(pe.Name())
		if err != nil {
			continue
		}
		dir := "/proc/" + pe.Name()
		fds, err := os.ReadDir(dir + "/fd")
		if errors.Is(err, os.ErrPermission) {
			hidden[pid] = true
			continue
		}
		for _, fe := range fds {
			if t, err := os.Readlink(dir + "/fd/" + fe.Name()); err != nil || t != "anon_inode:bpf-prog" {
				continue
			}
			b, err := os.ReadFile(dir + "/fdinfo/" + fe.Name())
			if err == nil && strings.Contains(string(b), want) {
				return pid, nil
			}
		}
	}
	return 0, hidden
}
