package audit

import (
	"fmt"
	"strings"

	"github.com/flowaudit/flowaudit/internal/textfit"
)

// The table fitted to a terminal (RenderOptions.Width): the findings'
// explanations are wrapped in their column, or under their row when the
// other columns leave too little room; header lines are wrapped with a
// hanging indent. Nothing is cut: a word longer than the room stays whole.

// minExplainWidth is the narrowest explanation column; below it the
// explanation goes under its row.
const minExplainWidth = 30

// explainIndent indents an explanation written under its row.
const explainIndent = "    "

// pad writes cell and spaces up to width columns, then the two-space gap.
func pad(b *strings.Builder, cell string, width int) {
	b.WriteString(cell)
	b.WriteString(strings.Repeat(" ", width-textfit.Width(cell)+2))
}

// writeFindingsWidth writes the findings table fitted to width columns.
func writeFindingsWidth(b *strings.Builder, r *Report, c func(code, s string) string, width int) {
	head := []string{"SEVERITY", "KIND", "DIR", "SERVICE", "PEERS", "PACKETS"}
	rows := make([][]string, len(r.Findings))
	colW := make([]int, len(head))
	for i, h := range head {
		colW[i] = textfit.Width(h)
	}
	for i, f := range r.Findings {
		svc := "-"
		if f.Proto != "" {
			svc = f.Proto + "/" + f.Port
		}
		rows[i] = []string{c(sevColor(f.Severity), f.Severity.String()), string(f.Kind), dirShort(f.Direction.String()),
			svc, peersCell(f), fmt.Sprint(f.Evidence.Packets)}
		for j, cell := range rows[i] {
			colW[j] = max(colW[j], textfit.Width(cell))
		}
	}
	prefix := 0
	for _, w := range colW {
		prefix += w + 2
	}
	inColumn := width-prefix >= minExplainWidth
	line := func(cells []string, last bool) {
		for j, cell := range cells {
			if j == len(cells)-1 && !last {
				b.WriteString(cell) // no trailing spaces
				break
			}
			pad(b, cell, colW[j])
		}
	}
	if inColumn {
		line(head, true)
		b.WriteString("EXPLANATION\n")
	} else {
		line(head, false)
		b.WriteString("\n")
	}
	for i, f := range r.Findings {
		if !inColumn {
			line(rows[i], false)
			b.WriteString("\n")
			for _, l := range textfit.Wrap(f.Summary, max(width-len(explainIndent), minExplainWidth)) {
				b.WriteString(explainIndent + l + "\n")
			}
			continue
		}
		line(rows[i], true)
		for j, l := range textfit.Wrap(f.Summary, width-prefix) {
			if j > 0 {
				b.WriteString(strings.Repeat(" ", prefix))
			}
			b.WriteString(l + "\n")
		}
	}
	b.WriteString("\n")
}

// writeMatrixWidth writes the matrix table (a header row, then the rules)
// fitted to width columns: when it is too wide, the rule ids lose the
// dotted prefix they all share (said in the title), then the PEER and
// OUT OF ZONE cells (and headers) wrap, the wider column first, down to
// their longest word.
func writeMatrixWidth(b *strings.Builder, rows [][]string, c func(code, s string) string, width int) {
	title := "documented matrix vs observed"
	if tableWidth(rows) > width && len(rows) > 2 {
		if p := commonIDPrefix(rows[1:]); p != "" {
			for _, row := range rows[1:] {
				row[0] = strings.TrimPrefix(row[0], p)
			}
			title += " (rule ids after " + p + ")"
		}
	}
	fmt.Fprintln(b, textfit.WrapLines(c(ansiBold, title), width))
	b.WriteString(textfit.Table(rows, width, []int{3, len(rows[0]) - 1}))
}

// tableWidth is the width of rows aligned two spaces apart.
func tableWidth(rows [][]string) int {
	w := 0
	for _, l := range strings.Split(textfit.Table(rows, 0, nil), "\n") {
		w = max(w, textfit.Width(l))
	}
	return w
}

// commonIDPrefix is the longest prefix ending in a dot that every rule id
// (the first cell of each row) shares, as long as every id keeps a
// non-empty rest.
func commonIDPrefix(rows [][]string) string {
	p := rows[0][0]
	for _, row := range rows[1:] {
		for !strings.HasPrefix(row[0], p) {
			p = p[:len(p)-1]
		}
	}
	i := strings.LastIndexByte(p, '.')
	if i < 0 {
		return ""
	}
	p = p[:i+1]
	for _, row := range rows {
		if len(row[0]) == len(p) {
			return ""
		}
	}
	return p
}
