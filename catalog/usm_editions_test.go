package catalog

import (
	"slices"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/vocab"
)

// Issue 12 item 15: the Server manages its Sensors over SSH (the Sensor's
// SSH management service in the supplementary component document), so
// tcp/22 from the Server is documented on the Sensor, not out of zone; the
// Server's 40007 is among the ports the reading leaves out.
func TestUSMServerToSensorSSH(t *testing.T) {
	s := effectiveT(t, "usm", "sensor")
	var fromServer []Rule
	for _, r := range s.Find(vocab.Inbound, vocab.TCP, 22) {
		if r.Peer.Kind == PeerRole && r.Peer.Role == "server" {
			fromServer = append(fromServer, r)
		}
	}
	if len(fromServer) != 1 || fromServer[0].Citation.Doc != "alienvault-component-communication" || fromServer[0].Condition != "!vpn" {
		t.Fatalf("sensor tcp/22 from the server: %+v", fromServer)
	}
	// The Server side is the mirrored rule: outbound tcp/22 to the Sensor.
	sv := effectiveT(t, "usm", "server")
	out := sv.Find(vocab.Outbound, vocab.TCP, 22)
	if !slices.ContainsFunc(out, func(r Rule) bool { return r.MirrorOf == fromServer[0].ID && r.Peer.Role == "sensor" }) {
		t.Errorf("server: no outbound tcp/22 to the sensor mirroring %s: %+v", fromServer[0].ID, out)
	}
	// With the VPN, the SSH traffic runs in the tunnel.
	if rs := effectiveT(t, "usm", "sensor", "vpn").Find(vocab.Inbound, vocab.TCP, 22); slices.ContainsFunc(rs, func(r Rule) bool { return r.Peer.Role == "server" }) {
		t.Error("vpn: sensor still has tcp/22 from the server outside the tunnel")
	}
	// The All-in-One has no Server→Sensor traffic (internal).
	if rs := effectiveT(t, "usm", "all-in-one").Find(vocab.Inbound, vocab.TCP, 22); slices.ContainsFunc(rs, func(r Rule) bool { return r.Peer.Role == "server" }) {
		t.Error("all-in-one lists internal Server→Sensor SSH")
	}
	c := builtinT(t)
	p, _ := c.Product("usm")
	f, _ := p.Family(Version{})
	for _, rd := range f.Readings {
		if rd.ID == "port-diagram" && !strings.Contains(rd.Citation.Note, "40007") {
			t.Errorf("reading port-diagram does not account for the Server's 40007: %s", rd.Citation.Note)
		}
	}
}

// Issue 12 item 15: the two USM editions differ and a matrix follows one,
// selectable, the newest (LevelBlue, 001) by default.
func TestUSMEditions(t *testing.T) {
	c := builtinT(t)
	p, v, ed, err := c.ResolveRef("usm")
	if err != nil || ed != "levelblue" || v.String() != "5.6.5" {
		t.Fatalf("ResolveRef(usm): %s %q %v", v, ed, err)
	}
	f, _ := p.Family(v)
	if e, _ := f.Edition("levelblue"); e.Document != "001_7dabf2b0e5e35c87.txt" {
		t.Errorf("levelblue follows %q", e.Document)
	}
	if e, _ := f.Edition("alienvault"); e.Document != "000_406180ae05aed6fb.txt" {
		t.Errorf("alienvault follows %q", e.Document)
	}
	ports := func(m *Matrix) map[uint16]bool {
		out := map[uint16]bool{}
		for _, port := range []uint16{135, 139, 445, 1024, 49152} {
			for _, r := range m.Find(vocab.Outbound, vocab.TCP, port) {
				if r.Peer.Role == "hids-host" {
					out[port] = true
				}
			}
		}
		return out
	}
	// Effective without an edition: the default.
	def, err := p.Effective(v, "sensor", nil)
	if err != nil || def.Edition != "levelblue" {
		t.Fatalf("default edition %q %v", def.Edition, err)
	}
	if got := ports(def); !got[135] || !got[139] || !got[445] || !got[1024] || !got[49152] {
		t.Errorf("levelblue sensor HIDS deployment ports: %v", got)
	}
	for _, ref := range []string{"usm@5.6.5#alienvault", "usm#alienvault", " usm@5.6.5#alienvault "} {
		p, v, ed, err := c.ResolveRef(ref)
		if err != nil || ed != "alienvault" {
			t.Fatalf("%s: %q %v", ref, ed, err)
		}
		av, err := p.EffectiveEdition(v, ed, "sensor", nil)
		if err != nil || av.Edition != "alienvault" {
			t.Fatalf("%s: %v %v", ref, av, err)
		}
		if got := ports(av); got[135] || !got[139] || !got[445] || got[1024] || got[49152] {
			t.Errorf("%s sensor HIDS deployment ports: %v, want 139 and 445 only", ref, got)
		}
	}
	// WalkMe (000 only, from 5.4.3) is in the AlienVault edition's Server
	// matrix only; the HIDS host's inbound ports follow the edition too.
	walkme := func(ed string) bool {
		m, err := p.EffectiveEdition(MustVersion("5.6.5"), ed, "server", nil)
		if err != nil {
			t.Fatal(err)
		}
		_, ok := ruleByID(m, "usm.server.walkme")
		return ok
	}
	if !walkme("alienvault") || walkme("levelblue") {
		t.Errorf("walkme: alienvault %v, levelblue %v", walkme("alienvault"), walkme("levelblue"))
	}
	h, _ := p.EffectiveEdition(v, "alienvault", "hids-host", nil)
	if len(h.Find(vocab.Inbound, vocab.TCP, 135)) != 0 || len(h.Find(vocab.Inbound, vocab.TCP, 445)) != 1 {
		t.Errorf("alienvault hids-host: %+v", h.Rules)
	}
	// Errors: an unknown edition, an edition of a family without any, an
	// edition given to Resolve.
	if _, _, _, err := c.ResolveRef("usm#att"); err == nil || !strings.Contains(err.Error(), `no edition "att" (editions: alienvault, levelblue; default levelblue)`) {
		t.Errorf("unknown edition: %v", err)
	}
	if _, err := p.EffectiveEdition(v, "att", "sensor", nil); err == nil || !strings.Contains(err.Error(), `no edition "att"`) {
		t.Errorf("EffectiveEdition unknown edition: %v", err)
	}
	if _, _, _, err := c.ResolveRef("utmstack@11#x"); err == nil || !strings.Contains(err.Error(), "utmstack@11 has no editions") {
		t.Errorf("edition of a family without: %v", err)
	}
	if _, _, ed, err := c.ResolveRef("utmstack@11"); err != nil || ed != "" {
		t.Errorf("utmstack@11: %q %v", ed, err)
	}
	if _, _, err := c.Resolve("usm#alienvault"); err == nil || !strings.Contains(err.Error(), "edition") {
		t.Errorf("Resolve with an edition: %v", err)
	}
}

