package main

import (
	"bufio"
	"errors"
	"io"

	"github.com/spf13/pflag"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func init() {
	register(&command{
		name:     "snapshot",
		summary:  "convert a snapshot file: export as plain JSON or the compact encoding",
		examples: snapshotExamples,
		subs: []*command{
			{name: "export", summary: "write a snapshot as plain JSON (for jq) or in the compact encoding",
				usage: "flowaudit snapshot export [--format json|compact] [--out FILE] SNAPSHOT", examples: snapshotExamples,
				setup: setupSnapshotExport},
		},
	})
}

const snapshotExamples = `  # Plain JSON for jq, from a compact recording (or a JSON one)
  flowaudit snapshot export --format json snap.fas | jq '.flows | length'

  # The same, into a file (written atomically)
  flowaudit snapshot export --format json snap.fas --out snap.json

  # A JSON snapshot into the compact encoding
  flowaudit snapshot export --format compact snap.json --out snap.fas`

func setupSnapshotExport(fs *pflag.FlagSet) runFunc {
	var format, out string
	fs.StringVar(&format, "format", "json", "json (docs/SNAPSHOT.md, one object) or compact (the binary encoding)")
	fs.StringVarP(&out, "out", "o", "", "write here, atomically (default: standard output)")
	return func(e *env, args []string) error {
		if len(args) != 1 {
			return usageErrorf("want one snapshot file, got %d arguments", len(args))
		}
		var enc snapshot.Encoding
		switch format {
		case "json":
			enc = snapshot.JSON
		case "compact":
			enc = snapshot.Compact
		default:
			return usageErrorf("--format %q: want json or compact", format)
		}
		s, err := snapshot.ReadFile(args[0])
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
}

func flush(w interface{ Flush() error }) error {
	if err := w.Flush(); err != nil && !errors.Is(err, io.ErrClosedPipe) {
		return err
	}
	return nil
}
