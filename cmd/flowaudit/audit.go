package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
)

func init() {
	register(&command{
		name:     "audit",
		summary:  "compare observed traffic with the documented matrix of a role",
		usage:    "flowaudit audit --matrix PRODUCT[@VERSION][#EDITION] --role ROLE [--site FILE] (--snapshot FILE | --iface IFACE --duration D) [flags]",
		examples: auditExamples,
		setup:    setupAudit,
		config:   true,
	})
}

const auditExamples = `  # Offline, from a snapshot recorded earlier (no root needed)
  flowaudit audit --matrix utmstack@11 --role manager --site site.yaml --snapshot snap.json

  # Live for 15 minutes, HTML report for the auditors
  flowaudit audit -m usm@5.6.5 -r sensor --site site.yaml -i eth0 -d 15m --format html --out report.html

  # The same against the older (AlienVault) edition of the USM document
  flowaudit audit -m usm@5.6.5#alienvault -r sensor --site site.yaml --snapshot snap.json

  # A whole deployment: every node's snapshot with its role, and the nodes against each other
  flowaudit audit --deployment deployment.yaml --format html --out deployment.html

  # In CI: SARIF for code scanning, fail only on high findings
  flowaudit audit -m vsos -r scanning-server --snapshot snap.json --format sarif --out flowaudit.sarif --fail-on high

Exit codes: 0 no findings at or above --fail-on, 2 findings, 1 error.`

// auditFlags are the flags of the audit subcommand that watch shares.
type auditFlags struct {
	mf         matrixFlags
	minWindow  time.Duration
	scanPorts  int
	floodPeers int
	floodSYNs  int
	floodRate  float64
}

func (a *auditFlags) register(fs *pflag.FlagSet) {
	a.mf.register(fs)
	fs.DurationVar(&a.minWindow, "min-window", audit.DefaultMinWindow, "a shorter observation window is reported as audit-incomplete")
	fs.IntVar(&a.scanPorts, "scan-ports", audit.DefaultScanPorts, "distinct refused ports from one peer that make it a suspected scanner")
	fs.IntVar(&a.floodPeers, "flood-peers", audit.DefaultFloodPeers, "distinct peers of one inbound service that make it a suspected flood (negative: never)")
	fs.IntVar(&a.floodSYNs, "flood-syns", audit.DefaultFloodSYNs, "SYNs to one inbound TCP service that never completed, at --flood-rate or faster, that make it a suspected SYN flood (negative: never)")
	fs.Float64Var(&a.floodRate, "flood-rate", audit.DefaultFloodRate, "half-open SYNs per second (over their span) a --flood-syns flood needs (negative: any rate)")
}

func (a *auditFlags) options(r *resolved) audit.Options {
	return audit.Options{Matrix: r.matrix, Site: r.site, MinWindow: a.minWindow, ScanPorts: a.scanPorts,
		FloodPeers: a.floodPeers, FloodSYNs: a.floodSYNs, FloodRate: a.floodRate, ToolVersion: Version()}
}

func setupAudit(fs *pflag.FlagSet) runFunc {
	var (
		af     auditFlags
		in     inputFlags
		format string
		out    string
		failOn string
		width  int
		dep    deploymentFlags
	)
	af.register(fs)
	in.register(fs, "audit")
	fs.StringVarP(&format, "format", "f", "table", "report format: "+strings.Join(audit.Formats, ", "))
	fs.StringVarP(&out, "out", "o", "", "write the report to this file (atomically) instead of stdout")
	fs.StringVar(&failOn, "fail-on", "low", "exit 2 when a finding has this severity or more: info, low, medium, high")
	fs.IntVar(&width, "width", 0, "fit the table to this many columns, explanations wrapped (0: the terminal's width when stdout is one, else no limit)")
	dep.register(fs)
	return func(e *env, args []string) error {
		if dep.path != "" {
			return runDeploymentAudit(e, fs, args, &dep, &af, format, out, failOn, width)
		}
		if len(args) > 0 {
			return usageErrorf("unexpected argument %q", args[0])
		}
		threshold, err := audit.ParseSeverity(failOn)
		if err != nil {
			return usageErrorf("--fail-on: %w", err)
		}
		if !contains(audit.Formats, format) {
			return usageErrorf("--format %q: want one of %s", format, strings.Join(audit.Formats, ", "))
		}
		if width < 0 {
			return usageErrorf("--width %d: must not be negative", width)
		}
		if err := in.check(true, "give --snapshot FILE, or --iface to record live"); err != nil {
			return err
		}
		res, err := af.mf.resolve()
		if err != nil {
			return err
		}
		warnNoSite(e, res)
		snap, err := in.load(e)
		if err != nil {
			return err
		}

		rep, err := audit.Run(snap, af.options(res))
		if err != nil {
			return err
		}
		ro := renderOptions(e, format, out, width, af.mf.catalogs)
		if err := writeOutput(e, out, func(w io.Writer) error { return audit.Write(w, rep, format, ro) },
			"report written", zap.String("format", format)); err != nil {
			return err
		}
		e.log.Info("audit done", zap.String("matrix", rep.Title()), zap.Int("high", rep.Counts["high"]),
			zap.Int("medium", rep.Counts["medium"]), zap.Int("low", rep.Counts["low"]), zap.Int("info", rep.Counts["info"]))
		if n := rep.AtLeast(threshold); n > 0 {
			return fmt.Errorf("%d findings at or above %s: %w", n, threshold, errFindings)
		}
		return nil
	}
}

// renderOptions are the options of a report written to out (stdout when
// empty). SARIF locations are made relative to the working directory (the
// repository the log is for) and point at the user's site and catalog
// files, never at the built-in catalog. Colour and the terminal's width
// only for a table on a terminal (and no colour with NO_COLOR); --width
// wins.
func renderOptions(e *env, format, out string, width int, catalogs []string) audit.RenderOptions {
	cwd, _ := os.Getwd()
	ro := audit.RenderOptions{Color: out == "" && format == "table" && colorOK(e.stdout), CatalogRoot: cwd,
		CatalogFiles: catalogs, Width: width}
	if width == 0 && out == "" {
		ro.Width = terminalWidth(e.stdout)
	}
	return ro
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
