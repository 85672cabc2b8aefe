package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go4.org/netipx"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// ErrRefused is wrapped by the *RefusedError Build and Precheck return
// when the input cannot be trusted to show everything the appliance needs:
// least-privilege rules from it would lock out what was not seen.
var ErrRefused = errors.New("refusing to write rules")

// RefusedError names every reason a ruleset was refused. Options.Force
// (--force) writes the rules anyway, with these reasons first among the
// Ruleset's Warnings.
type RefusedError struct {
	Reasons []string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%s: %s. Pass --force to write them anyway: each reason then heads the WARNINGS of the file",
		ErrRefused, strings.Join(e.Reasons, "; "))
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// forcedPrefix starts every refusal reason written as a warning.
const forcedPrefix = "FORCED (--force): "

// Precheck refuses, before a live recording starts, what can be known
// then: a planned window (Options.PlannedWindow) below MinWindow, and a
// known session (Options.Sessions, the SSH_CONNECTION of the shell) from
// a peer outside every zone the matrix allows for its service. Build
// checks the same again, with the snapshot's own reasons. With Force it
// returns nil.
func Precheck(o Options) error {
	o.defaults()
	if o.Force {
		return nil
	}
	if r, _ := o.refusals(nil); len(r) > 0 {
		return &RefusedError{Reasons: r}
	}
	return nil
}

// refusals lists why rules from snap (nil: not recorded yet) must not be
// written without Force. In Documented mode no allowance comes from the
// traffic, so the snapshot's own reasons are only warnings (soft).
func (o *Options) refusals(snap *snapshot.Snapshot) (out, soft []string) {
	out = o.snapshotReasons(snap)
	if o.Mode == Documented {
		out, soft = nil, out
	}
	return append(out, o.sessionReasons()...), soft
}

// snapshotReasons: why snap (nil: a live recording not made yet) may not
// show everything the appliance needs.
func (o *Options) snapshotReasons(snap *snapshot.Snapshot) []string {
	var out []string
	if snap != nil {
		st := &snap.Stats
		if st.Overflowed() {
			out = append(out, fmt.Sprintf("the kernel flow map (%d entries) overflowed: %d packets lost their peer (counted per service only), %d packets were not counted at all, %d flows were evicted; peers cut off that way get no rule and would be locked out (record again with a larger --max-flows)",
				st.FlowCapacity, st.FlowInsertFailed, st.OverflowInsertFailed, st.FlowEvictions))
		}
		if in := snap.Interrupted; in != nil {
			out = append(out, interruptedReason(snap, in))
		} else if o.PlannedWindow > 0 && snap.Window() < o.PlannedWindow {
			out = append(out, fmt.Sprintf("the live recording was interrupted (SIGINT or SIGTERM) after %s of the planned %s (--duration): traffic of the rest of the window was never seen; record the whole window",
				snap.Window().Round(time.Second), o.PlannedWindow))
		}
		if snap.Checkpoint {
			out = append(out, fmt.Sprintf("the snapshot is a checkpoint, written while the recording was still running (%s recorded by then, until %s); if it is the last one, the recorder never finished: use the final snapshot, or record again",
				snap.Window().Round(time.Second), snap.End.UTC().Format(time.RFC3339)))
		}
		if w := snap.Window(); w < o.MinWindow {
			out = append(out, fmt.Sprintf("the observation window is %s, below --min-window %s: rare but required traffic may not have happened yet; record longer",
				w.Round(time.Second), o.MinWindow))
		}
	} else if o.PlannedWindow > 0 && o.PlannedWindow < o.MinWindow {
		out = append(out, fmt.Sprintf("the planned observation window (--duration %s) is below --min-window %s: rare but required traffic may not happen in it; record longer",
			o.PlannedWindow, o.MinWindow))
	}
	return out
}

