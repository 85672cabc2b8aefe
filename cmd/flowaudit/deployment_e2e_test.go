package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// labNode is one namespace of the deployment lab, linked to the router.
type labNode struct {
	name, role string
	host       *testenv.Host
	addr       netip.Addr
	gw         netip.Addr
}

// deploymentLab builds a routed lab of UTMStack v11 nodes: a router
// namespace with one veth link (a /28 of 192.0.2.0/24) per node, IPv4
// only, forwarding on. Everything is removed at cleanup.
func deploymentLab(t *testing.T) (router string, nodes []*labNode) {
	t.Helper()
	testenv.RequireNetns(t)
	testenv.RequireTool(t, "nft")
	sfx := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	router = "fa-dr-" + sfx
	run("ip", "netns", "add", router)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", router).Run() }) //nolint:errcheck
	quiet := []string{"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"}
	run(append([]string{"ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"}, quiet...)...)
	for i, nd := range []struct{ name, role string }{{"manager", "manager"}, {"worker", "worker"}, {"agent-1", "agent"}, {"agent-2", "agent"}} {
		ns := fmt.Sprintf("fa-d%d-%s", i, sfx)
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() }) //nolint:errcheck
		run(append([]string{"ip", "netns", "exec", ns, "sysctl", "-qw"}, quiet...)...)
		in, out := fmt.Sprintf("d%d%s", i, sfx), fmt.Sprintf("r%d%s", i, sfx)
		run("ip", "link", "add", in, "netns", ns, "type", "veth", "peer", "name", out, "netns", router)
		base := 16 * i
		gw := netip.AddrFrom4([4]byte{192, 0, 2, byte(base + 1)})
		addr := netip.AddrFrom4([4]byte{192, 0, 2, byte(base + 10)})
		run("ip", "-n", router, "addr", "add", gw.String()+"/28", "dev", out)
		run("ip", "-n", ns, "addr", "add", addr.String()+"/28", "dev", in)
		for _, n := range []struct{ ns, dev string }{{router, out}, {ns, in}} {
			run("ip", "netns", "exec", n.ns, "ethtool", "-K", n.dev, "tso", "off", "gso", "off", "gro", "off")
			run("ip", "-n", n.ns, "link", "set", n.dev, "up")
		}
		run("ip", "-n", ns, "link", "set", "lo", "up")
		run("ip", "-n", ns, "route", "add", "default", "via", gw.String())
		h, err := netns.GetFromName(ns)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		nodes = append(nodes, &labNode{name: nd.name, role: nd.role, host: &testenv.Host{Name: ns, Iface: in, IPv4: addr, NS: h}, addr: addr, gw: gw})
	}
	return router, nodes
}

// labListen starts TCP (bounded accept loop) and UDP (bounded read loop)
// services in a node; stop closes them.
func labListen(t *testing.T, n *labNode, tcp, udp []uint16) (stop func()) {
	t.Helper()
	var closers []func()
	for _, p := range tcp {
		var ln net.Listener
		if err := n.host.Do(func() (err error) { ln, err = net.Listen("tcp4", netip.AddrPortFrom(n.addr, p).String()); return }); err != nil {
			t.Fatal(err)
		}
		closers = append(closers, func() { ln.Close() })
		go func() {
			for i := 0; i < 1000; i++ {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("ok\n")) //nolint:errcheck
				c.Close()
			}
		}()
	}
	for _, p := range udp {
		var pc net.PacketConn
		if err := n.host.Do(func() (err error) { pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(n.addr, p).String()); return }); err != nil {
			t.Fatal(err)
		}
		closers = append(closers, func() { pc.Close() })
		go func() {
			buf := make([]byte, 2048)
			for i := 0; i < 1000; i++ {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
			}
		}()
	}
	stop = func() {
		for _, c := range closers {
			c()
		}
	}
	t.Cleanup(stop)
	return stop
}

