// Package events encodes watch's finding events as one JSON object per
// line, with Elastic Common Schema field names where ECS has one and the
// rest under flowaudit.* (docs/EVENTS.md, docs/events.schema.json), and
// writes them to a sink: an appended file reopened on demand (logrotate),
// standard output, or syslog (RFC 5424 over a unix socket, UDP or TCP).
//
// It holds no state about findings: cmd/flowaudit's tracker decides what
// happened, this package only says it.
package events

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Format names this event layout in every event (flowaudit.format).
const Format = "flowaudit-event/1"

// ECSVersion is the Elastic Common Schema version the ECS fields follow.
const ECSVersion = "8.11.0"

// The actions: the vocabulary of the watch tracker (docs/WATCH.md).
const (
	Opened      = "opened"
	Escalated   = "escalated"
	Deescalated = "de-escalated"
	Resolved    = "resolved"
)

// Actions lists every action.
var Actions = []string{Opened, Escalated, Deescalated, Resolved}

// Context is what every event of one watch shares: who observes, what is
// audited.
type Context struct {
	Hostname    string
	Interfaces  []string
	ToolVersion string
	Matrix      *catalog.Matrix
}

// Event is one change of a finding, as the tracker reports it.
type Event struct {
	Time   time.Time
	Action string
	// Finding is the finding now (for resolved: as last observed).
	Finding audit.Finding
	// Previous is the finding before an escalation or de-escalation.
	Previous *audit.Finding
	// FirstReported is when the finding was opened (possibly by an earlier
	// run); LastPresent, for resolved, the last evaluation that had it.
	FirstReported time.Time
	LastPresent   time.Time
}

// ECSSeverity maps a finding severity to event.severity, on the scale of
// Elastic's detection rules (low 21, medium 47, high 73); info is 1.
func ECSSeverity(s audit.Severity) int {
	switch s {
	case audit.High:
		return 73
	case audit.Medium:
		return 47
	case audit.Low:
		return 21
	}
	return 1
}

// Alerting reports whether an event is an alert (event.kind "alert"): a
// finding at low or above that opened or changed. Resolutions and info
// findings are plain events (event.kind "event").
func (ev *Event) Alerting() bool {
	return ev.Action != Resolved && ev.Finding.Severity >= audit.Low
}

