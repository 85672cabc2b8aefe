package metrics

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

func testMatrix() *catalog.Matrix {
	return &catalog.Matrix{Product: "labapp", Version: "1", Role: "server", Rules: []catalog.Rule{
		{ID: "ssh", Direction: snapshot.Inbound, Protos: []snapshot.Proto{snapshot.TCP}, Ports: []catalog.PortRange{{Lo: 22, Hi: 22}}},
		{ID: "https", Direction: snapshot.Inbound, Protos: []snapshot.Proto{snapshot.TCP}, Ports: []catalog.PortRange{{Lo: 8443, Hi: 8443}}},
		{ID: "syslog", Direction: snapshot.Inbound, Protos: []snapshot.Proto{snapshot.TCP, snapshot.UDP}, Ports: []catalog.PortRange{{Lo: 514, Hi: 514}}},
		{ID: "agents", Direction: snapshot.Inbound, Protos: []snapshot.Proto{snapshot.TCP}, Ports: []catalog.PortRange{{Lo: 9000, Hi: 9100}}},
		{ID: "agent-ctl", Direction: snapshot.Inbound, Protos: []snapshot.Proto{snapshot.TCP}, Ports: []catalog.PortRange{{Lo: 9050, Hi: 9050}}},
		{ID: "wide", Direction: snapshot.Inbound, Protos: []snapshot.Proto{snapshot.SCTP}, Ports: []catalog.PortRange{{Lo: 0, Hi: 65535}}},
		{ID: "dns", Direction: snapshot.Outbound, Protos: []snapshot.Proto{snapshot.UDP}, Ports: []catalog.PortRange{{Lo: 53, Hi: 53}}},
		{ID: "ping", Direction: snapshot.Inbound, Protos: []snapshot.Proto{snapshot.ICMP}},
	}}
}

