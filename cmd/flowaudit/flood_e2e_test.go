package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// spoofSYNs sends n TCP SYNs from h's veth to dst, each from a different
// address of 198.18.0.0/15 (the benchmarking range: never routed), as
// hping3 --rand-source does. Frames go out through a packet socket,
// paced in bursts so the veth ring does not overflow.
func spoofSYNs(t *testing.T, h *testenv.Host, dstMAC net.HardwareAddr, dst netip.AddrPort, n int) {
	t.Helper()
	err := h.Do(func() error {
		ifc, err := net.InterfaceByName(h.Iface)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0) // send only
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: htons(unix.ETH_P_IP), Halen: 6}
		copy(to.Addr[:], dstMAC)
		buf := gopacket.NewSerializeBuffer()
		for i := 0; i < n; i++ {
			src := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
			ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.Addr().AsSlice()}
			tcp := &layers.TCP{SrcPort: layers.TCPPort(1024 + i%60000), DstPort: layers.TCPPort(dst.Port()), SYN: true, Seq: uint32(i), Window: 1024}
			tcp.SetNetworkLayerForChecksum(ip) //nolint:errcheck
			eth := &layers.Ethernet{SrcMAC: ifc.HardwareAddr, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
				return err
			}
			if err := unix.Sendto(fd, buf.Bytes(), 0, to); err != nil {
				return fmt.Errorf("send SYN %d: %w", i, err)
			}
			if i%100 == 99 {
				time.Sleep(time.Millisecond)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestE2EFloodNeverBlinds is the live-sensor scenario of issue 11: a
// spoofed-source SYN flood much larger than the flow map, then real
// traffic to every required service. The real traffic lands in the
// overflow map (peers unknown) and is seen; the audit reports the flood
// once and no false missing-required; rules refuses the snapshot unless
// --force.
func TestE2EFloodNeverBlinds(t *testing.T) {
	a, b := testenv.NewPair(t)
	dir := t.TempDir()
	snapPath := filepath.Join(dir, "snap.json")
	abs := func(p string) string { s, _ := filepath.Abs(p); return s }
	// The appliance's documented services (lab-catalog.yaml): 8443 and
	// 9001 (tcp), 514 (udp). Its replies to the spoofed peers go towards b.
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 8443))
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 9001))
	var syslog net.PacketConn
	if err := a.Do(func() (err error) {
		syslog, err = net.ListenPacket("udp", netip.AddrPortFrom(a.IPv4, 514).String())
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer syslog.Close()
	a.Exec("ip", "route", "add", "default", "via", b.IPv4.String())
	macA, err := net.ParseMAC(strings.TrimSpace(a.Exec("cat", "/sys/class/net/"+a.Iface+"/address")))
	if err != nil {
		t.Fatal(err)
	}

	const maxFlows, spoofed = 1024, 5000
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// No early move: the flood fills the kernel map and keeps it full
	// until the recording ends, so the real traffic after it must take the
	// overflow path (deterministically, not depending on a move's timing).
	cmd, lines := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface, "--duration", "6s", "--out", snapPath,
		"--max-flows", fmt.Sprint(maxFlows), "--move-interval", "1h", "--move-fill", "0")
	waitLog(t, lines, `"msg":"recording"`)
	spoofSYNs(t, b, macA, netip.AddrPortFrom(a.IPv4, 8443), spoofed)
	dialN(t, b, netip.AddrPortFrom(a.IPv4, 8443), 2)
	dialN(t, b, netip.AddrPortFrom(a.IPv4, 9001), 2)
	if err := sendUDP(b, netip.AddrPortFrom(a.IPv4, 514), 3); err != nil {
		t.Fatal(err)
	}
	logged := waitLog(t, lines, `"msg":"snapshot written"`)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("record: %v\n%s", err, strings.Join(logged, "\n"))
	}
	if all := strings.Join(logged, "\n"); !strings.Contains(all, "counted per service without their peer") {
		t.Errorf("the recorder did not warn about packets without peer:\n%s", all)
	}

	snap, err := snapshot.ReadFile(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	if st := snap.Stats; st.FlowInsertFailed < spoofed/2 || st.Lossy() || len(snap.Flows) > maxFlows {
		t.Errorf("stats %+v, %d flows: want thousands of packets without peer, none lost, at most %d flows", st, len(snap.Flows), maxFlows)
	}
	over := map[string]snapshot.Flow{}
	for _, o := range snap.Overflow {
		over[fmt.Sprintf("%s %s/%d", o.Direction, o.Proto, o.Port)] = o
	}
	for svc, minPkts := range map[string]uint64{"inbound tcp/8443": spoofed / 2, "inbound tcp/9001": 6, "inbound udp/514": 3} {
		if o, ok := over[svc]; !ok || o.PacketsIn < minPkts {
			t.Errorf("overflow %s: %+v (want at least %d packets in)", svc, o, minPkts)
		}
	}
	if o := over["inbound tcp/8443"]; o.Peers < spoofed/4 {
		t.Errorf("overflow tcp/8443 estimates %d distinct peers, want thousands", o.Peers)
	}

	// The audit sees every required service, reports the flood once.
	code, out, errb := runCLI(t, "audit", "--catalog", abs("testdata/lab-catalog.yaml"), "--matrix", "labapp", "--role", "server",
		"--site", abs("testdata/lab-site.yaml"), "--snapshot", snapPath, "--format", "json", "--min-window", "5s",
		"--flood-peers", "2000", "--flood-syns", "2000")
	if code != exitFindings {
		t.Fatalf("audit exit %d\n%s\n%s", code, out, errb)
	}
	var rep audit.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, f := range rep.Findings {
		ids = append(ids, f.ID)
		switch {
		case f.Kind == audit.MissingRequired && f.Rule != nil && f.Rule.ID != "lab1.server.ssh":
			t.Errorf("false missing-required: %s", f.Summary)
		case f.Kind == audit.RequiredPortClosed || f.Kind == audit.RequiredPortFiltered:
			t.Errorf("false %s: %s", f.Kind, f.Summary)
		case f.Kind == audit.PeerOutOfZone && f.Evidence.Peers > 10:
			t.Errorf("the flood's spoofed peers buried in %s (%d peers)", f.ID, f.Evidence.Peers)
		}
	}
	flood := 0
	for _, f := range rep.Findings {
		if f.Kind == audit.FloodSuspected {
			flood++
			if f.ID != "flood-suspected/tcp/8443" {
				t.Errorf("flood on %s", f.ID)
			}
		}
	}
	if flood != 1 {
		t.Errorf("%d flood-suspected findings, want 1: %v", flood, ids)
	}
	if !strings.Contains(strings.Join(ids, " "), "audit-incomplete/peers-lost") {
		t.Errorf("no audit-incomplete/peers-lost: %v", ids)
	}
	for _, r := range rep.Rules {
		if (r.Rule.ID == "lab1.server.syslog" || r.Rule.ID == "lab1.server.agent") && r.Status != audit.StatusPeersUnknown {
			t.Errorf("rule %s: status %s, want %s", r.Rule.ID, r.Status, audit.StatusPeersUnknown)
		}
	}

	// rules refuses the overflowed snapshot, and writes it only when forced.
	rulesArgs := []string{"rules", "--catalog", abs("testdata/lab-catalog.yaml"), "--matrix", "labapp", "--role", "server",
		"--site", abs("testdata/lab-site.yaml"), "--snapshot", snapPath, "--min-window", "5s", "--target", "nftables",
		"--out", filepath.Join(dir, "fw.nft")}
	code, _, errb = runCLI(t, rulesArgs...)
	if code != exitError || !strings.Contains(errb, "--force") {
		t.Fatalf("rules on a flooded snapshot: exit %d, want %d naming --force\n%s", code, exitError, errb)
	}
	if _, err := os.Stat(filepath.Join(dir, "fw.nft")); err == nil {
		t.Error("rules wrote a file although it refused")
	}
	code, _, errb = runCLI(t, append(rulesArgs, "--force")...)
	if code != exitClean {
		t.Fatalf("rules --force: exit %d\n%s", code, errb)
	}
	if fw, _ := os.ReadFile(filepath.Join(dir, "fw.nft")); !strings.Contains(string(fw), "FORCED (--force)") {
		t.Errorf("forced rules do not say so:\n%s", fw)
	}
}
