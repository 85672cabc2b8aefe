package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

var t0 = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)

// Findings as the engine builds them (audit/engine.go), IDs included.
func openPort(port int, sev audit.Severity) audit.Finding {
	f := audit.Finding{ID: fmt.Sprintf("unexpected-open-port/tcp/%d", port), Kind: audit.UnexpectedOpenPort, Severity: sev,
		Direction: snapshot.Inbound, Proto: "tcp", Port: fmt.Sprint(port), Summary: fmt.Sprintf("tcp/%d is open (%s)", port, sev)}
	if sev == audit.High {
		f.Evidence = audit.Evidence{Packets: 6, Peers: 1, TopPeers: []audit.PeerCount{{Addr: netip.MustParseAddr("192.0.2.2"), Packets: 6}},
			FirstSeen: t0, LastSeen: t0.Add(time.Second)}
	}
	return f
}

func undocIn(port int) audit.Finding {
	return audit.Finding{ID: fmt.Sprintf("undocumented-flow/inbound/tcp/%d", port), Kind: audit.UndocumentedFlow, Severity: audit.Low,
		Direction: snapshot.Inbound, Proto: "tcp", Port: fmt.Sprint(port), Summary: "attempts, no service"}
}

func ruleFinding(kind audit.Kind, sev audit.Severity, rule string, port int) audit.Finding {
	return audit.Finding{ID: string(kind) + "/" + rule, Kind: kind, Severity: sev, Direction: snapshot.Inbound, Proto: "tcp",
		Port: fmt.Sprint(port), Rule: &audit.RuleRef{ID: rule, Direction: snapshot.Inbound, Proto: "tcp", Ports: fmt.Sprint(port),
			Requirement: catalog.Required, Citation: catalog.Citation{Doc: "lab-ports.txt", Section: "4"},
			Source: catalog.SourcePos{File: "lab-catalog.yaml", Line: 40}},
		Summary: string(kind) + " " + rule}
}

func outOfZone(rule string, port int) audit.Finding {
	f := ruleFinding(audit.PeerOutOfZone, audit.High, rule, port)
	f.ID = fmt.Sprintf("peer-out-of-zone/%s/tcp/%d", rule, port)
	return f
}

var shortWindow = audit.Finding{ID: "audit-incomplete/short-window", Kind: audit.AuditIncomplete, Severity: audit.Medium, Summary: "short"}

