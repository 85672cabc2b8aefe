// Package metrics is watch's Prometheus instrumentation: traffic counters
// with bounded labels, open findings, finding events, the datapath's own
// counters, the last evaluation, socket-refresh errors and build info
// (docs/WATCH.md, "Metrics").
//
// Traffic is labelled by (direction, protocol, service port, zone), never
// by peer address: the port label is the documented port (or range) of the
// matrix, one of at most MaxExtraPorts other ports that answered, or
// "other"; the zone label is the site's zone (or role) holding the peer,
// "unbound" or "unknown". So the number of series depends on the matrix
// and the site, never on the traffic (SeriesLimit).
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Label values that are not ports or zones.
const (
	PortOther    = "other"    // an undocumented port beyond the MaxExtraPorts admitted ones
	PortNone     = "none"     // a protocol without ports (ICMP, GRE, ESP, …)
	PortFragment = "fragment" // a non-first IP fragment: no L4 header
	ZoneUnbound  = "unbound"  // the peer is in no zone or role the site binds
	ZoneUnknown  = "unknown"  // the peer is not known (packets counted without their peer: the flow map was full)
	ProtoOther   = "other"    // an IP protocol flowaudit does not name
)

// DefaultExtraPorts is the default MaxExtraPorts.
const DefaultExtraPorts = 16

// fixedPortTuples counts the (direction, protocol, port) label tuples that
// exist whatever the matrix: "other" and "fragment" for each direction and
// port-carrying protocol (3 × 3 × 2), "none" for each direction and named
// protocol without ports (3 × 5: icmp, icmpv6, gre, esp, ah) and for
// "other" protocols (3).
const fixedPortTuples = 3*3*2 + 3*5 + 3

// Options configure New.
type Options struct {
	// Matrix gives the documented ports; Site the zones and roles.
	Matrix *catalog.Matrix
	Site   *catalog.Site
	// MaxExtraPorts undocumented service ports that answered get a label
	// of their own, in the order they are first seen answered; later ones
	// count as "other".
	MaxExtraPorts int
	// Version is flowaudit's version (build info).
	Version string
	// Interval is the evaluation interval (flowaudit_evaluation_interval_seconds).
	Interval time.Duration
	// Start is when the watch started: the last evaluation time until
	// there is one.
	Start time.Time
	// Datapath, if set, is read at every scrape.
	Datapath func() (Datapath, error)
}

// Datapath are the recorder's cumulative counters (bpf.Counters and the
// socket refresher's failures).
type Datapath struct {
	PacketsIngress, PacketsEgress          uint64
	FastPathPackets                        uint64
	FlowInsertFailed, OverflowInsertFailed uint64
	ActiveEntries                          uint64
	FlowCapacity                           uint32
	MemoryEntries                          int
	FlowBudget                             int
	Moves                                  uint64
	SocketRefreshErrors                    uint64
}

// Traffic is one entry moved out of the kernel (bpf.MovedFlow).
type Traffic struct {
	Direction snapshot.Direction
	Proto     snapshot.Proto
	Port      uint16
	Fragment  bool
	// Peer is invalid when the packets lost their peer (overflow).
	Peer                                     netip.Addr
	PacketsIn, BytesIn, PacketsOut, BytesOut uint64
	Evidence                                 snapshot.Evidence
}

// answered reports whether the service replied: packets both ways, and for
// TCP more than the RSTs that refuse a connection.
func (t *Traffic) answered() bool {
	if t.PacketsIn == 0 || t.PacketsOut == 0 {
		return false
	}
	if t.Proto != snapshot.TCP {
		return true
	}
	if t.Direction == snapshot.Outbound {
		return t.PacketsIn > t.Evidence.RstIn
	}
	return t.PacketsOut > t.Evidence.RstOut
}

type portKey struct {
	dir   snapshot.Direction
	proto snapshot.Proto
	port  uint16
}

type seriesKey struct {
	dir   snapshot.Direction
	proto string
	port  string
	zone  string
}

type series struct {
	rxPackets, rxBytes, txPackets, txBytes prometheus.Counter
}

// labeler maps traffic to its bounded labels.
type labeler struct {
	// documented holds, per (direction, protocol), the matrix's port
	// ranges, narrowest first.
	documented map[portKey][]catalog.PortRange
	tuples     int // distinct documented (direction, protocol, range) tuples
	maxExtra   int
	extra      map[portKey]bool
	site       *catalog.Site
	zones      []string // zone names, then "role:NAME", sorted within each
}

