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
