package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// serveTCP listens on every address of h's namespace on port and answers
// each connection with "hello\n", then echoes up to 10 lines. Bounded:
// at most 50 connections, 3 s per connection.
func serveTCP(t *testing.T, h *testenv.Host, port int) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp", ":"+strconv.Itoa(port))
		return
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for i := 0; i < 50; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(3 * time.Second)) //nolint:errcheck
				c.Write([]byte("hello\n"))                     //nolint:errcheck
				r := bufio.NewReader(c)
				for j := 0; j < 10; j++ {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(l)) //nolint:errcheck
				}
			}()
		}
	}()
}

// talk connects from inside h to addr, reads the greeting and has lines
// lines echoed: a real session with data both ways.
func talk(h *testenv.Host, addr netip.AddrPort, lines int, timeout time.Duration) error {
	return h.Do(func() error {
		c, err := net.DialTimeout("tcp", addr.String(), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second)) //nolint:errcheck
		r := bufio.NewReader(c)
		if l, err := r.ReadString('\n'); err != nil || l != "hello\n" {
			return fmt.Errorf("%s: greeting %q: %v", addr, l, err)
		}
		for i := 0; i < lines; i++ {
			msg := fmt.Sprintf("line %d\n", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				return err
			}
			if l, err := r.ReadString('\n'); err != nil || l != msg {
				return fmt.Errorf("%s: echo %q: %v", addr, l, err)
			}
		}
		return nil
	})
}

// ping sends one ICMP echo request from h to dst over a raw socket and
// waits up to a second for the reply.
func ping(h *testenv.Host, dst netip.Addr, seq int) error {
	return h.Do(func() error {
		c, err := net.Dial("ip4:icmp", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		msg := []byte{8, 0, 0, 0, 0x12, 0x34, byte(seq >> 8), byte(seq), 'f', 'a'}
		var sum uint32
		for i := 0; i < len(msg); i += 2 {
			sum += uint32(msg[i])<<8 | uint32(msg[i+1])
		}
		sum = (sum >> 16) + (sum & 0xffff)
		sum += sum >> 16
		cs := ^uint16(sum)
		msg[2], msg[3] = byte(cs>>8), byte(cs)
		if _, err := c.Write(msg); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(time.Second)) //nolint:errcheck
		buf := make([]byte, 1500)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return fmt.Errorf("no echo reply from %s: %w", dst, err)
			}
			// ip4:icmp reads include the IPv4 header.
			if n > 20 && buf[0]>>4 == 4 {
				ihl := int(buf[0]&0x0f) * 4
				if n >= ihl+8 && buf[ihl] == 0 && buf[ihl+6] == byte(seq>>8) && buf[ihl+7] == byte(seq) {
					return nil
				}
			}
		}
	})
}

