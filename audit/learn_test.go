package audit

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

func learnServer(extra ...snapshot.Flow) *snapshot.Snapshot {
	s := snap(10*time.Minute, append([]snapshot.Flow{
		depFlow("in", "tcp", 22, "192.0.2.10", 40, 38, synAck(2)),
		depFlow("in", "tcp", 40001, "10.3.0.11", 50, 40, synAck(1)),
		depFlow("in", "udp", 514, "10.2.0.4", 500, 0, snapshot.Evidence{}),
		depFlow("out", "tcp", 443, "203.0.113.80", 30, 25, openOut),
		depFlow("?", "icmpv6", 135<<8, "fe80::1", 3, 3, snapshot.Evidence{}),
	}, extra...)...)
	s.Listening = []snapshot.Socket{
		{Proto: snapshot.UDP, Addr: netip.MustParseAddr("0.0.0.0"), Port: 514},
		{Proto: snapshot.TCP, Addr: netip.MustParseAddr("0.0.0.0"), Port: 8080}, // no traffic
		{Proto: snapshot.TCP, Addr: netip.MustParseAddr("127.0.0.1"), Port: 6000},
	}
	return s
}

func learnSensor() *snapshot.Snapshot {
	return snap(10*time.Minute,
		depFlow("out", "tcp", 40001, "10.9.0.1", 40, 50, openOut),
		depFlow("in", "tcp", 22, "192.0.2.10", 10, 10, synAck(1)),
	)
}

const learnDeployment = `matrix: lab
nodes:
  - {name: server, role: server, snapshot: server.json, addresses: [10.9.0.1]}
  - {name: sensor-a, role: sensor, snapshot: sensor-a.json, addresses: [10.3.0.11]}
`

// TestLearnRoundTrip: a catalog learned from a deployment's snapshots
// loads, declares the site's zones and roles, and the same snapshots
// audited against it give no finding at all; a later snapshot with a new
// service gives one.
func TestLearnRoundTrip(t *testing.T) {
	site, err := catalog.LoadSite("testdata/engine/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dep, err := catalog.ParseDeployment("testdata/engine/learn.yaml", []byte(learnDeployment))
	if err != nil {
		t.Fatal(err)
	}
	server, sensor := learnServer(), learnSensor()
	data, err := Learn([]LearnNode{
		{Name: "server", Role: "server", Addresses: dep.Nodes[0].Addresses, Source: "server.json", Snapshot: server},
		{Name: "sensor-a", Role: "sensor", Addresses: dep.Nodes[1].Addresses, Source: "sensor-a.json", Snapshot: sensor},
	}, LearnOptions{Product: "lab", Site: site})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Parse("lab.yaml", data)
	if err != nil {
		t.Fatalf("learned catalog does not load: %v\n%s", err, data)
	}
	p, _ := cat.Product("lab")
	if err := site.Check(p, p.Latest()); err != nil {
		t.Fatalf("the site does not fit the learned product: %v", err)
	}
	audit := func(srv *snapshot.Snapshot) *DeploymentReport {
		in := &DeploymentInput{Deployment: dep, Product: p, Version: p.Latest(), Conditions: map[string]bool{}, Site: site,
			Snapshots: map[string]*snapshot.Snapshot{"server": srv, "sensor-a": sensor}}
		r, err := RunDeployment(in, depOptions())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := audit(server)
	for _, f := range r.Findings {
		t.Errorf("cross finding on the learned snapshots: %s %s", f.ID, f.Summary)
	}
	for _, n := range r.Nodes {
		for _, f := range n.Report.Findings {
			t.Errorf("node %s: finding on the learned snapshots: %s %s", n.Name, f.ID, f.Summary)
		}
	}
	if t.Failed() {
		t.Logf("learned:\n%s", data)
	}
	later := audit(learnServer(depFlow("in", "tcp", 6379, "192.0.2.10", 4, 3, synAck(1))))
	var ids []string
	for _, n := range later.Nodes {
		for _, f := range n.Report.Findings {
			ids = append(ids, n.Name+":"+f.ID)
		}
	}
	if len(ids) != 1 || ids[0] != "server:unexpected-open-port/tcp/6379" {
		t.Errorf("a new service: findings %q, want server:unexpected-open-port/tcp/6379", ids)
	}
}

// TestLearnNodesFiles: learning from a deployment file reads every
// snapshot and refuses to learn when one is missing.
func TestLearnNodesFiles(t *testing.T) {
	dir := t.TempDir()
	snapshot.WriteFile(filepath.Join(dir, "server.json"), learnServer())
	snapshot.WriteFile(filepath.Join(dir, "sensor-a.json"), learnSensor())
	path := filepath.Join(dir, "dep.yaml")
	os.WriteFile(path, []byte(learnDeployment), 0o644)
	dep, err := catalog.LoadDeployment(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := LearnNodes(dep, LearnOptions{Product: "lab"}, DeploymentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "source: observed") || !strings.Contains(string(data), filepath.Join(dir, "sensor-a.json")) {
		t.Errorf("learned catalog lacks its observed sources:\n%s", data)
	}
	os.Remove(filepath.Join(dir, "sensor-a.json"))
	if _, err := LearnNodes(dep, LearnOptions{Product: "lab"}, DeploymentOptions{}); err == nil || !strings.Contains(err.Error(), "node sensor-a") {
		t.Errorf("missing snapshot: %v", err)
	}
}
