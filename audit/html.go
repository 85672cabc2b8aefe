package audit

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/catalog"
)

// The HTML report is one self-contained file: inline CSS, no script, no
// external resource of any kind (a Content-Security-Policy meta tag makes
// the browser refuse any that slipped in). html/template escapes every
// value. Everything the template shows is prepared here, in a fixed order,
// so the output is byte-for-byte deterministic.

//go:embed report.html.tmpl
var htmlTemplateText string

var htmlTemplate = template.Must(template.New("report").Parse(htmlTemplateText))

// heatLevels is the number of colour steps of a non-empty heat-map cell.
const heatLevels = 9

type htmlView struct {
	Title      string
	Tool       string
	Generated  htmlTime
	Matrix     string
	Conditions string
	Site       string
	NoSite     string
	Snapshot   SnapshotInfo
	Start, End htmlTime
	Interfaces []htmlIface
	Lossy      bool
	LossText   string
	Partial    bool
	Coverage   []string
	StatsNote  string
	Stats      []htmlKV
	Severities []htmlSeverity
	Total      int
	Findings   []htmlFinding
	Rules      []htmlRule
	Columns    []htmlColumn
	Rows       []htmlRow
	MaxPackets uint64
	Legend     []htmlLegend
	Kinds      []htmlKind
	NotAudited []htmlKV
}

type htmlTime struct {
	Machine string // RFC 3339, for <time datetime>
	Human   string
}

func mkTime(t time.Time) htmlTime {
	if t.IsZero() {
		return htmlTime{}
	}
	t = t.UTC()
	return htmlTime{Machine: t.Format(time.RFC3339), Human: t.Format("2006-01-02 15:04:05Z")}
}

type htmlKV struct {
	Key, Value string
	// Bad marks a counter that makes the report less reliable; Note says how.
	Bad  bool
	Note string
}

type htmlIface struct {
	Name, Attach, Addresses string
}

type htmlSeverity struct {
	Name  string
	Count int
}

type htmlFinding struct {
	Anchor    string
	ID        string
	Severity  string
	Kind      string
	KindHelp  string
	Direction string
	Service   string
	PeerCount string
	Peers     []string
	MorePeers int
	Packets   uint64
	First     htmlTime
	Last      htmlTime
	Summary   string
	Notes     []string
	RuleID    string
	RuleAnch  string
	Also      []htmlLink
	Citation  string
	Quote     string
	Source    string
}

type htmlRule struct {
	Anchor      string
	ID          string
	Direction   string
	Service     string
	Peer        string
	Requirement string
	Status      string
	Failing     bool
	Deprecated  bool
	Peers       string
	Unknown     uint64
	Flood       uint64
	OutOfZone   int
	OutPackets  uint64
	Packets     uint64
	Findings    []htmlLink
	Purpose     string
	Citation    string
	Quote       string
	Source      string
}

type htmlLink struct {
	Href, Text string
}

type htmlColumn struct {
	Name  string
	Label string
}

type htmlRow struct {
	Service    string
	Documented bool
	// OutOfZone: some of the row's traffic came from peers outside the
	// documented zones.
	OutOfZone bool
	Packets   uint64
	Cells     []htmlCell
}

type htmlCell struct {
	Packets uint64
	Level   int
	Title   string
	// OutOfZone counts the cell's packets from peers outside the zone of
	// every rule of the service: the cell is coloured as a problem.
	OutOfZone uint64
}

type htmlLegend struct {
	Level int
	Text  string
}

type htmlKind struct {
	Kind, Short string
}

// heatLevel maps packets to a colour step: 0 for none, 1..heatLevels on a
// log scale up to the largest cell.
func heatLevel(p, maxp uint64) int {
	switch {
	case p == 0:
		return 0
	case maxp <= 1 || p >= maxp:
		return heatLevels
	}
	l := 1 + int(math.Round(float64(heatLevels-1)*math.Log(float64(p))/math.Log(float64(maxp))))
	return min(max(l, 1), heatLevels)
}

func columnLabel(c string) string {
	if name, ok := strings.CutPrefix(c, "role:"); ok {
		return "role " + name
	}
	if name, ok := strings.CutPrefix(c, dnsColumnPrefix); ok {
		return "dns " + name
	}
	if c == otherColumn {
		return "other (no zone or role)"
	}
	if c == unknownColumn {
		return "peers unknown"
	}
	return c
}

func anchorOf(prefix string, i int) string { return fmt.Sprintf("%s-%d", prefix, i+1) }

