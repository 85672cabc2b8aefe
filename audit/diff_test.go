package audit

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func diffBase() []snapshot.Flow {
	return []snapshot.Flow{
		flow("in", "tcp", 22, "192.0.2.10", 40, 38, synAck(2)),
		flow("in", "tcp", 9000, "10.1.4.4", 120, 110, synAck(5)),
		flow("in", "tcp", 6379, "10.2.0.4", 3, 2, synAck(1)),
		flow("out", "tcp", 443, "203.0.113.80", 30, 25, snapshot.Evidence{SynOut: 1, SynAckIn: 1}),
		flow("?", "icmpv6", 135<<8, "fe80::1", 3, 3, snapshot.Evidence{}),
	}
}

func diffChanged() []snapshot.Flow {
	return []snapshot.Flow{
		flow("in", "tcp", 22, "192.0.2.10", 40, 38, synAck(2)),
		flow("in", "tcp", 22, "192.0.2.66", 4, 3, synAck(1)),                   // a new peer, out of ADMIN_IP
		flow("in", "tcp", 9000, "10.1.4.4", 6, 0, snapshot.Evidence{SynIn: 6}), // now filtered
		flow("in", "tcp", 8080, "10.1.4.4", 9, 9, synAck(1)),                   // a new open port
		flow("out", "tcp", 443, "203.0.113.80", 30, 25, snapshot.Evidence{SynOut: 1, SynAckIn: 1}),
		flow("?", "icmpv6", 135<<8, "fe80::2", 3, 3, snapshot.Evidence{}), // infrastructure: never compared
	}
}

func snapIn(name string, flows ...snapshot.Flow) *DiffInput {
	return &DiffInput{Name: name, Snapshot: snap(DefaultMinWindow*10, flows...)}
}

// TestDiffSnapshots: services that appeared, went and changed state, open
// ports, and peers by zone, between two snapshots; infrastructure traffic
// (a new neighbour-discovery peer) is no change.
func TestDiffSnapshots(t *testing.T) {
	_, site := loadTestMatrix(t, "server", nil)
	d, err := Diff(snapIn("old.json", diffBase()...), snapIn("new.json", diffChanged()...), DiffOptions{Site: site})
	if err != nil {
		t.Fatal(err)
	}
	svc := func(cs []ServiceChange) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Service+" "+c.OldState+">"+c.NewState)
		}
		return out
	}
	if got, want := svc(d.Services.Appeared), []string{"inbound tcp/8080 >open"}; !slices.Equal(got, want) {
		t.Errorf("appeared services %q, want %q", got, want)
	}
	if got, want := svc(d.Services.Gone), []string{"inbound tcp/6379 open>"}; !slices.Equal(got, want) {
		t.Errorf("gone services %q, want %q", got, want)
	}
	if got, want := svc(d.Services.Changed), []string{"inbound tcp/9000 open>filtered"}; !slices.Equal(got, want) {
		t.Errorf("changed services %q, want %q", got, want)
	}
	if !slices.Equal(d.OpenPorts.Appeared, []string{"tcp/8080"}) || !slices.Equal(d.OpenPorts.Gone, []string{"tcp/6379", "tcp/9000"}) {
		t.Errorf("open ports +%q -%q, want +[tcp/8080] -[tcp/6379 tcp/9000]", d.OpenPorts.Appeared, d.OpenPorts.Gone)
	}
	if len(d.Peers) != 1 || d.Peers[0].Service != "inbound tcp/22" || d.Peers[0].Zone != "other" ||
		!slices.Equal(d.Peers[0].Appeared, []string{"192.0.2.66"}) || len(d.Peers[0].Gone) != 0 || !d.Peers[0].ZoneAppeared {
		t.Errorf("peers %+v, want 192.0.2.66 appeared on inbound tcp/22 in zone other", d.Peers)
	}
	// 1 appeared + 1 gone + 1 changed service, 1+2 open ports, 1 peer.
	if d.Changes != 7 {
		t.Errorf("changes %d, want 7", d.Changes)
	}
	if len(d.NotCompared) != 1 || !strings.HasPrefix(d.NotCompared[0], "findings:") {
		t.Errorf("not compared %q, want the findings note only", d.NotCompared)
	}
	var b bytes.Buffer
	if err := WriteDiffText(&b, d); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"-old.json (snapshot, 2026-11-26 08:00:00Z – 2026-11-26 08:10:00Z)",
		"-  inbound tcp/6379 open (1 peers: SOURCE_NETWORK)",
		"+  inbound tcp/8080 open (1 peers: AGENT_NETWORK)",
		"~  inbound tcp/9000: open -> filtered",
		"+  tcp/8080", "-  tcp/6379",
		"   inbound tcp/22\n+    other 192.0.2.66\n",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("text diff lacks %q:\n%s", line, b.String())
		}
	}
}

