package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestE2EWatchEscalationAndRestart: an idle listener on an undocumented
// port is reported once (medium); when it answers a peer, one escalated
// event follows (high). A watch restarted on the same --state-dir reports
// none of that again, but still reports what is new.
func TestE2EWatchEscalationAndRestart(t *testing.T) {
	a, b := testenv.NewPair(t)
	stateDir := t.TempDir()
	port8080 := netip.AddrPortFrom(a.IPv4, 8080)
	echoListenIn(t, a, port8080)
	abs := func(p string) string { s, _ := filepath.Abs(p); return s }
	args := []string{"watch", "--iface", a.Iface, "--catalog", abs("testdata/lab-catalog.yaml"),
		"--matrix", "labapp", "--role", "server", "--site", abs("testdata/lab-site.yaml"),
		"--interval", "1s", "--duration", "60s", "--settle", "1h", "--state-dir", stateDir}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Run 1: idle, then answering.
	cmd, lines := startInNS(t, ctx, a, nil, args...)
	logged := waitLog(t, lines, `"msg":"watching"`)
	logged = append(logged, waitLog(t, lines, `"id":"unexpected-open-port/tcp/8080"`)...)
	stopPing := pingEvery(t, b, port8080, 100*time.Millisecond)
	defer stopPing()
	logged = append(logged, waitLog(t, lines, `"event":"escalated","id":"unexpected-open-port/tcp/8080"`)...)
	logged = append(logged, stopWatch(t, cmd, lines)...)
	evs := watchEvents(t, logged)
	if got, want := eventsAbout(evs, "unexpected-open-port/tcp/8080"), []string{
		"opened unexpected-open-port medium", "escalated unexpected-open-port high (was unexpected-open-port medium)"}; !reflect.DeepEqual(got, want) {
		t.Errorf("run 1, tcp/8080 events %q, want %q\n%s", got, want, strings.Join(logged, "\n"))
	}
	for _, e := range evs {
		if e["event"] == "escalated" && !reflect.DeepEqual(e["top_peers"], []any{b.IPv4.String()}) {
			t.Errorf("escalated top_peers %v, want [%s]", e["top_peers"], b.IPv4)
		}
		if e["event"] == "de-escalated" || e["event"] == "resolved" {
			t.Errorf("run 1: %v", e)
		}
	}
	// Held back (--settle 1h) until the last evaluation, then reported.
	if got := eventsAbout(evs, "missing-required/lab1.server.ssh"); !reflect.DeepEqual(got, []string{"opened missing-required medium"}) {
		t.Errorf("run 1, missing-required events %q\n%s", got, strings.Join(logged, "\n"))
	}
	state := mustRead(t, filepath.Join(stateDir, stateFileName))
	var st watchState
	if err := json.Unmarshal([]byte(state), &st); err != nil {
		t.Fatalf("state file: %v\n%s", err, state)
	}
	opened := 0
	for _, e := range evs {
		if e["event"] == "opened" {
			opened++
		}
	}
	if len(st.Findings) != opened || !strings.Contains(state, `"id": "unexpected-open-port/tcp/8080"`) {
		t.Errorf("state holds %d findings, %d were opened:\n%s", len(st.Findings), opened, state)
	}

	// Run 2, same --state-dir; the peer keeps using tcp/8080 and a new
	// listener appeared meanwhile.
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 6379))
	cmd, lines = startInNS(t, ctx, a, nil, args...)
	logged = waitLog(t, lines, `"msg":"watching"`)
	if !strings.Contains(strings.Join(logged, "\n"), fmt.Sprintf(`"open":%d`, opened)) {
		t.Errorf("run 2 did not restore %d findings:\n%s", opened, strings.Join(logged, "\n"))
	}
	logged = append(logged, waitLog(t, lines, `"id":"unexpected-open-port/tcp/6379"`)...)
	time.Sleep(2500 * time.Millisecond) // two more evaluations
	logged = append(logged, stopWatch(t, cmd, lines)...)
	if got, want := eventsAbout(watchEvents(t, logged), ""), []string{"opened unexpected-open-port medium"}; !reflect.DeepEqual(got, want) {
		t.Errorf("run 2 events %q, want only the new listener's %q\n%s", got, want, strings.Join(logged, "\n"))
	}
	if err := stopPing(); err != nil {
		t.Errorf("peer on tcp/8080: %v", err)
	}
}

// stopWatch interrupts a watch, reads the rest of its log and checks it
// exits with findings (2).
func stopWatch(t *testing.T, cmd *exec.Cmd, lines <-chan string) []string {
	t.Helper()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	var logged []string
	for l := range lines {
		logged = append(logged, l)
	}
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFindings {
		t.Fatalf("watch exit: %v (want %d)\n%s", err, exitFindings, strings.Join(logged, "\n"))
	}
	return logged
}

