package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/catalog"
)

func init() {
	register(&command{
		name:     "diff",
		summary:  "what appeared and what went between two snapshots or JSON audit reports",
		usage:    "flowaudit diff [--site FILE] [--matrix M --role R] [--ignore PEER|PROTO/PORT]... OLD NEW",
		examples: diffExamples,
		setup:    setupDiff,
	})
}

const diffExamples = `  # Two recordings of the same host: services, open ports, peers by zone
  flowaudit diff --site site.yaml monday.json tuesday.json

  # Findings too: audit both snapshots against the matrix
  flowaudit diff -m utmstack@11 -r manager --site site.yaml monday.json tuesday.json

  # Two JSON audit reports; ignore an mDNS port and a scanner that churn
  flowaudit diff --ignore udp/5353 --ignore 192.0.2.66 --format json old-report.json new-report.json

Exit codes: 0 no change, 2 changes, 1 error.`

func setupDiff(fs *pflag.FlagSet) runFunc {
	var (
		mf      matrixFlags
		ignores []string
		format  string
		out     string
	)
	mf.register(fs)
	fs.StringSliceVar(&ignores, "ignore", nil, "peers (address, prefix) or services ([in|out ]PROTO/PORT[-PORT]) that churn: left out of the comparison")
	fs.StringVarP(&format, "format", "f", "text", "output format: "+strings.Join(audit.DiffFormats, ", "))
	fs.StringVarP(&out, "out", "o", "", "write the diff to this file (atomically) instead of stdout")
	return func(e *env, args []string) error {
		return runDiff(e, args, &mf, ignores, format, out)
	}
}

func runDiff(e *env, args []string, mf *matrixFlags, ignores []string, format, out string) error {
	if len(args) != 2 {
		return usageErrorf("want two inputs: OLD NEW (snapshots or JSON audit reports)")
	}
	if !contains(audit.DiffFormats, format) {
		return usageErrorf("--format %q: want one of %s", format, strings.Join(audit.DiffFormats, ", "))
	}
	var o audit.DiffOptions
	for _, v := range ignores {
		s, err := audit.ParseIgnore(v)
		if err != nil {
			return err
		}
		o.Ignore = append(o.Ignore, s)
	}
	switch {
	case mf.given():
		res, err := mf.resolve()
		if err != nil {
			return err
		}
		o.Site = res.site
		ao := audit.Options{Matrix: res.matrix, Site: res.site, ToolVersion: Version()}
		o.Audit = &ao
	case mf.site != "":
		s, err := catalog.LoadSite(mf.site)
		if err != nil {
			return err
		}
		o.Site = s
	}
	oldIn, err := audit.LoadDiffInput(args[0])
	if err != nil {
		return err
	}
	newIn, err := audit.LoadDiffInput(args[1])
	if err != nil {
		return err
	}
	d, err := audit.Diff(oldIn, newIn, o)
	if err != nil {
		return err
	}
	if err := writeOutput(e, out, func(w io.Writer) error { return audit.WriteDiff(w, d, format) },
		"diff written", zap.String("format", format)); err != nil {
		return err
	}
	if d.Changes > 0 {
		return fmt.Errorf("%d changes: %w", d.Changes, errFindings)
	}
	return nil
}
