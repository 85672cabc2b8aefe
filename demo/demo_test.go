// Package demo holds the lab behind `make demo` (run.sh) and its test.
package demo

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestDemo runs the demo non-interactively and checks that each planted
// problem is found with the right kind, and that nothing else is high.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole lab (about 40 s)")
	}
	testenv.RequireNetns(t)
	for _, tool := range []string{"socat", "nmap", "nft", "openssl", "curl", "logger", "nc", "ssh", "ssh-keygen", "perl", "dnsmasq"} {
		testenv.RequireTool(t, tool)
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		testenv.RequireTool(t, "sshd")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "flowaudit")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/flowaudit").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "out")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./run.sh")
	cmd.Env = append(os.Environ(), "DEMO_QUIET=1", "OUT="+out, "FLOWAUDIT="+bin)
	logs, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, logs)
	}
	t.Logf("demo output:\n%s", logs)

	var rep audit.Report
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	byID := map[string]audit.Finding{}
	for _, f := range rep.Findings {
		byID[f.ID] = f
		t.Logf("%-6s %s: %s", f.Severity, f.ID, f.Summary)
	}
	planted := []struct {
		id   string
		kind audit.Kind
		peer string // a peer the evidence must name
	}{
		{"unexpected-open-port/tcp/6379", audit.UnexpectedOpenPort, "192.0.2.66"},
		{"peer-out-of-zone/utmstack11.manager.ssh/tcp/22", audit.PeerOutOfZone, "192.0.2.35"},
		{"required-port-filtered/utmstack11.manager.agent-9001", audit.RequiredPortFiltered, "192.0.2.35"},
		{"missing-required/utmstack11.manager.agent-50051", audit.MissingRequired, ""},
		{"scan-suspected/192.0.2.66", audit.ScanSuspected, "192.0.2.66"},
	}
	for _, p := range planted {
		f, ok := byID[p.id]
		if !ok {
			t.Errorf("planted problem not found: %s", p.id)
			continue
		}
		if f.Kind != p.kind {
			t.Errorf("%s: kind %s, want %s", p.id, f.Kind, p.kind)
		}
		if p.peer != "" {
			var peers []string
			for _, tp := range f.Evidence.TopPeers {
				peers = append(peers, tp.Addr.String())
			}
			if !strings.Contains(strings.Join(peers, " "), p.peer) {
				t.Errorf("%s: peers %v lack %s", p.id, peers, p.peer)
			}
		}
		delete(byID, p.id)
	}
	for id, f := range byID {
		if f.Severity >= audit.High {
			t.Errorf("unplanted high-severity finding %s: %s", id, f.Summary)
		}
	}
	checkDemoDNS(t, out)
	html, err := os.ReadFile(filepath.Join(out, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(html), "unexpected-open-port") {
		t.Error("HTML report lacks the findings")
	}
	nft, err := os.ReadFile(filepath.Join(out, "rules.nft"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(nft), "table inet flowaudit") {
		t.Errorf("rules.nft is not an nftables ruleset:\n%s", nft)
	}
	if b, err := exec.Command("nft", "-c", "-f", filepath.Join(out, "rules.nft")).CombinedOutput(); err != nil {
		t.Errorf("nft -c rejects the demo's rules: %v\n%s", err, b)
	}
	if !strings.Contains(string(logs), "HTML report: "+out) {
		t.Error("demo did not print the HTML report's path")
	}
}

// checkDemoDNS: the appliance's feed fetches, audited against USM's
// documented feed host, match data.alienvault.com by the name its DNS
// answer gave; the fetch from an address no answer gave is flagged.
func checkDemoDNS(t *testing.T, out string) {
	t.Helper()
	var rep audit.Report
	b, err := os.ReadFile(filepath.Join(out, "report-dns.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Snapshot.DNS == nil || rep.Snapshot.DNS.Answers == 0 || rep.Snapshot.DNS.Dropped != 0 {
		t.Errorf("dns summary: %+v", rep.Snapshot.DNS)
	}
	var feed *audit.RuleStatus
	for i := range rep.Rules {
		if rep.Rules[i].Rule.ID == "usm.sensor.feed-update" {
			feed = &rep.Rules[i]
		}
	}
	if feed == nil {
		t.Fatal("no usm.sensor.feed-update rule in the DNS report")
	}
	if feed.Status != audit.StatusSeen || len(feed.Allowed.TopPeers) != 1 || feed.Allowed.TopPeers[0].Addr.String() != "192.0.2.80" ||
		strings.Join(feed.Allowed.TopPeers[0].Names, ",") != "data.alienvault.com" {
		t.Errorf("feed-update: status %s, allowed %+v", feed.Status, feed.Allowed.TopPeers)
	}
	var flagged bool
	for _, f := range rep.Findings {
		if f.Kind == audit.PeerOutOfZone && f.Rule != nil && f.Rule.ID == "usm.sensor.feed-update" {
			flagged = len(f.Evidence.TopPeers) == 1 && f.Evidence.TopPeers[0].Addr.String() == "192.0.2.88" &&
				strings.Contains(f.Summary, "reached 192.0.2.88 (no DNS name seen for it)")
			t.Logf("DNS finding: %s", f.Summary)
		}
	}
	if !flagged {
		t.Error("the fetch from 192.0.2.88 (never resolved) is not flagged")
	}
}
