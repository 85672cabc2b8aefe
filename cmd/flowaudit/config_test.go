package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

const exampleConfig = "../../deploy/flowaudit.yaml"

// TestConfigExample: the shipped example loads, every key of it is a flag,
// and its values reach the flags of each subcommand.
func TestConfigExample(t *testing.T) {
	cf, err := loadConfig(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := cf.check(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"watch", "audit", "record"} {
		if len(cf.sections[name]) == 0 {
			t.Errorf("the example has no %s section", name)
		}
	}
	root := newCLI(io.Discard, io.Discard).root
	watch, _, err := root.Find([]string{"watch"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cf.apply(root.PersistentFlags(), cf.global); err != nil {
		t.Fatal(err)
	}
	if err := cf.apply(watch.Flags(), cf.sections["watch"]); err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{"iface": "[eth0]", "matrix": "utmstack@11", "interval": "1m0s",
		"metrics-addr": "127.0.0.1:9750", "keep": "48", "replace-xdp": "false"} {
		if got := watch.Flags().Lookup(flag).Value.String(); got != want {
			t.Errorf("watch --%s = %q from the example, want %q", flag, got, want)
		}
	}
	if got := root.PersistentFlags().Lookup("log-format").Value.String(); got != "json" {
		t.Errorf("log-format %q, want json", got)
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "flowaudit.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigPrecedence: the file sets flags the command line does not
// give; a flag on the command line wins over the file.
func TestConfigPrecedence(t *testing.T) {
	medium := writeSnap(t, append(cleanFlows(), tflow(snapshot.Outbound, snapshot.UDP, 53, "198.51.100.53", snapshot.Evidence{}))...)
	cfg := writeConfig(t, fmt.Sprintf(`audit:
  catalog: [%s]
  matrix: testapp
  role: server
  site: %s
  snapshot: %s
  format: json
  fail-on: high
`, testCatalog, testSite, medium))

	// Everything from the file: JSON, and a medium finding under
	// fail-on high exits 0.
	code, out, errb := runCLI(t, "audit", "--config", cfg)
	if code != exitClean {
		t.Fatalf("exit %d, want 0 (fail-on high from the file)\n%s", code, errb)
	}
	var rep struct {
		Findings []struct{ Kind string } `json:"findings"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Findings) == 0 {
		t.Fatalf("not the JSON report of the file's format: %v\n%s", err, out)
	}

	// The command line wins: a table, and fail-on medium exits 2.
	code, out, errb = runCLI(t, "audit", "--config", cfg, "--format", "table", "--fail-on", "medium")
	if code != exitFindings {
		t.Fatalf("exit %d, want 2 (--fail-on medium on the command line)\n%s", code, errb)
	}
	if !strings.Contains(out, "SEVERITY") || strings.HasPrefix(out, "{") {
		t.Errorf("--format table did not override the file's json:\n%s", out)
	}

	// A list on the command line replaces the file's: a catalog that does
	// not exist instead of the file's fails.
	code, _, errb = runCLI(t, "audit", "--config", cfg, "--catalog", "/nonexistent/catalog.yaml")
	if code != exitError || !strings.Contains(errb, "/nonexistent/catalog.yaml") {
		t.Errorf("--catalog on the command line did not replace the file's: exit %d\n%s", code, errb)
	}

	// The file's log-format applies; --log-format on the command line wins.
	jcfg := writeConfig(t, "log-format: json\n"+strings.SplitN(mustRead(t, cfg), "\n", 2)[0]+"\n"+strings.SplitN(mustRead(t, cfg), "\n", 2)[1])
	_, _, errb = runCLI(t, "audit", "--config", jcfg)
	if !strings.Contains(errb, `"msg":"audit done"`) {
		t.Errorf("log-format json from the file not applied:\n%s", errb)
	}
	_, _, errb = runCLI(t, "audit", "--config", jcfg, "--log-format", "console")
	if strings.Contains(errb, `"msg":`) || !strings.Contains(errb, "audit done") {
		t.Errorf("--log-format console did not override the file:\n%s", errb)
	}
}

// TestConfigErrors: strict, and every error names the file and the line.
func TestConfigErrors(t *testing.T) {
	snap := writeSnap(t, cleanFlows()...)
	for _, tc := range []struct {
		name, text string
		line       int
		want       string
	}{
		{"unknown key in the section", "audit:\n  matrix: testapp\n  colour: true\n", 3, `unknown key "colour"`},
		{"unknown key in another section", "audit:\n  matrix: testapp\nwatch:\n  interval: 1m\n  intervall: 2m\n", 5, `unknown key "intervall"`},
		{"unknown top-level key", "log-format: json\naudits:\n  matrix: testapp\n", 2, `unknown key "audits"`},
		{"bad value", "watch:\n  interval: soon\n", 2, `interval "soon"`},
		{"bad value in the running section", "audit:\n  min-window: 5 minutes\n", 2, `min-window "5 minutes"`},
		{"list for a one-value flag", "audit:\n  role: [server, agent]\n", 2, "a list, but --role takes one value"},
		{"mapping for a value", "audit:\n  role:\n    name: server\n", 2, "role: a value (or a list) is expected"},
		{"empty value", "audit:\n  role:\n", 2, "role: a value (or a list) is expected"},
		{"duplicate key", "audit:\n  role: server\n  role: agent\n", 3, `duplicate key "role" (first at line 2)`},
		{"config in the file", "audit:\n  config: other.yaml\n", 2, `unknown key "config"`},
		{"section not a mapping", "audit: testapp\n", 1, "section audit must be a mapping"},
		{"bad log-level", "log-level: loud\n", 1, `log-level "loud"`},
		{"syntax error", "audit:\n  role: [server\n", 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeConfig(t, tc.text)
			code, out, errb := runCLI(t, "audit", "--config", cfg, "--snapshot", snap)
			if code != exitError {
				t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, out, errb)
			}
			if want := fmt.Sprintf("%s:%d: ", cfg, tc.line); !strings.Contains(errb, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errb)
			}
			if !strings.Contains(errb, tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, errb)
			}
			if strings.Contains(errb, "ERROR") || strings.Contains(errb, `"level"`) {
				t.Errorf("a config error went through the logger:\n%s", errb)
			}
			if out != "" {
				t.Errorf("stdout not empty: %q", out)
			}
		})
	}
	code, _, errb := runCLI(t, "audit", "--config", "/nonexistent/flowaudit.yaml", "--snapshot", snap)
	if code != exitError || !strings.Contains(errb, "/nonexistent/flowaudit.yaml") {
		t.Errorf("missing config file: exit %d\n%s", code, errb)
	}
}

// TestConfigEmpty: a file of comments only sets nothing.
func TestConfigEmpty(t *testing.T) {
	cf, err := loadConfig(writeConfig(t, "# nothing yet\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cf.check(); err != nil || len(cf.global) != 0 || len(cf.sections) != 0 {
		t.Errorf("comment-only file: %v %+v", err, cf)
	}
}

// TestConfigOnlyWhereDocumented: --config is a flag of audit, record and
// watch only.
func TestConfigOnlyWhereDocumented(t *testing.T) {
	root := newCLI(io.Discard, io.Discard).root
	for _, c := range root.Commands() {
		has := c.Flags().Lookup("config") != nil
		if want := contains([]string{"audit", "record", "watch"}, c.Name()); has != want {
			t.Errorf("%s: --config %v, want %v", c.Name(), has, want)
		}
	}
}
