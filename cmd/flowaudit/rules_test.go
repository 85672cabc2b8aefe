package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/rules"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// The rules fixture of audit/rules: a snapshot of a server with
// documented, undocumented, out-of-zone, scanner and reply traffic.
const (
	rulesDir     = "../../audit/rules/testdata"
	rulesCatalog = rulesDir + "/fixture-catalog.yaml"
	rulesSite    = rulesDir + "/fixture-site.yaml"
	rulesSnap    = rulesDir + "/fixture.snapshot.json"
)

func rulesArgs(extra ...string) []string {
	return append([]string{"rules", "--catalog", rulesCatalog, "--matrix", "fixapp", "--role", "server", "--site", rulesSite,
		"--snapshot", rulesSnap}, extra...)
}

// requireRoot skips without root, and fails when kernel tests are
// required (CI=true): the firewall tools' checks talk to the kernel.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if testenv.Required() {
		t.Fatal("root required in CI for the firewall tools' checks")
	}
	t.Skip("not root: nft -c and iptables-restore --test need CAP_NET_ADMIN")
}

// inFreshNetns runs a command in a new, empty network namespace, so a
// check can never touch the host's firewall.
func inFreshNetns(t *testing.T, args ...string) (string, error) {
	t.Helper()
	testenv.RequireTool(t, "unshare")
	out, err := exec.Command("unshare", append([]string{"--net", "--"}, args...)...).CombinedOutput()
	return string(out), err
}

// checkWithTool validates one generated file with the real tool of its
// target (or the shape checks for the cloud targets).
func checkWithTool(t *testing.T, target rules.Target, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	switch target {
	case rules.NFTables:
		testenv.RequireTool(t, "nft")
		requireRoot(t)
		if out, err := inFreshNetns(t, "nft", "-c", "-f", path); err != nil {
			t.Errorf("nft -c -f %s: %v\n%s", path, err, out)
		}
	case rules.IPTables, rules.IP6Tables:
		tool := string(target) + "-restore"
		testenv.RequireTool(t, tool)
		requireRoot(t)
		if out, err := inFreshNetns(t, tool, "--test", "--noflush", path); err != nil {
			t.Errorf("%s --test %s: %v\n%s", tool, path, err, out)
		}
	case rules.UFW:
		testenv.RequireTool(t, "ufw")
		requireRoot(t)
		if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", path, err, out)
		}
		// Every ufw command of the script, in order, through ufw's own
		// parser: --dry-run changes nothing.
		n := 0
		for _, l := range strings.Split(string(data), "\n") {
			if !strings.HasPrefix(l, "ufw ") {
				continue
			}
			n++
			out, err := exec.Command("sh", "-c", "ufw --dry-run "+strings.TrimPrefix(l, "ufw ")).CombinedOutput()
			if err != nil || strings.Contains(string(out), "ERROR") {
				t.Errorf("ufw --dry-run rejects %q: %v\n%s", l, err, out)
			}
		}
		if n == 0 {
			t.Errorf("%s: no ufw commands", path)
		}
	case rules.AWSSG:
		if err := rules.CheckCloudFormation(data, rules.DefaultAWSMaxRules); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	case rules.AzureNSG:
		if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", path, err, out)
		}
		if err := rules.CheckAzureScript(string(data)); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}

