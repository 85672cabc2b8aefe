package audit

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Kind is the kind of a finding.
type Kind string

// The finding kinds (docs/FINDINGS.md explains each).
const (
	UnexpectedOpenPort   Kind = "unexpected-open-port"
	UndocumentedFlow     Kind = "undocumented-flow"
	PeerOutOfZone        Kind = "peer-out-of-zone"
	MissingRequired      Kind = "missing-required"
	RequiredPortClosed   Kind = "required-port-closed"
	RequiredPortFiltered Kind = "required-port-filtered"
	DeprecatedPort       Kind = "deprecated-port"
	ScanSuspected        Kind = "scan-suspected"
	FloodSuspected       Kind = "flood-suspected"
	AuditIncomplete      Kind = "audit-incomplete"
	OptionalInUse        Kind = "optional-in-use"
	// UnverifiedFlow: traffic only a broad documented port range covers
	// (BroadPorts), toward a peer the site does not bind.
	UnverifiedFlow Kind = "unverified-flow"
)

// Kinds lists every kind, in report order: within a severity, what
// qualifies the whole report (audit-incomplete) first, then the matrix
// conformance findings, then attacks reported once (scan, flood), which
// come after missing-required so a flood never pushes a conformance
// finding down (docs/FINDINGS.md).
var Kinds = []Kind{AuditIncomplete, UnexpectedOpenPort, PeerOutOfZone, RequiredPortClosed, RequiredPortFiltered,
	UndocumentedFlow, UnverifiedFlow, DeprecatedPort, ScanSuspected, MissingRequired, FloodSuspected, OptionalInUse}

// Severity orders findings; --fail-on compares against it.
type Severity uint8

const (
	Info Severity = iota
	Low
	Medium
	High
)

var severityNames = [...]string{"info", "low", "medium", "high"}

func (s Severity) String() string {
	if int(s) < len(severityNames) {
		return severityNames[s]
	}
	return "severity(" + strconv.Itoa(int(s)) + ")"
}

// ParseSeverity parses info, low, medium or high.
func ParseSeverity(s string) (Severity, error) {
	for i, n := range severityNames {
		if strings.EqualFold(s, n) {
			return Severity(i), nil
		}
	}
	return 0, fmt.Errorf("unknown severity %q (want info, low, medium or high)", s)
}

func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err == nil {
		*s = v
	}
	return err
}

// RuleRef is the matrix rule a finding is about.
type RuleRef struct {
	ID          string              `json:"id"`
	Direction   snapshot.Direction  `json:"direction"`
	Proto       string              `json:"proto"`
	Ports       string              `json:"ports"`
	Peer        string              `json:"peer"`
	Requirement catalog.Requirement `json:"requirement"`
	Condition   string              `json:"condition,omitempty"`
	Purpose     string              `json:"purpose"`
	Citation    catalog.Citation    `json:"citation"`
	Source      catalog.SourcePos   `json:"source"`
	// PortsFrom is the site file line that set Ports, for a configurable
	// port the site overrode; DefaultPorts the document's ports then.
	PortsFrom    string `json:"ports_from,omitempty"`
	DefaultPorts string `json:"default_ports,omitempty"`
}

func refOf(r *catalog.Rule) *RuleRef {
	if r == nil {
		return nil
	}
	ref := &RuleRef{
		ID: r.ID, Direction: r.Direction, Proto: r.ProtoString(), Ports: r.PortString(), Peer: r.Peer.String(),
		Requirement: r.Requirement, Condition: r.Condition, Purpose: r.Purpose, Citation: r.Citation, Source: r.Source,
	}
	if r.DefaultPorts != nil {
		ref.PortsFrom = r.PortsFrom.String()
		d := *r
		d.Ports = r.DefaultPorts
		ref.DefaultPorts = d.PortString()
	}
	return ref
}

