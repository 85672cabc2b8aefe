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
	AuditIncomplete      Kind = "audit-incomplete"
	OptionalInUse        Kind = "optional-in-use"
)

// Kinds lists every kind, in report order.
var Kinds = []Kind{AuditIncomplete, UnexpectedOpenPort, PeerOutOfZone, RequiredPortClosed, RequiredPortFiltered,
	UndocumentedFlow, DeprecatedPort, ScanSuspected, MissingRequired, OptionalInUse}

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
}

func refOf(r *catalog.Rule) *RuleRef {
	if r == nil {
		return nil
	}
	return &RuleRef{
		ID: r.ID, Direction: r.Direction, Proto: r.ProtoString(), Ports: r.PortString(), Peer: r.Peer.String(),
		Requirement: r.Requirement, Condition: r.Condition, Purpose: r.Purpose, Citation: r.Citation, Source: r.Source,
	}
}

// PeerCount is one peer and how much traffic it had.
type PeerCount struct {
	Addr    netip.Addr `json:"addr"`
	Packets uint64     `json:"packets"`
	Bytes   uint64     `json:"bytes"`
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
	Rule     *RuleRef `json:"rule,omitempty"`
	Evidence Evidence `json:"evidence"`
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
