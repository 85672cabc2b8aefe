package bpf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// Real traffic between two namespaces over veth, flowaudit attached to the
// appliance end ("a"). Every exchange is built so its packet count is
// exact: connections are closed with SO_LINGER 0 (RST, no FIN dance).

const ioTimeout = 3 * time.Second

// acceptAndReset accepts n connections and resets each immediately:
// SYN in, SYN-ACK out, ACK in, RST out.
func acceptAndReset(t *testing.T, ln net.Listener, n int) <-chan error {
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(ioTimeout)) //nolint:errcheck
			c, err := ln.Accept()
			if err != nil {
				done <- fmt.Errorf("accept %d: %w", i, err)
				return
			}
			c.(*net.TCPConn).SetLinger(0) //nolint:errcheck
			c.Close()
		}
		done <- nil
	}()
	return done
}

// dialAndWaitReset connects and waits for the server's RST, sending nothing.
func dialAndWaitReset(h *testenv.Host, addr netip.AddrPort) error {
	return h.Do(func() error {
		c, err := net.DialTimeout("tcp", addr.String(), ioTimeout)
		if errors.Is(err, syscall.ECONNRESET) {
			return nil // the reset beat Go's post-connect check: same packets
		}
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(ioTimeout)) //nolint:errcheck
		_, err = c.Read(make([]byte, 1))
		if errors.Is(err, syscall.ECONNRESET) {
			// Reset seen; close without sending anything more.
			c.(*net.TCPConn).SetLinger(0) //nolint:errcheck
			return nil
		}
		return fmt.Errorf("want connection reset, got %v", err)
	})
}

func listenTCP(t *testing.T, h *testenv.Host, addr netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr.String()); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// udpEcho answers every datagram once, until closed.
func udpEcho(t *testing.T, h *testenv.Host, addr netip.AddrPort) {
	t.Helper()
	var pc net.PacketConn
	if err := h.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr.String()); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for i := 0; i < 1000; i++ { // bounded
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from) //nolint:errcheck
		}
	}()
}

// udpExchange sends n datagrams from h and expects n answers.
func udpExchange(h *testenv.Host, to netip.AddrPort, n int) error {
	return h.Do(func() error {
		c, err := net.Dial("udp", to.String())
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		for i := 0; i < n; i++ {
			if _, err := c.Write([]byte("syslog " + strconv.Itoa(i))); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(ioTimeout)) //nolint:errcheck
			if _, err := c.Read(buf); err != nil {
				return fmt.Errorf("udp answer %d: %w", i, err)
			}
		}
		return nil
	})
}

// udpToClosed sends one datagram to a port without a socket and expects
// the ICMP port unreachable to surface as ECONNREFUSED.
func udpToClosed(h *testenv.Host, to netip.AddrPort) error {
	return h.Do(func() error {
		c, err := net.Dial("udp", to.String())
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("snmp?")); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(ioTimeout)) //nolint:errcheck
		_, err = c.Read(make([]byte, 16))
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		return fmt.Errorf("want connection refused, got %v", err)
	})
}

// consistentRead runs read between two readings of both veths' counters
// and repeats the three until the counters did not move in between: then
// no packet crossed the pair while read ran, and the counters returned
// describe exactly the packets read saw (read must be repeatable: a reset,
// or reading cumulative maps). testenv.NewPair quiesces the pair, so the
// first attempt is the one that counts unless something unexpected sends;
// every repeat is logged.
func consistentRead(t *testing.T, a, b *testenv.Host, read func() error) (ca, cb testenv.IfaceCounters) {
	t.Helper()
	for try := 1; try <= 20; try++ {
		a0, b0 := testenv.PairCounters(a, b)
		if err := read(); err != nil {
			t.Fatal(err)
		}
		ca, cb = testenv.PairCounters(a, b)
		if ca == a0 && cb == b0 {
			return ca, cb
		}
		t.Logf("attempt %d: veth counters moved during the read (a %+v -> %+v, b %+v -> %+v), reading again", try, a0, ca, b0, cb)
	}
	t.Fatalf("veth counters kept moving during 20 reads: the pair is not quiet")
	return ca, cb
}