func newLabeler(m *catalog.Matrix, site *catalog.Site, maxExtra int) *labeler {
	l := &labeler{documented: map[portKey][]catalog.PortRange{}, maxExtra: maxExtra, extra: map[portKey]bool{}, site: site}
	if m != nil {
		seen := map[portKey]map[catalog.PortRange]bool{}
		for _, r := range m.Rules {
			for _, p := range r.Protos {
				if !p.HasPorts() {
					continue
				}
				k := portKey{dir: r.Direction, proto: p}
				if seen[k] == nil {
					seen[k] = map[catalog.PortRange]bool{}
				}
				for _, pr := range r.Ports {
					if !seen[k][pr] {
						seen[k][pr] = true
						l.documented[k] = append(l.documented[k], pr)
						l.tuples++
					}
				}
			}
		}
		for _, rs := range l.documented {
			sort.Slice(rs, func(i, j int) bool {
				wi, wj := int(rs[i].Hi)-int(rs[i].Lo), int(rs[j].Hi)-int(rs[j].Lo)
				if wi != wj {
					return wi < wj
				}
				return rs[i].Lo < rs[j].Lo
			})
		}
	}
	if site != nil {
		var zs, rs []string
		for z := range site.Zones {
			zs = append(zs, z)
		}
		for r := range site.Roles {
			rs = append(rs, "role:"+r)
		}
		sort.Strings(zs)
		sort.Strings(rs)
		l.zones = append(zs, rs...)
	}
	return l
}

// protoLabel names the protocol; unnamed ones are "other".
func protoLabel(p snapshot.Proto) string {
	switch p {
	case snapshot.TCP, snapshot.UDP, snapshot.SCTP, snapshot.ICMP, snapshot.ICMPv6, snapshot.GRE, snapshot.ESP, snapshot.AH:
		return p.String()
	}
	return ProtoOther
}

func (l *labeler) port(t *Traffic) string {
	switch {
	case !t.Proto.HasPorts():
		return PortNone
	case t.Fragment:
		return PortFragment
	}
	k := portKey{dir: t.Direction, proto: t.Proto}
	for _, r := range l.documented[k] {
		if r.Contains(t.Port) {
			return r.String()
		}
	}
	k.port = t.Port
	if l.extra[k] {
		return strconv.Itoa(int(t.Port))
	}
	if len(l.extra) < l.maxExtra && t.answered() {
		l.extra[k] = true
		return strconv.Itoa(int(t.Port))
	}
	return PortOther
}

func (l *labeler) zone(peer netip.Addr) string {
	if !peer.IsValid() {
		return ZoneUnknown
	}
	for _, z := range l.zones {
		var set interface{ Contains(netip.Addr) bool }
		if name, ok := cutRole(z); ok {
			set = l.site.Roles[name]
		} else {
			set = l.site.Zones[z]
		}
		if set != nil && set.Contains(peer) {
			return z
		}
	}
	return ZoneUnbound
}

func cutRole(z string) (string, bool) {
	const p = "role:"
	if len(z) > len(p) && z[:len(p)] == p {
		return z[len(p):], true
	}
	return "", false
}

// seriesLimit bounds the traffic series of each of the four traffic
// metrics: every zone label times every (direction, protocol, port) tuple.
func (l *labeler) seriesLimit() int {
	return (len(l.zones) + 2) * (l.tuples + l.maxExtra + fixedPortTuples)
}

// Metrics is watch's registry.
type Metrics struct {
	reg *prometheus.Registry
	lab *labeler

	mu      sync.Mutex
	traffic map[seriesKey]*series

	rxPackets, rxBytes, txPackets, txBytes *prometheus.CounterVec
	open                                   *prometheus.GaugeVec
	events                                 *prometheus.CounterVec
	deliveryFailures                       prometheus.Counter
	lastEval, lastEvalDuration             prometheus.Gauge
	evaluations                            prometheus.Counter
}