// labDial connects from n to each TCP port of to (reading the greeting),
// and sends datagrams to each UDP port. blocked ports must time out.
func labDial(t *testing.T, n *labNode, to netip.Addr, tcp, udp, blocked []uint16) {
	t.Helper()
	if err := n.host.Do(func() error {
		for _, p := range tcp {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(to, p).String(), 3*time.Second)
			if err != nil {
				return fmt.Errorf("%s → %s:%d: %w", n.name, to, p, err)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second)) //nolint:errcheck
			buf := make([]byte, 3)
			c.Read(buf) //nolint:errcheck
			c.Close()
		}
		for _, p := range blocked {
			if c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(to, p).String(), 1500*time.Millisecond); err == nil {
				c.Close()
				return fmt.Errorf("%s → %s:%d should be dropped in between", n.name, to, p)
			}
		}
		for _, p := range udp {
			c, err := net.Dial("udp4", netip.AddrPortFrom(to, p).String())
			if err != nil {
				return err
			}
			for i := 0; i < 3; i++ {
				c.Write([]byte("lab datagram")) //nolint:errcheck
			}
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// The UTMStack v11 multi-node matrix: what cluster nodes serve each other,
// what agents use on the manager.
var (
	clusterTCP = []uint16{2377, 7946, 9200, 9300}
	clusterUDP = []uint16{4789, 7946}
	agentTCP   = []uint16{9000, 9001, 50051}
)

// recordLab runs `flowaudit record` in every node at once, runs traffic,
// then stops every recorder with SIGTERM (so the windows end together,
// however long each took to start on a loaded machine) and returns the
// snapshot paths once each was written. The snapshots say they were
// interrupted (audit-incomplete/interrupted), which the checks allow for.
func recordLab(t *testing.T, dir string, nodes []*labNode, traffic func()) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type rec struct {
		cmd   *exec.Cmd
		lines <-chan string
	}
	recs := map[string]rec{}
	paths := map[string]string{}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		p := filepath.Join(dir, n.name+".json")
		paths[n.name] = p
		cmd, lines := startInNS(t, ctx, n.host, nil, "record", "--iface", n.host.Iface, "--duration", "10m", "--out", p)
		recs[n.name] = rec{cmd, lines}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill() //nolint:errcheck // only when the test failed half-way
				cmd.Wait()         //nolint:errcheck
			}
		})
	}
	for _, n := range nodes {
		labWaitLog(t, recs[n.name].lines, `"msg":"recording"`)
	}
	traffic()
	time.Sleep(500 * time.Millisecond) // the last answers are on the wire
	for _, n := range nodes {
		if err := recs[n.name].cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		r := recs[n.name]
		logged := labWaitLog(t, r.lines, `"msg":"snapshot written"`)
		if err := r.cmd.Wait(); err != nil {
			t.Fatalf("record in %s: %v\n%s", n.name, err, strings.Join(logged, "\n"))
		}
	}
	return paths
}

// labWaitLog is waitLog with room for four recorders loading their
// programs at once on a busy machine.
func labWaitLog(t *testing.T, lines <-chan string, want string) []string {
	t.Helper()
	return waitLogWithin(t, lines, want, 90*time.Second)
}