// watchEvents parses the event lines of a JSON log.
func watchEvents(t *testing.T, lines []string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if _, ok := m["event"]; ok {
			out = append(out, m)
		}
	}
	return out
}

// eventsAbout renders the events of finding id ("": all) as
// "event kind severity (was kind severity)".
func eventsAbout(evs []map[string]any, id string) []string {
	var out []string
	for _, e := range evs {
		if id != "" && e["id"] != id {
			continue
		}
		s := fmt.Sprintf("%s %s %s", e["event"], e["kind"], e["severity"])
		if e["previous_kind"] != nil {
			s += fmt.Sprintf(" (was %s %s)", e["previous_kind"], e["previous_severity"])
		}
		out = append(out, s)
	}
	return out
}

// echoListenIn serves addr in h: every connection echoes what it reads
// (bounded in connections, reads and idle time).
func echoListenIn(t *testing.T, h *testenv.Host, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr.String()); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for i := 0; i < 100; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for j := 0; j < 10000; j++ {
					c.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// pingEvery opens one TCP connection from h to addr and sends a byte and
// reads its echo every interval, until stop (at most 1200 times). stop
// returns the first failure.
func pingEvery(t *testing.T, h *testenv.Host, addr netip.AddrPort, every time.Duration) (stop func() error) {
	t.Helper()
	var c net.Conn
	if err := h.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr.String(), 2*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	done, finished := make(chan struct{}), make(chan struct{})
	var failure error
	go func() {
		defer close(finished)
		defer c.Close()
		tick := time.NewTicker(every)
		defer tick.Stop()
		buf := make([]byte, 1)
		for i := 0; i < 1200; i++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			c.SetDeadline(time.Now().Add(2 * time.Second)) //nolint:errcheck
			if _, err := c.Write([]byte{'x'}); err != nil {
				failure = fmt.Errorf("ping %d: %w", i, err)
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				failure = fmt.Errorf("echo %d: %w", i, err)
				return
			}
		}
	}()
	var once sync.Once
	return func() error {
		once.Do(func() { close(done) })
		<-finished
		return failure
	}
}

// TestE2EWatchResolves: with a sliding --window, a finding whose traffic
// and listener are gone leaves the window, and once it has been absent
// for --settle it is resolved.
func TestE2EWatchResolves(t *testing.T) {
	a, b := testenv.NewPair(t)
	port := netip.AddrPortFrom(a.IPv4, 6379)
	ln := listenIn(t, a, port)
	abs := func(p string) string { s, _ := filepath.Abs(p); return s }
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd, lines := startInNS(t, ctx, a, nil, "watch", "--iface", a.Iface, "--catalog", abs("testdata/lab-catalog.yaml"),
		"--matrix", "labapp", "--role", "server", "--site", abs("testdata/lab-site.yaml"),
		"--interval", "1s", "--window", "3s", "--settle", "2s", "--duration", "60s", "--move-interval", "200ms")
	logged := waitLog(t, lines, `"msg":"watching"`)
	dialed := time.Now()
	dialN(t, b, port, 1)
	logged = append(logged, waitLog(t, lines, `"event":"opened","id":"unexpected-open-port/tcp/6379","kind":"unexpected-open-port","severity":"high"`)...)
	ln.Close() // the service goes away: no more traffic, no more listener
	logged = append(logged, waitLog(t, lines, `"event":"resolved","id":"unexpected-open-port/tcp/6379"`)...)
	// Not before the connection left the window: its bucket goes only
	// once a later bucket is 3 s (--window) old, so every evaluation up to
	// dial + 3 s − 1 s (--interval) still holds it, and resolution needs
	// 2 s (--settle) of absence after the last of them.
	d := time.Since(dialed)
	t.Logf("resolved %s after the connection", d.Round(time.Millisecond))
	if d < 4*time.Second {
		t.Errorf("resolved %s after the connection, before window − interval + settle", d.Round(time.Millisecond))
	}
	logged = append(logged, stopWatch(t, cmd, lines)...)
	evs := watchEvents(t, logged)
	// Opened at high; if the listener outlived the connection in the
	// window, one de-escalation to the idle listener (medium) on the way;
	// resolved last.
	got := eventsAbout(evs, "unexpected-open-port/tcp/6379")
	want := []string{"opened unexpected-open-port high", "resolved"}
	if len(got) == 3 {
		want = []string{want[0], "de-escalated unexpected-open-port medium (was unexpected-open-port high)", want[1]}
	}
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = strings.HasPrefix(got[i], want[i])
	}
	if !ok {
		t.Errorf("tcp/6379 events %q, want %q\n%s", got, want, strings.Join(logged, "\n"))
	}
}