// The JSON layout. Field order is the output order.
type (
	record struct {
		Timestamp   string       `json:"@timestamp"`
		ECS         ecsInfo      `json:"ecs"`
		Message     string       `json:"message"`
		Event       eventFields  `json:"event"`
		Rule        *ruleFields  `json:"rule,omitempty"`
		Source      *endpoint    `json:"source,omitempty"`
		Destination *endpoint    `json:"destination,omitempty"`
		Network     network      `json:"network"`
		Related     *related     `json:"related,omitempty"`
		Observer    observer     `json:"observer"`
		Flowaudit   flowauditObj `json:"flowaudit"`
	}
	ecsInfo struct {
		Version string `json:"version"`
	}
	eventFields struct {
		Kind     string   `json:"kind"`
		Category []string `json:"category"`
		Type     []string `json:"type"`
		Action   string   `json:"action"`
		Severity int      `json:"severity"`
		ID       string   `json:"id"`
		Dataset  string   `json:"dataset"`
		Module   string   `json:"module"`
		Start    string   `json:"start,omitempty"`
		End      string   `json:"end,omitempty"`
	}
	ruleFields struct {
		ID        string `json:"id"`
		Name      string `json:"name"`
		Ruleset   string `json:"ruleset"`
		Reference string `json:"reference,omitempty"`
	}
	endpoint struct {
		IP   string `json:"ip,omitempty"`
		Port int    `json:"port,omitempty"`
	}
	network struct {
		Transport  string `json:"transport,omitempty"`
		IANANumber string `json:"iana_number,omitempty"`
		Direction  string `json:"direction"`
	}
	related struct {
		IP []string `json:"ip"`
	}
	observer struct {
		Hostname string      `json:"hostname"`
		Type     string      `json:"type"`
		Vendor   string      `json:"vendor"`
		Product  string      `json:"product"`
		Version  string      `json:"version"`
		Ingress  *obsIngress `json:"ingress,omitempty"`
	}
	obsIngress struct {
		Interface struct {
			Name string `json:"name"`
		} `json:"interface"`
	}
	flowauditObj struct {
		Format     string         `json:"format"`
		Interfaces []string       `json:"interfaces"`
		Matrix     matrixFields   `json:"matrix"`
		Finding    findingFields  `json:"finding"`
		Evidence   evidenceFields `json:"evidence"`
		Rule       *mrule         `json:"rule,omitempty"`
		Citation   *citation      `json:"citation,omitempty"`
	}
	matrixFields struct {
		Product     string   `json:"product"`
		ProductName string   `json:"product_name"`
		Version     string   `json:"version"`
		Role        string   `json:"role"`
		Conditions  []string `json:"conditions"`
	}
	findingFields struct {
		ID            string       `json:"id"`
		Kind          string       `json:"kind"`
		Severity      string       `json:"severity"`
		Direction     string       `json:"direction"`
		Proto         string       `json:"proto,omitempty"`
		Port          string       `json:"port,omitempty"`
		Summary       string       `json:"summary"`
		FirstReported string       `json:"first_reported"`
		LastPresent   string       `json:"last_present,omitempty"`
		Previous      *previousRef `json:"previous,omitempty"`
	}
	previousRef struct {
		ID       string `json:"id"`
		Kind     string `json:"kind"`
		Severity string `json:"severity"`
	}
	evidenceFields struct {
		Packets             uint64            `json:"packets"`
		Bytes               uint64            `json:"bytes"`
		Peers               int               `json:"peers"`
		PeersEstimated      bool              `json:"peers_estimated,omitempty"`
		TopPeers            []peer            `json:"top_peers,omitempty"`
		FirstSeen           string            `json:"first_seen,omitempty"`
		LastSeen            string            `json:"last_seen,omitempty"`
		Ports               []string          `json:"ports,omitempty"`
		Listening           bool              `json:"listening,omitempty"`
		DirectionInferred   bool              `json:"direction_inferred,omitempty"`
		PeersUnknownPackets uint64            `json:"peers_unknown_packets,omitempty"`
		PeersUnknown        uint64            `json:"peers_unknown,omitempty"`
		FloodPackets        uint64            `json:"flood_packets,omitempty"`
		WindowSeconds       *float64          `json:"window_seconds,omitempty"`
		Handshake           snapshot.Evidence `json:"handshake"`
		Services            []service         `json:"services,omitempty"`
		Flood               *flood            `json:"flood,omitempty"`
		Interrupted         *interrupted      `json:"interrupted,omitempty"`
	}
	peer struct {
		IP      string `json:"ip,omitempty"`
		Prefix  string `json:"prefix,omitempty"`
		Peers   uint64 `json:"peers,omitempty"`
		Packets uint64 `json:"packets"`
		Bytes   uint64 `json:"bytes"`
	}
	service struct {
		Direction string   `json:"direction"`
		Proto     string   `json:"proto"`
		Port      string   `json:"port"`
		Packets   uint64   `json:"packets"`
		Peers     uint64   `json:"peers,omitempty"`
		Folded    []string `json:"folded,omitempty"`
		Unchecked []string `json:"unchecked,omitempty"`
		Prefixes  []string `json:"prefixes,omitempty"`
	}
	flood struct {
		Trigger           []string `json:"trigger"`
		Peers             uint64   `json:"peers"`
		HalfOpenSYNs      uint64   `json:"half_open_syns"`
		Start             string   `json:"start,omitempty"`
		End               string   `json:"end,omitempty"`
		SpanSeconds       float64  `json:"span_seconds"`
		RatePerSecond     float64  `json:"rate_per_second"`
		RateOf            string   `json:"rate_of"`
		PeersThreshold    int      `json:"peers_threshold"`
		SYNThreshold      int      `json:"syn_threshold"`
		RateThresholdPerS float64  `json:"rate_threshold_per_second"`
	}
	interrupted struct {
		Signal     string `json:"signal"`
		At         string `json:"at"`
		PlannedEnd string `json:"planned_end,omitempty"`
		Reason     string `json:"reason,omitempty"`
	}
	mrule struct {
		ID          string `json:"id"`
		Direction   string `json:"direction"`
		Proto       string `json:"proto"`
		Ports       string `json:"ports"`
		Peer        string `json:"peer"`
		Requirement string `json:"requirement"`
		Condition   string `json:"condition,omitempty"`
		Purpose     string `json:"purpose"`
		Source      string `json:"source,omitempty"`
	}
	citation struct {
		Doc     string `json:"doc"`
		Title   string `json:"title,omitempty"`
		Source  string `json:"source"`
		URL     string `json:"url,omitempty"`
		Section string `json:"section,omitempty"`
		Quote   string `json:"quote,omitempty"`
		Note    string `json:"note,omitempty"`
	}
)

