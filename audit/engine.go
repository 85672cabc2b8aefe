// Package audit compares what a snapshot observed with the documented port
// matrix of a role and the addresses a site binds to the matrix's zones,
// and reports findings. It is pure Go: it reads snapshot files, never the
// kernel.
package audit

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
	"github.com/flowaudit/flowaudit/internal/hugemem"
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
	// FloodPeers: an inbound service reached by at least this many
	// distinct peers in the window (estimated where peers were folded or
	// lost) is a suspected flood (default DefaultFloodPeers; negative:
	// never).
	FloodPeers int
	// FloodSYNs, FloodRate: an inbound TCP service that received at least
	// FloodSYNs SYNs which never completed a handshake, at FloodRate per
	// second or more over their span, is a suspected SYN flood (defaults
	// DefaultFloodSYNs and DefaultFloodRate; FloodSYNs negative: never;
	// FloodRate negative: at any rate).
	FloodSYNs int
	FloodRate float64
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

// key packs s into one number (for ordering).
func (s service) key() uint32 { return uint32(s.dir)<<24 | uint32(s.proto)<<16 | uint32(s.port) }

func (s service) String() string {
	return fmt.Sprintf("%s %s/%s", s.dir, s.proto, portLabel(s.proto, s.port))
}

func serviceOf(f *snapshot.Flow) service { return service{f.Direction, f.Proto, f.Port} }

// count is the ServiceCount of s.
func (s service) count() ServiceCount {
	return ServiceCount{Direction: s.dir, Proto: s.proto.String(), Port: portLabel(s.proto, s.port)}
}

// auditor holds the state of one run.
type auditor struct {
	o        Options
	snap     *snapshot.Snapshot
	findings map[string]*Finding
	rules    []*ruleObs
	scratch  [2][]*ruleObs // matchPeer's lists
	// What the snapshot could not show, per service (incomplete()).
	peerless  map[service]*svcLoss // overflow entries: packets without their peer
	folded    map[service]*svcLoss // folded entries
	unchecked map[service]*svcLoss // folded prefixes across a zone's edge
	dnsSeen   map[string]bool      // DNS names some answer resolved (dns.go)
}

// svcLoss accumulates one service's share of an incompleteness.
type svcLoss struct {
	packets uint64
	peers   uint64
	sketch  snapshot.PeerSketch
	levels  map[int]bool
	zones   map[string]bool
	// prefixes: the folded prefixes that straddle a zone's edge.
	prefixes map[string]bool
}

func lossOf(m map[service]*svcLoss, s service) *svcLoss {
	l := m[s]
	if l == nil {
		l = &svcLoss{levels: map[int]bool{}, zones: map[string]bool{}, prefixes: map[string]bool{}}
		m[s] = l
	}
	return l
}

func (l *svcLoss) add(f *snapshot.Flow) {
	l.packets += f.Packets()
	if f.PeerSketch != nil {
		l.sketch.Merge(f.PeerSketch)
	} else {
		l.peers += peersOf(f)
	}
	if f.Folded() {
		l.levels[f.PeerPrefix.Bits()] = true
	}
}

type ruleObs struct {
	idx     int // in auditor.rules
	rule    *catalog.Rule
	inZone  *obs
	outZone *obs
	// unknown is the rule's service traffic whose peer is not known well
	// enough for a zone check: overflow entries, and folded prefixes that
	// straddle the zone's edge. It makes the rule "seen, peers unknown".
	unknown *obs
	// flood holds a suspected flood's half-open attempts: they count for
	// the port's state only.
	flood *obs
	// broad is traffic that only this rule's broad port range (and those
	// of other broad rules) covers, toward a peer the site does not bind:
	// unverified, never "in use" (see broadRule).
	broad    *obs
	unbound  bool // some traffic matched only because the site does not bind the rule's peer
	anyBound bool // some traffic matched a bound peer
}

func newRuleObs(r *catalog.Rule) *ruleObs {
	return &ruleObs{rule: r, inZone: newObs(), outZone: newObs(), unknown: newObs(), flood: newObs(), broad: newObs()}
}

// traffic is the rule's traffic, without a suspected flood's attempts.
func (ro *ruleObs) traffic() *obs { return merged(ro.inZone, ro.outZone, ro.unknown, ro.broad) }

// BroadPorts is the number of ports from which a rule's port range is
// broad: "high TCP ports (1024 or above)", "any". Traffic that only a
// broad rule covers, through a peer the site does not bind, cannot be
// called documented: almost any connection falls in the range, and the
// peer is the only thing that would make it the documented one.
const BroadPorts = 1024

// broadRule reports whether r's ports span at least BroadPorts ports (a
// port protocol with no ports listed spans all of them).
func broadRule(r *catalog.Rule) bool {
	if len(r.Protos) == 0 || !r.Protos[0].HasPorts() {
		return false
	}
	if len(r.Ports) == 0 {
		return true
	}
	n := 0
	for _, pr := range r.Ports {
		n += int(pr.Hi) - int(pr.Lo) + 1
	}
	return n >= BroadPorts
}

