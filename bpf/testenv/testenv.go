// Package testenv gives flowaudit's tests real kernels to run against:
// a gate that skips without root/BPF but fails in CI, and throwaway network
// namespaces joined by veth, cleaned up even when a test fails.
//
// Traffic in tests goes only to addresses inside these namespaces
// (192.0.2.0/24 and 2001:db8::/32, documentation ranges) or loopback.
//
// The namespaces are quiet: once NewPair returns, the kernel sends nothing
// on the veth pair on its own (no DAD, router solicitation, MLD report or
// gratuitous ARP), so every packet counted on it is one a test caused, plus
// the neighbour resolution that packet needed.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Required reports whether kernel tests must run rather than skip:
// CI=true or FLOWAUDIT_REQUIRE_BPF=1.
func Required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("FLOWAUDIT_REQUIRE_BPF") == "1"
}

var (
	bpfOnce sync.Once
	bpfErr  error
)

// probeBPF loads a two-instruction XDP program.
func probeBPF() error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock: %w", err)
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load probe program: %w", err)
	}
	return p.Close()
}

// RequireBPF skips the test when BPF programs cannot be loaded here (not
// root, no BPF), and fails it instead when Required.
func RequireBPF(tb testing.TB) {
	tb.Helper()
	bpfOnce.Do(func() { bpfErr = probeBPF() })
	if bpfErr == nil {
		return
	}
	if Required() {
		tb.Fatalf("BPF unavailable but required (CI=true or FLOWAUDIT_REQUIRE_BPF=1): %v", bpfErr)
	}
	tb.Skipf("BPF unavailable: %v", bpfErr)
}

// RequireNetns is RequireBPF plus the ip(8) tool for namespaces and veth.
func RequireNetns(tb testing.TB) {
	tb.Helper()
	RequireBPF(tb)
	if _, err := exec.LookPath("ip"); err != nil {
		if Required() {
			tb.Fatalf("ip(8) missing but kernel tests are required: %v", err)
		}
		tb.Skipf("ip(8) missing: %v", err)
	}
}

// RequireTool skips (or fails when Required) if a program is not on PATH.
func RequireTool(tb testing.TB, name string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if Required() {
			tb.Fatalf("%s missing but required in CI: %v", name, err)
		}
		tb.Skipf("%s missing: %v", name, err)
	}
}

// Host is one network namespace with one veth end.
type Host struct {
	Name  string // namespace name
	Iface string // its veth
	IPv4  netip.Addr
	IPv6  netip.Addr
	NS    netns.NsHandle
	tb    testing.TB
	nlMu  sync.Mutex
	nl    *netlink.Handle // a netlink socket inside the namespace
}

func randSuffix() string {
	b := make([]byte, 3)
	rand.Read(b) //nolint:errcheck // crypto/rand never fails on Linux
	return hex.EncodeToString(b)
}

