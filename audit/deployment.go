package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"go4.org/netipx"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Cross-node finding kinds: what only a deployment audit (several nodes'
// snapshots together) can see (docs/FINDINGS.md, docs/DEPLOYMENT.md).
const (
	// CrossMissing: a flow the matrix requires between two nodes was seen
	// at neither end.
	CrossMissing Kind = "cross-required-missing"
	// OneSided: a flow between two nodes was seen at one end only: the
	// sender's attempts never reached the receiver (dropped in between),
	// or (low) the traffic was answered but one recording does not show it.
	OneSided Kind = "one-sided"
	// CrossRefused: a required flow reached the receiver, which refused
	// it (RST, port unreachable) or never answered it (its own firewall).
	CrossRefused Kind = "cross-refused"
	// InterRoleUndocumented: traffic between two nodes that no rule of
	// either node's matrix documents between their roles.
	InterRoleUndocumented Kind = "inter-role-undocumented"
	// NodeIncomplete: a node of the deployment file whose snapshot is
	// missing or unreadable, too old, or whose window does not overlap
	// the others'.
	NodeIncomplete Kind = "node-incomplete"
)

// CrossKinds lists the cross-node kinds in report order.
var CrossKinds = []Kind{NodeIncomplete, CrossRefused, OneSided, InterRoleUndocumented, CrossMissing}

func init() {
	kindDocs[CrossMissing] = kindInfo{
		"A flow the matrix requires between two nodes of the deployment was seen at neither end.",
		"The receiver's matrix (or the sender's) requires this traffic from the other node's role or zone, and neither node's snapshot shows it in their common window. The service may be down or misconfigured on both, or the window too short.",
	}
	kindDocs[OneSided] = kindInfo{
		"Traffic between two nodes was seen at one end only.",
		"High: the sender's snapshot shows attempts that got no answer (or an answer that cannot come from the receiver), and the receiver's snapshot shows nothing of them in the same window: something between the nodes drops the traffic (a firewall, a security group, a route). Low: the traffic was answered, but one node's recording does not show it (it records another interface, or the node's addresses in the deployment file are wrong, or a NAT in between rewrites them).",
	}
	kindDocs[CrossRefused] = kindInfo{
		"A required flow between two nodes reached the receiver, which refused or ignored it.",
		"The receiver's snapshot shows the sender's attempts arriving, answered with a RST or port unreachable (the service does not listen), or not answered at all (the receiver's own firewall drops them after flowaudit counted them). Start the service, or open the port on the receiver for the documented zone.",
	}
	kindDocs[InterRoleUndocumented] = kindInfo{
		"Traffic between two nodes that the matrix documents for no rule between their roles.",
		"Two nodes of the deployment exchanged traffic on a service no rule of either node's matrix documents between their roles (the summary says whether the roles are connected on other services). A lateral channel the vendor does not document: find what it is, block it, or document it in a site catalog.",
	}
	kindDocs[NodeIncomplete] = kindInfo{
		"A node of the deployment could not be audited with the others.",
		"Each finding ID names the node and the gap: missing (the snapshot could not be read or fetched: the node is not audited at all), too-old (its snapshot ended longer ago than max_age before the audit), outside-window (its window does not overlap the others', so no cross-node check with it was made). Record the node again, in the same window as the others.",
	}
}

// DefaultMaxAge is how old a node snapshot may be (its end before the
// audit) before it is reported too old.
const DefaultMaxAge = 24 * time.Hour

// DeploymentOptions configure a deployment audit.
type DeploymentOptions struct {
	// Audit holds the per-node thresholds, ToolVersion and Now; its Matrix
	// and Site are set per node.
	Audit Options
	// Catalogs are extra catalog files, besides the deployment file's.
	Catalogs []string
	// Matrix, when set, replaces the deployment file's matrix, and
	// Conditions its conditions (auditing against a learned catalog).
	Matrix     string
	Conditions []string
	// MaxAge overrides the deployment file's max_age (0: the file's, else
	// DefaultMaxAge).
	MaxAge time.Duration
	// Fetch reads an http(s) snapshot (nil: an HTTP GET with
	// FetchTimeout).
	Fetch        func(ctx context.Context, url string) (io.ReadCloser, error)
	FetchTimeout time.Duration
}

// DeploymentInput is a deployment with its product resolved and its
// snapshots read: what RunDeployment audits.
type DeploymentInput struct {
	Deployment *catalog.Deployment
	Product    *catalog.Product
	Version    catalog.Version
	Edition    string
	Conditions map[string]bool
	// Site may be nil.
	Site *catalog.Site
	// Snapshots by node name; a node without one has its error in
	// LoadErrors.
	Snapshots  map[string]*snapshot.Snapshot
	LoadErrors map[string]error
}

// AuditDeployment reads the deployment file at path, the catalog, site and
// every node's snapshot, and audits them together.
func AuditDeployment(path string, o DeploymentOptions) (*DeploymentReport, error) {
	dep, err := catalog.LoadDeployment(path)
	if err != nil {
		return nil, err
	}
	in, err := ResolveDeployment(dep, o)
	if err != nil {
		return nil, err
	}
	return RunDeployment(in, o)
}

// ResolveDeployment resolves the deployment's matrix and site and reads
// every node's snapshot; a snapshot that cannot be read is recorded in
// LoadErrors, never an error (it is reported as node-incomplete).
func ResolveDeployment(dep *catalog.Deployment, o DeploymentOptions) (*DeploymentInput, error) {
	cat, err := catalog.Builtin()
	if err != nil {
		return nil, fmt.Errorf("built-in catalog: %w", err)
	}
	if files := append(append([]string{}, dep.Catalogs...), o.Catalogs...); len(files) > 0 {
		extra, err := catalog.LoadFiles(files...)
		if err != nil {
			return nil, err
		}
		if cat, err = catalog.Merge(cat, extra); err != nil {
			return nil, err
		}
	}
	ref, condList := dep.Matrix, dep.Conditions
	if o.Matrix != "" {
		ref, condList = o.Matrix, o.Conditions
	}
	p, v, ed, err := cat.ResolveRef(ref)
	if err != nil {
		return nil, fmt.Errorf("%s: matrix: %w", dep.Source, err)
	}
	if v.IsZero() {
		v = p.Latest()
	}
	conds, err := catalog.ParseConditions(condList)
	if err != nil {
		return nil, fmt.Errorf("%s: conditions: %w", dep.Source, err)
	}
	if err := dep.Check(p, v); err != nil {
		return nil, err
	}
	in := &DeploymentInput{Deployment: dep, Product: p, Version: v, Edition: ed, Conditions: conds,
		Snapshots: map[string]*snapshot.Snapshot{}, LoadErrors: map[string]error{}}
	if dep.Site != "" {
		s, err := catalog.LoadSite(dep.Site)
		if err != nil {
			return nil, err
		}
		if err := s.Check(p, v); err != nil {
			return nil, err
		}
		in.Site = s
	}
	for _, n := range dep.Nodes {
		s, err := loadNodeSnapshot(n, o)
		if err != nil {
			in.LoadErrors[n.Name] = err
			continue
		}
		in.Snapshots[n.Name] = s
	}
	return in, nil
}

// maxSnapshotFetch bounds an http(s) snapshot's size.
const maxSnapshotFetch = 4 << 30

func loadNodeSnapshot(n catalog.DeploymentNode, o DeploymentOptions) (*snapshot.Snapshot, error) {
	if !n.IsURL() {
		return snapshot.ReadFile(n.Snapshot)
	}
	timeout := o.FetchTimeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	fetch := o.Fetch
	if fetch == nil {
		fetch = httpFetch
	}
	body, err := fetch(ctx, n.Snapshot)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", n.Snapshot, err)
	}
	defer body.Close()
	return snapshot.Read(io.LimitReader(body, maxSnapshotFetch), n.Snapshot)
}

