package rules

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

func TestCloudFormationShape(t *testing.T) {
	files, _ := filepath.Glob("testdata/golden/*.aws.json")
	if len(files) == 0 {
		t.Fatal("no golden aws-sg files")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckCloudFormation(data, DefaultAWSMaxRules); err != nil {
			t.Errorf("%s:\n%v", f, err)
		}
	}
	// The checker catches what it should.
	for name, tmpl := range map[string]string{
		"unknown key":   `{"AWSTemplateFormatVersion":"2010-09-09","Description":"x","Resources":{"G":{"Type":"AWS::EC2::SecurityGroup","Properties":{"GroupDescription":"x","SecurityGroupIngress":[{"IpProtocol":"tcp","FromPort":1,"ToPort":2,"CidrIp":"10.0.0.0/8","Port":3}]}}}}`,
		"bad cidr":      `{"AWSTemplateFormatVersion":"2010-09-09","Description":"x","Resources":{"G":{"Type":"AWS::EC2::SecurityGroup","Properties":{"GroupDescription":"x","SecurityGroupIngress":[{"IpProtocol":"tcp","FromPort":1,"ToPort":2,"CidrIp":"10.0.0.1/8"}]}}}}`,
		"bad chars":     `{"AWSTemplateFormatVersion":"2010-09-09","Description":"x","Resources":{"G":{"Type":"AWS::EC2::SecurityGroup","Properties":{"GroupDescription":"x","SecurityGroupIngress":[{"IpProtocol":"tcp","FromPort":1,"ToPort":2,"CidrIp":"10.0.0.0/8","Description":"a\"b"}]}}}}`,
		"gre ports":     `{"AWSTemplateFormatVersion":"2010-09-09","Description":"x","Resources":{"G":{"Type":"AWS::EC2::SecurityGroup","Properties":{"GroupDescription":"x","SecurityGroupIngress":[{"IpProtocol":"47","FromPort":1,"ToPort":2,"CidrIp":"10.0.0.0/8"}]}}}}`,
		"missing ports": `{"AWSTemplateFormatVersion":"2010-09-09","Description":"x","Resources":{"G":{"Type":"AWS::EC2::SecurityGroup","Properties":{"GroupDescription":"x","SecurityGroupIngress":[{"IpProtocol":"udp","CidrIp":"10.0.0.0/8"}]}}}}`,
		"two peers":     `{"AWSTemplateFormatVersion":"2010-09-09","Description":"x","Resources":{"G":{"Type":"AWS::EC2::SecurityGroup","Properties":{"GroupDescription":"x","SecurityGroupIngress":[{"IpProtocol":"udp","FromPort":1,"ToPort":1,"CidrIp":"10.0.0.0/8","CidrIpv6":"::/0"}]}}}}`,
		"dangling ref":  `{"AWSTemplateFormatVersion":"2010-09-09","Description":"x","Resources":{"G":{"Type":"AWS::EC2::SecurityGroup","Properties":{"GroupDescription":"x","VpcId":{"Ref":"Nope"}}}}}`,
	} {
		if err := CheckCloudFormation([]byte(tmpl), 60); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// manyPeers is a snapshot with n inbound peers on tcp/443 (no two
// adjacent, so no merging) and one on tcp/22.
func manyPeers(n int) *snapshot.Snapshot {
	var flows []snapshot.Flow
	for i := 0; i < n; i++ {
		flows = append(flows, fl("in", "tcp", 443, netip.AddrFrom4([4]byte{10, byte(i / 100), byte(i % 100), 1}).String()))
	}
	return mksnap(flows...)
}

func TestAWSQuota(t *testing.T) {
	// 60 IPv4 ingress rules fit one group.
	rs := build(t, manyPeers(60), Options{})
	var buf bytes.Buffer
	if err := Render(&buf, rs, AWSSG, RenderOptions{}); err != nil {
		t.Fatalf("60 rules: %v", err)
	}
	if err := CheckCloudFormation(buf.Bytes(), 60); err != nil {
		t.Fatal(err)
	}

	// 61 fail, with the reasons and the ways out.
	rs = build(t, manyPeers(61), Options{})
	buf.Reset()
	err := Render(&buf, rs, AWSSG, RenderOptions{})
	if err == nil || buf.Len() != 0 {
		t.Fatalf("61 rules: err %v, %d bytes written", err, buf.Len())
	}
	for _, want := range []string{"61 ingress-ipv4 rules exceed the quota of 60", "prefix list would not help", "--aggregate", "--aws-max-rules", "--aws-spill groups"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}

	// A raised quota.
	buf.Reset()
	if err := Render(&buf, rs, AWSSG, RenderOptions{AWSMaxRules: 100}); err != nil {
		t.Errorf("--aws-max-rules 100: %v", err)
	}

	// Spilled into groups of at most 60, every rule kept once.
	rs = build(t, manyPeers(130), Options{})
	buf.Reset()
	if err := Render(&buf, rs, AWSSG, RenderOptions{AWSSpill: "groups"}); err != nil {
		t.Fatal(err)
	}
	if err := CheckCloudFormation(buf.Bytes(), 60); err != nil {
		t.Fatal(err)
	}
	var tmpl awsTemplate
	if err := json.Unmarshal(buf.Bytes(), &tmpl); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, name := range []string{"FlowauditSecurityGroup", "FlowauditSecurityGroup2", "FlowauditSecurityGroup3"} {
		g, ok := tmpl.Resources[name]
		if !ok {
			t.Fatalf("no %s", name)
		}
		for _, r := range g.Properties.SecurityGroupIngress {
			if seen[r.CidrIP] {
				t.Errorf("%s twice", r.CidrIP)
			}
			seen[r.CidrIP] = true
		}
	}
	if len(seen) != 130 || len(tmpl.Resources) != 3 {
		t.Errorf("%d rules in %d groups, want 130 in 3", len(seen), len(tmpl.Resources))
	}

	// More than 5 groups' worth fails even when spilling.
	rs = build(t, manyPeers(301), Options{})
	if err := Render(&buf, rs, AWSSG, RenderOptions{AWSSpill: "groups"}); err == nil || !strings.Contains(err.Error(), "6 security groups") {
		t.Errorf("301 rules spilled: %v", err)
	}

	// IPv4 and IPv6 are counted apart: 60 + 60 fit.
	s := manyPeers(60)
	for i := 0; i < 60; i++ {
		s.Flows = append(s.Flows, fl("in", "tcp", 443, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 8: byte(i), 15: 1}).String()))
	}
	buf.Reset()
	if err := Render(&buf, build(t, s, Options{}), AWSSG, RenderOptions{}); err != nil {
		t.Errorf("60 IPv4 + 60 IPv6: %v", err)
	}

	// Egress drop with no outbound allowance replaces the default egress
	// rule by one that matches nothing.
	rs = build(t, mksnap(fl("in", "tcp", 22, "192.0.2.7")), Options{EgressPolicy: Drop, AllowQuiet: true})
	buf.Reset()
	if err := Render(&buf, rs, AWSSG, RenderOptions{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"CidrIp": "127.0.0.1/32"`) {
		t.Errorf("default egress not replaced:\n%s", buf.String())
	}
}

func TestAzure(t *testing.T) {
	files, _ := filepath.Glob("testdata/golden/*.azure.sh")
	for _, f := range files {
		data, _ := os.ReadFile(f)
		if err := CheckAzureScript(string(data)); err != nil {
			t.Errorf("%s:\n%v", f, err)
		}
	}
	// Priorities: spaced by 10 from 100, squeezed (still ordered, below
	// the deny) only when they would not fit, an error beyond.
	for _, tc := range []struct {
		n           int
		first, last int
		step        int
	}{{1, 100, 100, 0}, {3, 100, 120, 10}, {400, 100, 4090, 10}, {401, 100, 3700, 9}, {3996, 100, 4095, 1}} {
		p, err := AzurePriorities(tc.n)
		if err != nil {
			t.Fatalf("%d: %v", tc.n, err)
		}
		if p[0] != tc.first || p[len(p)-1] != tc.last || (tc.n > 1 && p[1]-p[0] != tc.step) {
			t.Errorf("%d rules: first %d last %d step %d", tc.n, p[0], p[len(p)-1], p[1]-p[0])
		}
	}
	if _, err := AzurePriorities(3997); err == nil {
		t.Error("3997 rules fit")
	}
	// Stable: the same rules get the same priorities and names, whatever
	// the order of the flows in the snapshot.
	snap, m, site := fixture(t)
	render := func(s *snapshot.Snapshot) string {
		var buf bytes.Buffer
		// an idle admin session over IPv6 that only the guard keeps
		idle := []Session{{Peer: netip.MustParseAddr("2001:db8:a::10"), Service: Service{snapshot.TCP, 22}, Why: "SSH_CONNECTION"}}
		if err := Render(&buf, build(t, s, Options{Matrix: m, Site: site, EgressPolicy: Drop, Sessions: idle}), AzureNSG, RenderOptions{}); err != nil {
			t.Fatal(err)
		}
		return buf.String()
	}
	a := render(snap)
	rev := *snap
	rev.Flows = nil
	for i := len(snap.Flows) - 1; i >= 0; i-- {
		rev.Flows = append(rev.Flows, snap.Flows[i])
	}
	if b := render(&rev); a != b {
		t.Error("flow order changes the Azure script")
	}
	if !strings.Contains(a, "--name flowaudit-in-0100 --priority 100 --direction Inbound --access Allow --protocol Tcp --source-address-prefixes 2001:db8:a::10/128 --source-port-ranges '*' --destination-address-prefixes '*' --destination-port-ranges 22 ") {
		t.Errorf("the management session is not the first rule:\n%s", a)
	}
	if !strings.Contains(a, "NOT ADDED: NSG rules cannot match gre") {
		t.Error("GRE not reported as impossible")
	}
}

// TestProductNotes: the container note about UTMStack v11 is said in the
// host firewall files of UTMStack v11, and in no other product's files;
// the generic Docker caveat names no product.
func TestProductNotes(t *testing.T) {
	cat, err := catalog.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	matrix := func(ref, role string) *catalog.Matrix {
		p, v, err := cat.Resolve(ref)
		if err != nil {
			t.Fatal(err)
		}
		m, err := p.Effective(v, role, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	snap := mksnap(fl("in", "tcp", 22, "192.0.2.20"))
	render := func(m *catalog.Matrix, target Target) string {
		rs := build(t, snap, Options{Mode: Observed, Matrix: m, NoManagementGuard: true})
		var buf bytes.Buffer
		if err := Render(&buf, rs, target, RenderOptions{}); err != nil {
			t.Fatalf("%s %s: %v", m.Product, target, err)
		}
		return buf.String()
	}
	hostTargets := []Target{NFTables, IPTables, UFW}
	for _, mx := range []*catalog.Matrix{matrix("usm@5.6.5", "server"), matrix("vsos", "scanning-server"), matrix("utmstack@10", "master")} {
		for _, target := range append(hostTargets, AWSSG, AzureNSG) {
			out := render(mx, target)
			if strings.Contains(out, "UTMStack v11") || strings.Contains(out, "UTMStack v11 runs") {
				t.Errorf("%s %s (%s): carries UTMStack v11's note:\n%s", mx.Product, mx.Version, target, out)
			}
			if target != AWSSG && target != AzureNSG && !strings.Contains(out, "DOCKER-USER") {
				t.Errorf("%s %s (%s): the generic Docker caveat is missing", mx.Product, mx.Version, target)
			}
		}
	}
	u11 := matrix("utmstack@11", "manager")
	for _, target := range hostTargets {
		if out := render(u11, target); !strings.Contains(out, "UTMStack v11 runs its services in Docker containers") {
			t.Errorf("utmstack@11 %s: no container note:\n%s", target, out)
		}
	}
	for _, target := range []Target{AWSSG, AzureNSG} {
		if out := render(u11, target); strings.Contains(out, "runs its services in Docker") {
			t.Errorf("utmstack@11 %s: a host firewall note in a cloud target", target)
		}
	}
}
