package audit

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

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

	rows map[service]*ObservedRow
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
	Stats      snapshot.Stats       `json:"stats"`
}

// MatrixInfo names the matrix audited against.
type MatrixInfo struct {
	Product     string   `json:"product"`
	ProductName string   `json:"product_name"`
	Version     string   `json:"version"`
	Role        string   `json:"role"`
	Conditions  []string `json:"conditions"`
	Rules       int      `json:"rules"`
}

// Rule statuses.
const (
	StatusSeen       = "seen"        // traffic from documented peers
	StatusUnverified = "unverified"  // traffic, but the site does not bind the rule's peer
	StatusOutOfZone  = "out-of-zone" // only peers outside the rule's zone
	StatusClosed     = "closed"
	StatusFiltered   = "filtered"
	StatusNotSeen    = "not-seen"
	StatusDeprecated = "deprecated-in-use"
)

// RuleStatus is one matrix rule and what the window showed of it.
type RuleStatus struct {
	Rule RuleRef `json:"rule"`
	// Status is one of the Status* constants.
	Status     string   `json:"status"`
	Deprecated bool     `json:"deprecated,omitempty"`
	Evidence   Evidence `json:"evidence"`
	// OutOfZonePeers counts peers that used the rule's port from outside its zone.
	OutOfZonePeers int `json:"out_of_zone_peers,omitempty"`
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
}

func newReport(snap *snapshot.Snapshot, o Options) *Report {
	r := &Report{Version: ReportVersion, Generated: o.Now().UTC(), rows: map[service]*ObservedRow{}}
	r.Tool.Name = "flowaudit"
	r.Tool.Version = o.ToolVersion
	r.Snapshot = SnapshotInfo{
		Source: snap.Source, Hostname: snap.Hostname, Kernel: snap.Kernel, Interfaces: snap.Interfaces,
		Start: snap.Start, End: snap.End, Window: snap.Window().Round(time.Second).String(), Flows: len(snap.Flows), Stats: snap.Stats,
	}
	m := o.Matrix
	r.Matrix = MatrixInfo{Product: m.Product, ProductName: m.ProductName, Version: m.Version, Role: m.Role,
		Conditions: append([]string{}, m.Conditions...), Rules: len(m.Rules)}
	if o.Site != nil {
		r.Site = o.Site.Source
	}
	r.Columns = siteColumns(o.Site)
	return r
}

// otherColumn collects peers in no zone or role of the site.
const otherColumn = "other"

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
		if name, ok := strings.CutPrefix(c, "role:"); ok {
			if set := s.Roles[name]; set != nil && set.Contains(addr) {
				return c
			}
		} else if set := s.Zones[c]; set != nil && set.Contains(addr) {
			return c
		}
	}
	return otherColumn
}

func (r *Report) addCell(s service, documented bool, f *snapshot.Flow, site *catalog.Site) {
	row := r.rows[s]
	if row == nil {
		row = &ObservedRow{Direction: s.dir, Proto: s.proto.String(), Port: portLabel(s.proto, s.port), Cells: map[string]uint64{}}
		r.rows[s] = row
	}
	row.Documented = row.Documented || documented
	row.Packets += f.Packets()
	row.Cells[column(site, r.Columns, f.Peer)] += f.Packets()
}

func (r *Report) setFindings(m map[string]*Finding) {
	r.Findings = make([]Finding, 0, len(m))
	for _, f := range m {
		r.Findings = append(r.Findings, *f)
	}
	kindOrder := map[Kind]int{}
	for i, k := range Kinds {
		kindOrder[k] = i
	}
	sort.Slice(r.Findings, func(i, j int) bool {
		a, b := r.Findings[i], r.Findings[j]
		if a.Severity != b.Severity {
			return a.Severity > b.Severity
		}
		if a.Kind != b.Kind {
			return kindOrder[a.Kind] < kindOrder[b.Kind]
		}
		return a.ID < b.ID
	})
	r.Counts = map[string]int{}
	for _, s := range severityNames {
		r.Counts[s] = 0
	}
	for _, f := range r.Findings {
		r.Counts[f.Severity.String()]++
	}
	for i := range r.Rules {
		for _, f := range r.Findings {
			if f.Rule != nil && f.Rule.ID == r.Rules[i].Rule.ID {
				r.Rules[i].Findings = append(r.Rules[i].Findings, f.ID)
			}
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
		all := newObs()
		mergeObs(all, ro.inZone)
		mergeObs(all, ro.outZone)
		rs := RuleStatus{Rule: *refOf(ro.rule), Deprecated: ro.rule.Deprecated, Evidence: all.evidence(a.o.TopPeers),
			OutOfZonePeers: len(ro.outZone.peers)}
		switch v := all.verdict(); {
		case all.empty():
			rs.Status = StatusNotSeen
		case ro.rule.Deprecated:
			rs.Status = StatusDeprecated
		case v == stateClosed:
			rs.Status = StatusClosed
		case v == stateFiltered:
			rs.Status = StatusFiltered
		case ro.inZone.empty():
			rs.Status = StatusOutOfZone
		case ro.unbound && !ro.anyBound:
			rs.Status = StatusUnverified
		default:
			rs.Status = StatusSeen
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
