package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// openPTY opens a pseudo-terminal of cols columns and returns its two
// ends: the terminal (for flowaudit's stdout) and the master (to read it).
func openPTY(t *testing.T, cols uint16) (tty, master *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 50, Col: cols}); err != nil {
		t.Fatal(err)
	}
	return s, m
}

// runOnTTY runs the CLI with stdout on a terminal of cols columns and
// returns what the terminal got (without the line discipline's \r).
func runOnTTY(t *testing.T, cols uint16, args ...string) (int, string, string) {
	t.Helper()
	tty, master := openPTY(t, cols)
	got := make(chan string)
	go func() {
		var b bytes.Buffer
		io.Copy(&b, master) // ends with EIO once the terminal is closed
		got <- b.String()
	}()
	var errb bytes.Buffer
	code := run(args, tty, &errb)
	tty.Close()
	out := <-got
	return code, strings.ReplaceAll(out, "\r\n", "\n"), errb.String()
}

// longFlows give findings with long explanations and no site file a long
// header line.
func longFlows() []snapshot.Flow {
	return append(cleanFlows(),
		tflow(snapshot.Inbound, snapshot.TCP, 6379, "10.1.0.4", snapshot.Evidence{SynIn: 1, SynAckOut: 1}),
		tflow(snapshot.Outbound, snapshot.UDP, 53, "198.51.100.53", snapshot.Evidence{}))
}

// TestTerminalColourAndWidth: on a terminal the table is coloured and fits
// its width; NO_COLOR takes the colour away; piped, the table is as it
// always was (no colour, no width).
func TestTerminalColourAndWidth(t *testing.T) {
	snap := writeSnap(t, longFlows()...)
	args := []string{"audit", "--catalog", testCatalog, "--matrix", "testapp", "--role", "server", "--snapshot", snap}
	_, piped, _ := runCLI(t, args...)
	if strings.Contains(piped, "\x1b[") {
		t.Fatal("colour in piped output")
	}
	widest := 0
	for _, l := range strings.Split(piped, "\n") {
		widest = max(widest, len([]rune(l)))
	}
	const cols = 110
	if widest <= cols {
		t.Fatalf("the piped table is at most %d columns: the width test proves nothing", widest)
	}

	t.Setenv("NO_COLOR", "")
	code, out, errb := runOnTTY(t, cols, args...)
	if code != exitFindings {
		t.Fatalf("exit %d\n%s", code, errb)
	}
	if !strings.Contains(out, "\x1b[") {
		t.Errorf("no colour on a terminal:\n%q", out)
	}

	t.Setenv("NO_COLOR", "1")
	code, out, errb = runOnTTY(t, cols, args...)
	if code != exitFindings {
		t.Fatalf("exit %d\n%s", code, errb)
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("NO_COLOR=1 and still ANSI escapes:\n%q", out)
	}
	for i, l := range strings.Split(out, "\n") {
		if n := len([]rune(l)); n > cols {
			t.Errorf("line %d is %d columns on a %d-column terminal: %q", i+1, n, cols, l)
		}
	}
	// The same as --width to a pipe, and --width wins over the terminal.
	if _, w, _ := runCLI(t, append(args, "--width", fmt.Sprint(cols))...); w != out {
		t.Errorf("--width %d differs from a %d-column terminal:\n%s\n---\n%s", cols, cols, w, out)
	}
	if _, w, _ := runOnTTY(t, cols, append(args, "--width", "1000")...); w != piped {
		t.Errorf("--width 1000 on a terminal is not the unfitted table:\n%s", w)
	}
	// JSON keeps every explanation whole.
	_, js, _ := runOnTTY(t, 40, append(args, "--format", "json")...)
	for _, l := range strings.Split(piped, "\n") {
		if i := strings.Index(l, "the matrix documents no such inbound port"); i >= 0 {
			if !strings.Contains(js, "tcp/6379 answers 1 peer but the matrix documents no such inbound port for role server") {
				t.Errorf("JSON lacks the whole explanation:\n%s", js)
			}
		}
	}
}

// TestCatalogWidth: catalog list and show fit --width or the terminal,
// wrapping cells (no word lost), and stay as they were when piped.
func TestCatalogWidth(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		width int
	}{
		{[]string{"catalog", "list"}, 100},
		{[]string{"catalog", "show", "utmstack@11", "--role", "manager"}, 120},
		{[]string{"catalog", "show", "usm@5.4", "--role", "sensor", "--notes"}, 140},
	} {
		_, piped, _ := runCLI(t, tc.args...)
		widest := 0
		for _, l := range strings.Split(piped, "\n") {
			widest = max(widest, len([]rune(l)))
		}
		if widest <= tc.width {
			t.Fatalf("%v: piped output at most %d columns: the test proves nothing", tc.args, widest)
		}
		code, fitted, errb := runCLI(t, append(tc.args, "--width", fmt.Sprint(tc.width))...)
		if code != exitClean {
			t.Fatalf("%v: exit %d\n%s", tc.args, code, errb)
		}
		for i, l := range strings.Split(fitted, "\n") {
			if n := len([]rune(l)); n > tc.width {
				t.Errorf("%v: line %d is %d columns: %q", tc.args, i+1, n, l)
			}
		}
		// Nothing lost or added: the same characters but spaces (words
		// break after a comma, dot, slash or hyphen).
		norm := func(s string) string {
			r := []rune(strings.Join(strings.Fields(s), ""))
			sort.Slice(r, func(i, j int) bool { return r[i] < r[j] })
			return string(r)
		}
		if norm(fitted) != norm(piped) {
			t.Errorf("%v: words lost or added in fitting:\n%s", tc.args, fitted)
		}
		if _, onTTY, _ := runOnTTY(t, uint16(tc.width), tc.args...); onTTY != fitted {
			t.Errorf("%v: a %d-column terminal differs from --width %d", tc.args, tc.width, tc.width)
		}
	}
}
