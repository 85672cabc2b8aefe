package main

import (
	"io"
	"os"

	"golang.org/x/term"

	"github.com/flowaudit/flowaudit/internal/textfit"
)

// colorOK reports whether ANSI colour may go to w: a terminal, and
// NO_COLOR unset or empty (https://no-color.org).
func colorOK(w io.Writer) bool {
	return os.Getenv("NO_COLOR") == "" && isTerminal(w)
}

// terminalWidth is the width in columns of the terminal w is, or 0 (no
// limit) when w is not a terminal, so that piped and redirected output
// stays as it is.
func terminalWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0
	}
	cols, _, err := term.GetSize(int(f.Fd()))
	if err != nil || cols <= 0 {
		return 0
	}
	return cols
}

const widthUsage = "fit tables to this many columns, long cells wrapped (0: the terminal's width when stdout is one, else no limit)"

// writeFitted writes text (tables written by text/tabwriter) to e.stdout,
// fitted to width columns or, when width is 0, to the terminal's width
// (unchanged when stdout is not a terminal). isHeader tells a table's
// header line; the cells of the wrappable columns wrap.
func writeFitted(e *env, width int, text string, isHeader func(string) bool, wrappable ...string) error {
	if width < 0 {
		return usageErrorf("--width %d: must not be negative", width)
	}
	if width == 0 {
		width = terminalWidth(e.stdout)
	}
	_, err := io.WriteString(e.stdout, textfit.Refit(text, width, isHeader, wrappable...))
	return err
}
