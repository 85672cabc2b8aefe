package catalog

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseDeployment(t *testing.T) {
	d, err := ParseDeployment("/lab/dep.yaml", []byte(`format: flowaudit-deployment/v1
matrix: utmstack@11
conditions: [multi-node]
site: site.yaml
max_age: 2h
nodes:
  - name: manager
    role: manager
    snapshot: snaps/manager.json
    addresses: [192.0.2.10, "2001:db8::10"]
  - name: worker
    role: worker
    snapshot: https://store.example/worker.json
    addresses: 192.0.2.11
`))
	if err != nil {
		t.Fatal(err)
	}
	if d.Site != filepath.Join("/lab", "site.yaml") || d.MaxAge != 2*time.Hour || len(d.Nodes) != 2 ||
		d.Nodes[0].Snapshot != "/lab/snaps/manager.json" || d.Nodes[1].Snapshot != "https://store.example/worker.json" ||
		!d.Nodes[1].IsURL() || d.Nodes[0].IsURL() || d.Nodes[0].Line != 7 || d.Nodes[1].Line != 11 {
		t.Fatalf("parsed %+v", d)
	}
	if n, ok := d.Node(netip.MustParseAddr("::ffff:192.0.2.11")); !ok || n.Name != "worker" {
		t.Errorf("Node(worker's address) = %+v %v", n, ok)
	}

	for _, c := range []struct{ name, yaml, want string }{
		{"unknown key", "matrix: x\nnodes:\n  - {name: a, role: r, snapshot: s, addresses: [10.0.0.1], colour: red}\n", "dep.yaml:3:"},
		{"no matrix", "nodes:\n  - {name: a, role: r, snapshot: s, addresses: [10.0.0.1]}\n", "no matrix"},
		{"no nodes", "matrix: x\n", "no nodes"},
		{"duplicate name", "matrix: x\nnodes:\n  - {name: a, role: r, snapshot: s, addresses: [10.0.0.1]}\n  - {name: a, role: r, snapshot: t, addresses: [10.0.0.2]}\n", `dep.yaml:4: node "a" named twice (first at line 3)`},
		{"shared address", "matrix: x\nnodes:\n  - {name: a, role: r, snapshot: s, addresses: [10.0.0.1]}\n  - {name: b, role: r, snapshot: t, addresses: [10.0.0.1]}\n", `address 10.0.0.1 is also node "a"'s`},
		{"prefix", "matrix: x\nnodes:\n  - name: a\n    role: r\n    snapshot: s\n    addresses:\n      - 10.0.0.0/8\n", `dep.yaml:7: node "a": bad address 10.0.0.0/8`},
		{"no addresses", "matrix: x\nnodes:\n  - {name: a, role: r, snapshot: s}\n", "no addresses"},
		{"ftp", "matrix: x\nnodes:\n  - {name: a, role: r, snapshot: 'ftp://h/s.json', addresses: [10.0.0.1]}\n", "only http and https"},
		{"bad max_age", "matrix: x\nmax_age: soon\nnodes:\n  - {name: a, role: r, snapshot: s, addresses: [10.0.0.1]}\n", `dep.yaml:2: max_age "soon"`},
		{"bad role", "matrix: x\nnodes:\n  - {name: a, role: Manager, snapshot: s, addresses: [10.0.0.1]}\n", `role "Manager"`},
	} {
		_, err := ParseDeployment("dep.yaml", []byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}
