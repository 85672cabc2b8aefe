package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/internal/events"
	"github.com/flowaudit/flowaudit/internal/metrics"
)

// failingSink refuses every event.
type failingSink struct{ writes int }

func (s *failingSink) Write([]byte, int) error { s.writes++; return errors.New("disk full") }
func (s *failingSink) Reopen() error           { return nil }
func (s *failingSink) Close() error            { return nil }
func (s *failingSink) String() string          { return "/var/log/flowaudit/events.json" }

// TestWatchEventRouting: with --events, an event goes to the stream and
// only a debug line to the log; an event the stream refuses goes to the
// log at warn, with the reason, and is counted.
func TestWatchEventRouting(t *testing.T) {
	var logBuf, stream bytes.Buffer
	log, _ := newLogger(&logBuf, "json", "info")
	sink, err := events.Open("-", &stream, "h")
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(metrics.Options{})
	w := &watchOutputs{log: log, sink: sink, ectx: &events.Context{Hostname: "h", Interfaces: []string{"eth0"}}, metrics: m}
	prev := openPort(8080, audit.Medium)
	ev := watchEvent{Time: t0, Event: eventEscalated, Finding: openPort(8080, audit.High), Previous: &prev, FirstReported: t0}
	w.event(ev)
	var got map[string]any
	if err := json.Unmarshal(stream.Bytes(), &got); err != nil || strings.Count(stream.String(), "\n") != 1 {
		t.Fatalf("stream %q: %v", stream.String(), err)
	}
	if got["event"].(map[string]any)["action"] != "escalated" {
		t.Errorf("stream event %v", got)
	}
	if logBuf.Len() != 0 {
		t.Errorf("the log has the streamed event at info: %s", logBuf.String())
	}

	fs := &failingSink{}
	w.sink = fs
	w.event(ev)
	out := logBuf.String()
	if fs.writes != 1 || !strings.Contains(out, `"msg":"event not delivered to --events; logged instead"`) ||
		!strings.Contains(out, `"error":"disk full"`) || !strings.Contains(out, `"level":"warn","ts":`) ||
		!strings.Contains(out, `"msg":"finding escalated","event":"escalated","id":"unexpected-open-port/tcp/8080"`) {
		t.Errorf("refused event, log:\n%s", out)
	}
	fails := metricValue(t, m, "flowaudit_event_delivery_failures_total")
	if fails != 1 {
		t.Errorf("delivery failures %v, want 1", fails)
	}
	if n := metricValue(t, m, `flowaudit_finding_events_total{action="escalated",kind="unexpected-open-port",severity="high"}`); n != 2 {
		t.Errorf("escalated events counted %v, want 2", n)
	}
	// Without --events the log is the sink, as before.
	logBuf.Reset()
	w.sink = nil
	w.event(ev)
	if !strings.Contains(logBuf.String(), `"level":"warn"`) || !strings.Contains(logBuf.String(), `"msg":"finding escalated"`) {
		t.Errorf("log sink: %s", logBuf.String())
	}
}

// metricValue reads one series from the registry's text output.
func metricValue(t *testing.T, m *metrics.Metrics, series string) float64 {
	t.Helper()
	name, _, _ := strings.Cut(series, "{")
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			var ls []string
			for _, l := range s.GetLabel() {
				ls = append(ls, l.GetName()+`="`+l.GetValue()+`"`)
			}
			id := name
			if len(ls) > 0 {
				id += "{" + strings.Join(ls, ",") + "}"
			}
			if id == series {
				if c := s.GetCounter(); c != nil {
					return c.GetValue()
				}
				return s.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s", series)
	return 0
}

// TestWatchOutputsFailFirst: an --events target or a --metrics-addr that
// cannot be used fails the watch before anything is attached (the
// interface does not even exist), naming the flag.
func TestWatchOutputsFailFirst(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	base := []string{"watch", "--iface", "fa-no-such-if", "--catalog", "testdata/lab-catalog.yaml", "--matrix", "labapp", "--role", "server"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--events", filepath.Join(dir, "no", "such", "events.json")}, "--events: open"},
		{[]string{"--events", dir}, "is a directory"},
		{[]string{"--events", "syslog+tcp://127.0.0.1:1"}, "--events: syslog tcp 127.0.0.1:1"},
		{[]string{"--events", "kafka://broker:9092"}, "unknown scheme"},
		{[]string{"--events", "syslog://?facility=mars"}, "unknown facility"},
		{[]string{"--metrics-addr", busy.Addr().String()}, "--metrics-addr: listen tcp " + busy.Addr().String()},
		{[]string{"--metrics-addr", "127.0.0.1:notaport"}, "--metrics-addr"},
		{[]string{"--metrics-ports", "-1"}, "--metrics-ports -1"},
	} {
		code, _, errb := runCLI(t, append(base, c.args...)...)
		if code != exitError || !strings.Contains(errb, c.want) || strings.Contains(errb, "fa-no-such-if") {
			t.Errorf("%v: exit %d, want 1 and %q before the interface is looked at:\n%s", c.args, code, c.want, errb)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("files left: %v", ents)
	}
}
