package main

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// The passive DNS lab (docs/DNS.md). Namespace b is the vendor's side: a
// dnsmasq answering for the vendor's names with lab addresses, and the
// vendor's servers on those addresses. Namespace a is the appliance: it
// resolves the names with glibc's resolver (getent, with the resolv.conf
// `ip netns exec` mounts from /etc/netns/NAME/) and dig (TCP, over IPv6),
// connects, and is recorded by the flowaudit binary.
const (
	labFeedAddr   = "192.0.2.10" // feed.cdn.example, the CNAME target of data.example-vendor.com
	labCloudA     = "192.0.2.11" // otx.example-vendor.com, first address
	labCloudB     = "192.0.2.12" // otx.example-vendor.com, second address
	labCloud6     = "2001:db8::11"
	labUpdatesOld = "192.0.2.20" // updates.example-vendor.com before the change
	labUpdatesNew = "192.0.2.21" // … after it
	labTunnel     = "192.0.2.30" // tunnel.example-vendor.com, asked over TCP and IPv6
	labRogue      = "192.0.2.99" // never given for any name
)

func labHosts(updates string) string {
	return labFeedAddr + " feed.cdn.example\n" +
		labCloudA + " otx.example-vendor.com\n" + labCloudB + " otx.example-vendor.com\n" + labCloud6 + " otx.example-vendor.com\n" +
		updates + " updates.example-vendor.com\n" + labTunnel + " tunnel.example-vendor.com\n"
}

