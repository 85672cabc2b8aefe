package catalog

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/vocab"
)

// baseCatalog is a small valid catalog the validation tests break one
// line at a time.
const baseCatalog = `format: flowaudit-catalog/v1
product:
  id: demo
  name: Demo appliance
family:
  id: demo1
  versions: ">=1 <2"
  latest: "1.5"
documents:
  - id: doc.txt
    title: Demo firewall guide
    source: seed
roles:
  - id: server
  - id: client
    zone: CLIENTS
  - id: box
    includes: [server]
zones:
  - id: CLIENTS
conditions:
  - id: vpn
rules:
  - id: web
    role: server
    direction: inbound
    proto: tcp
    ports: [443, "8000-8001"]
    peer: {role: client}
    purpose: Web interface
    citation: {doc: doc.txt, section: "1"}
  - id: dns
    roles: [server]
    direction: outbound
    proto: udp
    ports: 53
    peer: {any: true}
    requirement: optional
    condition: "!vpn"
    versions: ">=1.2"
    purpose: DNS
    citation: {doc: doc.txt, section: "2"}
`

func TestBaseCatalogValid(t *testing.T) {
	c, err := Parse("demo.yaml", []byte(baseCatalog))
	if err != nil {
		t.Fatal(err)
	}
	p, v, err := c.Resolve("demo")
	if err != nil || v.String() != "1.5" {
		t.Fatalf("Resolve: %v %v", v, err)
	}
	m, err := p.Effective(v, "server", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Rules) != 2 {
		t.Fatalf("want 2 rules, got %d", len(m.Rules))
	}
	web := m.Rules[0]
	if web.ID != "demo1.server.web" || web.Source.Line != 24 || web.Source.File != "demo.yaml" {
		t.Errorf("web rule id/source: %s %v", web.ID, web.Source)
	}
	if !web.Matches(vocab.TCP, 8001) || web.Matches(vocab.TCP, 8002) || web.Matches(vocab.UDP, 443) {
		t.Error("web rule matching")
	}
	if web.Peer.Kind != PeerRole || web.Peer.Role != "client" || web.Peer.Zone != "CLIENTS" {
		t.Errorf("peer %+v", web.Peer)
	}
	// The mirrored rule on the client.
	mc, err := p.Effective(v, "client", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(mc.Rules) != 1 || mc.Rules[0].ID != "demo1.client.web.to-server" || mc.Rules[0].Direction != vocab.Outbound || mc.Rules[0].MirrorOf != "demo1.server.web" {
		t.Errorf("mirror: %+v", mc.Rules)
	}
	// Version gating: dns only from 1.2.
	m11, _ := p.Effective(MustVersion("1.1"), "server", nil)
	if len(m11.Rules) != 1 {
		t.Errorf("1.1: want 1 rule, got %d", len(m11.Rules))
	}
	// Negated condition: dns gone with vpn on.
	mv, _ := p.Effective(v, "server", map[string]bool{"vpn": true})
	if len(mv.Rules) != 1 || len(mv.Conditions) != 1 {
		t.Errorf("vpn: %d rules, conditions %v", len(mv.Rules), mv.Conditions)
	}
	// Composite role gets the included role's rules.
	mb, _ := p.Effective(v, "box", nil)
	if len(mb.Rules) != 2 {
		t.Errorf("box: want 2 rules, got %d", len(mb.Rules))
	}
	if _, err := p.Effective(v, "nobody", nil); err == nil || !strings.Contains(err.Error(), `no role "nobody"`) {
		t.Errorf("unknown role: %v", err)
	}
	if _, err := p.Effective(v, "server", map[string]bool{"ha": true}); err == nil || !strings.Contains(err.Error(), `no condition "ha"`) {
		t.Errorf("unknown condition: %v", err)
	}
	if _, _, err := c.Resolve("demo@2.0"); err == nil || !strings.Contains(err.Error(), "no catalog for version 2.0") {
		t.Errorf("version outside families: %v", err)
	}
	if _, _, err := c.Resolve("nope"); err == nil || !strings.Contains(err.Error(), `unknown product "nope"`) {
		t.Errorf("unknown product: %v", err)
	}
}

// TestValidationErrors breaks the base catalog in every way the loader
// checks. The line marked "# <-" is where the error must point, and the
// message must name the offending value.
func TestValidationErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new string // replace old with new in baseCatalog
		want     string
	}{
		// Decoding.
		{"unknown key", "    purpose: Web interface\n", "    purpose: Web interface\n    colour: blue # <-\n", `unknown key "colour"`},
		{"unknown top-level key", "zones:\n", "zonez: [] # <-\nzones:\n", `unknown key "zonez"`},
		{"unknown peer key", "peer: {role: client}", "peer: {role: client, host: x} # <-", `unknown key "host"`},
		{"duplicate key", "    proto: tcp\n", "    proto: tcp\n    proto: udp # <-\n", `duplicate key "proto" (first defined at line 27)`},
		{"duplicate top-level key", "conditions:\n", "zones: [] # <-\nconditions:\n", `duplicate key "zones"`},
		{"wrong type", "    roles: [server]\n", "    roles: {a: b} # <-\n", "want a list"},
		{"syntax error", "    direction: inbound\n", "    direction: inbound\n\tx: 1 # <-\n", "cannot start any token"},
		{"wrong format", "format: flowaudit-catalog/v1", "format: flowaudit-catalog/v9 # <-", `format "flowaudit-catalog/v9" not supported`},
		// Ports and protocols.
		{"port out of range", `ports: [443, "8000-8001"]`, `ports: [443, 70000] # <-`, "port 70000 out of range 0-65535"},
		{"negative port", `ports: [443, "8000-8001"]`, `ports: [-1] # <-`, "port -1 out of range 0-65535"},
		{"port not a number", `ports: [443, "8000-8001"]`, `ports: [https] # <-`, `bad port "https"`},
		{"port range lo > hi", `ports: [443, "8000-8001"]`, `ports: ["9001-9000"] # <-`, `port range "9001-9000" has lo 9001 > hi 9000`},
		{"port range out of range", `ports: [443, "8000-8001"]`, `ports: ["1024-65536"] # <-`, "port 65536 out of range 0-65535"},
		{"port list item line", "    ports: [443, \"8000-8001\"]\n", "    ports:\n      - 443\n      - 99999 # <-\n", "port 99999 out of range"},
		{"missing ports", "    ports: [443, \"8000-8001\"]\n", "", "missing ports for tcp"},
		{"unknown protocol", "    proto: tcp\n", "    proto: tcpp # <-\n", `unknown protocol "tcpp"`},
		{"unknown protocol in pair", "    proto: tcp\n", "    proto: tcp+xdp # <-\n", `unknown protocol "xdp"`},
		{"protocol number out of range", "    proto: tcp\n", "    proto: 300 # <-\n", "protocol number 300 out of range 0-255"},
		{"ports on portless protocol", "    proto: tcp\n", "    proto: gre\n", "protocol gre has no ports"},
		{"mixed protocol kinds", "    proto: tcp\n", "    proto: tcp+gre # <-\n", "cannot combine tcp and gre"},
		{"icmp type out of range", "    proto: tcp\n    ports: [443, \"8000-8001\"]\n", "    proto: icmp\n    types: [300] # <-\n", "ICMP type 300 out of range 0-255"},
		// Roles, zones, conditions.
		{"unknown role", "    role: server\n", "    role: sever # <-\n", `unknown role "sever"`},
		{"unknown role in roles", "    roles: [server]\n", "    roles: [server, clint] # <-\n", `unknown role "clint"`},
		{"role and roles", "    role: server\n", "    role: server\n    roles: [client]\n", "either role or roles"},
		{"unknown peer role", "peer: {role: client}", "peer: {role: cliant} # <-", `unknown peer role "cliant"`},
		{"unknown zone", "peer: {role: client}", "peer: {zone: ADMINS} # <-", `unknown zone "ADMINS"`},
		{"unknown role zone", "    zone: CLIENTS\n", "    zone: CLIENT # <-\n", `unknown zone "CLIENT"`},
		{"bad zone name", "  - id: CLIENTS\n", "  - id: CLIENTS\n  - id: admin-ip # <-\n", `zone "admin-ip"`},
		{"duplicate zone", "  - id: CLIENTS\n", "  - id: CLIENTS\n  - id: CLIENTS # <-\n", `duplicate zone "CLIENTS"`},
		{"duplicate role", "  - id: client\n", "  - id: server # <-\n  - id: client\n", `duplicate role "server"`},
		{"includes unknown role", "includes: [server]", "includes: [server, nobody] # <-", `includes unknown role "nobody"`},
		{"unknown condition", `condition: "!vpn"`, `condition: "!ha" # <-`, `unknown condition "ha"`},
		{"bad condition", `condition: "!vpn"`, `condition: "vpn && ha" # <-`, `bad condition "vpn && ha"`},
		{"conditional without condition", "    requirement: optional\n    condition: \"!vpn\"\n", "    requirement: conditional # <-\n", "requirement conditional needs a condition"},
		{"unknown requirement", "    requirement: optional\n", "    requirement: must # <-\n", `unknown requirement "must"`},
		{"bad direction", "    direction: inbound\n", "    direction: sideways # <-\n", `unknown direction "sideways"`},
		// Peers.
		{"bad CIDR", "peer: {role: client}", "peer: {cidr: 10.0.0.0/33} # <-", `bad CIDR "10.0.0.0/33"`},
		{"CIDR host bits", "peer: {role: client}", "peer: {cidr: 10.0.0.1/8} # <-", `CIDR "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)`},
		{"bad DNS name", "peer: {role: client}", `peer: {dns: "exa mple.com"} # <-`, `bad DNS name "exa mple.com"`},
		{"two peer kinds", "peer: {role: client}", "peer: {role: client, any: true} # <-", "exactly one of any, role, zone, cidr, dns"},
		{"missing peer", "  - id: web\n    role: server\n    direction: inbound\n    proto: tcp\n    ports: [443, \"8000-8001\"]\n    peer: {role: client}\n", "  - id: web # <-\n    role: server\n    direction: inbound\n    proto: tcp\n    ports: [443, \"8000-8001\"]\n", "missing peer"},
		// Versions.
		{"bad version range", `versions: ">=1.2"`, `versions: ">=x" # <-`, `bad version range ">=x"`},
		{"bad version operator", `versions: ">=1.2"`, `versions: "<<5" # <-`, `bad version range "<<5"`},
		{"empty version range", `versions: ">=1.2"`, `versions: ">=1.8 <1.3" # <-`, "contains no version"},
		{"rule versions outside family", `versions: ">=1.2"`, `versions: ">=3" # <-`, `versions ">=3" outside the family's versions ">=1 <2"`},
		{"deprecated overlaps", `versions: ">=1.2"`, "versions: \">=1.2\"\n    deprecated: \">=1.4\" # <-", `deprecated ">=1.4" overlaps versions ">=1.2"`},
		{"deprecated without versions", `    versions: ">=1.2"`, `    deprecated: ">=1.4" # <-`, `deprecated ">=1.4" needs versions`},
		{"latest outside family", `latest: "1.5"`, `latest: "2.1" # <-`, `latest "2.1" not in the family's versions ">=1 <2"`},
		{"bad latest", `latest: "1.5"`, `latest: "one" # <-`, `bad version "one"`},
		// Ids, citations, documents.
		{"duplicate rule id", "  - id: dns\n", "  - id: web # <-\n", `duplicate rule id "demo1.server.web" (also at line 24)`},
		{"bad rule id", "  - id: dns\n", "  - id: DNS Rule # <-\n", `rule id "DNS Rule"`},
		{"unknown document", `citation: {doc: doc.txt, section: "2"}`, `citation: {doc: other.txt, section: "2"} # <-`, `citation of unknown document "other.txt"`},
		{"missing section", `citation: {doc: doc.txt, section: "2"}`, `citation: {doc: doc.txt} # <-`, "missing section"},
		{"missing citation", "    citation: {doc: doc.txt, section: \"2\"}\n", "", "missing citation"},
		{"missing purpose", "    purpose: DNS\n", "", `rule "dns": missing purpose`},
		{"supplementary without url", "    source: seed\n", "    source: supplementary\n", `a supplementary source needs a url`},
		{"unknown source", "    source: seed\n", "    source: blog # <-\n", `unknown source "blog"`},
		{"missing top-level key", "family:\n  id: demo1\n  versions: \">=1 <2\"\n  latest: \"1.5\"\n", "", `missing required key "family"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(baseCatalog, tc.old) {
				t.Fatalf("test bug: %q not in base catalog", tc.old)
			}
			src := strings.Replace(baseCatalog, tc.old, tc.new, 1)
			wantLine := markerLine(src)
			_, err := Parse("demo.yaml", []byte(src))
			if err == nil {
				t.Fatalf("no error; want %q", tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, not ErrorList: %v", err, err)
			}
			var hit *Error
			for _, e := range list {
				if strings.Contains(e.Msg, tc.want) {
					hit = e
					break
				}
			}
			if hit == nil {
				t.Fatalf("no error containing %q in:\n%v", tc.want, err)
			}
			if hit.File != "demo.yaml" {
				t.Errorf("file %q", hit.File)
			}
			if wantLine > 0 && hit.Line != wantLine {
				t.Errorf("line %d, want %d: %v", hit.Line, wantLine, hit)
			}
			if hit.Line == 0 && wantLine == 0 {
				// Errors without a marker must still carry a line.
				if !strings.HasPrefix(hit.Error(), "demo.yaml:") || hit.Line < 1 {
					t.Errorf("no line in %q", hit.Error())
				}
			}
			if prefix := "demo.yaml:" + strconv.Itoa(hit.Line) + ": "; !strings.HasPrefix(hit.Error(), prefix) {
				t.Errorf("message %q does not start with %q", hit.Error(), prefix)
			}
		})
	}
}

// markerLine returns the 1-based line holding "# <-", or 0.
func markerLine(src string) int {
	for i, l := range strings.Split(src, "\n") {
		if strings.Contains(l, "# <-") {
			return i + 1
		}
	}
	return 0
}

func TestAllErrorsReported(t *testing.T) {
	src := strings.Replace(baseCatalog, `ports: [443, "8000-8001"]`, `ports: [70000]`, 1)
	src = strings.Replace(src, "    proto: udp\n", "    proto: udpp\n", 1)
	_, err := Parse("demo.yaml", []byte(src))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
	if list[0].Line != 28 || list[1].Line != 35 {
		t.Errorf("lines %d, %d", list[0].Line, list[1].Line)
	}
}

func TestLoadFilesAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("a.yaml", baseCatalog)
	// A second family of the same product, versions 2.x.
	b := write("b.yaml", strings.NewReplacer(`id: demo1`, `id: demo2`, `">=1 <2"`, `">=2 <3"`, `"1.5"`, `"2.0"`, `">=1.2"`, `">=2.1"`).Replace(baseCatalog))
	c, err := LoadFiles(a, b)
	if err != nil {
		t.Fatal(err)
	}
	p, v, err := c.Resolve("demo")
	if err != nil || v.String() != "2.0" || len(p.Families()) != 2 {
		t.Fatalf("resolve: %v %v %d", v, err, len(p.Families()))
	}
	m, err := p.Effective(MustVersion("1.3"), "server", nil)
	if err != nil || m.Family != "demo1" || m.Rules[0].Source.File != a {
		t.Fatalf("1.3: %v %+v", err, m)
	}

	// Overlapping families are an error at the second file's family line.
	o := write("o.yaml", strings.NewReplacer(`id: demo1`, `id: demo9`, `">=1 <2"`, `">=1.4 <3"`).Replace(baseCatalog))
	_, err = LoadFiles(a, o)
	if err == nil || !strings.Contains(err.Error(), o+`:5: family "demo9" versions ">=1.4 <3" overlap family "demo1"`) {
		t.Errorf("overlap: %v", err)
	}
	// Same product, different name.
	n := write("n.yaml", strings.NewReplacer(`id: demo1`, `id: demo2`, `">=1 <2"`, `">=2 <3"`, `"1.5"`, `"2.0"`, `">=1.2"`, `">=2.1"`, "name: Demo appliance", "name: Other").Replace(baseCatalog))
	_, err = LoadFiles(a, n)
	if err == nil || !strings.Contains(err.Error(), n+`:2: product "demo": name/vendor "Other"`) {
		t.Errorf("name mismatch: %v", err)
	}
	// Errors in two files are all reported.
	bad1 := write("bad1.yaml", strings.Replace(baseCatalog, "proto: tcp", "proto: tcpx", 1))
	bad2 := write("bad2.yaml", strings.Replace(baseCatalog, "ports: 53", "ports: 99999", 1))
	_, err = LoadFiles(bad1, bad2)
	if err == nil || !strings.Contains(err.Error(), bad1+":27:") || !strings.Contains(err.Error(), bad2+":36:") {
		t.Errorf("two files: %v", err)
	}
	// I/O errors are not ErrInvalid.
	_, err = LoadFiles(filepath.Join(dir, "missing.yaml"))
	if err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("missing file: %v", err)
	}
}

func TestMerge(t *testing.T) {
	b := builtinT(t)
	u, err := Parse("user.yaml", []byte(baseCatalog))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Merge(b, u)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Resolve("demo"); err != nil {
		t.Error(err)
	}
	if _, _, err := m.Resolve("utmstack@11"); err != nil {
		t.Error(err)
	}
	// A user family for a new release of a built-in product joins it.
	v12 := strings.NewReplacer("id: demo\n", "id: utmstack\n", "name: Demo appliance", "name: UTMStack", "id: demo1", "id: utmstack12", `">=1 <2"`, `">=12 <13"`, `"1.5"`, `"12"`, `">=1.2"`, `">=12.1"`).Replace(baseCatalog)
	u12, err := Parse("v12.yaml", []byte(v12))
	if err != nil {
		t.Fatal(err)
	}
	m12, err := Merge(b, u12)
	if err != nil {
		t.Fatal(err)
	}
	p, v, err := m12.Resolve("utmstack")
	if err != nil || v.String() != "12" || len(p.Families()) != 3 {
		t.Fatalf("utmstack with 12: %v %v", v, err)
	}
	if _, _, err := m12.Resolve("utm@10"); err != nil {
		t.Errorf("alias and old family after merge: %v", err)
	}
	if bp, _ := b.Product("utmstack"); len(bp.Families()) != 2 {
		t.Error("Merge modified the built-in catalog")
	}
	// A user family overlapping a built-in one is refused.
	clash := strings.NewReplacer("id: demo\n", "id: utmstack\n", "name: Demo appliance", "name: UTMStack", `">=1 <2"`, `">=11.2 <12"`, `"1.5"`, `"11.2"`, `">=1.2"`, `">=11.3"`).Replace(baseCatalog)
	cu, err := Parse("clash.yaml", []byte(clash))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Merge(b, cu); err == nil || !errors.Is(err, ErrInvalid) {
		t.Errorf("overlap not refused: %v", err)
	}
}
