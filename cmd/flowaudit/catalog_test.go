package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/catalog"
)

// runCatalogCLI runs flowaudit with args and returns the exit code and
// both streams.
func runCatalogCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	// The logger quotes the error's own quotes; undo that for matching.
	return code, out.String(), strings.ReplaceAll(errb.String(), `\"`, `"`)
}

func TestCatalogList(t *testing.T) {
	code, out, errs := runCatalogCLI(t, "catalog", "list")
	if code != exitClean {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"usm ", "utmstack ", "vsos ", ">=11 <12", ">=10 <11", "utmstack10", "server,sensor,logger,all-in-one,hids-host,snmp-agent", "vpn,snmp,forwarding", "scanning-server,policy-server,all-in-one"} {
		if !strings.Contains(out, want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCatalogCLI(t, "catalog", "list", "--json")
	if code != exitClean {
		t.Fatalf("json exit %d", code)
	}
	var products []catalogListProduct
	if err := json.Unmarshal([]byte(out), &products); err != nil {
		t.Fatal(err)
	}
	if len(products) != 3 || products[1].ID != "utmstack" || len(products[1].Families) != 2 || products[1].Latest != "11" {
		t.Errorf("json: %+v", products)
	}
}

func TestCatalogShow(t *testing.T) {
	// 9391/tcp is in force before 5.6.5 and deprecated from it.
	code, out, errs := runCatalogCLI(t, "catalog", "show", "usm@5.4", "--role", "sensor")
	if code != exitClean {
		t.Fatalf("exit %d: %s", code, errs)
	}
	line := catalogLineWith(out, "usm.sensor.openvas-scanner ")
	if line == "" || strings.Contains(line, "deprecated") || !strings.Contains(line, "9391") || !strings.Contains(line, "if !vpn") {
		t.Errorf("5.4 9391 line: %q", line)
	}
	if strings.Contains(out, "role server  (") {
		t.Error("--role sensor printed the server role")
	}
	_, out, _ = runCatalogCLI(t, "catalog", "show", "usm@5.6.5", "--role", "sensor")
	if line := catalogLineWith(out, "usm.sensor.openvas-scanner "); !strings.Contains(line, "deprecated") {
		t.Errorf("5.6.5 9391 line: %q", line)
	}
	// otx only from 5.1.
	_, out, _ = runCatalogCLI(t, "catalog", "show", "usm@5.0", "--role", "server")
	if strings.Contains(out, "otx.alienvault.com") {
		t.Error("otx listed for 5.0")
	}
	// VPN replaces the sensor-server ports.
	_, out, _ = runCatalogCLI(t, "catalog", "show", "usm@5.4", "--role", "sensor", "--conditions", "vpn")
	if catalogLineWith(out, "usm.sensor.vpn.to-server ") == "" || catalogLineWith(out, "40001") != "" || !strings.Contains(out, "vpn                  on") {
		t.Errorf("vpn matrix:\n%s", out)
	}
	// Without --role: every role, and the latest release.
	_, out, _ = runCatalogCLI(t, "catalog", "show", "vsos")
	for _, r := range []string{"role scanning-server", "role policy-server", "role all-in-one", "vsos@9.2 — "} {
		if !strings.Contains(out, r) {
			t.Errorf("show vsos lacks %q", r)
		}
	}
	// --notes prints citations and readings.
	_, out, _ = runCatalogCLI(t, "catalog", "show", "vsos@9.2", "--role", "scanning-server", "--notes")
	if !strings.Contains(out, "reading: UDP as written, in a TCP-by-default table") || !strings.Contains(out, "readings of the documents:") || !strings.Contains(out, "catalog/data/finjan-vsos.yaml:") {
		t.Errorf("notes missing:\n%s", out)
	}
}

func TestCatalogShowJSON(t *testing.T) {
	code, out, errs := runCatalogCLI(t, "catalog", "show", "utmstack@11", "--role", "manager", "--conditions", "multi-node,netflow", "--json")
	if code != exitClean {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var ms []catalog.Matrix
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Role != "manager" || ms[0].Version != "11" || strings.Join(ms[0].Conditions, ",") != "multi-node,netflow" {
		t.Fatalf("matrix header: %+v", ms)
	}
	ids := map[string]catalog.Rule{}
	for _, r := range ms[0].Rules {
		ids[r.ID] = r
	}
	swarm, ok := ids["utmstack11.manager.swarm-in"]
	if !ok || swarm.Ports[0].Lo != 2377 || swarm.Peer.Zone != "CLUSTER_NODE_IP" || swarm.Citation.Doc != "004_c793c473800cb152.txt" {
		t.Errorf("swarm-in: %+v", swarm)
	}
	if g, ok := ids["utmstack11.manager.gossip-in"]; !ok || len(g.Protos) != 2 {
		t.Errorf("gossip-in protos: %+v", g.Protos)
	}
	if _, ok := ids["utmstack11.manager.ipfix"]; !ok {
		t.Error("ipfix missing with netflow on")
	}
	if _, ok := ids["utmstack11.manager.federation-grpc"]; ok {
		t.Error("federation rule without the federation condition")
	}
	if r := ids["utmstack11.manager.agent-9000"]; r.Source.File != "catalog/data/utmstack-v11.yaml" || r.Source.Line == 0 {
		t.Errorf("source: %+v", r.Source)
	}
	// All roles: an array with one matrix per role.
	_, out, _ = runCatalogCLI(t, "catalog", "show", "utmstack@10", "--json")
	if err := json.Unmarshal([]byte(out), &ms); err != nil || len(ms) != 4 {
		t.Errorf("all roles: %d matrices, %v", len(ms), err)
	}
}

func TestCatalogShowConditionNegation(t *testing.T) {
	code, out, _ := runCatalogCLI(t, "catalog", "show", "usm@5.4", "--role", "server", "--conditions", "!vpn,snmp=false")
	if code != exitClean || catalogLineWith(out, "usm.server.alienvault-server ") == "" || catalogLineWith(out, "usm.server.vpn ") != "" || !strings.Contains(out, "vpn                  off") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

func TestCatalogShowErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"catalog", "show", "usm", "--role", "snsor"}, `no role "snsor"`},
		{[]string{"catalog", "show", "usm", "--conditions", "ha"}, `no condition "ha" (conditions: vpn, snmp, forwarding)`},
		{[]string{"catalog", "show", "usm@7"}, "usm has no catalog for version 7"},
		{[]string{"catalog", "show", "usm@five"}, `bad version "five"`},
		{[]string{"catalog", "show", "fortigate"}, `unknown product "fortigate"`},
		{[]string{"catalog", "show"}, "missing PRODUCT[@VERSION]"},
		{[]string{"catalog", "show", "usm", "vsos"}, `unexpected argument "vsos"`},
		{[]string{"catalog", "show", "usm", "--conditions", "vpn=maybe"}, "want NAME, !NAME or NAME=true|false"},
		{[]string{"catalog", "frobnicate"}, `unknown subcommand "frobnicate"`},
		{[]string{"catalog"}, "missing subcommand"},
		{[]string{"catalog", "list", "--no-builtin"}, "--no-builtin needs at least one --catalog file"},
	} {
		code, _, errs := runCatalogCLI(t, tc.args...)
		if code != exitError || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, errs, tc.want)
		}
	}
}

