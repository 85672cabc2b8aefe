package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
)

const (
	testCatalog = "../../audit/testdata/engine/testapp.yaml"
	testSite    = "../../audit/testdata/engine/site.yaml"
)

// runCLI runs the CLI in-process and returns exit code, stdout, stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeSnap(t *testing.T, flows ...snapshot.Flow) string {
	t.Helper()
	start := time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	s := &snapshot.Snapshot{Version: snapshot.FormatVersion, Source: "live", Start: start, End: start.Add(10 * time.Minute),
		Interfaces: []snapshot.Interface{{Name: "eth0", Index: 2}}, Stats: snapshot.Stats{FlowCapacity: 1024}, Flows: flows}
	p := filepath.Join(t.TempDir(), "snap.json")
	if err := snapshot.WriteFile(p, s); err != nil {
		t.Fatal(err)
	}
	return p
}

func tflow(dir snapshot.Direction, p snapshot.Proto, port uint16, peer string, ev snapshot.Evidence) snapshot.Flow {
	return snapshot.Flow{Interface: "eth0", Direction: dir, Proto: p, Port: port, Peer: netip.MustParseAddr(peer),
		PacketsIn: 10, PacketsOut: 10, BytesIn: 1000, BytesOut: 1000, Evidence: ev}
}

func cleanFlows() []snapshot.Flow {
	open := snapshot.Evidence{SynIn: 1, SynAckOut: 1}
	return []snapshot.Flow{
		tflow(snapshot.Inbound, snapshot.TCP, 22, "192.0.2.10", open),
		tflow(snapshot.Inbound, snapshot.TCP, 9000, "10.1.0.4", open),
		tflow(snapshot.Inbound, snapshot.UDP, 514, "10.2.0.4", snapshot.Evidence{}),
		tflow(snapshot.Inbound, snapshot.TCP, 40001, "10.3.0.4", open),
	}
}

func auditArgs(snap string, extra ...string) []string {
	return append([]string{"audit", "--catalog", testCatalog, "--matrix", "testapp", "--role", "server", "--site", testSite,
		"--snapshot", snap}, extra...)
}

func TestAuditExitCodes(t *testing.T) {
	clean := writeSnap(t, cleanFlows()...)
	openPort := writeSnap(t, append(cleanFlows(), tflow(snapshot.Inbound, snapshot.TCP, 6379, "10.1.0.4", snapshot.Evidence{SynIn: 1, SynAckOut: 1}))...)
	medium := writeSnap(t, append(cleanFlows(), tflow(snapshot.Outbound, snapshot.UDP, 53, "198.51.100.53", snapshot.Evidence{}))...)
	for _, tc := range []struct {
		name string
		args []string
		code int
		out  string // substring of stdout
	}{
		{"clean snapshot", auditArgs(clean), exitClean, "findings: 0 high, 0 medium, 0 low"},
		{"open undocumented port", auditArgs(openPort), exitFindings, "unexpected-open-port"},
		{"medium finding, --fail-on high", auditArgs(medium, "--fail-on", "high"), exitClean, "undocumented-flow"},
		{"medium finding, --fail-on medium", auditArgs(medium, "--fail-on", "medium"), exitFindings, "undocumented-flow"},
		{"bad --fail-on", auditArgs(clean, "--fail-on", "severe"), exitError, ""},
		{"bad --format", auditArgs(clean, "--format", "pdf"), exitError, ""},
		{"missing role", []string{"audit", "--matrix", "utmstack@11", "--snapshot", clean}, exitError, ""},
		{"unknown role", []string{"audit", "--matrix", "utmstack@11", "--role", "nosuch", "--snapshot", clean}, exitError, ""},
		{"no input", []string{"audit", "--matrix", "utmstack@11", "--role", "manager"}, exitError, ""},
		{"missing snapshot file", auditArgs("/nonexistent/snap.json"), exitError, ""},
		{"help", []string{"audit", "--help"}, exitClean, "Exit codes: 0 no findings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errb := runCLI(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errb)
			}
			if !strings.Contains(out, tc.out) {
				t.Errorf("stdout lacks %q:\n%s", tc.out, out)
			}
		})
	}
}

