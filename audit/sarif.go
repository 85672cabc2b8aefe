package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/flowaudit/flowaudit/catalog"
)

// SARIF output (docs/REPORTS.md): one run, one reportingDescriptor per
// finding kind, one result per finding. Every result points at the catalog
// file and line of its matrix rule; a finding without a rule points at
// line 1 of the matrix's catalog file.

const (
	sarifSchema  = "https://json.schemastore.org/sarif-2.1.0.json"
	sarifVersion = "2.1.0"
	// InformationURI is where flowaudit is documented.
	InformationURI = "https://github.com/flowaudit/flowaudit"
	// sarifFingerprint is the partialFingerprints key holding the finding ID.
	sarifFingerprint = "flowauditFindingId/v1"
)

type sarifLog struct {
	Schema  string     `json:"$schema"`
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool              sarifTool         `json:"tool"`
	Invocations       []sarifInvocation `json:"invocations"`
	AutomationDetails sarifAutomation   `json:"automationDetails"`
	Results           []sarifResult     `json:"results"`
	ColumnKind        string            `json:"columnKind"`
	Properties        map[string]any    `json:"properties"`
}

type sarifTool struct {
	Driver sarifDriver `json:"driver"`
}

type sarifDriver struct {
	Name           string                `json:"name"`
	Version        string                `json:"version,omitempty"`
	InformationURI string                `json:"informationUri"`
	Rules          []sarifReportingDescr `json:"rules"`
}

type sarifReportingDescr struct {
	ID               string         `json:"id"`
	Name             string         `json:"name"`
	ShortDescription sarifText      `json:"shortDescription"`
	FullDescription  sarifText      `json:"fullDescription"`
	Help             sarifText      `json:"help"`
	Properties       map[string]any `json:"properties"`
}

type sarifText struct {
	Text string `json:"text"`
}

type sarifInvocation struct {
	ExecutionSuccessful bool   `json:"executionSuccessful"`
	EndTimeUTC          string `json:"endTimeUtc,omitempty"`
}

type sarifAutomation struct {
	ID string `json:"id"`
}

type sarifResult struct {
	RuleID              string            `json:"ruleId"`
	RuleIndex           int               `json:"ruleIndex"`
	Level               string            `json:"level"`
	Message             sarifText         `json:"message"`
	Locations           []sarifLocation   `json:"locations"`
	PartialFingerprints map[string]string `json:"partialFingerprints"`
	Properties          map[string]any    `json:"properties"`
}

type sarifLocation struct {
	PhysicalLocation sarifPhysical `json:"physicalLocation"`
	Message          *sarifText    `json:"message,omitempty"`
}

type sarifPhysical struct {
	ArtifactLocation sarifArtifact `json:"artifactLocation"`
	Region           sarifRegion   `json:"region"`
}

type sarifArtifact struct {
	URI string `json:"uri"`
}

type sarifRegion struct {
	StartLine int `json:"startLine"`
}

// kindInfo documents a finding kind for SARIF rule descriptors and the
// HTML report.
type kindInfo struct {
	Short, Help string
}

