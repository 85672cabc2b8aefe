package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/rules"
	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func init() {
	register(&command{
		name:     "rules",
		summary:  "generate least-privilege firewall rules from observed (and documented) traffic",
		usage:    "flowaudit rules (--snapshot FILE | --iface IFACE --duration D) [--matrix P[@V][#E] --role R [--site FILE]] [--mode observed|documented|both] --target TARGET [--out FILE] [flags]",
		examples: rulesExamples,
		setup:    setupRules,
	})
}

const rulesExamples = `  # nftables rules for a UTMStack v11 manager: documented AND observed traffic only
  flowaudit rules --matrix utmstack@11 --role manager --site site.yaml --snapshot snap.json \
      --target nftables --out flowaudit.nft
  nft -c -f flowaudit.nft    # check, review, then apply yourself: nft -f flowaudit.nft

  # Record 30 minutes live, then write iptables-restore files for both families
  flowaudit rules -m usm@5.8 -r sensor --site site.yaml -i eth0 -d 30m --target iptables --out rules.v4 \
      --save-snapshot snap.json
  flowaudit rules -m usm@5.8 -r sensor --site site.yaml -s snap.json --target ip6tables --out rules.v6

  # What the vendor documents, to the site's zones (no traffic needed), as an ufw script
  flowaudit rules -m utmstack@11 -r manager --site site.yaml --mode documented --target ufw --out ufw.sh

  # Observed traffic only (no matrix), peers widened to /24 and /64, AWS CloudFormation
  flowaudit rules --snapshot snap.json --aggregate /24,/64 --target aws-sg --out sg.json

  # Azure NSG, outbound enforced too
  flowaudit rules -m vsos -r scanning-server --site site.yaml -s snap.json --egress-policy drop --target azure-nsg

flowaudit never applies rules: it writes them for review. Modes, aggregation, the management
guard and each target's shape and limits: docs/RULES.md.
Safe by default: a snapshot whose flow map overflowed, that was interrupted or is a checkpoint,
a window below --min-window, and your own SSH session (SSH_CONNECTION, live) from outside every
zone the matrix allows for it are refused; --force writes the rules anyway, with each reason
first in the file's WARNINGS.
Exit codes: 0 rules written, 1 error (including a refusal, and "no traffic seen": flowaudit never
turns a quiet window into a deny-all policy), 2 with --fail-on-undocumented when observed,
answered traffic was undocumented or out of zone (the rules are written all the same).`