// evs renders events as "event id [previous]" for comparison.
func evs(es []watchEvent) string {
	var out []string
	for _, e := range es {
		s := string(e.Event) + " " + e.Finding.ID + " " + e.Finding.Severity.String()
		if e.Previous != nil {
			s += " (was " + e.Previous.ID + " " + e.Previous.Severity.String() + ")"
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

func expectEvents(t *testing.T, step string, got []watchEvent, want ...string) {
	t.Helper()
	if g := evs(got); g != strings.Join(want, "; ") {
		t.Errorf("%s:\n got %s\nwant %s", step, g, strings.Join(want, "; "))
	}
}

func TestTrackerLifecycle(t *testing.T) {
	tr := newTracker(10 * time.Minute)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	expectEvents(t, "first evaluation", tr.observe(at(0), []audit.Finding{openPort(8080, audit.Medium)}, true),
		"opened unexpected-open-port/tcp/8080 medium")
	expectEvents(t, "unchanged", tr.observe(at(1), []audit.Finding{openPort(8080, audit.Medium)}, true))
	e := tr.observe(at(2), []audit.Finding{openPort(8080, audit.High)}, true)
	expectEvents(t, "answers a peer", e, "escalated unexpected-open-port/tcp/8080 high (was unexpected-open-port/tcp/8080 medium)")
	if len(e) == 1 && (!e[0].FirstReported.Equal(at(0)) || e[0].Finding.Evidence.Peers != 1) {
		t.Errorf("escalation: first reported %s, evidence %+v", e[0].FirstReported, e[0].Finding.Evidence)
	}
	expectEvents(t, "idle again", tr.observe(at(3), []audit.Finding{openPort(8080, audit.Medium)}, true),
		"de-escalated unexpected-open-port/tcp/8080 medium (was unexpected-open-port/tcp/8080 high)")
	// Absent: one missed interval is not a resolution, nor 9m59s.
	expectEvents(t, "absent 1m", tr.observe(at(4), nil, true))
	expectEvents(t, "absent 9m59s", tr.observe(at(13).Add(-time.Second), nil, true))
	e = tr.observe(at(13), nil, true)
	expectEvents(t, "absent 10m", e, "resolved unexpected-open-port/tcp/8080 medium")
	if len(e) == 1 && (!e[0].LastPresent.Equal(at(3)) || !e[0].FirstReported.Equal(at(0))) {
		t.Errorf("resolved: last present %s, first reported %s", e[0].LastPresent, e[0].FirstReported)
	}
	expectEvents(t, "still gone", tr.observe(at(14), nil, true))
	expectEvents(t, "back", tr.observe(at(15), []audit.Finding{openPort(8080, audit.High)}, true),
		"opened unexpected-open-port/tcp/8080 high")
	if tr.openCount() != 1 || len(tr.alerting) != 1 {
		t.Errorf("open %d, alerting %v", tr.openCount(), tr.alerting)
	}
}

func TestTrackerSettleRestartsOnReappearance(t *testing.T) {
	tr := newTracker(5 * time.Minute)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	f := undocIn(2222)
	tr.observe(at(0), []audit.Finding{f}, true)
	for m := 1; m <= 4; m++ {
		expectEvents(t, fmt.Sprintf("absent at %dm", m), tr.observe(at(m), nil, true))
	}
	expectEvents(t, "back at 5m", tr.observe(at(5), []audit.Finding{f}, true)) // still open: no event
	for m := 6; m <= 9; m++ {
		expectEvents(t, fmt.Sprintf("absent at %dm", m), tr.observe(at(m), nil, true))
	}
	expectEvents(t, "absent 5m after the reappearance", tr.observe(at(10), nil, true), "resolved undocumented-flow/inbound/tcp/2222 low")
}

func TestTrackerKindChange(t *testing.T) {
	tr := newTracker(time.Minute)
	expectEvents(t, "attempts", tr.observe(t0, []audit.Finding{undocIn(8080), ruleFinding(audit.MissingRequired, audit.Medium, "lab1.server.agent", 9001)}, true),
		"opened missing-required/lab1.server.agent medium", "opened undocumented-flow/inbound/tcp/8080 low")
	// The port starts answering: another ID, the same subject.
	expectEvents(t, "answers", tr.observe(t0.Add(time.Minute), []audit.Finding{openPort(8080, audit.High), ruleFinding(audit.RequiredPortFiltered, audit.High, "lab1.server.agent", 9001)}, true),
		"escalated required-port-filtered/lab1.server.agent high (was missing-required/lab1.server.agent medium)",
		"escalated unexpected-open-port/tcp/8080 high (was undocumented-flow/inbound/tcp/8080 low)")
	// Same severity, another kind: closed ranks above filtered (report order).
	expectEvents(t, "refused", tr.observe(t0.Add(2*time.Minute), []audit.Finding{openPort(8080, audit.High), ruleFinding(audit.RequiredPortClosed, audit.High, "lab1.server.agent", 9001)}, true),
		"escalated required-port-closed/lab1.server.agent high (was required-port-filtered/lab1.server.agent high)")
	expectEvents(t, "dropped", tr.observe(t0.Add(3*time.Minute), []audit.Finding{openPort(8080, audit.High), ruleFinding(audit.RequiredPortFiltered, audit.High, "lab1.server.agent", 9001)}, true),
		"de-escalated required-port-filtered/lab1.server.agent high (was required-port-closed/lab1.server.agent high)")
	// The ID of a resolved finding is the last one observed.
	expectEvents(t, "gone", tr.observe(t0.Add(5*time.Minute), nil, true),
		"resolved required-port-filtered/lab1.server.agent high", "resolved unexpected-open-port/tcp/8080 high")
}

// Findings that coexist on one rule and port are different subjects.
func TestTrackerCoexistingSubjects(t *testing.T) {
	tr := newTracker(time.Minute)
	ssh := []audit.Finding{ruleFinding(audit.MissingRequired, audit.Medium, "lab1.server.ssh", 22), outOfZone("lab1.server.ssh", 22),
		ruleFinding(audit.OptionalInUse, audit.Info, "lab1.server.ssh", 22)}
	expectEvents(t, "three findings on tcp/22", tr.observe(t0, ssh, true),
		"opened missing-required/lab1.server.ssh medium",
		"opened optional-in-use/lab1.server.ssh info", "opened peer-out-of-zone/lab1.server.ssh/tcp/22 high")
	expectEvents(t, "the out-of-zone peers stop", tr.observe(t0.Add(2*time.Minute), ssh[:1:1], true),
		"resolved optional-in-use/lab1.server.ssh info", "resolved peer-out-of-zone/lab1.server.ssh/tcp/22 high")
	// Should the engine ever report two findings of one family for one
	// subject, both are tracked; the one already open keeps its history.
	both := []audit.Finding{ruleFinding(audit.RequiredPortClosed, audit.High, "lab1.server.ssh", 22), ssh[0]}
	expectEvents(t, "two of one family", tr.observe(t0.Add(3*time.Minute), both, true), "opened required-port-closed/lab1.server.ssh high")
	expectEvents(t, "stable", tr.observe(t0.Add(4*time.Minute), both, true))
}

func TestTrackerHeldBack(t *testing.T) {
	tr := newTracker(10 * time.Minute)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	miss := ruleFinding(audit.MissingRequired, audit.Medium, "lab1.server.ssh", 22)
	expectEvents(t, "unsettled", tr.observe(at(1), []audit.Finding{miss, shortWindow, undocIn(23)}, false), "opened undocumented-flow/inbound/tcp/23 low")
	expectEvents(t, "settled", tr.observe(at(11), []audit.Finding{miss}, true),
		"opened missing-required/lab1.server.ssh medium", "resolved undocumented-flow/inbound/tcp/23 low")

	// An open finding whose subject is now only held back (a restart, a
	// fresh window) neither changes nor resolves while unsettled.
	closed := ruleFinding(audit.RequiredPortClosed, audit.High, "lab1.server.agent", 9001)
	tr = newTracker(10 * time.Minute)
	tr.observe(at(0), []audit.Finding{closed, miss}, true)
	for m := 1; m <= 15; m++ {
		expectEvents(t, fmt.Sprintf("held at %dm", m), tr.observe(at(m), []audit.Finding{ruleFinding(audit.MissingRequired, audit.Medium, "lab1.server.agent", 9001), miss}, false))
	}
	expectEvents(t, "settled", tr.observe(at(16), []audit.Finding{ruleFinding(audit.MissingRequired, audit.Medium, "lab1.server.agent", 9001), miss}, true),
		"de-escalated missing-required/lab1.server.agent medium (was required-port-closed/lab1.server.agent high)")
}

func testScope() watchScope {
	return newScope("labapp", "1", "server", []string{"vpn", "ha"}, []string{"veth-a"})
}

func TestStateRoundTripAndRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), stateFileName)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	a, b, c := openPort(8080, audit.High), ruleFinding(audit.RequiredPortClosed, audit.High, "lab1.server.agent", 9001), undocIn(23)
	tr := newTracker(10 * time.Minute)
	tr.observe(at(0), []audit.Finding{a, c, shortWindow}, true)
	tr.observe(at(1), []audit.Finding{a, b, c, shortWindow}, true)
	if err := saveState(path, testScope(), tr, at(2)); err != nil {
		t.Fatal(err)
	}
	st, err := loadState(path, testScope())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Findings) != 4 || !st.Written.Equal(at(2)) || st.Format != stateFormat {
		t.Fatalf("state: %+v", st)
	}
	for _, o := range st.Findings {
		want := tr.open[o.Key]
		if want == nil || !reflect.DeepEqual(o.Finding, want.Finding) || !o.FirstReported.Equal(want.FirstReported) || !o.LastPresent.Equal(want.LastPresent) {
			t.Errorf("%s does not round-trip:\n got %+v\nwant %+v", o.Key, o, want)
		}
	}

	// The restart at 30m: 8080 unchanged, 9001 now only filtered, 23 gone,
	// a new port.
	re := newTracker(10 * time.Minute)
	re.restore(st, at(30))
	if len(re.alerting) != 4 {
		t.Errorf("restored findings at low or above count for the exit code: %v", re.alerting)
	}
	now := []audit.Finding{a, ruleFinding(audit.RequiredPortFiltered, audit.High, "lab1.server.agent", 9001), openPort(6379, audit.Medium), shortWindow}
	expectEvents(t, "after restart", re.observe(at(31), now, false),
		"de-escalated required-port-filtered/lab1.server.agent high (was required-port-closed/lab1.server.agent high)",
		"opened unexpected-open-port/tcp/6379 medium")
	// 23 was last present at 1m, long ago: it stays open for a whole
	// --settle after the restart, then resolves.
	expectEvents(t, "9m after restart", re.observe(at(39), now, false))
	e := re.observe(at(40), now, true)
	expectEvents(t, "10m after restart", e, "resolved undocumented-flow/inbound/tcp/23 low")
	if len(e) == 1 && (!e[0].LastPresent.Equal(at(1)) || !e[0].FirstReported.Equal(at(0))) {
		t.Errorf("resolved after restart: last present %s, first reported %s", e[0].LastPresent, e[0].FirstReported)
	}
}

