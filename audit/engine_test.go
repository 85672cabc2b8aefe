package audit

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

var t0 = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)

// flow builds a snapshot flow: dir "in"/"out"/"?", proto, port, peer.
func flow(dir, proto string, port uint16, peer string, pin, pout uint64, ev snapshot.Evidence) snapshot.Flow {
	d := map[string]snapshot.Direction{"in": snapshot.Inbound, "out": snapshot.Outbound, "?": snapshot.Unknown}[dir]
	p, err := snapshot.ParseProto(proto)
	if err != nil {
		panic(err)
	}
	return snapshot.Flow{Interface: "eth0", Direction: d, Proto: p, Port: port, Peer: netip.MustParseAddr(peer),
		PacketsIn: pin, PacketsOut: pout, BytesIn: pin * 100, BytesOut: pout * 100,
		FirstSeen: t0.Add(time.Minute), LastSeen: t0.Add(2 * time.Minute), Evidence: ev}
}

func synAck(n uint64) snapshot.Evidence { return snapshot.Evidence{SynIn: n, SynAckOut: n} }

func snap(window time.Duration, flows ...snapshot.Flow) *snapshot.Snapshot {
	return &snapshot.Snapshot{Version: snapshot.FormatVersion, Source: "live", Start: t0, End: t0.Add(window),
		Interfaces: []snapshot.Interface{{Name: "eth0", Index: 2}}, Stats: snapshot.Stats{FlowCapacity: 65536, FlowEntries: uint32(len(flows))},
		Flows: flows}
}

// The healthy baseline of the server role: every required rule used by
// documented peers, with the answers client traffic produces.
func serverBaseline() []snapshot.Flow {
	return []snapshot.Flow{
		flow("in", "tcp", 22, "192.0.2.10", 40, 38, synAck(2)),
		flow("in", "tcp", 9000, "10.1.4.4", 120, 110, synAck(5)),
		flow("in", "tcp", 9000, "fd00:1::7", 12, 11, synAck(1)),
		flow("in", "udp", 514, "10.2.0.9", 500, 0, snapshot.Evidence{}),
		flow("in", "tcp", 40001, "10.3.0.5", 80, 70, synAck(1)),
		// The server checks for updates: replies come back to ephemeral ports,
		// the flow is the outbound 443 one.
		flow("out", "tcp", 443, "203.0.113.80", 30, 25, snapshot.Evidence{SynOut: 1, SynAckIn: 1}),
		// Neighbour discovery and an ICMP error: infrastructure, not audited.
		flow("?", "icmpv6", 135<<8, "fe80::1", 3, 3, snapshot.Evidence{}),
		flow("?", "icmp", 3<<8|3, "10.2.0.9", 0, 1, snapshot.Evidence{}),
	}
}

type want struct {
	kind Kind
	sev  Severity
	id   string // finding ID
}

type engineCase struct {
	name   string
	role   string
	conds  map[string]bool
	snap   *snapshot.Snapshot
	noSite bool
	// want lists every finding of severity ≥ low; info findings are
	// checked only if wantInfo is set.
	want     []want
	wantInfo []want
	check    func(t *testing.T, r *Report)
}

