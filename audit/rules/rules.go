// Package rules turns what a snapshot observed, optionally intersected with
// the documented port matrix of the appliance's role, into least-privilege
// firewall rules for nftables, iptables/ip6tables, ufw, AWS security groups
// and Azure network security groups.
//
// Build decides what is allowed (a Ruleset: merged allowances plus
// everything a reviewer must know — what was left out and why, what was
// widened, which management sessions were kept); Render writes it for one
// target. The package is pure Go: it never touches the kernel and never
// applies rules. docs/RULES.md describes modes, aggregation and targets.
package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go4.org/netipx"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Mode selects what is allowed.
type Mode string

const (
	// Observed allows what was observed and answered, documented or not.
	Observed Mode = "observed"
	// Documented allows what the matrix documents, with the zones'
	// prefixes as the site binds them.
	Documented Mode = "documented"
	// Both allows what was observed AND is documented with its peer in the
	// documented zone: the observed peers, not the whole zone.
	Both Mode = "both"
)

// Modes lists the modes.
var Modes = []Mode{Observed, Documented, Both}

// ParseMode parses a mode name.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown mode %q (want observed, documented or both)", s)
}

// Policy is a chain's default verdict.
type Policy string

const (
	Accept Policy = "accept"
	Drop   Policy = "drop"
)

// ParsePolicy parses accept or drop.
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case Accept, Drop:
		return Policy(s), nil
	}
	return "", fmt.Errorf("unknown policy %q (want accept or drop)", s)
}

// Service is a protocol and port, e.g. tcp/22.
type Service struct {
	Proto snapshot.Proto
	Port  uint16
}

func (s Service) String() string { return s.Proto.String() + "/" + strconv.Itoa(int(s.Port)) }

// ParseService parses "tcp/22" (tcp, udp or sctp).
func ParseService(s string) (Service, error) {
	ps, port, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Service{}, fmt.Errorf("service %q: want PROTO/PORT, e.g. tcp/22", s)
	}
	p, err := snapshot.ParseProto(ps)
	if err != nil || !p.HasPorts() {
		return Service{}, fmt.Errorf("service %q: protocol must be tcp, udp or sctp", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return Service{}, fmt.Errorf("service %q: bad port", s)
	}
	return Service{p, uint16(n)}, nil
}

// DefaultManagementPorts are the services whose sessions the management
// guard keeps: SSH and HTTPS.
var DefaultManagementPorts = []Service{{snapshot.TCP, 22}, {snapshot.TCP, 443}}

// Session is a management session known from outside the snapshot, e.g.
// the SSH_CONNECTION of the shell that recorded it.
type Session struct {
	Peer netip.Addr
	Service
	// Why is shown in the output ("SSH_CONNECTION of this shell").
	Why string
}

// Options configure Build.
type Options struct {
	// Mode defaults to Both when a matrix is given, else Observed.
	Mode Mode
	// Matrix is the documented matrix of the role (required for
	// Documented and Both).
	Matrix *catalog.Matrix
	// Site binds the matrix's zones, roles and DNS names to addresses.
	Site *catalog.Site
	// Aggregate4 and Aggregate6 widen observed peers to prefixes of this
	// length (0: no widening). Widening is clipped to the documented zone
	// in Both mode and always reported.
	Aggregate4, Aggregate6 int
	// EgressPolicy is the output policy (default Accept).
	EgressPolicy Policy
	// ManagementPorts are the services of the management guard (nil:
	// DefaultManagementPorts). NoManagementGuard switches it off.
	ManagementPorts   []Service
	NoManagementGuard bool
	// Sessions are management sessions known from outside the snapshot.
	Sessions []Session
	// AllowUnverified allows observed traffic on documented ports whose
	// peer the site does not bind (Both mode); otherwise it is left out.
	AllowUnverified bool
	// AllowQuiet generates rules even when the window shows no inbound
	// (or, with EgressPolicy Drop, no outbound) traffic at all.
	AllowQuiet bool
	// MinWindow: a shorter window is refused (default
	// audit.DefaultMinWindow).
	MinWindow time.Duration
	// PlannedWindow is the duration a live recording was asked for (0 for
	// a snapshot file): a shorter window means it was interrupted.
	PlannedWindow time.Duration
	// Force writes the rules although the input is refused (see
	// RefusedError): each reason then heads the Warnings.
	Force       bool
	ToolVersion string
}

// defaults fills in the zero options.
func (o *Options) defaults() {
	if o.Mode == "" {
		o.Mode = Observed
		if o.Matrix != nil {
			o.Mode = Both
		}
	}
	if o.EgressPolicy == "" {
		o.EgressPolicy = Accept
	}
	if o.ManagementPorts == nil {
		o.ManagementPorts = DefaultManagementPorts
	}
	if o.MinWindow == 0 {
		o.MinWindow = audit.DefaultMinWindow
	}
}

// ErrQuiet is returned instead of a ruleset that would drop everything
// because nothing was observed.
var ErrQuiet = errors.New("refusing to turn \"no traffic seen\" into a deny-all policy")

// Family is an address family: 4 or 6.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string { return "IPv" + strconv.Itoa(int(f)) }

// Allow is one generated allowance: Proto traffic to Ports between the
// appliance and Peers, opened in Direction (inbound: the peers connect to
// the appliance; outbound: the appliance connects to them). Replies are
// never allowances: every target accepts established/related traffic
// statefully.
type Allow struct {
	Direction snapshot.Direction
	Family    Family
	Proto     snapshot.Proto
	// Ports are service port ranges (tcp/udp/sctp) or ICMP type ranges,
	// sorted, disjoint and not adjacent. Empty: every port or type, or a
	// protocol without ports.
	Ports []catalog.PortRange
	// Peers are the remote prefixes, merged losslessly (and widened only
	// when asked). AnyPeer: every address of the family.
	Peers   []netip.Prefix
	AnyPeer bool
	// Rules are the matrix rule IDs behind the allowance, sorted;
	// "observed" (no matrix), "undocumented" or "out-of-zone" (observed
	// mode with a matrix) or "management-guard".
	Rules []string
	// Management: kept by the management guard.
	Management bool
	// Host is the DNS name (or wildcard) of the matrix rule behind the
	// allowance when its addresses came from the recording's DNS answers
	// (Ruleset.Hosts lists them with their TTL); such an allowance is
	// never merged with another one, so it can be refreshed on its own.
	Host string
	// HostNote is "dns NAME ttl Ns, refresh" for such an allowance, and
	// PeerNotes the names and TTL the answers gave for each of its peers:
	// every target writes them as comments.
	HostNote  string
	PeerNotes map[netip.Prefix]string
}

