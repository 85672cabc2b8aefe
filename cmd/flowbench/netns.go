package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// lab is two throwaway network namespaces joined by one veth pair: the
// generator sends from gen (veth-g), the receiver counts on recv (veth-r).
// Traffic never leaves them. Close deletes both namespaces, which also
// removes the veth pair and every program attached to it.
type lab struct {
	genNS, recvNS   string
	genIf, recvIf   string
	gen, recv       netns.NsHandle
	genIdx, recvIdx int
	genMAC, recvMAC net.HardwareAddr
	recvNL          *netlink.Handle
	genNL           *netlink.Handle
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newLab builds the namespaces. Addresses: 192.0.2.1 (gen), 192.0.2.2 (recv).
func newLab() (l *lab, err error) {
	b := make([]byte, 3)
	rand.Read(b) //nolint:errcheck // crypto/rand does not fail on Linux
	sfx := hex.EncodeToString(b)
	l = &lab{genNS: "fb-gen-" + sfx, recvNS: "fb-recv-" + sfx, genIf: "veth-g", recvIf: "veth-r",
		gen: netns.None(), recv: netns.None()}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	for _, ns := range []string{l.genNS, l.recvNS} {
		if err := ipCmd("netns", "add", ns); err != nil {
			return nil, err
		}
	}
	tmpG, tmpR := "fbg"+sfx, "fbr"+sfx
	steps := [][]string{
		// No IPv6 at all: no router solicitations or MLD reports on the
		// wire, so every packet the receiver sees is one the generator sent.
		{"netns", "exec", l.genNS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"},
		{"netns", "exec", l.recvNS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"},
		{"link", "add", tmpG, "type", "veth", "peer", "name", tmpR},
		{"link", "set", tmpG, "netns", l.genNS, "name", l.genIf},
		{"link", "set", tmpR, "netns", l.recvNS, "name", l.recvIf},
		{"-n", l.genNS, "addr", "add", "192.0.2.1/24", "dev", l.genIf},
		{"-n", l.recvNS, "addr", "add", "192.0.2.2/24", "dev", l.recvIf},
		{"-n", l.genNS, "link", "set", "lo", "up"},
		{"-n", l.recvNS, "link", "set", "lo", "up"},
		{"-n", l.genNS, "link", "set", l.genIf, "up"},
		{"-n", l.recvNS, "link", "set", l.recvIf, "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			return nil, err
		}
	}
	if l.gen, err = netns.GetFromName(l.genNS); err != nil {
		return nil, err
	}
	if l.recv, err = netns.GetFromName(l.recvNS); err != nil {
		return nil, err
	}
	if l.genNL, err = netlink.NewHandleAt(l.gen); err != nil {
		return nil, err
	}
	if l.recvNL, err = netlink.NewHandleAt(l.recv); err != nil {
		return nil, err
	}
	g, err := l.genNL.LinkByName(l.genIf)
	if err != nil {
		return nil, err
	}
	r, err := l.recvNL.LinkByName(l.recvIf)
	if err != nil {
		return nil, err
	}
	l.genIdx, l.genMAC = g.Attrs().Index, g.Attrs().HardwareAddr
	l.recvIdx, l.recvMAC = r.Attrs().Index, r.Attrs().HardwareAddr
	return l, nil
}

// recvCounters returns the receiving veth's kernel counters.
func (l *lab) recvCounters() (*netlink.LinkStatistics, error) {
	r, err := l.recvNL.LinkByName(l.recvIf)
	if err != nil {
		return nil, err
	}
	return r.Attrs().Statistics, nil
}

func (l *lab) genCounters() (*netlink.LinkStatistics, error) {
	g, err := l.genNL.LinkByName(l.genIf)
	if err != nil {
		return nil, err
	}
	return g.Attrs().Statistics, nil
}

// inRecv runs fn on a thread in the receiving namespace.
func (l *lab) inRecv(fn func() error) error { return inNS(l.recv, fn) }

func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Locked and never unlocked: the thread is discarded with the
		// goroutine, so nothing else ever runs in the namespace.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Close deletes the namespaces (and with them the veth pair).
func (l *lab) Close() {
	if l.genNL != nil {
		l.genNL.Close()
	}
	if l.recvNL != nil {
		l.recvNL.Close()
	}
	if l.gen.IsOpen() {
		l.gen.Close()
	}
	if l.recv.IsOpen() {
		l.recv.Close()
	}
	for _, ns := range []string{l.genNS, l.recvNS} {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "flowbench: could not delete namespace %s (delete it with: ip netns del %s): %v %s\n",
				ns, ns, err, strings.TrimSpace(string(out)))
		}
	}
}