// IP runs ip(8) with args and fails the test on error.
func IP(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NewPair creates two namespaces joined by a veth pair:
// a = 192.0.2.1 / 2001:db8::1, b = 192.0.2.2 / 2001:db8::2. Segmentation
// and receive offloads are off so every wire packet is one counted packet.
// Both namespaces are deleted at test cleanup, even after a failure.
//
// The pair is quiesced (see quietSysctls) before its links come up, and
// NewPair returns only once the kernel has sent the little it still sends
// on its own at link-up (one MLD report and its repeat per host, see
// waitSettled); from then on an idle pair carries no packet at all.
func NewPair(tb testing.TB) (a, b *Host) {
	tb.Helper()
	RequireNetns(tb)
	sfx := randSuffix()
	a = &Host{Name: "fa-a-" + sfx, Iface: "veth-a", IPv4: netip.MustParseAddr("192.0.2.1"), IPv6: netip.MustParseAddr("2001:db8::1"), tb: tb}
	b = &Host{Name: "fa-b-" + sfx, Iface: "veth-b", IPv4: netip.MustParseAddr("192.0.2.2"), IPv6: netip.MustParseAddr("2001:db8::2"), tb: tb}
	for _, h := range []*Host{a, b} {
		IP(tb, "netns", "add", h.Name)
		name := h.Name
		tb.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() }) //nolint:errcheck
	}
	tmpA, tmpB := "fa"+sfx+"a", "fa"+sfx+"b"
	IP(tb, "link", "add", tmpA, "type", "veth", "peer", "name", tmpB)
	IP(tb, "link", "set", tmpA, "netns", a.Name, "name", a.Iface)
	IP(tb, "link", "set", tmpB, "netns", b.Name, "name", b.Iface)
	for _, h := range []*Host{a, b} {
		h.Exec("ip", "link", "set", "lo", "up")
		h.Exec(append([]string{"sysctl", "-qw"}, quietSysctls(h.Iface)...)...)
		h.Exec("ip", "addr", "add", h.IPv4.String()+"/24", "dev", h.Iface)
		h.Exec("ip", "addr", "add", h.IPv6.String()+"/64", "dev", h.Iface, "nodad")
		if _, err := exec.LookPath("ethtool"); err == nil {
			h.Exec("ethtool", "-K", h.Iface, "tso", "off", "gso", "off", "gro", "off")
		}
		ns, err := netns.GetFromName(h.Name)
		if err != nil {
			tb.Fatalf("open netns %s: %v", h.Name, err)
		}
		h.NS = ns
		tb.Cleanup(func() { ns.Close() })
		nl, err := netlink.NewHandleAt(ns)
		if err != nil {
			tb.Fatalf("netlink socket in netns %s: %v", h.Name, err)
		}
		h.nl = nl
		tb.Cleanup(nl.Close)
	}
	for _, h := range []*Host{a, b} {
		h.Exec("ip", "link", "set", h.Iface, "up")
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, h := range []*Host{a, b} {
		h.waitSettled(deadline)
	}
	return a, b
}

// quietSysctls are set on iface while it is still down. Each one removes
// something the kernel would otherwise send on the link by itself, at
// times no test controls:
//   - addr_gen_mode=1: no link-local address, hence no DAD probe for it and
//     no MLD reports or router solicitations sourced from it (the test
//     addresses are global and need none);
//   - accept_dad=0, dad_transmits=0: no duplicate address detection (the
//     addresses are also added with nodad);
//   - accept_ra=0, router_solicitations=0, forwarding=0: no router
//     solicitations, no router role (no ff02::2 membership to report);
//   - force_mld_version=1, mldv1_unsolicited_report_interval=0: the one
//     MLD membership left (the solicited-node group of the global address)
//     is reported at link-up and repeated at once, by a per-group timer the
//     kernel shows in /proc/net/igmp6, so waitSettled can see it has run.
//     MLDv2's repeats would come at random within 1 s from an interface
//     timer that is visible nowhere;
//   - arp_notify=0: no gratuitous ARP (new namespaces inherit the IPv4
//     settings of the host's).
//
// IPv4 joins only 224.0.0.1, which IGMP never reports.
func quietSysctls(iface string) []string {
	v6 := "net.ipv6.conf." + iface + "."
	return []string{
		"net.ipv6.conf.all.forwarding=0",
		v6 + "forwarding=0",
		v6 + "addr_gen_mode=1",
		v6 + "accept_dad=0",
		v6 + "dad_transmits=0",
		v6 + "accept_ra=0",
		v6 + "router_solicitations=0",
		v6 + "force_mld_version=1",
		v6 + "mldv1_unsolicited_report_interval=0",
		"net.ipv4.conf." + iface + ".arp_notify=0",
	}
}

// MLD group flags as /proc/net/igmp6 shows them (include/net/if_inet6.h).
const (
	mafTimerRunning = 0x01 // a report is still scheduled
	mafLastReporter = 0x02 // this host has sent a report for the group
	mafNoReport     = 0x08 // never reported (all-nodes, interface-local)
)

