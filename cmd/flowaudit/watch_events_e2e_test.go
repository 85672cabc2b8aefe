package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// eventSchema compiles docs/events.schema.json.
func eventSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open("../../docs/events.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("events.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("events.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkEvents validates every line as an event and returns them decoded.
func checkEvents(t *testing.T, sch *jsonschema.Schema, what string, lines []string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range lines {
		inst, err := jsonschema.UnmarshalJSON(strings.NewReader(l))
		if err != nil {
			t.Fatalf("%s: not JSON: %q", what, l)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("%s: event does not validate: %v\n%s", what, err, l)
		}
		var m map[string]any
		json.Unmarshal([]byte(l), &m) //nolint:errcheck // validated above
		out = append(out, m)
	}
	return out
}

// field follows a dotted path through a decoded event.
func field(m map[string]any, path string) any {
	var v any = m
	for _, k := range strings.Split(path, ".") {
		o, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = o[k]
	}
	return v
}

// eventLines reads the non-empty lines of a file ("" lines when missing).
func eventLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// waitEvent polls an events file until a line contains want.
func waitEvent(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range eventLines(t, path) {
			if strings.Contains(l, want) {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no event with %q in %s within 20 s:\n%s", want, path, strings.Join(eventLines(t, path), "\n"))
}

// scrapeIn fetches http://addr/metrics from inside h's namespace.
func scrapeIn(t *testing.T, h *testenv.Host, addr string) string {
	t.Helper()
	var c net.Conn
	if err := h.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 2*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
	fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s %v\n%s", resp.Status, err, b)
	}
	return string(b)
}

// sample returns the value of one series in a text exposition (-1 when
// absent). series is written as the exposition writes it: labels sorted.
func sample(body, series string) float64 {
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// checkPromtool runs promtool check metrics on a scrape; without promtool
// it is skipped unless CI is set.
func checkPromtool(t *testing.T, body string) {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("promtool not found (apt-get install prometheus): %v", err)
		}
		t.Log("promtool not found: the scrape is not linted")
		return
	}
	cmd := exec.Command(p, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on a real scrape: %v\n%s", err, out)
	}
}

// latestSnapshot reads the newest snapshot of a --snapshot-dir.
func latestSnapshot(t *testing.T, dir string) *snapshot.Snapshot {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "flowaudit-") && strings.HasSuffix(e.Name(), ".json") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		t.Fatal("no snapshot yet")
	}
	sort.Strings(names)
	s, err := snapshot.ReadFile(filepath.Join(dir, names[len(names)-1]))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestE2EWatchEventsAndMetrics: a watch with --events FILE and
// --metrics-addr writes schema-valid ECS events to the file and none to
// its log, serves metrics whose traffic counters equal what its snapshot
// holds, labelled by documented port, answered port and zone; SIGHUP after
// the file was moved (logrotate) reopens it without stopping the watch.
func TestE2EWatchEventsAndMetrics(t *testing.T) {
	a, b := testenv.NewPair(t)
	sch := eventSchema(t)
	dir := t.TempDir()
	evPath := filepath.Join(dir, "events.json")
	snapDir := filepath.Join(dir, "snaps")
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 8443))
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 6379))
	abs := func(p string) string { s, _ := filepath.Abs(p); return s }
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd, lines := startInNS(t, ctx, a, nil, "watch", "--iface", a.Iface, "--catalog", abs("testdata/lab-catalog.yaml"),
		"--matrix", "labapp", "--role", "server", "--site", abs("testdata/lab-site.yaml"),
		"--interval", "1s", "--duration", "60s", "--settle", "1h", "--move-interval", "200ms",
		"--events", evPath, "--metrics-addr", "127.0.0.1:0", "--snapshot-dir", snapDir, "--keep", "200")
	logged := waitLog(t, lines, `"msg":"metrics served"`)
	m := regexp.MustCompile(`"url":"http://([^/"]+)/metrics"`).FindStringSubmatch(logged[len(logged)-1])
	if m == nil {
		t.Fatalf("no metrics URL in %s", logged[len(logged)-1])
	}
	addr := m[1]
	logged = append(logged, waitLog(t, lines, `"msg":"watching"`)...)
	dialN(t, b, netip.AddrPortFrom(a.IPv4, 8443), 3)
	dialN(t, b, netip.AddrPortFrom(a.IPv4, 6379), 2)
	waitEvent(t, evPath, `"id":"unexpected-open-port/tcp/6379","kind":"unexpected-open-port","severity":"high"`)

	// Metrics: once the traffic is over and an evaluation has taken it
	// in, the counters equal the snapshot's flows, service by service.
	time.Sleep(2500 * time.Millisecond)
	snap := latestSnapshot(t, snapDir)
	body := scrapeIn(t, a, addr)
	checkPromtool(t, body)
	for _, svc := range []struct {
		port  uint16
		label string // documented, or admitted because it answered
	}{{8443, "8443"}, {6379, "6379"}} {
		var in, out, bin, bout uint64
		for _, f := range snap.Flows {
			if f.Direction == snapshot.Inbound && f.Proto == snapshot.TCP && f.Port == svc.port {
				if f.Peer != b.IPv4 {
					t.Errorf("tcp/%d: unexpected peer %s", svc.port, f.Peer)
				}
				in, out, bin, bout = in+f.PacketsIn, out+f.PacketsOut, bin+f.BytesIn, bout+f.BytesOut
			}
		}
		if in == 0 || out == 0 {
			t.Fatalf("tcp/%d: no traffic in the snapshot", svc.port)
		}
		labels := fmt.Sprintf(`{direction="inbound",port=%q,protocol="tcp",zone="CLIENTS"}`, svc.label)
		for name, want := range map[string]uint64{"flowaudit_received_packets_total": in, "flowaudit_sent_packets_total": out,
			"flowaudit_received_bytes_total": bin, "flowaudit_sent_bytes_total": bout} {
			if got := sample(body, name+labels); got != float64(want) {
				t.Errorf("%s%s = %v, the snapshot has %d", name, labels, got, want)
			}
		}
	}
	for series, want := range map[string]float64{
		`flowaudit_open_findings{kind="unexpected-open-port",severity="high"}`: 1,
		`flowaudit_flow_map_capacity`:                                          65536,
		`flowaudit_memory_flow_budget`:                                         defaultFlowBudget,
		`flowaudit_evaluation_interval_seconds`:                                1,
		`flowaudit_overflow_insert_failed_packets_total`:                       0,
		`flowaudit_socket_refresh_errors_total`:                                0,
	} {
		if got := sample(body, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if n := sample(body, "flowaudit_map_moves_total"); n < 5 {
		t.Errorf("flowaudit_map_moves_total %v: moves every 200ms", n)
	}
	if ts := sample(body, "flowaudit_last_evaluation_timestamp_seconds"); time.Since(time.Unix(int64(ts), 0)) > 5*time.Second {
		t.Errorf("last evaluation %v: more than 5 s ago", ts)
	}
	if !strings.Contains(body, `flowaudit_build_info{goversion="go`) || strings.Contains(body, b.IPv4.String()) {
		t.Errorf("build info missing, or a peer address in the metrics")
	}

	// logrotate: move the file away, SIGHUP; the watch goes on into a new file.
	rotated := evPath + ".1"
	if err := os.Rename(evPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	logged = append(logged, waitLog(t, lines, `"msg":"events file reopened"`)...)
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 5432))
	dialN(t, b, netip.AddrPortFrom(a.IPv4, 5432), 1)
	waitEvent(t, evPath, `"id":"unexpected-open-port/tcp/5432"`)
	logged = append(logged, stopWatch(t, cmd, lines)...)
	all := strings.Join(logged, "\n")

	before := checkEvents(t, sch, rotated, eventLines(t, rotated))
	after := checkEvents(t, sch, evPath, eventLines(t, evPath))
	ids := func(evs []map[string]any) string {
		var s []string
		for _, e := range evs {
			s = append(s, fmt.Sprintf("%s %s %s", field(e, "event.action"), field(e, "flowaudit.finding.id"), field(e, "flowaudit.finding.severity")))
		}
		return strings.Join(s, "\n")
	}
	if strings.Contains(ids(before), "5432") || strings.Contains(ids(after), "6379") {
		t.Errorf("events on the wrong side of the rotation:\nbefore:\n%s\nafter:\n%s", ids(before), ids(after))
	}
	// Held back until the end (--settle 1h): missing-required opens at the
	// last evaluation, in the new file.
	if !strings.Contains(ids(after), "opened missing-required/lab1.server.ssh medium") {
		t.Errorf("no missing-required at the end:\n%s", ids(after))
	}
	for _, e := range before {
		if field(e, "flowaudit.finding.id") != "unexpected-open-port/tcp/6379" || field(e, "flowaudit.finding.severity") != "high" {
			continue
		}
		for path, want := range map[string]any{"event.kind": "alert", "source.ip": b.IPv4.String(), "destination.port": 6379.0,
			"network.transport": "tcp", "network.direction": "ingress", "observer.ingress.interface.name": a.Iface,
			"flowaudit.matrix.product": "labapp", "flowaudit.evidence.handshake.synack_out": 2.0, "event.severity": 73.0} {
			if got := field(e, path); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("6379 event: %s = %v, want %v", path, got, want)
			}
		}
	}
	// The log has lifecycle messages, never the events.
	if strings.Contains(all, `"msg":"finding `) || strings.Contains(all, "@timestamp") {
		t.Errorf("events in the diagnostic log:\n%s", all)
	}
	if !strings.Contains(all, `"interval_seconds":1,`) {
		t.Errorf("the watching line does not give interval_seconds as a number:\n%s", all)
	}
}

