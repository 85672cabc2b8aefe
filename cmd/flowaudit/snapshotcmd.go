package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func init() {
	register(&command{
		name:    "snapshot",
		summary: "convert a snapshot file: export as plain JSON or the compact encoding",
		run:     runSnapshot,
	})
}

const snapshotExamples = `  # Plain JSON for jq, from a compact recording (or a JSON one)
  flowaudit snapshot export --format json snap.fas | jq '.flows | length'

  # The same, into a file (written atomically)
  flowaudit snapshot export --format json snap.fas --out snap.json

  # A JSON snapshot into the compact encoding
  flowaudit snapshot export --format compact snap.json --out snap.fas`

func runSnapshot(e *env, args []string) error {
	var format, out string
	fs := newFlagSet(e, "snapshot", "flowaudit snapshot export [--format json|compact] [--out FILE] SNAPSHOT", snapshotExamples)
	fs.StringVar(&format, "format", "json", "json (docs/SNAPSHOT.md, one object) or compact (the binary encoding)")
	fs.StringVarP(&out, "out", "o", "", "write here, atomically (default: standard output)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 || fs.Arg(0) != "export" {
		fs.Usage()
		return errors.New("snapshot: the only subcommand is export")
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("snapshot export: want one snapshot file, got %d arguments", fs.NArg()-1)
	}
	var enc snapshot.Encoding
	switch format {
	case "json":
		enc = snapshot.JSON
	case "compact":
		enc = snapshot.Compact
	default:
		return fmt.Errorf("snapshot export: --format %q: want json or compact", format)
	}
	s, err := snapshot.ReadFile(fs.Arg(1))
	if err != nil {
		return err
	}
	if out != "" {
		return snapshot.WriteFileAs(out, s, enc)
	}
	if enc == snapshot.JSON {
		return snapshot.Write(e.stdout, s)
	}
	w := bufio.NewWriter(e.stdout)
	if err := snapshot.WriteCompact(w, s); err != nil {
		return err
	}
	return flush(w)
}

func flush(w interface{ Flush() error }) error {
	if err := w.Flush(); err != nil && !errors.Is(err, io.ErrClosedPipe) {
		return err
	}
	return nil
}