// failingStatus: a rule status that the table and HTML show as a problem
// (not StatusPeersUnknown: nothing the audit knows of is wrong). A closed
// or filtered port is a problem only for a rule the role needs: an
// optional port nobody could reach is merely not in use.
func failingStatus(rs RuleStatus) bool {
	switch rs.Status {
	case StatusOutOfZone, StatusDeprecated:
		return true
	case StatusClosed, StatusFiltered:
		return rs.Rule.Requirement != catalog.Optional
	}
	return false
}

func buildHTML(r *Report) *htmlView {
	v := &htmlView{
		Title:     "flowaudit: " + r.Title(),
		Tool:      strings.TrimSpace(r.Tool.Name + " " + r.Tool.Version),
		Generated: mkTime(r.Generated),
		Matrix:    fmt.Sprintf("%s (%s) %s, role %s, %d rules", r.Matrix.ProductName, r.Matrix.Product, r.Matrix.Version, r.Matrix.Role, r.Matrix.Rules),
		Site:      r.Site,
		NoSite:    noSiteText,
		Snapshot:  r.Snapshot,
		Start:     mkTime(r.Snapshot.Start),
		End:       mkTime(r.Snapshot.End),
		Lossy:     r.Coverage.Lossy(),
		Partial:   !r.Coverage.Complete,
		Coverage:  r.Coverage.Lines(),
	}
	v.Conditions = strings.Join(r.Matrix.Conditions, ", ")
	for _, i := range r.Snapshot.Interfaces {
		attach := strings.Trim(i.Ingress+" / "+i.Egress, " /")
		addrs := make([]string, len(i.Addresses))
		for j, a := range i.Addresses {
			addrs[j] = a.String()
		}
		v.Interfaces = append(v.Interfaces, htmlIface{Name: i.Name, Attach: attach, Addresses: strings.Join(addrs, ", ")})
	}
	st := r.Snapshot.Stats
	cov := &r.Coverage
	if v.Lossy {
		v.LossText = fmt.Sprintf("the flow map and the overflow map were full: %d packets were not counted and %d flows were evicted. Traffic is missing from this report, and the absence of a finding proves nothing.",
			cov.LostPackets, cov.EvictedFlows)
	}
	switch {
	case v.Lossy:
		v.StatsNote = "INCOMPLETE, packets were lost"
	case v.Partial:
		v.StatsNote = "every packet counted, but not every peer known or the recording cut short"
	default:
		v.StatsNote = "complete, no packet lost"
	}
	v.Stats = []htmlKV{
		{Key: "flow map entries (most held)", Value: fmt.Sprintf("%d of %d", st.FlowEntries, st.FlowCapacity)},
		{Key: "packets counted without their peer (overflow map)", Value: fmt.Sprint(cov.PeerlessPackets), Bad: cov.PeerlessPackets > 0, Note: "peers unknown"},
		{Key: "packets not counted (overflow map full)", Value: fmt.Sprint(cov.LostPackets), Bad: cov.LostPackets > 0, Note: "lost"},
		{Key: "flows evicted", Value: fmt.Sprint(cov.EvictedFlows), Bad: cov.EvictedFlows > 0, Note: "lost"},
	}
	if cov.FoldedFlows > 0 || cov.FlowBudget > 0 {
		v.Stats = append(v.Stats, htmlKV{Key: "flows folded into prefixes (recorder budget)", Value: fmt.Sprintf("%d (budget %d)", cov.FoldedFlows, cov.FlowBudget),
			Bad: cov.FoldedFlows > 0, Note: "peers estimated"})
	}
	if st.Moves > 0 {
		v.Stats = append(v.Stats, htmlKV{Key: "moves out of the kernel", Value: fmt.Sprint(st.Moves)})
	}
	v.Stats = append(v.Stats,
		htmlKV{Key: "connection orientations not stored", Value: fmt.Sprint(st.ConnInsertFailed), Bad: st.ConnInsertFailed > 0, Note: "direction guessed from ports"},
		htmlKV{Key: "packets ingress / egress", Value: fmt.Sprintf("%d / %d", st.PacketsIngress, st.PacketsEgress)},
		htmlKV{Key: "truncated packets", Value: fmt.Sprint(st.Truncated)},
	)
	ethertypes := make([]string, 0, len(st.NonIP))
	for k := range st.NonIP {
		ethertypes = append(ethertypes, k)
	}
	sort.Strings(ethertypes)
	for _, k := range ethertypes {
		c := st.NonIP[k]
		v.Stats = append(v.Stats, htmlKV{Key: "non-IP ethertype " + k, Value: fmt.Sprintf("%d packets, %d bytes", c.Packets, c.Bytes)})
	}

	for i := len(severityNames) - 1; i >= 0; i-- {
		n := severityNames[i]
		v.Severities = append(v.Severities, htmlSeverity{Name: n, Count: r.Counts[n]})
		v.Total += r.Counts[n]
	}

	ruleAnchor := map[string]string{}
	for i, rs := range r.Rules {
		ruleAnchor[rs.Rule.ID] = anchorOf("rule", i)
	}
	findingAnchor := map[string]string{}
	for i, f := range r.Findings {
		findingAnchor[f.ID] = anchorOf("finding", i)
	}

	for i := range r.Findings {
		f := &r.Findings[i]
		hf := htmlFinding{
			Anchor: findingAnchor[f.ID], ID: f.ID, Severity: f.Severity.String(), Kind: string(f.Kind),
			KindHelp: docOf(f.Kind).Short, Direction: f.Direction.String(), Service: "—",
			PeerCount: peersNum(f.Evidence), Packets: f.Evidence.Packets,
			First: mkTime(f.Evidence.FirstSeen), Last: mkTime(f.Evidence.LastSeen), Summary: f.Summary,
		}
		if f.Proto != "" {
			hf.Service = f.Proto + "/" + f.Port
		}
		for _, p := range f.Evidence.TopPeers {
			hf.Peers = append(hf.Peers, fmt.Sprintf("%s (%d pkts)", p, p.Packets))
		}
		hf.MorePeers = f.Evidence.Peers - listed(f.Evidence.TopPeers)
		hf.Notes = append(hf.Notes, evidenceNotes(f.Evidence)...)
		if len(f.Evidence.Ports) > 0 {
			hf.Notes = append(hf.Notes, "ports: "+PortRanges(f.Evidence.Ports))
		}
		if f.Evidence.Listening {
			hf.Notes = append(hf.Notes, "a local socket listens on this port")
		}
		if f.Evidence.DirectionInferred {
			hf.Notes = append(hf.Notes, "direction partly inferred from port numbers")
		}
		if f.Evidence.Window != "" {
			hf.Notes = append(hf.Notes, "window: "+f.Evidence.Window)
		}
		if f.Rule != nil {
			hf.RuleID = f.Rule.ID
			hf.RuleAnch = ruleAnchor[f.Rule.ID]
			for _, id := range f.AlsoRules {
				hf.Also = append(hf.Also, htmlLink{Href: "#" + ruleAnchor[id], Text: id})
			}
			hf.Citation = citationText(f.Rule.Citation)
			hf.Quote = f.Rule.Citation.Quote
			if f.Rule.Source.File != "" {
				hf.Source = f.Rule.Source.String()
			}
		}
		v.Findings = append(v.Findings, hf)
	}

	for i, rs := range r.Rules {
		rr := rs.Rule
		req := rr.Requirement.String()
		if rr.Condition != "" {
			req += " (if " + rr.Condition + ")"
		}
		hr := htmlRule{
			Anchor: anchorOf("rule", i), ID: rr.ID, Direction: rr.Direction.String(), Service: rr.Proto + "/" + rr.Ports,
			Peer: rr.Peer, Requirement: req, Status: rs.Status, Failing: failingStatus(rs), Deprecated: rs.Deprecated,
			Peers: peersNum(rs.Allowed), Unknown: rs.Allowed.PeersUnknownPackets, Flood: rs.Allowed.FloodPackets, OutOfZone: rs.OutOfZonePeers, Packets: rs.Allowed.Packets,
			Purpose: rr.Purpose, Citation: citationText(rr.Citation), Quote: rr.Citation.Quote,
		}
		if rr.Source.File != "" {
			hr.Source = rr.Source.String()
		}
		if rs.OutOfZone != nil {
			hr.OutPackets = rs.OutOfZone.Packets
		}
		for _, id := range rs.Findings {
			hr.Findings = append(hr.Findings, htmlLink{Href: "#" + findingAnchor[id], Text: id})
		}
		v.Rules = append(v.Rules, hr)
	}

	for _, c := range r.Columns {
		v.Columns = append(v.Columns, htmlColumn{Name: c, Label: columnLabel(c)})
	}
	for _, row := range r.Observed {
		for _, c := range r.Columns {
			v.MaxPackets = max(v.MaxPackets, row.Cells[c])
		}
	}
	for _, row := range r.Observed {
		hr := htmlRow{Service: fmt.Sprintf("%s %s/%s", row.Direction, row.Proto, row.Port), Documented: row.Documented, Packets: row.Packets}
		doc := "undocumented"
		if row.Documented {
			doc = "documented"
		}
		for _, c := range v.Columns {
			p := row.Cells[c.Name]
			cell := htmlCell{
				Packets: p, Level: heatLevel(p, v.MaxPackets),
				Title: fmt.Sprintf("%s (%s) with %s: %d packets", hr.Service, doc, c.Label, p),
			}
			if oz := row.OutOfZone[c.Name]; oz > 0 && row.Documented {
				cell.OutOfZone = oz
				cell.Title += fmt.Sprintf(", %d of them from peers OUTSIDE the documented zone", oz)
				hr.OutOfZone = true
			}
			hr.Cells = append(hr.Cells, cell)
		}
		v.Rows = append(v.Rows, hr)
	}
	for l := 1; l <= heatLevels; l++ {
		v.Legend = append(v.Legend, htmlLegend{Level: l, Text: legendText(l, v.MaxPackets)})
	}
	for _, k := range Kinds {
		v.Kinds = append(v.Kinds, htmlKind{Kind: string(k), Short: docOf(k).Short})
	}
	if r.Infrastructure.Packets > 0 || r.Unclassified.Packets > 0 {
		v.NotAudited = []htmlKV{
			{Key: "ICMP errors, neighbour discovery", Value: fmt.Sprintf("%d packets, %d bytes", r.Infrastructure.Packets, r.Infrastructure.Bytes)},
			{Key: "IP fragments, unknown direction", Value: fmt.Sprintf("%d packets, %d bytes", r.Unclassified.Packets, r.Unclassified.Bytes)},
		}
	}
	return v
}

