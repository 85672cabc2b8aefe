package catalog

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/vocab"
)

// Issue 12 item 16: a site file overrides the port of a rule the document
// calls configurable, by rule ID, validated against the product.
func TestSitePortOverride(t *testing.T) {
	c := builtinT(t)
	s, err := ParseSite("site.yaml", []byte("zones:\n  ADMIN_NETWORK: 192.0.2.0/24\nports:\n  usm.server.vpn: 33900\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Ports["usm.server.vpn"]; len(got) != 1 || got[0] != (PortRange{33900, 33900}) {
		t.Fatalf("parsed ports: %v", s.Ports)
	}
	p, v, err := c.Resolve("usm@5.6.5")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(p, v); err != nil {
		t.Fatalf("Check: %v", err)
	}
	vpn := map[string]bool{"vpn": true}
	for role, id := range map[string]string{"server": "usm.server.vpn", "sensor": "usm.sensor.vpn.to-server"} {
		m, err := p.Effective(v, role, vpn)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ApplyPorts(p, m); err != nil {
			t.Fatalf("%s: ApplyPorts: %v", role, err)
		}
		dir := vocab.Inbound
		if role == "sensor" {
			dir = vocab.Outbound
		}
		// (The Sensor's outbound high ports to HIDS hosts match any port.)
		peerRole := map[string]string{"server": "sensor", "sensor": "server"}[role]
		find := func(port uint16) []Rule {
			var out []Rule
			for _, r := range m.Find(dir, vocab.TCP, port) {
				if r.Peer.Role == peerRole {
					out = append(out, r)
				}
			}
			return out
		}
		if rs := find(33800); len(rs) != 0 {
			t.Errorf("%s: 33800 still in the matrix: %v", role, rs[0].ID)
		}
		rs := find(33900)
		if len(rs) != 1 || rs[0].ID != id {
			t.Fatalf("%s: 33900: %+v", role, rs)
		}
		r := rs[0]
		if r.PortString() != "33900" || len(r.DefaultPorts) != 1 || r.DefaultPorts[0] != (PortRange{33800, 33800}) || r.PortsFrom != (SourcePos{"site.yaml", 4}) {
			t.Errorf("%s: overridden rule %s: ports %s, default %v, from %v", role, r.ID, r.PortString(), r.DefaultPorts, r.PortsFrom)
		}
		if !strings.Contains(strings.Join(r.Flags(), ","), "site-port") {
			t.Errorf("%s: flags %v", role, r.Flags())
		}
	}
	// Naming the mirrored rule changes the written one too.
	s2, err := ParseSite("site.yaml", []byte("ports:\n  usm.sensor.vpn.to-server: [33900, 33901]\n"))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := p.Effective(v, "server", vpn)
	if err := s2.ApplyPorts(p, m); err != nil {
		t.Fatal(err)
	}
	if rs := m.Find(vocab.Inbound, vocab.TCP, 33901); len(rs) != 1 || rs[0].ID != "usm.server.vpn" {
		t.Errorf("override by mirror ID: %+v", rs)
	}
	// VSOS: the proxy ports of the Scanning Server.
	pv, vv, _ := c.Resolve("vsos")
	s3, err := ParseSite("vsos.yaml", []byte("ports:\n  vsos9.scanning-server.http-proxy: 3128\n  vsos9.scanning-server.icap: \"11344\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s3.Check(pv, vv); err != nil {
		t.Fatal(err)
	}
	ms, _ := pv.Effective(vv, "scanning-server", map[string]bool{"icap": true})
	if err := s3.ApplyPorts(pv, ms); err != nil {
		t.Fatal(err)
	}
	if len(ms.Find(vocab.Inbound, vocab.TCP, 3128)) != 1 || len(ms.Find(vocab.Inbound, vocab.TCP, 8080)) != 0 || len(ms.Find(vocab.Inbound, vocab.TCP, 11344)) != 1 {
		t.Errorf("vsos overrides not applied")
	}
	// A site without overrides leaves the matrix alone.
	plain, _ := ParseSite("plain.yaml", []byte("zones:\n  ADMIN_NETWORK: 192.0.2.0/24\n"))
	m0, _ := p.Effective(v, "server", vpn)
	if err := plain.ApplyPorts(p, m0); err != nil || len(m0.Find(vocab.Inbound, vocab.TCP, 33800)) != 1 {
		t.Errorf("plain site: %v", err)
	}
}

func TestSitePortOverrideErrors(t *testing.T) {
	// Syntax, found by ParseSite.
	for _, tc := range []struct{ src, want string }{
		{"ports:\n  usm.server.vpn: 70000\n", `site.yaml:2: port override of "usm.server.vpn": port 70000 out of range`},
		{"ports:\n  usm.server.vpn: any\n", `site.yaml:2: port override of "usm.server.vpn": give the port(s), not any`},
		{"ports:\n  usm.server.vpn: 0\n", `site.yaml:2: port override of "usm.server.vpn": port 0 is not a service port`},
		{"ports:\n  usm.server.vpn: []\n", `site.yaml:2: port override of "usm.server.vpn": no ports`},
		{"ports:\n  usm.server.vpn:\n", `site.yaml:2: port override of "usm.server.vpn": no ports`},
		{"ports:\n  usm.server.vpn: [33900, \"9-1\"]\n", `site.yaml:2: port override of "usm.server.vpn": port range "9-1" has lo 9 > hi 1`},
		{"ports:\n  vpn: 33900\n", `site.yaml:2: port override "vpn": want a rule ID FAMILY.ROLE.RULE (see flowaudit catalog show)`},
		{"ports: [33900]\n", `site.yaml:1: `},
	} {
		_, err := ParseSite("site.yaml", []byte(tc.src))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want %q, got %v", tc.src, tc.want, err)
		}
	}
	// References, found by Check (and ApplyPorts) against the product.
	c := builtinT(t)
	p, v, _ := c.Resolve("usm")
	for _, tc := range []struct{ src, want string }{
		{"zones:\n  ADMIN_NETWORK: 192.0.2.0/24\nports:\n  usm.server.vpm: 33900\n", `site.yaml:4: port override: no rule "usm.server.vpm" in usm@5.6.5 (configurable: usm.server.vpn)`},
		{"ports:\n  usm.server.web-ui: 8443\n", `site.yaml:2: port override: rule "usm.server.web-ui" (tcp/443) is not configurable: the document does not say its port can be changed`},
		{"ports:\n  utmstack11.manager.ssh: 2222\n", `site.yaml:2: port override: no rule "utmstack11.manager.ssh" in usm@5.6.5`},
	} {
		s, err := ParseSite("site.yaml", []byte(tc.src))
		if err != nil {
			t.Fatalf("%q: %v", tc.src, err)
		}
		err = s.Check(p, v)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check %q: want %q, got %v", tc.src, tc.want, err)
		}
		m, _ := p.Effective(v, "server", nil)
		if err := s.ApplyPorts(p, m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ApplyPorts %q: want %q, got %v", tc.src, tc.want, err)
		}
	}
}

// The example site with an override validates against the schema and the
// loader (TestSchemaValidatesSites reads every testdata site).
func TestSitePortExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "sites", "usm-sensor.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSite("usm-sensor.yaml", b)
	if err != nil {
		t.Fatal(err)
	}
	p, v, _, err := builtinT(t).ResolveRef(s.Product)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(p, v); err != nil || len(s.Ports) == 0 {
		t.Errorf("example: %v, %d overrides", err, len(s.Ports))
	}
}

func TestLooksLikeSite(t *testing.T) {
	for src, want := range map[string]bool{
		"ports:\n  usm.server.vpn: 33900\n":         true,
		"zones: {A: 10.0.0.0/8}\n":                  true,
		"roles: {server: [10.0.0.1]}\n":             true,
		"roles: [{id: server}]\nrules: []\n":        false,
		"format: flowaudit-site/v1\n":               true,
		"format: flowaudit-catalog/v1\nzones: []\n": false,
		bombSite():     true,
		"::: not yaml": false,
	} {
		if got := LooksLikeSite([]byte(src)); got != want {
			t.Errorf("LooksLikeSite(%.40q) = %v", src, got)
		}
	}
}