// logLabSnapshots logs each snapshot's window and flows, to explain a
// failure.
func logLabSnapshots(t *testing.T, snaps map[string]string) {
	t.Helper()
	for name, p := range snaps {
		s, err := snapshot.ReadFile(p)
		if err != nil {
			t.Logf("%s: %v", name, err)
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s: window %s – %s\n", name, s.Start.Format(time.RFC3339Nano), s.End.Format(time.RFC3339Nano))
		for _, f := range s.Flows {
			fmt.Fprintf(&b, "  %s %s/%d %s in %d out %d %s – %s %+v\n", f.Direction, f.Proto, f.Port, f.Peer, f.PacketsIn, f.PacketsOut,
				f.FirstSeen.Format(time.RFC3339Nano), f.LastSeen.Format(time.RFC3339Nano), f.Evidence)
		}
		t.Log(b.String())
	}
}

func writeDeployment(t *testing.T, path, site string, nodes []*labNode, snaps map[string]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "matrix: utmstack@11\nconditions: [multi-node]\nsite: %s\nnodes:\n", site)
	for _, n := range nodes {
		fmt.Fprintf(&b, "  - name: %s\n    role: %s\n    snapshot: %s\n    addresses: [%s]\n", n.name, n.role, snaps[n.name], n.addr)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestE2EDeploymentLab: four UTMStack v11 nodes (manager, worker, two
// agents) in their own namespaces behind a router, each recording with its
// own `flowaudit record`. Planted in the first recording: the router drops
// worker → manager tcp/2377 (a required cluster port), and agent-1 talks to
// agent-2 on tcp/8443, which no rule documents. `audit --deployment`
// reports exactly those two, with their kinds, and no other high finding
// that is not about them. The second recording (filter removed, no agent ↔
// agent traffic) diffs against the first with the planted change; a
// catalog learned from it passes catalog validate, audits the second
// recording clean and the first with both problems.
func TestE2EDeploymentLab(t *testing.T) {
	router, nodes := deploymentLab(t)
	mgr, wrk, a1, a2 := nodes[0], nodes[1], nodes[2], nodes[3]
	dir := t.TempDir()
	site := filepath.Join(dir, "site.yaml")
	os.WriteFile(site, []byte(fmt.Sprintf("product: utmstack@11\nzones:\n  CLUSTER_NODE_IP: [%s, %s]\n  AGENT_NETWORK: 192.0.2.32/27\n  ADMIN_IP: 192.0.2.200/32\n",
		mgr.addr, wrk.addr)), 0o644)

	labListen(t, mgr, append(slices.Clone(clusterTCP), agentTCP...), clusterUDP)
	labListen(t, wrk, clusterTCP, clusterUDP)
	stopA2 := labListen(t, a2, []uint16{8443}, nil)
	cluster := func(blocked bool) {
		wt := slices.Clone(clusterTCP)
		var bl []uint16
		if blocked {
			wt, bl = clusterTCP[1:], []uint16{2377}
		}
		labDial(t, wrk, mgr.addr, wt, clusterUDP[:1], bl)
		labDial(t, mgr, wrk.addr, clusterTCP, clusterUDP[:1], nil)
		labDial(t, a1, mgr.addr, agentTCP, nil, nil)
		labDial(t, a2, mgr.addr, agentTCP, nil, nil)
	}

	// Recording A: the planted problems.
	nft := exec.Command("ip", "netns", "exec", router, "nft",
		fmt.Sprintf("add table ip lab; add chain ip lab labfwd { type filter hook forward priority 0; }; add rule ip lab labfwd ip saddr %s ip daddr %s tcp dport 2377 drop", wrk.addr, mgr.addr))
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	snapsA := recordLab(t, filepath.Join(dir, "a"), nodes, func() {
		cluster(true)
		labDial(t, a1, a2.addr, []uint16{8443}, nil, nil)
	})
	depA := filepath.Join(dir, "deployment-a.yaml")
	writeDeployment(t, depA, site, nodes, snapsA)
	code, out, errs := runCLI(t, "audit", "--deployment", depA, "--min-window", "100ms", "--format", "json")
	var rep audit.DeploymentReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 2 {
		t.Fatalf("audit A: exit %d, %v\n%s\n%s", code, err, out, errs)
	}
	var cross []string
	for _, f := range rep.Findings {
		cross = append(cross, f.Severity.String()+" "+f.ID)
	}
	sort.Strings(cross)
	want := []string{
		"high inter-role-undocumented/agent-1>agent-2/tcp/8443",
		"high one-sided/worker>manager/tcp/2377",
	}
	if !slices.Equal(cross, want) {
		t.Errorf("cross-node findings\n got %q\nwant %q", cross, want)
	}
	for _, n := range rep.Nodes {
		if n.Status != audit.NodeOK || n.Report == nil {
			t.Errorf("node %s: status %s", n.Name, n.Status)
			continue
		}
		for _, f := range n.Report.Findings {
			if f.Severity == audit.High && f.Port != "2377" && f.Port != "8443" {
				t.Errorf("node %s: high finding not about the planted problems: %s: %s", n.Name, f.ID, f.Summary)
			}
		}
	}
	if t.Failed() {
		logLabSnapshots(t, snapsA)
	}

	// Recording B: the filter removed, agent-2's extra service gone.
	if out, err := exec.Command("ip", "netns", "exec", router, "nft", "delete table ip lab").CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	stopA2()
	snapsB := recordLab(t, filepath.Join(dir, "b"), nodes, func() { cluster(false) })
	depB := filepath.Join(dir, "deployment-b.yaml")
	writeDeployment(t, depB, site, nodes, snapsB)

	// The diff shows the planted change on each end.
	for _, c := range []struct {
		node string
		want []string
	}{
		{"worker", []string{"~  outbound tcp/2377: filtered -> open"}},
		{"manager", []string{"+  inbound tcp/2377 open"}},
		{"agent-1", []string{"-  outbound tcp/8443 open"}},
		{"agent-2", []string{"-  inbound tcp/8443 open", "-  tcp/8443"}},
	} {
		code, out, errs := runCLI(t, "diff", "--site", site, snapsA[c.node], snapsB[c.node])
		if code != 2 {
			t.Errorf("diff %s: exit %d, %s", c.node, code, errs)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("diff %s lacks %q:\n%s", c.node, w, out)
			}
		}
	}

	// Learn from B; validate; B audits clean against it, A does not.
	learned := filepath.Join(dir, "utmlab.yaml")
	if code, _, errs := runCLI(t, "catalog", "learn", "--product", "utmlab", "--deployment", depB, "--out", learned); code != 0 {
		t.Fatalf("learn: exit %d %s", code, errs)
	}
	if code, out, errs := runCLI(t, "catalog", "validate", "--product", "utmlab", learned, site); code != 0 {
		t.Fatalf("validate: exit %d\n%s\n%s", code, out, errs)
	}
	// B against the catalog learned from B: no finding but the
	// recordings' own interruption (they were stopped with SIGTERM).
	_, out, _ = runCLI(t, "audit", "--deployment", depB, "--catalog", learned, "--matrix", "utmlab", "--min-window", "100ms", "--format", "json")
	rep = audit.DeploymentReport{}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("B against the learned catalog: %v\n%s", err, out)
	}
	var extra []string
	for _, f := range rep.Findings {
		extra = append(extra, "cross: "+f.ID)
	}
	for _, n := range rep.Nodes {
		if n.Report == nil {
			extra = append(extra, n.Name+": not audited")
			continue
		}
		for _, f := range n.Report.Findings {
			if f.ID != "audit-incomplete/interrupted" {
				extra = append(extra, n.Name+": "+f.ID+": "+f.Summary)
			}
		}
	}
	if len(extra) > 0 {
		data, _ := os.ReadFile(learned)
		t.Errorf("B against the catalog learned from B: findings %q\nlearned:\n%s", extra, data)
		logLabSnapshots(t, snapsB)
	}
	code, out, _ = runCLI(t, "audit", "--deployment", depA, "--catalog", learned, "--matrix", "utmlab", "--min-window", "100ms", "--format", "json")
	rep = audit.DeploymentReport{}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 2 {
		t.Fatalf("A against the learned catalog: exit %d %v", code, err)
	}
	cross = cross[:0]
	for _, f := range rep.Findings {
		cross = append(cross, f.Severity.String()+" "+f.ID)
	}
	sort.Strings(cross)
	if !slices.Equal(cross, want) {
		t.Errorf("A against the learned catalog: cross-node findings\n got %q\nwant %q", cross, want)
	}
}
