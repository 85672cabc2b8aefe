package replay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestReplayEqualsLiveRecording is the claim of the replay command, tested
// on real traffic: flowaudit records an appliance's veth live while
// tcpdump captures the same interface; replaying the capture (with the
// live recording's addresses and sock_diag sockets, which a capture does
// not hold) gives the same flows, counts, bytes and evidence.
func TestReplayEqualsLiveRecording(t *testing.T) {
	a, b := testenv.NewPair(t)
	testenv.RequireTool(t, "tcpdump")
	testenv.RequireTool(t, "ethtool") // offloads off: one captured frame per wire packet
	var live *bpf.Collector
	if err := a.Do(func() (err error) {
		live, err = bpf.Open(bpf.Options{EphemeralPorts: DefaultEphemeralPorts})
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	// Services on the appliance: TCP 8443 (v4 and v6) and UDP 514.
	lns := map[string]net.Listener{}
	for _, addr := range []netip.AddrPort{netip.AddrPortFrom(a.IPv4, 8443), netip.AddrPortFrom(a.IPv6, 8443)} {
		if err := a.Do(func() (err error) { lns[addr.String()], err = net.Listen("tcp", addr.String()); return }); err != nil {
			t.Fatal(err)
		}
		defer lns[addr.String()].Close()
	}
	var syslog net.PacketConn
	if err := a.Do(func() (err error) {
		syslog, err = net.ListenPacket("udp", netip.AddrPortFrom(a.IPv4, 514).String())
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer syslog.Close()

	if _, err := live.Attach(a.Iface, bpf.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	ref, err := live.StartSocketRefresh(200 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Stop()

	capPath := filepath.Join(t.TempDir(), "veth-a.pcap")
	dump := a.Command("tcpdump", "-n", "-U", "--immediate-mode", "-s", "0", "-i", a.Iface, "-w", capPath)
	stderr, err := dump.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan error, 1)
	var tail []string
	tailDone := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				listening <- nil
				for sc.Scan() {
					tail = append(tail, sc.Text())
				}
				close(tailDone)
				return
			}
		}
		listening <- errors.New("tcpdump exited before listening")
	}()
	select {
	case err := <-listening:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		dump.Process.Kill() //nolint:errcheck
		t.Fatal("tcpdump did not start listening")
	}

	// Traffic from the peer: accepted connections with data (v4, v6), a
	// refused one, syslog datagrams, a datagram to a closed port (ICMP
	// port unreachable) and a ping.
	for _, lnAddr := range []string{netip.AddrPortFrom(a.IPv4, 8443).String(), netip.AddrPortFrom(a.IPv6, 8443).String()} {
		ln := lns[lnAddr]
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if err == nil {
				_, err = c.Write(buf[:n])
			}
			c.(*net.TCPConn).SetLinger(0) //nolint:errcheck
			c.Close()
			done <- err
		}()
		if err := b.Do(func() error {
			c, err := net.DialTimeout("tcp", lnAddr, 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second)) //nolint:errcheck
			if _, err := c.Write([]byte("hello")); err != nil {
				return err
			}
			_, err = c.Read(make([]byte, 64))
			if err == nil {
				_, err = c.Read(make([]byte, 64)) // wait for the reset
			}
			if errors.Is(err, syscall.ECONNRESET) {
				err = nil
			}
			c.(*net.TCPConn).SetLinger(0) //nolint:errcheck
			return err
		}); err != nil {
			t.Fatalf("connection to %s: %v", lnAddr, err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Do(func() error {
		_, err := net.DialTimeout("tcp", netip.AddrPortFrom(a.IPv4, 6379).String(), 3*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("want connection refused, got %v", err)
		}
		for _, port := range []uint16{514, 514, 9999} {
			u, err := net.Dial("udp", netip.AddrPortFrom(a.IPv4, port).String())
			if err != nil {
				return err
			}
			u.Write([]byte("<13>flowaudit replay test")) //nolint:errcheck
			u.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Do(func() error { return ping(a.IPv4, 2) }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the last packets reach both observers

	liveSnap, err := live.Snapshot(bpf.SnapshotOptions{Listening: ref.Seen()})
	if err != nil {
		t.Fatal(err)
	}
	dump.Process.Signal(syscall.SIGINT) //nolint:errcheck
	<-tailDone
	dump.Wait() //nolint:errcheck
	t.Logf("tcpdump: %s", strings.Join(tail, "; "))

	var local []netip.Prefix
	for _, ad := range liveSnap.Interfaces[0].Addresses {
		local = append(local, netip.PrefixFrom(ad, ad.BitLen()))
	}
	rc, err := bpf.Open(bpf.Options{EphemeralPorts: DefaultEphemeralPorts, Programs: Programs(Options{})})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	res, err := Run(context.Background(), rc, capPath, Options{Local: local, Listening: liveSnap.Listening})
	if err != nil {
		t.Fatal(err)
	}
	// Only the test's own conversations: the veth also carries IPv6
	// neighbour discovery and ARP that may start before tcpdump does.
	mine := func(flows []snapshot.Flow) []snapshot.Flow {
		var out []snapshot.Flow
		for _, f := range flows {
			if f.Peer == b.IPv4 || f.Peer == b.IPv6 {
				if f.Proto == snapshot.ICMPv6 && f.Port>>8 >= 133 && f.Port>>8 <= 137 {
					continue // neighbour discovery
				}
				out = append(out, f)
			}
		}
		return out
	}
	lf, rf := mine(liveSnap.Flows), mine(res.Snapshot.Flows)
	if len(lf) < 5 {
		t.Fatalf("live recording has only %d flows of the test traffic:\n%s", len(lf), flowsText(lf))
	}
	if d := diffText(flowsText(lf), flowsText(rf)); d != "" {
		t.Errorf("replay of tcpdump's capture differs from the live recording (-live +replay):\n%s", d)
	}
	t.Logf("%d flows equal; capture: %d packets", len(lf), res.Packets)
}

// ping sends n ICMP echo requests to dst and waits for each reply.
func ping(dst netip.Addr, n int) error {
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return err
	}
	defer c.Close()
	for seq := 1; seq <= n; seq++ {
		msg := []byte{8, 0, 0, 0, 0x12, 0x34, 0, byte(seq), 'f', 'a'}
		var sum uint32
		for i := 0; i < len(msg); i += 2 {
			sum += uint32(msg[i])<<8 | uint32(msg[i+1])
		}
		for sum>>16 != 0 {
			sum = sum&0xffff + sum>>16
		}
		msg[2], msg[3] = byte(^sum>>8), byte(^sum)
		if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second)) //nolint:errcheck
		buf := make([]byte, 1500)
		for {
			m, _, err := c.ReadFrom(buf)
			if err != nil {
				return fmt.Errorf("echo reply %d: %w", seq, err)
			}
			if m >= 8 && buf[0] == 0 && buf[7] == byte(seq) {
				break
			}
		}
	}
	return nil
}