// stamp formats t as RFC 3339 in UTC with nanoseconds ("" when zero).
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// Encode returns the event as one JSON object (no newline).
func Encode(c *Context, ev *Event) ([]byte, error) {
	return json.Marshal(build(c, ev))
}

func build(c *Context, ev *Event) *record {
	f := &ev.Finding
	r := &record{
		Timestamp: stamp(ev.Time),
		ECS:       ecsInfo{Version: ECSVersion},
		Message:   f.Summary,
		Event: eventFields{
			Kind: "event", Category: []string{"network"}, Action: ev.Action, Severity: ECSSeverity(f.Severity),
			ID: eventID(c.Hostname, ev), Dataset: "flowaudit.finding", Module: "flowaudit",
			Start: stamp(f.Evidence.FirstSeen), End: stamp(f.Evidence.LastSeen),
		},
		Network: network{Direction: ecsDirection(f.Direction)},
		Observer: observer{Hostname: c.Hostname, Type: "sensor", Vendor: "flowaudit", Product: "flowaudit",
			Version: c.ToolVersion},
	}
	if ev.Alerting() {
		r.Event.Kind = "alert"
	}
	switch ev.Action {
	case Opened:
		r.Event.Type = []string{"start"}
	case Resolved:
		r.Event.Type = []string{"end"}
	default:
		r.Event.Type = []string{"change"}
	}
	if len(c.Interfaces) == 1 {
		r.Observer.Ingress = &obsIngress{}
		r.Observer.Ingress.Interface.Name = c.Interfaces[0]
	}
	// The service: transport, port, and the top peer on its side.
	if f.Proto != "" {
		if p, err := snapshot.ParseProto(f.Proto); err == nil {
			r.Network.Transport = ecsTransport(p)
			r.Network.IANANumber = strconv.Itoa(int(p))
		}
	}
	port := 0
	if n, err := strconv.Atoi(f.Port); err == nil && n > 0 && n <= 65535 {
		port = n
	}
	var ips []string
	for _, p := range f.Evidence.TopPeers {
		if p.Addr.IsValid() {
			ips = append(ips, p.Addr.String())
		}
	}
	top := ""
	if len(ips) > 0 {
		top = ips[0]
		r.Related = &related{IP: ips}
	}
	switch f.Direction {
	case snapshot.Inbound:
		if top != "" {
			r.Source = &endpoint{IP: top}
		}
		if port != 0 {
			r.Destination = &endpoint{Port: port}
		}
	case snapshot.Outbound:
		if top != "" || port != 0 {
			r.Destination = &endpoint{IP: top, Port: port}
		}
	}
	m := c.Matrix
	fa := &r.Flowaudit
	fa.Format = Format
	fa.Interfaces = append([]string{}, c.Interfaces...)
	if m != nil {
		fa.Matrix = matrixFields{Product: m.Product, ProductName: m.ProductName, Version: m.Version, Role: m.Role,
			Conditions: append([]string{}, m.Conditions...)}
	}
	if fa.Matrix.Conditions == nil {
		fa.Matrix.Conditions = []string{}
	}
	fa.Finding = findingFields{ID: f.ID, Kind: string(f.Kind), Severity: f.Severity.String(), Direction: f.Direction.String(),
		Proto: f.Proto, Port: f.Port, Summary: f.Summary, FirstReported: stamp(ev.FirstReported), LastPresent: stamp(ev.LastPresent)}
	if p := ev.Previous; p != nil {
		fa.Finding.Previous = &previousRef{ID: p.ID, Kind: string(p.Kind), Severity: p.Severity.String()}
	}
	fa.Evidence = evidence(&f.Evidence)
	if rr := f.Rule; rr != nil {
		r.Rule = &ruleFields{ID: rr.ID, Name: rr.Purpose, Reference: rr.Citation.URL}
		if m != nil {
			r.Rule.Ruleset = m.Product + "@" + m.Version + " " + m.Role
		}
		if r.Rule.Name == "" {
			r.Rule.Name = rr.ID
		}
		fa.Rule = &mrule{ID: rr.ID, Direction: rr.Direction.String(), Proto: rr.Proto, Ports: rr.Ports, Peer: rr.Peer,
			Requirement: rr.Requirement.String(), Condition: rr.Condition, Purpose: rr.Purpose}
		if rr.Source.File != "" {
			fa.Rule.Source = rr.Source.String()
		}
		cit := rr.Citation
		fa.Citation = &citation{Doc: cit.Doc, Title: cit.Title, Source: cit.Source, URL: cit.URL, Section: cit.Section,
			Quote: cit.Quote, Note: cit.Note}
	}
	return r
}

