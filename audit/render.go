package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/flowaudit/flowaudit/internal/textfit"
)

// Formats a report can be written in.
var Formats = []string{"table", "json", "html", "junit", "sarif"}

// RenderOptions tune the human formats.
type RenderOptions struct {
	// Color enables ANSI colour in the table (only on a terminal).
	Color bool
	// CatalogRoot is the directory SARIF paths are made relative to (the
	// repository the SARIF log is uploaded for; flowaudit audit passes its
	// working directory).
	CatalogRoot string
	// CatalogFiles are the user's catalog files (--catalog): SARIF results
	// that no other file of the user's locates point at the first.
	CatalogFiles []string
	// Width fits the table to this many columns (a terminal's width):
	// explanations and header lines are wrapped, never cut (the JSON and
	// HTML reports have them whole). 0: no limit, one line per finding.
	Width int
}

// Write renders r in format.
func Write(w io.Writer, r *Report, format string, o RenderOptions) error {
	switch format {
	case "table":
		return writeTable(w, r, o.Color, o.Width)
	case "json":
		return WriteJSON(w, r)
	case "html":
		return WriteHTML(w, r)
	case "junit":
		return WriteJUnit(w, r)
	case "sarif":
		return WriteSARIF(w, r, o)
	}
	return fmt.Errorf("unknown report format %q (want %s)", format, strings.Join(Formats, ", "))
}

// WriteJSON writes the versioned JSON report.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

const (
	ansiReset  = "\x1b[0m"
	ansiBold   = "\x1b[1m"
	ansiRed    = "\x1b[31m"
	ansiYellow = "\x1b[33m"
	ansiCyan   = "\x1b[36m"
	ansiGrey   = "\x1b[90m"
)

func sevColor(s Severity) string {
	switch s {
	case High:
		return ansiBold + ansiRed
	case Medium:
		return ansiYellow
	case Low:
		return ansiCyan
	}
	return ansiGrey
}

// noSiteText says what an audit without a site file could not check.
const noSiteText = "zones and roles are bound to no address, so no peer was checked against its zone (give --site)"

// WriteTable writes the terminal report: header, findings, then the
// documented matrix with what was observed per rule.
func WriteTable(w io.Writer, r *Report, color bool) error { return writeTable(w, r, color, 0) }

