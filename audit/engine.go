// Package audit compares what a snapshot observed with the documented port
// matrix of a role and the addresses a site binds to the matrix's zones,
// and reports findings. It is pure Go: it reads snapshot files, never the
// kernel.
package audit

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Options configure an audit.
type Options struct {
	// Matrix is the effective matrix of the audited role (required).
	Matrix *catalog.Matrix
	// Site binds zones, roles and DNS names to addresses. Nil: nothing is
	// bound, and peer checks are reported as unverified.
	Site *catalog.Site
	// MinWindow: a shorter window is reported as audit-incomplete
	// (default DefaultMinWindow).
	MinWindow time.Duration
	// ScanPorts: a peer whose inbound attempts reach at least this many
	// distinct undocumented or out-of-zone ports without an answer is a
	// suspected scanner, reported once (default DefaultScanPorts).
	ScanPorts int
	// TopPeers bounds the peers listed per finding (default 5).
	TopPeers int
	// ToolVersion and Now fill the report header (Now defaults to time.Now).
	ToolVersion string
	Now         func() time.Time
}

// Defaults.
const (
	DefaultMinWindow = time.Minute
	DefaultScanPorts = 10
	defaultTopPeers  = 5
)

// ErrNoMatrix is returned when Options.Matrix is nil.
var ErrNoMatrix = errors.New("audit: no matrix given")

// flowState is what the handshake evidence says about one flow.
type flowState uint8

const (
	stateUnanswered flowState = iota // traffic, no answer and no refusal (normal for one-way UDP)
	stateOpen                        // answered: SYN-ACK, or packets back
	stateClosed                      // RST or ICMP port unreachable
	stateFiltered                    // SYN without any answer, or ICMP admin-prohibited
)

var stateNames = [...]string{"unanswered", "open", "closed", "filtered"}

func (s flowState) String() string { return stateNames[s] }

// state classifies a flow from the point of view of its service.
func state(f *snapshot.Flow) flowState {
	e := f.Evidence
	switch f.Direction {
	case snapshot.Inbound:
		switch {
		case e.SynAckOut > 0:
			return stateOpen
		case f.Proto == snapshot.TCP && e.SynIn == 0 && f.PacketsOut > 0 && e.RstOut == 0:
			return stateOpen // connection established before the window
		case f.Proto != snapshot.TCP && f.PacketsOut > 0:
			return stateOpen // UDP/SCTP/ICMP echo answered
		case e.RstOut > 0 || e.ICMPClosedOut > 0:
			return stateClosed
		case e.ICMPFilteredOut > 0 || (f.Proto == snapshot.TCP && e.SynIn > 0):
			return stateFiltered
		}
	case snapshot.Outbound:
		switch {
		case e.SynAckIn > 0:
			return stateOpen
		case f.Proto == snapshot.TCP && e.SynOut == 0 && f.PacketsIn > 0 && e.RstIn == 0:
			return stateOpen
		case f.Proto != snapshot.TCP && f.PacketsIn > 0 && e.ICMPClosedIn == 0 && e.ICMPFilteredIn == 0:
			return stateOpen
		case e.RstIn > 0 || e.ICMPClosedIn > 0:
			return stateClosed
		case e.ICMPFilteredIn > 0 || (f.Proto == snapshot.TCP && e.SynOut > 0):
			return stateFiltered
		}
	}
	return stateUnanswered
}

// infrastructure reports flows that are network housekeeping rather than
// services: ICMP errors, neighbour discovery, router and multicast
// listener messages. They are counted, not audited.
func infrastructure(f *snapshot.Flow) bool {
	if !f.Proto.IsICMP() {
		return false
	}
	typ := f.Port >> 8
	if f.Proto == snapshot.ICMP {
		return typ != 8 // anything but echo
	}
	return typ != 128
}

// service is the (direction, protocol, port) a group of flows shares.
type service struct {
	dir   snapshot.Direction
	proto snapshot.Proto
	port  uint16
}

func (s service) String() string {
	return fmt.Sprintf("%s %s/%s", s.dir, s.proto, portLabel(s.proto, s.port))
}

// obs accumulates flows into evidence.
type obs struct {
	ev       Evidence
	peers    map[netip.Addr]*PeerCount
	inferred bool
	states   [4]int
}