var kindDocs = map[Kind]kindInfo{
	AuditIncomplete: {
		"The snapshot may not show all traffic or all peers, so findings may be missing.",
		"Each finding ID names one gap: peers-lost (packets counted per service without their peer because the kernel flow map was full: zone checks could not cover them), not-counted (packets not counted at all, flows evicted), folded (peers folded into prefixes to stay within the recorder's memory budget), zones-unchecked (folded prefixes straddle a zone's edge), interrupted (the recording stopped before its planned end), checkpoint (the recorder never finished), short-window, conn-full. Record again with a larger --max-flows, a larger budget or a longer window before relying on the absence of findings.",
	},
	UnexpectedOpenPort: {
		"An inbound port the matrix does not document answers peers or has a listening socket.",
		"Traffic to an undocumented inbound port was answered (SYN-ACK or reply packets), or a local socket listens on it on a non-loopback address. Close the service or firewall the port, or document it in a site-specific catalog if it is intended.",
	},
	PeerOutOfZone: {
		"A documented port is used by peers outside the zone the matrix allows.",
		"The port is in the matrix, but only for peers in a zone or role the site file binds; these peers are outside it. Restrict the firewall rule to the documented zone, or fix the site file if the peers belong in the zone.",
	},
	RequiredPortClosed: {
		"A port the matrix requires refused connections (RST or ICMP port unreachable).",
		"Peers that the deployment needs were refused on a required port: the service is not running or not listening on the expected address. Start the service or fix its bind address.",
	},
	RequiredPortFiltered: {
		"Connection attempts to a required port got no answer or an ICMP prohibited.",
		"Peers tried a required port and a firewall dropped or rejected the attempts. Open the port for the documented zone.",
	},
	UndocumentedFlow: {
		"Traffic the matrix does not document for this role.",
		"This host exchanged traffic on a service the vendor matrix does not list for the audited role (outbound connections, unanswered inbound attempts, ICMP echo, other protocols). Check whether it is needed; document it in a site-specific catalog or block it.",
	},
	UnverifiedFlow: {
		"Traffic only a broad documented port range covers, toward a peer the site does not bind.",
		"A rule documents a wide port range (1024 or more ports, e.g. \"high TCP ports\") toward a zone or role, and this traffic falls in the range, but the site file binds no address to that zone or role: nothing shows that the peer is the documented one, and almost any connection falls in such a range. Bind the zone or role in the site file (--site) so the peer can be checked, or find out what the traffic is.",
	},
	DeprecatedPort: {
		"Traffic on a port the vendor document says is no longer used in this release.",
		"The rule is listed for this release only as deprecated. Traffic on it points at a leftover configuration or an outdated peer; migrate it to the current port.",
	},
	ScanSuspected: {
		"One peer tried many undocumented or out-of-zone ports without an answer.",
		"A single peer reached at least the --scan-ports number of distinct undocumented or out-of-zone inbound ports and was refused or ignored: a port scan, reported once instead of once per port.",
	},
	FloodSuspected: {
		"One inbound service received a flood: very many distinct peers, or SYNs that never completed.",
		"At least --flood-peers distinct peers, or at least --flood-syns half-open SYNs arriving at --flood-rate per second or more, reached one inbound service within the window: a (spoofed-source) SYN or packet flood, reported once with its top source prefixes and rate. Its half-open attempts still count for the port's state but are left out of the per-peer findings and never make a required rule seen. Find the source upstream; rate-limit or enable SYN cookies.",
	},
	MissingRequired: {
		"A rule the matrix requires showed no traffic in the observation window.",
		"The document requires this traffic for the role, but none was seen with the documented peers. The peer may be down, misconfigured or blocked upstream, or the window was too short for rare traffic.",
	},
	OptionalInUse: {
		"An optional or conditional rule of the matrix was in use (informational).",
		"Documented traffic that a working deployment does not always show was seen. Nothing to fix; listed so the audit shows which optional features are active.",
	},
}

func docOf(k Kind) kindInfo {
	if d, ok := kindDocs[k]; ok {
		return d
	}
	return kindInfo{Short: string(k), Help: string(k)}
}

// sarifLevel maps a severity to a SARIF result level.
func sarifLevel(s Severity) string {
	switch s {
	case High:
		return "error"
	case Medium:
		return "warning"
	}
	return "note"
}

// WriteSARIF writes r as a SARIF 2.1.0 log. o.CatalogRoot, if not empty,
// is the directory (the repository the log is uploaded for) file paths are
// made relative to; o.CatalogFiles are the user's catalog files. Results
// point at files of the user's repository (docs/REPORTS.md, Locations):
// the user's catalog file of a rule, else the site file (at the line that
// binds the rule's peer), else a user catalog file, else the documented
// placeholder SARIFPlaceholder; never at the built-in catalog, which is not
// in the user's repository.
func WriteSARIF(w io.Writer, r *Report, o RenderOptions) error {
	log := buildSARIF(r, o)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(log)
}