// TestE2EWatchEventsStdout: --events - puts events, and only events, on
// stdout, the log on stderr; without an events file SIGHUP stops the
// watch as SIGINT does, with the final evaluation.
func TestE2EWatchEventsStdout(t *testing.T) {
	a, b := testenv.NewPair(t)
	sch := eventSchema(t)
	listenIn(t, a, netip.AddrPortFrom(a.IPv4, 6379))
	abs := func(p string) string { s, _ := filepath.Abs(p); return s }
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", a.Name, flowauditBinary(t), "--log-format", "json", "watch",
		"--iface", a.Iface, "--catalog", abs("testdata/lab-catalog.yaml"), "--matrix", "labapp", "--role", "server",
		"--site", abs("testdata/lab-site.yaml"), "--interval", "1s", "--duration", "60s", "--settle", "1h", "--events", "-")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	lines := startLines(t, cmd)
	logged := waitLog(t, lines, `"msg":"watching"`)
	dialN(t, b, netip.AddrPortFrom(a.IPv4, 6379), 1)
	time.Sleep(2500 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		logged = append(logged, l)
	}
	err := cmd.Wait()
	all := strings.Join(logged, "\n")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFindings {
		t.Fatalf("watch after SIGHUP: %v (want exit %d)\n%s", err, exitFindings, all)
	}
	if !strings.Contains(all, `"msg":"watch stopped"`) || strings.Contains(all, "@timestamp") || strings.Contains(all, `"msg":"finding `) {
		t.Errorf("stderr:\n%s", all)
	}
	evs := checkEvents(t, sch, "stdout", strings.Split(strings.TrimSpace(stdout.String()), "\n"))
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s %s", field(e, "event.action"), field(e, "flowaudit.finding.id")))
	}
	s := strings.Join(got, "\n")
	if !strings.Contains(s, "opened unexpected-open-port/tcp/6379") || !strings.Contains(s, "opened missing-required/lab1.server.ssh") {
		t.Errorf("stdout events:\n%s", s)
	}
}
