// Package testenv gives flowaudit's tests real kernels to run against:
// a gate that skips without root/BPF but fails in CI, and throwaway network
// namespaces joined by veth, cleaned up even when a test fails.
//
// Traffic in tests goes only to addresses inside these namespaces
// (192.0.2.0/24 and 2001:db8::/32, documentation ranges) or loopback.
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
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
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
		h.Exec("ip", "addr", "add", h.IPv4.String()+"/24", "dev", h.Iface)
		h.Exec("ip", "addr", "add", h.IPv6.String()+"/64", "dev", h.Iface, "nodad")
		h.Exec("sysctl", "-qw", "net.ipv6.conf."+h.Iface+".accept_ra=0", "net.ipv6.conf.all.forwarding=0")
		if _, err := exec.LookPath("ethtool"); err == nil {
			h.Exec("ethtool", "-K", h.Iface, "tso", "off", "gso", "off", "gro", "off")
		}
		h.Exec("ip", "link", "set", h.Iface, "up")
		ns, err := netns.GetFromName(h.Name)
		if err != nil {
			tb.Fatalf("open netns %s: %v", h.Name, err)
		}
		h.NS = ns
		tb.Cleanup(func() { ns.Close() })
	}
	return a, b
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

// Counters reads /sys/class/net/<iface>/statistics inside the namespace.
func (h *Host) Counters() IfaceCounters {
	h.tb.Helper()
	read := func(name string) uint64 {
		out := strings.TrimSpace(h.Exec("cat", "/sys/class/net/"+h.Iface+"/statistics/"+name))
		var v uint64
		fmt.Sscan(out, &v) //nolint:errcheck
		return v
	}
	return IfaceCounters{read("rx_packets"), read("tx_packets"), read("rx_dropped"), read("tx_dropped")}
}
