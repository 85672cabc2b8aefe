package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
)

// deploymentFlags are audit's --deployment and what goes with it.
type deploymentFlags struct {
	path   string
	maxAge time.Duration
}

func (d *deploymentFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&d.path, "deployment", "", "audit a whole deployment: a YAML file naming each node's snapshot, role and addresses, the matrix and the site (docs/DEPLOYMENT.md)")
	fs.DurationVar(&d.maxAge, "max-age", 0, "with --deployment: a node snapshot that ended longer ago is too old (default: the file's max_age, else 24h)")
}

// runDeploymentAudit is audit --deployment: the file names the roles,
// site and snapshots, so the flags that select them for one host are
// refused; --matrix and --conditions replace the file's.
func runDeploymentAudit(e *env, fs *pflag.FlagSet, args []string, d *deploymentFlags, af *auditFlags, format, out, failOn string, width int) error {
	for _, name := range []string{"role", "site", "snapshot", "iface", "save-snapshot"} {
		if fs.Changed(name) {
			return usageErrorf("--%s: not with --deployment (the deployment file names the roles, site and snapshots)", name)
		}
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
	// --matrix (with --conditions) replaces the file's matrix: the same
	// deployment audited against a learned catalog (--catalog).
	o := audit.DeploymentOptions{Audit: af.options(&resolved{}), Catalogs: af.mf.catalogs, MaxAge: d.maxAge,
		Matrix: af.mf.matrix, Conditions: af.mf.conditions}
	rep, err := audit.AuditDeployment(d.path, o)
	if err != nil {
		return err
	}
	ro := renderOptions(e, format, out, width, af.mf.catalogs)
	if err := writeOutput(e, out, func(w io.Writer) error { return audit.WriteDeployment(w, rep, format, ro) },
		"report written", zap.String("format", format)); err != nil {
		return err
	}
	e.log.Info("deployment audit done", zap.String("deployment", rep.Title()), zap.Int("high", rep.Total["high"]),
		zap.Int("medium", rep.Total["medium"]), zap.Int("low", rep.Total["low"]), zap.Int("info", rep.Total["info"]))
	if n := rep.AtLeast(threshold); n > 0 {
		return fmt.Errorf("%d findings at or above %s: %w", n, threshold, errFindings)
	}
	return nil
}