// evidenceNotes are the lines the HTML and JUnit reports add for evidence
// beyond packets and peers: peers unknown, a flood, services, an
// interruption.
func evidenceNotes(ev Evidence) []string {
	var out []string
	if ev.PeersEstimated {
		out = append(out, "peer count estimated: the recorder folded some peers into prefixes")
	}
	if ev.PeersUnknownPackets > 0 {
		s := fmt.Sprintf("%d packets counted without their peer (peers unknown", ev.PeersUnknownPackets)
		if ev.PeersUnknown > 0 {
			s += fmt.Sprintf(", ~%d distinct", ev.PeersUnknown)
		}
		out = append(out, s+")")
	}
	if ev.FloodPackets > 0 {
		out = append(out, fmt.Sprintf("%d packets of a suspected flood's half-open attempts, counted for the port's state only", ev.FloodPackets))
	}
	if fl := ev.Flood; fl != nil {
		out = append(out, fmt.Sprintf("flood: %s (thresholds: %d peers, %d half-open SYNs at %s/s); %d distinct peers, %d half-open SYNs, %s %s/s over %s",
			fl.Trigger, fl.PeersThreshold, fl.SYNThreshold, fmtRate(fl.RateThreshold), fl.Peers, fl.HalfOpenSYNs, fmtRate(fl.Rate), fl.RateOf, fl.Span))
	}
	if len(ev.Services) > 0 {
		out = append(out, "services: "+serviceList(ev.Services, len(ev.Services)))
	}
	if in := ev.Interrupted; in != nil {
		s := "stopped by " + in.Signal
		if !in.At.IsZero() {
			s += " at " + in.At.UTC().Format(time.RFC3339)
		}
		if !in.PlannedEnd.IsZero() {
			s += ", planned end " + in.PlannedEnd.UTC().Format(time.RFC3339)
		}
		out = append(out, s)
	}
	return out
}

// legendText gives the packet range of a colour step.
func legendText(l int, maxp uint64) string {
	if maxp <= 1 {
		if l == heatLevels {
			return fmt.Sprint(maxp)
		}
		return "—"
	}
	// Inverse of heatLevel: step l covers max^((l-1.5)/8) … max^((l-0.5)/8).
	bound := func(x float64) uint64 {
		return uint64(math.Ceil(math.Pow(float64(maxp), x/float64(heatLevels-1))))
	}
	lo, hi := uint64(1), maxp
	if l > 1 {
		lo = bound(float64(l) - 1.5)
	}
	if l < heatLevels {
		hi = bound(float64(l)-0.5) - 1
	}
	if hi < lo {
		return "—"
	}
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d–%d", lo, hi)
}

// WriteHTML writes r as a single self-contained HTML file.
func WriteHTML(w io.Writer, r *Report) error {
	var buf bytes.Buffer
	if err := htmlTemplate.Execute(&buf, buildHTML(r)); err != nil {
		return fmt.Errorf("html report: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}