// Left is observed traffic that the ruleset does not allow.
type Left struct {
	Direction snapshot.Direction
	Proto     snapshot.Proto
	// Ports are the service ports (ICMP: type<<8|code) concerned, sorted;
	// several only for a suspected scanner's attempts.
	Ports  []uint16
	Peers  []netip.Addr
	Reason string
	// Undocumented: answered traffic the matrix does not document or whose
	// peer is out of zone (counted by Ruleset.Undocumented).
	Undocumented bool
	// Lost: the peers are not known one by one (overflow or folded
	// entries), so Peers is empty. Prefixes are the prefixes they were
	// folded into (none for overflow), PeerCount the estimated distinct
	// peers (0: unknown), Packets their packets.
	Lost      bool
	Prefixes  []netip.Prefix
	PeerCount uint64
	Packets   uint64
}

// Widening is one prefix an observed peer was widened to (--aggregate).
type Widening struct {
	Prefix netip.Prefix // the /N asked for
	// Allowed is what was allowed after clipping to the documented peer.
	Allowed []netip.Prefix
	Clip    string // e.g. "zone AGENT_NETWORK"; empty when not clipped
	Peers   []netip.Addr
}

// Ruleset is the outcome of Build: every target renders it.
type Ruleset struct {
	Mode         Mode
	EgressPolicy Policy
	Tool         string
	// Source describes the snapshot; empty without one.
	Source string
	// Matrix is "UTMStack 11, role manager, conditions netflow"; empty in
	// observed mode without a matrix.
	Matrix string
	Site   string
	// Aggregate describes the widening asked for; empty for none.
	Aggregate string

	Allows []Allow
	// NotAllowed is observed traffic left out, with the reason.
	NotAllowed []Left
	// NotObserved lists documented rules that are not allowed because
	// no traffic from their zone was seen (Both mode).
	NotObserved []string
	// Opened lists documented, observed traffic that was refused or
	// filtered in the window and that the ruleset allows.
	Opened     []string
	Widened    []Widening
	Management []string
	// Warnings start with the refusal reasons overridden by Force
	// (Forced, each prefixed "FORCED (--force): ").
	Warnings []string
	Notes    []string
	// ProductNotes are notes about the audited product's deployment that
	// the host firewall targets add to their container caveat (UTMStack
	// v11 runs in containers); empty for other products.
	ProductNotes []string
	// Forced are the reasons Build would have refused the input for,
	// written anyway because of Options.Force.
	Forced []string
	// Undocumented counts observed, answered services that the matrix
	// does not document or whose peers were out of zone.
	Undocumented int
	// Hosts are the DNS names whose allowances list the addresses the
	// recording's DNS answers gave (Allow.Host), each with those answers.
	Hosts []HostAddrs
}

// HostAddrs is one DNS name (or wildcard) of the matrix and the answers
// that gave its addresses: which name, TTL and when (docs/DNS.md). They
// change: an allowance built from them needs refreshing.
type HostAddrs struct {
	Host    string
	Answers []snapshot.DNSName
}

// grant is one allowance before merging: a port (or type) range and the
// peers for it.
type grant struct {
	dir    snapshot.Direction
	proto  snapshot.Proto
	lo, hi uint16
	peers  *netipx.IPSet
	rules  []string
	mgmt   bool
	host   string // Allow.Host
}

type builder struct {
	o        Options
	rs       *Ruleset
	snap     *snapshot.Snapshot
	classes  []audit.FlowClass
	scanners map[netip.Addr]bool
	grants   []grant
	granted  map[string]bool // matrix rule IDs with a grant
	widened  map[string]*Widening
	left     []leftFlow
	replies  int
	loopback int
	aud      []*audit.FlowClass // auditable classes, replies set apart
	// coverCache serves covers; management grants are added only after
	// every non-management lookup, and looked up only after that.
	coverCache map[coverKey][]coverGroup
	// per-service notes whose peers are listed together
	warnPeers, openPeers *peerNotes
	// lost groups the traffic whose peers are unknown (lost.go)
	lost map[lostKey]*lostGroup
}

// peerNotes collects peers per message, so a line names a service once
// with its peers ("… from 10.0.0.1, 10.0.0.2 (+3 more)").
type peerNotes struct {
	order []string
	peers map[string][]netip.Addr
}

func newPeerNotes() *peerNotes { return &peerNotes{peers: map[string][]netip.Addr{}} }

// add records peer under msg, a format with one %s for the peer list.
func (n *peerNotes) add(msg string, peer netip.Addr) {
	if _, ok := n.peers[msg]; !ok {
		n.order = append(n.order, msg)
	}
	if !containsAddr(n.peers[msg], peer) {
		n.peers[msg] = append(n.peers[msg], peer)
	}
}

func (n *peerNotes) lines() []string {
	var out []string
	for _, msg := range n.order {
		ps := n.peers[msg]
		sort.Slice(ps, func(i, j int) bool { return ps[i].Less(ps[j]) })
		out = append(out, fmt.Sprintf(msg, peerList(ps)))
	}
	sort.Strings(out)
	return out
}

type leftFlow struct {
	f            *snapshot.Flow
	reason       string
	undocumented bool
	scanner      bool
}

// scannerReason is why a suspected scanner's traffic is left out.
const scannerReason = "suspected scanner (audit scan-suspected finding): its attempts are not allowed"

