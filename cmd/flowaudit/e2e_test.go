package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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
	bin := flowauditBinary(t)
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
	rec := exec.CommandContext(ctx, "ip", "netns", "exec", a.Name, bin, "--log-format", "json", "record",
		"--iface", a.Iface, "--duration", "4s", "--out", snapPath)
	stderr, err := rec.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	logs := make(chan string, 100)
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			logs <- s.Text()
		}
		close(logs)
	}()
	var logged []string
	for line := range logs {
		logged = append(logged, line)
		if strings.Contains(line, `"msg":"recording"`) {
			break
		}
	}

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