// startDNSMasq runs dnsmasq in h, answering from hostsFile (TTL 1 s).
func startDNSMasq(t *testing.T, h *testenv.Host, dir, hostsFile string) *exec.Cmd {
	t.Helper()
	testenv.RequireTool(t, "dnsmasq")
	cmd := h.Command("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--addn-hosts="+hostsFile, "--cname=data.example-vendor.com,feed.cdn.example", "--local-ttl=1",
		"--listen-address="+h.IPv4.String(), "--listen-address="+h.IPv6.String(), "--bind-interfaces",
		"--user=root", "--group=root", "--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--log-facility=-")
	logf, err := os.Create(filepath.Join(dir, "dnsmasq.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck
		cmd.Wait()         //nolint:errcheck
		logf.Close()
	})
	// Ready when it answers (bounded).
	for i := 0; ; i++ {
		out, err := h.Command("dig", "+short", "+time=1", "+tries=1", "@"+h.IPv4.String(), "feed.cdn.example").Output()
		if err == nil && strings.TrimSpace(string(out)) == labFeedAddr {
			return cmd
		}
		if i == 50 {
			log, _ := os.ReadFile(filepath.Join(dir, "dnsmasq.log"))
			t.Fatalf("dnsmasq does not answer: %v %q\n%s", err, out, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// resolve asks glibc's resolver in h's namespace (getent ahostsv4/v6,
// through `ip netns exec`, which mounts /etc/netns/NAME/resolv.conf).
func resolve(t *testing.T, h *testenv.Host, family, name string) []netip.Addr {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", h.Name, "getent", "ahosts"+family, name).CombinedOutput()
	if err != nil {
		t.Fatalf("getent ahosts%s %s: %v\n%s", family, name, err, out)
	}
	seen := map[netip.Addr]bool{}
	var addrs []netip.Addr
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err == nil && !seen[a] {
			seen[a] = true
			addrs = append(addrs, a.Unmap())
		}
	}
	return addrs
}

// TestE2EPassiveDNS: the appliance resolves its vendor's names (one
// through a CNAME, one with two IPv4 addresses and an IPv6 one, one whose
// address changes mid-recording, one asked over TCP and IPv6) and
// connects, and once to an address no answer gave; the recording learns
// the names and the audit matches the flows by name, flagging the stray
// one with the names the rule allows.
func TestE2EPassiveDNS(t *testing.T) {
	a, b := testenv.NewPair(t)
	testenv.RequireTool(t, "dig")
	testenv.RequireTool(t, "getent")
	dir := t.TempDir()
	for _, addr := range []string{labFeedAddr, labCloudA, labCloudB, labUpdatesOld, labUpdatesNew, labTunnel, labRogue} {
		b.Exec("ip", "addr", "add", addr+"/32", "dev", b.Iface)
	}
	b.Exec("ip", "addr", "add", labCloud6+"/128", "dev", b.Iface, "nodad")
	for _, port := range []int{80, 443, 8080} {
		serveTCP(t, b, port)
	}
	hostsFile := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hostsFile, []byte(labHosts(labUpdatesOld)), 0o644); err != nil {
		t.Fatal(err)
	}
	dnsmasq := startDNSMasq(t, b, dir, hostsFile)

	// The appliance's resolver: /etc/netns/NAME/resolv.conf.
	etc := filepath.Join("/etc/netns", a.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+b.IPv4.String()+"\noptions timeout:1 attempts:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	snapPath := filepath.Join(dir, "snap.json")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rec, logs := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface, "--duration", "6s", "--out", snapPath)
	logged := waitLog(t, logs, `"msg":"recording"`)

	connect := func(addrs []netip.Addr, port uint16) {
		t.Helper()
		for _, ad := range addrs {
			if err := talk(a, netip.AddrPortFrom(ad, port), 1, 2*time.Second); err != nil {
				t.Fatalf("connect %s: %v", netip.AddrPortFrom(ad, port), err)
			}
		}
	}
	want := func(got []netip.Addr, want ...string) {
		t.Helper()
		var g []string
		for _, x := range got {
			g = append(g, x.String())
		}
		if strings.Join(g, " ") != strings.Join(want, " ") {
			t.Fatalf("resolved %v, want %v", g, want)
		}
	}
	feed := resolve(t, a, "v4", "data.example-vendor.com")
	want(feed, labFeedAddr)
	connect(feed, 80)
	cloud := resolve(t, a, "v4", "otx.example-vendor.com")
	want(cloud, labCloudA, labCloudB)
	connect(cloud, 443)
	cloud6 := resolve(t, a, "v6", "otx.example-vendor.com")
	want(cloud6, labCloud6)
	connect(cloud6, 443)
	upd := resolve(t, a, "v4", "updates.example-vendor.com")
	want(upd, labUpdatesOld)
	connect(upd, 8080)
	// The vendor moves updates.example-vendor.com (TTL 1 s).
	if err := os.WriteFile(hostsFile, []byte(labHosts(labUpdatesNew)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := dnsmasq.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if upd = resolve(t, a, "v4", "updates.example-vendor.com"); len(upd) == 1 && upd[0].String() == labUpdatesNew {
			break
		}
		if i == 30 {
			t.Fatalf("updates.example-vendor.com still %v after the change", upd)
		}
		time.Sleep(100 * time.Millisecond)
	}
	connect(upd, 8080)
	// Over TCP and IPv6, with dig.
	if out := strings.TrimSpace(a.Exec("dig", "+tcp", "+short", "+time=2", "+tries=1", "@"+b.IPv6.String(), "tunnel.example-vendor.com")); out != labTunnel {
		t.Fatalf("dig +tcp over IPv6: %q", out)
	}
	// The stray connection: an address no answer gave.
	connect([]netip.Addr{netip.MustParseAddr(labRogue)}, 80)

	for l := range logs {
		logged = append(logged, l)
	}
	if err := rec.Wait(); err != nil {
		t.Fatalf("record: %v\n%s", err, strings.Join(logged, "\n"))
	}
	snap, err := snapshot.ReadFile(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	if snap.DNS == nil {
		t.Fatal("snapshot without a dns section")
	}
	if snap.DNS.Dropped != 0 || snap.DNS.Unparsed != 0 {
		t.Errorf("dns: %d dropped, %d unparsed", snap.DNS.Dropped, snap.DNS.Unparsed)
	}
	learned := map[string]bool{}
	for _, n := range snap.DNS.Names {
		learned[n.Addr.String()+" "+n.Name] = true
	}
	for _, w := range []string{
		labFeedAddr + " data.example-vendor.com", labFeedAddr + " feed.cdn.example",
		labCloudA + " otx.example-vendor.com", labCloudB + " otx.example-vendor.com", labCloud6 + " otx.example-vendor.com",
		labUpdatesOld + " updates.example-vendor.com", labUpdatesNew + " updates.example-vendor.com",
		labTunnel + " tunnel.example-vendor.com",
	} {
		if !learned[w] {
			t.Errorf("not learned: %s (learned %v)", w, learned)
		}
	}
	for k := range learned {
		if strings.HasPrefix(k, labRogue+" ") {
			t.Errorf("learned a name for the stray address: %s", k)
		}
	}

	// The audit, by the binary.
	reportPath := filepath.Join(dir, "report.json")
	cmd := exec.Command(flowauditBinary(t), "audit", "--catalog", "testdata/dns-lab-catalog.yaml", "--matrix", "dnslab", "--role", "sensor",
		"--snapshot", snapPath, "--min-window", "1s", "--format", "json", "--out", reportPath)
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != exitFindings {
		t.Fatalf("audit: %v, want exit %d (findings)\n%s", err, exitFindings, out)
	}
	var rep audit.Report
	if err := json.Unmarshal([]byte(mustRead(t, reportPath)), &rep); err != nil {
		t.Fatal(err)
	}
	status := map[string]audit.RuleStatus{}
	for _, rs := range rep.Rules {
		status[strings.TrimPrefix(rs.Rule.ID, "dl1.sensor.")] = rs
	}
	for id, peers := range map[string]int{"feed": 1, "cloud": 3, "updates": 2} {
		rs := status[id]
		if rs.Status != audit.StatusSeen || rs.Allowed.Peers != peers {
			t.Errorf("rule %s: status %s with %d allowed peers, want seen with %d", id, rs.Status, rs.Allowed.Peers, peers)
		}
	}
	if st := status["feed"]; len(st.Allowed.TopPeers) != 1 || strings.Join(st.Allowed.TopPeers[0].Names, ",") != "data.example-vendor.com,feed.cdn.example" {
		t.Errorf("feed peers: %+v", st.Allowed.TopPeers)
	}
	var flagged bool
	for _, f := range rep.Findings {
		if f.Kind == audit.PeerOutOfZone && f.Port == "80" {
			flagged = len(f.Evidence.TopPeers) == 1 && f.Evidence.TopPeers[0].Addr.String() == labRogue &&
				strings.Contains(f.Summary, "reached "+labRogue+" (no DNS name seen for it)") &&
				strings.Contains(f.Summary, "allowed: data.example-vendor.com (1 address seen in DNS answers)")
			if !flagged {
				t.Errorf("stray flow finding: %s %+v", f.Summary, f.Evidence.TopPeers)
			}
		}
	}
	if !flagged {
		t.Errorf("the connection to %s was not flagged:\n%s", labRogue, out)
	}
	for _, row := range rep.Observed {
		if row.Port == "80" && (row.Cells["dns:data.example-vendor.com"] == 0 || row.OutOfZone["other"] == 0) {
			t.Errorf("heat-map tcp/80: cells %v, out of zone %v", row.Cells, row.OutOfZone)
		}
	}
}