// Build decides what to allow. snap may be nil in Documented mode (the
// management guard then has no traffic to look at, and says so).
//
// Build refuses (a *RefusedError wrapping ErrRefused, naming every reason)
// a snapshot whose flow map overflowed, that was interrupted or is a
// checkpoint, or whose window is below MinWindow (in Documented mode,
// which allows no traffic from it, these are warnings), and a known
// session (Sessions) from outside every zone the matrix allows for it,
// unless Force; a window that shows no traffic is refused with ErrQuiet
// unless AllowQuiet.
func Build(snap *snapshot.Snapshot, o Options) (*Ruleset, error) {
	o.defaults()
	switch {
	case o.Mode != Observed && o.Matrix == nil:
		return nil, fmt.Errorf("mode %s needs a matrix (--matrix and --role)", o.Mode)
	case o.Mode != Documented && snap == nil:
		return nil, fmt.Errorf("mode %s needs observed traffic (a snapshot or a live recording)", o.Mode)
	case o.Aggregate4 < 0 || o.Aggregate4 > 32 || o.Aggregate6 < 0 || o.Aggregate6 > 128:
		return nil, fmt.Errorf("aggregate prefix lengths out of range: /%d (IPv4), /%d (IPv6)", o.Aggregate4, o.Aggregate6)
	}
	reasons, soft := o.refusals(snap)
	if len(reasons) > 0 && !o.Force {
		return nil, &RefusedError{Reasons: reasons}
	}
	b := &builder{o: o, snap: snap, granted: map[string]bool{}, widened: map[string]*Widening{},
		warnPeers: newPeerNotes(), openPeers: newPeerNotes(),
		rs: &Ruleset{Mode: o.Mode, EgressPolicy: o.EgressPolicy, Tool: o.ToolVersion, Forced: reasons}}
	for _, r := range soft {
		b.rs.Warnings = append(b.rs.Warnings, "incomplete snapshot (mode documented allows the zones without it; only the management guard and the lists below use it): "+r)
	}
	b.header()
	if snap != nil {
		if err := b.observe(); err != nil {
			return nil, err
		}
	}
	switch o.Mode {
	case Observed:
		b.observed()
	case Both:
		b.both()
	case Documented:
		b.documented()
	}
	if err := b.quiet(); err != nil {
		return nil, err
	}
	b.management()
	b.finishLeft()
	b.rs.Allows = merge(b.grants)
	b.dnsHosts()
	b.finish()
	return b.rs, nil
}

func (b *builder) header() {
	rs, o := b.rs, b.o
	if m := o.Matrix; m != nil {
		rs.Matrix = fmt.Sprintf("%s %s, role %s", m.ProductName, m.Version, m.Role)
		if m.Edition != "" {
			rs.Matrix = fmt.Sprintf("%s %s (%s edition), role %s", m.ProductName, m.Version, m.Edition, m.Role)
		}
		if len(m.Conditions) > 0 {
			rs.Matrix += ", conditions " + strings.Join(m.Conditions, ",")
		}
		rs.ProductNotes = productNotes[m.Family]
	}
	if o.Site != nil {
		rs.Site = o.Site.Source
	}
	var agg []string
	if o.Aggregate4 > 0 {
		agg = append(agg, fmt.Sprintf("IPv4 /%d", o.Aggregate4))
	}
	if o.Aggregate6 > 0 {
		agg = append(agg, fmt.Sprintf("IPv6 /%d", o.Aggregate6))
	}
	rs.Aggregate = strings.Join(agg, ", ")
	if s := b.snap; s != nil {
		var ifs []string
		for _, i := range s.Interfaces {
			ifs = append(ifs, i.Name)
		}
		src := s.Source
		if s.Hostname != "" {
			src += " on " + s.Hostname
		}
		if len(ifs) > 0 {
			src += " (" + strings.Join(ifs, ", ") + ")"
		}
		rs.Source = fmt.Sprintf("%s, %s to %s (%s), %d flows", src, s.Start.UTC().Format(time.RFC3339),
			s.End.UTC().Format(time.RFC3339), s.Window().Round(time.Second), len(s.Flows))
	}
}

// observe classifies the snapshot with the audit engine and takes its
// scanners and completeness findings.
func (b *builder) observe() error {
	m := b.o.Matrix
	if m == nil {
		m = &catalog.Matrix{Role: "(observed)"}
	}
	b.classes = audit.Classify(b.snap, m, b.o.Site)
	rep, err := audit.Run(b.snap, audit.Options{Matrix: m, Site: b.o.Site, MinWindow: b.o.MinWindow, ToolVersion: b.o.ToolVersion})
	if err != nil {
		return err
	}
	b.scanners = audit.SuspectedScanners(rep)
	for _, f := range rep.Findings {
		// A full map and a short window are refusal reasons, stated
		// with their numbers (refusals); the engine's other reasons
		// are passed on.
		if f.Kind == audit.AuditIncomplete && f.ID != "audit-incomplete/map-full" && f.ID != "audit-incomplete/short-window" {
			b.rs.Warnings = append(b.rs.Warnings, "audit incomplete: "+f.Summary)
		}
	}
	b.observeOverflow()
	var infra, unclass int
	for _, c := range b.classes {
		switch c.Kind {
		case audit.FlowInfrastructure:
			infra++
		case audit.FlowUnclassified:
			unclass++
		}
	}
	if infra > 0 {
		b.rs.Notes = append(b.rs.Notes, fmt.Sprintf("%d infrastructure flows (neighbour discovery, ICMP errors) need no rule: IPv6 neighbour discovery is accepted explicitly, ICMP errors of allowed connections as related", infra))
	}
	if unclass > 0 {
		b.rs.Notes = append(b.rs.Notes, fmt.Sprintf("%d flows without a known direction (fragments, unknown-direction ports) were not turned into rules", unclass))
	}
	return nil
}

