package main

import (
	"io"
	"os"

	"golang.org/x/term"
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