func testSite(t testing.TB) *catalog.Site {
	s, err := catalog.ParseSite("site.yaml", []byte(`zones:
  ADMIN_IP: 192.0.2.100/32
  CLIENTS: [192.0.2.0/24, 2001:db8::/64]
roles:
  agent: 10.0.0.0/8
`))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var (
	admin  = netip.MustParseAddr("192.0.2.100")
	client = netip.MustParseAddr("192.0.2.7")
	agent  = netip.MustParseAddr("10.1.2.3")
	far    = netip.MustParseAddr("198.51.100.9")
)

// answered is traffic with a SYN-ACK back; probe a SYN without answer.
func answered(dir snapshot.Direction, p snapshot.Proto, port uint16, peer netip.Addr) *Traffic {
	return &Traffic{Direction: dir, Proto: p, Port: port, Peer: peer, PacketsIn: 3, BytesIn: 200, PacketsOut: 2, BytesOut: 120,
		Evidence: snapshot.Evidence{SynIn: 1, SynAckOut: 1}}
}

func probe(p snapshot.Proto, port uint16, peer netip.Addr) *Traffic {
	return &Traffic{Direction: snapshot.Inbound, Proto: p, Port: port, Peer: peer, PacketsIn: 1, BytesIn: 60, Evidence: snapshot.Evidence{SynIn: 1}}
}

func TestLabels(t *testing.T) {
	l := newLabeler(testMatrix(), testSite(t), 2)
	refused := probe(snapshot.TCP, 6000, far)
	refused.PacketsOut, refused.Evidence.RstOut = 1, 1
	frag := &Traffic{Direction: snapshot.Unknown, Proto: snapshot.UDP, Fragment: true, Peer: client, PacketsIn: 1}
	cases := []struct {
		t          *Traffic
		port, zone string
	}{
		{answered(snapshot.Inbound, snapshot.TCP, 22, admin), "22", "ADMIN_IP"}, // the narrowest zone is not sought: the first by name
		{answered(snapshot.Inbound, snapshot.TCP, 22, client), "22", "CLIENTS"},
		{answered(snapshot.Inbound, snapshot.UDP, 514, agent), "514", "role:agent"},
		{answered(snapshot.Inbound, snapshot.TCP, 9050, far), "9050", "unbound"}, // narrowest documented range
		{answered(snapshot.Inbound, snapshot.TCP, 9077, far), "9000-9100", "unbound"},
		{probe(snapshot.SCTP, 31337, far), "any", "unbound"}, // under the 0-65535 rule
		{answered(snapshot.Outbound, snapshot.UDP, 53, netip.MustParseAddr("2001:db8::53")), "53", "CLIENTS"},
		{probe(snapshot.UDP, 6000, far), "other", "unbound"},                       // unanswered: no label of its own
		{refused, "other", "unbound"},                                              // refused by RST: no service
		{answered(snapshot.Inbound, snapshot.UDP, 6001, far), "6001", "unbound"},   // admitted 1 of 2
		{answered(snapshot.Outbound, snapshot.TCP, 8080, far), "8080", "unbound"},  // admitted 2 of 2
		{answered(snapshot.Outbound, snapshot.TCP, 8081, far), "other", "unbound"}, // no room left
		{probe(snapshot.UDP, 6001, far), "6001", "unbound"},                        // once admitted, always
		{answered(snapshot.Inbound, snapshot.ICMP, 8<<8, client), "none", "CLIENTS"},
		{answered(snapshot.Inbound, snapshot.TCP, 443, netip.Addr{}), "other", "unknown"}, // overflow: the peer is lost
		{frag, "fragment", "CLIENTS"},
		{&Traffic{Direction: snapshot.Unknown, Proto: 99, Peer: far}, "none", "unbound"},
	}
	for _, c := range cases {
		if port, zone := l.port(c.t), l.zone(c.t.Peer); port != c.port || zone != c.zone {
			t.Errorf("%s %s/%d from %v: port %q zone %q, want %q %q", c.t.Direction, c.t.Proto, c.t.Port, c.t.Peer, port, zone, c.port, c.zone)
		}
	}
	if protoLabel(99) != "other" || protoLabel(snapshot.ICMPv6) != "icmpv6" {
		t.Error("protocol labels")
	}
	// Without a site every known peer is unbound.
	if z := newLabeler(nil, nil, 0).zone(admin); z != ZoneUnbound {
		t.Errorf("no site: zone %q", z)
	}
}

// series gathers one metric family's series as label maps and values.
func gather(t testing.TB, reg prometheus.Gatherer, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// TestTrafficBoundedWith100kPeers: 100 000 distinct peers over every
// direction and port-carrying protocol, on random ports, most of them
// answered, in and out of every zone, some without a peer: the traffic
// metrics keep fewer series than SeriesLimit, no label is an address,
// and not a packet or byte is lost on the way.
func TestTrafficBoundedWith100kPeers(t *testing.T) {
	m := New(Options{Matrix: testMatrix(), Site: testSite(t), MaxExtraPorts: DefaultExtraPorts, Version: "test"})
	rng := rand.New(rand.NewPCG(1, 2))
	protos := []snapshot.Proto{snapshot.TCP, snapshot.UDP, snapshot.SCTP, snapshot.ICMP, snapshot.ICMPv6, snapshot.GRE, 99}
	var rxP, rxB, txP, txB uint64
	const peers = 100_000
	for i := 0; i < peers; i++ {
		var peer netip.Addr
		switch i % 5 {
		case 0:
			peer = netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) // CLIENTS (and ADMIN_IP once in 256)
		case 1:
			peer = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) // role agent
		case 2:
			peer = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		case 3:
			peer = netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}) // no zone
		case 4:
			if i%10 == 4 {
				peer = netip.Addr{} // overflow: no peer
			} else {
				peer = netip.AddrFrom16([16]byte{0xfd, 0, 10: byte(i >> 24), 11: byte(i >> 16), 12: byte(i >> 8), 13: byte(i), 15: 1})
			}
		}
		tr := &Traffic{Direction: snapshot.Direction(i % 3), Proto: protos[rng.IntN(len(protos))], Port: uint16(rng.IntN(65536)),
			Fragment: i%97 == 0, Peer: peer, PacketsIn: uint64(1 + rng.IntN(100)), BytesIn: uint64(rng.IntN(100000))}
		if rng.IntN(4) > 0 { // three in four answered
			tr.PacketsOut, tr.BytesOut = uint64(1+rng.IntN(100)), uint64(rng.IntN(100000))
		}
		rxP, rxB, txP, txB = rxP+tr.PacketsIn, rxB+tr.BytesIn, txP+tr.PacketsOut, txB+tr.BytesOut
		m.AddTraffic(tr)
	}
	limit := m.SeriesLimit()
	// zones: ADMIN_IP, CLIENTS, role:agent, unbound, unknown; documented
	// tuples: 22, 8443, 514 ×2, 9000-9100, 9050, sctp any, 53 = 8.
	if want := 5 * (8 + DefaultExtraPorts + fixedPortTuples); limit != want {
		t.Errorf("SeriesLimit %d, want %d", limit, want)
	}
	if got := testutil.ToFloat64(gaugeOf(t, m, "flowaudit_traffic_series_limit")); got != float64(limit) {
		t.Errorf("flowaudit_traffic_series_limit %v, want %d", got, limit)
	}
	for name, want := range map[string]uint64{"flowaudit_received_packets_total": rxP, "flowaudit_received_bytes_total": rxB,
		"flowaudit_sent_packets_total": txP, "flowaudit_sent_bytes_total": txB} {
		ms := gather(t, m.Registry(), name)
		if len(ms) == 0 || len(ms) > limit {
			t.Errorf("%s: %d series, limit %d", name, len(ms), limit)
		}
		var sum float64
		ports := map[string]bool{}
		for _, s := range ms {
			sum += s.GetCounter().GetValue()
			for k, v := range labels(s) {
				if _, err := netip.ParseAddr(v); err == nil {
					t.Fatalf("%s: label %s=%s is an address", name, k, v)
				}
				if k == "port" {
					ports[v] = true
				}
			}
		}
		if uint64(sum) != want {
			t.Errorf("%s sums to %.0f, want %d", name, sum, want)
		}
		if name == "flowaudit_received_packets_total" {
			t.Logf("100000 peers: %d series (limit %d), %d port labels", len(ms), limit, len(ports))
		}
	}
}