func TestAuditJSONAndOut(t *testing.T) {
	snap := writeSnap(t, append(cleanFlows(), tflow(snapshot.Inbound, snapshot.TCP, 22, "10.1.0.9", snapshot.Evidence{SynIn: 1, SynAckOut: 1}))...)
	out := filepath.Join(t.TempDir(), "report.json")
	code, stdout, errb := runCLI(t, auditArgs(snap, "--format", "json", "--out", out)...)
	if code != exitFindings {
		t.Fatalf("exit %d\n%s", code, errb)
	}
	if stdout != "" {
		t.Errorf("stdout not empty with --out: %q", stdout)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep audit.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 1 || rep.Findings[0].Kind != audit.PeerOutOfZone || rep.Findings[0].Rule.ID != "t1.server.ssh" {
		t.Errorf("findings: %+v", rep.Findings)
	}
	if rep.Matrix.Product != "testapp" || rep.Matrix.Role != "server" || rep.Site != testSite {
		t.Errorf("header: %+v site %q", rep.Matrix, rep.Site)
	}
}

func TestAuditBadSnapshotNamesLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(p, []byte("{\n  \"version\": 1,\n  \"flows\": [\n    {\"peer\": \"not-an-ip\"}\n  ]\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errb := runCLI(t, auditArgs(p)...)
	if code != exitError {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(errb, p) || !strings.Contains(errb, "line 4") || !strings.Contains(errb, "not-an-ip") {
		t.Errorf("error should name file, line 4 and the value:\n%s", errb)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAuditSnapshotNewFields: a snapshot with fields this build does not
// know is audited (they are a newer recorder's additions), and the fields
// are named at debug level only.
func TestAuditSnapshotNewFields(t *testing.T) {
	p := writeSnap(t, cleanFlows()...)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte(`"packets_in":`), []byte(`"retransmits_in": 2, "packets_in":`), 1)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, append([]string{"--log-level", "debug"}, auditArgs(p)...)...)
	if code != exitClean || !strings.Contains(out, "findings: 0 high") {
		t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "snapshot fields this build does not know") || !strings.Contains(errOut, "flows[].retransmits_in") {
		t.Errorf("no debug line naming the unknown field:\n%s", errOut)
	}
	_, _, errOut = runCLI(t, auditArgs(p)...)
	if strings.Contains(errOut, "retransmits_in") {
		t.Errorf("unknown fields reported above debug level:\n%s", errOut)
	}
}

// TestAuditNoSiteWarning: without --site the audit says loudly, on stderr
// and in the report, that no peer was checked against its zone.
func TestAuditNoSiteWarning(t *testing.T) {
	p := writeSnap(t, cleanFlows()...)
	noSite := []string{"audit", "--catalog", testCatalog, "--matrix", "testapp", "--role", "server", "--snapshot", p}
	_, out, errOut := runCLI(t, noSite...)
	if !strings.Contains(errOut, "NO SITE FILE (--site)") || !strings.Contains(errOut, "ADMIN_IP") {
		t.Errorf("no warning naming the unbound zones on stderr:\n%s", errOut)
	}
	if !strings.Contains(out, "site: NONE: zones and roles are bound to no address") {
		t.Errorf("the report does not say it had no site:\n%s", out)
	}
	_, out, errOut = runCLI(t, auditArgs(p)...)
	if strings.Contains(errOut, "NO SITE FILE") || strings.Contains(out, "site: NONE") {
		t.Errorf("warning with a site:\n%s\n%s", errOut, out)
	}
}

// TestAuditSARIFLocations: in the repository the SARIF log is for (the
// working directory), results point at the user's site file (at the
// binding of the rule's zone) and catalog file, never at catalog/data/….
func TestAuditSARIFLocations(t *testing.T) {
	site, err := os.ReadFile("../../audit/testdata/render/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cat, err := os.ReadFile(testCatalog)
	if err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	snap := writeSnap(t, tflow(snapshot.Inbound, snapshot.TCP, 22, "203.0.113.50", snapshot.Evidence{SynIn: 1, SynAckOut: 1}),
		tflow(snapshot.Outbound, snapshot.UDP, 53, "198.51.100.53", snapshot.Evidence{}))
	if err := os.MkdirAll(filepath.Join(repo, "ci"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"ci/site.yaml": site, "ci/extra.yaml": cat} {
		if err := os.WriteFile(filepath.Join(repo, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(repo)
	adminLine := 0
	for i, l := range strings.Split(string(site), "\n") {
		if strings.HasPrefix(l, "  ADMIN_IP:") {
			adminLine = i + 1
		}
	}
	locations := func(args ...string) map[string]string {
		t.Helper()
		out := filepath.Join(repo, "fa.sarif")
		code, _, errOut := runCLI(t, append([]string{"audit", "--matrix", "utmstack@11", "--role", "manager", "--snapshot", snap,
			"--format", "sarif", "--out", out}, args...)...)
		if code != exitFindings {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var l struct {
			Runs []struct {
				Results []struct {
					Locations []struct {
						PhysicalLocation struct {
							ArtifactLocation struct{ URI string } `json:"artifactLocation"`
							Region           struct{ StartLine int }
						} `json:"physicalLocation"`
					} `json:"locations"`
					PartialFingerprints map[string]string `json:"partialFingerprints"`
				} `json:"results"`
			} `json:"runs"`
		}
		if err := json.Unmarshal(b, &l); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, r := range l.Runs[0].Results {
			pl := r.Locations[0].PhysicalLocation
			got[r.PartialFingerprints["flowauditFindingId/v1"]] = fmt.Sprintf("%s:%d", pl.ArtifactLocation.URI, pl.Region.StartLine)
		}
		return got
	}
	got := locations("--site", "ci/site.yaml", "--catalog", "ci/extra.yaml")
	if w := fmt.Sprintf("ci/site.yaml:%d", adminLine); got["peer-out-of-zone/utmstack11.manager.ssh/tcp/22"] != w {
		t.Errorf("out-of-zone SSH at %s, want %s", got["peer-out-of-zone/utmstack11.manager.ssh/tcp/22"], w)
	}
	if w := "ci/extra.yaml:1"; got["undocumented-flow/outbound/udp/53"] != w {
		t.Errorf("undocumented flow at %s, want %s", got["undocumented-flow/outbound/udp/53"], w)
	}
	for id, loc := range got {
		if strings.HasPrefix(loc, "catalog/") || strings.HasPrefix(loc, "file:") {
			t.Errorf("%s at %s: not a file of the repository", id, loc)
		}
	}
	got = locations()
	for id, loc := range got {
		if loc != "flowaudit-matrix/utmstack@11/manager:1" {
			t.Errorf("without site or catalog: %s at %s, want the placeholder", id, loc)
		}
	}
}