// sendUDP sends n datagrams from h to addr.
func sendUDP(h *testenv.Host, addr netip.AddrPort, n int) error {
	return h.Do(func() error {
		c, err := net.Dial("udp", addr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < n; i++ {
			if _, err := c.Write([]byte("<13>flowaudit rules e2e")); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestE2ERulesNftables is the proof of the rules command on a real
// kernel. The appliance (namespace a) serves documented 8443/tcp and
// 514/udp, answers ping, has an SSH-like service on 22 documented only for
// an admin host that does not exist, an undocumented 6379 and a
// documented 9001 nobody uses; it connects out to b:8080 (documented) and
// b:8081 (undocumented). The flowaudit binary records all of it live and
// writes nftables rules (mode both, egress policy drop) in one run; the
// ruleset is applied in a's namespace and the traffic replayed: every
// documented and observed flow still works, the SSH_CONNECTION session
// (outside every zone the matrix allows: refused without --force, kept
// with it) still works, and the undocumented flows and b's SSH session
// (an outsider for tcp/22, not kept by the management guard) are now
// refused.
func TestE2ERulesNftables(t *testing.T) {
	a, b := testenv.NewPair(t)
	testenv.RequireTool(t, "nft")
	dir := t.TempDir()
	rulesPath := filepath.Join(dir, "rules.nft")
	snapPath := filepath.Join(dir, "snap.json")

	for _, port := range []int{8443, 22, 6379, 9001, 2222} {
		serveTCP(t, a, port)
	}
	for _, port := range []int{8080, 8081} {
		serveTCP(t, b, port)
	}
	var syslog atomic.Int64
	var pc net.PacketConn
	if err := a.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", ":514")
		return
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for i := 0; i < 1000; i++ {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			syslog.Add(1)
		}
	}()

	av4 := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(a.IPv4, port) }
	av6 := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(a.IPv6, port) }
	bv4 := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(b.IPv4, port) }
	bv6 := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(b.IPv6, port) }

	// Record live and generate in one run, as an operator logged in over
	// SSH from b on port 2222 would (SSH_CONNECTION).
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SSH_CONNECTION=") {
			env = append(env, kv)
		}
	}
	env = append(env, "SSH_CONNECTION="+b.IPv4.String()+" 50022 "+a.IPv4.String()+" 2222")
	lab := []string{"--catalog", "testdata/rules-lab-catalog.yaml", "--matrix", "rulelab", "--role", "server", "--site", "testdata/rules-lab-site.yaml"}
	// Without --force: refused before anything is recorded, because the
	// matrix documents no tcp/2222 for anyone.
	refused, rlogs := startInNS(t, ctx, a, env, append([]string{"rules", "--iface", a.Iface, "--duration", "4s", "--min-window", "1s",
		"--target", "nftables", "--out", rulesPath}, lab...)...)
	var rlogged []string
	for l := range rlogs {
		rlogged = append(rlogged, l)
	}
	if err := refused.Wait(); err == nil || refused.ProcessState.ExitCode() != exitError ||
		!strings.Contains(strings.Join(rlogged, "\n"), "your own session, inbound tcp/2222 from 192.0.2.2") ||
		strings.Contains(strings.Join(rlogged, "\n"), `"msg":"recording"`) {
		t.Fatalf("own session outside the zones: %v, want exit 1 before recording\n%s", err, strings.Join(rlogged, "\n"))
	}
	cmd, logs := startInNS(t, ctx, a, env, "rules", "--force",
		"--iface", a.Iface, "--duration", "4s", "--save-snapshot", snapPath,
		"--catalog", "testdata/rules-lab-catalog.yaml", "--matrix", "rulelab", "--role", "server", "--site", "testdata/rules-lab-site.yaml",
		"--min-window", "1s", "--egress-policy", "drop", "--target", "nftables", "--out", rulesPath)
	logged := waitLog(t, logs, `"msg":"recording"`)

	// The lab traffic, recorded: everything answers (nothing filters yet).
	steps := []struct {
		what string
		do   func() error
	}{
		{"https v4", func() error { return talk(b, av4(8443), 1, 2*time.Second) }},
		{"https v6", func() error { return talk(b, av6(8443), 1, 2*time.Second) }},
		{"syslog", func() error { return sendUDP(b, av4(514), 5) }},
		{"ping", func() error { return ping(b, a.IPv4, 1) }},
		{"outsider ssh session from b", func() error { return talk(b, av4(22), 3, 2*time.Second) }},
		{"undocumented 6379", func() error { return talk(b, av4(6379), 1, 2*time.Second) }},
		{"feed out v4", func() error { return talk(a, bv4(8080), 1, 2*time.Second) }},
		{"feed out v6", func() error { return talk(a, bv6(8080), 1, 2*time.Second) }},
		{"undocumented out 8081", func() error { return talk(a, bv4(8081), 1, 2*time.Second) }},
	}
	for i := 0; i < 2; i++ {
		for _, s := range steps {
			if err := s.do(); err != nil {
				t.Fatalf("before the rules, %s: %v", s.what, err)
			}
		}
	}
	for l := range logs {
		logged = append(logged, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("flowaudit rules: %v\n%s", err, strings.Join(logged, "\n"))
	}
	if syslog.Load() == 0 {
		t.Fatal("no syslog datagram arrived before the rules")
	}
	if _, err := snapshot.ReadFile(snapPath); err != nil {
		t.Fatalf("--save-snapshot: %v", err)
	}
	ruleset := mustRead(t, rulesPath)
	t.Logf("generated ruleset:\n%s", ruleset)

	// What the file says before anything is applied.
	for _, want := range []string{
		"inbound tcp/22 from 192.0.2.2 (session opened in the window) is NOT kept: the peer is outside every zone the matrix allows for tcp/22 (rl1.server.ssh: zone ADMIN_IP)",
		"inbound tcp/22 from 192.0.2.2: peer outside zone ADMIN_IP (rl1.server.ssh)",
		"FORCED (--force): your own session, inbound tcp/2222 from 192.0.2.2 (the SSH session flowaudit ran in (SSH_CONNECTION)), is outside every zone",
		"inbound tcp/2222 from 192.0.2.2 (the SSH session flowaudit ran in (SSH_CONNECTION)) is KEPT because of --force",
		"inbound tcp/6379 from 192.0.2.2: undocumented",
		"outbound tcp/8081 to 192.0.2.2: undocumented",
		"rl1.server.agent: inbound tcp/9001 from zone CLIENTS (required)",
		"type filter hook input priority filter; policy drop;",
		"type filter hook output priority filter; policy drop;",
	} {
		if !strings.Contains(ruleset, want) {
			t.Errorf("ruleset lacks %q", want)
		}
	}
	for _, re := range []string{`tcp dport 8443 counter accept comment "rl1.server.https"`, `udp dport 514 counter accept`,
		`icmp type echo-request counter accept comment "rl1.server.ping"`, `tcp dport 8080 counter accept comment "rl1.server.feed"`} {
		if !regexp.MustCompile(regexp.QuoteMeta(re)).MatchString(ruleset) {
			t.Errorf("ruleset lacks %q", re)
		}
	}
	if regexp.MustCompile(`dport[^\n]*\b(22|6379|8081|9001)\b`).MatchString(ruleset) {
		t.Error("an undocumented or unobserved port is allowed")
	}

	// Apply it on the appliance (flowaudit never does) and replay.
	a.Exec("nft", "-c", "-f", rulesPath)
	a.Exec("nft", "-f", rulesPath)
	before := syslog.Load()
	for _, s := range steps {
		err := s.do()
		blocked := strings.HasPrefix(s.what, "undocumented") || strings.HasPrefix(s.what, "outsider")
		switch {
		case blocked && err == nil:
			t.Errorf("after the rules, %s still works", s.what)
		case !blocked && err != nil:
			t.Errorf("after the rules, %s broke: %v", s.what, err)
		}
	}
	if err := talk(b, av4(2222), 1, 2*time.Second); err != nil {
		t.Errorf("after the rules, the SSH_CONNECTION session's port 2222 broke: %v", err)
	}
	if err := talk(b, av4(9001), 1, 500*time.Millisecond); err == nil {
		t.Error("after the rules, documented but unobserved 9001 is open")
	}
	if err := talk(b, av6(6379), 1, 500*time.Millisecond); err == nil {
		t.Error("after the rules, undocumented 6379 is open over IPv6")
	}
	// Syslog is one-way: wait (bounded) for the datagrams to be counted.
	for i := 0; i < 20 && syslog.Load() < before+5; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if got := syslog.Load() - before; got != 5 {
		t.Errorf("after the rules, %d of 5 syslog datagrams arrived", got)
	}

	// The counters show the rules did the work.
	listing := a.Exec("nft", "list", "table", "inet", "flowaudit")
	counter := regexp.MustCompile(`tcp dport 8443 counter packets (\d+)`)
	if m := counter.FindStringSubmatch(listing); m == nil || m[1] == "0" {
		t.Errorf("the https rule counted nothing:\n%s", listing)
	}
	drops := regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "not allowed: dropped by the policy"`).FindAllStringSubmatch(listing, -1)
	if len(drops) != 2 || drops[0][1] == "0" || drops[1][1] == "0" {
		t.Errorf("the input and output drop counters: %v\n%s", drops, listing)
	}

	// The same snapshot through iptables-restore and ip6tables-restore:
	// the nftables table goes, the two files come, the replay gives the
	// same answers. (Offline there is no SSH_CONNECTION, so 2222 is not
	// kept: it shows the guard only keeps what it saw or was told.)
	t.Run("iptables", func(t *testing.T) {
		testenv.RequireTool(t, "iptables-restore")
		testenv.RequireTool(t, "ip6tables-restore")
		a.Exec("nft", "delete", "table", "inet", "flowaudit")
		for _, target := range []string{"iptables", "ip6tables"} {
			f := filepath.Join(dir, "rules."+target)
			code, _, stderr := runCLI(t, "rules", "--snapshot", snapPath, "--catalog", "testdata/rules-lab-catalog.yaml", "--matrix", "rulelab",
				"--role", "server", "--site", "testdata/rules-lab-site.yaml", "--min-window", "1s", "--egress-policy", "drop",
				"--target", target, "--out", f)
			if code != exitClean {
				t.Fatalf("rules --target %s: exit %d\n%s", target, code, stderr)
			}
			a.Exec(target+"-restore", "--test", "--noflush", f)
			a.Exec(target+"-restore", "--noflush", f)
		}
		t.Cleanup(func() {
			for _, tool := range []string{"iptables", "ip6tables"} {
				a.Exec(tool, "-P", "INPUT", "ACCEPT")
				a.Exec(tool, "-P", "OUTPUT", "ACCEPT")
				a.Exec(tool, "-F")
			}
		})
		before := syslog.Load()
		for _, s := range steps {
			err := s.do()
			blocked := strings.HasPrefix(s.what, "undocumented") || strings.HasPrefix(s.what, "outsider")
			switch {
			case blocked && err == nil:
				t.Errorf("after the iptables rules, %s still works", s.what)
			case !blocked && err != nil:
				t.Errorf("after the iptables rules, %s broke: %v", s.what, err)
			}
		}
		if err := talk(b, av4(2222), 1, 500*time.Millisecond); err == nil {
			t.Error("offline, 2222 (never seen) is open")
		}
		for i := 0; i < 20 && syslog.Load() < before+5; i++ {
			time.Sleep(50 * time.Millisecond)
		}
		if got := syslog.Load() - before; got != 5 {
			t.Errorf("after the iptables rules, %d of 5 syslog datagrams arrived", got)
		}
		listing := a.Exec("iptables", "-L", "INPUT", "-v", "-n")
		if !regexp.MustCompile(`(?m)^\s*[1-9]\d*\s+\d+\s+ACCEPT\s+6\b.*dpt:8443`).MatchString(listing) {
			t.Errorf("the https rule counted nothing:\n%s", listing)
		}
	})
}

// TestE2ERulesInterrupted: Ctrl-C during a live rules run stops the
// recording and the rules are refused (exit 1, the signal and --force
// named) rather than written from the part of the window seen. The
// snapshot kept with --save-snapshot is marked interrupted, so a run from
// it is refused too; --force writes the rules from it, with the reason
// heading the WARNINGS.
func TestE2ERulesInterrupted(t *testing.T) {
	a, b := testenv.NewPair(t)
	testenv.RequireTool(t, "nft")
	dir := t.TempDir()
	rulesPath := filepath.Join(dir, "rules.nft")
	snapPath := filepath.Join(dir, "snap.json")
	serveTCP(t, a, 8443)
	lab := []string{"--catalog", "testdata/rules-lab-catalog.yaml", "--matrix", "rulelab", "--role", "server",
		"--site", "testdata/rules-lab-site.yaml", "--min-window", "1s", "--target", "nftables"}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SSH_CONNECTION=") {
			env = append(env, kv)
		}
	}
	cmd, logs := startInNS(t, ctx, a, env, append([]string{"rules", "--iface", a.Iface, "--duration", "10m",
		"--save-snapshot", snapPath, "--out", rulesPath}, lab...)...)
	logged := waitLog(t, logs, `"msg":"recording"`)
	for i := 0; i < 2; i++ {
		if err := talk(b, netip.AddrPortFrom(a.IPv4, 8443), 1, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// A window above --min-window: the interruption is the only reason.
	time.Sleep(1500 * time.Millisecond)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for l := range logs {
		logged = append(logged, l)
	}
	all := strings.Join(logged, "\n")
	if err := cmd.Wait(); err == nil || cmd.ProcessState.ExitCode() != exitError {
		t.Fatalf("rules after SIGINT: %v, want exit 1\n%s", err, all)
	}
	for _, want := range []string{"refusing to write rules: the recording was interrupted by SIGINT at", "--force",
		"the recording is kept in " + snapPath} {
		if !strings.Contains(all, want) {
			t.Errorf("log lacks %q:\n%s", want, all)
		}
	}
	if _, err := os.Stat(rulesPath); err == nil {
		t.Error("rules were written from an interrupted recording")
	}
	snap, err := snapshot.ReadFile(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Interrupted == nil || snap.Interrupted.Signal != "SIGINT" || snap.Window() < time.Second || snap.Window() > time.Minute {
		t.Fatalf("saved snapshot: interrupted %+v, window %s", snap.Interrupted, snap.Window())
	}

	// From the saved snapshot: refused again, written with --force.
	offline := append([]string{"rules", "--snapshot", snapPath, "--out", rulesPath}, lab...)
	code, _, stderr := runCLI(t, offline...)
	if code != exitError || !strings.Contains(stderr, "the recording was interrupted by SIGINT") {
		t.Errorf("from the saved snapshot: exit %d\n%s", code, stderr)
	}
	code, _, stderr = runCLI(t, append(offline, "--force")...)
	if code != exitClean {
		t.Fatalf("--force: exit %d\n%s", code, stderr)
	}
	if !strings.Contains(mustRead(t, rulesPath), "#   FORCED (--force): the recording was interrupted by SIGINT at ") {
		t.Errorf("the forced reason does not head the WARNINGS:\n%s", mustRead(t, rulesPath))
	}
	a.Exec("nft", "-c", "-f", rulesPath)
}
