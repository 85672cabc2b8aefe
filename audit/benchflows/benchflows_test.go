package benchflows

import (
	"testing"

	"github.com/flowaudit/flowaudit/audit"
)

// The synthetic recording audits to every kind of flow it is meant to
// contain, and its keys are distinct.
func TestGenerator(t *testing.T) {
	m, site, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(m, site, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	flows := g.Flows(0, 2000)
	type key struct {
		dir, proto uint8
		port       uint16
		peer       string
	}
	seen := map[key]bool{}
	for _, f := range flows {
		k := key{uint8(f.Direction), uint8(f.Proto), f.Port, f.Peer.String()}
		if seen[k] {
			t.Fatalf("duplicate key %+v", k)
		}
		seen[k] = true
	}
	rep, err := audit.Run(g.Snapshot(flows, 65536), audit.Options{Matrix: m, Site: site})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[audit.Kind]int{}
	for _, f := range rep.Findings {
		kinds[f.Kind]++
	}
	t.Logf("agentIn %d agentOut %d otherIn %d; findings by kind: %v", len(g.agentIn), len(g.agentOut), len(g.otherIn), kinds)
	if len(rep.Findings) == 0 {
		t.Fatal("no findings: the synthetic traffic should contain undocumented and out-of-zone flows")
	}
}
