package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// DiffVersion is the version of the JSON diff format.
const DiffVersion = 1

// DiffInput is one side of a diff: a snapshot, or a JSON audit report.
// Build it with LoadDiffInput or the DiffFrom* functions.
type DiffInput struct {
	// Name is the file (or label) the input came from.
	Name string
	// Snapshot is set for a snapshot; Report for a report (and for a
	// snapshot audited against a matrix, DiffOptions.Audit).
	Snapshot *snapshot.Snapshot
	Report   *Report
}

// LoadDiffInput reads path as a JSON audit report (an object with
// "matrix" and "findings") or else as a snapshot (through the snapshot
// package's reader, whatever its file layout).
func LoadDiffInput(path string) (*DiffInput, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("diff input: %w", err)
	}
	return ParseDiffInput(path, data)
}

// ParseDiffInput is LoadDiffInput from memory; name is used in errors.
func ParseDiffInput(name string, data []byte) (*DiffInput, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err == nil {
		_, hasMatrix := probe["matrix"]
		_, hasFindings := probe["findings"]
		if hasMatrix && hasFindings {
			var r Report
			dec := json.NewDecoder(bytes.NewReader(data))
			if err := dec.Decode(&r); err != nil {
				return nil, fmt.Errorf("%s: audit report: %w", name, err)
			}
			if r.Version != ReportVersion {
				return nil, fmt.Errorf("%s: audit report version %d: this build reads version %d", name, r.Version, ReportVersion)
			}
			return &DiffInput{Name: name, Report: &r}, nil
		}
	}
	s, err := snapshot.Read(bytes.NewReader(data), name)
	if err != nil {
		return nil, err
	}
	return &DiffInput{Name: name, Snapshot: s}, nil
}

// DiffOptions tune Diff.
type DiffOptions struct {
	// Site maps peers of snapshots to zones and roles (the report's
	// columns); nil: every peer is "other".
	Site *catalog.Site
	// Audit, when set, audits snapshot inputs with these options so their
	// findings are compared too.
	Audit *Options
	// Ignore drops peers and services that churn.
	Ignore []IgnoreSpec
}

// IgnoreSpec is one --ignore value: a peer (address or prefix) or a
// service (PROTO/PORT or PROTO/LO-HI, optionally "in " or "out " first).
type IgnoreSpec struct {
	Prefix netip.Prefix
	Dir    snapshot.Direction // Unknown: both directions
	Proto  snapshot.Proto
	Lo, Hi uint16
	raw    string
}

func (s IgnoreSpec) String() string { return s.raw }

// ParseIgnore parses an --ignore value: "192.0.2.66", "10.0.0.0/8",
// "udp/5353", "tcp/30000-40000", "in tcp/8080".
func ParseIgnore(v string) (IgnoreSpec, error) {
	s := IgnoreSpec{raw: v}
	t := strings.TrimSpace(v)
	if a, err := netip.ParseAddr(t); err == nil {
		s.Prefix = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		return s, nil
	}
	if p, err := netip.ParsePrefix(t); err == nil {
		if p.Masked() != p {
			return s, fmt.Errorf("--ignore %q: prefix has host bits set (want %s)", v, p.Masked())
		}
		s.Prefix = p
		return s, nil
	}
	if d, rest, ok := strings.Cut(t, " "); ok {
		switch d {
		case "in", "inbound":
			s.Dir = snapshot.Inbound
		case "out", "outbound":
			s.Dir = snapshot.Outbound
		default:
			return s, fmt.Errorf("--ignore %q: want an address, a prefix or [in|out ]PROTO/PORT[-PORT]", v)
		}
		t = strings.TrimSpace(rest)
	}
	ps, ports, ok := strings.Cut(t, "/")
	if !ok {
		return s, fmt.Errorf("--ignore %q: want an address, a prefix or [in|out ]PROTO/PORT[-PORT]", v)
	}
	p, err := snapshot.ParseProto(ps)
	if err != nil {
		return s, fmt.Errorf("--ignore %q: %w", v, err)
	}
	s.Proto = p
	lo, hi, isRange := strings.Cut(ports, "-")
	if !isRange {
		hi = lo
	}
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || l > h {
		return s, fmt.Errorf("--ignore %q: bad port or range %q", v, ports)
	}
	s.Lo, s.Hi = uint16(l), uint16(h)
	return s, nil
}

func (s IgnoreSpec) peer() bool { return s.Prefix.IsValid() }