type flowID struct {
	dir      snapshot.Direction
	proto    snapshot.Proto
	port     uint16
	peer     netip.Addr
	inferred bool
}

func TestNetnsLiveTraffic(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts AttachOptions
		in   string
		eg   string
	}{
		{"xdp+tcx", AttachOptions{}, IngressXDPNative, TCX},
		{"tc-ingress+clsact", AttachOptions{Ingress: IngressTC, TC: TCClsact}, TCClsact, TCClsact},
	} {
		t.Run(mode.name, func(t *testing.T) { testLiveTraffic(t, mode.opts, mode.in, mode.eg) })
	}
}

func testLiveTraffic(t *testing.T, opts AttachOptions, wantIn, wantEg string) {
	a, b := testenv.NewPair(t)
	var c *Collector
	if err := a.Do(func() (err error) { c, err = Open(Options{SocketsKnown: true}); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	att, err := c.Attach(a.Iface, opts)
	if err != nil {
		t.Fatal(err)
	}
	if att.Ingress != wantIn || att.Egress != wantEg {
		t.Fatalf("attached ingress=%s egress=%s, want %s/%s", att.Ingress, att.Egress, wantIn, wantEg)
	}

	// Services on the appliance.
	svc4 := netip.AddrPortFrom(a.IPv4, 8443)
	svc6 := netip.AddrPortFrom(a.IPv6, 8443)
	ln4, ln6 := listenTCP(t, a, svc4), listenTCP(t, a, svc6)
	udpEcho(t, a, netip.AddrPortFrom(a.IPv4, 514))
	udpEcho(t, a, netip.AddrPortFrom(a.IPv6, 514))
	// A service on the peer the appliance connects out to.
	lnOut := listenTCP(t, b, netip.AddrPortFrom(b.IPv4, 5000))
	// nftables on the appliance drops SYNs to 9001 (a "filtered" port).
	testenv.RequireTool(t, "nft")
	a.Exec("nft", "add table inet fa; add chain inet fa in { type filter hook input priority 0; }; add rule inet fa in tcp dport 9001 drop")

	ref, err := c.StartSocketRefresh(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Stop()

	// Zero the maps with no packet in between the veth counters' reading.
	beforeA, beforeB := consistentRead(t, a, b, func() error {
		if err := c.Reset(); err != nil {
			return err
		}
		_, err := c.RefreshSockets()
		return err
	})

	// 1. Two accepted connections per family (4 packets each).
	done4, done6 := acceptAndReset(t, ln4, 2), acceptAndReset(t, ln6, 2)
	for i := 0; i < 2; i++ {
		if err := dialAndWaitReset(b, svc4); err != nil {
			t.Fatalf("v4 connection %d: %v", i, err)
		}
		if err := dialAndWaitReset(b, svc6); err != nil {
			t.Fatalf("v6 connection %d: %v", i, err)
		}
	}
	for _, d := range []<-chan error{done4, done6} {
		if err := <-d; err != nil {
			t.Fatal(err)
		}
	}
	// 2. Connection refused: SYN in, RST out.
	if err := b.Do(func() error {
		_, err := net.DialTimeout("tcp", netip.AddrPortFrom(a.IPv4, 6379).String(), ioTimeout)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("want refused, got %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// 3. Filtered: one SYN, dropped by nftables after XDP counted it. The
	//    dial gives up before the first retransmission (1 s).
	b.Do(func() error { //nolint:errcheck // a timeout is the expected result
		_, err := net.DialTimeout("tcp", netip.AddrPortFrom(a.IPv4, 9001).String(), 300*time.Millisecond)
		if err == nil {
			t.Error("connection to the filtered port succeeded")
		}
		return nil
	})
	// 4. UDP service, 3 requests + 3 answers per family.
	if err := udpExchange(b, netip.AddrPortFrom(a.IPv4, 514), 3); err != nil {
		t.Fatal(err)
	}
	if err := udpExchange(b, netip.AddrPortFrom(a.IPv6, 514), 3); err != nil {
		t.Fatal(err)
	}
	// 5. UDP to a closed port: ICMP port unreachable back.
	if err := udpToClosed(b, netip.AddrPortFrom(a.IPv4, 161)); err != nil {
		t.Fatal(err)
	}
	if err := udpToClosed(b, netip.AddrPortFrom(a.IPv6, 161)); err != nil {
		t.Fatal(err)
	}
	// 6. The appliance connects out.
	doneOut := acceptAndReset(t, lnOut, 1)
	if err := dialAndWaitReset(a, netip.AddrPortFrom(b.IPv4, 5000)); err != nil {
		t.Fatal(err)
	}
	if err := <-doneOut; err != nil {
		t.Fatal(err)
	}

	// Nothing is still on its way: every exchange above ended with its last
	// packet received by a socket, which the kernel delivers after the veth
	// and the programs counted it; the filtered dial's SYN_SENT socket was
	// closed when the dial gave up (Go closes it before returning), and
	// closing it stops its retransmission timer.
	var r *Read
	afterA, afterB := consistentRead(t, a, b, func() (err error) { r, err = c.ReadMaps(); return })

	got := map[flowID]snapshot.Flow{}
	var pin, pout uint64
	for _, f := range r.Flows {
		if f.Interface != a.Iface {
			t.Errorf("flow on %q, want %q", f.Interface, a.Iface)
		}
		got[flowID{f.Direction, f.Proto, f.Port, f.Peer, f.DirectionInferred}] = f
		pin += f.PacketsIn
		pout += f.PacketsOut
	}
	for _, f := range r.Flows {
		t.Logf("%s %s/%d %s inferred=%v in=%d out=%d %+v", f.Direction, f.Proto, f.Port, f.Peer, f.DirectionInferred, f.PacketsIn, f.PacketsOut, f.Evidence)
	}
	ev := func(e snapshot.Evidence) snapshot.Evidence { return e }
	want := []struct {
		id       flowID
		pin, pot uint64
		ev       snapshot.Evidence
	}{
		{flowID{snapshot.Inbound, snapshot.TCP, 8443, b.IPv4, false}, 4, 4, ev(snapshot.Evidence{SynIn: 2, SynAckOut: 2, RstOut: 2})},
		{flowID{snapshot.Inbound, snapshot.TCP, 8443, b.IPv6, false}, 4, 4, ev(snapshot.Evidence{SynIn: 2, SynAckOut: 2, RstOut: 2})},
		{flowID{snapshot.Inbound, snapshot.TCP, 6379, b.IPv4, false}, 1, 1, ev(snapshot.Evidence{SynIn: 1, RstOut: 1})},
		{flowID{snapshot.Inbound, snapshot.TCP, 9001, b.IPv4, false}, 1, 0, ev(snapshot.Evidence{SynIn: 1})},
		{flowID{snapshot.Inbound, snapshot.UDP, 514, b.IPv4, false}, 3, 3, snapshot.Evidence{}},
		{flowID{snapshot.Inbound, snapshot.UDP, 514, b.IPv6, false}, 3, 3, snapshot.Evidence{}},
		{flowID{snapshot.Inbound, snapshot.UDP, 161, b.IPv4, true}, 1, 0, ev(snapshot.Evidence{ICMPClosedOut: 1})},
		{flowID{snapshot.Inbound, snapshot.UDP, 161, b.IPv6, true}, 1, 0, ev(snapshot.Evidence{ICMPClosedOut: 1})},
		{flowID{snapshot.Unknown, snapshot.ICMP, 0x0303, b.IPv4, false}, 0, 1, snapshot.Evidence{}},
		{flowID{snapshot.Unknown, snapshot.ICMPv6, 0x0104, b.IPv6, false}, 0, 1, snapshot.Evidence{}},
		{flowID{snapshot.Outbound, snapshot.TCP, 5000, b.IPv4, false}, 2, 2, ev(snapshot.Evidence{SynOut: 1, SynAckIn: 1, RstIn: 1})},
	}
	for _, w := range want {
		f, ok := got[w.id]
		if !ok {
			t.Errorf("missing flow %+v", w.id)
			continue
		}
		if f.PacketsIn != w.pin || f.PacketsOut != w.pot || f.Evidence != w.ev {
			t.Errorf("flow %s %s/%d %s: in=%d out=%d %+v, want in=%d out=%d %+v", w.id.dir, w.id.proto, w.id.port, w.id.peer,
				f.PacketsIn, f.PacketsOut, f.Evidence, w.pin, w.pot, w.ev)
		}
		delete(got, w.id)
	}
	// Whatever else was counted must be neighbour discovery / ARP-level
	// housekeeping, never a port flow.
	for id, f := range got {
		if id.proto != snapshot.ICMPv6 || f.Port>>8 < 133 || f.Port>>8 > 143 {
			t.Errorf("unexpected flow %+v in=%d out=%d", id, f.PacketsIn, f.PacketsOut)
		}
	}
	// Ephemeral client ports must never show up as service ports.
	for _, f := range r.Flows {
		if f.Proto.HasPorts() && f.Port >= 32768 {
			t.Errorf("ephemeral port %d became a service port: %+v", f.Port, f)
		}
	}

	// Nothing dropped, everything counted: the veth counters agree.
	var nonIP uint64
	for _, ctr := range r.Stats.NonIP {
		nonIP += ctr.Packets
	}
	rx, tx := afterA.RxPackets-beforeA.RxPackets, afterA.TxPackets-beforeA.TxPackets
	if pin+pout+nonIP != rx+tx {
		t.Errorf("counted %d in + %d out + %d non-IP = %d packets, veth-a counted rx %d + tx %d = %d",
			pin, pout, nonIP, pin+pout+nonIP, rx, tx, rx+tx)
	}
	if r.Stats.PacketsIngress != rx || r.Stats.PacketsEgress != tx {
		t.Errorf("programs saw ingress %d egress %d, veth-a rx %d tx %d", r.Stats.PacketsIngress, r.Stats.PacketsEgress, rx, tx)
	}
	if d := afterA.RxDropped - beforeA.RxDropped + afterA.TxDropped - beforeA.TxDropped +
		afterB.RxDropped - beforeB.RxDropped + afterB.TxDropped - beforeB.TxDropped; d != 0 {
		t.Errorf("%d packets dropped on the veth pair", d)
	}
	if afterB.TxPackets-beforeB.TxPackets != rx || afterB.RxPackets-beforeB.RxPackets != tx {
		t.Errorf("veth-b tx %d rx %d, veth-a rx %d tx %d: packets lost in between",
			afterB.TxPackets-beforeB.TxPackets, afterB.RxPackets-beforeB.RxPackets, rx, tx)
	}
	if r.Stats.FlowInsertFailed != 0 || r.Stats.Truncated != 0 {
		t.Errorf("stats: %+v", r.Stats)
	}

	// The listening sockets were seen.
	var listening []string
	for _, s := range ref.Seen() {
		listening = append(listening, fmt.Sprintf("%s/%d", s.Proto, s.Port))
	}
	if l := strings.Join(listening, " "); !strings.Contains(l, "tcp/8443") || !strings.Contains(l, "udp/514") {
		t.Errorf("listening sockets %q miss tcp/8443 or udp/514", l)
	}
}

// TestNetnsCleanDetach: after Close nothing of flowaudit stays on the
// interface, and a pre-existing clsact qdisc with another tool's filter
// is left exactly as it was.
func TestNetnsCleanDetach(t *testing.T) {
	a, _ := testenv.NewPair(t)
	testenv.RequireTool(t, "tc")
	a.Exec("tc", "qdisc", "add", "dev", a.Iface, "clsact")
	other, err := newTCPassProgram("other_tool")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := a.Do(func() error { return addBPFFilter(a.Iface, other.FD(), "other_tool") }); err != nil {
		t.Fatal(err)
	}
	before := a.Exec("tc", "filter", "show", "dev", a.Iface, "egress")

	var c *Collector
	if err := a.Do(func() (err error) { c, err = Open(Options{}); return }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attach(a.Iface, AttachOptions{TC: TCClsact}); err != nil {
		t.Fatal(err)
	}
	during := a.Exec("tc", "filter", "show", "dev", a.Iface, "egress")
	if !strings.Contains(during, "flowaudit") || !strings.Contains(during, "other_tool") {
		t.Fatalf("filters while attached:\n%s", during)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	after := a.Exec("tc", "filter", "show", "dev", a.Iface, "egress")
	if after != before {
		t.Errorf("egress filters changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if q := a.Exec("tc", "qdisc", "show", "dev", a.Iface); !strings.Contains(q, "clsact") {
		t.Errorf("clsact qdisc removed:\n%s", q)
	}
	if l := a.Exec("ip", "link", "show", a.Iface); strings.Contains(l, "xdp") {
		t.Errorf("XDP still attached:\n%s", l)
	}
}

// TestNetnsErrors: clear errors for a missing interface and for another
// XDP program, which is named and left in place unless replacing is asked.
func TestNetnsErrors(t *testing.T) {
	a, _ := testenv.NewPair(t)
	testenv.RequireTool(t, "bpftool")
	var c *Collector
	if err := a.Do(func() (err error) { c, err = Open(Options{}); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if _, err := c.Attach("nosuch0", AttachOptions{}); !errors.Is(err, ErrInterfaceNotFound) {
		t.Errorf("missing interface: %v, want ErrInterfaceNotFound", err)
	}

	// Another tool's XDP program, attached the legacy netlink way.
	other, err := newPassProgram("other_tool")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := a.Do(func() error { return setXDPNetlink(a.Iface, other.FD()) }); err != nil {
		t.Fatal(err)
	}
	_, err = c.Attach(a.Iface, AttachOptions{Ingress: IngressXDPNative})
	if !errors.Is(err, ErrXDPInUse) || !strings.Contains(err.Error(), "other_tool") {
		t.Fatalf("attach over another XDP program: %v, want ErrXDPInUse naming other_tool", err)
	}
	if l := a.Exec("ip", "link", "show", a.Iface); !strings.Contains(l, "xdp") {
		t.Fatalf("the other XDP program was removed:\n%s", l)
	}
	// Auto mode leaves it alone and counts ingress at TC.
	att, err := c.Attach(a.Iface, AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if att.Ingress != TCX {
		t.Errorf("auto ingress with another XDP program: %s, want tc (tcx)", att.Ingress)
	}
	if err := c.Detach(a.Iface); err != nil {
		t.Fatal(err)
	}
	// Replacing when asked.
	att, err = c.Attach(a.Iface, AttachOptions{Ingress: IngressXDPNative, ReplaceXDP: true})
	if err != nil {
		t.Fatal(err)
	}
	if att.Ingress != IngressXDPNative {
		t.Errorf("ingress after replace: %s", att.Ingress)
	}
}

// helperEnv makes the test binary act as a recorder that attaches and then
// waits to be killed (TestNetnsSIGKILLDetaches).
const helperEnv = "FLOWAUDIT_TEST_ATTACH_AND_WAIT"

func TestMain(m *testing.M) {
	if iface := getenv(helperEnv); iface != "" {
		attachAndWait(iface)
		return
	}
	m.Run()
}

func attachAndWait(iface string) {
	c, err := Open(Options{SocketsKnown: true})
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	if _, err := c.Attach(iface, helperAttachOptions()); err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println("ready")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounded
	defer cancel()
	<-ctx.Done()
}

func TestNetnsSIGKILLDetaches(t *testing.T) {
	a, _ := testenv.NewPair(t)
	self, err := executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := a.Command(self, "-test.run=^$")
	cmd.Env = append(environ(), helperEnv+"="+a.Iface)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck
	line := make([]byte, 64)
	n, _ := io.ReadAtLeast(stdout, line, 5)
	if !strings.HasPrefix(string(line[:n]), "ready") {
		t.Fatalf("helper: %q", line[:n])
	}
	if l := a.Exec("ip", "link", "show", a.Iface); !strings.Contains(l, "xdp") {
		t.Fatalf("helper did not attach XDP:\n%s", l)
	}
	if n := tcxCount(t, a); n != 1 {
		t.Fatalf("tcx programs while attached: %d, want 1 (egress)", n)
	}
	// SIGKILL: no chance to clean up. `ip netns exec` forwards nothing, so
	// kill the recorder itself, the exec's child.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() //nolint:errcheck
	deadline := time.Now().Add(5 * time.Second)
	for {
		l := a.Exec("ip", "link", "show", a.Iface)
		n := tcxCount(t, a)
		if !strings.Contains(l, "xdp") && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still attached 5 s after SIGKILL: tcx=%d\n%s", n, l)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