// auditable are the classes rules are made from, computed once.
func (b *builder) auditable() []*audit.FlowClass {
	if b.aud != nil || b.classes == nil {
		return b.aud
	}
	out := []*audit.FlowClass{}
	for i := range b.classes {
		c := &b.classes[i]
		if c.Kind == audit.FlowInfrastructure || c.Kind == audit.FlowUnclassified {
			continue
		}
		if b.replyLike(c.Flow) {
			b.replies++
			continue
		}
		if !c.Flow.Peer.IsValid() {
			// folded (or peerless) entries never become rules
			b.lose(c, lostFolded)
			continue
		}
		if c.Flow.Peer.Unmap().IsLoopback() {
			b.loopback++
			continue
		}
		out = append(out, c)
	}
	b.aud = out
	return out
}

// replyLike: a flow whose direction came from the port heuristic and whose
// service port is an ephemeral port nothing listens on is most likely the
// reply side of a connection. Established/related covers it; it never
// becomes a rule.
func (b *builder) replyLike(f *snapshot.Flow) bool {
	if !f.DirectionInferred || !f.Proto.HasPorts() {
		return false
	}
	eph := b.snap.EphemeralPorts
	if eph[1] == 0 || f.Port < eph[0] || f.Port > eph[1] {
		return false
	}
	for _, s := range b.snap.Listening {
		if s.Proto == f.Proto && s.Port == f.Port {
			return false
		}
	}
	return true
}

// answered: the traffic was wanted and worked — answered, or one-way
// non-TCP traffic nobody refused (syslog, NetFlow).
func answered(c *audit.FlowClass) bool {
	return c.State == audit.StateOpen || (c.State == audit.StateUnanswered && c.Flow.Proto != snapshot.TCP)
}

// dirs are the directions a flow's grant opens: its own, or both for
// portless traffic of unknown direction (GRE, ESP).
func dirs(f *snapshot.Flow) []snapshot.Direction {
	if f.Direction == snapshot.Unknown {
		return []snapshot.Direction{snapshot.Inbound, snapshot.Outbound}
	}
	return []snapshot.Direction{f.Direction}
}

// portRange is the grant range of a flow: its port, its ICMP type, or 0
// for portless protocols.
func portRange(f *snapshot.Flow) (lo, hi uint16) {
	switch {
	case f.Proto.HasPorts():
		return f.Port, f.Port
	case f.Proto.IsICMP():
		return f.Port >> 8, f.Port >> 8
	}
	return 0, 0
}

func (b *builder) observed() {
	for _, c := range b.auditable() {
		f := c.Flow
		switch {
		case b.scanners[f.Peer.Unmap()]:
			b.leaveScanner(f)
			continue
		case !answered(c):
			b.leave(f, fmt.Sprintf("not answered (%s): nothing needed it", c.State), false)
			continue
		}
		label := "observed"
		if b.o.Matrix != nil {
			switch c.Kind {
			case audit.FlowDocumented:
				label = ""
			case audit.FlowUnverified:
				label = ""
				b.warnPeers.add(fmt.Sprintf("allowed although the site does not bind %s, so the peer is unverified (mode observed): %s %s %s %%s",
					c.Rules[0].Peer, f.Direction, svcLabel(f.Proto, f.Port), fromTo(f.Direction)), f.Peer.Unmap())
			case audit.FlowOutOfZone:
				label = "out-of-zone"
				b.warnPeers.add(fmt.Sprintf("allowed although the peer is outside %s (mode observed): %s %s %s %%s",
					c.Rules[0].Peer, f.Direction, svcLabel(f.Proto, f.Port), fromTo(f.Direction)), f.Peer.Unmap())
			default:
				label = "undocumented"
				b.warnPeers.add(fmt.Sprintf("allowed although undocumented (mode observed): %s %s %s %%s",
					f.Direction, svcLabel(f.Proto, f.Port), fromTo(f.Direction)), f.Peer.Unmap())
			}
		}
		var ids []string
		if label != "" {
			ids = []string{label}
		} else {
			ids = ruleIDs(c.Rules)
		}
		lo, hi := portRange(f)
		for _, d := range dirs(f) {
			b.add(grant{dir: d, proto: f.Proto, lo: lo, hi: hi, peers: b.widen(f.Peer.Unmap(), nil, ""), rules: ids})
		}
	}
}

func (b *builder) both() {
	for _, c := range b.auditable() {
		f := c.Flow
		peer := f.Peer.Unmap()
		if b.scanners[peer] && c.Kind != audit.FlowDocumented {
			b.leaveScanner(f)
			continue
		}
		switch c.Kind {
		case audit.FlowUndocumented:
			b.leave(f, "undocumented", answered(c))
			continue
		case audit.FlowOutOfZone:
			b.leave(f, fmt.Sprintf("peer outside %s (%s)", c.Rules[0].Peer, c.Rules[0].ID), answered(c))
			continue
		case audit.FlowUnverified:
			if !b.o.AllowUnverified {
				b.leave(f, fmt.Sprintf("the site does not bind %s (%s): peer unverified; bind it in the site file, or pass --allow-unverified", c.Rules[0].Peer, c.Rules[0].ID), false)
				continue
			}
			b.warnPeers.add(fmt.Sprintf("allowed unverified (--allow-unverified), the site does not bind %s: %s %s %s %%s",
				c.Rules[0].Peer, f.Direction, svcLabel(f.Proto, f.Port), fromTo(f.Direction)), peer)
		}
		var rules []*catalog.Rule
		for _, r := range c.Rules {
			if !r.Deprecated {
				rules = append(rules, r)
			}
		}
		if len(rules) == 0 {
			b.leave(f, fmt.Sprintf("%s is deprecated in this release", c.Rules[0].ID), false)
			continue
		}
		var clip *netipx.IPSet
		var clipLabel []string
		if c.Kind == audit.FlowDocumented {
			var cb netipx.IPSetBuilder
			for _, r := range rules {
				s, _ := b.peerSet(r.Peer)
				if b.byDNS(r.Peer) {
					s = b.dnsSet(r.Peer.Host)
				}
				cb.AddSet(s)
				clipLabel = append(clipLabel, r.Peer.String())
			}
			clip, _ = cb.IPSet()
		}
		if c.State == audit.StateClosed || c.State == audit.StateFiltered {
			b.openPeers.add(fmt.Sprintf("%s %s %s %%s was %s in the window; %s documents it, so it is allowed",
				f.Direction, svcLabel(f.Proto, f.Port), fromTo(f.Direction), c.State, strings.Join(ruleIDs(rules), ", ")), peer)
		}
		lo, hi := portRange(f)
		peers := b.widen(peer, clip, strings.Join(uniq(clipLabel), " + "))
		for _, r := range rules {
			ds := []snapshot.Direction{r.Direction}
			if f.Direction != snapshot.Unknown {
				ds = []snapshot.Direction{f.Direction}
			}
			g := grant{proto: f.Proto, lo: lo, hi: hi, peers: peers, rules: []string{r.ID}}
			if c.Kind == audit.FlowDocumented && b.byDNS(r.Peer) {
				// A name learned from DNS: every address the answers gave
				// for it, in an allowance of its own.
				g.peers, g.host = b.dnsSet(r.Peer.Host), r.Peer.Host
			}
			for _, d := range ds {
				g.dir = d
				b.add(g)
			}
			b.granted[r.ID] = true
		}
	}
	for _, r := range b.o.Matrix.Rules {
		if r.Deprecated || b.granted[r.ID] {
			continue
		}
		line := fmt.Sprintf("%s: %s %s/%s %s %s (%s)", r.ID, r.Direction, r.ProtoString(), r.PortString(), fromTo(r.Direction), r.Peer, r.Requirement)
		b.rs.NotObserved = append(b.rs.NotObserved, line)
	}
}