// gaugeOf finds a registered gauge-like collector by name through Gather.
func gaugeOf(t *testing.T, m *Metrics, name string) prometheus.Collector {
	t.Helper()
	ms := gather(t, m.Registry(), name)
	if len(ms) != 1 {
		t.Fatalf("%s: %d series", name, len(ms))
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "copy"})
	g.Set(ms[0].GetGauge().GetValue())
	return g
}

func TestFindingsAndEvaluation(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	m := New(Options{Interval: time.Minute, Start: start, Version: "v9"})
	value := func(name string, want map[string]string) float64 {
		t.Helper()
		for _, s := range gather(t, m.Registry(), name) {
			l, ok := labels(s), true
			for k, v := range want {
				ok = ok && l[k] == v
			}
			if ok {
				if s.GetCounter() != nil {
					return s.GetCounter().GetValue()
				}
				return s.GetGauge().GetValue()
			}
		}
		t.Fatalf("%s%v: no such series", name, want)
		return 0
	}
	// Every kind and severity exists from the start, at zero: an alert on
	// an increase sees the first event.
	if n := len(gather(t, m.Registry(), "flowaudit_finding_events_total")); n != len(audit.Kinds)*4*4 {
		t.Errorf("%d event series, want %d", n, len(audit.Kinds)*4*4)
	}
	if n := len(gather(t, m.Registry(), "flowaudit_open_findings")); n != len(audit.Kinds)*4 {
		t.Errorf("%d open-finding series, want %d", n, len(audit.Kinds)*4)
	}
	if v := value("flowaudit_last_evaluation_timestamp_seconds", nil); v != 1.8e9 {
		t.Errorf("last evaluation before any: %v, want the start", v)
	}
	high := audit.Finding{Kind: audit.UnexpectedOpenPort, Severity: audit.High}
	miss := audit.Finding{Kind: audit.MissingRequired, Severity: audit.Medium}
	m.Event("opened", &high)
	m.Event("opened", &miss)
	m.Evaluated(start.Add(90*time.Second), 250*time.Millisecond, []audit.Finding{high, miss, miss})
	m.Evaluated(start.Add(150*time.Second), 125*time.Millisecond, []audit.Finding{high, miss})
	m.DeliveryFailed()
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"flowaudit_open_findings", map[string]string{"kind": "unexpected-open-port", "severity": "high"}, 1},
		{"flowaudit_open_findings", map[string]string{"kind": "missing-required", "severity": "medium"}, 1},
		{"flowaudit_open_findings", map[string]string{"kind": "missing-required", "severity": "high"}, 0},
		{"flowaudit_finding_events_total", map[string]string{"action": "opened", "kind": "unexpected-open-port", "severity": "high"}, 1},
		{"flowaudit_finding_events_total", map[string]string{"action": "resolved", "kind": "unexpected-open-port", "severity": "high"}, 0},
		{"flowaudit_last_evaluation_timestamp_seconds", nil, 1.8e9 + 150},
		{"flowaudit_last_evaluation_duration_seconds", nil, 0.125},
		{"flowaudit_evaluations_total", nil, 2},
		{"flowaudit_evaluation_interval_seconds", nil, 60},
		{"flowaudit_event_delivery_failures_total", nil, 1},
		{"flowaudit_build_info", map[string]string{"version": "v9"}, 1},
	} {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// promtoolPath finds promtool: a test that needs it skips without it,
// unless CI is set, where it fails.
func promtoolPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("promtool not found (apt-get install prometheus): %v", err)
		}
		t.Skip("promtool not found (apt-get install prometheus)")
	}
	return p
}