func TestStateCorrupt(t *testing.T) {
	valid := func() watchState {
		o := &openFinding{Finding: openPort(8080, audit.High), FirstReported: t0, LastChanged: t0, LastPresent: t0}
		o.Key = subjectKey(&o.Finding)
		return watchState{Format: stateFormat, Scope: testScope(), Written: t0, Findings: []*openFinding{o}}
	}
	enc := func(st watchState) string { b, _ := json.Marshal(st); return string(b) }
	for name, c := range map[string]struct{ data, want string }{
		"truncated":      {enc(valid())[:40], "unexpected EOF"},
		"garbage":        {"\x00\x01flowaudit", "invalid character"},
		"trailing data":  {enc(valid()) + "{}", "data after the JSON object"},
		"format":         {strings.Replace(enc(valid()), stateFormat, "flowaudit-watch-state/9", 1), `format "flowaudit-watch-state/9"`},
		"unknown field":  {strings.Replace(enc(valid()), `"written"`, `"writen"`, 1), `unknown field "writen"`},
		"bad severity":   {strings.Replace(enc(valid()), `"severity":"high"`, `"severity":"severe"`, 1), `unknown severity "severe"`},
		"unknown kind":   {strings.Replace(enc(valid()), `"kind":"unexpected-open-port"`, `"kind":"open-port"`, 1), `unknown kind "open-port"`},
		"key mismatch":   {strings.Replace(enc(valid()), `"key":"exposure|inbound|tcp|8080|"`, `"key":"exposure|inbound|tcp|8081|"`, 1), "does not match the finding"},
		"duplicate key":  {func() string { s := valid(); s.Findings = append(s.Findings, s.Findings[0]); return enc(s) }(), "twice"},
		"no first seen":  {func() string { s := valid(); s.Findings[0].FirstReported = time.Time{}; return enc(s) }(), "no first_reported"},
		"null finding":   {strings.Replace(enc(valid()), `"findings":[`, `"findings":[null,`, 1), "findings[0] is null"},
		"empty file":     {"", "EOF"},
		"not an object":  {"[]", "cannot unmarshal array"},
		"id-less":        {strings.Replace(enc(valid()), `"id":"unexpected-open-port/tcp/8080"`, `"id":""`, 1), "has no id"},
		"wrong key kind": {strings.Replace(enc(valid()), `"key":"exposure|inbound|tcp|8080|"`, `"key":"id:x"`, 1), "does not match"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, stateFileName)
			if err := os.WriteFile(path, []byte(c.data), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := loadState(path, testScope())
			if !errors.Is(err, errStateCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("loadState: %v, want errStateCorrupt naming %s with %q", err, path, c.want)
			}
			// watch: warned about, moved aside (kept), every finding new.
			var logs bytes.Buffer
			log, _ := newLogger(&logs, "json", "info")
			tr := newTracker(time.Minute)
			if err := restoreState(log, path, testScope(), tr, t0); err != nil {
				t.Fatalf("restoreState: %v", err)
			}
			if tr.openCount() != 0 {
				t.Errorf("%d findings restored from a corrupt file", tr.openCount())
			}
			moved := filepath.Join(dir, stateFileName+".corrupt-20261126T080000.000000000Z")
			if b, err := os.ReadFile(moved); err != nil || string(b) != c.data {
				t.Errorf("corrupt file not kept as %s: %v", moved, err)
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("corrupt file still in place: %v", err)
			}
			l := logs.String()
			if !strings.Contains(l, `"level":"warn"`) || !strings.Contains(l, `"file":"`+path+`"`) || !strings.Contains(l, `"moved_to":"`+moved+`"`) || !strings.Contains(l, strings.Trim(jsonString(c.want), `"`)) {
				t.Errorf("warning does not name the file, where it went and why:\n%s", l)
			}
			expectEvents(t, "afresh", tr.observe(t0, []audit.Finding{openPort(8080, audit.High)}, true), "opened unexpected-open-port/tcp/8080 high")
		})
	}
}