func TestCatalogHelp(t *testing.T) {
	for _, args := range [][]string{{"catalog", "--help"}, {"help", "catalog"}} {
		code, out, _ := runCatalogCLI(t, args...)
		if code != exitClean || !strings.Contains(out, "Subcommands:") || !strings.Contains(out, "flowaudit catalog show usm@5.4 --role sensor --conditions vpn") {
			t.Errorf("%v: exit %d:\n%s", args, code, out)
		}
	}
	for _, sub := range []string{"list", "show", "validate"} {
		code, out, _ := runCatalogCLI(t, "catalog", sub, "--help")
		if code != exitClean || !strings.Contains(out, "Usage: flowaudit catalog "+sub) || !strings.Contains(out, "Examples:") {
			t.Errorf("%s --help: exit %d:\n%s", sub, code, out)
		}
	}
}

const catalogTestYAML = `format: flowaudit-catalog/v1
product: {id: demo, name: Demo appliance}
family: {id: demo1, versions: ">=1 <2", latest: "1.0"}
documents:
  - {id: guide.txt, title: Demo guide, source: user}
roles:
  - id: server
zones:
  - id: ADMIN_IP
rules:
  - id: web
    role: server
    direction: inbound
    proto: tcp
    ports: [443]
    peer: {zone: ADMIN_IP}
    purpose: Web
    citation: {doc: guide.txt, section: "1"}
`

func catalogWriteFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCatalogValidate(t *testing.T) {
	dir := t.TempDir()
	good := catalogWriteFile(t, dir, "demo.yaml", catalogTestYAML)
	site := catalogWriteFile(t, dir, "site.yaml", "product: demo@1\nzones:\n  ADMIN_IP: 192.0.2.10\n")
	code, out, errs := runCatalogCLI(t, "catalog", "validate", good, site)
	if code != exitClean {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, good+": ok (catalog: product demo, family demo1") || !strings.Contains(out, site+": ok (site: 1 zones, 0 roles, 0 hosts, checked against demo@1)") {
		t.Errorf("output:\n%s", out)
	}

	// The built-in catalogs validate, with the example site.
	builtins, _ := filepath.Glob(filepath.Join("..", "..", "catalog", "data", "*.yaml"))
	args := append([]string{"catalog", "validate"}, builtins...)
	args = append(args, filepath.Join("..", "..", "testdata", "sites", "utmstack11.yaml"))
	if code, out, errs := runCatalogCLI(t, args...); code != exitClean || strings.Count(out, ": ok (") != len(builtins)+1 {
		t.Errorf("built-ins: exit %d\n%s\n%s", code, out, errs)
	}

	// Errors are FILE:LINE: message, with the value, and exit 1.
	bad := catalogWriteFile(t, dir, "bad.yaml", strings.Replace(strings.Replace(catalogTestYAML, "ports: [443]", "ports: [443, 70000]", 1), "proto: tcp", "proto: tcpp", 1))
	code, _, errs = runCatalogCLI(t, "catalog", "validate", bad)
	if code != exitError {
		t.Errorf("bad catalog: exit %d", code)
	}
	for _, want := range []string{bad + `:14: rule "web": unknown protocol "tcpp"`, bad + `:15: rule "web": port 70000 out of range 0-65535`} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	dup := catalogWriteFile(t, dir, "dup.yaml", strings.Replace(catalogTestYAML, "    direction: inbound\n", "    direction: inbound\n    direction: outbound\n", 1))
	if code, _, errs := runCatalogCLI(t, "catalog", "validate", dup); code != exitError || !strings.Contains(errs, dup+`:14: duplicate key "direction" (first defined at line 13)`) {
		t.Errorf("duplicate key: exit %d: %s", code, errs)
	}

	// Site files: detected by content, checked against their product.
	badSite := catalogWriteFile(t, dir, "badsite.yaml", "zones:\n  ADMIN_IP: 192.0.2.10/24\n  AGENT_NETWORK: [10.0.0.0/8, fd00::/200]\n")
	code, _, errs = runCatalogCLI(t, "catalog", "validate", badSite)
	if code != exitError || !strings.Contains(errs, badSite+`:2: CIDR "192.0.2.10/24" has host bits set`) || !strings.Contains(errs, badSite+`:3: bad CIDR "fd00::/200"`) {
		t.Errorf("bad site: exit %d: %s", code, errs)
	}
	unknownZone := catalogWriteFile(t, dir, "zone.yaml", "zones:\n  ADMIN_IP: 192.0.2.10\n  ADMIN_NET: 192.0.2.0/24\n")
	code, _, errs = runCatalogCLI(t, "catalog", "validate", "--site", "--product", "utmstack@11", unknownZone)
	if code != exitError || !strings.Contains(errs, unknownZone+`:3: zone "ADMIN_NET" is not a zone of utmstack@11`) {
		t.Errorf("unknown zone: exit %d: %s", code, errs)
	}
	// A site of a user catalog given in the same call.
	if code, _, errs := runCatalogCLI(t, "catalog", "validate", good, site); code != exitClean {
		t.Errorf("site of user catalog: %s", errs)
	}
	if code, _, errs := runCatalogCLI(t, "catalog", "validate", filepath.Join(dir, "missing.yaml")); code != exitError || !strings.Contains(errs, "missing.yaml") {
		t.Errorf("missing file: exit %d: %s", code, errs)
	}
	if code, _, _ := runCatalogCLI(t, "catalog", "validate"); code != exitError {
		t.Error("no files accepted")
	}
}

