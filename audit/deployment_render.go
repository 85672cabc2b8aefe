package audit

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"html/template"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteDeployment renders a deployment report in format (Formats).
func WriteDeployment(w io.Writer, r *DeploymentReport, format string, o RenderOptions) error {
	switch format {
	case "table":
		return WriteDeploymentTable(w, r, o.Color)
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "html":
		return WriteDeploymentHTML(w, r)
	case "junit":
		return writeDeploymentJUnit(w, r)
	case "sarif":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(buildDeploymentSARIF(r, o))
	}
	return fmt.Errorf("unknown report format %q (want %s)", format, strings.Join(Formats, ", "))
}

func crossService(f Finding) string {
	if f.Proto == "" {
		return "-"
	}
	return f.Proto + "/" + f.Port
}

func crossPair(f Finding) (string, string) {
	if f.Cross == nil {
		return "-", "-"
	}
	from := f.Cross.From + " (" + f.Cross.FromRole + ")"
	to := "-"
	if f.Cross.To != "" {
		to = f.Cross.To + " (" + f.Cross.ToRole + ")"
	}
	return from, to
}

func fmtWindow(s, e time.Time) string {
	if s.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%s – %s (%s)", s.UTC().Format("2006-01-02 15:04:05Z"), e.UTC().Format("15:04:05Z"), e.Sub(s).Round(time.Second))
}

// WriteDeploymentTable writes the terminal report: the nodes, the
// cross-node findings, the role × role view, then each node's report.
func WriteDeploymentTable(w io.Writer, r *DeploymentReport, color bool) error {
	c := func(code, s string) string {
		if !color {
			return s
		}
		return code + s + ansiReset
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", c(ansiBold, "flowaudit: "+r.Title()))
	fmt.Fprintf(&b, "deployment: %s, common window %s, max age %s\n", r.Deployment, fmtWindow(r.Start, r.End), r.MaxAge)
	if r.Site != "" {
		fmt.Fprintf(&b, "site: %s\n", r.Site)
	} else {
		fmt.Fprintln(&b, c(ansiBold+ansiYellow, "site: NONE: zones are bound to no address; roles are bound to the nodes of the deployment file only"))
	}
	fmt.Fprintf(&b, "cross-node findings: %d high, %d medium, %d low; all findings: %d high, %d medium, %d low, %d info\n\n",
		r.Counts["high"], r.Counts["medium"], r.Counts["low"], r.Total["high"], r.Total["medium"], r.Total["low"], r.Total["info"])

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tADDRESSES\tSTATUS\tWINDOW\tFINDINGS (H/M/L/I)\tSNAPSHOT")
	for _, n := range r.Nodes {
		addrs := make([]string, len(n.Addresses))
		for i, a := range n.Addresses {
			addrs[i] = a.String()
		}
		counts := "-"
		if n.Report != nil {
			counts = fmt.Sprintf("%d/%d/%d/%d", n.Report.Counts["high"], n.Report.Counts["medium"], n.Report.Counts["low"], n.Report.Counts["info"])
		}
		st := n.Status
		if st != NodeOK {
			st = c(ansiRed, st)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Role, strings.Join(addrs, ","), st, fmtWindow(n.Start, n.End), counts, n.Snapshot)
	}
	tw.Flush()
	fmt.Fprintln(&b)

	if len(r.Findings) > 0 {
		fmt.Fprintln(&b, c(ansiBold, "cross-node findings"))
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SEVERITY\tKIND\tFROM\tTO\tSERVICE\tEXPLANATION")
		for _, f := range r.Findings {
			from, to := crossPair(f)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c(sevColor(f.Severity), f.Severity.String()), f.Kind, from, to, crossService(f), f.Summary)
		}
		tw.Flush()
		fmt.Fprintln(&b)
	}

	fmt.Fprintln(&b, c(ansiBold, "role × role (sender → receiver)"))
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tDOCUMENTED\tOBSERVED\tFINDINGS")
	for _, cell := range r.RoleView {
		worst := "-"
		if len(cell.Findings) > 0 {
			worst = fmt.Sprintf("%d (worst %s)", len(cell.Findings), cell.Worst)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cell.From, cell.To, orDash(strings.Join(cell.Documented, ", ")), orDash(strings.Join(cell.Observed, ", ")), worst)
	}
	tw.Flush()
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	for _, n := range r.Nodes {
		if n.Report == nil {
			continue
		}
		if _, err := fmt.Fprintf(w, "\n%s\n", c(ansiBold, fmt.Sprintf("=== node %s (role %s) ===", n.Name, n.Role))); err != nil {
			return err
		}
		if err := WriteTable(w, n.Report, color); err != nil {
			return err
		}
	}
	return nil
}