func TestStateUnreadable(t *testing.T) {
	// A directory where the file should be: neither readable nor a
	// corrupt file to move aside. watch refuses to start.
	dir := t.TempDir()
	path := filepath.Join(dir, stateFileName)
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	err := restoreState(zap.NewNop(), path, testScope(), newTracker(time.Minute), t0)
	if err == nil || !strings.Contains(err.Error(), path) || errors.Is(err, errStateCorrupt) {
		t.Fatalf("restoreState on a directory: %v, want an I/O error naming %s", err, path)
	}
	// No file yet: a fresh start.
	tr := newTracker(time.Minute)
	if err := restoreState(zap.NewNop(), filepath.Join(dir, "none.json"), testScope(), tr, t0); err != nil || tr.openCount() != 0 {
		t.Fatalf("no state file: %v, %d open", err, tr.openCount())
	}
}

func TestStateOtherScope(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, stateFileName)
	tr := newTracker(time.Minute)
	tr.observe(t0, []audit.Finding{openPort(8080, audit.High)}, true)
	if err := saveState(path, testScope(), tr, t0); err != nil {
		t.Fatal(err)
	}
	otherEdition := testScope()
	otherEdition.Edition = "older"
	for _, other := range []watchScope{
		otherEdition,
		newScope("labapp", "1", "server", []string{"vpn", "ha"}, []string{"veth-a", "veth-c"}),
		newScope("labapp", "1", "client", []string{"vpn", "ha"}, []string{"veth-a"}),
		newScope("labapp", "2", "server", []string{"vpn", "ha"}, []string{"veth-a"}),
		newScope("labapp", "1", "server", []string{"vpn"}, []string{"veth-a"}),
		newScope("other", "1", "server", []string{"vpn", "ha"}, []string{"veth-a"}),
	} {
		if _, err := loadState(path, other); !errors.Is(err, errStateMismatch) || !strings.Contains(err.Error(), other.String()) || !strings.Contains(err.Error(), testScope().String()) {
			t.Errorf("scope %s: %v, want errStateMismatch naming both scopes", other, err)
		}
	}
	// The order of --iface and --conditions does not matter.
	if _, err := loadState(path, newScope("labapp", "1", "server", []string{"ha", "vpn"}, []string{"veth-a", "veth-a"})); err != nil {
		t.Errorf("same scope, other order: %v", err)
	}

	var logs bytes.Buffer
	log, _ := newLogger(&logs, "json", "info")
	other := newScope("labapp", "1", "server", nil, []string{"veth-b"})
	re := newTracker(time.Minute)
	if err := restoreState(log, path, other, re, t0); err != nil {
		t.Fatal(err)
	}
	if re.openCount() != 0 {
		t.Errorf("findings of another scope restored")
	}
	if !strings.Contains(logs.String(), "belongs to another watch") || !strings.Contains(logs.String(), ".other-scope-") {
		t.Errorf("mismatch not said:\n%s", logs.String())
	}
	expectEvents(t, "no alert suppressed", re.observe(t0, []audit.Finding{openPort(8080, audit.High)}, true), "opened unexpected-open-port/tcp/8080 high")
}

func TestStateDirLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockStateDir(dir); !errors.Is(err, errStateLocked) || !strings.Contains(err.Error(), dir) {
		t.Errorf("second watch on one --state-dir: %v", err)
	}
	unlock()
	unlock2, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlock2()
}

func TestLogEventFields(t *testing.T) {
	var buf bytes.Buffer
	log, _ := newLogger(&buf, "json", "info")
	prev := openPort(8080, audit.Medium)
	esc0 := watchEvent{Time: t0, Event: eventEscalated, Finding: openPort(8080, audit.High), Previous: &prev, FirstReported: t0}
	logEvent(log, esc0, false)
	logEvent(log, watchEvent{Time: t0, Event: eventResolved, Finding: ruleFinding(audit.RequiredPortClosed, audit.High, "lab1.server.agent", 9001),
		FirstReported: t0, LastPresent: t0.Add(time.Minute)}, false)
	// Events that went to --events are logged at debug only.
	logEvent(log, esc0, true)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines:\n%s", len(lines), buf.String())
	}
	var esc, res map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &esc); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &res); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"level": "warn", "msg": "finding escalated", "event": "escalated", "id": "unexpected-open-port/tcp/8080",
		"kind": "unexpected-open-port", "severity": "high", "previous_id": "unexpected-open-port/tcp/8080", "previous_kind": "unexpected-open-port",
		"previous_severity": "medium", "service": "inbound tcp/8080", "packets": 6.0, "peers": 1.0, "top_peers": []any{"192.0.2.2"},
		"first_seen": "2026-11-26T08:00:00Z", "last_seen": "2026-11-26T08:00:01Z", "first_reported": "2026-11-26T08:00:00Z",
		"summary": "tcp/8080 is open (high)"}
	for k, v := range want {
		if !reflect.DeepEqual(esc[k], v) {
			t.Errorf("escalated %s = %#v, want %#v", k, esc[k], v)
		}
	}
	if _, ok := esc["rule"]; ok {
		t.Errorf("rule on a finding without one: %v", esc)
	}
	want = map[string]any{"level": "info", "msg": "finding resolved", "event": "resolved", "id": "required-port-closed/lab1.server.agent",
		"rule": "lab1.server.agent", "last_present": "2026-11-26T08:01:00Z", "severity": "high"}
	for k, v := range want {
		if !reflect.DeepEqual(res[k], v) {
			t.Errorf("resolved %s = %#v, want %#v", k, res[k], v)
		}
	}
	for _, k := range []string{"previous_severity", "top_peers", "first_seen"} {
		if _, ok := res[k]; ok {
			t.Errorf("resolved has %s: %v", k, res)
		}
	}
	// Diagnostic times are ISO 8601 in UTC, not epoch floats.
	if ts, ok := esc["ts"].(string); !ok || !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`).MatchString(ts) {
		t.Errorf("ts %#v: want ISO 8601 UTC", esc["ts"])
	}
	buf.Reset()
	dlog, _ := newLogger(&buf, "json", "debug")
	logEvent(dlog, esc0, true)
	if !strings.Contains(buf.String(), `"level":"debug","ts":`) || !strings.Contains(buf.String(), `"msg":"finding escalated"`) {
		t.Errorf("debug event line: %s", buf.String())
	}
}

// --snapshot-dir and --state-dir fail before anything is attached: the
// error is theirs, not the datapath's (the interface does not exist).
func TestWatchChecksDirsFirst(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"watch", "--iface", "fa-no-such-if", "--catalog", "testdata/lab-catalog.yaml", "--matrix", "labapp", "--role", "server"}
	for _, flag := range []string{"--snapshot-dir", "--state-dir"} {
		code, _, errb := runCLI(t, append(base, flag, filepath.Join(file, "sub"))...)
		if code != exitError || !strings.Contains(errb, flag+" "+filepath.Join(file, "sub")) {
			t.Errorf("%s under a file: exit %d\n%s", flag, code, errb)
		}
	}
	// A state directory already in use.
	dir := t.TempDir()
	unlock, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	code, _, errb := runCLI(t, append(base, "--state-dir", dir)...)
	if code != exitError || !strings.Contains(errb, "another flowaudit watch uses this --state-dir") {
		t.Errorf("locked --state-dir: exit %d\n%s", code, errb)
	}
}

func jsonString(s string) string { b, _ := json.Marshal(s); return string(b) }
