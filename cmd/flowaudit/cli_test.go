package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// noLogLine fails when stderr holds a line of the diagnostic logger
// (console: "15:04:05\tERROR\t…", json: {"level":…}).
func noLogLine(t *testing.T, stderr string) {
	t.Helper()
	for _, l := range strings.Split(stderr, "\n") {
		if strings.Contains(l, "\tERROR\t") || strings.Contains(l, "\tINFO\t") || strings.Contains(l, "\tWARN\t") ||
			strings.Contains(l, `"level":`) {
			t.Errorf("a log line on stderr: %q", l)
		}
	}
}

// TestUsageErrors: a mistake on the command line prints the problem, the
// one-line usage and a hint on stderr, exits 1 and logs nothing.
func TestUsageErrors(t *testing.T) {
	snap := writeSnap(t, cleanFlows()...)
	for _, tc := range []struct {
		name string
		args []string
		cmd  string // the command named in the hint
		want string
	}{
		{"missing --matrix", []string{"audit", "--snapshot", snap}, "flowaudit audit", "--matrix is required"},
		{"missing --role", []string{"audit", "--snapshot", snap, "--matrix", "utmstack@11"}, "flowaudit audit", "--role is required"},
		{"unknown flag", []string{"audit", "--colour"}, "flowaudit audit", "unknown flag: --colour"},
		{"bad duration", []string{"record", "--duration", "soon"}, "flowaudit record", `invalid argument "soon"`},
		{"bad number", []string{"watch", "--keep", "many"}, "flowaudit watch", `invalid argument "many"`},
		{"bad --format", auditArgs(snap, "--format", "pdf"), "flowaudit audit", `--format "pdf"`},
		{"bad --fail-on", auditArgs(snap, "--fail-on", "severe"), "flowaudit audit", "--fail-on"},
		{"flag without value", []string{"audit", "--matrix"}, "flowaudit audit", "flag needs an argument"},
		{"stray argument", auditArgs(snap, "extra"), "flowaudit audit", `unexpected argument "extra"`},
		{"record without --out", []string{"record", "--iface", "lo"}, "flowaudit record", "--out is required"},
		{"watch bad --interval", []string{"watch", "--interval", "10ms"}, "flowaudit watch", "--interval 10ms"},
		{"rules without --target", []string{"rules", "--snapshot", snap}, "flowaudit rules", "--target is required"},
		{"replay without capture", []string{"replay", "--out", "x.json"}, "flowaudit replay", "exactly one capture file"},
		{"catalog show without product", []string{"catalog", "show"}, "flowaudit catalog show", "missing PRODUCT"},
		{"catalog without subcommand", []string{"catalog"}, "flowaudit catalog", "missing subcommand (list, show, validate or learn)"},
		{"catalog unknown subcommand", []string{"catalog", "lst"}, "flowaudit catalog", `unknown subcommand "lst"`},
		{"unknown command", []string{"audti"}, "flowaudit", `unknown command "audti"`},
		{"bad --log-level", []string{"--log-level", "loud", "audit"}, "flowaudit audit", `invalid argument "loud"`},
		{"json logs, still no log line", []string{"--log-format", "json", "audit", "--snapshot", snap}, "flowaudit audit", "--matrix is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errb := runCLI(t, tc.args...)
			if code != exitError {
				t.Fatalf("exit %d, want 1\nstderr:\n%s", code, errb)
			}
			lines := strings.Split(strings.TrimRight(errb, "\n"), "\n")
			if len(lines) != 3 {
				t.Fatalf("stderr is %d lines, want 3 (problem, usage, hint):\n%s", len(lines), errb)
			}
			if !strings.HasPrefix(lines[0], tc.cmd+": ") || !strings.Contains(lines[0], tc.want) {
				t.Errorf("first line %q, want %q: …%s…", lines[0], tc.cmd, tc.want)
			}
			if !strings.HasPrefix(lines[1], "Usage: "+strings.Fields(tc.cmd)[0]) {
				t.Errorf("second line is not the usage: %q", lines[1])
			}
			if want := fmt.Sprintf("Run '%s --help' for usage.", tc.cmd); lines[2] != want {
				t.Errorf("third line %q, want %q", lines[2], want)
			}
			noLogLine(t, errb)
			if out != "" && tc.name != "catalog without subcommand" {
				t.Errorf("stdout not empty: %q", out)
			}
		})
	}
}