// New builds the registry: flowaudit's metrics, the Go runtime's and the
// process's.
func New(o Options) *Metrics {
	if o.MaxExtraPorts < 0 {
		o.MaxExtraPorts = 0
	}
	m := &Metrics{reg: prometheus.NewRegistry(), lab: newLabeler(o.Matrix, o.Site, o.MaxExtraPorts), traffic: map[seriesKey]*series{}}
	traffic := []string{"direction", "protocol", "port", "zone"}
	vec := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, traffic)
	}
	m.rxPackets = vec("flowaudit_received_packets_total", "Packets received from peers, by flow direction (who initiated), protocol, service port label and peer zone.")
	m.rxBytes = vec("flowaudit_received_bytes_total", "Bytes received from peers (L2 frame lengths), labelled as flowaudit_received_packets_total.")
	m.txPackets = vec("flowaudit_sent_packets_total", "Packets sent to peers, labelled as flowaudit_received_packets_total.")
	m.txBytes = vec("flowaudit_sent_bytes_total", "Bytes sent to peers (L2 frame lengths), labelled as flowaudit_received_packets_total.")
	m.open = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowaudit_open_findings",
		Help: "Findings open after the last evaluation, by kind and severity."}, []string{"kind", "severity"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowaudit_finding_events_total",
		Help: "Finding events (opened, escalated, de-escalated, resolved) by the finding's kind and severity after the event."},
		[]string{"action", "kind", "severity"})
	m.deliveryFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "flowaudit_event_delivery_failures_total",
		Help: "Finding events that could not be written to the --events target."})
	m.lastEval = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowaudit_last_evaluation_timestamp_seconds",
		Help: "When the last evaluation ended (Unix time); the start of the watch until the first one."})
	m.lastEvalDuration = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowaudit_last_evaluation_duration_seconds",
		Help: "How long the last evaluation (snapshot, audit, events) took."})
	m.evaluations = prometheus.NewCounter(prometheus.CounterOpts{Name: "flowaudit_evaluations_total", Help: "Evaluations done."})
	interval := prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowaudit_evaluation_interval_seconds", Help: "The --interval between evaluations."})
	interval.Set(o.Interval.Seconds())
	limit := prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowaudit_traffic_series_limit",
		Help: "The most series each traffic metric (flowaudit_{received,sent}_{packets,bytes}_total) can have with this matrix, site and --metrics-ports."})
	limit.Set(float64(m.lab.seriesLimit()))
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowaudit_build_info", Help: "flowaudit's version and the Go version it was built with; always 1.",
		ConstLabels: prometheus.Labels{"version": o.Version, "goversion": runtime.Version()}})
	build.Set(1)
	start := o.Start
	if start.IsZero() {
		start = time.Now()
	}
	m.lastEval.Set(float64(start.UnixNano()) / 1e9)
	for _, k := range audit.Kinds {
		for s := audit.Info; s <= audit.High; s++ {
			m.open.WithLabelValues(string(k), s.String()).Set(0)
			for _, a := range []string{"opened", "escalated", "de-escalated", "resolved"} {
				m.events.WithLabelValues(a, string(k), s.String())
			}
		}
	}
	m.reg.MustRegister(m.rxPackets, m.rxBytes, m.txPackets, m.txBytes, m.open, m.events, m.deliveryFailures, m.lastEval,
		m.lastEvalDuration, m.evaluations, interval, limit, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if o.Datapath != nil {
		m.reg.MustRegister(&datapathCollector{read: o.Datapath})
	}
	return m
}

// Registry is the registry (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SeriesLimit is the most series one traffic metric can have.
func (m *Metrics) SeriesLimit() int { return m.lab.seriesLimit() }

// AddTraffic counts one moved entry. It is called for every entry of
// every move, so it does no more than two lookups and four atomic adds.
func (m *Metrics) AddTraffic(t *Traffic) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := seriesKey{dir: t.Direction, proto: protoLabel(t.Proto), port: m.lab.port(t), zone: m.lab.zone(t.Peer)}
	s := m.traffic[k]
	if s == nil {
		lv := []string{k.dir.String(), k.proto, k.port, k.zone}
		s = &series{rxPackets: m.rxPackets.WithLabelValues(lv...), rxBytes: m.rxBytes.WithLabelValues(lv...),
			txPackets: m.txPackets.WithLabelValues(lv...), txBytes: m.txBytes.WithLabelValues(lv...)}
		m.traffic[k] = s
	}
	s.rxPackets.Add(float64(t.PacketsIn))
	s.rxBytes.Add(float64(t.BytesIn))
	s.txPackets.Add(float64(t.PacketsOut))
	s.txBytes.Add(float64(t.BytesOut))
}

// Event counts one finding event.
func (m *Metrics) Event(action string, f *audit.Finding) {
	m.events.WithLabelValues(action, string(f.Kind), f.Severity.String()).Inc()
}

// DeliveryFailed counts an event the --events target did not take.
func (m *Metrics) DeliveryFailed() { m.deliveryFailures.Inc() }