func (b *builder) documented() {
	full := fullSet()
	for i := range b.o.Matrix.Rules {
		r := &b.o.Matrix.Rules[i]
		if r.Deprecated {
			b.rs.Notes = append(b.rs.Notes, fmt.Sprintf("%s is deprecated in this release: no rule", r.ID))
			continue
		}
		set, bound := b.peerSet(r.Peer)
		host := ""
		if b.byDNS(r.Peer) {
			set, bound, host = b.dnsSet(r.Peer.Host), true, r.Peer.Host
		}
		if !bound {
			b.rs.Warnings = append(b.rs.Warnings, fmt.Sprintf("no rule for %s (%s %s/%s): the site does not bind %s; bind it in the site file",
				r.ID, r.Direction, r.ProtoString(), r.PortString(), r.Peer))
			continue
		}
		if r.Peer.Kind == catalog.PeerAny {
			set = full
		}
		for _, p := range r.Protos {
			ranges := r.Ports
			switch {
			case p.IsICMP():
				ranges = nil
				for _, pr := range r.Ports {
					ranges = append(ranges, catalog.PortRange{Lo: pr.Lo >> 8, Hi: pr.Hi >> 8})
				}
				if len(ranges) == 0 {
					ranges = []catalog.PortRange{{Lo: 0, Hi: 255}}
				}
			case !p.HasPorts():
				ranges = []catalog.PortRange{{}}
			}
			for _, pr := range ranges {
				b.add(grant{dir: r.Direction, proto: p, lo: pr.Lo, hi: pr.Hi, peers: set, rules: []string{r.ID}, host: host})
			}
		}
		b.granted[r.ID] = true
	}
	if b.snap == nil {
		return
	}
	// Observed traffic the documentation does not cover is listed.
	for _, c := range b.auditable() {
		if b.scanners[c.Flow.Peer.Unmap()] && c.Kind != audit.FlowDocumented {
			b.leaveScanner(c.Flow)
			continue
		}
		switch c.Kind {
		case audit.FlowUndocumented:
			b.leave(c.Flow, "undocumented", answered(c))
		case audit.FlowOutOfZone:
			b.leave(c.Flow, fmt.Sprintf("peer outside %s (%s)", c.Rules[0].Peer, c.Rules[0].ID), answered(c))
		case audit.FlowUnverified:
			b.leave(c.Flow, fmt.Sprintf("the site does not bind %s (%s)", c.Rules[0].Peer, c.Rules[0].ID), false)
		}
	}
}

func (b *builder) add(g grant) { b.grants = append(b.grants, g) }

func (b *builder) leave(f *snapshot.Flow, reason string, undocumented bool) {
	b.left = append(b.left, leftFlow{f: f, reason: reason, undocumented: undocumented})
}

// leaveScanner leaves out a suspected scanner's flow; its flows are listed
// together.
func (b *builder) leaveScanner(f *snapshot.Flow) {
	b.left = append(b.left, leftFlow{f: f, reason: scannerReason, scanner: true})
}

// peerSet is the set of addresses a documented peer stands for at this
// site.
func (b *builder) peerSet(p catalog.Peer) (*netipx.IPSet, bool) { return peerSet(b.o.Site, p) }

// peerSet is the set of addresses a documented peer stands for at site,
// as Site.Contains binds it: a role's hosts or else its zone, a zone, a
// DNS name's addresses, a literal prefix, or everything.
func peerSet(site *catalog.Site, p catalog.Peer) (*netipx.IPSet, bool) {
	var sb netipx.IPSetBuilder
	switch p.Kind {
	case catalog.PeerAny:
		return fullSet(), true
	case catalog.PeerCIDR:
		sb.AddPrefix(p.Prefix.Masked())
		s, _ := sb.IPSet()
		return s, true
	}
	if site == nil {
		return nil, false
	}
	var set *netipx.IPSet
	switch p.Kind {
	case catalog.PeerRole:
		set = site.Roles[p.Role]
		if set == nil && p.Zone != "" {
			set = site.Zones[p.Zone]
		}
	case catalog.PeerZone:
		set = site.Zones[p.Zone]
	case catalog.PeerDNS:
		set = site.HostSet(p.Host)
	}
	return set, set != nil
}

