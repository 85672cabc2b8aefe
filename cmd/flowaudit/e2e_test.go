package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// flowauditBinary builds the CLI once per test run.
func flowauditBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := tempDirNoCleanup()
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "flowaudit")
		out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// TestE2ERecordAndAudit records real traffic between two namespaces with
// the flowaudit binary (as a user would: `ip netns exec … flowaudit record`)
// and audits the snapshot against a small custom matrix.
func TestE2ERecordAndAudit(t *testing.T) {
	a, b := testenv.NewPair(t)
	testenv.RequireTool(t, "nft")
	snapPath := filepath.Join(t.TempDir(), "snap.json")

	// The appliance: documented 8443 and 514, an undocumented 6379, and 9001
	// documented but dropped by its firewall. Nobody uses ssh (22).
	for _, port := range []uint16{8443, 6379, 9001} {
		var ln net.Listener
		if err := a.Do(func() (err error) {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(a.IPv4, port).String())
			return
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for i := 0; i < 100; i++ { // bounded
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("hello\n")) //nolint:errcheck
				c.Close()
			}
		}()
	}
	var pc net.PacketConn
	if err := a.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(a.IPv4, 514).String())
		return
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	a.Exec("nft", "add table inet fa; add chain inet fa in { type filter hook input priority 0; }; add rule inet fa in tcp dport 9001 drop")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rec, logs := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface, "--duration", "4s", "--out", snapPath)
	logged := waitLog(t, logs, `"msg":"recording"`)

	// Clients on the other host.
	if err := b.Do(func() error {
		for i := 0; i < 3; i++ {
			for _, port := range []uint16{8443, 6379} {
				c, err := net.DialTimeout("tcp", netip.AddrPortFrom(a.IPv4, port).String(), 2*time.Second)
				if err != nil {
					return err
				}
				c.SetReadDeadline(time.Now().Add(2 * time.Second)) //nolint:errcheck
				bufio.NewReader(c).ReadString('\n')                //nolint:errcheck
				c.Close()
			}
		}
		if _, err := net.DialTimeout("tcp", netip.AddrPortFrom(a.IPv4, 9001).String(), 300*time.Millisecond); err == nil {
			return fmt.Errorf("9001 should be filtered")
		}
		u, err := net.Dial("udp", netip.AddrPortFrom(a.IPv4, 514).String())
		if err != nil {
			return err
		}
		defer u.Close()
		for i := 0; i < 5; i++ {
			if _, err := u.Write([]byte("<13>flowaudit e2e")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for line := range logs {
		logged = append(logged, line)
	}
	if err := rec.Wait(); err != nil {
		t.Fatalf("record: %v\n%s", err, strings.Join(logged, "\n"))
	}

	snap, err := snapshot.ReadFile(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Interfaces) != 1 || snap.Interfaces[0].Name != a.Iface || snap.Interfaces[0].Ingress != "xdp-native" {
		t.Errorf("interfaces: %+v", snap.Interfaces)
	}
	if w := snap.Window(); w < 3*time.Second || w > 10*time.Second {
		t.Errorf("window %s, want about 4s", w)
	}

	out := filepath.Join(t.TempDir(), "report.json")
	code, stdout, errb := runCLI(t, "audit", "--catalog", "testdata/lab-catalog.yaml", "--matrix", "labapp", "--role", "server",
		"--site", "testdata/lab-site.yaml", "--snapshot", snapPath, "--min-window", "1s", "--format", "json", "--out", out)
	if code != exitFindings {
		t.Fatalf("audit exit %d, want %d\n%s\n%s", code, exitFindings, stdout, errb)
	}
	var rep audit.Report
	if err := json.Unmarshal([]byte(mustRead(t, out)), &rep); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range rep.Findings {
		if f.Severity >= audit.Low {
			got = append(got, f.ID)
		}
		t.Logf("%s %s: %s", f.Severity, f.ID, f.Summary)
	}
	sort.Strings(got)
	want := []string{"missing-required/lab1.server.ssh", "required-port-filtered/lab1.server.agent", "unexpected-open-port/tcp/6379"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("findings %v, want %v", got, want)
	}
	status := map[string]string{}
	for _, rs := range rep.Rules {
		status[rs.Rule.ID] = rs.Status
	}
	if status["lab1.server.https"] != audit.StatusSeen || status["lab1.server.syslog"] != audit.StatusSeen {
		t.Errorf("rule status %v", status)
	}
}

// startInNS starts the flowaudit binary inside h's namespace with JSON logs
// (env, if not nil, replaces the environment) and returns the command and
// a channel of its log lines.
func startInNS(t *testing.T, ctx context.Context, h *testenv.Host, env []string, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.Name, flowauditBinary(t), "--log-format", "json"}, args...)...)
	cmd.Env = env
	return cmd, startLines(t, cmd)
}

// startLines starts cmd and returns its standard error, line by line; the
// channel is closed when the stream ends.
func startLines(t *testing.T, cmd *exec.Cmd) <-chan string {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1000)
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	return lines
}

// waitLog reads lines until one contains want (or the stream ends), for
// at most 20 s.
func waitLog(t *testing.T, lines <-chan string, want string) []string {
	t.Helper()
	return waitLogWithin(t, lines, want, 20*time.Second)
}

// waitLogWithin is waitLog with its own limit.
func waitLogWithin(t *testing.T, lines <-chan string, want string, limit time.Duration) []string {
	t.Helper()
	var seen []string
	timeout := time.After(limit)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("log ended before %q:\n%s", want, strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if strings.Contains(l, want) {
				return seen
			}
		case <-timeout:
			t.Fatalf("no %q in %s:\n%s", want, limit, strings.Join(seen, "\n"))
		}
	}
}