// TestDiffNoChange: a snapshot against itself has no change, and says so.
func TestDiffNoChange(t *testing.T) {
	d, err := Diff(snapIn("a", diffBase()...), snapIn("b", diffBase()...), DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Changes != 0 {
		t.Fatalf("changes %d in %+v", d.Changes, d)
	}
	var b bytes.Buffer
	_ = WriteDiffText(&b, d)
	if !strings.Contains(b.String(), "\nno change\n") {
		t.Errorf("text lacks 'no change':\n%s", b.String())
	}
}

// TestDiffIgnore: --ignore drops a churning peer and a churning port
// (its service, open port and findings), and nothing else.
func TestDiffIgnore(t *testing.T) {
	m, site := loadTestMatrix(t, "server", nil)
	var ig []IgnoreSpec
	for _, v := range []string{"192.0.2.66", "tcp/8000-8100", "in tcp/6379"} {
		s, err := ParseIgnore(v)
		if err != nil {
			t.Fatal(err)
		}
		ig = append(ig, s)
	}
	d, err := Diff(snapIn("old", diffBase()...), snapIn("new", diffChanged()...),
		DiffOptions{Site: site, Ignore: ig, Audit: &Options{Matrix: m, Site: site}})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Services.Appeared)+len(d.Services.Gone) != 0 || len(d.Peers) != 0 {
		t.Errorf("ignored services or peers still compared: %+v %+v", d.Services, d.Peers)
	}
	if len(d.Services.Changed) != 1 || !slices.Equal(d.OpenPorts.Gone, []string{"tcp/9000"}) || len(d.OpenPorts.Appeared) != 0 {
		t.Errorf("the filtered tcp/9000 must remain: %+v %+v", d.Services.Changed, d.OpenPorts)
	}
	for _, f := range append(d.Findings.Appeared, d.Findings.Gone...) {
		if f.ID == "unexpected-open-port/tcp/8080" || f.ID == "unexpected-open-port/tcp/6379" || f.ID == "peer-out-of-zone/t1.server.ssh/tcp/22" {
			t.Errorf("finding on an ignored port or peer compared: %+v", f)
		}
	}
	var ids []string
	for _, f := range d.Findings.Appeared {
		ids = append(ids, f.ID)
	}
	if !slices.Contains(ids, "required-port-filtered/t1.server.agent") {
		t.Errorf("appeared findings %q lack required-port-filtered/t1.server.agent", ids)
	}
	for _, bad := range []string{"", "tcp/x", "tcp/9-1", "10.0.0.1/8", "sideways tcp/1", "bogus/1"} {
		if _, err := ParseIgnore(bad); err == nil {
			t.Errorf("ParseIgnore(%q) accepted", bad)
		}
	}
}

// TestDiffReports: two JSON audit reports are compared by their
// findings, observed services, open ports and zones; a report and a
// snapshot are told apart by content.
func TestDiffReports(t *testing.T) {
	m, site := loadTestMatrix(t, "server", nil)
	report := func(name string, flows []snapshot.Flow) *DiffInput {
		r, err := Run(snap(DefaultMinWindow*10, flows...), Options{Matrix: m, Site: site})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := WriteJSON(&b, r); err != nil {
			t.Fatal(err)
		}
		in, err := ParseDiffInput(name, b.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if in.Report == nil || in.Snapshot != nil {
			t.Fatalf("%s not read as a report", name)
		}
		return in
	}
	d, err := Diff(report("old", diffBase()), report("new", diffChanged()), DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var appeared, gone []string
	for _, f := range d.Findings.Appeared {
		appeared = append(appeared, f.ID)
	}
	for _, f := range d.Findings.Gone {
		gone = append(gone, f.ID)
	}
	for _, id := range []string{"unexpected-open-port/tcp/8080", "required-port-filtered/t1.server.agent", "peer-out-of-zone/t1.server.ssh/tcp/22"} {
		if !slices.Contains(appeared, id) {
			t.Errorf("appeared findings %q lack %s", appeared, id)
		}
	}
	if !slices.Contains(gone, "unexpected-open-port/tcp/6379") {
		t.Errorf("gone findings %q lack unexpected-open-port/tcp/6379", gone)
	}
	if len(d.Peers) != 1 || d.Peers[0].Zone != "other" || !d.Peers[0].ZoneAppeared || len(d.Peers[0].Appeared) != 0 {
		t.Errorf("peers %+v: want zone 'other' appeared on tcp/22, no individual peers (reports have none)", d.Peers)
	}
	if !slices.Contains(d.OpenPorts.Appeared, "tcp/8080") || !slices.Contains(d.OpenPorts.Gone, "tcp/6379") {
		t.Errorf("open ports %+v", d.OpenPorts)
	}
	js, _ := json.Marshal(d)
	if !strings.Contains(string(js), `"kind":"report"`) {
		t.Errorf("JSON lacks the input kind: %s", js)
	}
	sn, err := ParseDiffInput("s", mustJSON(t, snap(DefaultMinWindow, diffBase()...)))
	if err != nil || sn.Snapshot == nil {
		t.Fatalf("snapshot not read as a snapshot: %v", err)
	}
	if _, err := ParseDiffInput("bad.json", []byte(`{"version": 2, "flows": [{"proto": "nope"}]}`)); err == nil || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("malformed input: %v, want an error naming the file", err)
	}
}

func mustJSON(t *testing.T, s *snapshot.Snapshot) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := snapshot.Write(&b, s); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
