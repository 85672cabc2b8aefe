package main

import (
	"encoding/binary"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

func TestReplayFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"replay", "--out", "x.json"}, "exactly one capture file"},
		{[]string{"replay", "a.pcap", "b.pcap", "--out", "x.json"}, "exactly one capture file"},
		{[]string{"replay", "a.pcap"}, "--out is required"},
		{[]string{"replay", "a.pcap", "-o", "x.json", "--local-addr", "192.0.2.300"}, "not an address or prefix"},
		{[]string{"replay", "a.pcap", "-o", "x.json", "--local-addr", "192.0.2.0/33"}, "--local-addr"},
		{[]string{"replay", "a.pcap", "-o", "x.json", "--listening", "icmp/8"}, "want tcp/PORT"},
		{[]string{"replay", "a.pcap", "-o", "x.json", "--listening", "tcp/0"}, "port must be 1-65535"},
		{[]string{"replay", "a.pcap", "-o", "x.json", "--ephemeral-ports", "60999-32768"}, "want LOW-HIGH"},
		{[]string{"replay", "a.pcap", "-o", "x.json", "--ingress", "af_packet"}, "want xdp or tc"},
		{[]string{"replay", "a.pcap", "-o", "x.json", "--max-flows", "0"}, "--max-flows"},
	} {
		code, _, errb := runCLI(t, tc.args...)
		if code != exitError || !strings.Contains(errb, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 mentioning %q", tc.args, code, errb, tc.want)
		}
	}
	code, out, _ := runCLI(t, "replay", "--help")
	if code != exitClean || !strings.Contains(out, "--local-addr") || !strings.Contains(out, "Examples:") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
}