func httpFetch(ctx context.Context, url string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	return resp.Body, nil
}

// DeploymentReportVersion is the version of the JSON deployment report.
const DeploymentReportVersion = 1

// Node statuses.
const (
	NodeOK            = "ok"
	NodeMissing       = "missing"
	NodeTooOld        = "too-old"
	NodeOutsideWindow = "outside-window"
)

// NodeResult is one node of a deployment audit.
type NodeResult struct {
	Name      string       `json:"name"`
	Role      string       `json:"role"`
	Addresses []netip.Addr `json:"addresses"`
	Snapshot  string       `json:"snapshot"`
	// Status is NodeOK or the gaps (NodeMissing, NodeTooOld,
	// NodeOutsideWindow), comma-separated.
	Status string `json:"status"`
	// Error is why a missing snapshot could not be read.
	Error string    `json:"error,omitempty"`
	Start time.Time `json:"start,omitzero"`
	End   time.Time `json:"end,omitzero"`
	// Report is the node's own audit; nil when its snapshot is missing.
	Report *Report `json:"report,omitempty"`
	// Line is the node's line in the deployment file.
	Line int `json:"line"`
}

// CrossEvidence is what the two ends of a cross-node finding saw.
type CrossEvidence struct {
	From     string `json:"from"`
	FromRole string `json:"from_role"`
	To       string `json:"to"`
	ToRole   string `json:"to_role"`
	// SenderState and ReceiverState are the flow states each end saw
	// (open, closed, filtered, unanswered), "" for nothing.
	SenderState     string `json:"sender_state,omitempty"`
	ReceiverState   string `json:"receiver_state,omitempty"`
	SenderPackets   uint64 `json:"sender_packets"`
	ReceiverPackets uint64 `json:"receiver_packets"`
	// Rules are the matrix rules (of either end) requiring or allowing
	// the flow.
	Rules []string `json:"rules,omitempty"`
	// RolesConnected: the matrix documents other services between the
	// two roles (inter-role-undocumented).
	RolesConnected bool `json:"roles_connected,omitempty"`
	// Line is the deployment file line of the node the finding is about.
	Line int `json:"line,omitempty"`
}

// RoleCell is one (sending role, receiving role) cell of the role × role
// view.
type RoleCell struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Documented are the services the matrix documents from nodes of
	// From to nodes of To ("tcp/9000 required").
	Documented []string `json:"documented"`
	// Observed are the services seen between such nodes, with the worst
	// state ("tcp/9000 open", "tcp/2377 filtered").
	Observed []string `json:"observed"`
	// Findings are the IDs of the cross-node findings of the cell; Worst
	// their highest severity.
	Findings []string `json:"findings"`
	Worst    string   `json:"worst,omitempty"`
}