func evidence(e *audit.Evidence) evidenceFields {
	out := evidenceFields{
		Packets: e.Packets, Bytes: e.Bytes, Peers: e.Peers, PeersEstimated: e.PeersEstimated,
		FirstSeen: stamp(e.FirstSeen), LastSeen: stamp(e.LastSeen), Ports: e.Ports, Listening: e.Listening,
		DirectionInferred: e.DirectionInferred, PeersUnknownPackets: e.PeersUnknownPackets, PeersUnknown: e.PeersUnknown,
		FloodPackets: e.FloodPackets, Handshake: e.Handshake,
	}
	for _, p := range e.TopPeers {
		q := peer{Peers: p.Peers, Packets: p.Packets, Bytes: p.Bytes}
		if p.Prefix.IsValid() {
			q.Prefix = p.Prefix.String()
		} else {
			q.IP = p.Addr.String()
		}
		out.TopPeers = append(out.TopPeers, q)
	}
	if d, err := time.ParseDuration(e.Window); err == nil {
		s := d.Seconds()
		out.WindowSeconds = &s
	}
	for _, s := range e.Services {
		out.Services = append(out.Services, service{Direction: s.Direction.String(), Proto: s.Proto, Port: s.Port,
			Packets: s.Packets, Peers: s.Peers, Folded: s.Folded, Unchecked: s.Unchecked, Prefixes: s.Prefixes})
	}
	if fl := e.Flood; fl != nil {
		o := &flood{Peers: fl.Peers, HalfOpenSYNs: fl.HalfOpenSYNs, Start: stamp(fl.Start), End: stamp(fl.End),
			RatePerSecond: fl.Rate, RateOf: fl.RateOf, PeersThreshold: fl.PeersThreshold, SYNThreshold: fl.SYNThreshold,
			RateThresholdPerS: fl.RateThreshold, Trigger: splitComma(fl.Trigger)}
		if d, err := time.ParseDuration(fl.Span); err == nil {
			o.SpanSeconds = d.Seconds()
		}
		out.Flood = o
	}
	if in := e.Interrupted; in != nil {
		out.Interrupted = &interrupted{Signal: in.Signal, At: stamp(in.At), PlannedEnd: stamp(in.PlannedEnd), Reason: in.Reason}
	}
	return out
}

func splitComma(s string) []string {
	out := []string{}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// ecsDirection is network.direction: ingress for traffic a peer initiated
// towards the observed host, egress for traffic the host initiated.
func ecsDirection(d snapshot.Direction) string {
	switch d {
	case snapshot.Inbound:
		return "ingress"
	case snapshot.Outbound:
		return "egress"
	}
	return "unknown"
}

// ecsTransport is network.transport: the IANA keyword, lower case.
func ecsTransport(p snapshot.Proto) string {
	if p == snapshot.ICMPv6 {
		return "ipv6-icmp"
	}
	return p.String()
}

// eventID is stable for one event: the same host, finding, action and
// time give the same ID, so a SIEM can drop a duplicate delivery.
func eventID(host string, ev *Event) string {
	h := sha256.New()
	for _, s := range []string{host, ev.Finding.ID, ev.Action, stamp(ev.Time)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