// TestRulesRealTools generates every target in every mode (and with the
// options that change a target's shape) through the command, and has the
// real tools accept each file: nft -c -f, iptables-restore --test,
// ip6tables-restore --test, ufw --dry-run; the CloudFormation and Azure
// shape checks for the cloud targets. The golden files of audit/rules
// go through the same checks.
func TestRulesRealTools(t *testing.T) {
	variants := map[string][]string{
		"both":        nil,
		"observed":    {"--mode", "observed"},
		"documented":  {"--mode", "documented"},
		"egress-drop": {"--egress-policy", "drop"},
		"aggregate":   {"--aggregate", "/24,/64"},
		"unverified":  {"--allow-unverified"},
	}
	dir := t.TempDir()
	for name, extra := range variants {
		for _, target := range rules.Targets {
			out := filepath.Join(dir, name+"."+string(target))
			args := rulesArgs(append([]string{"--target", string(target), "--out", out}, extra...)...)
			t.Run(name+"/"+string(target), func(t *testing.T) {
				code, stdout, stderr := runCLI(t, args...)
				if code != exitClean {
					t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
				}
				checkWithTool(t, target, out)
			})
		}
	}
	// Observed mode without any matrix.
	for _, target := range rules.Targets {
		out := filepath.Join(dir, "nomatrix."+string(target))
		t.Run("no-matrix/"+string(target), func(t *testing.T) {
			code, _, stderr := runCLI(t, "rules", "--snapshot", rulesSnap, "--target", string(target), "--out", out)
			if code != exitClean {
				t.Fatalf("exit %d\n%s", code, stderr)
			}
			checkWithTool(t, target, out)
		})
	}
	// Documented mode of a catalog with the shapes targets find hard:
	// SCTP ports, ICMP type ranges, protocol 112, ESP from anyone, every
	// UDP port, a 1024-65535 range, 18 ports (two multiport rules).
	for _, target := range rules.Targets {
		out := filepath.Join(dir, "exotic."+string(target))
		t.Run("exotic/"+string(target), func(t *testing.T) {
			code, _, stderr := runCLI(t, "rules", "--catalog", "testdata/rules-exotic-catalog.yaml", "--matrix", "exotic", "--role", "node",
				"--site", "testdata/rules-exotic-site.yaml", "--mode", "documented", "--egress-policy", "drop", "--target", string(target), "--out", out)
			if code != exitClean {
				t.Fatalf("exit %d\n%s", code, stderr)
			}
			checkWithTool(t, target, out)
			if target == rules.AWSSG && !strings.Contains(mustRead(t, out), "security groups cannot match sctp ports") {
				t.Error("aws-sg does not say SCTP ports are widened")
			}
		})
	}
	golden := map[string]rules.Target{".nft": rules.NFTables, ".iptables": rules.IPTables, ".ip6tables": rules.IP6Tables,
		".ufw.sh": rules.UFW, ".aws.json": rules.AWSSG, ".azure.sh": rules.AzureNSG}
	files, _ := filepath.Glob(rulesDir + "/golden/*")
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	for _, f := range files {
		for suffix, target := range golden {
			if strings.HasSuffix(f, suffix) {
				t.Run("golden/"+filepath.Base(f), func(t *testing.T) { checkWithTool(t, target, f) })
			}
		}
	}
}

