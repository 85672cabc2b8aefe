package audit

import (
	"fmt"
	"strings"
	"unicode/utf8"
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

// visibleWidth is the number of columns s takes on a terminal: its runes,
// ANSI escape sequences left out.
func visibleWidth(s string) int {
	n := 0
	for i := 0; i < len(s); {
		if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = j + 1
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
		n++
	}
	return n
}

// wrapText breaks s at spaces into lines of at most width columns (a
// longer word gets a line of its own).
func wrapText(s string, width int) []string {
	words := strings.Fields(s)
	if len(words) == 0 {
		return []string{""}
	}
	var lines []string
	cur, curW := words[0], visibleWidth(words[0])
	for _, w := range words[1:] {
		ww := visibleWidth(w)
		if curW+1+ww > width {
			lines = append(lines, cur)
			cur, curW = w, ww
			continue
		}
		cur += " " + w
		curW += 1 + ww
	}
	return append(lines, cur)
}

// wrapLines wraps every line of text longer than width, continuation
// lines indented by two spaces. width 0 leaves text as it is.
func wrapLines(text string, width int) string {
	if width <= 0 {
		return text
	}
	var b strings.Builder
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if i > 0 {
			b.WriteByte('\n')
		}
		if visibleWidth(l) <= width {
			b.WriteString(l)
			continue
		}
		for j, part := range wrapText(l, width-2) {
			if j > 0 {
				b.WriteString("\n  ")
			}
			b.WriteString(part)
		}
	}
	return b.String()
}

// pad writes cell and spaces up to width columns, then the two-space gap.
func pad(b *strings.Builder, cell string, width int) {
	b.WriteString(cell)
	b.WriteString(strings.Repeat(" ", width-visibleWidth(cell)+2))
}

// writeFindingsWidth writes the findings table fitted to width columns.
func writeFindingsWidth(b *strings.Builder, r *Report, c func(code, s string) string, width int) {
	head := []string{"SEVERITY", "KIND", "DIR", "SERVICE", "PEERS", "PACKETS"}
	rows := make([][]string, len(r.Findings))
	colW := make([]int, len(head))
	for i, h := range head {
		colW[i] = visibleWidth(h)
	}
	for i, f := range r.Findings {
		svc := "-"
		if f.Proto != "" {
			svc = f.Proto + "/" + f.Port
		}
		rows[i] = []string{c(sevColor(f.Severity), f.Severity.String()), string(f.Kind), dirShort(f.Direction.String()),
			svc, peersCell(f), fmt.Sprint(f.Evidence.Packets)}
		for j, cell := range rows[i] {
			colW[j] = max(colW[j], visibleWidth(cell))
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
			for _, l := range wrapText(f.Summary, max(width-len(explainIndent), minExplainWidth)) {
				b.WriteString(explainIndent + l + "\n")
			}
			continue
		}
		line(rows[i], true)
		for j, l := range wrapText(f.Summary, width-prefix) {
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
// dotted prefix they all share (said above the table), then the PEER and
// OUT OF ZONE cells (and headers) are wrapped, the wider column first, down
// to their longest word.
func writeMatrixWidth(b *strings.Builder, rows [][]string, c func(code, s string) string, width int) {
	colW := func() []int {
		w := make([]int, len(rows[0]))
		for _, row := range rows {
			for j, cell := range row {
				w[j] = max(w[j], visibleWidth(cell))
			}
		}
		return w
	}
	total := func(w []int) int {
		n := 0
		for _, x := range w {
			n += x + 2
		}
		return n - 2
	}
	title := "documented matrix vs observed"
	w := colW()
	if total(w) > width && len(rows) > 2 {
		if p := commonIDPrefix(rows[1:]); p != "" {
			for _, row := range rows[1:] {
				row[0] = strings.TrimPrefix(row[0], p)
			}
			title += " (rule ids after " + p + ")"
			w = colW()
		}
	}
	// Shrink the wrappable columns (PEER, OUT OF ZONE), one column at a
	// time, to what wrapping its cells really gives.
	wrappable := []int{3, len(w) - 1}
	for total(w) > width {
		col := -1
		for _, j := range wrappable {
			if col < 0 || w[j] > w[col] {
				col = j
			}
		}
		if col < 0 {
			break // as narrow as it gets
		}
		target := max(w[col]-(total(w)-width), 1)
		got := 0
		for _, row := range rows {
			for _, l := range wrapText(row[col], target) {
				got = max(got, visibleWidth(l))
			}
		}
		if got >= w[col] {
			wrappable = slicesDelete(wrappable, col) // a word as wide as the column
			continue
		}
		w[col] = got
	}
	fmt.Fprintln(b, wrapLines(c(ansiBold, title), width))
	last := len(w) - 1
	for _, row := range rows {
		cells := make([][]string, len(row))
		height := 1
		for j, cell := range row {
			cells[j] = []string{cell}
			if visibleWidth(cell) > w[j] {
				cells[j] = wrapText(cell, w[j])
			}
			height = max(height, len(cells[j]))
		}
		for k := 0; k < height; k++ {
			var line strings.Builder
			for j := range row {
				part := ""
				if k < len(cells[j]) {
					part = cells[j][k]
				}
				if j == last {
					line.WriteString(part)
				} else {
					pad(&line, part, w[j])
				}
			}
			b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
		}
	}
}

func slicesDelete(s []int, v int) []int {
	out := s[:0:0]
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
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