func (s IgnoreSpec) matchService(dir snapshot.Direction, p snapshot.Proto, port uint16) bool {
	if s.peer() || (s.Dir != snapshot.Unknown && s.Dir != dir) || s.Proto != p {
		return false
	}
	return port >= s.Lo && port <= s.Hi
}

func ignoredService(ig []IgnoreSpec, dir snapshot.Direction, p snapshot.Proto, port uint16) bool {
	for _, s := range ig {
		if s.matchService(dir, p, port) {
			return true
		}
	}
	return false
}

func ignoredPeer(ig []IgnoreSpec, a netip.Addr) bool {
	a = a.Unmap()
	for _, s := range ig {
		if s.peer() && s.Prefix.Contains(a) {
			return true
		}
	}
	return false
}

func ignoredPrefix(ig []IgnoreSpec, p netip.Prefix) bool {
	p = unmapPrefix(p)
	for _, s := range ig {
		if s.peer() && s.Prefix.Bits() <= p.Bits() && s.Prefix.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// svcState is what one side says about one service.
type svcState struct {
	key   string // "inbound tcp/22"
	dir   snapshot.Direction
	state string // open, closed, filtered, unanswered; "" when unknown (reports)
	// zones → peers ("192.0.2.7", "10.1.2.0/24"); a zone with no peer
	// listed when only zones are known (reports).
	zones map[string]map[string]bool
}

// side is one input reduced to what a diff compares.
type side struct {
	name      string
	kind      string // snapshot or report
	start     time.Time
	end       time.Time
	services  map[string]*svcState
	open      map[string]bool // "tcp/22" (inbound ports that answered or listen)
	peers     bool            // individual peers known
	findings  map[string]Finding
	hasFindgs bool
}

// stateRank orders states to aggregate a service's flows: answered wins.
var stateRank = map[string]int{StateOpen: 4, StateClosed: 3, StateFiltered: 2, StateUnanswered: 1}

func serviceKey(dir snapshot.Direction, p snapshot.Proto, port uint16) string {
	return dir.String() + " " + p.String() + "/" + portLabel(p, port)
}

func fromSnapshot(in *DiffInput, o DiffOptions) (*side, error) {
	s := in.Snapshot
	sd := &side{name: in.Name, kind: "snapshot", start: s.Start, end: s.End, services: map[string]*svcState{},
		open: map[string]bool{}, peers: true, findings: map[string]Finding{}}
	cols := siteColumns(o.Site)
	add := func(f *snapshot.Flow) {
		if infrastructure(f) || f.Fragment || (f.Direction == snapshot.Unknown && (f.Proto.HasPorts() || f.Proto.IsICMP())) {
			return
		}
		if ignoredService(o.Ignore, f.Direction, f.Proto, f.Port) {
			return
		}
		var zone, peer string
		switch {
		case f.Peer.IsValid():
			if ignoredPeer(o.Ignore, f.Peer) {
				return
			}
			zone, peer = column(o.Site, cols, f.Peer.Unmap()), f.Peer.Unmap().String()
		case f.Folded():
			p := unmapPrefix(f.PeerPrefix)
			if ignoredPrefix(o.Ignore, p) {
				return
			}
			zone, peer = prefixColumn(o.Site, cols, p), prefixName(p)
		default:
			zone, peer = unknownColumn, "peers unknown"
		}
		k := serviceKey(f.Direction, f.Proto, f.Port)
		st := sd.services[k]
		if st == nil {
			st = &svcState{key: k, dir: f.Direction, zones: map[string]map[string]bool{}}
			sd.services[k] = st
		}
		if fs := state(f).String(); stateRank[fs] > stateRank[st.state] {
			st.state = fs
		}
		if st.zones[zone] == nil {
			st.zones[zone] = map[string]bool{}
		}
		st.zones[zone][peer] = true
		if f.Direction == snapshot.Inbound && state(f) == stateOpen {
			sd.open[f.Proto.String()+"/"+portLabel(f.Proto, f.Port)] = true
		}
	}
	for i := range s.Flows {
		add(&s.Flows[i])
	}
	for i := range s.Overflow {
		add(&s.Overflow[i])
	}
	for _, l := range s.Listening {
		if l.Addr.IsLoopback() || ignoredService(o.Ignore, snapshot.Inbound, l.Proto, l.Port) {
			continue
		}
		sd.open[l.Proto.String()+"/"+strconv.Itoa(int(l.Port))] = true
	}
	if o.Audit != nil {
		r, err := Run(s, *o.Audit)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", in.Name, err)
		}
		sd.addFindings(r, o.Ignore)
	}
	return sd, nil
}

func (sd *side) addFindings(r *Report, ig []IgnoreSpec) {
	sd.hasFindgs = true
	for _, f := range r.Findings {
		if f.Proto != "" && f.Port != "" {
			p, err1 := snapshot.ParseProto(f.Proto)
			n, err2 := strconv.ParseUint(f.Port, 10, 16)
			if err1 == nil && err2 == nil && ignoredService(ig, f.Direction, p, uint16(n)) {
				continue
			}
		}
		if strings.HasPrefix(f.ID, string(ScanSuspected)+"/") {
			if a, err := netip.ParseAddr(strings.TrimPrefix(f.ID, string(ScanSuspected)+"/")); err == nil && ignoredPeer(ig, a) {
				continue
			}
		}
		if onlyIgnoredPeers(ig, f.Evidence) {
			continue
		}
		sd.findings[f.ID] = f
	}
}

// onlyIgnoredPeers: every peer behind a finding's evidence is listed and
// ignored.
func onlyIgnoredPeers(ig []IgnoreSpec, ev Evidence) bool {
	if ev.Peers == 0 || len(ev.TopPeers) != ev.Peers || ev.PeersUnknownPackets > 0 {
		return false
	}
	for _, p := range ev.TopPeers {
		switch {
		case p.Addr.IsValid() && ignoredPeer(ig, p.Addr):
		case p.Prefix.IsValid() && ignoredPrefix(ig, p.Prefix):
		default:
			return false
		}
	}
	return true
}

// openStatuses are the rule statuses that say an inbound port answered.
var openStatuses = map[string]bool{StatusSeen: true, StatusUnverified: true, StatusOutOfZone: true, StatusPeersUnknown: true, StatusDeprecated: true}

func fromReport(in *DiffInput, o DiffOptions) *side {
	r := in.Report
	sd := &side{name: in.Name, kind: "report", start: r.Snapshot.Start, end: r.Snapshot.End, services: map[string]*svcState{},
		open: map[string]bool{}, findings: map[string]Finding{}}
	for _, row := range r.Observed {
		p, err := snapshot.ParseProto(row.Proto)
		if err != nil {
			continue
		}
		n, _ := strconv.ParseUint(row.Port, 10, 16)
		if ignoredService(o.Ignore, row.Direction, p, uint16(n)) {
			continue
		}
		k := row.Direction.String() + " " + row.Proto + "/" + row.Port
		st := &svcState{key: k, dir: row.Direction, zones: map[string]map[string]bool{}}
		for z, pk := range row.Cells {
			if pk > 0 {
				st.zones[z] = map[string]bool{}
			}
		}
		sd.services[k] = st
	}
	for _, rs := range r.Rules {
		if rs.Rule.Direction != snapshot.Inbound || !openStatuses[rs.Status] {
			continue
		}
		for _, proto := range strings.Split(rs.Rule.Proto, "+") {
			for _, port := range strings.Split(rs.Rule.Ports, ",") {
				sd.open[proto+"/"+port] = true
			}
		}
	}
	for _, f := range r.Findings {
		if f.Kind == UnexpectedOpenPort {
			sd.open[f.Proto+"/"+f.Port] = true
		}
	}
	for p := range sd.open {
		proto, port, _ := strings.Cut(p, "/")
		pr, err1 := snapshot.ParseProto(proto)
		n, err2 := strconv.ParseUint(port, 10, 16)
		if err1 == nil && err2 == nil && ignoredService(o.Ignore, snapshot.Inbound, pr, uint16(n)) {
			delete(sd.open, p)
		}
	}
	sd.addFindings(r, o.Ignore)
	return sd
}

// DiffSide describes one input of a diff.
type DiffSide struct {
	Name  string    `json:"name"`
	Kind  string    `json:"kind"` // snapshot or report
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// ServiceChange is a service that appeared, went, or changed state.
type ServiceChange struct {
	Service  string   `json:"service"`
	OldState string   `json:"old_state,omitempty"`
	NewState string   `json:"new_state,omitempty"`
	Zones    []string `json:"zones,omitempty"`
	Peers    int      `json:"peers,omitempty"`
}

// PeerChange lists the peers of one service and zone that appeared or
// went. For reports, which list zones rather than peers, Peers is empty and
// the zone itself appeared or went.
type PeerChange struct {
	Service  string   `json:"service"`
	Zone     string   `json:"zone"`
	Appeared []string `json:"appeared,omitempty"`
	Gone     []string `json:"gone,omitempty"`
	// ZoneAppeared / ZoneGone: the service had no peer in the zone before
	// (after).
	ZoneAppeared bool `json:"zone_appeared,omitempty"`
	ZoneGone     bool `json:"zone_gone,omitempty"`
}

// FindingChange is a finding that appeared, went, or changed severity.
type FindingChange struct {
	ID          string   `json:"id"`
	Kind        Kind     `json:"kind"`
	Severity    Severity `json:"severity"`
	OldSeverity string   `json:"old_severity,omitempty"`
	Summary     string   `json:"summary"`
}

// Changes of one kind of thing.
type ServiceChanges struct {
	Appeared []ServiceChange `json:"appeared"`
	Gone     []ServiceChange `json:"gone"`
	Changed  []ServiceChange `json:"changed"`
}

type PortChanges struct {
	Appeared []string `json:"appeared"`
	Gone     []string `json:"gone"`
}

type FindingChanges struct {
	Appeared []FindingChange `json:"appeared"`
	Gone     []FindingChange `json:"gone"`
	Changed  []FindingChange `json:"changed"`
}

// DiffResult is what changed between two inputs.
type DiffResult struct {
	Version   int            `json:"version"`
	Old       DiffSide       `json:"old"`
	New       DiffSide       `json:"new"`
	Ignored   []string       `json:"ignored,omitempty"`
	Changes   int            `json:"changes"`
	Services  ServiceChanges `json:"services"`
	OpenPorts PortChanges    `json:"open_ports"`
	Peers     []PeerChange   `json:"peers"`
	Findings  FindingChanges `json:"findings"`
	// NotCompared says what one side could not show ("findings: old.json
	// is a snapshot; give a matrix to audit it").
	NotCompared []string `json:"not_compared,omitempty"`
}

// Diff compares two inputs.
func Diff(oldIn, newIn *DiffInput, o DiffOptions) (*DiffResult, error) {
	load := func(in *DiffInput) (*side, error) {
		if in.Report != nil && in.Snapshot == nil {
			return fromReport(in, o), nil
		}
		if in.Snapshot == nil {
			return nil, fmt.Errorf("%s: neither a snapshot nor a report", in.Name)
		}
		return fromSnapshot(in, o)
	}
	a, err := load(oldIn)
	if err != nil {
		return nil, err
	}
	b, err := load(newIn)
	if err != nil {
		return nil, err
	}
	d := &DiffResult{Version: DiffVersion,
		Old:       DiffSide{Name: a.name, Kind: a.kind, Start: a.start, End: a.end},
		New:       DiffSide{Name: b.name, Kind: b.kind, Start: b.start, End: b.end},
		Services:  ServiceChanges{Appeared: []ServiceChange{}, Gone: []ServiceChange{}, Changed: []ServiceChange{}},
		OpenPorts: PortChanges{Appeared: []string{}, Gone: []string{}}, Peers: []PeerChange{},
		Findings: FindingChanges{Appeared: []FindingChange{}, Gone: []FindingChange{}, Changed: []FindingChange{}}}
	for _, s := range o.Ignore {
		d.Ignored = append(d.Ignored, s.raw)
	}
	peers := a.peers && b.peers
	if !peers {
		d.NotCompared = append(d.NotCompared, "individual peers: an audit report lists the zones each service was used from, not its peers; zones are compared")
	}
	summary := func(st *svcState) ServiceChange {
		c := ServiceChange{Service: st.key}
		for z, ps := range st.zones {
			c.Zones = append(c.Zones, z)
			c.Peers += len(ps)
		}
		sort.Strings(c.Zones)
		return c
	}
	for _, k := range sortedServiceKeys(a.services, b.services) {
		sa, sb := a.services[k], b.services[k]
		switch {
		case sa == nil:
			c := summary(sb)
			c.NewState = sb.state
			d.Services.Appeared = append(d.Services.Appeared, c)
		case sb == nil:
			c := summary(sa)
			c.OldState = sa.state
			d.Services.Gone = append(d.Services.Gone, c)
		default:
			if sa.state != "" && sb.state != "" && sa.state != sb.state {
				d.Services.Changed = append(d.Services.Changed, ServiceChange{Service: k, OldState: sa.state, NewState: sb.state})
			}
			for _, z := range unionKeys(sa.zones, sb.zones) {
				za, zb := sa.zones[z], sb.zones[z]
				pc := PeerChange{Service: k, Zone: z, ZoneAppeared: za == nil, ZoneGone: zb == nil}
				if peers {
					for _, p := range unionKeys(za, zb) {
						switch {
						case !za[p]:
							pc.Appeared = append(pc.Appeared, p)
						case !zb[p]:
							pc.Gone = append(pc.Gone, p)
						}
					}
				}
				if pc.ZoneAppeared || pc.ZoneGone || len(pc.Appeared) > 0 || len(pc.Gone) > 0 {
					d.Peers = append(d.Peers, pc)
				}
			}
		}
	}
	for _, p := range sortedPorts(unionKeys(a.open, b.open)) {
		switch {
		case !a.open[p]:
			d.OpenPorts.Appeared = append(d.OpenPorts.Appeared, p)
		case !b.open[p]:
			d.OpenPorts.Gone = append(d.OpenPorts.Gone, p)
		}
	}
	if a.hasFindgs && b.hasFindgs {
		for _, id := range unionKeys(a.findings, b.findings) {
			fa, okA := a.findings[id]
			fb, okB := b.findings[id]
			switch {
			case !okA:
				d.Findings.Appeared = append(d.Findings.Appeared, FindingChange{ID: id, Kind: fb.Kind, Severity: fb.Severity, Summary: fb.Summary})
			case !okB:
				d.Findings.Gone = append(d.Findings.Gone, FindingChange{ID: id, Kind: fa.Kind, Severity: fa.Severity, Summary: fa.Summary})
			case fa.Severity != fb.Severity:
				d.Findings.Changed = append(d.Findings.Changed, FindingChange{ID: id, Kind: fb.Kind, Severity: fb.Severity, OldSeverity: fa.Severity.String(), Summary: fb.Summary})
			}
		}
		sortFindingChanges(d.Findings.Appeared)
		sortFindingChanges(d.Findings.Gone)
		sortFindingChanges(d.Findings.Changed)
	} else {
		d.NotCompared = append(d.NotCompared, "findings: a snapshot has none unless audited (give --matrix and --role)")
	}
	d.Changes = len(d.Services.Appeared) + len(d.Services.Gone) + len(d.Services.Changed) + len(d.OpenPorts.Appeared) +
		len(d.OpenPorts.Gone) + len(d.Findings.Appeared) + len(d.Findings.Gone) + len(d.Findings.Changed)
	for _, p := range d.Peers {
		d.Changes += len(p.Appeared) + len(p.Gone)
		if !peers && (p.ZoneAppeared || p.ZoneGone) {
			d.Changes++
		}
	}
	return d, nil
}

func sortFindingChanges(fs []FindingChange) {
	sort.Slice(fs, func(i, j int) bool {
		if fs[i].Severity != fs[j].Severity {
			return fs[i].Severity > fs[j].Severity
		}
		return fs[i].ID < fs[j].ID
	})
}

func unionKeys[V any](a, b map[string]V) []string {
	seen := map[string]bool{}
	var out []string
	for k := range a {
		seen[k] = true
		out = append(out, k)
	}
	for k := range b {
		if !seen[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// sortedServiceKeys orders "direction proto/port" keys by direction,
// protocol, then port number.
func sortedServiceKeys(a, b map[string]*svcState) []string {
	keys := unionKeys(a, b)
	sort.SliceStable(keys, func(i, j int) bool { return serviceLess(keys[i], keys[j]) })
	return keys
}

func serviceLess(x, y string) bool {
	dx, rx, _ := strings.Cut(x, " ")
	dy, ry, _ := strings.Cut(y, " ")
	if dx != dy {
		return dx < dy
	}
	return portLess(rx, ry)
}

func portLess(x, y string) bool {
	px, nx, _ := strings.Cut(x, "/")
	py, ny, _ := strings.Cut(y, "/")
	if px != py {
		return px < py
	}
	a, errA := strconv.Atoi(nx)
	b, errB := strconv.Atoi(ny)
	if errA == nil && errB == nil {
		return a < b
	}
	return nx < ny
}

func sortedPorts(ps []string) []string {
	sort.SliceStable(ps, func(i, j int) bool { return portLess(ps[i], ps[j]) })
	return ps
}

// WriteDiffJSON writes d as JSON.
func WriteDiffJSON(w io.Writer, d *DiffResult) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(d)
}

// WriteDiffText writes d ndiff-style: "-" for what went, "+" for what
// appeared, "~" for a changed state or severity, grouped by section.
func WriteDiffText(w io.Writer, d *DiffResult) error {
	var b strings.Builder
	side := func(s DiffSide) string {
		if s.Start.IsZero() {
			return fmt.Sprintf("%s (%s)", s.Name, s.Kind)
		}
		return fmt.Sprintf("%s (%s, %s – %s)", s.Name, s.Kind, s.Start.UTC().Format("2006-01-02 15:04:05Z"), s.End.UTC().Format("2006-01-02 15:04:05Z"))
	}
	fmt.Fprintf(&b, "-%s\n+%s\n", side(d.Old), side(d.New))
	if len(d.Ignored) > 0 {
		fmt.Fprintf(&b, "ignored: %s\n", strings.Join(d.Ignored, ", "))
	}
	if d.Changes == 0 {
		b.WriteString("no change\n")
	}
	svc := func(c ServiceChange, st string) string {
		s := c.Service
		if st != "" {
			s += " " + st
		}
		if c.Peers > 0 {
			s += fmt.Sprintf(" (%d peers: %s)", c.Peers, strings.Join(c.Zones, ", "))
		} else if len(c.Zones) > 0 {
			s += " (" + strings.Join(c.Zones, ", ") + ")"
		}
		return s
	}
	if n := len(d.Services.Appeared) + len(d.Services.Gone) + len(d.Services.Changed); n > 0 {
		b.WriteString("\nservices:\n")
		for _, c := range d.Services.Gone {
			fmt.Fprintf(&b, "-  %s\n", svc(c, c.OldState))
		}
		for _, c := range d.Services.Appeared {
			fmt.Fprintf(&b, "+  %s\n", svc(c, c.NewState))
		}
		for _, c := range d.Services.Changed {
			fmt.Fprintf(&b, "~  %s: %s -> %s\n", c.Service, c.OldState, c.NewState)
		}
	}
	if len(d.OpenPorts.Appeared)+len(d.OpenPorts.Gone) > 0 {
		b.WriteString("\nopen ports:\n")
		for _, p := range d.OpenPorts.Gone {
			fmt.Fprintf(&b, "-  %s\n", p)
		}
		for _, p := range d.OpenPorts.Appeared {
			fmt.Fprintf(&b, "+  %s\n", p)
		}
	}
	if len(d.Peers) > 0 {
		b.WriteString("\npeers:\n")
		last := ""
		for _, p := range d.Peers {
			if p.Service != last {
				fmt.Fprintf(&b, "   %s\n", p.Service)
				last = p.Service
			}
			for _, x := range p.Gone {
				fmt.Fprintf(&b, "-    %s %s\n", p.Zone, x)
			}
			for _, x := range p.Appeared {
				fmt.Fprintf(&b, "+    %s %s\n", p.Zone, x)
			}
			if len(p.Gone)+len(p.Appeared) == 0 {
				switch {
				case p.ZoneGone:
					fmt.Fprintf(&b, "-    %s\n", p.Zone)
				case p.ZoneAppeared:
					fmt.Fprintf(&b, "+    %s\n", p.Zone)
				}
			}
		}
	}
	if n := len(d.Findings.Appeared) + len(d.Findings.Gone) + len(d.Findings.Changed); n > 0 {
		b.WriteString("\nfindings:\n")
		for _, f := range d.Findings.Gone {
			fmt.Fprintf(&b, "-  %-6s %s: %s\n", f.Severity, f.ID, f.Summary)
		}
		for _, f := range d.Findings.Appeared {
			fmt.Fprintf(&b, "+  %-6s %s: %s\n", f.Severity, f.ID, f.Summary)
		}
		for _, f := range d.Findings.Changed {
			fmt.Fprintf(&b, "~  %s -> %s %s: %s\n", f.OldSeverity, f.Severity, f.ID, f.Summary)
		}
	}
	for _, n := range d.NotCompared {
		fmt.Fprintf(&b, "\nnot compared: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// DiffFormats are the formats WriteDiff knows.
var DiffFormats = []string{"text", "json"}

// WriteDiff renders d in format.
func WriteDiff(w io.Writer, d *DiffResult, format string) error {
	switch format {
	case "text":
		return WriteDiffText(w, d)
	case "json":
		return WriteDiffJSON(w, d)
	}
	return fmt.Errorf("unknown diff format %q (want %s)", format, strings.Join(DiffFormats, ", "))
}