// Evaluated records an evaluation that ended at end, took took, and left
// open the findings given.
func (m *Metrics) Evaluated(end time.Time, took time.Duration, open []audit.Finding) {
	counts := map[[2]string]int{}
	for i := range open {
		counts[[2]string{string(open[i].Kind), open[i].Severity.String()}]++
	}
	for _, k := range audit.Kinds {
		for s := audit.Info; s <= audit.High; s++ {
			m.open.WithLabelValues(string(k), s.String()).Set(float64(counts[[2]string{string(k), s.String()}]))
		}
	}
	m.lastEval.Set(float64(end.UnixNano()) / 1e9)
	m.lastEvalDuration.Set(took.Seconds())
	m.evaluations.Inc()
}

// datapathCollector reads the recorder's counters at scrape time.
type datapathCollector struct {
	read func() (Datapath, error)
}

var (
	descPackets = prometheus.NewDesc("flowaudit_datapath_packets_total",
		"Packets the BPF programs saw, by hook (ingress, egress).", []string{"hook"}, nil)
	descFastPath = prometheus.NewDesc("flowaudit_datapath_fast_path_packets_total",
		"Of flowaudit_datapath_packets_total, the packets the header fast path counted without parsing them (the last flow on their CPU).", nil, nil)
	descFlowInsertFailed = prometheus.NewDesc("flowaudit_flow_insert_failed_packets_total",
		"Packets whose per-peer flow could not be inserted (kernel flow map full): counted per service without their peer, in the overflow map.", nil, nil)
	descOverflowInsertFailed = prometheus.NewDesc("flowaudit_overflow_insert_failed_packets_total",
		"Packets not counted at all: the flow map and the overflow map were both full.", nil, nil)
	descEntries = prometheus.NewDesc("flowaudit_flow_map_entries",
		"Entries in the kernel flow map's active generation (inserted since the last move).", nil, nil)
	descCapacity = prometheus.NewDesc("flowaudit_flow_map_capacity",
		"Entries the kernel flow map holds at most (--max-flows).", nil, nil)
	descMemory = prometheus.NewDesc("flowaudit_memory_flow_entries",
		"Flow entries the recorder holds in memory (all window buckets).", nil, nil)
	descBudget = prometheus.NewDesc("flowaudit_memory_flow_budget",
		"The recorder's memory budget in flow entries (--flow-budget); beyond it peers fold into prefixes.", nil, nil)
	descMoves = prometheus.NewDesc("flowaudit_map_moves_total",
		"Moves of the kernel's counts into the recorder's memory.", nil, nil)
	descSocketErrors = prometheus.NewDesc("flowaudit_socket_refresh_errors_total",
		"Periodic reads of the local listening sockets that failed (the previous set stayed in force).", nil, nil)
)

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descFastPath, descFlowInsertFailed, descOverflowInsertFailed, descEntries, descCapacity,
		descMemory, descBudget, descMoves, descSocketErrors} {
		ch <- d
	}
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	d, err := c.read()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descPackets, err)
		return
	}
	counter := func(desc *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), lv...)
	}
	gauge := func(desc *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v)
	}
	counter(descPackets, d.PacketsIngress, "ingress")
	counter(descPackets, d.PacketsEgress, "egress")
	counter(descFastPath, d.FastPathPackets)
	counter(descFlowInsertFailed, d.FlowInsertFailed)
	counter(descOverflowInsertFailed, d.OverflowInsertFailed)
	gauge(descEntries, float64(d.ActiveEntries))
	gauge(descCapacity, float64(d.FlowCapacity))
	gauge(descMemory, float64(d.MemoryEntries))
	gauge(descBudget, float64(d.FlowBudget))
	counter(descMoves, d.Moves)
	counter(descSocketErrors, d.SocketRefreshErrors)
}

// Handler serves the registry in the Prometheus text (or OpenMetrics)
// format; a scrape that fails in part serves the rest and logs through
// errLog.
func (m *Metrics) Handler(errLog promhttp.Logger) http.Handler {
	return promhttp.InstrumentMetricHandler(m.reg, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog: errLog, ErrorHandling: promhttp.ContinueOnError, Registry: m.reg, EnableOpenMetrics: true}))
}

// Server serves /metrics on a listener.
type Server struct {
	srv  *http.Server
	done chan error
	once sync.Once
	err  error
}

// Serve starts serving /metrics on ln (opened by the caller, so a busy
// address fails before anything else starts).
func (m *Metrics) Serve(ln net.Listener, errLog promhttp.Logger) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler(errLog))
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, done: make(chan error, 1)}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s
}

// Close stops the server (a scrape in progress gets a second to finish).
// Later calls return the first one's result.
func (s *Server) Close() error {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := s.srv.Shutdown(ctx)
		if err != nil {
			s.srv.Close()
		}
		if serr := <-s.done; err == nil {
			err = serr
		}
		s.err = err
	})
	return s.err
}
