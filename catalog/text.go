package catalog

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// RequirementString describes a rule's requirement with its condition:
// "required", "optional", "if vpn", "optional if !vpn".
func (r Rule) RequirementString() string {
	switch {
	case r.Condition == "":
		return r.Requirement.String()
	case r.Requirement == Conditional:
		return "if " + r.Condition
	}
	return r.Requirement.String() + " if " + r.Condition
}

// Flags lists the rule's flags: deprecated, configurable, site-port (a
// site file gave the port in use), supplementary (cited from outside the
// seed documents).
func (r Rule) Flags() []string {
	var f []string
	if r.Deprecated {
		f = append(f, "deprecated")
	}
	if r.Configurable {
		f = append(f, "configurable")
	}
	if r.DefaultPorts != nil {
		f = append(f, "site-port")
	}
	if r.Citation.Supplementary() {
		f = append(f, "supplementary")
	}
	return f
}

// ShortDoc abbreviates a seed file name to its number ("004"); other
// document IDs are returned as they are.
func ShortDoc(doc string) string {
	if i := strings.IndexByte(doc, '_'); i == 3 && strings.HasSuffix(doc, ".txt") {
		return doc[:3]
	}
	return doc
}

// WriteText writes the matrix as an aligned table. With notes, each rule's
// citation (quote and reading) follows the table.
func (m *Matrix) WriteText(w io.Writer, notes bool) error {
	conds := "none"
	if len(m.Conditions) > 0 {
		conds = strings.Join(m.Conditions, ", ")
	}
	fam := m.Family
	if m.Edition != "" {
		fam += ", edition " + m.Edition
	}
	fmt.Fprintf(w, "%s@%s  role %s  (family %s; conditions on: %s)\n", m.Product, m.Version, m.Role, fam, conds)
	if len(m.Rules) == 0 {
		_, err := fmt.Fprintln(w, "  (no rules)")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DIR\tPROTO\tPORTS\tPEER\tREQUIREMENT\tFLAGS\tID\tPURPOSE\tCITED")
	for _, r := range m.Rules {
		dir := "in"
		if r.Direction.String() == "outbound" {
			dir = "out"
		}
		flags := strings.Join(r.Flags(), ",")
		if flags == "" {
			flags = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s § %s\n",
			dir, r.ProtoString(), r.PortString(), r.Peer, r.RequirementString(), flags, r.ID, r.Purpose,
			ShortDoc(r.Citation.Doc), r.Citation.Section)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if notes {
		for _, r := range m.Rules {
			fmt.Fprintf(w, "\n%s  (%s)\n", r.ID, r.Source)
			writeCitation(w, "  ", r.Citation)
			for _, c := range r.SeeAlso {
				fmt.Fprintln(w, "  see also:")
				writeCitation(w, "    ", c)
			}
		}
	}
	return nil
}

func writeCitation(w io.Writer, indent string, c Citation) {
	src := ""
	if c.Supplementary() {
		src = " [supplementary: " + c.URL + "]"
	}
	fmt.Fprintf(w, "%s%s § %s%s\n", indent, c.Doc, c.Section, src)
	if c.Quote != "" {
		fmt.Fprintf(w, "%s  \"%s\"\n", indent, c.Quote)
	}
	if c.Note != "" {
		fmt.Fprintf(w, "%s  reading: %s\n", indent, c.Note)
	}
}