func TestRulesCLI(t *testing.T) {
	t.Run("stdout, and the same bytes with --out", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, rulesArgs("--target", "nftables")...)
		if code != exitClean || !strings.HasPrefix(stdout, "#!/usr/sbin/nft -f\n") {
			t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
		}
		out := filepath.Join(t.TempDir(), "r.nft")
		if code, _, stderr := runCLI(t, rulesArgs("--target", "nftables", "--out", out)...); code != exitClean {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		if mustRead(t, out) != stdout {
			t.Error("--out differs from stdout")
		}
		if !strings.Contains(stderr, "rules written (not applied)") && !strings.Contains(stderr, "rules done") {
			t.Errorf("no summary on stderr:\n%s", stderr)
		}
	})
	t.Run("--fail-on-undocumented exits 2 and still writes the rules", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "r.nft")
		code, _, stderr := runCLI(t, rulesArgs("--target", "nftables", "--out", out, "--fail-on-undocumented")...)
		if code != exitFindings || !strings.Contains(mustRead(t, out), "table inet flowaudit") {
			t.Errorf("exit %d\n%s", code, stderr)
		}
		// observed mode without a matrix has nothing to call undocumented
		code, _, _ = runCLI(t, "rules", "--snapshot", rulesSnap, "--target", "nftables", "--fail-on-undocumented")
		if code != exitClean {
			t.Errorf("no matrix: exit %d", code)
		}
	})
	t.Run("no traffic seen is never turned into deny-all", func(t *testing.T) {
		p := writeSnap(t, tflow(snapshot.Outbound, snapshot.TCP, 443, "203.0.113.80", snapshot.Evidence{SynOut: 1, SynAckIn: 1}))
		out := filepath.Join(t.TempDir(), "r.nft")
		code, _, stderr := runCLI(t, "rules", "--snapshot", p, "--target", "nftables", "--out", out)
		if code != exitError || !strings.Contains(stderr, "no inbound traffic") || !strings.Contains(stderr, "deny-all") {
			t.Errorf("exit %d\n%s", code, stderr)
		}
		if _, err := os.Stat(out); err == nil {
			t.Error("a file was written")
		}
		if code, _, stderr := runCLI(t, "rules", "--snapshot", p, "--target", "nftables", "--allow-quiet"); code != exitClean {
			t.Errorf("--allow-quiet: exit %d\n%s", code, stderr)
		}
	})
	t.Run("documented mode needs no traffic", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, "rules", "--catalog", rulesCatalog, "--matrix", "fixapp", "--role", "server", "--site", rulesSite,
			"--mode", "documented", "--target", "ufw")
		if code != exitClean || !strings.Contains(stdout, "ufw allow in proto tcp from 10.1.0.0/16 to any port 9000:9002,50051") {
			t.Errorf("exit %d\n%s\n%s", code, stdout, stderr)
		}
	})
	t.Run("aws-sg quota", func(t *testing.T) {
		code, _, stderr := runCLI(t, rulesArgs("--target", "aws-sg", "--mode", "observed", "--aws-max-rules", "5")...)
		if code != exitError || !strings.Contains(stderr, "exceed the quota of 5") || !strings.Contains(stderr, "prefix list would not help") {
			t.Errorf("exit %d\n%s", code, stderr)
		}
		code, stdout, stderr := runCLI(t, rulesArgs("--target", "aws-sg", "--mode", "observed", "--aws-max-rules", "5", "--aws-spill", "groups")...)
		if code != exitClean || !strings.Contains(stdout, "FlowauditSecurityGroup3") {
			t.Errorf("spill: exit %d\n%s", code, stderr)
		}
		if err := rules.CheckCloudFormation([]byte(stdout), 5); err != nil {
			t.Error(err)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no target", rulesArgs(), "--target is required"},
		{"bad target", rulesArgs("--target", "pf"), "unknown target"},
		{"bad mode", rulesArgs("--target", "ufw", "--mode", "all"), "unknown mode"},
		{"both without matrix", []string{"rules", "--snapshot", rulesSnap, "--target", "ufw", "--mode", "both"}, "needs --matrix"},
		{"site without matrix", []string{"rules", "--snapshot", rulesSnap, "--target", "ufw", "--site", rulesSite}, "need --matrix"},
		{"no traffic", []string{"rules", "--target", "ufw"}, "give --snapshot FILE, or --iface"},
		{"snapshot and iface", rulesArgs("--target", "ufw", "--iface", "eth0"), "exclude each other"},
		{"bad aggregate", rulesArgs("--target", "ufw", "--aggregate", "/33x"), "--aggregate"},
		{"aggregate v4 too long", rulesArgs("--target", "ufw", "--aggregate", "4/40"), "above 32"},
		{"bad egress policy", rulesArgs("--target", "ufw", "--egress-policy", "reject"), "unknown policy"},
		{"bad management port", rulesArgs("--target", "ufw", "--management-port", "ssh"), "--management-port"},
		{"bad spill", rulesArgs("--target", "aws-sg", "--aws-spill", "prefix-list"), "want fail or groups"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tc.args...)
			if code != exitError || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, want 1 and %q in:\n%s", code, tc.want, stderr)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		code, stdout, _ := runCLI(t, "rules", "--help")
		if code != exitClean || !strings.Contains(stdout, "Examples:") || !strings.Contains(stdout, "--target nftables") ||
			!strings.Contains(stdout, "never applies") {
			t.Errorf("exit %d\n%s", code, stdout)
		}
		_, usage, _ := runCLI(t, "help")
		if !strings.Contains(usage, "  rules ") {
			t.Errorf("rules not in the command list:\n%s", usage)
		}
	})
}

