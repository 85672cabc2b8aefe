package audit

import (
	"net/netip"
	"strings"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// FlowKind is how the audit engine sees one flow against a matrix.
type FlowKind uint8

const (
	// FlowInfrastructure: ICMP errors, neighbour discovery, router and
	// multicast listener messages; counted, never audited.
	FlowInfrastructure FlowKind = iota
	// FlowUnclassified: non-first fragments and port-carrying flows of
	// unknown direction.
	FlowUnclassified
	// FlowUndocumented: no matrix rule has the flow's direction, protocol
	// and port.
	FlowUndocumented
	// FlowDocumented: a rule has the port and its (bound) peer contains
	// the flow's peer.
	FlowDocumented
	// FlowUnverified: a rule has the port but the site binds none of the
	// matching rules' peers, so the peer cannot be checked.
	FlowUnverified
	// FlowOutOfZone: rules have the port, the site binds their peers, and
	// none contains the flow's peer.
	FlowOutOfZone
)

var flowKindNames = [...]string{"infrastructure", "unclassified", "undocumented", "documented", "unverified", "out-of-zone"}

func (k FlowKind) String() string {
	if int(k) < len(flowKindNames) {
		return flowKindNames[k]
	}
	return "flowkind(?)"
}

// Flow states, from the handshake evidence of a flow (FlowClass.State).
const (
	StateOpen       = "open"       // answered: SYN-ACK, or packets back
	StateClosed     = "closed"     // RST or ICMP port unreachable
	StateFiltered   = "filtered"   // SYN without any answer, or ICMP admin-prohibited
	StateUnanswered = "unanswered" // traffic, no answer and no refusal (normal for one-way UDP)
)

// FlowClass is the engine's classification of one snapshot flow.
type FlowClass struct {
	Flow *snapshot.Flow
	Kind FlowKind
	// Rules are the matrix rules the flow falls under: for
	// FlowDocumented every rule whose bound peer contains the flow's peer,
	// for FlowUnverified every matching rule whose peer the site does not
	// bind, for FlowOutOfZone every rule whose port it used.
	Rules []*catalog.Rule
	// State is one of the State* constants.
	State string
}

// Classify tells, for every flow of snap, whether the matrix documents it
// and whether its peer is in the documented zone, with the same rules the
// audit engine applies (Run): infrastructure and unclassified traffic is
// set apart, a flow's candidate rules are those with its direction,
// protocol and port, and a peer is in zone when the site binds a
// candidate's peer and contains the address. A folded flow (PeerPrefix,
// no Peer) is judged on its prefix: documented when the prefix lies wholly
// inside a bound candidate's peer, FlowOutOfZone when it is disjoint from
// every one, FlowUnverified when it straddles a zone's edge (its peers
// cannot be checked, Rules are the rules whose zone it straddles). A flow
// without any peer is FlowUnverified under every candidate rule (or
// FlowUndocumented). m may be nil: every auditable flow is then
// undocumented. The result is in snap.Flows order; snap.Overflow entries
// are not classified.
func Classify(snap *snapshot.Snapshot, m *catalog.Matrix, site *catalog.Site) []FlowClass {
	if m == nil {
		m = &catalog.Matrix{}
	}
	a := &auditor{o: Options{Matrix: m, Site: site}, snap: snap}
	for i := range m.Rules {
		a.rules = append(a.rules, newRuleObs(&m.Rules[i]))
	}
	out := make([]FlowClass, len(snap.Flows))
	for i := range snap.Flows {
		f := &snap.Flows[i]
		c := FlowClass{Flow: f, State: state(f).String()}
		switch {
		case infrastructure(f):
			c.Kind = FlowInfrastructure
		case f.Fragment || (f.Direction == snapshot.Unknown && (f.Proto.HasPorts() || f.Proto.IsICMP())):
			c.Kind = FlowUnclassified
		case f.Folded():
			c.Kind, c.Rules = a.classifyPrefix(a.candidates(serviceOf(f)), f.PeerPrefix)
		case !f.Peer.IsValid():
			// No peer at all (an overflow entry): documented or not, but
			// never checkable against a zone.
			c.Kind = FlowUndocumented
			if cands := a.candidates(serviceOf(f)); len(cands) > 0 {
				c.Kind = FlowUnverified
				for _, ro := range cands {
					c.Rules = append(c.Rules, ro.rule)
				}
			}
		default:
			c.Kind, c.Rules = a.classifyPeer(a.candidates(serviceOf(f)), f)
		}
		out[i] = c
	}
	return out
}

// classifyPeer sorts a peer against the candidate rules of its service the
// way matchPeer does: in zone of every bound rule that contains it, else
// unverified under every rule the site does not bind, else out of zone.
// Rules the site does not bind that are all broad (BroadPorts) give way to
// a bound rule the peer is outside of: the flow is out of zone.
func (a *auditor) classifyPeer(cands []*ruleObs, f *snapshot.Flow) (FlowKind, []*catalog.Rule) {
	if len(cands) == 0 {
		return FlowUndocumented, nil
	}
	var match, unbound, outOf []*catalog.Rule
	for _, ro := range cands {
		ok, bound := a.contains(ro.rule.Peer, f.Peer, f.FirstSeen)
		switch {
		case bound && ok:
			match = append(match, ro.rule)
		case !bound:
			unbound = append(unbound, ro.rule)
		default:
			outOf = append(outOf, ro.rule)
		}
	}
	switch {
	case len(match) > 0:
		return FlowDocumented, match
	case len(unbound) > 0 && !(len(outOf) > 0 && allBroadRules(unbound)):
		var narrow []*catalog.Rule
		for _, r := range unbound {
			if !broadRule(r) {
				narrow = append(narrow, r)
			}
		}
		if len(narrow) > 0 {
			return FlowUnverified, narrow
		}
		return FlowUnverified, unbound
	}
	return FlowOutOfZone, outOf
}

// allBroadRules: every rule of rs is broad (broadRule).
func allBroadRules(rs []*catalog.Rule) bool {
	for _, r := range rs {
		if !broadRule(r) {
			return false
		}
	}
	return len(rs) > 0
}

// classifyPrefix sorts a folded prefix of peers like matchPrefix does:
// documented when it lies wholly inside a bound rule's peer, unverified
// when it straddles the edge of one (its peers cannot be checked) or the
// site binds no candidate's peer, out of zone when it is disjoint from
// every bound candidate.
func (a *auditor) classifyPrefix(cands []*ruleObs, p netip.Prefix) (FlowKind, []*catalog.Rule) {
	if len(cands) == 0 {
		return FlowUndocumented, nil
	}
	m := a.matchPrefix(cands, p)
	rules := func(ros []*ruleObs) []*catalog.Rule {
		out := make([]*catalog.Rule, len(ros))
		for i, ro := range ros {
			out[i] = ro.rule
		}
		return out
	}
	switch {
	case len(m.inside) > 0:
		return FlowDocumented, rules(m.inside)
	case len(m.partly) > 0:
		return FlowUnverified, rules(m.partly)
	case len(m.unbound) > 0:
		return FlowUnverified, rules(m.unbound)
	}
	var out []*catalog.Rule
	for _, ro := range cands {
		out = append(out, ro.rule)
	}
	return FlowOutOfZone, out
}

// SuspectedScanners returns the peers a report names as suspected
// scanners (scan-suspected findings).
func SuspectedScanners(r *Report) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, f := range r.Findings {
		if f.Kind != ScanSuspected {
			continue
		}
		if a, err := netip.ParseAddr(strings.TrimPrefix(f.ID, string(ScanSuspected)+"/")); err == nil {
			out[a] = true
		}
	}
	return out
}
