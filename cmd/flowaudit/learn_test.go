package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// TestCatalogLearnCLI: catalog learn writes a catalog that catalog
// validate accepts, against which the same snapshot audits clean (exit 0)
// and a snapshot with a new service does not (exit 2).
func TestCatalogLearnCLI(t *testing.T) {
	snap := writeSnap(t, cleanFlows()...)
	out := filepath.Join(t.TempDir(), "lab.yaml")
	if code, _, errs := runCLI(t, "catalog", "learn", "--product", "lab", "--site", testSite, "--out", out, "server="+snap); code != 0 {
		t.Fatalf("learn: exit %d: %s", code, errs)
	}
	data, _ := os.ReadFile(out)
	if !strings.Contains(string(data), "source: observed") || !strings.Contains(string(data), "peer: {zone: \"ADMIN_IP\"}") {
		t.Errorf("learned catalog:\n%s", data)
	}
	if code, stdout, errs := runCLI(t, "catalog", "validate", "--product", "lab", out, testSite); code != 0 || !strings.Contains(stdout, "ok (catalog: product lab") {
		t.Errorf("validate: exit %d\n%s\n%s", code, stdout, errs)
	}
	audit := func(s string) (int, string) {
		code, stdout, _ := runCLI(t, "audit", "--catalog", out, "--matrix", "lab", "--role", "server", "--site", testSite, "--snapshot", s, "--fail-on", "info")
		return code, stdout
	}
	if code, stdout := audit(snap); code != 0 {
		t.Errorf("the learned snapshot: exit %d\n%s", code, stdout)
	}
	later := writeSnap(t, append(cleanFlows(), tflow(snapshot.Inbound, snapshot.TCP, 6379, "192.0.2.10", snapshot.Evidence{SynIn: 1, SynAckOut: 1}))...)
	if code, stdout := audit(later); code != 2 || !strings.Contains(stdout, "unexpected-open-port") {
		t.Errorf("a new service: exit %d\n%s", code, stdout)
	}
	for _, args := range [][]string{
		{"catalog", "learn", "server=" + snap},
		{"catalog", "learn", "--product", "lab"},
		{"catalog", "learn", "--product", "lab", "server"},
		{"catalog", "learn", "--product", "lab", "server=" + filepath.Join(t.TempDir(), "none.json")},
	} {
		if code, _, _ := runCLI(t, args...); code != 1 {
			t.Errorf("%q: exit %d, want 1", args, code)
		}
	}
}