func TestParseAggregate(t *testing.T) {
	for _, tc := range []struct {
		in     []string
		v4, v6 int
		bad    bool
	}{
		{[]string{"/24"}, 24, 0, false},
		{[]string{"/64"}, 0, 64, false},
		{[]string{"/24", "/64"}, 24, 64, false},
		{[]string{"4/16", "6/32"}, 16, 32, false},
		{[]string{"24"}, 0, 0, true},
		{[]string{"6/129"}, 0, 0, true},
		{[]string{"5/24"}, 0, 0, true},
		{[]string{"/0"}, 0, 0, true},
	} {
		v4, v6, err := parseAggregate(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && (v4 != tc.v4 || v6 != tc.v6)) {
			t.Errorf("%v: %d %d %v", tc.in, v4, v6, err)
		}
	}
	if s, ok := sshSession("192.0.2.20 51234 192.0.2.10 22"); !ok || s.Peer.String() != "192.0.2.20" || s.Port != 22 {
		t.Errorf("SSH_CONNECTION: %+v %v", s, ok)
	}
	if _, ok := sshSession("garbage"); ok {
		t.Error("garbage SSH_CONNECTION accepted")
	}
}

// unsafeSnap writes the rules fixture with mod applied.
func unsafeSnap(t *testing.T, mod func(*snapshot.Snapshot)) string {
	t.Helper()
	s, err := snapshot.ReadFile(rulesSnap)
	if err != nil {
		t.Fatal(err)
	}
	mod(s)
	p := filepath.Join(t.TempDir(), "unsafe.json")
	if err := snapshot.WriteFile(p, s); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRulesRefusal: rules is safe by default. A snapshot whose map
// overflowed, that was interrupted or is a checkpoint, or whose window is
// below --min-window exits 1 with every reason and --force on stderr and
// writes nothing; --force writes every target with the reasons heading the
// WARNINGS (checked by the real tools), and logs them.
func TestRulesRefusal(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 7, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		mod  func(*snapshot.Snapshot)
		want []string
	}{
		{"overflow", func(s *snapshot.Snapshot) { s.Stats.FlowInsertFailed = 4711 }, []string{
			"the kernel flow map (65536 entries) overflowed: 4711 packets lost their peer"}},
		{"interrupted", func(s *snapshot.Snapshot) {
			s.End = t0.Add(5 * time.Minute)
			s.Interrupted = &snapshot.Interruption{Signal: "SIGTERM", At: s.End, PlannedEnd: t0.Add(time.Hour)}
		}, []string{"the recording was interrupted by SIGTERM at 2026-11-26T07:05:00Z, 55m0s before its planned end 2026-11-26T08:00:00Z"}},
		{"checkpoint", func(s *snapshot.Snapshot) { s.Checkpoint = true }, []string{
			"the snapshot is a checkpoint, written while the recording was still running"}},
		{"short window", func(s *snapshot.Snapshot) { s.End = t0.Add(45 * time.Second) }, []string{
			"the observation window is 45s, below --min-window 1m0s"}},
		{"all of them", func(s *snapshot.Snapshot) {
			s.Stats.FlowInsertFailed, s.Checkpoint, s.End = 3, true, t0.Add(20*time.Second)
			s.Interrupted = &snapshot.Interruption{Signal: "SIGINT", At: s.End}
		}, []string{"3 packets lost their peer", "interrupted by SIGINT at 2026-11-26T07:00:20Z", "is a checkpoint", "window is 20s, below --min-window"}},
	}
	dir := t.TempDir()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := unsafeSnap(t, tc.mod)
			args := func(extra ...string) []string {
				return append([]string{"rules", "--catalog", rulesCatalog, "--matrix", "fixapp", "--role", "server", "--site", rulesSite,
					"--snapshot", p}, extra...)
			}
			out := filepath.Join(dir, tc.name+".nft")
			code, _, stderr := runCLI(t, args("--target", "nftables", "--out", out)...)
			if code != exitError {
				t.Fatalf("exit %d, want 1\n%s", code, stderr)
			}
			for _, w := range append(tc.want, "refusing to write rules", "--force") {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if _, err := os.Stat(out); err == nil {
				t.Error("a file was written")
			}
			for _, target := range rules.Targets {
				out := filepath.Join(dir, tc.name+"."+string(target))
				code, _, stderr := runCLI(t, args("--target", string(target), "--out", out, "--force")...)
				if code != exitClean {
					t.Fatalf("--force --target %s: exit %d\n%s", target, code, stderr)
				}
				file := mustRead(t, out)
				for _, w := range tc.want {
					if !regexp.MustCompile(`FORCED \(--force\): [^\n]*` + regexp.QuoteMeta(w)).MatchString(file) {
						t.Errorf("%s lacks the warning %q", target, w)
					}
					if !strings.Contains(stderr, w) {
						t.Errorf("--force does not log %q:\n%s", w, stderr)
					}
				}
				if strings.Count(stderr, "writing rules although they would be refused (--force)") != len(tc.want) {
					t.Errorf("%d reasons, logged:\n%s", len(tc.want), stderr)
				}
				// The forced header must not break a file: the real
				// tools check the case with every reason (ufw's dry run
				// takes seconds per script, so not every case).
				if tc.name == "all of them" {
					checkWithTool(t, target, out)
				}
			}
		})
	}
	t.Run("--min-window decides", func(t *testing.T) {
		p := unsafeSnap(t, func(s *snapshot.Snapshot) { s.End = t0.Add(45 * time.Second) })
		args := []string{"rules", "--snapshot", p, "--target", "nftables", "--min-window", "30s"}
		if code, _, stderr := runCLI(t, args...); code != exitClean {
			t.Errorf("45s window, --min-window 30s: exit %d\n%s", code, stderr)
		}
		p = unsafeSnap(t, func(s *snapshot.Snapshot) {})
		code, _, stderr := runCLI(t, "rules", "--snapshot", p, "--target", "nftables", "--min-window", "1h")
		if code != exitError || !strings.Contains(stderr, "the observation window is 10m0s, below --min-window 1h0m0s") {
			t.Errorf("10m window, --min-window 1h: exit %d\n%s", code, stderr)
		}
	})
	t.Run("documented mode warns instead", func(t *testing.T) {
		p := unsafeSnap(t, func(s *snapshot.Snapshot) { s.Stats.FlowInsertFailed = 4711 })
		code, stdout, stderr := runCLI(t, "rules", "--catalog", rulesCatalog, "--matrix", "fixapp", "--role", "server", "--site", rulesSite,
			"--snapshot", p, "--mode", "documented", "--target", "nftables")
		if code != exitClean || !strings.Contains(stdout, "incomplete snapshot (mode documented allows the zones without it") {
			t.Errorf("exit %d\n%s", code, stderr)
		}
	})
}