// narrowest drops the broad rules of ros unless all are broad: traffic a
// narrow rule of an unbound peer documents owes nothing to a broad range
// toward an unbound peer, which must not be "in use" through it.
func narrowest(ros []*ruleObs) []*ruleObs {
	var out []*ruleObs
	for _, ro := range ros {
		if !broadRule(ro.rule) {
			out = append(out, ro)
		}
	}
	if len(out) == 0 {
		return ros
	}
	return out
}

// allBroad: every rule of ros is broad.
func allBroad(ros []*ruleObs) bool {
	for _, ro := range ros {
		if !broadRule(ro.rule) {
			return false
		}
	}
	return len(ros) > 0
}

// verdict is the port's state from the rule's traffic and a flood's
// attempts together.
func (ro *ruleObs) verdict(traffic *obs) flowState {
	return verdictOf(traffic.states, ro.flood.states)
}

// evidence is the rule's traffic with the flood's packets beside it.
func (ro *ruleObs) evidence(traffic *obs, n int) Evidence {
	ev := traffic.evidence(n)
	ev.FloodPackets = ro.flood.flood
	return ev
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
	if o.FloodPeers == 0 {
		o.FloodPeers = DefaultFloodPeers
	}
	if o.FloodSYNs == 0 {
		o.FloodSYNs = DefaultFloodSYNs
	}
	if o.FloodRate == 0 {
		o.FloodRate = DefaultFloodRate
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &auditor{o: o, snap: snap, findings: map[string]*Finding{},
		peerless: map[service]*svcLoss{}, folded: map[service]*svcLoss{}, unchecked: map[service]*svcLoss{}}
	for i := range o.Matrix.Rules {
		ro := newRuleObs(&o.Matrix.Rules[i])
		ro.idx = len(a.rules)
		a.rules = append(a.rules, ro)
	}
	rep := newReport(snap, o)
	a.flows(rep)
	rep.flushCells()
	a.incomplete(rep)
	a.ruleFindings()
	a.listeners()
	rep.Rules = a.ruleStatus()
	rep.setFindings(a.findings)
	rep.nameTopPeers(snap, o.Site)
	return rep, nil
}

func (a *auditor) add(f *Finding) *Finding {
	if old, ok := a.findings[f.ID]; ok {
		return old
	}
	a.findings[f.ID] = f
	return f
}

// unclassified: a non-first fragment, or an entry whose protocol has
// ports (or is ICMP) but whose direction is unknown. Counted apart, never
// matched to rules.
func unclassified(f *snapshot.Flow) bool {
	return f.Fragment || (f.Direction == snapshot.Unknown && (f.Proto.HasPorts() || f.Proto.IsICMP()))
}

// flows walks every flow, folded and overflow entry: matches it to rules,
// finds undocumented traffic, out-of-zone peers, scanners and floods.
func (a *auditor) flows(rep *Report) {
	groups := map[service]*group{}
	var order []service
	var lastSvc service
	var last *group // the group of lastSvc
	// collect sorts list[i] into its service's group.
	collect := func(list []snapshot.Flow, i int) {
		f := &list[i]
		switch {
		case infrastructure(f):
			rep.Infrastructure.Packets += f.Packets()
			rep.Infrastructure.Bytes += f.Bytes()
			return
		case unclassified(f):
			rep.Unclassified.Packets += f.Packets()
			rep.Unclassified.Bytes += f.Bytes()
			return
		}
		s := serviceOf(f)
		g := last
		if g == nil || s != lastSvc {
			g = groups[s]
			if g == nil {
				g = &group{}
				groups[s] = g
				order = append(order, s)
			}
			lastSvc, last = s, g
		}
		switch {
		case f.Peer.IsValid():
			g.addExact(list, i)
		case f.Folded():
			g.folded = append(g.folded, f)
			lossOf(a.folded, s).add(f)
		default:
			g.overflow = append(g.overflow, f)
			lossOf(a.peerless, s).add(f)
		}
	}
	for i := range a.snap.Flows {
		collect(a.snap.Flows, i)
	}
	for i := range a.snap.Overflow {
		collect(a.snap.Overflow, i)
	}

	floods := map[service]*flood{}
	for _, s := range order {
		if fl := a.detectFlood(s, groups[s]); fl != nil {
			floods[s] = fl
		}
	}

	// Classify every ordinary flow first; scanners are decided on the
	// whole picture.
	// One hit per flow: 16 bytes, the matched rule sets interned (a
	// million flows fall under a handful of distinct sets). Its flow is
	// not in it: the hits are made, and walked (eachHit), in the order of
	// the groups' exact flows, so they hold no pointer for the collector
	// to scan and take half the fresh memory.
	type hit struct {
		outOf    uint32  // documented port, peer outside every matching rule's zone: its a.rules index + 1
		rules    ruleSet // matched rules (in zone or unverified)
		broad    ruleSet // only broad rules with unbound peers cover it: unverified
		unbound  bool    // rules matched because the site binds none of their peers
		undocSvc bool
		flood    bool // a suspected flood's attempt, set apart
		// attempt: an unanswered inbound try of an undocumented or
		// out-of-zone port, the stuff of scans (decided once, here).
		attempt bool
	}
	sets := newRuleSets(a.rules)
	hits := hugemem.Make[hit](len(a.snap.Flows))
	nAttempts := 0
	for _, s := range order {
		cands := a.candidates(s)
		fl := floods[s]
		for _, f := range groups[s].eachExact {
			var h hit
			if len(cands) == 0 {
				h.undocSvc = true
			} else {
				rules, unbound, outOf := a.matchPeer(cands, f)
				h.unbound = unbound
				if outOf != nil {
					h.outOf = uint32(outOf.idx) + 1
				}
				if unbound && allBroad(rules) {
					h.broad, h.unbound = sets.intern(rules), false
				} else {
					h.rules = sets.intern(rules)
				}
			}
			noisy := h.undocSvc || h.outOf != 0 || h.broad != 0
			h.flood = fl.takes(f, noisy)
			h.attempt = !h.flood && noisy && f.Direction == snapshot.Inbound && state(f) != stateOpen
			if h.attempt {
				nAttempts++
			}
			hits = append(hits, h)
		}
	}
	// eachHit calls fn for every hit with its service and flow.
	eachHit := func(fn func(s service, f *snapshot.Flow, h *hit)) {
		i := 0
		for _, s := range order {
			for _, f := range groups[s].eachExact {
				fn(s, f, &hits[i])
				i++
			}
		}
	}

	// Suspected scanners: many distinct unanswered undocumented or
	// out-of-zone inbound ports from one peer.
	// The (peer, service) attempts in one flat list, sorted: no map or
	// slice per peer (a scan of the internet brings a million peers).
	type attempt struct {
		peer netip.Addr
		svc  service
	}
	// Counted with the hits and made at its size: growing it by doubling
	// left ~10 MiB of dead copies in the audit step's peak RSS (1 M flows).
	attempts := hugemem.Make[attempt](nAttempts)
	eachHit(func(s service, f *snapshot.Flow, h *hit) {
		if h.attempt {
			attempts = append(attempts, attempt{f.Peer, s})
		}
	})
	slices.SortFunc(attempts, func(x, y attempt) int {
		if c := x.peer.Compare(y.peer); c != 0 {
			return c
		}
		return cmp.Compare(x.svc.key(), y.svc.key())
	})
	scanPorts := map[netip.Addr]map[service]bool{} // the scanners' distinct services
	scanners := map[netip.Addr]*obs{}
	for i := 0; i < len(attempts); {
		j, distinct := i+1, 1
		for ; j < len(attempts) && attempts[j].peer == attempts[i].peer; j++ {
			if attempts[j].svc != attempts[j-1].svc {
				distinct++
			}
		}
		if distinct >= a.o.ScanPorts {
			p := attempts[i].peer
			scanPorts[p] = map[service]bool{}
			for _, at := range attempts[i:j] {
				scanPorts[p][at.svc] = true
			}
			scanners[p] = newObs()
		}
		i = j
	}

	undoc := map[service]*obs{}
	undocOf := func(s service) *obs {
		if undoc[s] == nil {
			undoc[s] = newObs()
		}
		return undoc[s]
	}
	outOfZone := map[*ruleObs]map[service]*obs{}
	outOf := func(ro *ruleObs, s service, f *snapshot.Flow) {
		ro.outZone.add(f)
		if outOfZone[ro] == nil {
			outOfZone[ro] = map[service]*obs{}
		}
		if outOfZone[ro][s] == nil {
			outOfZone[ro][s] = newObs()
		}
		outOfZone[ro][s].add(f)
	}
	type broadObs struct {
		rules []*ruleObs
		o     *obs
	}
	unverifiedBy := map[service]*broadObs{}
	unverified := func(ros []*ruleObs, s service, f *snapshot.Flow) {
		for _, ro := range ros {
			ro.broad.add(f)
		}
		if unverifiedBy[s] == nil {
			unverifiedBy[s] = &broadObs{rules: ros, o: newObs()}
		}
		unverifiedBy[s].o.add(f)
	}
	floodObs := map[service]*obs{}
	setApart := func(s service, f *snapshot.Flow) {
		if floodObs[s] == nil {
			floodObs[s] = newObs()
		}
		floodObs[s].addFlood(f)
	}
	// The obs each ordinary flow's peer lands in (a flood's attempts and
	// the cells take no peer); counted first, so every peer list is made
	// once at its size (in huge pages) rather than grown by copying.
	// Hits come grouped by service and mostly share their rules: a run of
	// hits bound for the same obs is counted, then added at once.
	type needKey struct {
		scan  *obs // a scanner's
		undoc bool // the service's undocumented traffic
		rules ruleSet
		broad bool // rules are h.broad
		outOf uint32
		svc   service // for undoc and outOf
	}
	need := map[*obs]int{}
	addNeed := func(k needKey, n int) {
		switch {
		case k.scan != nil:
			need[k.scan] += n
		case k.undoc:
			need[undocOf(k.svc)] += n
		case k.rules != 0 && !k.broad:
			for _, ro := range sets.get(k.rules) {
				need[ro.inZone] += n
			}
		case k.rules != 0:
			for _, ro := range sets.get(k.rules) {
				need[ro.broad] += n
			}
		case k.outOf != 0:
			ro := a.rules[k.outOf-1]
			need[ro.outZone] += n
			if outOfZone[ro] == nil {
				outOfZone[ro] = map[service]*obs{}
			}
			if outOfZone[ro][k.svc] == nil {
				outOfZone[ro][k.svc] = newObs()
			}
			need[outOfZone[ro][k.svc]] += n
		}
	}
	var runKey needKey // the zero key adds nothing
	run := 0
	eachHit(func(s service, f *snapshot.Flow, h *hit) {
		var k needKey
		switch {
		case h.flood:
		case h.attempt && scanners[f.Peer] != nil:
			k.scan = scanners[f.Peer]
		case h.undocSvc:
			k.undoc, k.svc = true, s
		case h.rules != 0:
			k.rules = h.rules
		case h.broad != 0:
			k.rules, k.broad = h.broad, true
		case h.outOf != 0:
			k.outOf, k.svc = h.outOf, s
		}
		if k != runKey {
			addNeed(runKey, run)
			runKey, run = k, 0
		}
		run++
	})
	addNeed(runKey, run)
	for o, n := range need {
		o.peers.reserve(n)
	}
	eachHit(func(s service, f *snapshot.Flow, h *hit) {
		if h.flood {
			rep.addCell(s, !h.undocSvc, h.outOf != 0, f, a.o.Site)
			setApart(s, f)
			return
		}
		if h.attempt {
			if sc := scanners[f.Peer]; sc != nil {
				sc.add(f)
				return
			}
		}
		rep.addCell(s, !h.undocSvc, h.outOf != 0, f, a.o.Site, dnsHostOf(sets.get(h.rules), h.unbound))
		switch {
		case h.undocSvc:
			undocOf(s).add(f)
		case h.rules != 0:
			for _, ro := range sets.get(h.rules) {
				ro.inZone.add(f)
				ro.unbound = ro.unbound || h.unbound
				ro.anyBound = ro.anyBound || !h.unbound
			}
		case h.broad != 0:
			unverified(sets.get(h.broad), s, f)
		case h.outOf != 0:
			outOf(a.rules[h.outOf-1], s, f)
		}
	})

	// Folded entries: the zone check is made on the prefix. Overflow
	// entries: seen, peers unknown, under every candidate rule.
	for _, s := range order {
		g := groups[s]
		cands := a.candidates(s)
		fl := floods[s]
		for _, f := range g.folded {
			m := a.matchPrefix(cands, f.PeerPrefix)
			rep.addCell(s, len(cands) > 0, m.outOf != nil, f, a.o.Site)
			if fl.takes(f, len(cands) == 0 || m.outOf != nil || allBroad(m.unbound)) {
				setApart(s, f)
				continue
			}
			switch {
			case len(cands) == 0:
				undocOf(s).add(f)
			case len(m.inside) > 0:
				for _, ro := range m.inside {
					ro.inZone.add(f)
					ro.anyBound = true
				}
			case len(m.partly) > 0:
				l := lossOf(a.unchecked, s)
				l.add(f)
				l.prefixes[f.PeerPrefix.String()] = true
				for _, ro := range m.partly {
					ro.unknown.add(f)
					l.zones[ro.rule.Peer.String()] = true
				}
			case len(m.unbound) > 0 && allBroad(m.unbound):
				unverified(m.unbound, s, f)
			case len(m.unbound) > 0:
				for _, ro := range m.unbound {
					ro.inZone.add(f)
					ro.unbound = true
				}
			case m.outOf != nil:
				outOf(m.outOf, s, f)
			}
		}
		for _, f := range g.overflow {
			rep.addCell(s, len(cands) > 0, false, f, a.o.Site)
			if fl.takes(f, true) {
				setApart(s, f)
				continue
			}
			if len(cands) == 0 {
				undocOf(s).add(f)
				continue
			}
			l := lossOf(a.peerless, s)
			for _, ro := range cands {
				ro.unknown.add(f)
				if a.checks(ro.rule.Peer) {
					l.zones[ro.rule.Peer.String()] = true
				}
			}
		}
	}

	// A flood is reported once; its attempts join the state of their
	// service (the rules' verdict, or the undocumented port's).
	for _, s := range order {
		fl := floods[s]
		if fl == nil {
			continue
		}
		a.floodFinding(fl)
		fo := floodObs[s]
		if fo == nil {
			continue
		}
		if cands := a.candidates(s); len(cands) > 0 {
			for _, ro := range cands {
				mergeObs(ro.flood, fo)
			}
		} else {
			mergeObs(undocOf(s), fo)
		}
	}

	for s, o := range undoc {
		a.undocumented(s, o)
	}
	for ro, bySvc := range outOfZone {
		for s, o := range bySvc {
			a.outOfZone(ro, s, o)
		}
	}
	for s, u := range unverifiedBy {
		a.unverifiedFlow(u.rules, s, u.o)
	}
	for p, o := range scanners {
		ev := o.evidence(a.o.TopPeers)
		ev.Ports = serviceNames(scanPorts[p])
		a.add(&Finding{
			ID: "scan-suspected/" + p.String(), Kind: ScanSuspected, Severity: Medium, Direction: snapshot.Inbound,
			Summary: fmt.Sprintf("%s tried %d undocumented or out-of-zone ports and was refused or ignored: a scan, reported once",
				p, len(scanPorts[p])),
			Evidence: ev,
		})
	}
}

// serviceNames lists services as "tcp/22", by protocol number, then port
// number (tcp/2 before tcp/10).
func serviceNames(m map[service]bool) []string {
	svcs := make([]service, 0, len(m))
	for s := range m {
		svcs = append(svcs, s)
	}
	sort.Slice(svcs, func(i, j int) bool {
		if svcs[i].proto != svcs[j].proto {
			return svcs[i].proto < svcs[j].proto
		}
		return svcs[i].port < svcs[j].port
	})
	out := make([]string, len(svcs))
	for i, s := range svcs {
		out[i] = s.proto.String() + "/" + portLabel(s.proto, s.port)
	}
	return out
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

// ruleSet names an interned list of rules (ruleSets); 0 is the empty one.
type ruleSet uint32

// ruleSets interns lists of rules, so a flow's matched rules take four
// bytes instead of a slice.
type ruleSets struct {
	index map[*ruleObs]int
	ids   map[string]ruleSet
	lists [][]*ruleObs
	key   []byte
	// last is the id interned last: a service's flows mostly match the
	// same rules, so most calls return it without building a key.
	last ruleSet
}

func newRuleSets(rules []*ruleObs) *ruleSets {
	rs := &ruleSets{index: make(map[*ruleObs]int, len(rules)), ids: map[string]ruleSet{}, lists: [][]*ruleObs{nil}}
	for i, ro := range rules {
		rs.index[ro] = i
	}
	return rs
}

// intern returns the id of list (the same id for an equal list: same
// rules, same order).
func (rs *ruleSets) intern(list []*ruleObs) ruleSet {
	if len(list) == 0 {
		return 0
	}
	if rs.last != 0 && slices.Equal(rs.lists[rs.last], list) {
		return rs.last
	}
	rs.key = rs.key[:0]
	for _, ro := range list {
		i, ok := rs.index[ro]
		if !ok {
			i = len(rs.index)
			rs.index[ro] = i
		}
		rs.key = binary.AppendUvarint(rs.key, uint64(i))
	}
	if id, ok := rs.ids[string(rs.key)]; ok {
		rs.last = id
		return id
	}
	id := ruleSet(len(rs.lists))
	rs.lists = append(rs.lists, slices.Clone(list))
	rs.ids[string(rs.key)] = id
	rs.last = id
	return id
}

func (rs *ruleSets) get(id ruleSet) []*ruleObs { return rs.lists[id] }

// matchPeer finds the rules a peer's traffic falls under: every candidate
// whose bound peer contains it (an address in two zones satisfies both
// rules), else every candidate whose peer the site does not bind
// (unverified: unbound is set). If every candidate's peer is bound and
// none contains it, the peer is out of zone (outOf is the first such
// rule).
//
// The lists returned are built in a.scratch and valid until the next call
// (flows interns them).
func (a *auditor) matchPeer(cands []*ruleObs, f *snapshot.Flow) (match []*ruleObs, unbound bool, outOf *ruleObs) {
	match, free := a.scratch[0][:0], a.scratch[1][:0]
	defer func() { a.scratch[0], a.scratch[1] = match[:0], free[:0] }()
	for _, ro := range cands {
		ok, bound := a.contains(ro.rule.Peer, f.Peer, f.FirstSeen)
		switch {
		case bound && ok:
			match = append(match, ro)
		case !bound:
			free = append(free, ro)
		case outOf == nil:
			outOf = ro
		}
	}
	if len(match) > 0 {
		return match, false, nil
	}
	if len(free) > 0 && !(allBroad(free) && outOf != nil) {
		return narrowest(free), true, nil
	}
	// Out of every bound rule's zone; a broad rule whose peer the site
	// does not bind does not make the traffic documented.
	return nil, false, outOf
}

// contains: is addr, in traffic that started at first, an address of
// peer p? A DNS name is bound by the site's hosts: (which wins), else by
// the answers the recording saw (dnsContains).
func (a *auditor) contains(p catalog.Peer, addr netip.Addr, first time.Time) (ok, bound bool) {
	if p.Kind == catalog.PeerAny {
		return true, true
	}
	if p.Kind == catalog.PeerDNS && !a.o.Site.BindsHost(p.Host) {
		return a.dnsContains(p.Host, addr, first)
	}
	if a.o.Site == nil {
		if p.Kind == catalog.PeerCIDR {
			return p.Prefix.Contains(addr.Unmap()), true
		}
		return false, false
	}
	return a.o.Site.Contains(p, addr)
}

// prefixMatch is how a folded prefix of peers sits against the candidate
// rules of its service: fully inside a bound rule's peer (inside), partly
// inside (partly: those peers cannot be checked), under rules the site
// does not bind (unbound), or outside every bound rule (outOf, the first).
type prefixMatch struct {
	inside, partly, unbound []*ruleObs
	outOf                   *ruleObs
}

func (a *auditor) matchPrefix(cands []*ruleObs, p netip.Prefix) prefixMatch {
	var m prefixMatch
	var outOf *ruleObs
	for _, ro := range cands {
		inside, overlaps, bound := a.containsPrefix(ro.rule.Peer, p)
		switch {
		case !bound:
			m.unbound = append(m.unbound, ro)
		case inside:
			m.inside = append(m.inside, ro)
		case overlaps:
			m.partly = append(m.partly, ro)
		case outOf == nil:
			outOf = ro
		}
	}
	switch {
	case len(m.inside) > 0:
		return prefixMatch{inside: m.inside}
	case len(m.partly) > 0:
		return prefixMatch{partly: m.partly}
	case len(m.unbound) > 0 && !(allBroad(m.unbound) && outOf != nil):
		return prefixMatch{unbound: narrowest(m.unbound)}
	}
	return prefixMatch{outOf: outOf}
}

func (a *auditor) containsPrefix(p catalog.Peer, pfx netip.Prefix) (inside, overlaps, bound bool) {
	if p.Kind == catalog.PeerAny {
		return true, true, true
	}
	if p.Kind == catalog.PeerDNS && !a.o.Site.BindsHost(p.Host) {
		return a.dnsContainsPrefix(p.Host, pfx)
	}
	if a.o.Site == nil {
		if p.Kind == catalog.PeerCIDR {
			return (&catalog.Site{}).ContainsPrefix(p, pfx)
		}
		return false, false, false
	}
	return a.o.Site.ContainsPrefix(p, pfx)
}

// checks reports whether traffic of a rule is checked against its peer:
// the peer is not "any" and the site binds it (or it is a literal CIDR).
func (a *auditor) checks(p catalog.Peer) bool {
	if p.Kind == catalog.PeerAny {
		return false
	}
	_, _, bound := a.containsPrefix(p, netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	return bound
}

// who names the peers of some traffic for a summary: "1 peer", "3 peers",
// "~420 peers", "unknown peers (40 packets without peer identity)", or
// "the sources of a suspected flood".
func who(ev Evidence) string {
	var s string
	switch {
	case ev.Peers == 0 && ev.PeersUnknownPackets > 0:
		return fmt.Sprintf("unknown peers (%d packets without peer identity)", ev.PeersUnknownPackets)
	case ev.Peers == 0 && ev.FloodPackets > 0:
		return "the sources of a suspected flood"
	case ev.PeersEstimated:
		s = fmt.Sprintf("~%d peers", ev.Peers)
	default:
		s = plural(ev.Peers, "peer")
	}
	if ev.PeersUnknownPackets > 0 {
		s += fmt.Sprintf(" and unknown peers (%d packets without peer identity)", ev.PeersUnknownPackets)
	}
	return s
}

// were is who with "was"/"were".
func were(ev Evidence) string {
	if ev.Peers == 1 && !ev.PeersEstimated && ev.PeersUnknownPackets == 0 {
		return "1 peer was"
	}
	return who(ev) + " were"
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
			s.proto, port, who(ev), a.o.Matrix.Role)
		if s.proto.IsICMP() {
			f.Kind, f.Severity = UndocumentedFlow, Low
			f.ID = fmt.Sprintf("undocumented-flow/%s/%s/%d", s.dir, s.proto, s.port)
			f.Summary = fmt.Sprintf("this host answers %s echo (ping) from %s; the matrix does not document it", s.proto, who(ev))
		}
	case s.dir == snapshot.Inbound:
		f.ID = fmt.Sprintf("undocumented-flow/%s/%s/%d", s.dir, s.proto, s.port)
		f.Kind, f.Severity = UndocumentedFlow, Low
		f.Summary = fmt.Sprintf("%s tried undocumented inbound %s/%s and got no service (%s)", who(ev), s.proto, port, v)
	default:
		f.ID = fmt.Sprintf("undocumented-flow/%s/%s/%d", s.dir, s.proto, s.port)
		f.Kind, f.Severity = UndocumentedFlow, Medium
		what := "connects to"
		if s.dir == snapshot.Unknown {
			what = "exchanges"
		}
		f.Summary = fmt.Sprintf("this host %s %s/%s with %s; the matrix does not document it for role %s",
			what, s.proto, port, who(ev), a.o.Matrix.Role)
		if s.dir == snapshot.Unknown {
			f.Summary = fmt.Sprintf("%s traffic with %s; the matrix does not document %s for role %s", s.proto, who(ev), s.proto, a.o.Matrix.Role)
		}
	}
	if o.inferred {
		f.Summary += " (direction inferred from port numbers)"
	}
	a.add(f)
}

// unverifiedFlow reports traffic that only broad rules cover, through
// peers the site does not bind (rules are those rules, in matrix order).
func (a *auditor) unverifiedFlow(rules []*ruleObs, s service, o *obs) {
	r := rules[0].rule
	ev := o.evidence(a.o.TopPeers)
	port := portLabel(s.proto, s.port)
	binds := "no site binds"
	if a.o.Site != nil {
		binds = "the site does not bind"
	}
	toward := "toward"
	if s.dir == snapshot.Inbound {
		toward = "from"
	}
	var what string
	switch s.dir {
	case snapshot.Outbound:
		what = fmt.Sprintf("this host connects to %s/%s with %s", s.proto, port, who(ev))
	default:
		what = fmt.Sprintf("%s reached %s %s/%s", who(ev), s.dir, s.proto, port)
	}
	others := ""
	if len(rules) > 1 {
		others = fmt.Sprintf(" (and %s)", plural(len(rules)-1, "other broad rule"))
	}
	a.add(&Finding{
		ID: fmt.Sprintf("unverified-flow/%s/%s/%d", s.dir, s.proto, s.port), Kind: UnverifiedFlow, Severity: Medium,
		Direction: s.dir, Proto: s.proto.String(), Port: port, Rule: refOf(r), Evidence: ev,
		Summary: fmt.Sprintf("%s: only the broad range %s/%s of %s%s, %s %s, documents it, and %s %s, so the peer is unverified (%s)",
			what, r.ProtoString(), r.PortString(), r.ID, others, toward, r.Peer, binds, r.Peer, r.Purpose),
	})
}

func (a *auditor) outOfZone(ro *ruleObs, s service, o *obs) {
	r := ro.rule
	ev := o.evidence(a.o.TopPeers)
	sev := High
	if s.dir != snapshot.Inbound {
		sev = Medium
	}
	summary := fmt.Sprintf("%s outside %s reached %s/%s (%s)", who(ev), r.Peer, s.proto, portLabel(s.proto, s.port), r.Purpose)
	if s.dir == snapshot.Outbound {
		summary = fmt.Sprintf("this host reached %s outside %s on %s/%s (%s)", who(ev), r.Peer, s.proto, portLabel(s.proto, s.port), r.Purpose)
	}
	if r.Peer.Kind == catalog.PeerDNS {
		summary += a.dnsOutOfZone(r.Peer, ev)
	}
	a.add(&Finding{
		ID: fmt.Sprintf("peer-out-of-zone/%s/%s/%d", r.ID, s.proto, s.port), Kind: PeerOutOfZone, Severity: sev,
		Direction: s.dir, Proto: s.proto.String(), Port: portLabel(s.proto, s.port), Rule: refOf(r), Evidence: ev, Summary: summary,
	})
}

// ruleFindings: missing, closed, filtered, deprecated and optional-in-use.
func (a *auditor) ruleFindings() {
	window := a.snap.Window().Round(time.Second)
	inUseBy := map[string]*Finding{}
	for _, ro := range a.rules {
		r := ro.rule
		traffic := ro.traffic()
		ref := refOf(r)
		base := Finding{Direction: r.Direction, Proto: r.ProtoString(), Port: r.PortString(), Rule: ref}
		if r.Deprecated && !traffic.empty() {
			f := base
			f.ID, f.Kind, f.Severity = "deprecated-port/"+r.ID, DeprecatedPort, Medium
			f.Evidence = ro.evidence(traffic, a.o.TopPeers)
			f.Summary = fmt.Sprintf("traffic on %s/%s, which the document says is no longer used in %s %s (%s)",
				r.ProtoString(), r.PortString(), a.o.Matrix.ProductName, a.o.Matrix.Version, r.Purpose)
			a.add(&f)
			continue
		}
		if r.Deprecated {
			continue
		}
		// Seen: from documented peers, or from peers unknown.
		seen := !ro.inZone.empty() || !ro.unknown.empty()
		// In use: seen, and not only refused or unanswered (a closed or
		// filtered port is not in use, whoever tried it).
		inUseState := verdictOf(ro.inZone.states, ro.unknown.states)
		used := seen && inUseState != stateClosed && inUseState != stateFiltered
		inUse := func(f *Finding) {
			switch {
			case ro.unknown.empty():
				f.Evidence = ro.inZone.evidence(a.o.TopPeers)
			case ro.inZone.empty():
				f.Evidence = ro.unknown.evidence(a.o.TopPeers)
				f.Summary += " (peers unknown)"
			default:
				f.Evidence = merged(ro.inZone, ro.unknown).evidence(a.o.TopPeers)
			}
			// Rules that share the port and whose zones hold the same
			// peers see the same traffic: it is in use once, under the
			// first of them, naming the others.
			if ro.unbound && r.Peer.Kind == catalog.PeerDNS {
				f.Summary += a.dnsUnboundHint(r.Peer)
			}
			key := inUseKey(f)
			if first, ok := inUseBy[key]; ok {
				first.AlsoRules = append(first.AlsoRules, r.ID)
				first.Summary += fmt.Sprintf("; the same traffic falls under %s (%s)", r.ID, r.Purpose)
				return
			}
			inUseBy[key] = a.add(f)
		}
		needed := r.Requirement == catalog.Required || r.Requirement == catalog.Conditional
		if !needed {
			if used {
				f := base
				f.ID, f.Kind, f.Severity = "optional-in-use/"+r.ID, OptionalInUse, Info
				f.Summary = fmt.Sprintf("optional %s %s/%s in use: %s", r.Direction, r.ProtoString(), r.PortString(), r.Purpose)
				inUse(&f)
			}
			continue
		}
		if r.Condition != "" && !strings.HasPrefix(r.Condition, "!") && used {
			f := base
			f.ID, f.Kind, f.Severity = "optional-in-use/"+r.ID, OptionalInUse, Info
			f.Summary = fmt.Sprintf("%s in use (condition %s): %s %s/%s", r.Purpose, r.Condition, r.Direction, r.ProtoString(), r.PortString())
			inUse(&f)
		}
		switch ro.verdict(traffic) {
		case stateOpen:
			if traffic.empty() {
				break // only a flood's attempts were answered: still missing
			}
			continue
		case stateClosed:
			f := base
			f.ID, f.Kind, f.Severity = "required-port-closed/"+r.ID, RequiredPortClosed, High
			f.Evidence = ro.evidence(traffic, a.o.TopPeers)
			f.Summary = fmt.Sprintf("required %s/%s (%s) is closed: %s refused (RST or ICMP port unreachable)",
				r.ProtoString(), r.PortString(), r.Purpose, were(f.Evidence))
			a.add(&f)
			continue
		case stateFiltered:
			f := base
			f.ID, f.Kind, f.Severity = "required-port-filtered/"+r.ID, RequiredPortFiltered, High
			f.Evidence = ro.evidence(traffic, a.o.TopPeers)
			f.Summary = fmt.Sprintf("required %s/%s (%s) is filtered: attempts from %s got no answer or an ICMP prohibited",
				r.ProtoString(), r.PortString(), r.Purpose, who(f.Evidence))
			a.add(&f)
			continue
		}
		if !seen {
			f := base
			f.ID, f.Kind, f.Severity = "missing-required/"+r.ID, MissingRequired, Medium
			f.Evidence = Evidence{Window: window.String(), FloodPackets: ro.flood.flood}
			peer := r.Peer.String()
			f.Summary = fmt.Sprintf("no %s %s/%s traffic with %s in %s, though the document requires it (%s)",
				r.Direction, r.ProtoString(), r.PortString(), peer, window, r.Purpose)
			if !ro.outZone.empty() {
				f.Summary += "; only peers outside that zone used it"
			}
			if !ro.flood.empty() {
				f.Summary += "; a suspected flood's half-open attempts do not count"
			}
			f.Summary += a.cutShort()
			a.add(&f)
		}
	}
}

// inUseKey identifies the traffic of an in-use finding: its direction,
// protocol, port and evidence (packets, bytes, times, peers). Two rules of
// one service with the same key were used by the same traffic.
func inUseKey(f *Finding) string {
	ev := f.Evidence
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s|%s|%d|%d|%d|%d|%d|%d|%d", f.Direction, f.Proto, f.Port, ev.Packets, ev.Bytes,
		ev.FirstSeen.UnixNano(), ev.LastSeen.UnixNano(), ev.Peers, ev.PeersUnknownPackets, len(ev.TopPeers))
	for _, p := range ev.TopPeers {
		fmt.Fprintf(&b, "|%s/%d", p, p.Packets)
	}
	return b.String()
}

// cutShort is what a missing-required summary adds when the recording
// ended early.
func (a *auditor) cutShort() string {
	switch in := a.snap.Interrupted; {
	case in != nil:
		return "; the recording was " + interruptionText(a.snap)
	case a.snap.Checkpoint:
		return "; this snapshot is a checkpoint, the recorder did not finish"
	}
	return ""
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
					s.Proto, s.Port, s.Addr, who(ev), a.o.Matrix.Role),
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