func TestReplayParsers(t *testing.T) {
	ps, err := parsePrefixes([]string{"192.0.2.10", " 2001:db8::/64", "::ffff:198.51.100.1", "192.0.2.77/24"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.10/32", "2001:db8::/64", "198.51.100.1/32", "192.0.2.0/24"}
	for i, p := range ps {
		if p.String() != want[i] {
			t.Errorf("prefix %d: %s, want %s", i, p, want[i])
		}
	}
	ls, err := parseListening([]string{"tcp/8443", "udp/514", "sctp/3868"})
	if err != nil || len(ls) != 3 || ls[0].Proto != snapshot.TCP || ls[0].Port != 8443 || ls[2].Proto != snapshot.SCTP {
		t.Errorf("listening %+v %v", ls, err)
	}
	if r, err := parsePortRange("1024-65535"); err != nil || r != [2]uint16{1024, 65535} {
		t.Errorf("port range %v %v", r, err)
	}
	for _, bad := range []string{"", "1024", "0-10", "10-70000", "a-b"} {
		if _, err := parsePortRange(bad); err == nil {
			t.Errorf("port range %q accepted", bad)
		}
	}
}

// labCapture is a capture taken on the lab appliance of testdata/lab-*.yaml
// (192.0.2.1): a client (192.0.2.2) uses the documented https and syslog
// ports and gets an answer on an undocumented 6379.
func labCapture(t *testing.T) []byte {
	t.Helper()
	app, cli := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	macApp, macCli := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	var b strings.Builder
	w := pcapgo.NewWriter(&b)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2026, 11, 26, 7, 0, 0, 0, time.UTC)
	write := func(src, dst netip.Addr, l4 gopacket.SerializableLayer, proto layers.IPProtocol) {
		smac, dmac := macCli, macApp
		if src == app {
			smac, dmac = macApp, macCli
		}
		buf := gopacket.NewSerializeBuffer()
		err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
			&layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
			l4, gopacket.Payload("data"))
		if err != nil {
			t.Fatal(err)
		}
		ts = ts.Add(3 * time.Second)
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	tcp := func(s, d uint16, syn, ack bool) *layers.TCP {
		return &layers.TCP{SrcPort: layers.TCPPort(s), DstPort: layers.TCPPort(d), SYN: syn, ACK: ack, DataOffset: 5, Window: 512}
	}
	for _, port := range []uint16{8443, 6379} {
		write(cli, app, tcp(41000, port, true, false), layers.IPProtocolTCP)
		write(app, cli, tcp(port, 41000, true, true), layers.IPProtocolTCP)
		write(cli, app, tcp(41000, port, false, true), layers.IPProtocolTCP)
	}
	write(cli, app, &layers.UDP{SrcPort: 41001, DstPort: 514}, layers.IPProtocolUDP)
	return []byte(b.String())
}

// TestReplayCLIThenAudit: replay writes a snapshot that audit reads
// unchanged, and the findings are those of the traffic in the capture.
func TestReplayCLIThenAudit(t *testing.T) {
	testenv.RequireBPF(t)
	dir := t.TempDir()
	capPath := filepath.Join(dir, "lab.pcap")
	if err := os.WriteFile(capPath, labCapture(t), 0o644); err != nil {
		t.Fatal(err)
	}
	snapPath := filepath.Join(dir, "snap.json")
	code, _, errb := runCLI(t, "replay", capPath, "--out", snapPath)
	if code != exitClean {
		t.Fatalf("replay exit %d\n%s", code, errb)
	}
	for _, want := range []string{"local address", "192.0.2.1", "heuristic", "replayed", "snapshot written"} {
		if !strings.Contains(errb, want) {
			t.Errorf("replay log lacks %q:\n%s", want, errb)
		}
	}
	s, err := snapshot.ReadFile(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	if s.Source != "replay:lab.pcap" || s.Window() != 18*time.Second || len(s.Flows) != 3 {
		t.Errorf("snapshot source %q window %s flows %d", s.Source, s.Window(), len(s.Flows))
	}

	report := filepath.Join(dir, "report.json")
	code, _, errb = runCLI(t, "audit", "--catalog", "testdata/lab-catalog.yaml", "--matrix", "labapp", "--role", "server",
		"--site", "testdata/lab-site.yaml", "--snapshot", snapPath, "--min-window", "1s", "--format", "json", "--out", report)
	if code != exitFindings {
		t.Fatalf("audit exit %d, want %d (findings)\n%s", code, exitFindings, errb)
	}
	var rep audit.Report
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range rep.Findings {
		if f.Kind == audit.UnexpectedOpenPort && strings.Contains(f.Port, "6379") {
			found = true
		}
	}
	if !found {
		t.Errorf("no unexpected-open-port finding for tcp/6379 in %s", raw)
	}
}

// TestReplayCLIDamagedCapture: a capture cut short still gives a snapshot;
// the exit code says so unless --allow-truncated. An unsupported link type
// writes nothing.
func TestReplayCLIDamagedCapture(t *testing.T) {
	testenv.RequireBPF(t)
	dir := t.TempDir()
	full := labCapture(t)
	capPath := filepath.Join(dir, "cut.pcap")
	if err := os.WriteFile(capPath, full[:len(full)-10], 0o644); err != nil {
		t.Fatal(err)
	}
	snapPath := filepath.Join(dir, "snap.json")
	code, _, errb := runCLI(t, "replay", capPath, "--out", snapPath)
	if code != exitError || !strings.Contains(errb, "packet 7: cut short") {
		t.Errorf("cut capture: exit %d, want 1 naming packet 7\n%s", code, errb)
	}
	s, err := snapshot.ReadFile(snapPath)
	if err != nil {
		t.Fatalf("no snapshot of the packets before the cut: %v", err)
	}
	if n := s.Stats.PacketsIngress + s.Stats.PacketsEgress; n != 6 {
		t.Errorf("partial snapshot has %d packets, want 6", n)
	}
	if code, _, errb := runCLI(t, "replay", capPath, "--out", snapPath, "--allow-truncated"); code != exitClean {
		t.Errorf("--allow-truncated: exit %d\n%s", code, errb)
	}

	wifi := append([]byte(nil), full[:24]...)
	wifi[20] = 127 // LINKTYPE_IEEE802_11_RADIOTAP, little-endian header
	wifiPath := filepath.Join(dir, "wifi.pcap")
	if err := os.WriteFile(wifiPath, wifi, 0o644); err != nil {
		t.Fatal(err)
	}
	none := filepath.Join(dir, "none.json")
	code, _, errb = runCLI(t, "replay", wifiPath, "--out", none)
	if code != exitError || !strings.Contains(errb, "unsupported link type IEEE 802.11 radiotap (127)") {
		t.Errorf("radiotap: exit %d\n%s", code, errb)
	}
	if _, err := os.Stat(none); err == nil {
		t.Error("a snapshot was written for an unsupported capture")
	}
}

// TestReplayCLIBadTimestamps: a pcapng whose fourth packet carries a 64-bit
// timestamp in the year ~586 000 gives a snapshot and exit code 0; the
// packet is named in a warning. A netlink capture is refused by name.
func TestReplayCLIBadTimestamps(t *testing.T) {
	testenv.RequireBPF(t)
	dir := t.TempDir()
	r, err := pcapgo.NewReader(strings.NewReader(string(labCapture(t))))
	if err != nil {
		t.Fatal(err)
	}
	var ng []byte
	block := func(typ uint32, body []byte) {
		for len(body)%4 != 0 {
			body = append(body, 0)
		}
		n := uint32(12 + len(body))
		ng = binary.LittleEndian.AppendUint32(ng, typ)
		ng = binary.LittleEndian.AppendUint32(ng, n)
		ng = append(ng, body...)
		ng = binary.LittleEndian.AppendUint32(ng, n)
	}
	block(0x0A0D0D0A, []byte{0x4D, 0x3C, 0x2B, 0x1A, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	block(1, []byte{1, 0, 0, 0, 0, 0, 4, 0}) // Ethernet, snap length 262144
	for i := 1; ; i++ {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		us := uint64(ci.Timestamp.UnixMicro())
		if i == 4 {
			us = ^uint64(0) - 1000
		}
		body := binary.LittleEndian.AppendUint32(nil, 0)
		body = binary.LittleEndian.AppendUint32(body, uint32(us>>32))
		body = binary.LittleEndian.AppendUint32(body, uint32(us))
		body = binary.LittleEndian.AppendUint32(body, uint32(len(data)))
		body = binary.LittleEndian.AppendUint32(body, uint32(len(data)))
		block(6, append(body, data...))
	}
	capPath := filepath.Join(dir, "far.pcapng")
	if err := os.WriteFile(capPath, ng, 0o644); err != nil {
		t.Fatal(err)
	}
	snapPath := filepath.Join(dir, "snap.json")
	code, _, errb := runCLI(t, "replay", capPath, "--out", snapPath)
	if code != exitClean || !strings.Contains(errb, "timestamp out of range") || !strings.Contains(errb, `"packet": 4`) {
		t.Errorf("exit %d, want 0 and a warning naming packet 4\n%s", code, errb)
	}
	s, err := snapshot.ReadFile(snapPath)
	if err != nil {
		t.Fatalf("no snapshot: %v", err)
	}
	if s.End.Year() != 2026 || s.Stats.PacketsIngress+s.Stats.PacketsEgress != 7 {
		t.Errorf("snapshot end %s, %d packets; want 2026 and all 7", s.End, s.Stats.PacketsIngress+s.Stats.PacketsEgress)
	}

	netlink := append([]byte(nil), labCapture(t)[:24]...)
	netlink[20] = 253 // LINKTYPE_NETLINK
	nlPath := filepath.Join(dir, "nl.pcap")
	if err := os.WriteFile(nlPath, netlink, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errb = runCLI(t, "replay", nlPath, "--out", filepath.Join(dir, "nl.json"))
	if code != exitError || !strings.Contains(errb, "unsupported link type Linux netlink (253): replay reads") {
		t.Errorf("netlink: exit %d\n%s", code, errb)
	}
}