// widen returns the set a grant allows for an observed peer: the address
// itself, or with --aggregate its /N clipped to clip (the documented
// peer's set; nil: not clipped). Every widening is recorded.
func (b *builder) widen(addr netip.Addr, clip *netipx.IPSet, clipLabel string) *netipx.IPSet {
	bits := b.o.Aggregate4
	if addr.Is6() {
		bits = b.o.Aggregate6
	}
	var sb netipx.IPSetBuilder
	if bits == 0 || bits >= addr.BitLen() {
		sb.Add(addr)
		s, _ := sb.IPSet()
		return s
	}
	p := netip.PrefixFrom(addr, bits).Masked()
	sb.AddPrefix(p)
	if clip != nil {
		sb.Intersect(clip)
	} else {
		clipLabel = ""
	}
	sb.Add(addr)
	s, _ := sb.IPSet()
	key := p.String() + "|" + clipLabel
	w := b.widened[key]
	if w == nil {
		w = &Widening{Prefix: p, Allowed: s.Prefixes(), Clip: clipLabel}
		b.widened[key] = w
	}
	if !containsAddr(w.Peers, addr) {
		w.Peers = append(w.Peers, addr)
	}
	return s
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// covers reports whether the grants (management ones, or the others)
// allow a peer's traffic to a port, and which rules do. Lookups go
// through a cache of the grants per (direction, protocol, port, kind),
// grouped by rule list, so checking many flows stays fast; it is built
// lazily, after the grants of that kind are complete.
func (b *builder) covers(dir snapshot.Direction, p snapshot.Proto, port uint16, peer netip.Addr, mgmt bool) (bool, []string) {
	k := coverKey{dir, p, port, mgmt}
	groups, ok := b.coverCache[k]
	if !ok {
		byRules := map[string]*netipx.IPSetBuilder{}
		ruleLists := map[string][]string{}
		var order []string
		for _, g := range b.grants {
			if g.mgmt != mgmt || g.dir != dir || g.proto != p || port < g.lo || port > g.hi {
				continue
			}
			rk := strings.Join(g.rules, "\x00")
			if byRules[rk] == nil {
				byRules[rk] = &netipx.IPSetBuilder{}
				ruleLists[rk] = g.rules
				order = append(order, rk)
			}
			byRules[rk].AddSet(g.peers)
		}
		for _, rk := range order {
			set, _ := byRules[rk].IPSet()
			groups = append(groups, coverGroup{set, ruleLists[rk]})
		}
		if b.coverCache == nil {
			b.coverCache = map[coverKey][]coverGroup{}
		}
		b.coverCache[k] = groups
	}
	var ids []string
	found := false
	for _, g := range groups {
		if g.peers.Contains(peer) {
			found = true
			ids = append(ids, g.rules...)
		}
	}
	return found, uniq(ids)
}

type coverKey struct {
	dir   snapshot.Direction
	proto snapshot.Proto
	port  uint16
	mgmt  bool
}

type coverGroup struct {
	peers *netipx.IPSet
	rules []string
}

// quiet refuses to generate a deny-all policy from a window that showed
// no traffic.
func (b *builder) quiet() error {
	if b.o.Mode == Documented || b.o.AllowQuiet {
		if b.snap == nil {
			b.rs.Warnings = append(b.rs.Warnings, "no traffic given: the management guard could not look for the session you administer the appliance with; make sure the rules allow it")
		}
		return nil
	}
	var in, out bool
	for _, c := range b.auditable() {
		if b.scanners[c.Flow.Peer.Unmap()] {
			continue
		}
		switch c.Flow.Direction {
		case snapshot.Inbound:
			in = true
		case snapshot.Outbound:
			out = true
		default:
			in, out = true, true
		}
	}
	role := "the appliance"
	if b.o.Matrix != nil {
		role = "role " + b.o.Matrix.Role
	}
	w := b.snap.Window().Round(time.Second)
	if !in && len(b.o.Sessions) == 0 {
		return fmt.Errorf("%w: no inbound traffic of %s was observed in the %s window, so every inbound rule would be missing; record longer, use --mode documented, or pass --allow-quiet to accept an input policy that allows only replies", ErrQuiet, role, w)
	}
	if !out && b.o.EgressPolicy == Drop {
		return fmt.Errorf("%w: no outbound traffic of %s was observed in the %s window, so --egress-policy drop would block every connection it makes; record longer, keep --egress-policy accept, or pass --allow-quiet", ErrQuiet, role, w)
	}
	if !out {
		b.rs.Notes = append(b.rs.Notes, fmt.Sprintf("no outbound traffic of %s was observed in the %s window; the output policy stays accept", role, w))
	}
	return nil
}

// management is the management guard. Its sessions are the inbound
// sessions on the management ports seen in the window (answered, and
// either established before the recording or carrying data both ways: a
// probe or a scanner does not count) and the sessions the caller knows of
// (Options.Sessions: the SSH_CONNECTION of a live run). For each:
//
//   - a rule already allows it: reported, nothing added;
//   - else its peer is inside what the site binds to the peer of a matrix
//     rule for that inbound service (a zone the matrix allows for it; any
//     peer without a matrix): KEPT by a separate "management-guard" rule;
//   - else it is NOT kept — an outsider's session, e.g. a failed SSH login
//     from an address in no allowed zone, stays out and is listed under
//     "Observed but NOT allowed". The one exception is a known session
//     (the person running flowaudit): Build refuses it (refusals) unless
//     Force, and with Force keeps it, with a warning.
//
// docs/RULES.md ("Never lock out management") says the same.
func (b *builder) management() {
	if b.o.NoManagementGuard {
		b.rs.Warnings = append(b.rs.Warnings, "the management guard is off: nothing keeps your SSH/HTTPS session if no rule allows it")
		for _, s := range b.o.Sessions {
			if ok, _ := b.covers(snapshot.Inbound, s.Proto, s.Port, s.Peer.Unmap(), false); !ok {
				b.rs.Warnings = append(b.rs.Warnings, fmt.Sprintf("the management guard is off and no rule allows your own session, inbound %s from %s (%s): applying these rules cuts it",
					s.Service, s.Peer.Unmap(), s.Why))
			}
		}
		return
	}
	type sess struct {
		peer  netip.Addr
		svc   Service
		why   string
		known bool           // from Options.Sessions
		flow  *snapshot.Flow // the observed flow, nil for a known session
	}
	var list []sess
	seen := map[string]bool{}
	addSess := func(s sess) {
		k := s.peer.String() + "|" + s.svc.String()
		if !seen[k] {
			seen[k] = true
			list = append(list, s)
		}
	}
	for _, s := range b.o.Sessions {
		addSess(sess{peer: s.Peer.Unmap(), svc: s.Service, why: s.Why, known: true})
	}
	for _, c := range b.classes {
		f := c.Flow
		if f.Direction != snapshot.Inbound || c.State != audit.StateOpen || !f.Peer.IsValid() || b.scanners[f.Peer.Unmap()] {
			continue
		}
		svc := Service{f.Proto, f.Port}
		if !containsService(b.o.ManagementPorts, svc) {
			continue
		}
		e := f.Evidence
		switch {
		case e.SynIn == 0 && f.PacketsIn > 0 && f.PacketsOut > 0:
			addSess(sess{peer: f.Peer.Unmap(), svc: svc, why: "session established before the recording started", flow: f})
		case e.SynAckOut > 0 && f.PacketsIn >= 3 && f.PacketsOut >= 2:
			addSess(sess{peer: f.Peer.Unmap(), svc: svc, why: "session opened in the window", flow: f})
		}
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].svc != list[j].svc {
			return list[i].svc.Port < list[j].svc.Port || (list[i].svc.Port == list[j].svc.Port && list[i].svc.Proto < list[j].svc.Proto)
		}
		return list[i].peer.Less(list[j].peer)
	})
	for _, s := range list {
		if ok, ids := b.covers(snapshot.Inbound, s.svc.Proto, s.svc.Port, s.peer, false); ok {
			b.rs.Management = append(b.rs.Management, fmt.Sprintf("inbound %s from %s (%s) stays allowed by %s", s.svc, s.peer, s.why, strings.Join(ids, ", ")))
			continue
		}
		inZone, zones := b.o.sessionInZone(s.peer, s.svc)
		if !inZone && !s.known {
			b.rs.Management = append(b.rs.Management, fmt.Sprintf("inbound %s from %s (%s) is NOT kept: the peer is outside every zone the matrix allows for %s (%s); listed under Observed but NOT allowed",
				s.svc, s.peer, s.why, s.svc, zones))
			if !b.isLeft(s.flow) {
				b.leave(s.flow, fmt.Sprintf("management session from outside every zone the matrix allows for %s (%s): not kept", s.svc, zones), true)
			}
			continue
		}
		var sb netipx.IPSetBuilder
		sb.Add(s.peer)
		set, _ := sb.IPSet()
		b.add(grant{dir: snapshot.Inbound, proto: s.svc.Proto, lo: s.svc.Port, hi: s.svc.Port, peers: set, rules: []string{"management-guard"}, mgmt: true})
		why := b.whyNot(s.peer, s.svc)
		switch {
		case !inZone: // a known session, written because of Force (else refused)
			b.rs.Management = append(b.rs.Management, fmt.Sprintf("inbound %s from %s (%s) is KEPT because of --force although %s and the peer is outside every zone the matrix allows for %s (%s); remove that rule once you no longer need it",
				s.svc, s.peer, s.why, why, s.svc, zones))
			b.rs.Warnings = append(b.rs.Warnings, fmt.Sprintf("your own session, inbound %s from %s (%s), is kept by a management-guard rule although its peer is outside every zone the matrix allows for %s",
				s.svc, s.peer, s.why, s.svc))
		case zones == "":
			b.rs.Management = append(b.rs.Management, fmt.Sprintf("inbound %s from %s (%s) is KEPT by the management guard although %s (no matrix to check its zone against)",
				s.svc, s.peer, s.why, why))
		default:
			b.rs.Management = append(b.rs.Management, fmt.Sprintf("inbound %s from %s (%s) is KEPT by the management guard although %s: the peer is inside %s, which the matrix allows for %s",
				s.svc, s.peer, s.why, why, zones, s.svc))
		}
	}
	if len(list) == 0 && b.snap != nil {
		b.rs.Notes = append(b.rs.Notes, fmt.Sprintf("no management session (%s) was seen in the window", servicesString(b.o.ManagementPorts)))
	}
}