// TestRunErrorsStillLogged: an error that is not a usage error (a file
// that cannot be read) still goes through the logger, without the usage.
func TestRunErrorsStillLogged(t *testing.T) {
	code, _, errb := runCLI(t, "--log-format", "json", "audit", "--catalog", testCatalog, "--matrix", "testapp", "--role", "server",
		"--snapshot", "/nonexistent/snap.json")
	if code != exitError || !strings.Contains(errb, `"level":"error"`) || strings.Contains(errb, "Usage:") {
		t.Errorf("exit %d, stderr:\n%s", code, errb)
	}
}

func TestHelpAndVersion(t *testing.T) {
	code, out, _ := runCLI(t)
	if code != exitError || !strings.Contains(out, "Commands:") {
		t.Errorf("no command: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}} {
		code, out, _ := runCLI(t, args...)
		if code != exitClean || !strings.Contains(out, "  audit ") || !strings.Contains(out, "  completion ") {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, out, _ := runCLI(t, args...)
		if code != exitClean || out != "flowaudit "+Version()+"\n" {
			t.Errorf("%v: exit %d %q", args, code, out)
		}
	}
	// A subcommand's flags in the order it declares them, as before cobra.
	_, out, _ = runCLI(t, "record", "--help")
	if i, j := strings.Index(out, "--iface"), strings.Index(out, "--checkpoint"); i < 0 || j < 0 || i > j {
		t.Errorf("record --help: flags not in declaration order:\n%s", out)
	}
	// Global flags before or after the command.
	snap := writeSnap(t, cleanFlows()...)
	for _, args := range [][]string{
		append([]string{"--log-format", "json"}, auditArgs(snap)...),
		append(auditArgs(snap), "--log-format=json"),
	} {
		code, _, errb := runCLI(t, args...)
		if code != exitClean || !strings.Contains(errb, `"msg":"audit done"`) {
			t.Errorf("%v: exit %d\n%s", args, code, errb)
		}
	}
}

// TestCompletion: each shell's script is valid for that shell, and the
// completion knows the flags and their values.
func TestCompletion(t *testing.T) {
	shells := map[string][]string{"bash": {"bash", "-n"}, "zsh": {"zsh", "-n"}, "fish": {"fish", "--no-execute"}}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		t.Run(sh, func(t *testing.T) {
			code, out, errb := runCLI(t, "completion", sh)
			if code != exitClean || len(out) < 1000 {
				t.Fatalf("exit %d, %d bytes\n%s", code, len(out), errb)
			}
			if !strings.Contains(out, "flowaudit") {
				t.Error("the script does not name flowaudit")
			}
			check := shells[sh]
			if _, err := exec.LookPath(check[0]); err != nil {
				if sh == "bash" {
					t.Fatal("bash not installed")
				}
				// .ci/run installs zsh and fish; elsewhere their
				// checks are skipped.
				t.Skipf("%s not installed (apt-get install %s)", check[0], check[0])
			}
			p := filepath.Join(t.TempDir(), "flowaudit."+sh)
			if err := os.WriteFile(p, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(check[0], append(check[1:], p)...).CombinedOutput(); err != nil {
				t.Errorf("%s rejects the script: %v\n%s", strings.Join(check, " "), err, b)
			}
		})
	}
	if code, _, errb := runCLI(t, "completion", "tcsh"); code != exitError {
		t.Errorf("completion tcsh: exit %d\n%s", code, errb)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "aud"}, []string{"audit"}},
		{[]string{"__complete", "audit", "--fa"}, []string{"--fail-on"}},
		{[]string{"__complete", "watch", "--con"}, []string{"--config", "--conditions"}},
		{[]string{"__complete", "audit", "--format", ""}, []string{"table", "json", "html", "junit", "sarif"}},
		{[]string{"__complete", "watch", "--matrix", ""}, []string{"utmstack@11", "usm"}},
		{[]string{"__complete", "record", "--iface", ""}, []string{"lo"}},
		{[]string{"__complete", "catalog", ""}, []string{"list", "show", "validate"}},
	} {
		_, out, _ := runCLI(t, tc.args...)
		got := strings.Split(out, "\n")
		for _, w := range tc.want {
			found := false
			for _, g := range got {
				if strings.SplitN(g, "\t", 2)[0] == w {
					found = true
				}
			}
			if !found {
				t.Errorf("%v: no %q in\n%s", tc.args, w, out)
			}
		}
	}
}

