package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// auditJSON runs audit with --format json and returns the report.
func auditJSON(t *testing.T, args ...string) *audit.Report {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	code, _, errb := runCLI(t, append(args, "--format", "json", "--out", out, "--fail-on", "high")...)
	if code != exitClean {
		t.Fatalf("exit %d: %s", code, errb)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r audit.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func hasFinding(r *audit.Report, kind audit.Kind, port string) bool {
	for _, f := range r.Findings {
		if f.Kind == kind && f.Port == port {
			return true
		}
	}
	return false
}

// A USM Sensor deploying a HIDS agent over TCP 135 follows the LevelBlue
// edition (the default) but not the AlienVault one, which asks for 139 and
// 445 only; the report records the edition it followed (issue 12 item 15).
func TestAuditEdition(t *testing.T) {
	dir := t.TempDir()
	site := catalogWriteFile(t, dir, "site.yaml", "roles:\n  hids-host: [10.9.0.0/24]\n  server: [10.8.0.1]\nzones:\n  ADMIN_NETWORK: 192.0.2.0/24\n  MONITORED_ASSETS: 10.9.0.0/24\n")
	snap := writeSnap(t,
		tflow(snapshot.Outbound, snapshot.TCP, 135, "10.9.0.5", snapshot.Evidence{}),
		tflow(snapshot.Outbound, snapshot.TCP, 445, "10.9.0.5", snapshot.Evidence{}),
	)
	args := func(m string) []string {
		return []string{"audit", "--matrix", m, "--role", "sensor", "--site", site, "--snapshot", snap}
	}
	lb := auditJSON(t, args("usm@5.6.5")...)
	if lb.Matrix.Edition != "levelblue" || hasFinding(lb, audit.UndocumentedFlow, "135") {
		t.Errorf("default edition %q; 135 undocumented: %v", lb.Matrix.Edition, hasFinding(lb, audit.UndocumentedFlow, "135"))
	}
	av := auditJSON(t, args("usm@5.6.5#alienvault")...)
	if av.Matrix.Edition != "alienvault" || !hasFinding(av, audit.UndocumentedFlow, "135") || hasFinding(av, audit.UndocumentedFlow, "445") {
		t.Errorf("alienvault edition %q: findings %+v", av.Matrix.Edition, av.Findings)
	}
	// A product documented once records no edition.
	ut := auditJSON(t, "audit", "--matrix", "utmstack@11", "--role", "manager", "--snapshot", snap)
	if ut.Matrix.Edition != "" {
		t.Errorf("utmstack edition %q", ut.Matrix.Edition)
	}
	if code, _, errb := runCLI(t, args("usm#att")...); code != exitError || !strings.Contains(errb, `no edition \"att\"`) {
		t.Errorf("unknown edition: exit %d: %s", code, errb)
	}
}

func TestCatalogShowEdition(t *testing.T) {
	code, out, errs := runCatalogCLI(t, "catalog", "show", "usm#alienvault", "--role", "sensor")
	if code != exitClean {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "edition: alienvault — follows 000_406180ae05aed6fb.txt") || !strings.Contains(out, "(family usm, edition alienvault;") || strings.Contains(out, "hids-deploy-rpc") {
		t.Errorf("show alienvault:\n%s", out)
	}
	_, out, _ = runCatalogCLI(t, "catalog", "show", "usm", "--role", "sensor")
	if !strings.Contains(out, "edition: levelblue — follows 001_7dabf2b0e5e35c87.txt (default; editions: alienvault, levelblue)") || !strings.Contains(out, "hids-deploy-rpc") {
		t.Errorf("show default:\n%s", out)
	}
	code, out, _ = runCatalogCLI(t, "catalog", "list")
	if code != exitClean || !strings.Contains(out, "alienvault,levelblue") {
		t.Errorf("list lacks the editions:\n%s", out)
	}
	code, out, _ = runCatalogCLI(t, "catalog", "list", "--json")
	var products []catalogListProduct
	if err := json.Unmarshal([]byte(out), &products); err != nil || code != exitClean {
		t.Fatal(err)
	}
	if eds := products[0].Families[0].Editions; products[0].ID != "usm" || len(eds) != 2 || eds[1].Name != "levelblue" {
		t.Errorf("list --json editions: %+v", products[0].Families)
	}
}

// The rules file names the edition its matrix follows.
func TestRulesEdition(t *testing.T) {
	dir := t.TempDir()
	site := catalogWriteFile(t, dir, "site.yaml", "roles:\n  hids-host: [10.9.0.0/24]\n")
	snap := writeSnap(t, tflow(snapshot.Outbound, snapshot.TCP, 445, "10.9.0.5", snapshot.Evidence{}))
	for ref, want := range map[string]string{
		"usm@5.6.5#alienvault": "USM Appliance (OSSIM) 5.6.5 (alienvault edition), role sensor",
		"usm":                  "USM Appliance (OSSIM) 5.6.5 (levelblue edition), role sensor",
		"utmstack@11":          "UTMStack 11, role manager",
	} {
		role, siteArgs := "sensor", []string{"--site", site}
		if strings.HasPrefix(ref, "utmstack") {
			role, siteArgs = "manager", nil
		}
		out := filepath.Join(dir, "rules.nft")
		args := append([]string{"rules", "--snapshot", snap, "--matrix", ref, "--role", role}, siteArgs...)
		code, _, errb := runCLI(t, append(args, "--mode", "documented", "--allow-quiet", "--target", "nftables", "--out", out)...)
		if code != exitClean {
			t.Fatalf("%s: exit %d: %s", ref, code, errb)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("%s: rules file lacks %q:\n%.1500s", ref, want, b)
		}
	}
}

// A site file gives the port a configurable rule uses (issue 12 item 16):
// the USM VPN on 33900 is documented, 33800 is not; the report says where
// the port came from.
func TestAuditSitePortOverride(t *testing.T) {
	dir := t.TempDir()
	base := "roles:\n  sensor: [10.8.0.2]\nzones:\n  ADMIN_NETWORK: 192.0.2.0/24\n"
	site := catalogWriteFile(t, dir, "site.yaml", base+"ports:\n  usm.server.vpn: 33900\n")
	open := snapshot.Evidence{SynIn: 1, SynAckOut: 1}
	snap := writeSnap(t, tflow(snapshot.Inbound, snapshot.TCP, 33900, "10.8.0.2", open))
	args := func(site string) []string {
		return []string{"audit", "--matrix", "usm@5.6.5", "--role", "server", "--conditions", "vpn", "--site", site, "--snapshot", snap}
	}
	r := auditJSON(t, args(site)...)
	if hasFinding(r, audit.UnexpectedOpenPort, "33900") || hasFinding(r, audit.MissingRequired, "33900") {
		t.Errorf("33900 not documented with the override: %+v", r.Findings)
	}
	var vpn *audit.RuleStatus
	for i := range r.Rules {
		if r.Rules[i].Rule.ID == "usm.server.vpn" {
			vpn = &r.Rules[i]
		}
	}
	if vpn == nil || vpn.Rule.Ports != "33900" || vpn.Rule.DefaultPorts != "33800" || vpn.Rule.PortsFrom != site+":6" || vpn.Status != audit.StatusSeen {
		t.Errorf("vpn rule: %+v", vpn)
	}
	// Without the override, 33900 is an open port the matrix does not know.
	plain := catalogWriteFile(t, dir, "plain.yaml", base)
	out := filepath.Join(dir, "plain.json")
	code, _, errb := runCLI(t, append(args(plain), "--format", "json", "--out", out)...)
	b, _ := os.ReadFile(out)
	if code != exitFindings || !strings.Contains(string(b), `"unexpected-open-port/`) {
		t.Errorf("no override: exit %d %s", code, errb)
	}
	// A rule the document does not call configurable: refused, file:line.
	bad := catalogWriteFile(t, dir, "bad.yaml", base+"ports:\n  usm.server.web-ui: 8443\n")
	if code, _, errb := runCLI(t, args(bad)...); code != exitError || !strings.Contains(errb, bad+`:6: port override: rule \"usm.server.web-ui\" (tcp/443) is not configurable`) {
		t.Errorf("not configurable: exit %d: %s", code, errb)
	}
	// catalog validate checks overrides against the site's product.
	checked := catalogWriteFile(t, dir, "checked.yaml", "product: usm@5.6.5#alienvault\n"+base+"ports:\n  usm.server.vpm: 33900\n")
	if code, _, errs := runCatalogCLI(t, "catalog", "validate", checked); code != exitError || !strings.Contains(errs, checked+`:7: port override: no rule "usm.server.vpm" in usm@5.6.5 (configurable: usm.server.vpn)`) {
		t.Errorf("validate: exit %d: %s", code, errs)
	}
	example := filepath.Join("..", "..", "testdata", "sites", "usm-sensor.yaml")
	if code, out, errs := runCatalogCLI(t, "catalog", "validate", example); code != exitClean || !strings.Contains(out, "checked against usm@5.6.5") {
		t.Errorf("example: exit %d: %s %s", code, out, errs)
	}
}
