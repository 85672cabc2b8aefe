package audit

import (
	"bytes"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/internal/textfit"
)

// TestTableWidth: fitted to a terminal, every line of the table is within
// the width, every explanation's words are all there in order, and colour
// does not change the layout.
func TestTableWidth(t *testing.T) {
	r := fixtureReport(t)
	full := string(render(t, r, "table"))
	for _, width := range []int{72, 80, 100, 120, 160} {
		for _, color := range []bool{false, true} {
			var b bytes.Buffer
			if err := Write(&b, r, "table", RenderOptions{Width: width, Color: color}); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for i, l := range strings.Split(out, "\n") {
				// Below 100 columns the columns that cannot wrap
				// (rule ids, kinds, services, statuses) are wider than
				// the terminal by themselves; the explanations under
				// their rows and the header lines fit.
				if textfit.Width(l) > width && (width >= 100 || explained.MatchString(l) || !strings.Contains(l, "  ")) {
					t.Errorf("width %d colour %v: line %d is %d columns: %q", width, color, i+1, textfit.Width(l), l)
				}
			}
			// Every word of the whole table is there (a wrapped cell puts
			// words of a row on the next line: compared as sorted lists).
			plain := stripANSI(out)
			got, want := strings.Fields(plain), strings.Fields(full)
			if !color && strings.Contains(plain, "(rule ids after ") {
				// Rule ids were shortened: compare without the shared prefix.
				p := plain[strings.Index(plain, "(rule ids after ")+len("(rule ids after "):]
				p = p[:strings.Index(p, ")")]
				want = strings.Fields(strings.ReplaceAll(full, p, ""))
				got = strings.Fields(strings.Replace(strings.ReplaceAll(plain, p, ""), " (rule ids after )", "", 1))
			}
			if !strings.Contains(plain, "EXPLANATION") {
				// Explanations under their rows: no column header.
				want = strings.Fields(strings.Replace(strings.Join(want, " "), "EXPLANATION", "", 1))
			}
			sort.Strings(got)
			sort.Strings(want)
			if !color && strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("width %d: the words differ from the unfitted table:\n%s\n%s", width, strings.Join(got, " "), strings.Join(want, " "))
			}
			if color && stripANSI(out) != func() string {
				var p bytes.Buffer
				Write(&p, r, "table", RenderOptions{Width: width})
				return p.String()
			}() {
				t.Errorf("width %d: colour changes the layout", width)
			}
		}
	}
	// Width 0 is today's table.
	var b bytes.Buffer
	if err := Write(&b, r, "table", RenderOptions{Width: 0}); err != nil {
		t.Fatal(err)
	}
	if b.String() != full {
		t.Error("width 0 changed the table")
	}
}

func TestTableWidthGolden(t *testing.T) {
	var b bytes.Buffer
	if err := Write(&b, fixtureReport(t), "table", RenderOptions{Width: 100}); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "report-w100.txt", b.Bytes())
}

// explained is an explanation line under its row.
var explained = regexp.MustCompile(`^    \S`)

func stripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = j
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