//go:embed deployment.html.tmpl
var deploymentTemplateText string

var deploymentTemplate = template.Must(template.New("deployment").Parse(deploymentTemplateText))

type depHTMLFinding struct {
	Severity, Kind, ID, From, To, Service, Summary string
}

type depHTMLCell struct {
	Documented, Observed []string
	Findings             int
	Worst                string
	Class                string
	Empty                bool
}

type depHTMLNode struct {
	NodeResult
	Addrs, Window, Counts string
	Findings              []depHTMLFinding
}

type depHTMLView struct {
	Title, Tool, Generated, Deployment, Window, Site, MaxAge string
	Counts, Total                                            map[string]int
	Nodes                                                    []depHTMLNode
	Findings                                                 []depHTMLFinding
	Roles                                                    []string
	Grid                                                     [][]depHTMLCell
}

func depFinding(f Finding) depHTMLFinding {
	from, to := crossPair(f)
	return depHTMLFinding{Severity: f.Severity.String(), Kind: string(f.Kind), ID: f.ID, From: from, To: to, Service: crossService(f), Summary: f.Summary}
}

// WriteDeploymentHTML writes the deployment as one self-contained HTML
// file: nodes, cross-node findings, the role × role view (documented vs
// observed, coloured by the worst finding), and each node's findings.
func WriteDeploymentHTML(w io.Writer, r *DeploymentReport) error {
	v := depHTMLView{Title: "flowaudit: " + r.Title(), Tool: "flowaudit " + r.Tool.Version, Generated: r.Generated.UTC().Format(time.RFC3339),
		Deployment: r.Deployment, Window: fmtWindow(r.Start, r.End), Site: orDash(r.Site), MaxAge: r.MaxAge, Counts: r.Counts, Total: r.Total,
		Roles: r.Roles}
	for _, f := range r.Findings {
		v.Findings = append(v.Findings, depFinding(f))
	}
	for _, n := range r.Nodes {
		hn := depHTMLNode{NodeResult: n, Window: fmtWindow(n.Start, n.End), Counts: "-"}
		var addrs []string
		for _, a := range n.Addresses {
			addrs = append(addrs, a.String())
		}
		hn.Addrs = strings.Join(addrs, ", ")
		if n.Report != nil {
			hn.Counts = fmt.Sprintf("%d high, %d medium, %d low, %d info", n.Report.Counts["high"], n.Report.Counts["medium"], n.Report.Counts["low"], n.Report.Counts["info"])
			for _, f := range n.Report.Findings {
				if f.Severity >= Low {
					hn.Findings = append(hn.Findings, depHTMLFinding{Severity: f.Severity.String(), Kind: string(f.Kind), ID: f.ID, Service: crossService(f), Summary: f.Summary})
				}
			}
		}
		v.Nodes = append(v.Nodes, hn)
	}
	cells := map[string]RoleCell{}
	for _, c := range r.RoleView {
		cells[c.From+"\x00"+c.To] = c
	}
	for _, from := range r.Roles {
		var row []depHTMLCell
		for _, to := range r.Roles {
			c, ok := cells[from+"\x00"+to]
			hc := depHTMLCell{Empty: !ok, Documented: c.Documented, Observed: c.Observed, Findings: len(c.Findings), Worst: c.Worst}
			switch {
			case !ok:
				hc.Class = "none"
			case c.Worst != "":
				hc.Class = "sev-cell-" + c.Worst
			case len(c.Observed) > 0:
				hc.Class = "ok"
			default:
				hc.Class = "quiet"
			}
			row = append(row, hc)
		}
		v.Grid = append(v.Grid, row)
	}
	var buf bytes.Buffer
	if err := deploymentTemplate.Execute(&buf, v); err != nil {
		return fmt.Errorf("html report: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// writeDeploymentJUnit writes a <testsuites> with a "deployment" suite (one
// case per node, failing when its snapshot is missing, too old or outside
// the window, and one per cross-node finding) and each node's two suites,
// named after the node.
func writeDeploymentJUnit(w io.Writer, r *DeploymentReport) error {
	ts := r.Generated.UTC().Format("2006-01-02T15:04:05")
	pkg := r.Matrix.Product + ".deployment"
	dep := junitSuite{Name: "deployment " + r.Deployment, Package: pkg, Hostname: "deployment", Timestamp: ts, Time: "0"}
	byID := map[string]Finding{}
	for _, f := range r.Findings {
		byID[f.ID] = f
	}
	for _, n := range r.Nodes {
		c := junitCase{Name: "node " + n.Name, Classname: pkg + ".node", Time: "0"}
		if n.Status == NodeOK {
			c.SystemOut = fmt.Sprintf("role %s, snapshot %s, window %s", n.Role, n.Snapshot, fmtWindow(n.Start, n.End))
		}
		dep.Cases = append(dep.Cases, c)
	}
	for _, f := range r.Findings {
		c := junitCase{Name: f.ID, Classname: pkg + "." + string(f.Kind), Time: "0"}
		if f.Severity >= junitFailLevel {
			c.Failure = &junitFailure{Message: f.Summary, Type: string(f.Kind), Text: findingDetail(&f)}
		} else {
			c.SystemOut = f.Summary + "\n" + findingDetail(&f)
		}
		dep.Cases = append(dep.Cases, c)
	}
	dep.count()
	out := junitSuites{Name: "flowaudit: " + r.Title(), Time: "0", Suites: []junitSuite{dep}}
	id := 1
	for _, n := range r.Nodes {
		if n.Report == nil {
			continue
		}
		for _, s := range buildJUnit(n.Report).Suites {
			s.ID = id
			id++
			s.Name = n.Name + ": " + s.Name
			s.Hostname = n.Name
			out.Suites = append(out.Suites, s)
		}
	}
	for _, s := range out.Suites {
		out.Tests += s.Tests
		out.Failures += s.Failures
		out.Errors += s.Errors
		out.Skipped += s.Skipped
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// buildDeploymentSARIF is one run for the cross-node findings (results
// located at the deployment file's line of the sending node) and one run
// per audited node, each with its own automation ID.
func buildDeploymentSARIF(r *DeploymentReport, o RenderOptions) sarifLog {
	rules := make([]sarifReportingDescr, 0, len(CrossKinds))
	idx := map[Kind]int{}
	for i, k := range CrossKinds {
		idx[k] = i
		d := docOf(k)
		rules = append(rules, sarifReportingDescr{ID: string(k), Name: kindName(k), ShortDescription: sarifText{d.Short},
			FullDescription: sarifText{d.Help}, Help: sarifText{d.Help}, Properties: map[string]any{"tags": []string{"network", "deployment"}}})
	}
	uri := sarifURI(r.Deployment, o.CatalogRoot)
	results := make([]sarifResult, 0, len(r.Findings))
	for _, f := range r.Findings {
		line := 1
		props := map[string]any{"severity": f.Severity.String()}
		if f.Cross != nil {
			if f.Cross.Line > 0 {
				line = f.Cross.Line
			}
			props["from"], props["fromRole"] = f.Cross.From, f.Cross.FromRole
			if f.Cross.To != "" {
				props["to"], props["toRole"] = f.Cross.To, f.Cross.ToRole
				props["senderState"], props["receiverState"] = f.Cross.SenderState, f.Cross.ReceiverState
				props["senderPackets"], props["receiverPackets"] = f.Cross.SenderPackets, f.Cross.ReceiverPackets
			}
			if len(f.Cross.Rules) > 0 {
				props["matrixRules"] = f.Cross.Rules
			}
		}
		if f.Proto != "" {
			props["proto"], props["port"] = f.Proto, f.Port
		}
		results = append(results, sarifResult{RuleID: string(f.Kind), RuleIndex: idx[f.Kind], Level: sarifLevel(f.Severity),
			Message: sarifText{f.Summary},
			Locations: []sarifLocation{{PhysicalLocation: sarifPhysical{ArtifactLocation: sarifArtifact{URI: uri},
				Region: sarifRegion{StartLine: line}}}},
			PartialFingerprints: map[string]string{sarifFingerprint: f.ID}, Properties: props})
	}
	inv := sarifInvocation{ExecutionSuccessful: true, EndTimeUTC: r.Generated.UTC().Format(time.RFC3339)}
	log := sarifLog{Schema: sarifSchema, Version: sarifVersion, Runs: []sarifRun{{
		Tool:              sarifTool{Driver: sarifDriver{Name: "flowaudit", Version: r.Tool.Version, InformationURI: InformationURI, Rules: rules}},
		Invocations:       []sarifInvocation{inv},
		AutomationDetails: sarifAutomation{ID: fmt.Sprintf("flowaudit/%s@%s/deployment/", r.Matrix.Product, r.Matrix.Version)},
		Results:           results, ColumnKind: "unicodeCodePoints",
		Properties: map[string]any{"deployment": r.Deployment, "counts": r.Counts, "roleView": r.RoleView},
	}}}
	for _, n := range r.Nodes {
		if n.Report == nil {
			continue
		}
		run := buildSARIF(n.Report, o).Runs[0]
		run.AutomationDetails.ID = fmt.Sprintf("flowaudit/%s@%s/%s/%s/", r.Matrix.Product, r.Matrix.Version, n.Role, n.Name)
		run.Properties["node"] = n.Name
		log.Runs = append(log.Runs, run)
	}
	return log
}