// PeerCount is one peer, or one prefix of peers, and how much traffic it
// had.
type PeerCount struct {
	// Addr is the peer; zero when Prefix is set.
	Addr netip.Addr `json:"addr,omitzero"`
	// Prefix is set instead of Addr for peers the recorder folded into a
	// prefix (a /24, /48, or /0 for "other peers") and for the source
	// prefixes of a flood; Peers then estimates the distinct peers in it.
	Prefix  netip.Prefix `json:"prefix,omitzero"`
	Peers   uint64       `json:"peers,omitempty"`
	Packets uint64       `json:"packets"`
	Bytes   uint64       `json:"bytes"`
	// Names are the host names of Addr: given by the recording's DNS
	// answers or bound by the site's hosts: (docs/DNS.md).
	Names []string `json:"names,omitempty"`
}

// String is the address, or the prefix with its estimated peers:
// "10.1.2.0/24 (~40 peers)"; /0 reads "other peers".
func (p PeerCount) String() string {
	if !p.Prefix.IsValid() {
		return p.Addr.String() + namesSuffix(p.Names)
	}
	name := prefixName(p.Prefix)
	if p.Peers == 0 {
		return name
	}
	return fmt.Sprintf("%s (~%d peers)", name, p.Peers)
}

// namesSuffix is " (a.example, b.example)" for a peer's host names.
func namesSuffix(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}

// ServiceCount is one service and how much of its traffic a finding is
// about (audit-incomplete: the packets that lost their peer, the peers
// that were folded or could not be checked against a zone).
type ServiceCount struct {
	Direction snapshot.Direction `json:"direction"`
	Proto     string             `json:"proto"`
	Port      string             `json:"port"`
	Packets   uint64             `json:"packets"`
	// Peers estimates the distinct peers behind those packets (0: unknown).
	Peers uint64 `json:"peers,omitempty"`
	// Folded lists the prefix lengths the service's peers were folded to
	// ("/24", "/48", "/0" = other peers).
	Folded []string `json:"folded,omitempty"`
	// Unchecked lists the rule peers (zones, roles) this traffic could
	// not be checked against; Prefixes the folded prefixes that straddle
	// their edge (audit-incomplete/zones-unchecked).
	Unchecked []string `json:"unchecked,omitempty"`
	Prefixes  []string `json:"prefixes,omitempty"`
}

// String is "in tcp/22".
func (s ServiceCount) String() string {
	return dirShort(s.Direction.String()) + " " + s.Proto + "/" + s.Port
}

// FloodEvidence details a flood-suspected finding.
type FloodEvidence struct {
	// Trigger names the thresholds crossed: "peers", "half-open-syns" or
	// both, comma-separated.
	Trigger string `json:"trigger"`
	// Peers estimates the distinct peers of the service in the window.
	Peers uint64 `json:"peers"`
	// HalfOpenSYNs counts SYNs that never completed a handshake (a lower
	// bound for folded and overflow entries).
	HalfOpenSYNs uint64 `json:"half_open_syns"`
	// Start and End bound the flood's traffic; Span is their distance.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Span  string    `json:"span"`
	// Rate is RateOf ("half-open SYNs" or "packets") per second over Span
	// (at least one second).
	Rate   float64 `json:"rate"`
	RateOf string  `json:"rate_of"`
	// The thresholds in force (Options.FloodPeers, FloodSYNs, FloodRate).
	PeersThreshold int     `json:"peers_threshold"`
	SYNThreshold   int     `json:"syn_threshold"`
	RateThreshold  float64 `json:"rate_threshold"`
}