// dialN makes n TCP connections from h to addr (bounded by a timeout each).
func dialN(t *testing.T, h *testenv.Host, addr netip.AddrPort, n int) {
	t.Helper()
	if err := h.Do(func() error {
		for i := 0; i < n; i++ {
			c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
			if err != nil {
				return err
			}
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestE2ERecordInterrupted: Ctrl-C (SIGINT) stops a recording cleanly and
// the snapshot recorded so far is kept.
func TestE2ERecordInterrupted(t *testing.T) {
	a, b := testenv.NewPair(t)
	snapPath := filepath.Join(t.TempDir(), "snap.json")
	ln := listenIn(t, a, netip.AddrPortFrom(a.IPv4, 8443))
	_ = ln
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, lines := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface, "--duration", "10m", "--out", snapPath)
	waitLog(t, lines, `"msg":"recording"`)
	dialN(t, b, netip.AddrPortFrom(a.IPv4, 8443), 3)
	time.Sleep(time.Second)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	logged := waitLog(t, lines, `"msg":"snapshot written"`)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("record after SIGINT: %v\n%s", err, strings.Join(logged, "\n"))
	}
	if !strings.Contains(strings.Join(logged, "\n"), "interrupted") {
		t.Errorf("no 'interrupted' warning:\n%s", strings.Join(logged, "\n"))
	}
	snap, err := snapshot.ReadFile(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	if w := snap.Window(); w > time.Minute {
		t.Errorf("window %s: the interrupted recording should be seconds long", w)
	}
	found := false
	for _, f := range snap.Flows {
		if f.Direction == snapshot.Inbound && f.Proto == snapshot.TCP && f.Port == 8443 && f.Evidence.SynIn == 3 {
			found = true
		}
	}
	if !found {
		t.Errorf("the 3 connections to 8443 are not in the snapshot: %+v", snap.Flows)
	}
}

// TestE2EWatch: watch reports a new finding once (opened), not at every
// interval, and keeps periodic snapshots in --snapshot-dir.
func TestE2EWatch(t *testing.T) {
	a, b := testenv.NewPair(t)
	dir := t.TempDir()
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 8443))
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 6379))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	abs := func(p string) string { s, _ := filepath.Abs(p); return s }
	cmd, lines := startInNS(t, ctx, a, nil, "watch", "--iface", a.Iface, "--catalog", abs("testdata/lab-catalog.yaml"),
		"--matrix", "labapp", "--role", "server", "--site", abs("testdata/lab-site.yaml"),
		"--interval", "1s", "--duration", "5s", "--settle", "1h", "--snapshot-dir", dir, "--keep", "3")
	waitLog(t, lines, `"msg":"watching"`)
	for i := 0; i < 3; i++ { // the same finding, three times over three intervals
		dialN(t, b, netip.AddrPortFrom(a.IPv4, 6379), 1)
		dialN(t, b, netip.AddrPortFrom(a.IPv4, 8443), 1)
		time.Sleep(1100 * time.Millisecond)
	}
	var logged []string
	for l := range lines {
		logged = append(logged, l)
	}
	err := cmd.Wait()
	all := strings.Join(logged, "\n")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFindings {
		t.Fatalf("watch exit: %v (want %d)\n%s", err, exitFindings, all)
	}
	// Opened once, not again at each interval. The listener may have been
	// evaluated idle (medium) before the first connection: then one
	// escalation follows, and nothing else.
	evs := watchEvents(t, logged)
	got := eventsAbout(evs, "unexpected-open-port/tcp/6379")
	if !reflect.DeepEqual(got, []string{"opened unexpected-open-port high"}) &&
		!reflect.DeepEqual(got, []string{"opened unexpected-open-port medium", "escalated unexpected-open-port high (was unexpected-open-port medium)"}) {
		t.Errorf("tcp/6379 events %q, want it opened once:\n%s", got, all)
	}
	// Held back while unsettled, reported by the final evaluation.
	if got := eventsAbout(evs, "missing-required/lab1.server.ssh"); !reflect.DeepEqual(got, []string{"opened missing-required medium"}) {
		t.Errorf("missing-required events %q, want one opened at the end:\n%s", got, all)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) == 0 || len(ents) > 3 {
		t.Fatalf("%d snapshots in --snapshot-dir, want 1..3 (--keep 3)", len(ents))
	}
	last, err := snapshot.ReadFile(filepath.Join(dir, ents[len(ents)-1].Name()))
	if err != nil {
		t.Fatalf("periodic snapshot unreadable: %v", err)
	}
	// --duration is watched time, from the attach: the final evaluation
	// covers all of it however long loading took.
	if w := last.End.Sub(last.Start); w < 5*time.Second {
		t.Errorf("final snapshot covers %s, want the whole --duration 5s", w)
	}
}

// TestE2ENotRoot: without privileges the error says what is needed.
func TestE2ENotRoot(t *testing.T) {
	testenv.RequireBPF(t)
	bin := flowauditBinary(t)
	// --out must be writable for nobody (t.TempDir's parent is not
	// traversable): the missing privileges are what must fail.
	dir, err := os.MkdirTemp("", "flowaudit-notroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "record", "--iface", "lo", "--duration", "1s", "--out", filepath.Join(dir, "s.json"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "needs root, or CAP_BPF") {
		t.Errorf("error does not say what is needed:\n%s", out)
	}
}

func listenIn(t *testing.T, h *testenv.Host, addr netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr.String()); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for i := 0; i < 1000; i++ { // bounded
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}
