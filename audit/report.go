package audit

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"go4.org/netipx"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// ReportVersion is the version of the JSON report format.
const ReportVersion = 1

// Report is the result of an audit. Every output format renders it.
type Report struct {
	Version int `json:"version"`
	Tool    struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"tool"`
	Generated time.Time    `json:"generated"`
	Snapshot  SnapshotInfo `json:"snapshot"`
	Matrix    MatrixInfo   `json:"matrix"`
	// Site is the site file's path, empty when none was given.
	Site string `json:"site,omitempty"`
	// SiteLines gives, for each rule peer of the matrix the site binds
	// ("zone ADMIN_IP", RuleRef.Peer), the line of the site file that
	// binds it.
	SiteLines map[string]int `json:"site_lines,omitempty"`
	// Counts of findings per severity.
	Counts map[string]int `json:"counts"`
	// Findings, most severe first.
	Findings []Finding `json:"findings"`
	// Rules is the documented matrix with what was observed for each rule.
	Rules []RuleStatus `json:"rules"`
	// Observed is every observed service (direction, protocol, port) with
	// its packets per peer column: the documented-vs-observed heat-map.
	Columns  []string      `json:"columns"`
	Observed []ObservedRow `json:"observed"`
	// Infrastructure (ICMP errors, neighbour discovery) and unclassified
	// (fragments) traffic is counted but not audited.
	Infrastructure snapshot.Counter `json:"infrastructure"`
	Unclassified   snapshot.Counter `json:"unclassified"`
	// Coverage says what the snapshot could not show; every format
	// renders it.
	Coverage Coverage `json:"coverage"`

	rows map[service]*ObservedRow
	// cells caches addCell's look-ups (a million flows, a few dozen rows
	// and columns): the row of the last service (flows come grouped by
	// service), and the columns' address ranges (see column).
	cells struct {
		svc  service
		row  *ObservedRow
		site *catalog.Site
		// ranges hold every address of a column's set, each in the
		// first column (in Columns order) holding it: disjoint, sorted
		// by start. Stale when site is not the site asked for.
		ranges []columnRange
		last   int // the range that held the last address found
		// pending packets of one cell, not yet in row.Cells: runs of
		// flows fill the same cell (flushCells).
		pendRow     *ObservedRow
		pendCol     string
		pendPackets uint64
	}
}

// columnRange is addresses of one heat-map column.
type columnRange struct {
	r   netipx.IPRange
	col string
}

// Coverage is what the snapshot could not show: packets that lost their
// peer or were not counted at all, peers folded into prefixes, a
// recording that ended early. The audit-incomplete findings say the same,
// with severities.
type Coverage struct {
	// Complete: every packet was counted with its peer, no peer was
	// folded, and the recorder ran to its planned end.
	Complete bool `json:"complete"`
	// PeerlessPackets were counted per service without their peer (the
	// kernel flow map was full; snapshot overflow entries); the services,
	// most packets first, are in PeerlessServices.
	PeerlessPackets  uint64         `json:"peerless_packets"`
	PeerlessServices []ServiceCount `json:"peerless_services,omitempty"`
	// LostPackets were not counted at all (the overflow map was full
	// too); EvictedFlows were dropped by an LRU map.
	LostPackets  uint64 `json:"lost_packets"`
	EvictedFlows uint64 `json:"evicted_flows"`
	// FoldedFlows per-peer flows were folded into prefix entries to stay
	// within the recorder's budget of FlowBudget flows; FoldedServices
	// lists the services and the prefix lengths.
	FoldedFlows    uint64         `json:"folded_flows"`
	FlowBudget     uint64         `json:"flow_budget,omitempty"`
	FoldedServices []ServiceCount `json:"folded_services,omitempty"`
	// UncheckedServices are services with folded prefixes that straddle
	// the edge of a rule's zone: those peers could not be checked.
	UncheckedServices []ServiceCount `json:"unchecked_services,omitempty"`
	// Interrupted: the recording stopped before its planned end.
	Interrupted *snapshot.Interruption `json:"interrupted,omitempty"`
	// Checkpoint: the snapshot was written while the recording was still
	// running, and the recorder never replaced it with a final one.
	Checkpoint bool `json:"checkpoint,omitempty"`
	// DNSDropped DNS answers were lost (the ring buffer was full) and
	// DNSEvicted names dropped from the full table: names may be missing.
	DNSDropped uint64 `json:"dns_dropped,omitempty"`
	DNSEvicted uint64 `json:"dns_evicted,omitempty"`
	// Stopped describes the interruption for people ("interrupted by
	// SIGTERM at …, after 4m10s of a planned 10m0s").
	Stopped string `json:"stopped,omitempty"`
}

// PeersIncomplete: some traffic is counted without its peer, or with its
// peers folded into prefixes.
func (c *Coverage) PeersIncomplete() bool {
	return c.PeerlessPackets > 0 || len(c.PeerlessServices) > 0 || c.FoldedFlows > 0 || len(c.FoldedServices) > 0
}

// Lossy: some packets were not counted at all.
func (c *Coverage) Lossy() bool { return c.LostPackets > 0 || c.EvictedFlows > 0 }

// Lines describes every gap in one line each, for the table, HTML, JUnit
// and SARIF; nil when the snapshot is complete.
func (c *Coverage) Lines() []string {
	var out []string
	if c.PeerlessPackets > 0 || len(c.PeerlessServices) > 0 {
		out = append(out, fmt.Sprintf("peers lost: %d packets counted without their peer (the kernel flow map was full), on %s",
			c.PeerlessPackets, serviceList(c.PeerlessServices, 5)))
	}
	if c.Lossy() {
		out = append(out, fmt.Sprintf("not counted: %d packets (the overflow map was full too), %d flows evicted", c.LostPackets, c.EvictedFlows))
	}
	if c.FoldedFlows > 0 || len(c.FoldedServices) > 0 {
		budget := ""
		if c.FlowBudget > 0 {
			budget = fmt.Sprintf(" (budget %d flows)", c.FlowBudget)
		}
		out = append(out, fmt.Sprintf("folded: %d per-peer flows into prefixes%s, on %s", c.FoldedFlows, budget, serviceList(c.FoldedServices, 5)))
	}
	if len(c.UncheckedServices) > 0 {
		out = append(out, "zones unchecked: folded prefixes straddle a zone's edge on "+serviceList(c.UncheckedServices, 5))
	}
	if c.DNSDropped > 0 || c.DNSEvicted > 0 {
		out = append(out, fmt.Sprintf("dns answers lost: %d dropped (the ring buffer was full), %d names evicted (the table was full): addresses of dns: rules may lack their names",
			c.DNSDropped, c.DNSEvicted))
	}
	if c.Stopped != "" {
		out = append(out, "stopped early: the recording was "+c.Stopped)
	}
	if c.Checkpoint {
		out = append(out, "checkpoint: this snapshot was written while the recording was still running; the recorder never wrote its final snapshot")
	}
	return out
}

// serviceList names up to n services with their packets, peers, fold
// levels and unchecked zones: "in tcp/80 (438000 packets, ~431000 peers,
// /24), … and 3 more".
func serviceList(ss []ServiceCount, n int) string {
	if len(ss) == 0 {
		return "no service"
	}
	var parts []string
	for i, s := range ss {
		if i == n {
			parts = append(parts, fmt.Sprintf("and %d more", len(ss)-n))
			break
		}
		d := []string{fmt.Sprintf("%d packets", s.Packets)}
		if s.Peers > 0 {
			d = append(d, fmt.Sprintf("~%d peers", s.Peers))
		}
		if len(s.Folded) > 0 {
			d = append(d, "to "+strings.Join(s.Folded, ", "))
		}
		switch {
		case len(s.Prefixes) > 0:
			d = append(d, strings.Join(s.Prefixes, ", ")+" across "+strings.Join(s.Unchecked, ", "))
		case len(s.Unchecked) > 0:
			d = append(d, "not checked against "+strings.Join(s.Unchecked, ", "))
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", s, strings.Join(d, ", ")))
	}
	return strings.Join(parts, "; ")
}

// SnapshotInfo summarises the audited snapshot.
type SnapshotInfo struct {
	Source     string               `json:"source"`
	Hostname   string               `json:"hostname,omitempty"`
	Kernel     string               `json:"kernel,omitempty"`
	Interfaces []snapshot.Interface `json:"interfaces"`
	Start      time.Time            `json:"start"`
	End        time.Time            `json:"end"`
	Window     string               `json:"window"`
	Flows      int                  `json:"flows"`
	// Overflow is the number of overflow entries: per-service counts of
	// packets that lost their peer.
	Overflow int            `json:"overflow,omitempty"`
	Stats    snapshot.Stats `json:"stats"`
	// DNS summarises the snapshot's passive DNS section (nil without one).
	DNS *DNSInfo `json:"dns,omitempty"`
}

// MatrixInfo names the matrix audited against.
type MatrixInfo struct {
	Product     string `json:"product"`
	ProductName string `json:"product_name"`
	Version     string `json:"version"`
	// Edition is the edition of the vendor document the matrix follows,
	// for a product documented in several (USM: alienvault, levelblue).
	Edition    string   `json:"edition,omitempty"`
	Role       string   `json:"role"`
	Conditions []string `json:"conditions"`
	Rules      int      `json:"rules"`
}

// Rule statuses.
const (
	StatusSeen       = "seen"        // traffic from documented peers
	StatusUnverified = "unverified"  // traffic, but the site does not bind the rule's peer
	StatusOutOfZone  = "out-of-zone" // only peers outside the rule's zone
	// StatusPeersUnknown: traffic on the rule's service whose peers are
	// unknown (counted without its peer, or folded into a prefix across
	// the zone's edge), none from a peer known to be in the zone.
	StatusPeersUnknown = "seen-peers-unknown"
	StatusClosed       = "closed"
	StatusFiltered     = "filtered"
	StatusNotSeen      = "not-seen"
	StatusDeprecated   = "deprecated-in-use"
)

// RuleStatus is one matrix rule and what the window showed of it.
type RuleStatus struct {
	Rule RuleRef `json:"rule"`
	// Status is one of the Status* constants.
	Status     string `json:"status"`
	Deprecated bool   `json:"deprecated,omitempty"`
	// Evidence is all of the rule's traffic: Allowed and OutOfZone
	// together.
	Evidence Evidence `json:"evidence"`
	// Allowed is the traffic of the peers the rule allows or may allow:
	// in its zone, in a zone the site does not bind (unverified), or
	// unknown (no peer identity, a folded prefix across the zone's edge);
	// with a suspected flood's packets beside it (FloodPackets).
	Allowed Evidence `json:"allowed"`
	// OutOfZone is the traffic of the peers outside the rule's zone (nil
	// when there was none); OutOfZonePeers counts them.
	OutOfZone      *Evidence `json:"out_of_zone,omitempty"`
	OutOfZonePeers int       `json:"out_of_zone_peers,omitempty"`
	// Findings are the IDs of findings about this rule.
	Findings []string `json:"findings,omitempty"`
}

// ObservedRow is one observed service in the heat-map.
type ObservedRow struct {
	Direction  snapshot.Direction `json:"direction"`
	Proto      string             `json:"proto"`
	Port       string             `json:"port"`
	Documented bool               `json:"documented"`
	Packets    uint64             `json:"packets"`
	// Cells: packets per column (zone or role the peer is in, or "other").
	Cells map[string]uint64 `json:"cells"`
	// OutOfZone: of a documented row's Cells, the packets per column of
	// peers outside the zone of every rule of the service (the
	// peer-out-of-zone traffic); absent when there were none.
	OutOfZone map[string]uint64 `json:"out_of_zone,omitempty"`
}

func newReport(snap *snapshot.Snapshot, o Options) *Report {
	r := &Report{Version: ReportVersion, Generated: o.Now().UTC(), rows: map[service]*ObservedRow{}}
	r.Tool.Name = "flowaudit"
	r.Tool.Version = o.ToolVersion
	r.Snapshot = SnapshotInfo{
		Source: snap.Source, Hostname: snap.Hostname, Kernel: snap.Kernel, Interfaces: snap.Interfaces,
		Start: snap.Start, End: snap.End, Window: snap.Window().Round(time.Second).String(), Flows: len(snap.Flows), Overflow: len(snap.Overflow), Stats: snap.Stats,
	}
	m := o.Matrix
	r.Matrix = MatrixInfo{Product: m.Product, ProductName: m.ProductName, Version: m.Version, Edition: m.Edition, Role: m.Role,
		Conditions: append([]string{}, m.Conditions...), Rules: len(m.Rules)}
	if o.Site != nil {
		r.Site = o.Site.Source
		for i := range m.Rules {
			p := m.Rules[i].Peer
			if l := o.Site.Line(p); l > 0 {
				if r.SiteLines == nil {
					r.SiteLines = map[string]int{}
				}
				r.SiteLines[p.String()] = l
			}
		}
	}
	r.Columns = siteColumns(o.Site)
	r.Snapshot.DNS = dnsInfo(snap.DNS)
	return r
}

// otherColumn collects peers in no zone or role of the site;
// unknownColumn traffic whose peer is unknown (overflow entries) or a
// folded prefix that straddles a zone or role's edge.
const (
	otherColumn   = "other"
	unknownColumn = "unknown"
)

func siteColumns(s *catalog.Site) []string {
	var cols []string
	if s != nil {
		for z := range s.Zones {
			cols = append(cols, z)
		}
		for r := range s.Roles {
			cols = append(cols, "role:"+r)
		}
	}
	sort.Strings(cols)
	return append(cols, otherColumn)
}

// column is the first column (zone, then role) containing addr.
func column(s *catalog.Site, cols []string, addr netip.Addr) string {
	if s == nil {
		return otherColumn
	}
	for _, c := range cols {
		if set := columnSet(s, c); set != nil && set.Contains(addr) {
			return c
		}
	}
	return otherColumn
}

// columnSet is the set of column c: a role's ("role:NAME") or a zone's;
// nil for other columns.
func columnSet(s *catalog.Site, c string) *netipx.IPSet {
	if name, ok := strings.CutPrefix(c, "role:"); ok {
		return s.Roles[name]
	}
	return s.Zones[c]
}

// prefixColumn is the first column (zone, then role) holding all of p;
// unknownColumn if a column holds part of it, otherColumn if none does.
func prefixColumn(s *catalog.Site, cols []string, p netip.Prefix) string {
	if s == nil {
		return otherColumn
	}
	partly := false
	for _, c := range cols {
		var set *netipx.IPSet
		if name, ok := strings.CutPrefix(c, "role:"); ok {
			set = s.Roles[name]
		} else {
			set = s.Zones[c]
		}
		switch {
		case set == nil:
		case set.ContainsPrefix(p):
			return c
		case set.OverlapsPrefix(p):
			partly = true
		}
	}
	if partly {
		return unknownColumn
	}
	return otherColumn
}

// addCell counts f in the heat-map. dnsHost, when set, is the DNS name of
// the rule the peer matched by name: the peer goes in that name's column
// ("dns:data.alienvault.com", added before "other" when first used)
// unless a zone or role of the site holds it.
func (r *Report) addCell(s service, documented, outOfZone bool, f *snapshot.Flow, site *catalog.Site, dnsHost ...string) {
	row := r.cells.row
	if row == nil || r.cells.svc != s {
		row = r.rows[s]
		if row == nil {
			row = &ObservedRow{Direction: s.dir, Proto: s.proto.String(), Port: portLabel(s.proto, s.port), Cells: map[string]uint64{}}
			r.rows[s] = row
		}
		r.cells.svc, r.cells.row = s, row
	}
	row.Documented = row.Documented || documented
	row.Packets += f.Packets()
	col := unknownColumn
	switch {
	case f.Peer.IsValid():
		col = r.column(site, f.Peer)
		if col == otherColumn && len(dnsHost) > 0 && dnsHost[0] != "" {
			col = r.dnsColumn(dnsHost[0])
		}
	case f.Folded():
		col = prefixColumn(site, r.Columns, unmapPrefix(f.PeerPrefix))
	}
	if c := &r.cells; c.pendRow == row && c.pendCol == col {
		c.pendPackets += f.Packets()
	} else {
		r.flushCells()
		c.pendRow, c.pendCol, c.pendPackets = row, col, f.Packets()
	}
	if outOfZone {
		if row.OutOfZone == nil {
			row.OutOfZone = map[string]uint64{}
		}
		row.OutOfZone[col] += f.Packets()
	}
}

// flushCells adds addCell's pending packets to their cell (creating it
// even for none, as addCell always did).
func (r *Report) flushCells() {
	if c := &r.cells; c.pendRow != nil {
		c.pendRow.Cells[c.pendCol] += c.pendPackets
		c.pendRow, c.pendCol, c.pendPackets = nil, "", 0
	}
}

// dnsColumn is the heat-map column of a DNS name, inserted (sorted among
// the DNS columns) before "other" the first time it is needed.
func (r *Report) dnsColumn(host string) string {
	col := dnsColumnPrefix + host
	if slices.Contains(r.Columns, col) {
		return col
	}
	i := slices.Index(r.Columns, otherColumn)
	if i < 0 {
		i = len(r.Columns)
	}
	for i > 0 && strings.HasPrefix(r.Columns[i-1], dnsColumnPrefix) && r.Columns[i-1] > col {
		i--
	}
	r.Columns = slices.Insert(r.Columns, i, col)
	r.cells.site = nil // a zone might be named like the new column
	return col
}

// column is column(site, r.Columns, addr) in one binary search instead of
// a set look-up per column, and most often none: peers come sorted, so
// an address mostly falls in the range that held the last one.
func (r *Report) column(site *catalog.Site, addr netip.Addr) string {
	if site == nil {
		return otherColumn
	}
	c := &r.cells
	if c.site != site {
		ranges, ok := columnRanges(site, r.Columns)
		if !ok {
			return column(site, r.Columns, addr)
		}
		c.site, c.ranges, c.last = site, ranges, 0
	}
	if c.last < len(c.ranges) && c.ranges[c.last].r.Contains(addr) {
		return c.ranges[c.last].col
	}
	// The first range starting after addr; the one before may hold it.
	i := sort.Search(len(c.ranges), func(i int) bool { return addr.Less(c.ranges[i].r.From()) }) - 1
	if i >= 0 && c.ranges[i].r.Contains(addr) {
		c.last = i
		return c.ranges[i].col
	}
	return otherColumn
}

// columnRanges flattens the columns' sets into disjoint ranges, each
// address in the first column holding it (false if a set cannot be
// built, which valid sets never do).
func columnRanges(site *catalog.Site, cols []string) ([]columnRange, bool) {
	var out []columnRange
	var before netipx.IPSetBuilder // the earlier columns' addresses
	for _, col := range cols {
		set := columnSet(site, col)
		if set == nil {
			continue
		}
		var own netipx.IPSetBuilder
		own.AddSet(set)
		prev, err := before.IPSet()
		if err != nil {
			return nil, false
		}
		own.RemoveSet(prev)
		first, err := own.IPSet()
		if err != nil {
			return nil, false
		}
		for _, rg := range first.Ranges() {
			out = append(out, columnRange{rg, col})
		}
		before.AddSet(set)
	}
	slices.SortFunc(out, func(x, y columnRange) int { return x.r.From().Compare(y.r.From()) })
	return out, true
}

const dnsColumnPrefix = "dns:"

// unmapPrefix writes an IPv4 prefix in IPv6 form (::ffff:a.b.c.d/120) as
// IPv4 (a.b.c.d/24).
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// sortFindings orders findings by severity (highest first), then kind in
// the order of kinds, then ID.
func sortFindings(fs []Finding, kinds []Kind) {
	order := make(map[Kind]int, len(kinds))
	for i, k := range kinds {
		order[k] = i
	}
	sort.Slice(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Severity != b.Severity {
			return a.Severity > b.Severity
		}
		if a.Kind != b.Kind {
			return order[a.Kind] < order[b.Kind]
		}
		return a.ID < b.ID
	})
}

func (r *Report) setFindings(m map[string]*Finding) {
	r.Findings = make([]Finding, 0, len(m))
	for _, f := range m {
		r.Findings = append(r.Findings, *f)
	}
	sortFindings(r.Findings, Kinds)
	r.Counts = map[string]int{}
	for _, s := range severityNames {
		r.Counts[s] = 0
	}
	for _, f := range r.Findings {
		r.Counts[f.Severity.String()]++
	}
	for i := range r.Rules {
		for _, f := range r.Findings {
			if f.Rule != nil && (f.Rule.ID == r.Rules[i].Rule.ID || slices.Contains(f.AlsoRules, r.Rules[i].Rule.ID)) {
				r.Rules[i].Findings = append(r.Rules[i].Findings, f.ID)
			}
		}
	}
	r.flushCells()
	for _, row := range r.rows {
		if _, ok := row.Cells[unknownColumn]; ok && r.Columns[len(r.Columns)-1] != unknownColumn {
			r.Columns = append(r.Columns, unknownColumn)
		}
	}
	r.Observed = make([]ObservedRow, 0, len(r.rows))
	keys := make([]service, 0, len(r.rows))
	for s := range r.rows {
		keys = append(keys, s)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.dir != b.dir {
			return a.dir < b.dir
		}
		if a.proto != b.proto {
			return a.proto < b.proto
		}
		return a.port < b.port
	})
	for _, s := range keys {
		r.Observed = append(r.Observed, *r.rows[s])
	}
}

// ruleStatus summarises every matrix rule.
func (a *auditor) ruleStatus() []RuleStatus {
	out := make([]RuleStatus, 0, len(a.rules))
	for _, ro := range a.rules {
		// The evidence is the rule's traffic; a flood's attempts are only
		// counted beside it (FloodPackets): they make no rule seen.
		traffic := ro.traffic()
		outZone, _ := ro.outZone.peerCount()
		rs := RuleStatus{Rule: *refOf(ro.rule), Deprecated: ro.rule.Deprecated, Evidence: ro.evidence(traffic, a.o.TopPeers),
			Allowed: ro.evidence(merged(ro.inZone, ro.unknown, ro.broad), a.o.TopPeers), OutOfZonePeers: outZone}
		if !ro.outZone.empty() {
			ev := ro.outZone.evidence(a.o.TopPeers)
			rs.OutOfZone = &ev
		}
		switch v := ro.verdict(traffic); {
		case traffic.empty() && ro.flood.empty():
			rs.Status = StatusNotSeen
		case ro.rule.Deprecated && !traffic.empty():
			rs.Status = StatusDeprecated
		case v == stateClosed:
			rs.Status = StatusClosed
		case v == stateFiltered:
			rs.Status = StatusFiltered
		case !ro.inZone.empty() && ro.unbound && !ro.anyBound:
			rs.Status = StatusUnverified
		case !ro.inZone.empty():
			rs.Status = StatusSeen
		case !ro.unknown.empty():
			rs.Status = StatusPeersUnknown
		case !ro.broad.empty():
			rs.Status = StatusUnverified
		case !ro.outZone.empty():
			rs.Status = StatusOutOfZone
		default: // only a suspected flood's attempts
			rs.Status = StatusNotSeen
		}
		out = append(out, rs)
	}
	return out
}

// AtLeast counts findings of severity s or above.
func (r *Report) AtLeast(s Severity) int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity >= s {
			n++
		}
	}
	return n
}

// Title is a one-line description of what was audited.
func (r *Report) Title() string {
	conds := ""
	if len(r.Matrix.Conditions) > 0 {
		conds = " [" + strings.Join(r.Matrix.Conditions, ",") + "]"
	}
	return fmt.Sprintf("%s %s, role %s%s", r.Matrix.ProductName, r.Matrix.Version, r.Matrix.Role, conds)
}