// sessionReasons: known sessions (your own) that the rules would cut.
func (o *Options) sessionReasons() []string {
	var out []string
	if !o.NoManagementGuard {
		for _, s := range o.Sessions {
			peer := s.Peer.Unmap()
			a := o.allowedPeers(s.Service)
			if !a.known || a.set.Contains(peer) {
				continue
			}
			advice := fmt.Sprintf("bind %s in the site file to one of those zones, or run flowaudit from a host inside one", peer)
			if a.rules == 0 {
				advice = "log in through a service the matrix documents, or run flowaudit from the console"
			}
			out = append(out, fmt.Sprintf("your own session, inbound %s from %s (%s), is outside every zone the matrix allows for %s (%s): the rules would lock you out when applied; %s (--force keeps this one session by a separate rule)",
				s.Service, peer, s.Why, s.Service, a.desc, advice))
		}
	}
	return out
}

func interruptedReason(snap *snapshot.Snapshot, in *snapshot.Interruption) string {
	at := in.At
	if at.IsZero() {
		at = snap.End
	}
	var s string
	sig := in.Signal
	if sig == "" {
		sig = "a signal"
	}
	if sig == "error" {
		s = fmt.Sprintf("the recording stopped on an error at %s", at.UTC().Format(time.RFC3339))
	} else {
		s = fmt.Sprintf("the recording was interrupted by %s at %s", sig, at.UTC().Format(time.RFC3339))
	}
	if !in.PlannedEnd.IsZero() && in.PlannedEnd.After(at) {
		s += fmt.Sprintf(", %s before its planned end %s", in.PlannedEnd.Sub(at).Round(time.Second), in.PlannedEnd.UTC().Format(time.RFC3339))
	}
	if in.Reason != "" {
		s += " (" + in.Reason + ")"
	}
	return s + ": traffic of the rest of the window was never seen"
}

// allowed is what the matrix allows for an inbound service at a site.
type allowed struct {
	// set is the union of what the site binds to the peers of the
	// matrix's (non-deprecated) inbound rules for the service.
	set *netipx.IPSet
	// desc names those rules and peers, or says there are none.
	desc string
	// rules counts the matrix rules for the service, bound or not.
	rules int
	// known is false without a matrix: nothing to judge against.
	known bool
}

func (o *Options) allowedPeers(svc Service) allowed {
	if o.Matrix == nil {
		return allowed{}
	}
	var sb netipx.IPSetBuilder
	var desc []string
	n := 0
	for i := range o.Matrix.Rules {
		r := &o.Matrix.Rules[i]
		if r.Deprecated || r.Direction != snapshot.Inbound || !ruleHas(r, svc) {
			continue
		}
		n++
		s, ok := peerSet(o.Site, r.Peer)
		if !ok {
			desc = append(desc, fmt.Sprintf("%s: %s, which the site does not bind", r.ID, r.Peer))
			continue
		}
		sb.AddSet(s)
		desc = append(desc, fmt.Sprintf("%s: %s", r.ID, r.Peer))
	}
	set, _ := sb.IPSet()
	a := allowed{set: set, desc: strings.Join(desc, "; "), rules: n, known: true}
	if n == 0 {
		a.desc = fmt.Sprintf("the matrix documents no inbound %s", svc)
	}
	return a
}

// sessionInZone reports whether a management session's peer is inside a
// zone the matrix allows for its service; desc describes those zones
// (empty without a matrix, when every peer counts as inside).
func (o *Options) sessionInZone(peer netip.Addr, svc Service) (bool, string) {
	a := o.allowedPeers(svc)
	if !a.known {
		return true, ""
	}
	return a.set.Contains(peer), a.desc
}

// ruleHas reports whether a matrix rule covers a tcp/udp/sctp service.
func ruleHas(r *catalog.Rule, svc Service) bool {
	has := false
	for _, p := range r.Protos {
		has = has || p == svc.Proto
	}
	if !has {
		return false
	}
	for _, pr := range r.Ports {
		if pr.Contains(svc.Port) {
			return true
		}
	}
	return false
}