// Evidence is what was observed behind a finding.
type Evidence struct {
	Packets   uint64            `json:"packets"`
	Bytes     uint64            `json:"bytes"`
	FirstSeen time.Time         `json:"first_seen,omitzero"`
	LastSeen  time.Time         `json:"last_seen,omitzero"`
	Peers     int               `json:"peers"`
	TopPeers  []PeerCount       `json:"top_peers,omitempty"`
	Handshake snapshot.Evidence `json:"handshake"`
	// Ports lists the ports involved when a finding spans several
	// (scan-suspected).
	Ports []string `json:"ports,omitempty"`
	// DirectionInferred: some of the traffic's direction came from the
	// port heuristic rather than socket state or a handshake.
	DirectionInferred bool `json:"direction_inferred,omitempty"`
	// Listening: a local socket listens on the port (sock_diag).
	Listening bool `json:"listening,omitempty"`
	// Window is the observation window, for missing-required.
	Window string `json:"window,omitempty"`
	// PeersEstimated: Peers includes estimates for peers the recorder
	// folded into prefixes (TopPeers then lists prefixes too).
	PeersEstimated bool `json:"peers_estimated,omitempty"`
	// PeersUnknownPackets counts packets of this traffic that were
	// counted without their peer (the overflow map); PeersUnknown
	// estimates how many distinct peers sent them. Neither is in Peers.
	PeersUnknownPackets uint64 `json:"peers_unknown_packets,omitempty"`
	PeersUnknown        uint64 `json:"peers_unknown,omitempty"`
	// FloodPackets counts packets of a suspected flood's half-open
	// attempts on this service: in Packets and the port's state, never
	// listed per peer (see the flood-suspected finding).
	FloodPackets uint64 `json:"flood_packets,omitempty"`
	// Services lists the services concerned (audit-incomplete findings).
	Services []ServiceCount `json:"services,omitempty"`
	// Flood details a flood-suspected finding.
	Flood *FloodEvidence `json:"flood,omitempty"`
	// Interrupted is the recording's interruption
	// (audit-incomplete/interrupted).
	Interrupted *snapshot.Interruption `json:"interrupted,omitempty"`
}

// Finding is one problem (or, at Info, one notable fact) of an audit.
type Finding struct {
	// ID is stable across runs for the same problem (watch uses it to
	// report a finding once).
	ID        string             `json:"id"`
	Kind      Kind               `json:"kind"`
	Severity  Severity           `json:"severity"`
	Direction snapshot.Direction `json:"direction"`
	Proto     string             `json:"proto,omitempty"`
	Port      string             `json:"port,omitempty"`
	// Summary is the one-line explanation a person reads first.
	Summary string `json:"summary"`
	// Rule is the matrix rule concerned; nil for undocumented traffic.
	Rule *RuleRef `json:"rule,omitempty"`
	// AlsoRules are the IDs of further rules of the same service the
	// same traffic falls under (optional-in-use): reported once, under
	// Rule.
	AlsoRules []string `json:"also_rules,omitempty"`
	Evidence  Evidence `json:"evidence"`
	// Cross is set on the cross-node findings of a deployment audit
	// (CrossKinds): the two nodes and what each end saw.
	Cross *CrossEvidence `json:"cross,omitempty"`
}

// portLabel formats a flow's port for people: "22", "icmp type 8", "-".
func portLabel(p snapshot.Proto, port uint16) string {
	switch {
	case p.HasPorts():
		return strconv.Itoa(int(port))
	case p.IsICMP():
		return fmt.Sprintf("type %d code %d", port>>8, port&0xff)
	}
	return "-"
}

// PortRanges writes a list of "proto/port" names (Evidence.Ports, sorted
// by protocol, then port number) with runs of consecutive ports of one
// protocol as ranges: "tcp/1-21, tcp/23-79, tcp/6379, udp/53". Names
// that are not "proto/number" (ICMP types) are kept as they are.
func PortRanges(ports []string) string {
	var out []string
	var proto string
	lo, hi := -1, -1
	flush := func() {
		switch {
		case lo < 0:
		case lo == hi:
			out = append(out, fmt.Sprintf("%s/%d", proto, lo))
		default:
			out = append(out, fmt.Sprintf("%s/%d-%d", proto, lo, hi))
		}
		lo, hi = -1, -1
	}
	for _, p := range ports {
		pr, num, ok := strings.Cut(p, "/")
		n, err := strconv.Atoi(num)
		if !ok || err != nil {
			flush()
			out = append(out, p)
			continue
		}
		if lo >= 0 && pr == proto && n == hi+1 {
			hi = n
			continue
		}
		flush()
		proto, lo, hi = pr, n, n
	}
	flush()
	return strings.Join(out, ", ")
}