// waitSettled returns once the kernel has finished sending what link-up
// makes it send on h's veth: the link is operationally up (link watch has
// run, so IPv6 has seen the link become ready and will not re-announce
// it), and every reportable multicast group on it, at least the
// solicited-node group of h.IPv6, has been reported with no report still
// scheduled. This is kernel state, not a pause: nothing else is pending.
// (The two hosts' groups differ, ff02::1:ff00:1 and :2, so neither
// suppresses the other's report, which would leave its flag unset.)
func (h *Host) waitSettled(deadline time.Time) {
	h.tb.Helper()
	solicited := solicitedNode(h.IPv6)
	for {
		oper, groups, err := h.linkState(solicited)
		if err != nil {
			h.tb.Fatalf("[%s] %v", h.Name, err)
		}
		if oper == netlink.OperUp && groups == "" {
			return
		}
		if time.Now().After(deadline) {
			h.tb.Fatalf("[%s] %s did not settle after link-up: operstate %s; MLD groups pending: %s", h.Name, h.Iface, oper, groups)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// linkState returns the operational state of h's veth and a description
// of its multicast groups still to be reported ("" when none is, and the
// solicited-node group is among the reported ones).
func (h *Host) linkState(solicited netip.Addr) (netlink.LinkOperState, string, error) {
	l, err := h.link()
	if err != nil {
		return 0, "", err
	}
	var igmp6 []byte
	// /proc/thread-self: /proc/net would show the namespace of the
	// process's main thread, not of the thread Do runs in.
	if err := h.Do(func() (err error) { igmp6, err = os.ReadFile("/proc/thread-self/net/igmp6"); return }); err != nil {
		return 0, "", err
	}
	var pending []string
	seen := false
	for _, line := range strings.Split(string(igmp6), "\n") {
		// ifindex name group users flags timer
		f := strings.Fields(line)
		if len(f) != 6 || f[1] != h.Iface {
			continue
		}
		flags, err := strconv.ParseUint(f[4], 16, 32)
		if err != nil {
			return 0, "", fmt.Errorf("/proc/net/igmp6 line %q: flags: %w", line, err)
		}
		if flags&mafNoReport != 0 {
			continue
		}
		if group, err := hex.DecodeString(f[2]); err == nil && len(group) == 16 && netip.AddrFrom16([16]byte(group)) == solicited {
			seen = true
		}
		if flags&mafTimerRunning != 0 || flags&mafLastReporter == 0 {
			pending = append(pending, f[2]+" flags "+f[4])
		}
	}
	if !seen {
		pending = append(pending, "solicited-node group "+solicited.String()+" not joined yet")
	}
	return l.Attrs().OperState, strings.Join(pending, ", "), nil
}

// solicitedNode is the solicited-node multicast group of an IPv6 address
// (RFC 4291 2.7.1): ff02::1:ff00:0/104 plus the address's low 24 bits.
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	g := [16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]}
	return netip.AddrFrom16(g)
}

func (h *Host) link() (netlink.Link, error) {
	h.nlMu.Lock()
	defer h.nlMu.Unlock()
	l, err := h.nl.LinkByName(h.Iface)
	if err != nil {
		return nil, fmt.Errorf("netlink: link %s in %s: %w", h.Iface, h.Name, err)
	}
	return l, nil
}

// Exec runs a command inside the namespace and fails the test on error.
func (h *Host) Exec(args ...string) string {
	h.tb.Helper()
	out, err := h.Command(args...).CombinedOutput()
	if err != nil {
		h.tb.Fatalf("[%s] %s: %v\n%s", h.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Command returns an exec.Cmd that runs inside the namespace.
func (h *Host) Command(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.Name}, args...)...)
}

// Do runs fn on an OS thread switched into the namespace. Sockets created
// by fn stay in the namespace after Do returns.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is not unlocked: it is discarded when this goroutine
		// ends, so no other goroutine ever runs in the namespace.
		runtime.LockOSThread()
		if err := netns.Set(h.NS); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", h.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// IfaceCounters are the kernel's packet counters of the host's veth.
type IfaceCounters struct {
	RxPackets, TxPackets, RxDropped, TxDropped uint64
}

// Counters reads the veth's counters with one RTM_GETLINK on the host's
// netlink socket: the four values come from one dev_get_stats call, so
// they are consistent with each other.
func (h *Host) Counters() IfaceCounters {
	h.tb.Helper()
	l, err := h.link()
	if err != nil {
		h.tb.Fatal(err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		h.tb.Fatalf("netlink: no statistics for %s in %s", h.Iface, h.Name)
	}
	return IfaceCounters{RxPackets: s.RxPackets, TxPackets: s.TxPackets, RxDropped: s.RxDropped, TxDropped: s.TxDropped}
}

// PairCounters reads the counters of both ends back to back, a's first.
func PairCounters(a, b *Host) (IfaceCounters, IfaceCounters) {
	a.tb.Helper()
	return a.Counters(), b.Counters()
}