func newObs() *obs { return &obs{peers: map[netip.Addr]*PeerCount{}} }

func (o *obs) add(f *snapshot.Flow) {
	o.ev.Packets += f.Packets()
	o.ev.Bytes += f.Bytes()
	o.ev.widen(f.FirstSeen, f.LastSeen)
	o.ev.Handshake.Add(f.Evidence)
	if f.DirectionInferred {
		o.inferred = true
	}
	p := o.peers[f.Peer]
	if p == nil {
		p = &PeerCount{Addr: f.Peer}
		o.peers[f.Peer] = p
	}
	p.Packets += f.Packets()
	p.Bytes += f.Bytes()
	o.states[state(f)]++
}

// widen extends the evidence's first/last seen to cover [first, last];
// a zero first is "unknown" and never moves FirstSeen.
func (e *Evidence) widen(first, last time.Time) {
	if !first.IsZero() && (e.FirstSeen.IsZero() || first.Before(e.FirstSeen)) {
		e.FirstSeen = first
	}
	if last.After(e.LastSeen) {
		e.LastSeen = last
	}
}

func (o *obs) empty() bool { return len(o.peers) == 0 }

// evidence returns the accumulated evidence with the top n peers.
func (o *obs) evidence(n int) Evidence {
	ev := o.ev
	ev.Peers = len(o.peers)
	ev.DirectionInferred = o.inferred
	ps := make([]PeerCount, 0, len(o.peers))
	for _, p := range o.peers {
		ps = append(ps, *p)
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Packets != ps[j].Packets {
			return ps[i].Packets > ps[j].Packets
		}
		return ps[i].Addr.Less(ps[j].Addr)
	})
	if len(ps) > n {
		ps = ps[:n]
	}
	ev.TopPeers = ps
	return ev
}

// verdict of a group of attempts: open if any was answered.
func (o *obs) verdict() flowState {
	switch {
	case o.states[stateOpen] > 0:
		return stateOpen
	case o.states[stateClosed] > 0:
		return stateClosed
	case o.states[stateFiltered] > 0:
		return stateFiltered
	}
	return stateUnanswered
}

// auditor holds the state of one run.
type auditor struct {
	o        Options
	snap     *snapshot.Snapshot
	findings map[string]*Finding
	rules    []*ruleObs
}

type ruleObs struct {
	rule     *catalog.Rule
	inZone   *obs
	outZone  *obs
	unbound  bool // some traffic matched only because the site does not bind the rule's peer
	anyBound bool // some traffic matched a bound peer
}