func setupRules(fs *pflag.FlagSet) runFunc {
	var (
		mf           matrixFlags
		in           inputFlags
		mode         string
		target       string
		out          string
		aggregate    []string
		egress       string
		mgmtPorts    []string
		noGuard      bool
		allowUnverif bool
		allowQuiet   bool
		failUndoc    bool
		force        bool
		minWindow    time.Duration
		awsMax       int
		awsSpill     string
	)
	mf.register(fs)
	in.register(fs, "generate from")
	fs.StringVar(&mode, "mode", "", "observed, documented or both (default: both with --matrix, else observed)")
	fs.StringVarP(&target, "target", "t", "", "nftables, iptables, ip6tables, ufw, aws-sg or azure-nsg")
	fs.StringVarP(&out, "out", "o", "", "write the rules to this file (atomically) instead of stdout")
	fs.StringSliceVar(&aggregate, "aggregate", nil, "widen observed peers to prefixes: /24 (IPv4), /64 (IPv6), or 4/N, 6/N; always reported")
	fs.StringVar(&egress, "egress-policy", "accept", "output policy: accept (outbound allowances listed) or drop (enforced)")
	fs.StringSliceVar(&mgmtPorts, "management-port", []string{"tcp/22", "tcp/443"}, "services whose sessions are never locked out")
	fs.BoolVar(&noGuard, "no-management-guard", false, "do not keep management sessions that no rule allows (dangerous)")
	fs.BoolVar(&allowUnverif, "allow-unverified", false, "allow observed traffic on documented ports whose zone the site does not bind")
	fs.BoolVar(&allowQuiet, "allow-quiet", false, "generate even when the window shows no inbound traffic (the input policy then allows only replies)")
	fs.BoolVar(&failUndoc, "fail-on-undocumented", false, "exit 2 when observed, answered traffic was undocumented or out of zone")
	fs.DurationVar(&minWindow, "min-window", audit.DefaultMinWindow, "a shorter observation window is refused (see --force)")
	fs.BoolVar(&force, "force", false, "write the rules although the input is refused (map overflowed, interrupted, checkpoint, window below --min-window, your session outside the zones); each reason heads the WARNINGS")
	fs.IntVar(&awsMax, "aws-max-rules", rules.DefaultAWSMaxRules, "aws-sg: rules per security group, direction and address family (AWS quota)")
	fs.StringVar(&awsSpill, "aws-spill", "fail", "aws-sg: above the quota, fail or split into several security groups (groups)")
	return func(e *env, args []string) error {
		if len(args) > 0 {
			return usageErrorf("unexpected argument %q", args[0])
		}
		if target == "" {
			return usageErrorf("--target is required (nftables, iptables, ip6tables, ufw, aws-sg or azure-nsg)")
		}
		tgt, err := rules.ParseTarget(target)
		if err != nil {
			return usageErrorf("--target: %w", err)
		}
		o := rules.Options{AllowUnverified: allowUnverif, AllowQuiet: allowQuiet, NoManagementGuard: noGuard,
			MinWindow: minWindow, Force: force, ToolVersion: Version()}
		if mode != "" {
			if o.Mode, err = rules.ParseMode(mode); err != nil {
				return usageErrorf("--mode: %w", err)
			}
		}
		if o.EgressPolicy, err = rules.ParsePolicy(egress); err != nil {
			return usageErrorf("--egress-policy: %w", err)
		}
		if o.Aggregate4, o.Aggregate6, err = parseAggregate(aggregate); err != nil {
			return usageErrorf("--aggregate: %w", err)
		}
		o.ManagementPorts = []rules.Service{}
		for _, s := range mgmtPorts {
			if s == "" || s == "none" {
				continue
			}
			svc, err := rules.ParseService(s)
			if err != nil {
				return usageErrorf("--management-port: %w", err)
			}
			o.ManagementPorts = append(o.ManagementPorts, svc)
		}
		if len(o.ManagementPorts) == 0 {
			o.NoManagementGuard = true
		}
		if awsSpill != "fail" && awsSpill != "groups" {
			return usageErrorf("--aws-spill %q: want fail or groups", awsSpill)
		}
		if awsMax < 1 {
			return usageErrorf("--aws-max-rules %d: must be at least 1", awsMax)
		}

		if err := in.check(o.Mode != rules.Documented, "give --snapshot FILE, or --iface to record live (only --mode documented works without traffic)"); err != nil {
			return err
		}
		if mf.given() {
			res, err := mf.resolve()
			if err != nil {
				return err
			}
			o.Matrix, o.Site = res.matrix, res.site
		} else {
			switch {
			case o.Mode == rules.Documented || o.Mode == rules.Both:
				return usageErrorf("--mode %s needs --matrix and --role", o.Mode)
			case mf.role != "" || mf.site != "" || len(mf.conditions) > 0:
				return usageErrorf("--role, --site and --conditions need --matrix")
			}
		}

		if in.live() {
			if s, ok := sshSession(os.Getenv("SSH_CONNECTION")); ok {
				o.Sessions = append(o.Sessions, s)
			}
			o.PlannedWindow = in.duration
			// What can be refused before recording is refused before it
			// starts: a planned window below --min-window, your own session
			// from outside the zones.
			if err := rules.Precheck(o); err != nil {
				return err
			}
		}
		snap, err := in.load(e)
		if err != nil {
			return err
		}

		rs, err := rules.Build(snap, o)
		if errors.Is(err, rules.ErrRefused) && in.saveSnap != "" {
			return fmt.Errorf("%w (the recording is kept in %s: rerun with --snapshot %s, adding --force if you accept these reasons)", err, in.saveSnap, in.saveSnap)
		}
		if err != nil {
			return err
		}
		for _, r := range rs.Forced {
			e.log.Warn("writing rules although they would be refused (--force)", zap.String("reason", r))
		}
		ro := rules.RenderOptions{AWSMaxRules: awsMax, AWSSpill: awsSpill}
		if err := writeOutput(e, out, func(w io.Writer) error { return rules.Render(w, rs, tgt, ro) },
			"rules written (not applied)", zap.String("target", string(tgt))); err != nil {
			return err
		}
		for _, m := range rs.Management {
			e.log.Info("management", zap.String("session", m))
		}
		for _, w := range rs.Warnings[len(rs.Forced):] {
			e.log.Warn(w)
		}
		inb, outb := 0, 0
		for _, a := range rs.Allows {
			if a.Direction == snapshot.Inbound {
				inb++
			} else {
				outb++
			}
		}
		e.log.Info("rules done", zap.String("mode", string(rs.Mode)), zap.String("target", string(tgt)),
			zap.Int("inbound_allowances", inb), zap.Int("outbound_allowances", outb),
			zap.Int("not_allowed", len(rs.NotAllowed)), zap.Int("documented_not_observed", len(rs.NotObserved)),
			zap.Int("widened", len(rs.Widened)), zap.Int("undocumented", rs.Undocumented))
		if failUndoc && rs.Undocumented > 0 {
			return fmt.Errorf("%d observed services were undocumented or out of zone: %w", rs.Undocumented, errFindings)
		}
		return nil
	}
}

// parseAggregate reads --aggregate values: "/24" (IPv4 when ≤ 32, else
// IPv6), "4/24", "6/64".
func parseAggregate(vals []string) (v4, v6 int, err error) {
	for _, v := range vals {
		fam, bits, ok := strings.Cut(strings.TrimSpace(v), "/")
		if !ok {
			return 0, 0, fmt.Errorf("%q: want /N, 4/N or 6/N", v)
		}
		n, err := strconv.Atoi(bits)
		if err != nil || n < 1 {
			return 0, 0, fmt.Errorf("%q: bad prefix length", v)
		}
		switch {
		case fam == "4" || (fam == "" && n <= 32):
			if n > 32 {
				return 0, 0, fmt.Errorf("%q: IPv4 prefix length above 32", v)
			}
			v4 = n
		case fam == "6" || fam == "":
			if n > 128 {
				return 0, 0, fmt.Errorf("%q: IPv6 prefix length above 128", v)
			}
			v6 = n
		default:
			return 0, 0, fmt.Errorf("%q: want /N, 4/N or 6/N", v)
		}
	}
	return v4, v6, nil
}

// sshSession reads SSH_CONNECTION ("client port server port"): the
// session this command runs in, which the rules must never lock out.
func sshSession(v string) (rules.Session, bool) {
	f := strings.Fields(v)
	if len(f) != 4 {
		return rules.Session{}, false
	}
	peer, err1 := netip.ParseAddr(f[0])
	port, err2 := strconv.ParseUint(f[3], 10, 16)
	if err1 != nil || err2 != nil || port == 0 {
		return rules.Session{}, false
	}
	return rules.Session{Peer: peer, Service: rules.Service{Proto: snapshot.TCP, Port: uint16(port)},
		Why: "the SSH session flowaudit ran in (SSH_CONNECTION)"}, true
}