func loadTestMatrix(t *testing.T, role string, conds map[string]bool) (*catalog.Matrix, *catalog.Site) {
	t.Helper()
	c, err := catalog.LoadFiles("testdata/engine/testapp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, v, err := c.Resolve("testapp")
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.Effective(v, role, conds)
	if err != nil {
		t.Fatal(err)
	}
	site, err := catalog.LoadSite("testdata/engine/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return m, site
}

func engineCases() []engineCase {
	with := func(extra ...snapshot.Flow) *snapshot.Snapshot {
		return snap(10*time.Minute, append(serverBaseline(), extra...)...)
	}
	without := func(drop uint16) []snapshot.Flow {
		var out []snapshot.Flow
		for _, f := range serverBaseline() {
			if f.Port != drop {
				out = append(out, f)
			}
		}
		return out
	}
	var scan []snapshot.Flow
	for p := uint16(1000); p < 1020; p++ {
		scan = append(scan, flow("in", "tcp", p, "198.51.100.66", 1, 1, snapshot.Evidence{SynIn: 1, RstOut: 1}))
	}
	scan = append(scan, flow("in", "tcp", 22, "198.51.100.66", 1, 0, snapshot.Evidence{SynIn: 1}))
	scan = append(scan, flow("in", "tcp", 9000, "198.51.100.66", 1, 0, snapshot.Evidence{SynIn: 1}))
	lossy := with()
	lossy.Stats.FlowInsertFailed, lossy.Stats.OverflowInsertFailed = 7, 7

	return []engineCase{
		{name: "clean baseline: no findings", role: "server", snap: with(),
			// The update check matches an optional rule whose DNS peer the site does not bind.
			wantInfo: []want{{OptionalInUse, Info, "optional-in-use/t1.server.updates"}},
			check: func(t *testing.T, r *Report) {
				if r.Infrastructure.Packets != 7 {
					t.Errorf("infrastructure packets = %d, want 7", r.Infrastructure.Packets)
				}
				st := ruleStatusByID(r)
				if st["t1.server.ssh"] != StatusSeen || st["t1.server.agent"] != StatusSeen || st["t1.server.updates"] != StatusUnverified ||
					st["t1.server.web"] != StatusNotSeen {
					t.Errorf("rule statuses: %v", st)
				}
			}},
		{name: "undocumented port answering: unexpected-open-port", role: "server",
			snap: with(flow("in", "tcp", 6379, "10.1.4.4", 6, 5, synAck(1))),
			want: []want{{UnexpectedOpenPort, High, "unexpected-open-port/tcp/6379"}}},
		{name: "undocumented udp port answering", role: "server",
			snap: with(flow("in", "udp", 161, "10.2.0.9", 4, 4, snapshot.Evidence{})),
			want: []want{{UnexpectedOpenPort, High, "unexpected-open-port/udp/161"}}},
		{name: "undocumented listener without traffic; loopback listener ignored", role: "server",
			snap: func() *snapshot.Snapshot {
				s := with()
				s.Listening = []snapshot.Socket{
					{Proto: snapshot.TCP, Addr: netip.MustParseAddr("0.0.0.0"), Port: 22},
					{Proto: snapshot.TCP, Addr: netip.MustParseAddr("::"), Port: 8080},
					{Proto: snapshot.TCP, Addr: netip.MustParseAddr("127.0.0.1"), Port: 631},
				}
				return s
			}(),
			want: []want{{UnexpectedOpenPort, Medium, "unexpected-open-port/tcp/8080"}}},
		{name: "listener that also answered: one high finding, marked listening", role: "server",
			snap: func() *snapshot.Snapshot {
				s := with(flow("in", "tcp", 6379, "10.1.4.4", 6, 5, synAck(1)))
				s.Listening = []snapshot.Socket{{Proto: snapshot.TCP, Addr: netip.MustParseAddr("0.0.0.0"), Port: 6379}}
				return s
			}(),
			want: []want{{UnexpectedOpenPort, High, "unexpected-open-port/tcp/6379"}},
			check: func(t *testing.T, r *Report) {
				if !r.Findings[0].Evidence.Listening {
					t.Error("finding not marked listening")
				}
			}},
		{name: "one-way udp to an undocumented listener: open, high", role: "server",
			snap: func() *snapshot.Snapshot {
				s := with(flow("in", "udp", 2055, "10.2.0.9", 3, 0, snapshot.Evidence{}))
				s.Listening = []snapshot.Socket{{Proto: snapshot.UDP, Addr: netip.MustParseAddr("0.0.0.0"), Port: 2055}}
				return s
			}(),
			want: []want{{UnexpectedOpenPort, High, "unexpected-open-port/udp/2055"}},
			check: func(t *testing.T, r *Report) {
				if f := r.Findings[0]; !f.Evidence.Listening || f.Evidence.Packets != 3 {
					t.Errorf("finding %+v", f)
				}
			}},
		{name: "undocumented outbound flow", role: "server",
			snap: with(flow("out", "udp", 53, "8.8.8.8", 10, 10, snapshot.Evidence{})),
			want: []want{{UndocumentedFlow, Medium, "undocumented-flow/outbound/udp/53"}}},
		{name: "refused attempt on an undocumented port: low", role: "server",
			snap: with(flow("in", "tcp", 23, "10.1.4.4", 1, 1, snapshot.Evidence{SynIn: 1, RstOut: 1})),
			want: []want{{UndocumentedFlow, Low, "undocumented-flow/inbound/tcp/23"}}},
		{name: "ping answered: low", role: "server",
			snap: with(flow("in", "icmp", 8<<8, "10.1.4.4", 3, 3, snapshot.Evidence{})),
			want: []want{{UndocumentedFlow, Low, "undocumented-flow/inbound/icmp/2048"}}},
		{name: "undocumented GRE", role: "server",
			snap: with(flow("?", "gre", 0, "10.3.0.1", 100, 100, snapshot.Evidence{})),
			want: []want{{UndocumentedFlow, Medium, "undocumented-flow/unknown/gre/0"}}},
		{name: "ssh from outside ADMIN_IP: peer-out-of-zone", role: "server",
			snap: with(flow("in", "tcp", 22, "10.1.4.4", 9, 8, synAck(1))),
			want: []want{{PeerOutOfZone, High, "peer-out-of-zone/t1.server.ssh/tcp/22"}},
			check: func(t *testing.T, r *Report) {
				f := r.Findings[0]
				if f.Rule == nil || f.Rule.ID != "t1.server.ssh" || f.Evidence.Peers != 1 || f.Evidence.TopPeers[0].Addr.String() != "10.1.4.4" {
					t.Errorf("finding %+v", f)
				}
				if st := ruleStatusByID(r)["t1.server.ssh"]; st != StatusSeen {
					t.Errorf("ssh status %s: documented admin traffic exists", st)
				}
			}},
		{name: "required rule without traffic: missing-required states the window", role: "server",
			snap: snap(10*time.Minute, without(9000)...),
			want: []want{{MissingRequired, Medium, "missing-required/t1.server.agent"}},
			check: func(t *testing.T, r *Report) {
				if !strings.Contains(r.Findings[0].Summary, "10m0s") {
					t.Errorf("summary does not state the window: %s", r.Findings[0].Summary)
				}
			}},
		{name: "required port refused: required-port-closed", role: "server",
			snap: snap(10*time.Minute, append(without(9000), flow("in", "tcp", 9000, "10.1.4.4", 3, 3, snapshot.Evidence{SynIn: 3, RstOut: 3}))...),
			want: []want{{RequiredPortClosed, High, "required-port-closed/t1.server.agent"}},
			check: func(t *testing.T, r *Report) {
				for _, rs := range r.Rules {
					if rs.Rule.ID == "t1.server.agent" && (rs.Status != StatusClosed || !failingStatus(rs)) {
						t.Errorf("required closed port: status %s, failing %v", rs.Status, failingStatus(rs))
					}
				}
			}},
		{name: "required port silent: required-port-filtered", role: "server",
			snap: snap(10*time.Minute, append(without(9000), flow("in", "tcp", 9000, "10.1.4.4", 3, 0, snapshot.Evidence{SynIn: 3}))...),
			want: []want{{RequiredPortFiltered, High, "required-port-filtered/t1.server.agent"}}},
		{name: "required udp port answered with port unreachable: closed", role: "server",
			snap: snap(10*time.Minute, append(without(514), flow("in", "udp", 514, "10.2.0.9", 5, 0, snapshot.Evidence{ICMPClosedOut: 5}))...),
			want: []want{{RequiredPortClosed, High, "required-port-closed/t1.server.syslog"}}},
		{name: "one-way udp syslog is not 'filtered'", role: "server", snap: with(), want: nil},
		{name: "required port open for some peers, refused for others: fine", role: "server",
			snap: with(flow("in", "tcp", 9000, "10.1.9.9", 1, 1, snapshot.Evidence{SynIn: 1, RstOut: 1})), want: nil},
		{name: "deprecated port in use (sensor, release 1.5)", role: "sensor",
			snap: snap(10*time.Minute,
				flow("in", "tcp", 22, "192.0.2.10", 5, 5, synAck(1)),
				flow("in", "udp", 514, "10.2.0.9", 5, 0, snapshot.Evidence{}),
				flow("out", "tcp", 40001, "10.9.0.1", 50, 50, snapshot.Evidence{SynOut: 1, SynAckIn: 1}),
				flow("in", "tcp", 9391, "10.9.0.1", 10, 10, synAck(1))),
			want: []want{{DeprecatedPort, Medium, "deprecated-port/t1.sensor.scanner"}}},
		{name: "scanner reported once, its probes not one by one", role: "server",
			snap: with(scan...),
			want: []want{{ScanSuspected, Medium, "scan-suspected/198.51.100.66"}},
			check: func(t *testing.T, r *Report) {
				ports := r.Findings[0].Evidence.Ports
				if n := len(ports); n != 22 {
					t.Errorf("scan lists %d ports, want 22", n)
				}
				// Numerically: tcp/22 before tcp/1000, tcp/9000 last.
				if len(ports) == 22 && (ports[0] != "tcp/22" || ports[1] != "tcp/1000" || ports[20] != "tcp/1019" || ports[21] != "tcp/9000") {
					t.Errorf("scan ports not in numeric order: %v", ports)
				}
				if got := PortRanges(ports); got != "tcp/22, tcp/1000-1019, tcp/9000" {
					t.Errorf("port ranges %q", got)
				}
			}},
		{name: "optional port refused (RST): closed, not in use", role: "server",
			snap:     with(flow("in", "tcp", 443, "192.0.2.10", 2, 2, snapshot.Evidence{SynIn: 2, RstOut: 2})),
			want:     nil,
			wantInfo: []want{{OptionalInUse, Info, "optional-in-use/t1.server.updates"}},
			check: func(t *testing.T, r *Report) {
				if st := ruleStatusByID(r)["t1.server.web"]; st != StatusClosed {
					t.Errorf("web status %s, want closed", st)
				}
				for _, rs := range r.Rules {
					if rs.Rule.ID == "t1.server.web" && failingStatus(rs) {
						t.Error("an optional port nobody could reach is shown as a problem")
					}
				}
			}},
		{name: "optional port silent (filtered): not in use", role: "server",
			snap:     with(flow("in", "tcp", 443, "192.0.2.10", 3, 0, snapshot.Evidence{SynIn: 3})),
			want:     nil,
			wantInfo: []want{{OptionalInUse, Info, "optional-in-use/t1.server.updates"}}},
		{name: "optional port refused for its zone, answered outside it: not in use", role: "server",
			snap: with(flow("in", "tcp", 443, "192.0.2.10", 2, 2, snapshot.Evidence{SynIn: 2, RstOut: 2}),
				flow("in", "tcp", 443, "10.1.4.4", 9, 9, synAck(1))),
			want:     []want{{PeerOutOfZone, High, "peer-out-of-zone/t1.server.web/tcp/443"}},
			wantInfo: []want{{OptionalInUse, Info, "optional-in-use/t1.server.updates"}}},
		{name: "conditional port refused: closed, not in use", role: "sensor", conds: map[string]bool{"vpn": true},
			snap: snap(10*time.Minute,
				flow("in", "tcp", 22, "192.0.2.10", 5, 5, synAck(1)),
				flow("in", "udp", 514, "10.2.0.9", 5, 0, snapshot.Evidence{}),
				flow("out", "tcp", 33800, "10.9.0.1", 3, 3, snapshot.Evidence{SynOut: 3, RstIn: 3})),
			want:     []want{{RequiredPortClosed, High, "required-port-closed/t1.sensor.vpn"}},
			wantInfo: []want{}},
		{name: "flow and overflow map full: audit-incomplete high", role: "server", snap: lossy,
			want: []want{{AuditIncomplete, High, "audit-incomplete/not-counted"}}},
		{name: "short window", role: "server", snap: snap(20*time.Second, serverBaseline()...),
			want: []want{{AuditIncomplete, Medium, "audit-incomplete/short-window"}}},
		{name: "vpn mode: tunnel in use is informational, plain ports not required", role: "sensor", conds: map[string]bool{"vpn": true},
			snap: snap(10*time.Minute,
				flow("in", "tcp", 22, "192.0.2.10", 5, 5, synAck(1)),
				flow("in", "udp", 514, "10.2.0.9", 5, 0, snapshot.Evidence{}),
				flow("out", "tcp", 33800, "10.9.0.1", 500, 400, snapshot.Evidence{SynOut: 1, SynAckIn: 1})),
			want:     nil,
			wantInfo: []want{{OptionalInUse, Info, "optional-in-use/t1.sensor.vpn"}}},
		{name: "vpn off: sensor without events to the server is missing them", role: "sensor",
			snap: snap(10*time.Minute,
				flow("in", "tcp", 22, "192.0.2.10", 5, 5, synAck(1)),
				flow("in", "udp", 514, "10.2.0.9", 5, 0, snapshot.Evidence{})),
			want: []want{{MissingRequired, Medium, "missing-required/t1.sensor.events"}}},
		{name: "all-in-one: sensor-server traffic is internal, not required", role: "aio",
			snap: snap(10*time.Minute,
				flow("in", "tcp", 22, "192.0.2.10", 5, 5, synAck(1)),
				flow("in", "tcp", 9000, "10.1.4.4", 5, 5, synAck(1)),
				flow("in", "udp", 514, "10.2.0.9", 5, 0, snapshot.Evidence{}),
				flow("?", "gre", 0, "10.3.0.1", 10, 10, snapshot.Evidence{})),
			want:     nil,
			wantInfo: []want{{OptionalInUse, Info, "optional-in-use/t1.sensor.wccp"}}},
		{name: "replies and ephemeral ports never become findings", role: "server",
			snap: with(
				// Outbound HTTPS with many ephemeral source ports folds into one flow per peer.
				flow("out", "tcp", 443, "203.0.113.81", 300, 280, snapshot.Evidence{SynOut: 20, SynAckIn: 20}),
				// A mid-stream connection whose direction the heuristic inferred.
				func() snapshot.Flow {
					f := flow("in", "tcp", 9000, "10.1.4.5", 30, 30, snapshot.Evidence{})
					f.DirectionInferred = true
					return f
				}()),
			want: nil,
			check: func(t *testing.T, r *Report) {
				for _, row := range r.Observed {
					if !row.Documented {
						t.Errorf("undocumented row %+v", row)
					}
				}
			}},
		{name: "without a site: peers unverified, no out-of-zone", role: "server", noSite: true,
			snap: with(flow("in", "tcp", 22, "10.1.4.4", 9, 8, synAck(1))), want: nil,
			check: func(t *testing.T, r *Report) {
				if st := ruleStatusByID(r)["t1.server.ssh"]; st != StatusUnverified {
					t.Errorf("ssh status %s, want unverified", st)
				}
			}},
		{name: "fragments are counted, not audited", role: "server",
			snap: with(func() snapshot.Flow {
				f := flow("?", "udp", 0, "10.2.0.9", 4, 0, snapshot.Evidence{})
				f.Fragment = true
				return f
			}()), want: nil,
			check: func(t *testing.T, r *Report) {
				if r.Unclassified.Packets != 4 {
					t.Errorf("unclassified = %d", r.Unclassified.Packets)
				}
			}},
	}
}

func ruleStatusByID(r *Report) map[string]string {
	m := map[string]string{}
	for _, rs := range r.Rules {
		m[rs.Rule.ID] = rs.Status
	}
	return m
}

func TestEngine(t *testing.T) {
	for _, tc := range engineCases() {
		t.Run(tc.name, func(t *testing.T) {
			m, site := loadTestMatrix(t, tc.role, tc.conds)
			if tc.noSite {
				site = nil
			}
			if err := tc.snap.Validate(); err != nil {
				t.Fatal(err)
			}
			r, err := Run(tc.snap, Options{Matrix: m, Site: site, Now: func() time.Time { return t0 }})
			if err != nil {
				t.Fatal(err)
			}
			var got, gotInfo []string
			for _, f := range r.Findings {
				s := fmt.Sprintf("%s %s %s", f.Kind, f.Severity, f.ID)
				if f.Severity >= Low {
					got = append(got, s)
				} else {
					gotInfo = append(gotInfo, s)
				}
				if f.Summary == "" {
					t.Errorf("finding %s has no summary", f.ID)
				}
			}
			if d := diffStrings(got, wantStrings(tc.want)); d != "" {
				t.Errorf("findings ≥ low differ:\n%s", d)
			}
			if tc.wantInfo != nil {
				if d := diffStrings(gotInfo, wantStrings(tc.wantInfo)); d != "" {
					t.Errorf("info findings differ:\n%s", d)
				}
			}
			if tc.check != nil {
				tc.check(t, r)
			}
			for _, f := range r.Findings {
				t.Logf("%s %s: %s", f.Severity, f.ID, f.Summary)
			}
		})
	}
}

func wantStrings(ws []want) []string {
	var out []string
	for _, w := range ws {
		out = append(out, fmt.Sprintf("%s %s %s", w.kind, w.sev, w.id))
	}
	return out
}

func diffStrings(got, want []string) string {
	sort.Strings(got)
	sort.Strings(want)
	g, w := map[string]bool{}, map[string]bool{}
	for _, s := range got {
		g[s] = true
	}
	for _, s := range want {
		w[s] = true
	}
	var lines []string
	for _, s := range want {
		if !g[s] {
			lines = append(lines, "- "+s)
		}
	}
	for _, s := range got {
		if !w[s] {
			lines = append(lines, "+ "+s)
		}
	}
	return strings.Join(lines, "\n")
}

func TestRunNeedsMatrix(t *testing.T) {
	if _, err := Run(snap(time.Minute), Options{}); err != ErrNoMatrix {
		t.Fatalf("err = %v", err)
	}
}

func TestAtLeast(t *testing.T) {
	r := &Report{Findings: []Finding{{Severity: High}, {Severity: Low}, {Severity: Info}}}
	for s, n := range map[Severity]int{Info: 3, Low: 2, Medium: 1, High: 1} {
		if got := r.AtLeast(s); got != n {
			t.Errorf("AtLeast(%s) = %d, want %d", s, got, n)
		}
	}
}

func TestPortRanges(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{"tcp/7"}, "tcp/7"},
		{[]string{"tcp/1", "tcp/2", "tcp/3", "tcp/5", "tcp/10", "tcp/11", "udp/11", "udp/12", "udp/14"}, "tcp/1-3, tcp/5, tcp/10-11, udp/11-12, udp/14"},
		{[]string{"tcp/65534", "tcp/65535", "icmp/type 8 code 0", "sctp/2"}, "tcp/65534-65535, icmp/type 8 code 0, sctp/2"},
	} {
		if got := PortRanges(tc.in); got != tc.want {
			t.Errorf("PortRanges(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// utmstackManager is the built-in UTMStack v11 manager matrix with the
// netflow condition, and a site parsed from text.
func utmstackManager(t *testing.T, site string) (*catalog.Matrix, *catalog.Site) {
	t.Helper()
	cat, err := catalog.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	return matrixAndSite(t, cat, "utmstack@11", "manager", map[string]bool{"netflow": true}, site)
}

// matrixAndSite resolves a role's matrix in cat and parses a site from
// text (none when site is empty).
func matrixAndSite(t *testing.T, cat *catalog.Catalog, product, role string, conds map[string]bool, site string) (*catalog.Matrix, *catalog.Site) {
	t.Helper()
	p, v, err := cat.Resolve(product)
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.Effective(v, role, conds)
	if err != nil {
		t.Fatal(err)
	}
	if site == "" {
		return m, nil
	}
	s, err := catalog.ParseSite("site.yaml", []byte(site))
	if err != nil {
		t.Fatal(err)
	}
	return m, s
}

// TestSharedPortInUseOnce: UTMStack v11 documents syslog twice per
// protocol (from SOURCE_NETWORK and from NETWORK_DEVICES). When the site
// puts both zones on the same prefix, as the demo does, one device's
// syslog is one in-use finding (under the rule listed first) naming both rules, not two identical rows;
// rules of one port used by different peers keep a finding each.
func TestSharedPortInUseOnce(t *testing.T) {
	m, site := utmstackManager(t, `product: utmstack
zones:
  ADMIN_IP: 192.0.2.20/32
  SOC_NETWORK: 192.0.2.16/28
  ANALYST_NETWORK: 198.51.100.0/24
  AGENT_NETWORK: 192.0.2.32/28
  SOURCE_NETWORK: 192.0.2.48/28
  NETWORK_DEVICES: 192.0.2.48/28
`)
	s := snap(10*time.Minute,
		flow("in", "tcp", 514, "192.0.2.50", 9, 6, synAck(3)),
		flow("in", "udp", 514, "192.0.2.50", 3, 0, snapshot.Evidence{}),
		flow("in", "tcp", 80, "192.0.2.17", 4, 4, synAck(1)),
		flow("in", "tcp", 80, "198.51.100.7", 6, 6, synAck(1)))
	r, err := Run(s, Options{Matrix: m, Site: site, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	inUse := map[string]Finding{}
	for _, f := range r.Findings {
		if f.Kind == OptionalInUse {
			inUse[f.Proto+"/"+f.Port+" "+f.Rule.ID] = f
		}
	}
	var keys []string
	for k := range inUse {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := []string{
		"tcp/514 utmstack11.manager.syslog-tcp-firewalls",
		"tcp/80 utmstack11.manager.http-redirect",
		"tcp/80 utmstack11.manager.http-redirect-soc",
		"udp/514 utmstack11.manager.syslog-udp-devices",
	}
	if strings.Join(keys, "\n") != strings.Join(want, "\n") {
		t.Fatalf("in-use findings:\n%s\nwant:\n%s", strings.Join(keys, "\n"), strings.Join(want, "\n"))
	}
	for k, also := range map[string]string{
		"tcp/514 utmstack11.manager.syslog-tcp-firewalls": "utmstack11.manager.syslog-tcp",
		"udp/514 utmstack11.manager.syslog-udp-devices":   "utmstack11.manager.syslog-udp",
	} {
		f := inUse[k]
		if len(f.AlsoRules) != 1 || f.AlsoRules[0] != also || !strings.Contains(f.Summary, also) {
			t.Errorf("%s: also %v, summary %q: want %s named", k, f.AlsoRules, f.Summary, also)
		}
		// Both rules link to the one finding.
		for _, rs := range r.Rules {
			if rs.Rule.ID == also && (len(rs.Findings) != 1 || rs.Findings[0] != f.ID) {
				t.Errorf("rule %s links %v, want %s", also, rs.Findings, f.ID)
			}
		}
	}
	for _, k := range want[1:3] {
		if f := inUse[k]; len(f.AlsoRules) != 0 || f.Evidence.Peers != 1 {
			t.Errorf("%s: different peers must stay apart: %+v", k, f)
		}
	}
	var table bytes.Buffer
	if err := WriteTable(&table, r, false); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(table.String(), "\n") {
		if strings.Contains(l, "optional-in-use") && strings.Contains(l, " tcp/514 ") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("tcp/514 in use listed %d times:\n%s", n, table.String())
	}
	// The other formats name the second rule with the finding.
	for format, want := range map[string]string{
		"html":  `the same traffic falls under</small> <a href="#rule-`,
		"junit": "rule: utmstack11.manager.syslog-udp-devices (the same traffic falls under utmstack11.manager.syslog-udp)",
		"sarif": `"alsoMatrixRules": [`,
		"json":  `"also_rules": [`,
	} {
		var b bytes.Buffer
		if err := Write(&b, r, format, RenderOptions{}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), want) {
			t.Errorf("%s lacks %q", format, want)
		}
	}
}

func broadMatrix(t *testing.T, site string) (*catalog.Matrix, *catalog.Site) {
	t.Helper()
	c, err := catalog.LoadFiles("testdata/engine/broad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return matrixAndSite(t, c, "broadapp", "server", nil, site)
}

func findingIDs(r *Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, fmt.Sprintf("%s %s", f.Severity, f.ID))
	}
	sort.Strings(out)
	return out
}

// TestBroadRangeUnverified: traffic that only a broad documented range
// covers, toward a peer nothing binds, is not silently "in use": it is an
// unverified-flow at medium. A narrow rule of an unbound peer still makes
// traffic optional-in-use; a bound rule the peer is outside of makes it out
// of zone; a bound peer in the range makes it in use.
func TestBroadRangeUnverified(t *testing.T) {
	out := snapshot.Evidence{SynOut: 1, SynAckIn: 1}
	flows := func(extra ...snapshot.Flow) *snapshot.Snapshot {
		base := []snapshot.Flow{flow("out", "tcp", 5432, "10.5.0.7", 20, 20, out)}
		return snap(10*time.Minute, append(base, extra...)...)
	}
	folded := flow("out", "tcp", 8443, "198.51.100.1", 30, 30, out)
	folded.Peer, folded.PeerPrefix, folded.Peers = netip.Addr{}, netip.MustParsePrefix("198.51.100.0/24"), 12
	var scan []snapshot.Flow
	for p := uint16(2000); p < 2020; p++ {
		scan = append(scan, flow("in", "tcp", p, "203.0.113.66", 1, 1, snapshot.Evidence{SynIn: 1, RstOut: 1}))
	}
	const dbSite = "zones:\n  DB_NET: 10.5.0.0/24\n"
	for _, tc := range []struct {
		name string
		site string
		snap *snapshot.Snapshot
		want []string
		// status of b1.server.rpc-high; summary the unverified finding must contain
		status, summary string
	}{
		{"no site: an arbitrary outbound high port", "", flows(flow("out", "tcp", 4444, "203.0.113.9", 12, 10, out)),
			[]string{"medium unverified-flow/outbound/tcp/4444"}, StatusUnverified, "no site binds role hids-host"},
		{"site without the role", dbSite, flows(flow("out", "tcp", 4444, "203.0.113.9", 12, 10, out)),
			[]string{"medium unverified-flow/outbound/tcp/4444"}, StatusUnverified, "the site does not bind role hids-host"},
		{"site binds the role, peer in it: in use", dbSite + "roles:\n  hids-host: 203.0.113.9\n",
			flows(flow("out", "tcp", 4444, "203.0.113.9", 12, 10, out)),
			[]string{"info optional-in-use/b1.server.rpc-high"}, StatusSeen, ""},
		{"site binds the role, peer outside it: out of zone", dbSite + "roles:\n  hids-host: 203.0.113.10\n",
			flows(flow("out", "tcp", 4444, "203.0.113.9", 12, 10, out)),
			[]string{"medium peer-out-of-zone/b1.server.rpc-high/tcp/4444"}, StatusOutOfZone, ""},
		{"a bound narrow rule on the port wins over the broad one: out of zone", dbSite,
			flows(flow("out", "tcp", 5432, "203.0.113.9", 12, 10, out)),
			[]string{"medium peer-out-of-zone/b1.server.db/tcp/5432"}, StatusNotSeen, ""},
		{"a narrow range of the unbound role: in use, unverified", dbSite,
			flows(flow("in", "tcp", 7001, "203.0.113.9", 12, 10, synAck(1))),
			[]string{"info optional-in-use/b1.server.agent-range"}, StatusNotSeen, ""},
		{"a folded prefix on a broad range", dbSite, flows(folded),
			[]string{"low audit-incomplete/folded", "medium unverified-flow/outbound/tcp/8443"}, StatusUnverified, "~12 peers"},
		{"probes across a broad inbound range are a scan, reported once", dbSite, flows(scan...),
			[]string{"medium scan-suspected/203.0.113.66"}, StatusNotSeen, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, site := broadMatrix(t, tc.site)
			if err := tc.snap.Validate(); err != nil {
				t.Fatal(err)
			}
			r, err := Run(tc.snap, Options{Matrix: m, Site: site, Now: func() time.Time { return t0 }})
			if err != nil {
				t.Fatal(err)
			}
			if d := diffStrings(findingIDs(r), tc.want); d != "" {
				t.Errorf("findings differ:\n%s", d)
			}
			if st := ruleStatusByID(r)["b1.server.rpc-high"]; st != tc.status {
				t.Errorf("rpc-high status %s, want %s", st, tc.status)
			}
			for _, f := range r.Findings {
				if f.Kind != UnverifiedFlow {
					continue
				}
				if f.Rule == nil || f.Rule.ID != "b1.server.rpc-high" || !strings.Contains(f.Summary, tc.summary) ||
					!strings.Contains(f.Summary, "broad range tcp/1024-65535") {
					t.Errorf("unverified finding: rule %v, summary %q", f.Rule, f.Summary)
				}
				if len(r.Rules) > 0 && !slices.Contains(ruleFindings(r, "b1.server.rpc-high"), f.ID) {
					t.Errorf("rule rpc-high does not link %s", f.ID)
				}
			}
		})
	}
}

func ruleFindings(r *Report, id string) []string {
	for _, rs := range r.Rules {
		if rs.Rule.ID == id {
			return rs.Findings
		}
	}
	return nil
}

// TestUSMSensorHighPortsWithoutSite is issue 12's case: USM's sensor
// documents "high TCP ports (1024 or above)" toward HIDS hosts; without a
// site, an outbound tcp/4444 to an arbitrary host was "optional-in-use".
func TestUSMSensorHighPortsWithoutSite(t *testing.T) {
	cat, err := catalog.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	p, v, err := cat.Resolve("usm@5.6.5")
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.Effective(v, "sensor", nil)
	if err != nil {
		t.Fatal(err)
	}
	s := snap(10*time.Minute, flow("out", "tcp", 4444, "203.0.113.200", 40, 35, snapshot.Evidence{SynOut: 1, SynAckIn: 1}))
	r, err := Run(s, Options{Matrix: m, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	var got *Finding
	for i, f := range r.Findings {
		if f.Port == "4444" || strings.Contains(f.Summary, "4444") {
			if got != nil {
				t.Errorf("tcp/4444 reported twice: %s and %s", got.ID, f.ID)
			}
			got = &r.Findings[i]
		}
	}
	if got == nil || got.Kind != UnverifiedFlow || got.Severity < Medium {
		t.Fatalf("tcp/4444 to an arbitrary host: %+v, want an unverified-flow of medium severity", got)
	}
	if r.AtLeast(Low) == 0 {
		t.Error("the default --fail-on low would pass this audit")
	}
}

// TestClassifyBroad: the rule generator's classification agrees with the
// audit on broad ranges: a bound narrow rule's outsider is out of zone,
// not unverified through the broad range; a narrow unbound rule, not the
// broad one, is the rule a flow falls under.
func TestClassifyBroad(t *testing.T) {
	m, site := broadMatrix(t, "zones:\n  DB_NET: 10.5.0.0/24\n")
	out := snapshot.Evidence{SynOut: 1, SynAckIn: 1}
	s := snap(10*time.Minute,
		flow("out", "tcp", 5432, "203.0.113.9", 1, 1, out),
		flow("in", "tcp", 7001, "203.0.113.9", 1, 1, synAck(1)),
		flow("out", "tcp", 4444, "203.0.113.9", 1, 1, out))
	got := Classify(s, m, site)
	want := []struct {
		kind FlowKind
		rule string
	}{{FlowOutOfZone, "b1.server.db"}, {FlowUnverified, "b1.server.agent-range"}, {FlowUnverified, "b1.server.rpc-high"}}
	for i, w := range want {
		if got[i].Kind != w.kind || len(got[i].Rules) != 1 || got[i].Rules[0].ID != w.rule {
			var ids []string
			for _, r := range got[i].Rules {
				ids = append(ids, r.ID)
			}
			t.Errorf("flow %d: %s %v, want %s [%s]", i, got[i].Kind, ids, w.kind, w.rule)
		}
	}
}

// TestMatrixSeparatesOutOfZone: the documented-matrix table counts the
// peers a rule allows apart from those outside its zone (SSH from one
// admin and two outsiders: 1 peer allowed, 2 out of zone, not "3 seen").
func TestMatrixSeparatesOutOfZone(t *testing.T) {
	m, site := loadTestMatrix(t, "server", nil)
	s := snap(10*time.Minute, append(serverBaseline(),
		flow("in", "tcp", 22, "10.1.4.4", 9, 8, synAck(1)),
		flow("in", "tcp", 22, "10.1.4.5", 5, 4, synAck(1)))...)
	r, err := Run(s, Options{Matrix: m, Site: site, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	var ssh RuleStatus
	for _, rs := range r.Rules {
		if rs.Rule.ID == "t1.server.ssh" {
			ssh = rs
		}
	}
	if ssh.Status != StatusSeen || ssh.Allowed.Peers != 1 || ssh.Allowed.Packets != 78 ||
		ssh.OutOfZone == nil || ssh.OutOfZone.Peers != 2 || ssh.OutOfZone.Packets != 26 || ssh.OutOfZonePeers != 2 {
		t.Fatalf("ssh: status %s, allowed %d peers %d packets, out of zone %+v", ssh.Status, ssh.Allowed.Peers, ssh.Allowed.Packets, ssh.OutOfZone)
	}
	if ssh.Evidence.Peers != 3 {
		t.Errorf("all traffic: %d peers, want 3", ssh.Evidence.Peers)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, r, false); err != nil {
		t.Fatal(err)
	}
	var row string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "t1.server.ssh ") {
			row = l
		}
	}
	if f := strings.Fields(row); len(f) < 11 || f[6] != "seen" || f[7] != "1" || f[8] != "78" || !strings.Contains(row, "2 peers, 26 packets") {
		t.Errorf("ssh row %q: want seen, 1 peer, 78 packets, and 2 peers, 26 packets out of zone", row)
	}
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "t1.server.agent ") && !strings.HasSuffix(strings.TrimSpace(l), " -") {
			t.Errorf("agent row without outsiders: %q", l)
		}
	}
	var h bytes.Buffer
	if err := WriteHTML(&h, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(h.String(), `<td class="num bad">2 peers<br><small>26 pkts</small></td>`) {
		t.Error("HTML matrix lacks the out-of-zone cell of ssh")
	}
}