func buildSARIF(r *Report, o RenderOptions) sarifLog {
	kindIndex := map[Kind]int{}
	rules := make([]sarifReportingDescr, 0, len(Kinds))
	for i, k := range Kinds {
		kindIndex[k] = i
		d := docOf(k)
		rules = append(rules, sarifReportingDescr{
			ID: string(k), Name: kindName(k),
			ShortDescription: sarifText{d.Short}, FullDescription: sarifText{d.Help}, Help: sarifText{d.Help},
			Properties: map[string]any{"tags": []string{"network", "port-matrix"}},
		})
	}

	results := make([]sarifResult, 0, len(r.Findings))
	for _, f := range r.Findings {
		idx, ok := kindIndex[f.Kind]
		if !ok {
			idx = -1 // a kind this build does not describe; ruleId still names it
		}
		loc := findingLocation(r, &f, o)
		props := map[string]any{
			"severity":  f.Severity.String(),
			"direction": f.Direction.String(),
			"packets":   f.Evidence.Packets,
			"bytes":     f.Evidence.Bytes,
			"peers":     f.Evidence.Peers,
		}
		if f.Proto != "" {
			props["proto"] = f.Proto
		}
		if f.Port != "" {
			props["port"] = f.Port
		}
		if len(f.Evidence.TopPeers) > 0 {
			top := make([]string, len(f.Evidence.TopPeers))
			for i, p := range f.Evidence.TopPeers {
				top[i] = peerName(p)
			}
			props["topPeers"] = top
		}
		if f.Evidence.PeersEstimated {
			props["peersEstimated"] = true
		}
		if f.Evidence.PeersUnknownPackets > 0 {
			props["peersUnknownPackets"] = f.Evidence.PeersUnknownPackets
			props["peersUnknown"] = f.Evidence.PeersUnknown
		}
		if f.Evidence.FloodPackets > 0 {
			props["floodPackets"] = f.Evidence.FloodPackets
		}
		if len(f.Evidence.Services) > 0 {
			svcs := make([]string, len(f.Evidence.Services))
			for i, s := range f.Evidence.Services {
				svcs[i] = serviceList([]ServiceCount{s}, 1)
			}
			props["services"] = svcs
		}
		if fl := f.Evidence.Flood; fl != nil {
			props["flood"] = map[string]any{
				"trigger": fl.Trigger, "peers": fl.Peers, "halfOpenSyns": fl.HalfOpenSYNs,
				"start": fl.Start.UTC().Format(time.RFC3339), "end": fl.End.UTC().Format(time.RFC3339), "span": fl.Span,
				"rate": fl.Rate, "rateOf": fl.RateOf,
			}
		}
		if in := f.Evidence.Interrupted; in != nil {
			props["interrupted"] = in.Signal
		}
		if len(f.Evidence.Ports) > 0 {
			props["ports"] = f.Evidence.Ports
		}
		if !f.Evidence.FirstSeen.IsZero() {
			props["firstSeen"] = f.Evidence.FirstSeen.UTC().Format(time.RFC3339)
		}
		if !f.Evidence.LastSeen.IsZero() {
			props["lastSeen"] = f.Evidence.LastSeen.UTC().Format(time.RFC3339)
		}
		if f.Evidence.Listening {
			props["listening"] = true
		}
		if f.Evidence.DirectionInferred {
			props["directionInferred"] = true
		}
		if f.Rule != nil {
			props["matrixRule"] = f.Rule.ID
			if f.Rule.Source.File != "" {
				props["catalogSource"] = f.Rule.Source.String()
			}
		}
		if len(f.AlsoRules) > 0 {
			props["alsoMatrixRules"] = f.AlsoRules
		}
		results = append(results, sarifResult{
			RuleID: string(f.Kind), RuleIndex: idx, Level: sarifLevel(f.Severity),
			Message:             sarifText{f.Summary},
			Locations:           []sarifLocation{loc},
			PartialFingerprints: map[string]string{sarifFingerprint: f.ID},
			Properties:          props,
		})
	}

	ifaces := make([]string, 0, len(r.Snapshot.Interfaces))
	for _, i := range r.Snapshot.Interfaces {
		ifaces = append(ifaces, i.Name)
	}
	conds := r.Matrix.Conditions
	if conds == nil {
		conds = []string{}
	}
	runProps := map[string]any{
		"matrix": map[string]any{
			"product": r.Matrix.Product, "version": r.Matrix.Version, "role": r.Matrix.Role,
			"conditions": conds, "rules": r.Matrix.Rules,
		},
		"snapshot": map[string]any{
			"source": r.Snapshot.Source, "hostname": r.Snapshot.Hostname, "interfaces": ifaces,
			"start": r.Snapshot.Start.UTC().Format(time.RFC3339), "end": r.Snapshot.End.UTC().Format(time.RFC3339),
			"window": r.Snapshot.Window, "flows": r.Snapshot.Flows, "incomplete": !r.Coverage.Complete,
		},
		"coverage": sarifCoverage(&r.Coverage),
		"counts":   r.Counts,
	}
	if r.Site != "" {
		runProps["site"] = r.Site
	}
	inv := sarifInvocation{ExecutionSuccessful: true}
	if !r.Generated.IsZero() {
		inv.EndTimeUTC = r.Generated.UTC().Format(time.RFC3339)
	}
	name := r.Tool.Name
	if name == "" {
		name = "flowaudit"
	}
	return sarifLog{
		Schema: sarifSchema, Version: sarifVersion,
		Runs: []sarifRun{{
			Tool: sarifTool{Driver: sarifDriver{
				Name: name, Version: r.Tool.Version, InformationURI: InformationURI, Rules: rules,
			}},
			Invocations: []sarifInvocation{inv},
			// The category code scanning keeps results apart by: one per
			// audited matrix.
			AutomationDetails: sarifAutomation{ID: fmt.Sprintf("flowaudit/%s@%s/%s/", r.Matrix.Product, r.Matrix.Version, r.Matrix.Role)},
			Results:           results,
			ColumnKind:        "unicodeCodePoints",
			Properties:        runProps,
		}},
	}
}

