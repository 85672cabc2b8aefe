// Package textfit fits text and aligned tables to a terminal's width:
// prose is wrapped with a hanging indent, table cells of chosen columns
// are wrapped in their column. Nothing is cut: a word wider than its room
// breaks after a comma, dot, slash or hyphen, or else stays whole. Widths
// count runes, ANSI escape sequences left out.
package textfit

import (
	"strings"
	"unicode/utf8"
)

// Width is the number of columns s takes on a terminal.
func Width(s string) int {
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

// words splits s at spaces; a word wider than width is split further
// after its commas, dots, slashes and hyphens ("a,b,c" → "a," "b," "c"),
// the pieces glued back without a space when they share a line.
func words(s string, width int) (ws []string, glue []bool) {
	for _, w := range strings.Fields(s) {
		if Width(w) <= width {
			ws, glue = append(ws, w), append(glue, false)
			continue
		}
		start := 0
		for i := 0; i < len(w); i++ {
			if strings.IndexByte(",./-", w[i]) >= 0 && i+1 < len(w) && i > start {
				ws, glue = append(ws, w[start:i+1]), append(glue, start > 0)
				start = i + 1
			}
		}
		ws, glue = append(ws, w[start:]), append(glue, start > 0)
	}
	return ws, glue
}

// Wrap breaks s into lines of at most width columns, at spaces (and
// after commas inside a word wider than width).
func Wrap(s string, width int) []string {
	ws, glue := words(s, width)
	if len(ws) == 0 {
		return []string{""}
	}
	var lines []string
	cur, curW := ws[0], Width(ws[0])
	for i, w := range ws[1:] {
		sep := " "
		if glue[i+1] {
			sep = ""
		}
		ww := Width(w)
		if curW+len(sep)+ww > width {
			lines = append(lines, cur)
			cur, curW = w, ww
			continue
		}
		cur += sep + w
		curW += len(sep) + ww
	}
	return append(lines, cur)
}

// WrapLines wraps every line of text wider than width at spaces, its
// own spacing kept; continuation lines are indented two spaces more than
// the line. width 0 leaves text as it is.
func WrapLines(text string, width int) string {
	if width <= 0 {
		return text
	}
	var b strings.Builder
	for i, l := range strings.Split(text, "\n") {
		if i > 0 {
			b.WriteByte('\n')
		}
		indent := strings.Repeat(" ", len(l)-len(strings.TrimLeft(l, " "))+2)
		room := width
		for Width(l) > room {
			cut := cutAt(l, room)
			if cut <= 0 {
				break // one word wider than the room
			}
			b.WriteString(strings.TrimRight(l[:cut], " "))
			b.WriteString("\n" + indent)
			l = strings.TrimLeft(l[cut:], " ")
			room = width - len(indent)
		}
		b.WriteString(l)
	}
	return b.String()
}

// cutAt is the byte offset of the last space of s that leaves at most
// room columns before it (past leading spaces), or, when the first word
// is wider than room, of the first space after it; -1 when there is none.
func cutAt(s string, room int) int {
	last, col, inLead := -1, 0, true
	for i := 0; i < len(s); {
		if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = j + 1
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r != ' ' {
			inLead = false
		} else if !inLead {
			if col <= room {
				last = i
			} else if last < 0 {
				return i
			} else {
				return last
			}
		}
		col++
		i += size
	}
	return last
}

// Table aligns rows (the first is the header) in columns two spaces
// apart and, while wider than width, wraps the cells of the wrappable
// columns, narrowing the widest one at a time (so that they shrink
// together), until it fits or no column narrows further. A row
// whose cells wrap takes several lines. width 0: no limit.
func Table(rows [][]string, width int, wrappable []int) string {
	if len(rows) == 0 {
		return ""
	}
	n := 0
	for _, r := range rows {
		n = max(n, len(r))
	}
	w := make([]int, n)
	for _, r := range rows {
		for j, c := range r {
			w[j] = max(w[j], Width(c))
		}
	}
	total := func() int {
		t := 0
		for _, x := range w {
			t += x + 2
		}
		return t - 2
	}
	can := append([]int(nil), wrappable...)
	for width > 0 && total() > width && len(can) > 0 {
		k := 0
		for i, j := range can {
			if w[j] > w[can[k]] {
				k = i
			}
		}
		col := can[k]
		// Down to the next widest wrappable column at most, so that
		// the columns shrink together rather than one alone.
		second := 1
		for i, j := range can {
			if i != k {
				second = max(second, w[j])
			}
		}
		target := max(w[col]-(total()-width), second)
		if target >= w[col] {
			target = w[col] - 1
		}
		got := 0
		for _, r := range rows {
			if col < len(r) {
				for _, l := range Wrap(r[col], target) {
					got = max(got, Width(l))
				}
			}
		}
		if got >= w[col] {
			can = append(can[:k], can[k+1:]...) // its longest word is as wide
			continue
		}
		w[col] = got
	}
	var b strings.Builder
	for _, r := range rows {
		cells := make([][]string, len(r))
		height := 1
		for j, c := range r {
			cells[j] = []string{c}
			if Width(c) > w[j] {
				cells[j] = Wrap(c, w[j])
			}
			height = max(height, len(cells[j]))
		}
		for k := 0; k < height; k++ {
			var line strings.Builder
			for j := range r {
				part := ""
				if k < len(cells[j]) {
					part = cells[j][k]
				}
				line.WriteString(part)
				if j < len(r)-1 {
					line.WriteString(strings.Repeat(" ", w[j]-Width(part)+2))
				}
			}
			b.WriteString(strings.TrimRight(line.String(), " "))
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// Refit fits text written with text/tabwriter (two-space padding) to
// width: each table, a header line for which isHeader is true and the
// lines after it up to an empty line, is cut back into cells at the
// header's column positions and laid out again by Table, the columns
// named in wrappable wrapping; every other line wider than width is
// wrapped by WrapLines. width 0 leaves text as it is.
func Refit(text string, width int, isHeader func(line string) bool, wrappable ...string) string {
	if width <= 0 {
		return text
	}
	lines := strings.Split(text, "\n")
	var b strings.Builder
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !isHeader(l) {
			b.WriteString(WrapLines(l, width))
			if i < len(lines)-1 {
				b.WriteByte('\n')
			}
			continue
		}
		starts, names := columns(l)
		var wrap []int
		for j, name := range names {
			for _, w := range wrappable {
				if name == w {
					wrap = append(wrap, j)
				}
			}
		}
		j := i
		var rows [][]string
		for ; j < len(lines) && strings.TrimSpace(lines[j]) != ""; j++ {
			rows = append(rows, cells(lines[j], starts))
		}
		b.WriteString(Table(rows, width, wrap))
		if j >= len(lines) {
			// The table ended the text: Table's last newline is the text's.
			return strings.TrimSuffix(b.String(), "\n")
		}
		i = j - 1
	}
	return b.String()
}

// columns finds the header's column names and the rune offset each
// starts at (names are separated by two spaces or more).
func columns(header string) (starts []int, names []string) {
	rs := []rune(header)
	for i := 0; i < len(rs); {
		if rs[i] == ' ' {
			i++
			continue
		}
		j := i
		for j < len(rs) && !(rs[j] == ' ' && (j+1 >= len(rs) || rs[j+1] == ' ')) {
			j++
		}
		starts, names = append(starts, i), append(names, string(rs[i:j]))
		i = j
	}
	return starts, names
}

// cells cuts line at the rune offsets starts.
func cells(line string, starts []int) []string {
	rs := []rune(line)
	out := make([]string, len(starts))
	for k, s := range starts {
		if s >= len(rs) {
			continue
		}
		e := len(rs)
		if k+1 < len(starts) && starts[k+1] < e {
			e = starts[k+1]
		}
		out[k] = strings.TrimSpace(string(rs[s:e]))
	}
	return out
}
