package catalog

import "testing"

// TestDeploySiteExample: the example site the package ships
// (deploy/site.example.yaml) loads and fits the matrix it names.
func TestDeploySiteExample(t *testing.T) {
	s, err := LoadSite("../deploy/site.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	p, v, _, err := c.ResolveRef(s.Product)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(p, v); err != nil {
		t.Fatal(err)
	}
	if len(s.Zones) != 6 {
		t.Errorf("%d zones, want the 6 of a UTMStack v11 manager", len(s.Zones))
	}
}
