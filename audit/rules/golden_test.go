package rules

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// fixture loads the golden tests' snapshot, matrix (fixapp, role server)
// and site.
func fixture(t testing.TB) (*snapshot.Snapshot, *catalog.Matrix, *catalog.Site) {
	t.Helper()
	snap, err := snapshot.ReadFile("testdata/fixture.snapshot.json")
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.LoadFiles("testdata/fixture-catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, v, err := cat.Resolve("fixapp")
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.Effective(v, "server", nil)
	if err != nil {
		t.Fatal(err)
	}
	site, err := catalog.LoadSite("testdata/fixture-site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return snap, m, site
}

// goldenCases are the fixture's outputs checked byte for byte; the
// command's tests feed the same files to nft, iptables-restore and ufw.
var goldenCases = []struct {
	file   string
	target Target
	opts   func(*Options)
}{
	{"both.nft", NFTables, nil},
	{"both.iptables", IPTables, nil},
	{"both.ip6tables", IP6Tables, nil},
	{"both.ufw.sh", UFW, nil},
	{"both.aws.json", AWSSG, nil},
	{"both.azure.sh", AzureNSG, nil},
	{"observed.nft", NFTables, func(o *Options) { o.Mode = Observed; o.Matrix, o.Site = nil, nil }},
	{"observed-matrix.iptables", IPTables, func(o *Options) { o.Mode = Observed }},
	{"documented.nft", NFTables, func(o *Options) { o.Mode = Documented }},
	{"documented.ip6tables", IP6Tables, func(o *Options) { o.Mode = Documented }},
	{"documented.aws.json", AWSSG, func(o *Options) { o.Mode = Documented }},
	{"aggregate.nft", NFTables, func(o *Options) { o.Aggregate4, o.Aggregate6 = 24, 64 }},
	{"egress-drop.nft", NFTables, func(o *Options) { o.EgressPolicy = Drop }},
	{"egress-drop.iptables", IPTables, func(o *Options) { o.EgressPolicy = Drop }},
	{"egress-drop.ip6tables", IP6Tables, func(o *Options) { o.EgressPolicy = Drop }},
	{"egress-drop.ufw.sh", UFW, func(o *Options) { o.EgressPolicy = Drop }},
	{"egress-drop.aws.json", AWSSG, func(o *Options) { o.EgressPolicy = Drop }},
	{"egress-drop.azure.sh", AzureNSG, func(o *Options) { o.EgressPolicy = Drop }},
}

func goldenOptions(m *catalog.Matrix, site *catalog.Site, mod func(*Options)) Options {
	o := Options{Matrix: m, Site: site, ToolVersion: "v0.0.0-test"}
	if mod != nil {
		mod(&o)
	}
	return o
}

func TestGolden(t *testing.T) {
	snap, m, site := fixture(t)
	for _, tc := range goldenCases {
		t.Run(tc.file, func(t *testing.T) {
			rs, err := Build(snap, goldenOptions(m, site, tc.opts))
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := Render(&buf, rs, tc.target, RenderOptions{}); err != nil {
				t.Fatal(err)
			}
			// Deterministic: a second build, from the flows in reverse
			// order, renders the same bytes.
			rev := *snap
			rev.Flows = nil
			for i := len(snap.Flows) - 1; i >= 0; i-- {
				rev.Flows = append(rev.Flows, snap.Flows[i])
			}
			rs2, _ := Build(&rev, goldenOptions(m, site, tc.opts))
			var buf2 bytes.Buffer
			if err := Render(&buf2, rs2, tc.target, RenderOptions{}); err != nil || !bytes.Equal(buf.Bytes(), buf2.Bytes()) {
				t.Fatalf("reordered flows change the output (err %v)", err)
			}
			path := filepath.Join("testdata", "golden", tc.file)
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./audit/rules -run TestGolden -update)", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("%s differs from the golden file (go test ./audit/rules -run TestGolden -update, then review the diff)\n--- got ---\n%s", path, buf.String())
			}
		})
	}
}
