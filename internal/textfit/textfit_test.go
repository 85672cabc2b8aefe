package textfit

import (
	"strings"
	"testing"
)

func TestWrap(t *testing.T) {
	for _, tc := range []struct {
		in    string
		width int
		want  []string
	}{
		{"a bb ccc dddd", 6, []string{"a bb", "ccc", "dddd"}},
		{"averyveryverylongword x", 5, []string{"averyveryverylongword", "x"}},
		{"", 5, []string{""}},
		{"\x1b[31mred\x1b[0m words here", 9, []string{"\x1b[31mred\x1b[0m words", "here"}},
		{"server,sensor,logger,all-in-one", 14, []string{"server,sensor,", "logger,all-in-", "one"}},
		{"a,b c", 10, []string{"a,b c"}},
		{"usm.sensor.alienvault-server.to-server x", 12, []string{"usm.sensor.", "alienvault-", "server.to-", "server x"}},
		{"--", 1, []string{"--"}},
	} {
		if got := Wrap(tc.in, tc.width); strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("Wrap(%q, %d) = %q, want %q", tc.in, tc.width, got, tc.want)
		}
	}
}

func TestWidth(t *testing.T) {
	if n := Width("\x1b[1m\x1b[31mhigh\x1b[0m – ok"); n != 9 {
		t.Errorf("Width = %d, want 9", n)
	}
}

func TestTable(t *testing.T) {
	rows := [][]string{{"ID", "WHAT", "NOTE"}, {"a", "one two three four", "x y"}, {"bb", "five", "z"}}
	if got, want := Table(rows, 0, nil), "ID  WHAT                NOTE\na   one two three four  x y\nbb  five                z\n"; got != want {
		t.Errorf("no limit:\n%s\nwant\n%s", got, want)
	}
	got := Table(rows, 18, []int{1})
	want := "ID  WHAT     NOTE\na   one two  x y\n    three\n    four\nbb  five     z\n"
	if got != want {
		t.Errorf("width 18:\n%q\nwant\n%q", got, want)
	}
	for _, l := range strings.Split(got, "\n") {
		if Width(l) > 18 {
			t.Errorf("line %q wider than 18", l)
		}
	}
	// Not wrappable: as wide as it must be.
	if got := Table(rows, 10, nil); got != Table(rows, 0, nil) {
		t.Errorf("no wrappable column, yet changed:\n%s", got)
	}
}

func TestRefit(t *testing.T) {
	text := "title: a long line of prose that is too wide\n\nNAME  ROLES                 DOC\nusm   server,sensor,logger  000\nvsos  scanning-server         001\n\nfooter\n"
	got := Refit(text, 24, func(l string) bool { return strings.HasPrefix(l, "NAME  ") }, "ROLES")
	want := "title: a long line of\n  prose that is too wide\n\nNAME  ROLES          DOC\nusm   server,        000\n      sensor,logger\nvsos  scanning-      001\n      server\n\nfooter\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if Refit(text, 0, func(string) bool { return true }) != text {
		t.Error("width 0 changed the text")
	}
}

func TestWrapLines(t *testing.T) {
	in := "  multi-node   off  Deployment with several nodes\nshort\n" + strings.Repeat("x", 30) + " tail"
	got := WrapLines(in, 30)
	want := "  multi-node   off  Deployment\n    with several nodes\nshort\n" + strings.Repeat("x", 30) + "\n  tail"
	if got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
	for _, l := range strings.Split(WrapLines("a b c d e f g h i j k l m n o p q r s t u v w x y z", 7), "\n") {
		if Width(l) > 7 {
			t.Errorf("line %q wider than 7", l)
		}
	}
}