// TestRulesRefusalLive: with --iface, what can be known before recording
// is refused before anything is attached: a --duration below
// --min-window, and your own SSH session from outside every zone the
// matrix allows for it. No root needed: nothing is recorded.
func TestRulesRefusalLive(t *testing.T) {
	live := func(extra ...string) []string {
		return append([]string{"rules", "--catalog", rulesCatalog, "--matrix", "fixapp", "--role", "server", "--site", rulesSite,
			"--iface", "lo", "--target", "nftables"}, extra...)
	}
	t.Setenv("SSH_CONNECTION", "")
	code, _, stderr := runCLI(t, live("--duration", "10s")...)
	if code != exitError || !strings.Contains(stderr, "the planned observation window (--duration 10s) is below --min-window 1m0s") ||
		!strings.Contains(stderr, "--force") || strings.Contains(stderr, `recording`) {
		t.Errorf("short --duration: exit %d\n%s", code, stderr)
	}
	// An operator logged in from 198.51.100.7, outside ADMIN_IP.
	t.Setenv("SSH_CONNECTION", "198.51.100.7 50022 192.0.2.1 22")
	code, _, stderr = runCLI(t, live("--duration", "1m")...)
	if code != exitError || strings.Contains(stderr, `recording`) ||
		!strings.Contains(stderr, "your own session, inbound tcp/22 from 198.51.100.7 (the SSH session flowaudit ran in (SSH_CONNECTION)), is outside every zone the matrix allows for tcp/22 (fix1.server.ssh: zone ADMIN_IP)") ||
		!strings.Contains(stderr, "--force keeps this one session") {
		t.Errorf("SSH_CONNECTION outside the zones: exit %d\n%s", code, stderr)
	}
}