func TestEditionValidation(t *testing.T) {
	base := strings.Replace(baseCatalog, "    source: seed\n", "    source: seed\n  - id: doc2.txt\n    title: Second edition\n    source: seed\neditions:\n  - id: first\n    document: doc.txt\n  - id: second\n    document: doc2.txt\n", 1)
	c, err := Parse("demo.yaml", []byte(strings.Replace(base, "    purpose: DNS\n", "    purpose: DNS\n    editions: [first]\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := c.Product("demo")
	f, _ := p.Family(Version{})
	if f.DefaultEdition() != "second" {
		t.Errorf("default edition %q, want the last declared", f.DefaultEdition())
	}
	for ed, n := range map[string]int{"first": 2, "second": 1, "": 1} {
		m, err := p.EffectiveEdition(MustVersion("1.5"), ed, "server", nil)
		if err != nil || len(m.Rules) != n {
			t.Errorf("edition %q: %v rules, err %v; want %d", ed, m, err, n)
		}
	}
	for _, tc := range []struct{ name, src, want string }{
		{"editions without family editions", strings.Replace(baseCatalog, "    purpose: DNS\n", "    purpose: DNS\n    editions: [first]\n", 1), `rule "dns": editions given but the family declares none`},
		{"unknown edition", strings.Replace(base, "    purpose: DNS\n", "    purpose: DNS\n    editions: [third]\n", 1), `rule "dns": unknown edition "third" (known: first, second)`},
		{"edition twice", strings.Replace(base, "    purpose: DNS\n", "    purpose: DNS\n    editions: [first, first]\n", 1), `edition "first" listed twice`},
		{"empty editions", strings.Replace(base, "    purpose: DNS\n", "    purpose: DNS\n    editions: []\n", 1), `empty editions list`},
		{"cites none of its editions", strings.Replace(base, "    purpose: DNS\n", "    purpose: DNS\n    editions: [second]\n", 1), `restricted to editions second but cites none of their documents`},
		{"edition of unknown document", strings.Replace(base, "    document: doc2.txt\n", "    document: doc3.txt\n", 1), `edition "second": unknown document "doc3.txt"`},
		{"duplicate edition", strings.Replace(base, "  - id: second\n", "  - id: first\n", 1), `duplicate edition "first"`},
		{"bad edition id", strings.Replace(base, "  - id: second\n", "  - id: Second\n", 1), `edition "Second": want lower-case`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("demo.yaml", []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want %q, got %v", tc.want, err)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "demo.yaml:") {
				t.Errorf("no file:line: %v", err)
			}
		})
	}
}
