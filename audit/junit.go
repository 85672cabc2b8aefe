package audit

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"time"
)

// JUnit XML output (docs/REPORTS.md): a <testsuites> with two suites,
// "matrix" (one test case per documented rule, never failing) and
// "findings" (one per finding, failing from severity low): one failure per
// finding. The shape is the common one CI systems read (Jenkins, GitLab,
// GitHub test reporters): counts on every suite and on <testsuites>,
// <failure message type> with details as text, <system-out> for passes.

// junitFailLevel is the severity from which a finding fails its test case.
const junitFailLevel = Low

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	ID         int             `xml:"id,attr"`
	Package    string          `xml:"package,attr"`
	Hostname   string          `xml:"hostname,attr"`
	Timestamp  string          `xml:"timestamp,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Errors     int             `xml:"errors,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Properties []junitProperty `xml:"properties>property"`
	Cases      []junitCase     `xml:"testcase"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes r as JUnit XML.
func WriteJUnit(w io.Writer, r *Report) error {
	doc := buildJUnit(r)
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func buildJUnit(r *Report) junitSuites {
	byID := make(map[string]*Finding, len(r.Findings))
	for i := range r.Findings {
		byID[r.Findings[i].ID] = &r.Findings[i]
	}
	ts := ""
	if !r.Generated.IsZero() {
		// JUnit's timestamp is an xs:dateTime without zone; it is UTC.
		ts = r.Generated.UTC().Format("2006-01-02T15:04:05")
	}
	host := r.Snapshot.Hostname
	if host == "" {
		host = "unknown"
	}
	pkg := r.Matrix.Product + "." + r.Matrix.Role
	props := junitProps(r)

	matrix := junitSuite{
		Name: fmt.Sprintf("matrix %s@%s %s", r.Matrix.Product, r.Matrix.Version, r.Matrix.Role),
		ID:   0, Package: pkg, Hostname: host, Timestamp: ts, Time: "0", Properties: props,
	}
	// The matrix suite documents every rule and never fails: each problem
	// fails exactly once, as its finding's case in the findings suite
	// (one failure per finding, however many rules it concerns).
	for _, rs := range r.Rules {
		c := junitCase{Name: rs.Rule.ID + " " + ruleService(rs.Rule), Classname: pkg, Time: "0"}
		var b strings.Builder
		b.WriteString(ruleDetail(rs))
		for _, id := range rs.Findings {
			f := byID[id]
			if f == nil {
				continue
			}
			fmt.Fprintf(&b, "\n[%s] %s: %s", f.Severity, f.ID, f.Summary)
			if f.Severity >= junitFailLevel {
				b.WriteString(" (a failure in the findings suite)")
			}
		}
		c.SystemOut = b.String()
		matrix.Cases = append(matrix.Cases, c)
	}
	matrix.count()

	findings := junitSuite{
		Name: "findings", ID: 1, Package: pkg, Hostname: host, Timestamp: ts, Time: "0", Properties: props,
	}
	for i := range r.Findings {
		f := &r.Findings[i]
		c := junitCase{Name: f.ID, Classname: pkg + "." + string(f.Kind), Time: "0"}
		if f.Severity >= junitFailLevel {
			c.Failure = &junitFailure{Message: f.Summary, Type: string(f.Kind), Text: findingDetail(f)}
		} else {
			c.SystemOut = f.Summary + "\n" + findingDetail(f)
		}
		findings.Cases = append(findings.Cases, c)
	}
	findings.count()

	out := junitSuites{Name: "flowaudit: " + r.Title(), Time: "0", Suites: []junitSuite{matrix, findings}}
	for _, s := range out.Suites {
		out.Tests += s.Tests
		out.Failures += s.Failures
		out.Errors += s.Errors
		out.Skipped += s.Skipped
	}
	return out
}

func (s *junitSuite) count() {
	s.Tests = len(s.Cases)
	s.Failures = 0
	for _, c := range s.Cases {
		if c.Failure != nil {
			s.Failures++
		}
	}
}

func junitProps(r *Report) []junitProperty {
	ifaces := make([]string, 0, len(r.Snapshot.Interfaces))
	for _, i := range r.Snapshot.Interfaces {
		ifaces = append(ifaces, i.Name)
	}
	p := []junitProperty{
		{"product", r.Matrix.Product},
		{"version", r.Matrix.Version},
		{"role", r.Matrix.Role},
		{"conditions", strings.Join(r.Matrix.Conditions, ",")},
		{"site", r.Site},
		{"snapshot.source", r.Snapshot.Source},
		{"snapshot.interfaces", strings.Join(ifaces, ",")},
		{"snapshot.window", r.Snapshot.Window},
		{"snapshot.incomplete", fmt.Sprint(!r.Coverage.Complete)},
		{"snapshot.peerless-packets", fmt.Sprint(r.Coverage.PeerlessPackets)},
		{"snapshot.lost-packets", fmt.Sprint(r.Coverage.LostPackets)},
		{"snapshot.evicted-flows", fmt.Sprint(r.Coverage.EvictedFlows)},
		{"snapshot.folded-flows", fmt.Sprint(r.Coverage.FoldedFlows)},
		{"snapshot.interrupted", r.Coverage.Stopped},
		{"snapshot.checkpoint", fmt.Sprint(r.Coverage.Checkpoint)},
		{"snapshot.coverage", strings.Join(r.Coverage.Lines(), "\n")},
		{"tool.version", r.Tool.Version},
	}
	return p
}

// ruleService is "inbound tcp/22".
func ruleService(rr RuleRef) string {
	return fmt.Sprintf("%s %s/%s", rr.Direction, rr.Proto, rr.Ports)
}

func ruleDetail(rs RuleStatus) string {
	rr := rs.Rule
	req := rr.Requirement.String()
	if rr.Condition != "" {
		req += " (" + rr.Condition + ")"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "status: %s\n", rs.Status)
	fmt.Fprintf(&b, "rule: %s %s, peer %s, %s: %s\n", rr.ID, ruleService(rr), rr.Peer, req, rr.Purpose)
	fmt.Fprintf(&b, "observed: %d packets from %s the rule allows", rs.Allowed.Packets, who(rs.Allowed))
	if oz := rs.OutOfZone; oz != nil {
		fmt.Fprintf(&b, "; %d packets from %s outside its zone", oz.Packets, who(*oz))
	}
	if rs.Allowed.FloodPackets > 0 {
		fmt.Fprintf(&b, "; %d packets of a suspected flood (state only)", rs.Allowed.FloodPackets)
	}
	if c := citationText(rr.Citation); c != "" {
		fmt.Fprintf(&b, "\ncited: %s", c)
	}
	if rr.Source.File != "" {
		fmt.Fprintf(&b, "\nsource: %s", rr.Source)
	}
	return b.String()
}

func findingDetail(f *Finding) string {
	var b strings.Builder
	svc := "-"
	if f.Proto != "" {
		svc = f.Proto + "/" + f.Port
	}
	fmt.Fprintf(&b, "severity: %s\nkind: %s\ndirection: %s\nservice: %s\n", f.Severity, f.Kind, f.Direction, svc)
	fmt.Fprintf(&b, "peers: %s", peersNum(f.Evidence))
	if len(f.Evidence.TopPeers) > 0 {
		top := make([]string, len(f.Evidence.TopPeers))
		for i, p := range f.Evidence.TopPeers {
			top[i] = fmt.Sprintf("%s (%d packets)", p, p.Packets)
		}
		fmt.Fprintf(&b, " (top: %s)", strings.Join(top, ", "))
	}
	fmt.Fprintf(&b, "\npackets: %d, bytes: %d", f.Evidence.Packets, f.Evidence.Bytes)
	if !f.Evidence.FirstSeen.IsZero() {
		fmt.Fprintf(&b, "\nseen: %s to %s", f.Evidence.FirstSeen.UTC().Format(time.RFC3339), f.Evidence.LastSeen.UTC().Format(time.RFC3339))
	}
	if len(f.Evidence.Ports) > 0 {
		fmt.Fprintf(&b, "\nports: %s", PortRanges(f.Evidence.Ports))
	}
	for _, n := range evidenceNotes(f.Evidence) {
		fmt.Fprintf(&b, "\n%s", n)
	}
	if f.Rule != nil {
		fmt.Fprintf(&b, "\nrule: %s", f.Rule.ID)
		if len(f.AlsoRules) > 0 {
			fmt.Fprintf(&b, " (the same traffic falls under %s)", strings.Join(f.AlsoRules, ", "))
		}
		if c := citationText(f.Rule.Citation); c != "" {
			fmt.Fprintf(&b, " (%s)", c)
		}
		if f.Rule.Source.File != "" {
			fmt.Fprintf(&b, "\nsource: %s", f.Rule.Source)
		}
	}
	return b.String()
}