// TestManPages: gen-man writes a page per command, the same bytes for the
// same date whatever the clock, each one clean for groff.
func TestManPages(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if code, _, errb := runCLI(t, "gen-man", a, "--date", "2026-12-01"); code != exitClean {
		t.Fatalf("exit %d\n%s", code, errb)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1796083200") // 2026-12-01T00:00:00Z
	if code, _, errb := runCLI(t, "gen-man", b); code != exitClean {
		t.Fatalf("exit %d\n%s", code, errb)
	}
	names := func(dir string) []string {
		es, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, e := range es {
			n = append(n, e.Name())
		}
		sort.Strings(n)
		return n
	}
	got := names(a)
	for _, want := range []string{"flowaudit.1", "flowaudit-audit.1", "flowaudit-record.1", "flowaudit-watch.1", "flowaudit-rules.1",
		"flowaudit-replay.1", "flowaudit-catalog.1", "flowaudit-catalog-show.1", "flowaudit-completion-bash.1", "flowaudit-completion-zsh.1",
		"flowaudit-completion-fish.1"} {
		if !contains(got, want) {
			t.Errorf("no %s in %v", want, got)
		}
	}
	for _, n := range got {
		if strings.Contains(n, "gen-man") || strings.Contains(n, "help") || strings.Contains(n, ".tmp") {
			t.Errorf("unexpected page %s", n)
		}
	}
	if strings.Join(names(b), " ") != strings.Join(got, " ") {
		t.Fatalf("SOURCE_DATE_EPOCH gave other pages: %v", names(b))
	}
	for _, n := range got {
		pa, pb := mustRead(t, filepath.Join(a, n)), mustRead(t, filepath.Join(b, n))
		if pa != pb {
			t.Errorf("%s differs between --date and SOURCE_DATE_EPOCH of the same day", n)
		}
		if !strings.Contains(pa, `"Dec 2026"`) || !strings.Contains(pa, `"flowaudit `+Version()+`"`) {
			t.Errorf("%s: header without the fixed date or the version:\n%s", n, strings.SplitN(pa, "\n", 3)[1])
		}
	}
	audit := mustRead(t, filepath.Join(a, "flowaudit-audit.1"))
	for _, want := range []string{`\fB--matrix\fP`, `\fB--config\fP`, `\fB--fail-on\fP`, "Exit codes:",
		`ROLE [--site FILE] (--snapshot FILE | --iface IFACE --duration D) [flags]\fP`} {
		if !strings.Contains(audit, want) {
			t.Errorf("flowaudit-audit.1 lacks %q", want)
		}
	}
	if !strings.Contains(mustRead(t, filepath.Join(a, "flowaudit.1")), "NO_COLOR") {
		t.Error("flowaudit.1 does not document NO_COLOR")
	}
	if _, err := exec.LookPath("groff"); err == nil {
		for _, n := range got {
			cmd := exec.Command("groff", "-k", "-man", "-ww", "-z", filepath.Join(a, n))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil || stderr.Len() > 0 {
				t.Errorf("groff warns about %s: %v\n%s", n, err, stderr.String())
			}
		}
	}
	// Without a date the pages would depend on the clock: refused.
	t.Setenv("SOURCE_DATE_EPOCH", "")
	if code, _, errb := runCLI(t, "gen-man", t.TempDir()); code != exitError || !strings.Contains(errb, "SOURCE_DATE_EPOCH") {
		t.Errorf("gen-man without a date: exit %d\n%s", code, errb)
	}
}

// TestOldStyleCommand: a subcommand written before cobra (command.run
// parsing its own flags) still works, global flags included.
func TestOldStyleCommand(t *testing.T) {
	register(&command{name: "oldstyle", summary: "a test", run: func(e *env, args []string) error {
		fs := newFlagSet(e, "oldstyle", "flowaudit oldstyle [--n N]", "")
		n := fs.Int("n", 1, "a number")
		if err := fs.Parse(args); err != nil {
			return err
		}
		e.log.Info("oldstyle ran")
		_, err := fmt.Fprintf(e.stdout, "n=%d args=%v\n", *n, fs.Args())
		return err
	}})
	t.Cleanup(func() { delete(commands, "oldstyle") })
	code, out, errb := runCLI(t, "oldstyle", "--n", "3", "--log-format", "json", "x")
	if code != exitClean || out != "n=3 args=[x]\n" || !strings.Contains(errb, `"msg":"oldstyle ran"`) {
		t.Errorf("exit %d %q\n%s", code, out, errb)
	}
	code, _, errb = runCLI(t, "oldstyle", "--bogus")
	if code != exitError || !strings.Contains(errb, "Run 'flowaudit oldstyle --help' for usage.") {
		t.Errorf("unknown flag: exit %d\n%s", code, errb)
	}
	noLogLine(t, errb)
	code, out, _ = runCLI(t, "oldstyle", "--help")
	if code != exitClean || !strings.Contains(out, "Usage: flowaudit oldstyle [--n N]") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
	// And as a sub-subcommand (catalog learn, written before cobra).
	cat := commands["catalog"]
	subs := cat.subs
	cat.subs = append(append([]*command{}, subs...), &command{name: "oldsub", summary: "an old catalog sub", run: func(e *env, args []string) error {
		fs := catalogFlagSet(e, "oldsub", "flowaudit catalog oldsub FILE", "")
		v := fs.BoolP("verbose", "v", false, "verbose")
		if err := fs.Parse(args); err != nil {
			return err
		}
		_, err := fmt.Fprintf(e.stdout, "v=%v %v\n", *v, fs.Args())
		return err
	}})
	t.Cleanup(func() { cat.subs = subs })
	code, out, errb = runCLI(t, "catalog", "oldsub", "-v", "f.yaml")
	if code != exitClean || out != "v=true [f.yaml]\n" {
		t.Errorf("catalog oldsub: exit %d %q\n%s", code, out, errb)
	}
	code, out, _ = runCLI(t, "catalog", "oldsub", "--help")
	if code != exitClean || !strings.Contains(out, "flowaudit catalog oldsub: an old catalog sub") {
		t.Errorf("catalog oldsub --help: exit %d\n%s", code, out)
	}
	if _, out, _ := runCLI(t, "catalog", "--help"); !strings.Contains(out, "  oldsub ") {
		t.Errorf("catalog --help does not list oldsub:\n%s", out)
	}
}

// TestFlagsKept: the flags the subcommands had before cobra, with their
// defaults (a subset that scripts and the docs rely on).
func TestFlagsKept(t *testing.T) {
	root := newCLI(nil, nil).root
	for _, tc := range []struct{ cmd, flag, short, def string }{
		{"audit", "matrix", "m", ""}, {"audit", "role", "r", ""}, {"audit", "format", "f", "table"}, {"audit", "out", "o", ""},
		{"audit", "fail-on", "", "low"}, {"audit", "snapshot", "s", ""}, {"audit", "iface", "i", "[]"}, {"audit", "duration", "d", "10m0s"},
		{"record", "duration", "d", "10m0s"}, {"record", "checkpoint", "", "5m0s"}, {"record", "max-flows", "", "65536"},
		{"watch", "interval", "", "1m0s"}, {"watch", "window", "", "1h0m0s"}, {"watch", "settle", "", "10m0s"}, {"watch", "keep", "", "48"},
		{"watch", "duration", "d", "0s"}, {"watch", "events", "", ""}, {"watch", "metrics-addr", "", ""},
		{"rules", "target", "t", ""}, {"rules", "management-port", "", "[tcp/22,tcp/443]"}, {"replay", "local-addr", "l", "[]"},
		{"replay", "ingress", "", "xdp"},
	} {
		c, _, err := root.Find([]string{tc.cmd})
		if err != nil {
			t.Fatal(err)
		}
		f := c.Flags().Lookup(tc.flag)
		if f == nil {
			t.Errorf("%s --%s is gone", tc.cmd, tc.flag)
			continue
		}
		if f.Shorthand != tc.short || f.DefValue != tc.def {
			t.Errorf("%s --%s: -%s default %q, want -%s %q", tc.cmd, tc.flag, f.Shorthand, f.DefValue, tc.short, tc.def)
		}
	}
	c, _, _ := root.Find([]string{"catalog", "show"})
	if c.Name() != "show" || c.Flags().Lookup("notes") == nil {
		t.Errorf("catalog show: %s", c.CommandPath())
	}
	var _ pflag.Value = choiceValue{}
}

// TestMissingIfaceListsInterfaces: the error for an interface that does
// not exist names those that do, in this network namespace.
func TestMissingIfaceListsInterfaces(t *testing.T) {
	err := withInterfaces(fmt.Errorf("attach nosuch0: interface not found"))
	ifs, lerr := net.Interfaces()
	if lerr != nil {
		t.Fatal(lerr)
	}
	for _, i := range ifs {
		if !strings.Contains(err.Error(), i.Name) {
			t.Errorf("%q does not list %s", err, i.Name)
		}
	}
	if !strings.Contains(err.Error(), "nosuch0") || !strings.Contains(err.Error(), "lo") {
		t.Errorf("%q", err)
	}
}
