package events

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

const schemaFile = "../../docs/events.schema.json"

var t0 = time.Date(2026, 11, 26, 8, 0, 0, 123456789, time.UTC)

func testContext(ifaces ...string) *Context {
	return &Context{Hostname: "sensor-1", Interfaces: ifaces, ToolVersion: "v1.2.3",
		Matrix: &catalog.Matrix{Product: "labapp", ProductName: "Lab Appliance", Version: "1", Role: "server", Conditions: []string{"vpn"}}}
}

var (
	peerA = netip.MustParseAddr("192.0.2.2")
	peerB = netip.MustParseAddr("2001:db8::7")
)

func ruleRef() *audit.RuleRef {
	return &audit.RuleRef{ID: "lab1.server.ssh", Direction: snapshot.Inbound, Proto: "tcp", Ports: "22", Peer: "zone ADMIN_IP",
		Requirement: catalog.Required, Purpose: "administration",
		Citation: catalog.Citation{Doc: "lab-ports.txt", Title: "Lab ports", Source: "user", URL: "https://example.org/ports", Section: "4", Quote: "SSH: 22/tcp",
			Note: "read as the admin network"}, Condition: "!vpn",
		Source: catalog.SourcePos{File: "lab-catalog.yaml", Line: 40}}
}

// sampleEvents covers every shape of finding: with and without a rule,
// inbound, outbound and without a service, folded peers, flood and
// interruption evidence, every action.
func sampleEvents() []Event {
	open := audit.Finding{ID: "unexpected-open-port/tcp/8080", Kind: audit.UnexpectedOpenPort, Severity: audit.High,
		Direction: snapshot.Inbound, Proto: "tcp", Port: "8080", Summary: "tcp/8080 answers 2 peers",
		Evidence: audit.Evidence{Packets: 12, Bytes: 900, Peers: 2, FirstSeen: t0.Add(-time.Minute), LastSeen: t0,
			TopPeers:  []audit.PeerCount{{Addr: peerA, Packets: 8, Bytes: 600}, {Addr: peerB, Packets: 4, Bytes: 300}},
			Handshake: snapshot.Evidence{SynIn: 2, SynAckOut: 2}, Listening: true}}
	prev := open
	prev.Severity = audit.Medium
	outOfZone := audit.Finding{ID: "peer-out-of-zone/lab1.server.ssh/tcp/22", Kind: audit.PeerOutOfZone, Severity: audit.High,
		Direction: snapshot.Inbound, Proto: "tcp", Port: "22", Rule: ruleRef(), Summary: "peers outside ADMIN_IP reached tcp/22",
		Evidence: audit.Evidence{Packets: 30, Bytes: 2000, Peers: 41, PeersEstimated: true,
			TopPeers: []audit.PeerCount{{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Peers: 40, Packets: 20, Bytes: 1000},
				{Addr: peerA, Packets: 10, Bytes: 1000}}}}
	outbound := audit.Finding{ID: "undocumented-flow/outbound/udp/53", Kind: audit.UndocumentedFlow, Severity: audit.Low,
		Direction: snapshot.Outbound, Proto: "udp", Port: "53", Summary: "outbound udp/53 is undocumented",
		Evidence: audit.Evidence{Packets: 4, Peers: 1, TopPeers: []audit.PeerCount{{Addr: peerB, Packets: 4}}, DirectionInferred: true,
			Handshake: snapshot.Evidence{RstOut: 1, ICMPClosedOut: 2, ICMPFilteredOut: 3, SynOut: 4, SynAckIn: 5, RstIn: 6,
				ICMPClosedIn: 7, ICMPFilteredIn: 8}}}
	icmp6 := audit.Finding{ID: "undocumented-flow/inbound/icmpv6/128", Kind: audit.UndocumentedFlow, Severity: audit.Info,
		Direction: snapshot.Inbound, Proto: "icmpv6", Port: "type 128 code 0", Summary: "pings"}
	missing := audit.Finding{ID: "missing-required/lab1.server.ssh", Kind: audit.MissingRequired, Severity: audit.Medium,
		Direction: snapshot.Inbound, Proto: "tcp", Port: "22", Rule: ruleRef(), Summary: "no ssh in 1h",
		Evidence: audit.Evidence{Window: "1h0m0s"}}
	flood := audit.Finding{ID: "flood-suspected/inbound/tcp/443", Kind: audit.FloodSuspected, Severity: audit.High,
		Direction: snapshot.Inbound, Proto: "tcp", Port: "443", Summary: "SYN flood",
		Evidence: audit.Evidence{Packets: 50000, Peers: 20000, PeersUnknownPackets: 30000, PeersUnknown: 15000, FloodPackets: 49000,
			Flood: &audit.FloodEvidence{Trigger: "peers,half-open-syns", Peers: 20000, HalfOpenSYNs: 49000, Start: t0.Add(-90 * time.Second),
				End: t0, Span: "1m30s", Rate: 544.4, RateOf: "half-open SYNs", PeersThreshold: 10000, SYNThreshold: 10000, RateThreshold: 100}}}
	incomplete := audit.Finding{ID: "audit-incomplete/interrupted", Kind: audit.AuditIncomplete, Severity: audit.Medium,
		Summary: "the recording was interrupted",
		Evidence: audit.Evidence{Window: "20s", Interrupted: &snapshot.Interruption{Signal: "SIGTERM", At: t0, PlannedEnd: t0.Add(time.Hour),
			Reason: "stopped by the service manager"},
			Services: []audit.ServiceCount{{Direction: snapshot.Inbound, Proto: "tcp", Port: "443", Packets: 5, Peers: 3, Folded: []string{"/24"},
				Unchecked: []string{"zone CLIENTS"}, Prefixes: []string{"192.0.2.0/24"}}}}}
	scan := audit.Finding{ID: "scan-suspected/192.0.2.66", Kind: audit.ScanSuspected, Severity: audit.Medium, Direction: snapshot.Inbound,
		Summary: "192.0.2.66 tried 1027 ports", Evidence: audit.Evidence{Packets: 2047, Peers: 1, Ports: []string{"tcp/1", "tcp/2"},
			TopPeers: []audit.PeerCount{{Addr: netip.MustParseAddr("192.0.2.66"), Packets: 2047}}}}
	first := t0.Add(-time.Hour)
	return []Event{
		{Time: t0, Action: Opened, Finding: prev, FirstReported: t0},
		{Time: t0, Action: Escalated, Finding: open, Previous: &prev, FirstReported: first},
		{Time: t0, Action: Opened, Finding: outOfZone, FirstReported: t0},
		{Time: t0, Action: Opened, Finding: outbound, FirstReported: t0},
		{Time: t0, Action: Opened, Finding: icmp6, FirstReported: t0},
		{Time: t0, Action: Opened, Finding: missing, FirstReported: t0},
		{Time: t0, Action: Opened, Finding: flood, FirstReported: t0},
		{Time: t0, Action: Opened, Finding: incomplete, FirstReported: t0},
		{Time: t0, Action: Deescalated, Finding: prev, Previous: &open, FirstReported: first},
		{Time: t0, Action: Resolved, Finding: scan, FirstReported: first, LastPresent: t0.Add(-10 * time.Minute)},
	}
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatalf("%s: %v", schemaFile, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("events.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("events.schema.json")
	if err != nil {
		t.Fatalf("compile %s: %v", schemaFile, err)
	}
	return s
}

// TestEventSchema: every shape of event validates against
// docs/events.schema.json, which admits no field it does not declare, and
// every declared field is produced by some event.
func TestEventSchema(t *testing.T) {
	sch := compileSchema(t)
	produced := map[string]bool{}
	for _, ctx := range []*Context{testContext("eth0"), testContext("eth0", "eth1")} {
		for _, ev := range sampleEvents() {
			b, err := Encode(ctx, &ev)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.ContainsRune(b, '\n') {
				t.Errorf("%s: a newline inside the event", ev.Finding.ID)
			}
			inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if err := sch.Validate(inst); err != nil {
				t.Errorf("%s %s does not validate: %v\n%s", ev.Action, ev.Finding.ID, err, b)
			}
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			leafPaths(m, "", produced)
		}
	}
	// An event that breaks the schema is refused: the schema is strict.
	b, _ := Encode(testContext("eth0"), &sampleEvents()[0])
	bad := strings.Replace(string(b), `"flowaudit":{`, `"flowaudit":{"extra":1,`, 1)
	inst, _ := jsonschema.UnmarshalJSON(strings.NewReader(bad))
	if sch.Validate(inst) == nil {
		t.Error("the schema accepts an undeclared field")
	}
	var missing []string
	for _, p := range schemaPaths(t) {
		if !produced[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		t.Errorf("declared in the schema, produced by no sample event: %v", missing)
	}
}

// leafPaths records the dotted paths of m's fields ("a.b", arrays of
// objects as "a[].b", the array itself as "a[]").
func leafPaths(v any, prefix string, out map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			leafPaths(c, p, out)
		}
	case []any:
		if len(x) > 0 {
			if _, ok := x[0].(map[string]any); ok {
				out[prefix+"[]"] = true
				for _, c := range x {
					leafPaths(c, prefix+"[]", out)
				}
				return
			}
		}
		out[prefix] = true
	default:
		out[prefix] = true
	}
}

// schemaPaths lists the dotted paths the schema declares.
func schemaPaths(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := json.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(n map[string]any, prefix string)
	walk = func(n map[string]any, prefix string) {
		switch n["type"] {
		case "object":
			props := n["properties"].(map[string]any)
			for k, c := range props {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				walk(c.(map[string]any), p)
			}
		case "array":
			items := n["items"].(map[string]any)
			if items["type"] == "object" {
				out = append(out, prefix+"[]")
				walk(items, prefix+"[]")
				return
			}
			out = append(out, prefix)
		default:
			out = append(out, prefix)
		}
	}
	walk(root, "")
	sort.Strings(out)
	return out
}

// TestEventsDocMatchesSchema: docs/EVENTS.md has one table row per field of
// the schema, and no row for a field the schema does not have.
func TestEventsDocMatchesSchema(t *testing.T) {
	doc, err := os.ReadFile("../../docs/EVENTS.md")
	if err != nil {
		t.Fatal(err)
	}
	// The field tables are the "## Fields" section.
	_, fields, ok := strings.Cut(string(doc), "\n## Fields\n")
	if !ok {
		t.Fatal(`docs/EVENTS.md has no "## Fields" section`)
	}
	fields, _, _ = strings.Cut(fields, "\n## ")
	row := regexp.MustCompile("(?m)^\\| `([^`]+)` \\|")
	var documented []string
	for _, m := range row.FindAllStringSubmatch(fields, -1) {
		documented = append(documented, m[1])
	}
	sort.Strings(documented)
	want := schemaPaths(t)
	for _, p := range want {
		if !slices.Contains(documented, p) {
			t.Errorf("docs/EVENTS.md does not document %s", p)
		}
	}
	for _, p := range documented {
		if !slices.Contains(want, p) {
			t.Errorf("docs/EVENTS.md documents %s, which the schema does not declare", p)
		}
	}
	if len(slices.Compact(slices.Clone(documented))) != len(documented) {
		t.Errorf("docs/EVENTS.md documents a field twice")
	}
}

func decode(t *testing.T, ctx *Context, ev *Event) map[string]any {
	t.Helper()
	b, err := Encode(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// get follows a dotted path ("event.kind") through decoded JSON.
func get(m map[string]any, path string) any {
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

// TestEventECSFields: the ECS fields carry what ECS means by them.
func TestEventECSFields(t *testing.T) {
	evs := sampleEvents()
	ctx := testContext("eth0")
	cases := []struct {
		ev   *Event
		want map[string]any
	}{
		{&evs[1], map[string]any{ // escalated, inbound, no rule
			"@timestamp": "2026-11-26T08:00:00.123456789Z", "ecs.version": ECSVersion, "message": "tcp/8080 answers 2 peers",
			"event.kind": "alert", "event.action": "escalated", "event.type": []any{"change"}, "event.category": []any{"network"},
			"event.severity": 73.0, "event.start": "2026-11-26T07:59:00.123456789Z", "event.end": "2026-11-26T08:00:00.123456789Z",
			"source.ip": "192.0.2.2", "destination.port": 8080.0, "destination.ip": nil, "network.transport": "tcp",
			"network.iana_number": "6", "network.direction": "ingress", "related.ip": []any{"192.0.2.2", "2001:db8::7"},
			"observer.hostname": "sensor-1", "observer.ingress.interface.name": "eth0", "observer.version": "v1.2.3",
			"rule": nil, "flowaudit.finding.id": "unexpected-open-port/tcp/8080", "flowaudit.finding.severity": "high",
			"flowaudit.finding.previous.severity": "medium", "flowaudit.finding.first_reported": "2026-11-26T07:00:00.123456789Z",
			"flowaudit.matrix.product": "labapp", "flowaudit.matrix.conditions": []any{"vpn"}, "flowaudit.interfaces": []any{"eth0"},
			"flowaudit.evidence.listening": true, "flowaudit.evidence.handshake.synack_out": 2.0,
		}},
		{&evs[2], map[string]any{ // a rule, folded peers: the prefix is evidence, not an IP
			"rule.id": "lab1.server.ssh", "rule.name": "administration", "rule.ruleset": "labapp@1 server",
			"rule.reference": "https://example.org/ports", "source.ip": "192.0.2.2", "related.ip": []any{"192.0.2.2"},
			"flowaudit.rule.requirement": "required", "flowaudit.rule.peer": "zone ADMIN_IP", "flowaudit.rule.source": "lab-catalog.yaml:40",
			"flowaudit.citation.quote": "SSH: 22/tcp", "flowaudit.citation.section": "4", "flowaudit.evidence.peers_estimated": true,
		}},
		{&evs[3], map[string]any{ // outbound: the peer is the destination
			"event.kind": "alert", "event.severity": 21.0, "source": nil, "destination.ip": "2001:db8::7", "destination.port": 53.0,
			"network.direction": "egress", "network.transport": "udp",
		}},
		{&evs[4], map[string]any{ // info, ICMPv6: no port, IANA transport name
			"event.kind": "event", "event.severity": 1.0, "network.transport": "ipv6-icmp", "network.iana_number": "58",
			"destination": nil, "flowaudit.finding.port": "type 128 code 0",
		}},
		{&evs[5], map[string]any{"flowaudit.evidence.window_seconds": 3600.0, "event.severity": 47.0}},
		{&evs[6], map[string]any{
			"flowaudit.evidence.flood.trigger": []any{"peers", "half-open-syns"}, "flowaudit.evidence.flood.span_seconds": 90.0,
			"flowaudit.evidence.flood.rate_per_second": 544.4, "flowaudit.evidence.peers_unknown": 15000.0,
		}},
		{&evs[7], map[string]any{"network.direction": "unknown", "flowaudit.evidence.interrupted.signal": "SIGTERM",
			"flowaudit.evidence.window_seconds": 20.0, "network.transport": nil}},
		{&evs[8], map[string]any{"event.kind": "alert", "event.type": []any{"change"}, "event.action": "de-escalated"}},
		{&evs[9], map[string]any{"event.kind": "event", "event.type": []any{"end"}, "event.action": "resolved",
			"flowaudit.finding.last_present": "2026-11-26T07:50:00.123456789Z", "destination": nil, "source.ip": "192.0.2.66"}},
	}
	for _, c := range cases {
		m := decode(t, ctx, c.ev)
		for path, want := range c.want {
			got := get(m, path)
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(want)
			if !bytes.Equal(gb, wb) {
				t.Errorf("%s %s: %s = %s, want %s", c.ev.Action, c.ev.Finding.ID, path, gb, wb)
			}
		}
	}
	// Several interfaces: no single ingress interface, the list names them.
	m := decode(t, testContext("eth0", "eth1"), &evs[0])
	if get(m, "observer.ingress") != nil || len(get(m, "flowaudit.interfaces").([]any)) != 2 {
		t.Errorf("two interfaces: observer %v, interfaces %v", m["observer"], get(m, "flowaudit.interfaces"))
	}
}

// TestEventIDs: one event, one ID; the same event delivered twice, the
// same ID.
func TestEventIDs(t *testing.T) {
	seen := map[string]string{}
	ctx := testContext("eth0")
	for _, ev := range sampleEvents() {
		id := get(decode(t, ctx, &ev), "event.id").(string)
		if again := get(decode(t, ctx, &ev), "event.id").(string); again != id {
			t.Errorf("%s: ID %s then %s", ev.Finding.ID, id, again)
		}
		key := ev.Action + " " + ev.Finding.ID
		if prev, ok := seen[id]; ok {
			t.Errorf("%s and %s share the ID %s", prev, key, id)
		}
		seen[id] = key
	}
	ev := sampleEvents()[0]
	ev.Time = ev.Time.Add(time.Minute)
	if get(decode(t, ctx, &ev), "event.id") == get(decode(t, ctx, &sampleEvents()[0]), "event.id") {
		t.Error("the same finding opened at another time has the same event ID")
	}
}
