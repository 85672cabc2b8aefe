package main

import (
	"testing"
)

// TestDeploymentPart: part 7's synthetic deployment is audited with the
// two planted cross-node findings and nothing else across nodes (the
// check measureDeployment makes), in-process and small.
func TestDeploymentPart(t *testing.T) {
	c, err := parseDeployConfig("12,10,3")
	if err != nil {
		t.Fatal(err)
	}
	path, size, err := writeDeployment(t.TempDir(), c)
	if err != nil {
		t.Fatal(err)
	}
	a, err := childDeployAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	if a.Nodes != 13 || a.Cross != 2 || size <= 0 {
		t.Errorf("%d nodes, %d cross-node findings, %d bytes; want 13 nodes and the 2 planted", a.Nodes, a.Cross, size)
	}
	// Per sensor: 2 outbound to the server, 3 inbound from it, the syslog
	// sources and HIDS agents; sensors 2 and 3 one more each; the server:
	// 40001 from all but sensor 1, 40002 from all, 3 per sensor outbound.
	if want := 12*(5+10+3) + 2 + 11 + 12 + 3*12; a.Flows != want {
		t.Errorf("flows %d, want %d", a.Flows, want)
	}
	for _, bad := range []string{"", "3,1,1", "10,x,1", "10,1"} {
		if _, err := parseDeployConfig(bad); err == nil {
			t.Errorf("parseDeployConfig(%q) accepted", bad)
		}
	}
}
