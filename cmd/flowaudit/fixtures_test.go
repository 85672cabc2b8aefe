package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// The shared fixtures of testdata/ (testdata/README.md): the demo lab's
// recording, its capture and its site file.
var (
	fixtureRoot     = filepath.Join("..", "..", "testdata")
	fixtureSnapshot = filepath.Join(fixtureRoot, "snapshots", "utmstack11-demo.json")
	fixtureCapture  = filepath.Join(fixtureRoot, "captures", "utmstack11-demo.pcap")
	fixtureSite     = filepath.Join(fixtureRoot, "sites", "utmstack11-demo.yaml")
	fixtureMatrix   = []string{"-m", "utmstack@11", "-r", "manager", "--conditions", "netflow", "--site", fixtureSite, "--min-window", "10s"}
)

// The demo plants four problems (docs: README "Quick start") and runs an
// nmap scan; everything else the lab does is documented and in zone.
var fixturePlanted = []string{
	"missing-required/utmstack11.manager.agent-50051",
	"peer-out-of-zone/utmstack11.manager.ssh/tcp/22",
	"required-port-filtered/utmstack11.manager.agent-9001",
	"scan-suspected/192.0.2.66",
	"unexpected-open-port/tcp/6379",
}

type fixtureFinding struct {
	ID       string `json:"id"`
	Kind     string `json:"kind"`
	Severity string `json:"severity"`
}

// auditFixture audits snap against the demo's matrix and site and returns
// the findings (JSON report).
func auditFixture(t *testing.T, snap string) []fixtureFinding {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	args := append([]string{"audit"}, fixtureMatrix...)
	code, _, stderr := runCLI(t, append(args, "--snapshot", snap, "--format", "json", "--out", out)...)
	if code != 2 {
		t.Fatalf("audit of %s: exit %d, want 2 (findings)\n%s", snap, code, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Findings []fixtureFinding `json:"findings"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r.Findings
}

// above: IDs of the findings of severity medium or higher, sorted.
func above(fs []fixtureFinding) []string {
	var ids []string
	for _, f := range fs {
		if f.Severity == "high" || f.Severity == "medium" {
			ids = append(ids, f.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

func allIDs(fs []fixtureFinding) []string {
	var ids []string
	for _, f := range fs {
		ids = append(ids, f.Kind+" "+f.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestFixtureSnapshotAudit: the recorded snapshot gives exactly the planted
// problems at medium or higher, with no root and no kernel.
func TestFixtureSnapshotAudit(t *testing.T) {
	if got := above(auditFixture(t, fixtureSnapshot)); !reflect.DeepEqual(got, fixturePlanted) {
		t.Errorf("findings >= medium\n got %q\nwant %q", got, fixturePlanted)
	}
}

// TestFixtureCaptureReplay: the capture of the same traffic, replayed
// through the kernel programs with the local addresses found by the
// heuristic, audits to the same findings (every severity) as the live
// recording.
func TestFixtureCaptureReplay(t *testing.T) {
	testenv.RequireBPF(t)
	snap := filepath.Join(t.TempDir(), "replayed.json")
	if code, _, stderr := runCLI(t, "replay", fixtureCapture, "--out", snap); code != 0 {
		t.Fatalf("replay: exit %d\n%s", code, stderr)
	}
	live, replayed := allIDs(auditFixture(t, fixtureSnapshot)), allIDs(auditFixture(t, snap))
	if !reflect.DeepEqual(live, replayed) {
		t.Errorf("replayed capture and live snapshot disagree\nlive     %q\nreplayed %q", live, replayed)
	}
}

// TestReadmeTestdataExamples runs, in order, the README's commands that use
// testdata/ (in a scratch directory where testdata/ is the repository's),
// so the examples a newcomer runs first stay true.
func TestReadmeTestdataExamples(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	cmds := readmeCommands(string(b), "testdata/")
	if len(cmds) < 3 {
		t.Fatalf("README has %d flowaudit commands using testdata/, want at least 3: %q", len(cmds), cmds)
	}
	abs, err := filepath.Abs(fixtureRoot)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(abs, filepath.Join(dir, "testdata")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for _, c := range cmds {
		if c[0] == "replay" {
			testenv.RequireBPF(t)
		}
		code, _, stderr := runCLI(t, c...)
		if code != 0 && code != 2 {
			t.Fatalf("README example `flowaudit %s`: exit %d\n%s", strings.Join(c, " "), code, stderr)
		}
		if c[0] == "audit" && code != 2 {
			t.Errorf("README example `flowaudit %s`: exit %d, want 2 (the demo's findings)", strings.Join(c, " "), code)
		}
		for i, a := range c {
			if a == "--out" && i+1 < len(c) {
				if st, err := os.Stat(c[i+1]); err != nil || st.Size() == 0 {
					t.Errorf("README example `flowaudit %s` wrote no %s", strings.Join(c, " "), c[i+1])
				}
			}
		}
	}
}

// readmeCommands returns the flowaudit commands (arguments after
// "flowaudit") in the sh blocks of a Markdown text that contain substr,
// with backslash-continued lines joined.
func readmeCommands(md, substr string) [][]string {
	var cmds [][]string
	block := regexp.MustCompile("(?s)```sh\n(.*?)```")
	for _, m := range block.FindAllStringSubmatch(md, -1) {
		text := strings.ReplaceAll(m[1], "\\\n", " ")
		for _, line := range strings.Split(text, "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && f[0] == "flowaudit" && strings.Contains(line, substr) {
				cmds = append(cmds, f[1:])
			}
		}
	}
	return cmds
}
