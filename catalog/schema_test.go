package catalog

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

func compileSchema(t *testing.T, name string, data []byte) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(name, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(name)
	if err != nil {
		t.Fatalf("compile %s: %v", name, err)
	}
	return s
}

func validateYAML(s *jsonschema.Schema, data []byte) error {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// TestSchemaValidatesCatalogs checks the published JSON Schema against
// every embedded catalog, and that it rejects what the loader rejects for
// structural reasons.
func TestSchemaValidatesCatalogs(t *testing.T) {
	s := compileSchema(t, "catalog.schema.json", CatalogSchema())
	files := BuiltinFiles()
	if len(files) < 4 {
		t.Fatalf("only %d embedded catalogs", len(files))
	}
	for name, data := range files {
		if err := validateYAML(s, data); err != nil {
			t.Errorf("%s does not validate against the schema: %v", name, err)
		}
	}
	if err := validateYAML(s, []byte(baseCatalog)); err != nil {
		t.Errorf("base test catalog: %v", err)
	}
	for _, tc := range []struct{ name, old, new string }{
		{"unknown key", "    purpose: Web interface\n", "    purpose: Web interface\n    colour: blue\n"},
		{"port out of range", `ports: [443, "8000-8001"]`, `ports: [443, 70000]`},
		{"port not a number", `ports: [443, "8000-8001"]`, `ports: [https]`},
		{"unknown protocol", "    proto: tcp\n", "    proto: tcpp\n"},
		{"bad direction", "    direction: inbound\n", "    direction: sideways\n"},
		{"two peer kinds", "peer: {role: client}", "peer: {role: client, any: true}"},
		{"bad zone name", "  - id: CLIENTS\n", "  - id: admin-ip\n"},
		{"bad version range", `versions: ">=1.2"`, `versions: "<<5"`},
		{"role and roles", "    role: server\n", "    role: server\n    roles: [client]\n"},
		{"missing citation section", `citation: {doc: doc.txt, section: "2"}`, `citation: {doc: doc.txt}`},
		{"bad condition", `condition: "!vpn"`, `condition: "vpn && ha"`},
		{"supplementary without url", "    source: seed\n", "    source: supplementary\n"},
	} {
		src := strings.Replace(baseCatalog, tc.old, tc.new, 1)
		if src == baseCatalog {
			t.Fatalf("%s: test bug", tc.name)
		}
		if err := validateYAML(s, []byte(src)); err == nil {
			t.Errorf("%s: schema accepted it", tc.name)
		}
		if _, err := Parse("x.yaml", []byte(src)); err == nil {
			t.Errorf("%s: loader accepted it", tc.name)
		}
	}
}

func TestSchemaValidatesSites(t *testing.T) {
	s := compileSchema(t, "site.schema.json", SiteSchema())
	paths, _ := filepath.Glob(filepath.Join("..", "testdata", "sites", "*.yaml"))
	if len(paths) == 0 {
		t.Fatal("no site examples")
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := validateYAML(s, data); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		if _, err := ParseSite(p, data); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, bad := range []string{
		"zones: {admin_ip: 192.0.2.1}\n",
		"zones: {ADMIN_IP: []}\n",
		"zones: {ADMIN_IP: 192.0.2.1}\nextra: 1\n",
		"roles: {server: [not-an-address]}\n",
		"format: flowaudit-site/v1\n",
		"ports: {vpn: 33900}\n",
		"ports: {usm.server.vpn: 70000}\n",
		"ports: {usm.server.vpn: []}\n",
	} {
		if err := validateYAML(s, []byte(bad)); err == nil {
			t.Errorf("schema accepted %q", bad)
		}
		if _, err := ParseSite("x.yaml", []byte(bad)); err == nil {
			t.Errorf("loader accepted %q", bad)
		}
	}
}