func TestCatalogUserCatalogMerged(t *testing.T) {
	dir := t.TempDir()
	demo := catalogWriteFile(t, dir, "demo.yaml", catalogTestYAML)
	code, out, errs := runCatalogCLI(t, "catalog", "show", "demo@1.0", "--catalog", demo)
	if code != exitClean || !strings.Contains(out, "demo1.server.web") {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	code, out, _ = runCatalogCLI(t, "catalog", "list", "--catalog", demo, "--no-builtin")
	if code != exitClean || !strings.Contains(out, "demo ") || strings.Contains(out, "usm") {
		t.Errorf("--no-builtin list:\n%s", out)
	}
}

func catalogLineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// bombYAML is a site file whose zone is a "billion laughs" alias bomb:
// nine nested anchors, each list repeating the previous one nine times.
func bombYAML() string {
	var b strings.Builder
	b.WriteString("zones:\n  ADMIN_IP:\n    - &l0 [\"192.0.2.1\", \"192.0.2.1\", \"192.0.2.1\", \"192.0.2.1\", \"192.0.2.1\", \"192.0.2.1\", \"192.0.2.1\", \"192.0.2.1\", \"192.0.2.1\"]\n")
	for l := 1; l < 9; l++ {
		b.WriteString("    - &l" + string(rune('0'+l)) + " [")
		for i := 0; i < 9; i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*l" + string(rune('0'+l-1)))
		}
		b.WriteString("]\n")
	}
	return b.String()
}

// An alias bomb given as --site, or to catalog validate (which sniffs the
// file's kind first), is refused quickly, with a short error.
func TestAliasBombSite(t *testing.T) {
	dir := t.TempDir()
	bomb := catalogWriteFile(t, dir, "bomb.yaml", bombYAML())
	// The same bomb as a shared catalog (--catalog): under a rule's ports.
	catSrc := strings.Replace(catalogTestYAML, "    ports: [443]\n",
		"    ports:\n"+strings.ReplaceAll(strings.TrimPrefix(bombYAML(), "zones:\n  ADMIN_IP:\n"), `"192.0.2.1"`, "443"), 1)
	if !strings.Contains(catSrc, "&l8 [*l7") {
		t.Fatal("test bug: bomb not placed in the catalog")
	}
	bombCat := catalogWriteFile(t, dir, "bombcat.yaml", catSrc)
	none := filepath.Join(dir, "none.json")
	for _, tc := range []struct {
		file string // the file the error must name
		args []string
	}{
		{bomb, []string{"catalog", "validate", bomb}},
		{bomb, []string{"audit", "--matrix", "utmstack@11", "--role", "manager", "--site", bomb, "--snapshot", none}},
		{bombCat, []string{"catalog", "list", "--catalog", bombCat}},
		{bombCat, []string{"audit", "--catalog", bombCat, "--matrix", "utmstack@11", "--role", "manager", "--snapshot", none}},
	} {
		bomb, args := tc.file, tc.args
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		code, _, errs := runCatalogCLI(t, args...)
		runtime.ReadMemStats(&after)
		if code != exitError {
			t.Errorf("%s: exit %d", args[0], code)
		}
		if !strings.Contains(errs, bomb+":") || !strings.Contains(errs, "alias") {
			t.Errorf("%s: stderr does not name the file and the aliases: %.500s", args[0], errs)
		}
		if len(errs) > 4000 {
			t.Errorf("%s: stderr is %d bytes", args[0], len(errs))
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
			t.Errorf("%s: allocated %d MiB", args[0], alloc>>20)
		}
	}
}