// DeploymentReport is the result of a deployment audit.
type DeploymentReport struct {
	Version int `json:"version"`
	Tool    struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"tool"`
	Generated  time.Time  `json:"generated"`
	Deployment string     `json:"deployment"`
	Matrix     MatrixInfo `json:"matrix"`
	Site       string     `json:"site,omitempty"`
	MaxAge     string     `json:"max_age"`
	// Start and End bound the window most nodes share (zero when no
	// snapshot was read).
	Start time.Time    `json:"start,omitzero"`
	End   time.Time    `json:"end,omitzero"`
	Nodes []NodeResult `json:"nodes"`
	// Counts of cross-node findings per severity; Total counts those and
	// every node's findings.
	Counts map[string]int `json:"counts"`
	Total  map[string]int `json:"total"`
	// Findings are the cross-node findings, most severe first.
	Findings []Finding  `json:"findings"`
	Roles    []string   `json:"roles"`
	RoleView []RoleCell `json:"role_view"`
	nodeIdx  map[string]int
}

// AtLeast counts findings of severity s or above, the nodes' included.
func (r *DeploymentReport) AtLeast(s Severity) int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity >= s {
			n++
		}
	}
	for _, nd := range r.Nodes {
		if nd.Report != nil {
			n += nd.Report.AtLeast(s)
		}
	}
	return n
}

// Title describes what was audited.
func (r *DeploymentReport) Title() string {
	conds := ""
	if len(r.Matrix.Conditions) > 0 {
		conds = " [" + strings.Join(r.Matrix.Conditions, ",") + "]"
	}
	return fmt.Sprintf("%s %s, deployment of %d nodes%s", r.Matrix.ProductName, r.Matrix.Version, len(r.Nodes), conds)
}

// depNode is a node during the audit.
type depNode struct {
	catalog.DeploymentNode
	snap   *snapshot.Snapshot
	matrix *catalog.Matrix
	inWin  bool
}

func (n *depNode) owns(a netip.Addr) bool {
	a = a.Unmap()
	for _, x := range n.Addresses {
		if x == a {
			return true
		}
	}
	return false
}

// overlaps reports whether the windows of a and b overlap.
func (a *depNode) overlaps(b *depNode) bool {
	return a.snap != nil && b.snap != nil && !a.snap.End.Before(b.snap.Start) && !b.snap.End.Before(a.snap.Start)
}

// RunDeployment audits every node against the matrix of its role, then the
// nodes against each other.
func RunDeployment(in *DeploymentInput, o DeploymentOptions) (*DeploymentReport, error) {
	dep := in.Deployment
	ao := o.Audit
	if ao.Now == nil {
		ao.Now = time.Now
	}
	maxAge := o.MaxAge
	if maxAge == 0 {
		maxAge = dep.MaxAge
	}
	if maxAge == 0 {
		maxAge = DefaultMaxAge
	}
	rep := &DeploymentReport{Version: DeploymentReportVersion, Generated: ao.Now().UTC(), Deployment: dep.Source,
		MaxAge: maxAge.String(), nodeIdx: map[string]int{}}
	rep.Tool.Name, rep.Tool.Version = "flowaudit", ao.ToolVersion

	// Matrices per role.
	matrices := map[string]*catalog.Matrix{}
	var roles []string
	for _, n := range dep.Nodes {
		if matrices[n.Role] != nil {
			continue
		}
		m, err := in.Product.EffectiveEdition(in.Version, in.Edition, n.Role, in.Conditions)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: node %q: %w", dep.Source, n.Line, n.Name, err)
		}
		if in.Site != nil {
			if err := in.Site.ApplyPorts(in.Product, m); err != nil {
				return nil, err
			}
		}
		matrices[n.Role] = m
		roles = append(roles, n.Role)
	}
	sort.Strings(roles)
	rep.Roles = roles
	first := matrices[dep.Nodes[0].Role]
	rep.Matrix = MatrixInfo{Product: first.Product, ProductName: first.ProductName, Version: first.Version, Edition: first.Edition,
		Role: strings.Join(roles, ","), Conditions: append([]string{}, first.Conditions...)}
	site := deploymentSite(in.Site, dep, matrices)
	if in.Site != nil {
		rep.Site = in.Site.Source
	}

	nodes := make([]*depNode, len(dep.Nodes))
	for i, n := range dep.Nodes {
		nodes[i] = &depNode{DeploymentNode: n, snap: in.Snapshots[n.Name], matrix: matrices[n.Role]}
		rep.nodeIdx[n.Name] = i
	}
	findings := map[string]*Finding{}
	add := func(f *Finding) {
		if _, ok := findings[f.ID]; !ok {
			findings[f.ID] = f
		}
	}

	// The window most nodes share: the instant covered by the most
	// windows (the earliest such), and the nodes covering it.
	rep.Start, rep.End = commonWindow(nodes)
	now := ao.Now()
	for _, n := range nodes {
		nr := NodeResult{Name: n.Name, Role: n.Role, Addresses: n.Addresses, Snapshot: n.Snapshot, Line: n.Line}
		var status []string
		if n.snap == nil {
			status = append(status, NodeMissing)
			err := in.LoadErrors[n.Name]
			if err == nil {
				err = errors.New("no snapshot")
			}
			nr.Error = err.Error()
			add(&Finding{ID: "node-incomplete/" + n.Name + "/missing", Kind: NodeIncomplete, Severity: High,
				Summary: fmt.Sprintf("node %s (role %s): snapshot %s could not be read (%v): the node is not audited, and no cross-node check with it was made",
					n.Name, n.Role, n.Snapshot, err),
				Cross: &CrossEvidence{From: n.Name, FromRole: n.Role, Line: n.Line}})
		} else {
			nr.Start, nr.End = n.snap.Start, n.snap.End
			if age := now.Sub(n.snap.End); age > maxAge {
				status = append(status, NodeTooOld)
				add(&Finding{ID: "node-incomplete/" + n.Name + "/too-old", Kind: NodeIncomplete, Severity: Medium,
					Summary: fmt.Sprintf("node %s (role %s): snapshot ended %s before the audit (max_age %s): it says how the node was, not how it is",
						n.Name, n.Role, age.Round(time.Second), maxAge),
					Cross:    &CrossEvidence{From: n.Name, FromRole: n.Role, Line: n.Line},
					Evidence: Evidence{FirstSeen: n.snap.Start, LastSeen: n.snap.End, Window: n.snap.Window().Round(time.Second).String()}})
			}
			n.inWin = !rep.Start.IsZero() && !n.snap.End.Before(rep.Start) && !n.snap.Start.After(rep.Start)
			if !n.inWin {
				status = append(status, NodeOutsideWindow)
				var apart []string
				for _, m := range nodes {
					if m != n && m.snap != nil && !n.overlaps(m) {
						apart = append(apart, m.Name)
					}
				}
				add(&Finding{ID: "node-incomplete/" + n.Name + "/outside-window", Kind: NodeIncomplete, Severity: Medium,
					Summary: fmt.Sprintf("node %s (role %s): its window %s – %s is outside the deployment's (%s – %s); no cross-node check with %s was made",
						n.Name, n.Role, n.snap.Start.UTC().Format(time.RFC3339), n.snap.End.UTC().Format(time.RFC3339),
						rep.Start.UTC().Format(time.RFC3339), rep.End.UTC().Format(time.RFC3339), orNone(apart)),
					Cross:    &CrossEvidence{From: n.Name, FromRole: n.Role, Line: n.Line},
					Evidence: Evidence{FirstSeen: n.snap.Start, LastSeen: n.snap.End}})
			}
			no := ao
			no.Matrix, no.Site = n.matrix, site
			r, err := Run(n.snap, no)
			if err != nil {
				return nil, fmt.Errorf("node %s: %w", n.Name, err)
			}
			nr.Report = r
		}
		if len(status) == 0 {
			status = []string{NodeOK}
		}
		nr.Status = strings.Join(status, ",")
		rep.Nodes = append(rep.Nodes, nr)
	}

	cross := observeCross(nodes)
	dc := newDocCache(site)
	undocumentedCross(nodes, cross, site, dc, add)
	requiredCross(nodes, cross, dc, add)
	rep.RoleView = roleView(nodes, roles, cross, dc)

	rep.Findings = make([]Finding, 0, len(findings))
	for _, f := range findings {
		rep.Findings = append(rep.Findings, *f)
	}
	sortFindings(rep.Findings, CrossKinds)
	rep.Counts, rep.Total = map[string]int{}, map[string]int{}
	for _, s := range severityNames {
		rep.Counts[s], rep.Total[s] = 0, 0
	}
	for _, f := range rep.Findings {
		rep.Counts[f.Severity.String()]++
		rep.Total[f.Severity.String()]++
	}
	for _, nd := range rep.Nodes {
		if nd.Report != nil {
			for s, c := range nd.Report.Counts {
				rep.Total[s] += c
			}
		}
	}
	for i := range rep.RoleView {
		c := &rep.RoleView[i]
		worst := Severity(0)
		for _, f := range rep.Findings {
			if f.Cross != nil && f.Cross.To != "" && f.Cross.FromRole == c.From && f.Cross.ToRole == c.To {
				c.Findings = append(c.Findings, f.ID)
				if f.Severity > worst || c.Worst == "" {
					worst = max(worst, f.Severity)
					c.Worst = worst.String()
				}
			}
		}
	}
	return rep, nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "the other nodes"
	}
	return strings.Join(s, ", ")
}

// commonWindow is the window most node snapshots share: the earliest
// instant inside the most windows, widened to the intersection of those
// windows.
func commonWindow(nodes []*depNode) (time.Time, time.Time) {
	var best time.Time
	bestN := 0
	for _, n := range nodes {
		if n.snap == nil {
			continue
		}
		c := 0
		for _, m := range nodes {
			if m.snap != nil && !m.snap.Start.After(n.snap.Start) && !m.snap.End.Before(n.snap.Start) {
				c++
			}
		}
		if c > bestN || (c == bestN && n.snap.Start.Before(best)) {
			best, bestN = n.snap.Start, c
		}
	}
	if bestN == 0 {
		return time.Time{}, time.Time{}
	}
	start, end := time.Time{}, time.Time{}
	for _, m := range nodes {
		if m.snap == nil || m.snap.Start.After(best) || m.snap.End.Before(best) {
			continue
		}
		if start.IsZero() || m.snap.Start.After(start) {
			start = m.snap.Start
		}
		if end.IsZero() || m.snap.End.Before(end) {
			end = m.snap.End
		}
	}
	return start, end
}

// deploymentSite is the site with each role of the deployment bound to its
// nodes' addresses besides what the site binds to it: the role's own
// entry or, without one, the zone the matrix falls back to for the role
// (peers of the role that are not in the deployment file stay in zone).
func deploymentSite(s *catalog.Site, dep *catalog.Deployment, matrices map[string]*catalog.Matrix) *catalog.Site {
	out := &catalog.Site{Zones: map[string]*netipx.IPSet{}, Roles: map[string]*netipx.IPSet{}, Hosts: map[string]*netipx.IPSet{},
		Ports: map[string][]catalog.PortRange{}, Source: dep.Source}
	if s != nil {
		c := *s
		out = &c
		out.Roles = map[string]*netipx.IPSet{}
		for k, v := range s.Roles {
			out.Roles[k] = v
		}
	}
	fallback := map[string]map[string]bool{}
	for _, m := range matrices {
		for _, r := range m.Rules {
			if r.Peer.Kind == catalog.PeerRole && r.Peer.Zone != "" {
				if fallback[r.Peer.Role] == nil {
					fallback[r.Peer.Role] = map[string]bool{}
				}
				fallback[r.Peer.Role][r.Peer.Zone] = true
			}
		}
	}
	byRole := map[string][]netip.Addr{}
	for _, n := range dep.Nodes {
		byRole[n.Role] = append(byRole[n.Role], n.Addresses...)
	}
	for role, addrs := range byRole {
		var b netipx.IPSetBuilder
		if set := out.Roles[role]; set != nil {
			b.AddSet(set)
		} else {
			for z := range fallback[role] {
				if set := out.Zones[z]; set != nil {
					b.AddSet(set)
				}
			}
		}
		for _, a := range addrs {
			b.Add(a)
		}
		if set, err := b.IPSet(); err == nil {
			out.Roles[role] = set
		}
	}
	return out
}

// crossKey is traffic from one node to another on one service.
type crossKey struct {
	from, to int
	proto    snapshot.Proto
	port     uint16
}

// crossSide is what one end saw of a crossKey.
type crossSide struct {
	packets uint64
	state   flowState
	seen    bool
	first   time.Time
	last    time.Time
	ev      snapshot.Evidence
}

var flowStateRank = map[flowState]int{stateOpen: 4, stateClosed: 3, stateFiltered: 2, stateUnanswered: 1}

func (s *crossSide) add(f *snapshot.Flow) {
	st := state(f)
	if !s.seen || flowStateRank[st] > flowStateRank[s.state] {
		s.state = st
	}
	s.seen = true
	s.packets += f.Packets()
	s.ev.Add(f.Evidence)
	if s.first.IsZero() || (!f.FirstSeen.IsZero() && f.FirstSeen.Before(s.first)) {
		s.first = f.FirstSeen
	}
	if f.LastSeen.After(s.last) {
		s.last = f.LastSeen
	}
}

func (s *crossSide) stateName() string {
	if !s.seen {
		return ""
	}
	return s.state.String()
}

type crossObs struct {
	sender, receiver crossSide
}

// windowSlack is how far outside the other end's window traffic may lie
// and still be expected there: two recorders' clocks (wall time at their
// start, flow times from the kernel's jiffies calibrated once) and the
// instants at which they read their last counts differ by a little.
const windowSlack = 2 * time.Second

// observeCross collects the traffic between nodes of the deployment, from
// each end's snapshot: an outbound flow of A to an address of B is A → B
// seen by the sender, an inbound flow of B from an address of A the same
// traffic seen by the receiver. Traffic outside the other end's window is
// left out (the other end could not have seen it), give or take
// windowSlack.
func observeCross(nodes []*depNode) map[crossKey]*crossObs {
	owner := map[netip.Addr]int{}
	for i, n := range nodes {
		for _, a := range n.Addresses {
			owner[a] = i
		}
	}
	out := map[crossKey]*crossObs{}
	for i, n := range nodes {
		if n.snap == nil {
			continue
		}
		for k := range n.snap.Flows {
			f := &n.snap.Flows[k]
			if !f.Peer.IsValid() || infrastructure(f) || f.Fragment || f.Direction == snapshot.Unknown {
				continue
			}
			j, ok := owner[f.Peer.Unmap()]
			if !ok || j == i {
				continue
			}
			other := nodes[j]
			if other.snap != nil && !f.FirstSeen.IsZero() &&
				(f.LastSeen.Before(other.snap.Start.Add(-windowSlack)) || f.FirstSeen.After(other.snap.End.Add(windowSlack))) {
				continue
			}
			key := crossKey{from: i, to: j, proto: f.Proto, port: f.Port}
			if f.Direction == snapshot.Inbound {
				key.from, key.to = j, i
			}
			o := out[key]
			if o == nil {
				o = &crossObs{}
				out[key] = o
			}
			if f.Direction == snapshot.Outbound {
				o.sender.add(f)
			} else {
				o.receiver.add(f)
			}
		}
	}
	return out
}

// covers reports whether rule r's peer contains an address of n (bound)
// and whether the site binds the peer at all. "any" peers never cover a
// node: they document the Internet, not the deployment.
func covers(site *catalog.Site, r *catalog.Rule, n *depNode) (ok, bound bool) {
	if r.Peer.Kind == catalog.PeerAny {
		return false, true
	}
	for _, a := range n.Addresses {
		in, b := site.Contains(r.Peer, a)
		if !b {
			return false, false
		}
		if in {
			return true, true
		}
	}
	return false, true
}

// docRules are the rules documenting traffic from node s to node r on a
// service: r's inbound rules whose peer contains s, s's outbound rules
// whose peer contains r. unbound: a candidate rule's peer is not bound by
// the site (the traffic cannot be judged).
func docRules(site *catalog.Site, s, r *depNode, p snapshot.Proto, port uint16) (ids []string, unbound bool) {
	check := func(m *catalog.Matrix, dir snapshot.Direction, other *depNode) {
		for i := range m.Rules {
			rule := &m.Rules[i]
			if rule.Direction != dir || !rule.Matches(p, port) {
				continue
			}
			if rule.Peer.Kind == catalog.PeerAny {
				ids = append(ids, rule.ID)
				continue
			}
			ok, bound := covers(site, rule, other)
			switch {
			case !bound:
				unbound = true
			case ok:
				ids = append(ids, rule.ID)
			}
		}
	}
	check(r.matrix, snapshot.Inbound, s)
	check(s.matrix, snapshot.Outbound, r)
	return ids, unbound
}

// connectedRoles reports whether any non-"any" rule documents traffic
// between nodes of the two roles (either way).
func connectedRoles(dc *docCache, nodes []*depNode, a, b string) bool {
	for _, s := range nodes {
		for _, r := range nodes {
			if s == r || !((s.Role == a && r.Role == b) || (s.Role == b && r.Role == a)) {
				continue
			}
			if len(dc.between(s, r)) > 0 {
				return true
			}
		}
	}
	return false
}

// docService is a rule's service as documented between two nodes.
type docService struct {
	label    string // "tcp/9000"
	required bool
	rules    []string
	rule     *catalog.Rule
}

// docCache memoizes documentedBetween: what the matrices document between
// two nodes depends only on their roles and on which rule peers contain
// each node's addresses, so nodes with the same roles and zones share one
// answer (a deployment of 500 sensors has 250 000 pairs and a handful of
// distinct answers).
type docCache struct {
	site  *catalog.Site
	cover map[*depNode]map[*catalog.Matrix]string // which rules of a matrix cover the node, as a bit string
	memo  map[string][]*docService
}

func newDocCache(site *catalog.Site) *docCache {
	return &docCache{site: site, cover: map[*depNode]map[*catalog.Matrix]string{}, memo: map[string][]*docService{}}
}

func (c *docCache) coverKey(n *depNode, m *catalog.Matrix) string {
	byM := c.cover[n]
	if byM == nil {
		byM = map[*catalog.Matrix]string{}
		c.cover[n] = byM
	}
	if k, ok := byM[m]; ok {
		return k
	}
	b := make([]byte, len(m.Rules))
	for i := range m.Rules {
		b[i] = '0'
		if ok, _ := covers(c.site, &m.Rules[i], n); ok {
			b[i] = '1'
		}
	}
	byM[m] = string(b)
	return string(b)
}

func (c *docCache) between(s, r *depNode) []*docService {
	if s.matrix == nil || r.matrix == nil {
		return nil
	}
	key := s.Role + "\x00" + r.Role + "\x00" + c.coverKey(s, r.matrix) + "\x00" + c.coverKey(r, s.matrix)
	if d, ok := c.memo[key]; ok {
		return d
	}
	d := documentedBetween(c.site, s, r)
	c.memo[key] = d
	return d
}

// documentedBetween lists the services the matrices document from s to r,
// merged by protocol and ports.
func documentedBetween(site *catalog.Site, s, r *depNode) []*docService {
	byLabel := map[string]*docService{}
	var order []string
	check := func(m *catalog.Matrix, dir snapshot.Direction, other *depNode) {
		for i := range m.Rules {
			rule := &m.Rules[i]
			if rule.Direction != dir || rule.Peer.Kind == catalog.PeerAny {
				continue
			}
			if ok, _ := covers(site, rule, other); !ok {
				continue
			}
			label := rule.ProtoString() + "/" + rule.PortString()
			d := byLabel[label]
			if d == nil {
				d = &docService{label: label, rule: rule}
				byLabel[label] = d
				order = append(order, label)
			}
			d.rules = append(d.rules, rule.ID)
			if rule.Requirement != catalog.Optional && !rule.Deprecated && !broadRule(rule) {
				d.required = true
			}
		}
	}
	check(r.matrix, snapshot.Inbound, s)
	check(s.matrix, snapshot.Outbound, r)
	out := make([]*docService, len(order))
	for i, l := range order {
		out[i] = byLabel[l]
	}
	return out
}

func svcName(p snapshot.Proto, port uint16) string { return p.String() + "/" + portLabel(p, port) }

func sortedCrossKeys(m map[crossKey]*crossObs) []crossKey {
	keys := make([]crossKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.from != b.from {
			return a.from < b.from
		}
		if a.to != b.to {
			return a.to < b.to
		}
		if a.proto != b.proto {
			return a.proto < b.proto
		}
		return a.port < b.port
	})
	return keys
}

func (o *crossObs) evidence() Evidence {
	ev := Evidence{Packets: o.sender.packets + o.receiver.packets, Peers: 1}
	for _, s := range []*crossSide{&o.sender, &o.receiver} {
		if s.seen {
			ev.Handshake.Add(s.ev)
			if ev.FirstSeen.IsZero() || (!s.first.IsZero() && s.first.Before(ev.FirstSeen)) {
				ev.FirstSeen = s.first
			}
			if s.last.After(ev.LastSeen) {
				ev.LastSeen = s.last
			}
		}
	}
	return ev
}

func seenAt(o *crossObs) string {
	switch {
	case o.sender.seen && o.receiver.seen:
		return "seen at both ends"
	case o.sender.seen:
		return "seen by the sender only"
	}
	return "seen by the receiver only"
}

// undocumentedCross reports traffic between nodes that no rule of either
// end documents between their roles.
func undocumentedCross(nodes []*depNode, cross map[crossKey]*crossObs, site *catalog.Site, dc *docCache, add func(*Finding)) {
	connected := map[[2]string]bool{}
	for _, k := range sortedCrossKeys(cross) {
		s, r := nodes[k.from], nodes[k.to]
		if s.matrix == nil || r.matrix == nil {
			continue
		}
		ids, unbound := docRules(site, s, r, k.proto, k.port)
		if len(ids) > 0 || unbound {
			continue
		}
		o := cross[k]
		rp := [2]string{min(s.Role, r.Role), max(s.Role, r.Role)}
		conn, ok := connected[rp]
		if !ok {
			conn = connectedRoles(dc, nodes, s.Role, r.Role)
			connected[rp] = conn
		}
		how := fmt.Sprintf("the matrix connects roles %s and %s on no service", s.Role, r.Role)
		if conn {
			how = fmt.Sprintf("the matrix connects roles %s and %s, but not on %s", s.Role, r.Role, svcName(k.proto, k.port))
		}
		state := o.receiver.stateName()
		if state == "" {
			state = o.sender.stateName()
		}
		add(&Finding{
			ID:   fmt.Sprintf("%s/%s>%s/%s", InterRoleUndocumented, s.Name, r.Name, svcName(k.proto, k.port)),
			Kind: InterRoleUndocumented, Severity: High, Direction: snapshot.Inbound,
			Proto: k.proto.String(), Port: portLabel(k.proto, k.port),
			Summary: fmt.Sprintf("%s (%s) → %s (%s) %s, %s (%s, %d packets): %s",
				s.Name, s.Role, r.Name, r.Role, svcName(k.proto, k.port), seenAt(o), state, o.sender.packets+o.receiver.packets, how),
			Evidence: o.evidence(),
			Cross: &CrossEvidence{From: s.Name, FromRole: s.Role, To: r.Name, ToRole: r.Role, SenderState: o.sender.stateName(),
				ReceiverState: o.receiver.stateName(), SenderPackets: o.sender.packets, ReceiverPackets: o.receiver.packets,
				RolesConnected: conn, Line: s.Line},
		})
	}
}

// requiredCross checks every flow the matrices require between two nodes
// whose windows overlap, and every flow between nodes seen at one end only.
func requiredCross(nodes []*depNode, cross map[crossKey]*crossObs, dc *docCache, add func(*Finding)) {
	judged := map[crossKey]bool{}
	byPair := map[[2]int][]crossKey{}
	for k := range cross {
		byPair[[2]int{k.from, k.to}] = append(byPair[[2]int{k.from, k.to}], k)
	}
	for si, s := range nodes {
		for ri, r := range nodes {
			if s == r || s.snap == nil || r.snap == nil || !s.overlaps(r) {
				continue
			}
			for _, d := range dc.between(s, r) {
				if !d.required {
					continue
				}
				var o crossObs
				for _, k := range byPair[[2]int{si, ri}] {
					c := cross[k]
					if d.rule.Matches(k.proto, k.port) {
						judged[k] = true
						mergeSide(&o.sender, &c.sender)
						mergeSide(&o.receiver, &c.receiver)
					}
				}
				judgeRequired(s, r, d, &o, add)
			}
		}
	}
	// Traffic between nodes no required rule covers, seen at one end only.
	for _, k := range sortedCrossKeys(cross) {
		if judged[k] {
			continue
		}
		s, r := nodes[k.from], nodes[k.to]
		if s.snap == nil || r.snap == nil || !s.overlaps(r) {
			continue
		}
		o := cross[k]
		if o.sender.seen != o.receiver.seen {
			oneSided(s, r, svcName(k.proto, k.port), k.proto, k.port, o, nil, add)
		}
	}
}

func mergeSide(dst, src *crossSide) {
	if !src.seen {
		return
	}
	if !dst.seen || flowStateRank[src.state] > flowStateRank[dst.state] {
		dst.state = src.state
	}
	dst.seen = true
	dst.packets += src.packets
	dst.ev.Add(src.ev)
	if dst.first.IsZero() || (!src.first.IsZero() && src.first.Before(dst.first)) {
		dst.first = src.first
	}
	if src.last.After(dst.last) {
		dst.last = src.last
	}
}

func crossProtoPort(d *docService) (string, string) {
	return d.rule.ProtoString(), d.rule.PortString()
}

// judgeRequired classifies one required flow from s to r.
func judgeRequired(s, r *depNode, d *docService, o *crossObs, add func(*Finding)) {
	proto, port := crossProtoPort(d)
	ce := func() *CrossEvidence {
		return &CrossEvidence{From: s.Name, FromRole: s.Role, To: r.Name, ToRole: r.Role, SenderState: o.sender.stateName(),
			ReceiverState: o.receiver.stateName(), SenderPackets: o.sender.packets, ReceiverPackets: o.receiver.packets,
			Rules: d.rules, Line: s.Line}
	}
	id := func(k Kind) string { return fmt.Sprintf("%s/%s>%s/%s", k, s.Name, r.Name, d.label) }
	ref := refOf(d.rule)
	switch {
	case !o.sender.seen && !o.receiver.seen:
		add(&Finding{ID: id(CrossMissing), Kind: CrossMissing, Severity: Medium, Direction: snapshot.Inbound, Proto: proto, Port: port, Rule: ref,
			Summary: fmt.Sprintf("required %s from %s (%s) to %s (%s) was seen at neither end in their common window (%s)",
				d.label, s.Name, s.Role, r.Name, r.Role, strings.Join(d.rules, ", ")),
			Evidence: Evidence{Window: commonSpan(s, r)}, Cross: ce()})
	case o.receiver.seen && (o.receiver.state == stateClosed || o.receiver.state == stateFiltered):
		how := "refused them (RST or port unreachable): the service does not listen"
		if o.receiver.state == stateFiltered {
			how = "never answered them: its own firewall drops them after they were counted"
		}
		add(&Finding{ID: id(CrossRefused), Kind: CrossRefused, Severity: High, Direction: snapshot.Inbound, Proto: proto, Port: port, Rule: ref,
			Summary: fmt.Sprintf("required %s from %s (%s) to %s (%s): the attempts reached %s, which %s",
				d.label, s.Name, s.Role, r.Name, r.Role, r.Name, how),
			Evidence: o.evidence(), Cross: ce()})
	case o.sender.seen != o.receiver.seen:
		oneSided(s, r, d.label, 0, 0, o, d, add)
	}
}

// oneSided reports traffic from s to r seen at one end only.
func oneSided(s, r *depNode, label string, p snapshot.Proto, port uint16, o *crossObs, d *docService, add func(*Finding)) {
	f := &Finding{ID: fmt.Sprintf("%s/%s>%s/%s", OneSided, s.Name, r.Name, label), Kind: OneSided, Direction: snapshot.Inbound,
		Evidence: o.evidence(),
		Cross: &CrossEvidence{From: s.Name, FromRole: s.Role, To: r.Name, ToRole: r.Role, SenderState: o.sender.stateName(),
			ReceiverState: o.receiver.stateName(), SenderPackets: o.sender.packets, ReceiverPackets: o.receiver.packets, Line: s.Line}}
	if d != nil {
		f.Proto, f.Port = crossProtoPort(d)
		f.Rule = refOf(d.rule)
		f.Cross.Rules = d.rules
	} else {
		f.Proto, f.Port = p.String(), portLabel(p, port)
	}
	what := "traffic"
	if d != nil {
		what = "required traffic"
	}
	switch {
	case o.sender.seen && o.sender.state != stateOpen:
		f.Severity = High
		got := "got no answer"
		if o.sender.state == stateClosed {
			got = "were refused (RST or unreachable), though the receiver never saw them: something in between refuses them"
		}
		f.Summary = fmt.Sprintf("%s %s from %s (%s) to %s (%s) is one-sided: the sender's %d packets %s, and %s saw none of them: something between the nodes drops them",
			what, label, s.Name, s.Role, r.Name, r.Role, o.sender.packets, got, r.Name)
	case o.sender.seen:
		f.Severity = Low
		f.Summary = fmt.Sprintf("%s %s from %s (%s) to %s (%s) was answered, but %s's recording does not show it: it records another interface, its addresses in the deployment file are wrong, or a NAT rewrites them",
			what, label, s.Name, s.Role, r.Name, r.Role, r.Name)
	default:
		f.Severity = Low
		f.Summary = fmt.Sprintf("%s %s from %s (%s) to %s (%s) reached %s (%s), but %s's recording does not show it: it records another interface, its addresses in the deployment file are wrong, or a NAT rewrites them",
			what, label, s.Name, s.Role, r.Name, r.Role, r.Name, o.receiver.stateName(), s.Name)
	}
	add(f)
}

func commonSpan(a, b *depNode) string {
	start, end := a.snap.Start, a.snap.End
	if b.snap.Start.After(start) {
		start = b.snap.Start
	}
	if b.snap.End.Before(end) {
		end = b.snap.End
	}
	return end.Sub(start).Round(time.Second).String()
}

// roleView builds the role × role cells: what the matrices document
// between nodes of two roles and what was seen, in one pass over the node
// pairs.
func roleView(nodes []*depNode, roles []string, cross map[crossKey]*crossObs, dc *docCache) []RoleCell {
	type cellAcc struct {
		pairs bool
		doc   map[string]bool
		docs  []string
		obs   map[string]flowState
		order []string
	}
	cells := map[[2]string]*cellAcc{}
	cell := func(from, to string) *cellAcc {
		c := cells[[2]string{from, to}]
		if c == nil {
			c = &cellAcc{doc: map[string]bool{}, obs: map[string]flowState{}}
			cells[[2]string{from, to}] = c
		}
		return c
	}
	for _, s := range nodes {
		for _, r := range nodes {
			if s == r || s.matrix == nil || r.matrix == nil {
				continue
			}
			c := cell(s.Role, r.Role)
			c.pairs = true
			for _, d := range dc.between(s, r) {
				l := d.label
				if d.required {
					l += " required"
				}
				if !c.doc[l] {
					c.doc[l] = true
					c.docs = append(c.docs, l)
				}
			}
		}
	}
	for _, k := range sortedCrossKeys(cross) {
		o := cross[k]
		c := cell(nodes[k.from].Role, nodes[k.to].Role)
		// What the receiver saw, else what the sender did; the worst pair
		// shows.
		st := o.receiver.state
		if !o.receiver.seen {
			st = o.sender.state
		}
		name := svcName(k.proto, k.port)
		if old, ok := c.obs[name]; !ok {
			c.order = append(c.order, name)
			c.obs[name] = st
		} else if flowStateRank[st] < flowStateRank[old] {
			c.obs[name] = st
		}
	}
	var out []RoleCell
	for _, from := range roles {
		for _, to := range roles {
			c := cells[[2]string{from, to}]
			if c == nil || !c.pairs {
				continue
			}
			rc := RoleCell{From: from, To: to, Documented: c.docs, Observed: []string{}, Findings: []string{}}
			if rc.Documented == nil {
				rc.Documented = []string{}
			}
			sort.SliceStable(c.order, func(i, j int) bool { return portLess(c.order[i], c.order[j]) })
			for _, n := range c.order {
				rc.Observed = append(rc.Observed, n+" "+c.obs[n].String())
			}
			out = append(out, rc)
		}
	}
	return out
}