// Run audits snap against o.Matrix.
func Run(snap *snapshot.Snapshot, o Options) (*Report, error) {
	if o.Matrix == nil {
		return nil, ErrNoMatrix
	}
	if o.MinWindow == 0 {
		o.MinWindow = DefaultMinWindow
	}
	if o.ScanPorts == 0 {
		o.ScanPorts = DefaultScanPorts
	}
	if o.TopPeers == 0 {
		o.TopPeers = defaultTopPeers
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &auditor{o: o, snap: snap, findings: map[string]*Finding{}}
	for i := range o.Matrix.Rules {
		a.rules = append(a.rules, &ruleObs{rule: &o.Matrix.Rules[i], inZone: newObs(), outZone: newObs()})
	}
	rep := newReport(snap, o)
	a.incomplete(rep)
	a.flows(rep)
	a.ruleFindings()
	a.listeners()
	rep.Rules = a.ruleStatus()
	rep.setFindings(a.findings)
	return rep, nil
}

func (a *auditor) add(f *Finding) *Finding {
	if old, ok := a.findings[f.ID]; ok {
		return old
	}
	a.findings[f.ID] = f
	return f
}

// incomplete reports why the snapshot may not show everything.
func (a *auditor) incomplete(rep *Report) {
	st := a.snap.Stats
	if st.FlowInsertFailed > 0 || st.FlowEvictions > 0 {
		a.add(&Finding{ID: "audit-incomplete/map-full", Kind: AuditIncomplete, Severity: High,
			Summary: fmt.Sprintf("the flow map (%d entries) was full: %d packets not counted, %d flows evicted; findings may be missing (raise --max-flows)",
				st.FlowCapacity, st.FlowInsertFailed, st.FlowEvictions),
		})
	}
	if w := a.snap.Window(); w < a.o.MinWindow {
		a.add(&Finding{ID: "audit-incomplete/short-window", Kind: AuditIncomplete, Severity: Medium,
			Summary:  fmt.Sprintf("the observation window is %s, shorter than %s: rare but required traffic may not have happened yet", w.Round(time.Second), a.o.MinWindow),
			Evidence: Evidence{Window: w.Round(time.Second).String()},
		})
	}
	if st.ConnInsertFailed > 0 {
		a.add(&Finding{ID: "audit-incomplete/conn-full", Kind: AuditIncomplete, Severity: Low,
			Summary: fmt.Sprintf("%d connection orientations could not be remembered; those packets' direction came from the port heuristic", st.ConnInsertFailed),
		})
	}
}

// flows walks every flow: matches it to rules, finds undocumented traffic,
// out-of-zone peers and scanners.
func (a *auditor) flows(rep *Report) {
	groups := map[service][]*snapshot.Flow{}
	var order []service
	for i := range a.snap.Flows {
		f := &a.snap.Flows[i]
		switch {
		case infrastructure(f):
			rep.Infrastructure.Packets += f.Packets()
			rep.Infrastructure.Bytes += f.Bytes()
			continue
		case f.Fragment || (f.Direction == snapshot.Unknown && (f.Proto.HasPorts() || f.Proto.IsICMP())):
			rep.Unclassified.Packets += f.Packets()
			rep.Unclassified.Bytes += f.Bytes()
			continue
		}
		s := service{f.Direction, f.Proto, f.Port}
		if _, ok := groups[s]; !ok {
			order = append(order, s)
		}
		groups[s] = append(groups[s], f)
	}

	// Classify every flow first; scanners are decided on the whole picture.
	type hit struct {
		f        *snapshot.Flow
		rules    []*ruleObs // matched rules (in zone or unverified)
		outOf    *ruleObs   // documented port, peer outside every matching rule's zone
		undocSvc bool
	}
	var hits []hit
	for _, s := range order {
		cands := a.candidates(s)
		for _, f := range groups[s] {
			h := hit{f: f}
			if len(cands) == 0 {
				h.undocSvc = true
			} else {
				h.rules, h.outOf = a.matchPeer(cands, f.Peer)
			}
			hits = append(hits, h)
		}
	}

	// Suspected scanners: many distinct unanswered undocumented or
	// out-of-zone inbound ports from one peer.
	scanPorts := map[netip.Addr]map[service]bool{}
	for _, h := range hits {
		if h.f.Direction != snapshot.Inbound || state(h.f) == stateOpen || !(h.undocSvc || h.outOf != nil) {
			continue
		}
		if scanPorts[h.f.Peer] == nil {
			scanPorts[h.f.Peer] = map[service]bool{}
		}
		scanPorts[h.f.Peer][service{h.f.Direction, h.f.Proto, h.f.Port}] = true
	}
	scanners := map[netip.Addr]*obs{}
	for p, ports := range scanPorts {
		if len(ports) >= a.o.ScanPorts {
			scanners[p] = newObs()
		}
	}

	undoc := map[service]*obs{}
	outOfZone := map[*ruleObs]map[service]*obs{}
	for _, h := range hits {
		f := h.f
		if sc, ok := scanners[f.Peer]; ok && f.Direction == snapshot.Inbound && state(f) != stateOpen && (h.undocSvc || h.outOf != nil) {
			sc.add(f)
			sc.ev.Ports = append(sc.ev.Ports, fmt.Sprintf("%s/%s", f.Proto, portLabel(f.Proto, f.Port)))
			continue
		}
		s := service{f.Direction, f.Proto, f.Port}
		switch {
		case h.undocSvc:
			if undoc[s] == nil {
				undoc[s] = newObs()
			}
			undoc[s].add(f)
		case len(h.rules) > 0:
			for _, ro := range h.rules {
				ro.inZone.add(f)
			}
		case h.outOf != nil:
			h.outOf.outZone.add(f)
			if outOfZone[h.outOf] == nil {
				outOfZone[h.outOf] = map[service]*obs{}
			}
			if outOfZone[h.outOf][s] == nil {
				outOfZone[h.outOf][s] = newObs()
			}
			outOfZone[h.outOf][s].add(f)
		}
		rep.addCell(s, len(h.rules) > 0 || h.outOf != nil, f, a.o.Site)
	}

	for s, o := range undoc {
		a.undocumented(s, o)
	}
	for ro, bySvc := range outOfZone {
		for s, o := range bySvc {
			a.outOfZone(ro, s, o)
		}
	}
	for p, o := range scanners {
		sort.Strings(o.ev.Ports)
		ev := o.evidence(a.o.TopPeers)
		a.add(&Finding{
			ID: "scan-suspected/" + p.String(), Kind: ScanSuspected, Severity: Medium, Direction: snapshot.Inbound,
			Summary: fmt.Sprintf("%s tried %d undocumented or out-of-zone ports and was refused or ignored: a scan, reported once",
				p, len(scanPorts[p])),
			Evidence: ev,
		})
	}
}

// candidates are the matrix rules for a service, whatever the peer.
func (a *auditor) candidates(s service) []*ruleObs {
	var out []*ruleObs
	for _, ro := range a.rules {
		r := ro.rule
		if s.dir != snapshot.Unknown && r.Direction != s.dir {
			continue
		}
		if r.Matches(s.proto, s.port) {
			out = append(out, ro)
		}
	}
	return out
}

// matchPeer finds the rules a peer's traffic falls under: every candidate
// whose bound peer contains it (an address in two zones satisfies both
// rules), else every candidate whose peer the site does not bind
// (unverified). If every candidate's peer is bound and none contains it,
// the peer is out of zone (outOf is the first such rule).
func (a *auditor) matchPeer(cands []*ruleObs, peer netip.Addr) (match []*ruleObs, outOf *ruleObs) {
	var unbound []*ruleObs
	for _, ro := range cands {
		ok, bound := a.contains(ro.rule.Peer, peer)
		switch {
		case bound && ok:
			match = append(match, ro)
		case !bound:
			unbound = append(unbound, ro)
		case outOf == nil:
			outOf = ro
		}
	}
	if len(match) > 0 {
		for _, ro := range match {
			ro.anyBound = true
		}
		return match, nil
	}
	if len(unbound) > 0 {
		for _, ro := range unbound {
			ro.unbound = true
		}
		return unbound, nil
	}
	return nil, outOf
}

func (a *auditor) contains(p catalog.Peer, addr netip.Addr) (ok, bound bool) {
	if p.Kind == catalog.PeerAny {
		return true, true
	}
	if a.o.Site == nil {
		if p.Kind == catalog.PeerCIDR {
			return p.Prefix.Contains(addr), true
		}
		return false, false
	}
	return a.o.Site.Contains(p, addr)
}

func (a *auditor) undocumented(s service, o *obs) {
	ev := o.evidence(a.o.TopPeers)
	port := portLabel(s.proto, s.port)
	f := &Finding{Direction: s.dir, Proto: s.proto.String(), Port: port, Evidence: ev}
	v := o.verdict()
	switch {
	case s.dir == snapshot.Inbound && v == stateOpen:
		f.ID = fmt.Sprintf("unexpected-open-port/%s/%d", s.proto, s.port)
		f.Kind, f.Severity = UnexpectedOpenPort, High
		f.Summary = fmt.Sprintf("%s/%s answers %s but the matrix documents no such inbound port for role %s",
			s.proto, port, plural(ev.Peers, "peer"), a.o.Matrix.Role)
		if s.proto.IsICMP() {
			f.Kind, f.Severity = UndocumentedFlow, Low
			f.ID = fmt.Sprintf("undocumented-flow/%s/%s/%d", s.dir, s.proto, s.port)
			f.Summary = fmt.Sprintf("this host answers %s echo (ping) from %s; the matrix does not document it", s.proto, plural(ev.Peers, "peer"))
		}
	case s.dir == snapshot.Inbound:
		f.ID = fmt.Sprintf("undocumented-flow/%s/%s/%d", s.dir, s.proto, s.port)
		f.Kind, f.Severity = UndocumentedFlow, Low
		f.Summary = fmt.Sprintf("%s tried undocumented inbound %s/%s and got no service (%s)", plural(ev.Peers, "peer"), s.proto, port, v)
	default:
		f.ID = fmt.Sprintf("undocumented-flow/%s/%s/%d", s.dir, s.proto, s.port)
		f.Kind, f.Severity = UndocumentedFlow, Medium
		what := "connects to"
		if s.dir == snapshot.Unknown {
			what = "exchanges"
		}
		f.Summary = fmt.Sprintf("this host %s %s/%s with %s; the matrix does not document it for role %s",
			what, s.proto, port, plural(ev.Peers, "peer"), a.o.Matrix.Role)
		if s.dir == snapshot.Unknown {
			f.Summary = fmt.Sprintf("%s traffic with %s; the matrix does not document %s for role %s", s.proto, plural(ev.Peers, "peer"), s.proto, a.o.Matrix.Role)
		}
	}
	if o.inferred {
		f.Summary += " (direction inferred from port numbers)"
	}
	a.add(f)
}

func (a *auditor) outOfZone(ro *ruleObs, s service, o *obs) {
	r := ro.rule
	ev := o.evidence(a.o.TopPeers)
	sev := High
	if s.dir != snapshot.Inbound {
		sev = Medium
	}
	summary := fmt.Sprintf("%s outside %s reached %s/%s (%s)", plural(ev.Peers, "peer"), r.Peer, s.proto, portLabel(s.proto, s.port), r.Purpose)
	if s.dir == snapshot.Outbound {
		summary = fmt.Sprintf("this host reached %s outside %s on %s/%s (%s)", plural(ev.Peers, "peer"), r.Peer, s.proto, portLabel(s.proto, s.port), r.Purpose)
	}
	a.add(&Finding{
		ID: fmt.Sprintf("peer-out-of-zone/%s/%s/%d", r.ID, s.proto, s.port), Kind: PeerOutOfZone, Severity: sev,
		Direction: s.dir, Proto: s.proto.String(), Port: portLabel(s.proto, s.port), Rule: refOf(r), Evidence: ev, Summary: summary,
	})
}

// ruleFindings: missing, closed, filtered, deprecated and optional-in-use.
func (a *auditor) ruleFindings() {
	window := a.snap.Window().Round(time.Second)
	for _, ro := range a.rules {
		r := ro.rule
		all := newObs()
		for _, o := range []*obs{ro.inZone, ro.outZone} {
			mergeObs(all, o)
		}
		ref := refOf(r)
		base := Finding{Direction: r.Direction, Proto: r.ProtoString(), Port: r.PortString(), Rule: ref}
		if r.Deprecated && !all.empty() {
			f := base
			f.ID, f.Kind, f.Severity = "deprecated-port/"+r.ID, DeprecatedPort, Medium
			f.Evidence = all.evidence(a.o.TopPeers)
			f.Summary = fmt.Sprintf("traffic on %s/%s, which the document says is no longer used in %s %s (%s)",
				r.ProtoString(), r.PortString(), a.o.Matrix.ProductName, a.o.Matrix.Version, r.Purpose)
			a.add(&f)
			continue
		}
		if r.Deprecated {
			continue
		}
		needed := r.Requirement == catalog.Required || r.Requirement == catalog.Conditional
		if !needed {
			if !ro.inZone.empty() {
				f := base
				f.ID, f.Kind, f.Severity = "optional-in-use/"+r.ID, OptionalInUse, Info
				f.Evidence = ro.inZone.evidence(a.o.TopPeers)
				f.Summary = fmt.Sprintf("optional %s %s/%s in use: %s", r.Direction, r.ProtoString(), r.PortString(), r.Purpose)
				a.add(&f)
			}
			continue
		}
		if r.Condition != "" && !strings.HasPrefix(r.Condition, "!") && !ro.inZone.empty() {
			f := base
			f.ID, f.Kind, f.Severity = "optional-in-use/"+r.ID, OptionalInUse, Info
			f.Evidence = ro.inZone.evidence(a.o.TopPeers)
			f.Summary = fmt.Sprintf("%s in use (condition %s): %s %s/%s", r.Purpose, r.Condition, r.Direction, r.ProtoString(), r.PortString())
			a.add(&f)
		}
		switch all.verdict() {
		case stateOpen:
			continue
		case stateClosed:
			f := base
			f.ID, f.Kind, f.Severity = "required-port-closed/"+r.ID, RequiredPortClosed, High
			f.Evidence = all.evidence(a.o.TopPeers)
			f.Summary = fmt.Sprintf("required %s/%s (%s) is closed: %s refused (RST or ICMP port unreachable)",
				r.ProtoString(), r.PortString(), r.Purpose, plural(f.Evidence.Peers, "peer was", "peers were"))
			a.add(&f)
			continue
		case stateFiltered:
			f := base
			f.ID, f.Kind, f.Severity = "required-port-filtered/"+r.ID, RequiredPortFiltered, High
			f.Evidence = all.evidence(a.o.TopPeers)
			f.Summary = fmt.Sprintf("required %s/%s (%s) is filtered: attempts from %s got no answer or an ICMP prohibited",
				r.ProtoString(), r.PortString(), r.Purpose, plural(f.Evidence.Peers, "peer"))
			a.add(&f)
			continue
		}
		if ro.inZone.empty() {
			f := base
			f.ID, f.Kind, f.Severity = "missing-required/"+r.ID, MissingRequired, Medium
			f.Evidence = Evidence{Window: window.String()}
			peer := r.Peer.String()
			f.Summary = fmt.Sprintf("no %s %s/%s traffic with %s in %s, though the document requires it (%s)",
				r.Direction, r.ProtoString(), r.PortString(), peer, window, r.Purpose)
			if !ro.outZone.empty() {
				f.Summary += "; only peers outside that zone used it"
			}
			a.add(&f)
		}
	}
}

func mergeObs(dst, src *obs) {
	for _, p := range src.peers {
		q := dst.peers[p.Addr]
		if q == nil {
			q = &PeerCount{Addr: p.Addr}
			dst.peers[p.Addr] = q
		}
		q.Packets += p.Packets
		q.Bytes += p.Bytes
	}
	dst.ev.Packets += src.ev.Packets
	dst.ev.Bytes += src.ev.Bytes
	dst.ev.widen(src.ev.FirstSeen, src.ev.LastSeen)
	dst.ev.Handshake.Add(src.ev.Handshake)
	dst.inferred = dst.inferred || src.inferred
	for i := range dst.states {
		dst.states[i] += src.states[i]
	}
}

// listeners reports local sockets listening on undocumented ports on a
// non-loopback address. Traffic that reached such a socket without an
// answer (one-way UDP) was delivered to a listening service, so its
// undocumented-flow finding becomes an unexpected-open-port.
func (a *auditor) listeners() {
	for _, s := range a.snap.Listening {
		if s.Addr.IsLoopback() {
			continue
		}
		if len(a.candidates(service{snapshot.Inbound, s.Proto, s.Port})) > 0 {
			continue
		}
		id := fmt.Sprintf("unexpected-open-port/%s/%d", s.Proto, s.Port)
		if f, ok := a.findings[id]; ok {
			f.Evidence.Listening = true
			continue
		}
		undocID := fmt.Sprintf("undocumented-flow/%s/%s/%d", snapshot.Inbound, s.Proto, s.Port)
		if u, ok := a.findings[undocID]; ok {
			delete(a.findings, undocID)
			ev := u.Evidence
			ev.Listening = true
			a.add(&Finding{
				ID: id, Kind: UnexpectedOpenPort, Severity: High, Direction: snapshot.Inbound,
				Proto: s.Proto.String(), Port: portLabel(s.Proto, s.Port), Evidence: ev,
				Summary: fmt.Sprintf("a local socket listens on %s/%d (%s) and received traffic from %s, but the matrix documents no such inbound port for role %s",
					s.Proto, s.Port, s.Addr, plural(ev.Peers, "peer"), a.o.Matrix.Role),
			})
			continue
		}
		a.add(&Finding{
			ID: id, Kind: UnexpectedOpenPort, Severity: Medium, Direction: snapshot.Inbound,
			Proto: s.Proto.String(), Port: portLabel(s.Proto, s.Port), Evidence: Evidence{Listening: true},
			Summary: fmt.Sprintf("a local socket listens on %s/%d (%s) but the matrix documents no such inbound port for role %s; no traffic reached it in the window",
				s.Proto, s.Port, s.Addr, a.o.Matrix.Role),
		})
	}
}

// plural formats a count with its noun: plural(1, "peer") = "1 peer",
// plural(2, "peer") = "2 peers"; an explicit plural form may follow.
func plural(n int, one string, many ...string) string {
	if n == 1 {
		return "1 " + one
	}
	if len(many) > 0 {
		return fmt.Sprintf("%d %s", n, many[0])
	}
	return fmt.Sprintf("%d %ss", n, one)
}