// isLeft reports whether f was already left out.
func (b *builder) isLeft(f *snapshot.Flow) bool {
	for _, l := range b.left {
		if l.f == f {
			return true
		}
	}
	return false
}

// whyNot explains why the normal rules would not allow a session.
func (b *builder) whyNot(peer netip.Addr, svc Service) string {
	for _, l := range b.left {
		if l.f.Proto == svc.Proto && l.f.Port == svc.Port && !l.scanner && l.f.Peer.Unmap() == peer && l.f.Direction == snapshot.Inbound {
			return l.reason
		}
	}
	if b.o.Mode == Documented {
		return "no documented rule allows it"
	}
	return "no rule allows it"
}

// finishLeft turns the flows left out into NotAllowed entries, merging
// peers of the same service and reason; flows a grant covers anyway
// (another rule, widening, the management guard) are dropped.
func (b *builder) finishLeft() {
	type key struct {
		dir     snapshot.Direction
		proto   snapshot.Proto
		port    uint16
		reason  string
		scanner netip.Addr
	}
	m := map[key]*Left{}
	for _, l := range b.left {
		f := l.f
		peer := f.Peer.Unmap()
		lo, _ := portRange(f)
		covered := false
		for _, d := range dirs(f) {
			ok, _ := b.covers(d, f.Proto, lo, peer, false)
			okm, _ := b.covers(d, f.Proto, lo, peer, true)
			covered = covered || ok || okm
		}
		if covered {
			continue
		}
		reason := l.reason
		if f.Direction == snapshot.Outbound && b.o.EgressPolicy == Accept {
			reason += "; passes anyway while the output policy is accept"
		}
		k := key{f.Direction, f.Proto, f.Port, reason, netip.Addr{}}
		if l.scanner {
			k.port, k.scanner = 0, peer
		}
		e := m[k]
		if e == nil {
			e = &Left{Direction: f.Direction, Proto: f.Proto, Reason: reason}
			m[k] = e
		}
		if !containsAddr(e.Peers, peer) {
			e.Peers = append(e.Peers, peer)
		}
		if !slices.Contains(e.Ports, f.Port) {
			e.Ports = append(e.Ports, f.Port)
		}
		e.Undocumented = e.Undocumented || l.undocumented
	}
	for _, e := range m {
		sort.Slice(e.Peers, func(i, j int) bool { return e.Peers[i].Less(e.Peers[j]) })
		slices.Sort(e.Ports)
		b.rs.NotAllowed = append(b.rs.NotAllowed, *e)
	}
	b.rs.NotAllowed = append(b.rs.NotAllowed, b.lostLeft()...)
	for _, e := range b.rs.NotAllowed {
		if e.Undocumented {
			b.rs.Undocumented++
		}
	}
	sort.Slice(b.rs.NotAllowed, func(i, j int) bool {
		a, c := b.rs.NotAllowed[i], b.rs.NotAllowed[j]
		if a.Direction != c.Direction {
			return a.Direction < c.Direction
		}
		if a.Proto != c.Proto {
			return a.Proto < c.Proto
		}
		if a.Ports[0] != c.Ports[0] {
			return a.Ports[0] < c.Ports[0]
		}
		if a.Lost != c.Lost {
			return !a.Lost
		}
		if a.Reason != c.Reason {
			return a.Reason < c.Reason
		}
		if len(a.Peers) == 0 || len(c.Peers) == 0 {
			return len(a.Peers) < len(c.Peers)
		}
		return a.Peers[0].Less(c.Peers[0])
	})
}