// sarifCoverage is the report's coverage as run properties.
func sarifCoverage(c *Coverage) map[string]any {
	lines := c.Lines()
	if lines == nil {
		lines = []string{}
	}
	m := map[string]any{
		"complete": c.Complete, "peerlessPackets": c.PeerlessPackets, "lostPackets": c.LostPackets,
		"evictedFlows": c.EvictedFlows, "foldedFlows": c.FoldedFlows, "checkpoint": c.Checkpoint, "gaps": lines,
	}
	if c.Stopped != "" {
		m["stopped"] = c.Stopped
	}
	return m
}

// kindName turns "unexpected-open-port" into "UnexpectedOpenPort", the
// reportingDescriptor name.
func kindName(k Kind) string {
	var b strings.Builder
	for _, part := range strings.Split(string(k), "-") {
		if part == "" {
			continue
		}
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}

// SARIFPlaceholder is the artifact results point at when the audit names
// no file of the user's repository (built-in matrix, no site file, no
// catalog file): "flowaudit-matrix/PRODUCT@VERSION/ROLE", line 1. Code
// scanning shows the results under that path, one per audited matrix;
// no such file needs to exist (docs/REPORTS.md).
const SARIFPlaceholder = "flowaudit-matrix/%s@%s/%s"

// builtinFile reports whether file is one of the embedded catalog files.
func builtinFile(file string) bool { return builtinCatalogFiles()[file] }

// findingLocation is where a finding's result points, in this order:
//
//   - a rule from a user's catalog file: that file, at the rule;
//   - a finding without a rule of a matrix from a user's catalog file:
//     that file, line 1;
//   - a rule of the built-in catalog, with a site file: the site file, at
//     the line binding the rule's peer (line 1 when it binds none);
//   - a finding without a rule: the first user catalog file given, line 1,
//     where the traffic would be documented; else the site file, line 1;
//   - a rule of the built-in catalog without a site: the first user
//     catalog file, line 1;
//   - otherwise the placeholder (SARIFPlaceholder), line 1.
//
// The message names the matrix rule and its built-in source.
func findingLocation(r *Report, f *Finding, o RenderOptions) sarifLocation {
	at := func(file string, line int, msg string) sarifLocation {
		return sarifLocation{PhysicalLocation: sarifPhysical{
			ArtifactLocation: sarifArtifact{URI: sarifURI(file, o.CatalogRoot)},
			Region:           sarifRegion{StartLine: max(1, line)},
		}, Message: &sarifText{msg}}
	}
	var userCatalog string
	if len(o.CatalogFiles) > 0 {
		userCatalog = o.CatalogFiles[0]
	}
	placeholder := fmt.Sprintf(SARIFPlaceholder, r.Matrix.Product, r.Matrix.Version, r.Matrix.Role)
	if rr := f.Rule; rr != nil {
		msg := ruleLocationText(rr)
		switch {
		case rr.Source.File != "" && !builtinFile(rr.Source.File):
			return at(rr.Source.File, rr.Source.Line, msg)
		case r.Site != "":
			if l := r.SiteLines[rr.Peer]; l > 0 {
				return at(r.Site, l, msg+"; "+rr.Peer+" is bound here")
			}
			return at(r.Site, 1, msg+"; this site file does not bind "+rr.Peer)
		case userCatalog != "":
			return at(userCatalog, 1, msg)
		}
		return at(placeholder, 1, msg+"; no site file or catalog file of yours was given (placeholder location)")
	}
	msg := fmt.Sprintf("no rule of the %s %s matrix for role %s documents this", r.Matrix.ProductName, r.Matrix.Version, r.Matrix.Role)
	if file := matrixFile(r); file != "" && !builtinFile(file) {
		return at(file, 1, msg)
	}
	switch {
	case userCatalog != "":
		return at(userCatalog, 1, msg)
	case r.Site != "":
		return at(r.Site, 1, msg)
	}
	return at(placeholder, 1, msg+"; no site file or catalog file of yours was given (placeholder location)")
}

// matrixFile is the catalog file of the matrix, found as the file of its
// first rule (a matrix comes from one product family, one file); empty
// when the matrix has no rules.
func matrixFile(r *Report) string {
	for _, rs := range r.Rules {
		if rs.Rule.Source.File != "" {
			return rs.Rule.Source.File
		}
	}
	return ""
}

func ruleLocationText(rr *RuleRef) string {
	s := "matrix rule " + rr.ID
	if rr.Source.File != "" && builtinFile(rr.Source.File) {
		s += " (built-in catalog, " + rr.Source.String() + ")"
	}
	if c := citationText(rr.Citation); c != "" {
		s += ", cited from " + c
	}
	return s
}

// citationText is "doc § section".
func citationText(c catalog.Citation) string {
	switch {
	case c.Doc == "":
		return ""
	case c.Section == "":
		return c.Doc
	}
	return c.Doc + " § " + c.Section
}

var builtinCatalogFiles = sync.OnceValue(func() map[string]bool {
	out := map[string]bool{}
	for name := range catalog.BuiltinFiles() {
		out[name] = true
	}
	return out
})

// sarifURI maps a catalog source file to an artifact URI:
//
//   - built-in catalog files keep their repository path
//     ("catalog/data/utmstack-v11.yaml");
//   - with a root, other files are made relative to it when they are
//     inside it;
//   - relative paths stay relative (forward slashes, percent-encoded);
//   - an absolute path that cannot be made relative becomes a file:// URI.
func sarifURI(file, root string) string {
	if builtinCatalogFiles()[file] {
		return escapePath(file)
	}
	p := file
	if root != "" {
		absRoot, err1 := filepath.Abs(root)
		absFile, err2 := filepath.Abs(file)
		if err1 == nil && err2 == nil {
			rel, err := filepath.Rel(absRoot, absFile)
			if err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				p = rel
			} else {
				p = absFile
			}
		}
	}
	p = filepath.Clean(p)
	if filepath.IsAbs(p) {
		u := url.URL{Scheme: "file", Path: filepath.ToSlash(p)}
		return u.String()
	}
	return escapePath(filepath.ToSlash(p))
}

// escapePath percent-encodes a relative slash path as a URI reference.
func escapePath(p string) string {
	u := url.URL{Path: p}
	return u.String()
}
