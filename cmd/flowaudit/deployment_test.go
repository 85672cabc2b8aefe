package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// TestAuditDeploymentCLI: audit --deployment through the CLI entry point:
// exit 0 on a deployment without high findings (--fail-on high), 2 with
// a one-sided flow, 1 with a flag that selects a single host's input.
func TestAuditDeploymentCLI(t *testing.T) {
	dir := t.TempDir()
	start := time.Now().UTC().Add(-20 * time.Minute).Truncate(time.Second)
	write := func(name string, flows ...snapshot.Flow) {
		for i := range flows {
			flows[i].FirstSeen, flows[i].LastSeen = start.Add(time.Minute), start.Add(2*time.Minute)
		}
		s := &snapshot.Snapshot{Version: snapshot.FormatVersion, Source: "live", Start: start, End: start.Add(10 * time.Minute),
			Interfaces: []snapshot.Interface{{Name: "eth0", Index: 2}}, Stats: snapshot.Stats{FlowCapacity: 1024}, Flows: flows}
		if err := snapshot.WriteFile(filepath.Join(dir, name), s); err != nil {
			t.Fatal(err)
		}
	}
	open := snapshot.Evidence{SynIn: 1, SynAckOut: 1}
	write("server.json", tflow(snapshot.Inbound, snapshot.TCP, 40001, "10.3.0.11", open))
	write("sensor-ok.json", tflow(snapshot.Outbound, snapshot.TCP, 40001, "10.9.0.1", snapshot.Evidence{SynOut: 1, SynAckIn: 1}))
	write("server-blind.json", tflow(snapshot.Inbound, snapshot.TCP, 22, "192.0.2.10", open))
	write("sensor-dropped.json", tflow(snapshot.Outbound, snapshot.TCP, 40001, "10.9.0.1", snapshot.Evidence{SynOut: 3}))
	cat, _ := filepath.Abs(testCatalog)
	site, _ := filepath.Abs(testSite)
	dep := func(sensorSnap string) string {
		serverSnap := "server.json"
		if sensorSnap == "sensor-dropped.json" {
			serverSnap = "server-blind.json"
		}
		p := filepath.Join(dir, "dep-"+sensorSnap+".yaml")
		os.WriteFile(p, []byte(`matrix: testapp
site: `+site+`
catalogs: [`+cat+`]
nodes:
  - {name: server, role: server, snapshot: `+serverSnap+`, addresses: [10.9.0.1]}
  - {name: sensor, role: sensor, snapshot: `+sensorSnap+`, addresses: [10.3.0.11]}
`), 0o644)
		return p
	}
	if code, out, errs := runCLI(t, "audit", "--deployment", dep("sensor-ok.json"), "--fail-on", "high"); code != 0 || !strings.Contains(out, "cross-node findings: 0 high, 0 medium, 0 low") {
		t.Errorf("working deployment: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs := runCLI(t, "audit", "--deployment", dep("sensor-dropped.json"), "--fail-on", "high")
	if code != 2 || !strings.Contains(out, "cross-node findings: 1 high") || !strings.Contains(out, "high      one-sided  sensor (sensor)  server (server)  tcp/40001") {
		t.Errorf("dropped flow: exit %d\n%s\n%s", code, out, errs)
	}
	htmlOut := filepath.Join(dir, "dep.html")
	if code, _, errs := runCLI(t, "audit", "--deployment", dep("sensor-dropped.json"), "--format", "html", "--out", htmlOut); code != 2 {
		t.Errorf("html: exit %d %s", code, errs)
	}
	if b, _ := os.ReadFile(htmlOut); !strings.Contains(string(b), `<table class="grid">`) {
		t.Errorf("html report lacks the role grid")
	}
	if code, _, errs := runCLI(t, "audit", "--deployment", dep("sensor-ok.json"), "--matrix", "nosuchproduct"); code != 1 || !strings.Contains(errs, "nosuchproduct") {
		t.Errorf("--matrix replaces the file's: exit %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, "audit", "--deployment", dep("sensor-ok.json"), "--role", "server"); code != 1 || !strings.Contains(errs, "--role: not with --deployment") {
		t.Errorf("--matrix with --deployment: exit %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, "audit", "--deployment", filepath.Join(dir, "nope.yaml")); code != 1 || !strings.Contains(errs, "nope.yaml") {
		t.Errorf("missing deployment file: exit %d %s", code, errs)
	}
}
