package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// TestDiffCLI: exit 0 without change, 2 with changes, 1 on an error;
// text and JSON; --ignore; snapshots audited with --matrix; JSON reports.
func TestDiffCLI(t *testing.T) {
	old := writeSnap(t, cleanFlows()...)
	changed := append(cleanFlows(), tflow(snapshot.Inbound, snapshot.TCP, 6379, "192.0.2.66", snapshot.Evidence{SynIn: 1, SynAckOut: 1}))
	newer := writeSnap(t, changed...)

	if code, out, errs := runCLI(t, "diff", old, old); code != 0 || !strings.Contains(out, "no change") {
		t.Errorf("same snapshot: exit %d, out %q, err %q; want 0 and 'no change'", code, out, errs)
	}
	code, out, errs := runCLI(t, "diff", "--site", testSite, old, newer)
	if code != 2 || !strings.Contains(out, "+  inbound tcp/6379 open (1 peers: other)") || !strings.Contains(out, "+  tcp/6379") {
		t.Errorf("changed: exit %d, out:\n%s\nerr %q; want 2 and the new service and open port", code, out, errs)
	}
	if code, out, _ := runCLI(t, "diff", "--ignore", "192.0.2.66", old, newer); code != 0 {
		t.Errorf("ignored peer: exit %d, out:\n%s; want 0", code, out)
	}
	code, out, _ = runCLI(t, "diff", "--catalog", testCatalog, "-m", "testapp", "-r", "server", "--site", testSite, "--format", "json", old, newer)
	var d struct {
		Changes  int `json:"changes"`
		Findings struct {
			Appeared []struct{ ID string } `json:"appeared"`
		} `json:"findings"`
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil || code != 2 {
		t.Fatalf("json: exit %d, %v:\n%s", code, err, out)
	}
	if len(d.Findings.Appeared) != 1 || d.Findings.Appeared[0].ID != "unexpected-open-port/tcp/6379" {
		t.Errorf("appeared findings %+v, want unexpected-open-port/tcp/6379", d.Findings.Appeared)
	}

	// Reports written by audit --format json diff the same way.
	dir := t.TempDir()
	repOld, repNew := filepath.Join(dir, "old.json"), filepath.Join(dir, "new.json")
	runCLI(t, auditArgs(old, "--format", "json", "--out", repOld)...)
	runCLI(t, auditArgs(newer, "--format", "json", "--out", repNew)...)
	code, out, _ = runCLI(t, "diff", repOld, repNew)
	if code != 2 || !strings.Contains(out, "+  high   unexpected-open-port/tcp/6379") {
		t.Errorf("reports: exit %d, out:\n%s", code, out)
	}

	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{\"version\": 2,\n \"flows\": 7}"), 0o644)
	for _, args := range [][]string{{"diff", old}, {"diff", old, bad}, {"diff", "--ignore", "tcp/x", old, newer}, {"diff", "--format", "xml", old, newer}} {
		if code, _, errs := runCLI(t, args...); code != 1 {
			t.Errorf("%q: exit %d (%s), want 1", args, code, errs)
		}
	}
	if _, _, errs := runCLI(t, "diff", old, bad); !strings.Contains(errs, bad) {
		t.Errorf("error does not name the file: %s", errs)
	}
}