func (b *builder) finish() {
	rs := b.rs
	for _, w := range b.widened {
		sort.Slice(w.Peers, func(i, j int) bool { return w.Peers[i].Less(w.Peers[j]) })
		rs.Widened = append(rs.Widened, *w)
	}
	sort.Slice(rs.Widened, func(i, j int) bool {
		a, c := rs.Widened[i], rs.Widened[j]
		if a.Prefix != c.Prefix {
			return a.Prefix.Addr().Less(c.Prefix.Addr()) || (a.Prefix.Addr() == c.Prefix.Addr() && a.Prefix.Bits() < c.Prefix.Bits())
		}
		return a.Clip < c.Clip
	})
	if b.loopback > 0 {
		rs.Notes = append(rs.Notes, fmt.Sprintf("%d loopback flows need no rule: loopback is always accepted", b.loopback))
	}
	if b.replies > 0 {
		rs.Notes = append(rs.Notes, fmt.Sprintf("%d flows looked like the reply side of connections (ephemeral port, direction inferred, no listener): replies are accepted as established/related, never by port", b.replies))
	}
	if b.o.Mode != Documented {
		in := 0
		for _, a := range rs.Allows {
			if a.Direction == snapshot.Inbound && !a.Management {
				in++
			}
		}
		if in == 0 {
			rs.Warnings = append(rs.Warnings, "no observed inbound traffic qualified for a rule: the input policy allows only replies, loopback and the management sessions listed; review the traffic left out before applying")
		}
	}
	var req []string
	for _, r := range rs.NotObserved {
		if strings.HasSuffix(r, "(required)") || strings.HasSuffix(r, "(conditional)") {
			id, _, _ := strings.Cut(r, ":")
			req = append(req, id)
		}
	}
	if len(req) > 0 {
		rs.Warnings = append(rs.Warnings, fmt.Sprintf("%d required documented rules had no traffic from their peers in the window and are NOT allowed (%s); if the appliance needs them, record longer or use --mode documented",
			len(req), strings.Join(req, ", ")))
	}
	sort.Strings(rs.NotObserved)
	rs.Opened = b.openPeers.lines()
	rs.Warnings = append(rs.Warnings, b.warnPeers.lines()...)
	if b.o.Mode == Observed && b.o.Matrix != nil {
		for _, msg := range b.warnPeers.order {
			if !strings.Contains(msg, "unverified") {
				rs.Undocumented++
			}
		}
	}
	if st := b.snapStats(); st != nil && (st.FoldedFlows > 0 || b.hasLost(lostFolded)) {
		rs.Warnings = append(rs.Warnings, fmt.Sprintf("the recorder folded %d per-peer entries into prefixes to stay within its memory budget (%d flow entries): those peers get no rule (listed under Observed but NOT allowed as \"peers folded into\"); applying these rules cuts them off if they need the service",
			st.FoldedFlows, st.FlowBudget))
	}
	forced := make([]string, len(rs.Forced))
	for i, r := range rs.Forced {
		forced[i] = forcedPrefix + r
	}
	rs.Warnings = append(forced, uniq(rs.Warnings)...)
}

func (b *builder) snapStats() *snapshot.Stats {
	if b.snap == nil {
		return nil
	}
	return &b.snap.Stats
}

func (b *builder) hasLost(kind lostKind) bool {
	for k := range b.lost {
		if k.kind == kind {
			return true
		}
	}
	return false
}

func ruleIDs(rules []*catalog.Rule) []string {
	var ids []string
	for _, r := range rules {
		ids = append(ids, r.ID)
	}
	return uniq(ids)
}

// uniq sorts and deduplicates.
func uniq(s []string) []string {
	if len(s) == 0 {
		return s
	}
	out := append([]string(nil), s...)
	sort.Strings(out)
	n := 1
	for i := 1; i < len(out); i++ {
		if out[i] != out[n-1] {
			out[n] = out[i]
			n++
		}
	}
	return out[:n]
}

func containsService(list []Service, s Service) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func servicesString(list []Service) string {
	s := make([]string, len(list))
	for i, x := range list {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}

func fromTo(d snapshot.Direction) string {
	if d == snapshot.Outbound {
		return "to"
	}
	return "from"
}

// svcLabel formats a flow's service: "tcp/22", "icmp echo", "gre".
func svcLabel(p snapshot.Proto, port uint16) string {
	switch {
	case p.HasPorts():
		return p.String() + "/" + strconv.Itoa(int(port))
	case p.IsICMP():
		return fmt.Sprintf("%s type %d", p, port>>8)
	}
	return p.String()
}