// writeTable is WriteTable fitted to width columns (0: no limit).
func writeTable(w io.Writer, r *Report, color bool, width int) error {
	c := func(code, s string) string {
		if !color {
			return s
		}
		return code + s + ansiReset
	}
	var b strings.Builder
	var head strings.Builder
	fmt.Fprintf(&head, "%s\n", c(ansiBold, "flowaudit: "+r.Title()))
	ifaces := make([]string, 0, len(r.Snapshot.Interfaces))
	for _, i := range r.Snapshot.Interfaces {
		ifaces = append(ifaces, i.Name)
	}
	fmt.Fprintf(&head, "snapshot: %s on %s [%s], window %s (%s – %s), %d flows\n",
		r.Snapshot.Source, orDash(r.Snapshot.Hostname), strings.Join(ifaces, ","), r.Snapshot.Window,
		r.Snapshot.Start.Format("2006-01-02 15:04:05Z07:00"), r.Snapshot.End.Format("15:04:05Z07:00"), r.Snapshot.Flows)
	fmt.Fprintln(&head, mapLine(r, c))
	if d := r.Snapshot.DNS; d != nil {
		fmt.Fprintln(&head, d.Line())
	}
	for _, l := range r.Coverage.Lines() {
		fmt.Fprintln(&head, l)
	}
	if r.Site != "" {
		fmt.Fprintf(&head, "site: %s\n", r.Site)
	} else {
		fmt.Fprintln(&head, c(ansiBold+ansiYellow, "site: NONE: "+noSiteText))
	}
	fmt.Fprintf(&head, "findings: %d high, %d medium, %d low, %d info\n\n",
		r.Counts["high"], r.Counts["medium"], r.Counts["low"], r.Counts["info"])

	b.WriteString(textfit.WrapLines(head.String(), width))

	if len(r.Findings) > 0 && width > 0 {
		writeFindingsWidth(&b, r, c, width)
	} else if len(r.Findings) > 0 {
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SEVERITY\tKIND\tDIR\tSERVICE\tPEERS\tPACKETS\tEXPLANATION")
		for _, f := range r.Findings {
			svc := "-"
			if f.Proto != "" {
				svc = f.Proto + "/" + f.Port
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", c(sevColor(f.Severity), f.Severity.String()), f.Kind, dirShort(f.Direction.String()),
				svc, peersCell(f), f.Evidence.Packets, f.Summary)
		}
		tw.Flush()
		fmt.Fprintln(&b)
	}

	matrix := [][]string{{"RULE", "DIR", "SERVICE", "PEER", "REQ", "STATUS", "PEERS", "PACKETS", "OUT OF ZONE"}}
	for _, rs := range r.Rules {
		req := rs.Rule.Requirement.String()
		if rs.Rule.Condition != "" {
			req += "(" + rs.Rule.Condition + ")"
		}
		status := rs.Status
		switch {
		case failingStatus(rs):
			status = c(ansiRed, status)
		case status == StatusPeersUnknown:
			status = c(ansiYellow, status)
		case status == StatusNotSeen, status == StatusClosed, status == StatusFiltered:
			status = c(ansiGrey, status)
		}
		// PEERS and PACKETS are the peers the rule allows (or may: unverified,
		// unknown); peers outside its zone are counted apart.
		packets := fmt.Sprint(rs.Allowed.Packets)
		if rs.Allowed.FloodPackets > 0 {
			packets += fmt.Sprintf(" (+%d flood)", rs.Allowed.FloodPackets)
		}
		outside := "-"
		if oz := rs.OutOfZone; oz != nil {
			outside = c(ansiRed, fmt.Sprintf("%s peers, %d packets", peersNum(*oz), oz.Packets))
			if oz.Peers == 1 && !oz.PeersEstimated && oz.PeersUnknownPackets == 0 {
				outside = c(ansiRed, fmt.Sprintf("1 peer, %d packets", oz.Packets))
			}
		}
		matrix = append(matrix, []string{rs.Rule.ID, dirShort(rs.Rule.Direction.String()), rs.Rule.Proto + "/" + rs.Rule.Ports,
			rs.Rule.Peer, req, status, peersNum(rs.Allowed), packets, outside})
	}
	if width > 0 {
		writeMatrixWidth(&b, matrix, c, width)
	} else {
		fmt.Fprintln(&b, c(ansiBold, "documented matrix vs observed"))
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, row := range matrix {
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		tw.Flush()
	}
	if r.Infrastructure.Packets > 0 || r.Unclassified.Packets > 0 {
		b.WriteString(textfit.WrapLines(fmt.Sprintf("\nnot audited: %d packets of ICMP errors / neighbour discovery, %d packets of IP fragments\n",
			r.Infrastructure.Packets, r.Unclassified.Packets), width))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dirShort(d string) string {
	switch d {
	case "inbound":
		return "in"
	case "outbound":
		return "out"
	}
	return "?"
}

// mapLine is the table's counter line: the kernel map's fill, packets
// that lost their peer, packets not counted, evictions and folding.
func mapLine(r *Report, c func(code, s string) string) string {
	st := r.Snapshot.Stats
	cov := &r.Coverage
	line := fmt.Sprintf("map: %d/%d entries, %d packets counted without peer, %d not counted, %d flows evicted",
		st.FlowEntries, st.FlowCapacity, cov.PeerlessPackets, cov.LostPackets, cov.EvictedFlows)
	if cov.FoldedFlows > 0 || cov.FlowBudget > 0 {
		line += fmt.Sprintf(", %d folded (budget %d)", cov.FoldedFlows, cov.FlowBudget)
	}
	switch {
	case cov.Lossy():
		return c(ansiBold+ansiRed, line+"  INCOMPLETE")
	case !cov.Complete:
		return c(ansiYellow, line+"  PARTIAL")
	}
	return line
}

// peerName is a peer or prefix for a table cell.
func peerName(p PeerCount) string {
	if p.Prefix.IsValid() {
		return prefixName(p.Prefix)
	}
	return p.Addr.String() + namesSuffix(p.Names)
}

// listed is how many peers a list of peer counts names.
func listed(ps []PeerCount) int {
	n := 0
	for _, p := range ps {
		if p.Prefix.IsValid() {
			n += int(p.Peers)
		} else {
			n++
		}
	}
	return n
}

// peersCell shows up to three top peers (or prefixes) and how many more
// there are; "?" stands for peers that are unknown.
func peersCell(f Finding) string {
	ev := f.Evidence
	if ev.Peers == 0 && ev.PeersUnknownPackets == 0 {
		return "-"
	}
	var s []string
	top := ev.TopPeers
	if len(top) > 3 {
		top = top[:3]
	}
	for _, p := range top {
		s = append(s, peerName(p))
	}
	out := strings.Join(s, ",")
	if n := ev.Peers - listed(top); n > 0 {
		approx := ""
		if ev.PeersEstimated {
			approx = "~"
		}
		out += fmt.Sprintf(" +%s%d", approx, n)
	}
	if ev.PeersUnknownPackets > 0 {
		out = strings.TrimSpace(out + " +?")
	}
	return out
}

// peersNum is a peer count for a table cell: "3", "~420", "3+?" when
// some traffic's peers are unknown.
func peersNum(ev Evidence) string {
	s := fmt.Sprint(ev.Peers)
	if ev.PeersEstimated {
		s = "~" + s
	}
	if ev.PeersUnknownPackets > 0 {
		s += "+?"
	}
	return s
}