// TestScrape: a real HTTP scrape of every metric family, datapath
// included, passes promtool check metrics (the Prometheus naming and
// exposition lint).
func TestScrape(t *testing.T) {
	promtool := promtoolPath(t)
	dp := Datapath{PacketsIngress: 1000, PacketsEgress: 900, FastPathPackets: 800, FlowInsertFailed: 7, OverflowInsertFailed: 1, ActiveEntries: 12,
		FlowCapacity: 65536, MemoryEntries: 300, FlowBudget: 262144, Moves: 5, SocketRefreshErrors: 2}
	var fail error
	m := New(Options{Matrix: testMatrix(), Site: testSite(t), MaxExtraPorts: 4, Version: "v1.0.0", Interval: time.Minute,
		Datapath: func() (Datapath, error) { return dp, fail }})
	m.AddTraffic(answered(snapshot.Inbound, snapshot.TCP, 22, admin))
	m.AddTraffic(answered(snapshot.Outbound, snapshot.UDP, 53, far))
	f := audit.Finding{Kind: audit.PeerOutOfZone, Severity: audit.High}
	m.Event("opened", &f)
	m.Evaluated(time.Now(), time.Second, []audit.Finding{f})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := m.Serve(ln, nil)
	defer srv.Close()
	body := scrape(t, "http://"+ln.Addr().String()+"/metrics")
	for _, want := range []string{
		`flowaudit_received_packets_total{direction="inbound",port="22",protocol="tcp",zone="ADMIN_IP"} 3`,
		`flowaudit_sent_bytes_total{direction="outbound",port="53",protocol="udp",zone="unbound"} 120`,
		`flowaudit_datapath_packets_total{hook="ingress"} 1000`,
		`flowaudit_datapath_fast_path_packets_total 800`,
		`flowaudit_flow_insert_failed_packets_total 7`,
		`flowaudit_overflow_insert_failed_packets_total 1`,
		`flowaudit_flow_map_entries 12`,
		`flowaudit_flow_map_capacity 65536`,
		`flowaudit_memory_flow_entries 300`,
		`flowaudit_memory_flow_budget 262144`,
		`flowaudit_map_moves_total 5`,
		`flowaudit_socket_refresh_errors_total 2`,
		`flowaudit_open_findings{kind="peer-out-of-zone",severity="high"} 1`,
		`flowaudit_build_info{goversion="go`,
		"go_goroutines ", "process_cpu_seconds_total ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	// A datapath that cannot be read fails its own metrics, not the scrape.
	fail = errors.New("collector closed")
	body = scrape(t, "http://"+ln.Addr().String()+"/metrics")
	if strings.Contains(body, "flowaudit_map_moves_total") || !strings.Contains(body, "flowaudit_open_findings") {
		t.Errorf("scrape with a failing datapath:\n%s", body)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/metrics"); err == nil {
		t.Error("still serving after Close")
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}
