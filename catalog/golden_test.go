package catalog

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// goldenVersions are the releases whose matrices are kept as goldens: the
// latest of every family, plus USM releases on either side of its version
// boundaries (otx 5.1+, WalkMe 5.4.3, 9391 before 5.6.5), and every
// edition of a family's document (USM: levelblue by default, alienvault).
var goldenVersions = []string{"usm@5.0", "usm@5.4", "usm@5.6.5", "usm@5.6.5#alienvault", "utmstack@10", "utmstack@11", "vsos@9.2"}

// conditionSets returns the combinations a golden covers: none, each
// condition alone, and all together.
func conditionSets(f *Family) [][]string {
	sets := [][]string{nil}
	var all []string
	for _, c := range f.Conditions {
		sets = append(sets, []string{c.Name})
		all = append(all, c.Name)
	}
	if len(all) > 1 {
		sets = append(sets, all)
	}
	return sets
}

func TestGoldenMatrices(t *testing.T) {
	c := builtinT(t)
	seen := map[string]bool{}
	for _, ref := range goldenVersions {
		p, v, ed, err := c.ResolveRef(ref)
		if err != nil {
			t.Fatal(err)
		}
		f, err := p.Family(v)
		if err != nil {
			t.Fatal(err)
		}
		seen[p.ID+"/"+f.ID+"#"+ed] = true
		for _, role := range f.RoleNames() {
			var buf bytes.Buffer
			nonEmpty := false
			for _, set := range conditionSets(f) {
				conds := map[string]bool{}
				for _, n := range set {
					conds[n] = true
				}
				m, err := p.EffectiveEdition(v, ed, role, conds)
				if err != nil {
					t.Fatalf("%s %s %v: %v", ref, role, set, err)
				}
				if m.Edition != ed {
					t.Fatalf("%s: matrix follows edition %q", ref, m.Edition)
				}
				nonEmpty = nonEmpty || len(m.Rules) > 0
				if err := m.WriteText(&buf, false); err != nil {
					t.Fatal(err)
				}
				buf.WriteString("\n")
			}
			if !nonEmpty {
				t.Errorf("%s role %s: no rules under any condition set", ref, role)
			}
			checkGolden(t, filepath.Join("testdata", "golden", ref, role+".txt"), buf.Bytes())
		}
	}
	// Every family (and every edition of its document) has goldens.
	for _, p := range c.Products() {
		for _, f := range p.Families() {
			eds := []string{""}
			if len(f.Editions) > 0 {
				eds = nil
				for _, e := range f.Editions {
					eds = append(eds, e.Name)
				}
			}
			for _, ed := range eds {
				if !seen[p.ID+"/"+f.ID+"#"+ed] {
					t.Errorf("no golden for %s family %s edition %q", p.ID, f.ID, ed)
				}
			}
		}
	}
}

func TestGoldenJSON(t *testing.T) {
	c := builtinT(t)
	for _, tc := range []struct {
		ref, role string
		conds     map[string]bool
	}{
		{"utmstack@11", "manager", map[string]bool{"multi-node": true, "federation": true}},
		{"usm@5.6.5", "sensor", nil},
	} {
		p, v, err := c.Resolve(tc.ref)
		if err != nil {
			t.Fatal(err)
		}
		m, err := p.Effective(v, tc.role, tc.conds)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		checkGolden(t, filepath.Join("testdata", "golden", tc.ref, tc.role+".json"), append(b, '\n'))
	}
}

func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./catalog -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the effective matrix (run go test ./catalog -update and review the diff):\n%s", path, firstDiff(string(want), string(got)))
	}
}

func firstDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(wl), len(gl)); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, w, g)
		}
	}
	return ""
}

func builtinT(t *testing.T) *Catalog {
	t.Helper()
	c, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	return c
}
