package audit

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// maxServices bounds the services an audit-incomplete finding lists.
const maxServices = 20

// incomplete reports, each under its own finding ID, why the snapshot may
// not show everything, and fills the report's Coverage.
func (a *auditor) incomplete(rep *Report) {
	st := a.snap.Stats
	cov := &rep.Coverage
	// Version 2: flow_insert_failed counts every packet whose per-peer
	// flow could not be inserted, overflow_insert_failed those of them the
	// overflow map could not take either.
	if st.FlowInsertFailed > st.OverflowInsertFailed {
		cov.PeerlessPackets = st.FlowInsertFailed - st.OverflowInsertFailed
	}
	if cov.PeerlessPackets == 0 {
		for _, l := range a.peerless {
			cov.PeerlessPackets += l.packets
		}
	}
	cov.PeerlessServices = services(a.peerless)
	cov.LostPackets, cov.EvictedFlows = st.OverflowInsertFailed, st.FlowEvictions
	cov.FoldedFlows, cov.FlowBudget = st.FoldedFlows, st.FlowBudget
	cov.FoldedServices = services(a.folded)
	cov.UncheckedServices = services(a.unchecked)
	cov.Interrupted, cov.Checkpoint = a.snap.Interrupted, a.snap.Checkpoint
	if a.snap.Interrupted != nil {
		cov.Stopped = interruptionText(a.snap)
	}
	if d := a.snap.DNS; d != nil {
		cov.DNSDropped, cov.DNSEvicted = d.Dropped, d.Evicted
	}
	cov.Complete = len(cov.Lines()) == 0
	if cov.DNSDropped > 0 || cov.DNSEvicted > 0 {
		a.add(&Finding{ID: "audit-incomplete/dns-lost", Kind: AuditIncomplete, Severity: Medium,
			Summary: fmt.Sprintf("%d DNS answers were dropped (the ring buffer was full) and %d names evicted (the table was full): a peer of a dns: rule may be reported out of zone only because its answer was lost (bind the names under hosts: in the site file, or record again; docs/DNS.md)",
				cov.DNSDropped, cov.DNSEvicted),
		})
	}

	if cov.PeerlessPackets > 0 || len(cov.PeerlessServices) > 0 {
		var peers uint64
		for _, s := range cov.PeerlessServices {
			peers += s.Peers
		}
		a.add(&Finding{ID: "audit-incomplete/peers-lost", Kind: AuditIncomplete, Severity: Medium,
			Summary: fmt.Sprintf("%d packets lost their peer identity (the kernel flow map of %d entries was full) but were counted per service, on %s: no finding can name their peers or check them against a zone (raise --max-flows, or move the counts out of the kernel more often)",
				cov.PeerlessPackets, st.FlowCapacity, serviceList(cov.PeerlessServices, 3)),
			Evidence: Evidence{Packets: cov.PeerlessPackets, PeersUnknownPackets: cov.PeerlessPackets, PeersUnknown: peers,
				Services: capServices(cov.PeerlessServices)},
		})
	}
	if cov.Lossy() {
		full := fmt.Sprintf("the overflow map of %d entries was full too", st.OverflowCapacity)
		if st.OverflowCapacity == 0 {
			full = fmt.Sprintf("the flow map of %d entries was full", st.FlowCapacity)
		}
		a.add(&Finding{ID: "audit-incomplete/not-counted", Kind: AuditIncomplete, Severity: High,
			Summary: fmt.Sprintf("%d packets were not counted at all (%s) and %d flows were evicted: traffic is missing from this audit and the absence of a finding proves nothing (raise --max-flows)",
				cov.LostPackets, full, cov.EvictedFlows),
			Evidence: Evidence{Packets: cov.LostPackets},
		})
	}
	if cov.FoldedFlows > 0 || len(cov.FoldedServices) > 0 {
		budget := ""
		if cov.FlowBudget > 0 {
			budget = fmt.Sprintf(" to stay within the recorder's budget of %d flows", cov.FlowBudget)
		}
		var packets uint64
		for _, s := range cov.FoldedServices {
			packets += s.Packets
		}
		a.add(&Finding{ID: "audit-incomplete/folded", Kind: AuditIncomplete, Severity: Low,
			Summary: fmt.Sprintf("%d per-peer flows were folded into prefixes%s, on %s: every packet is counted, their peers are estimated and checked per prefix (raise the recorder's flow budget)",
				cov.FoldedFlows, budget, serviceList(cov.FoldedServices, 3)),
			Evidence: Evidence{Packets: packets, Services: capServices(cov.FoldedServices)},
		})
	}
	if len(cov.UncheckedServices) > 0 {
		var packets uint64
		for _, s := range cov.UncheckedServices {
			packets += s.Packets
		}
		a.add(&Finding{ID: "audit-incomplete/zones-unchecked", Kind: AuditIncomplete, Severity: Medium,
			Summary: fmt.Sprintf("folded prefixes straddle the edge of a rule's zone on %s: whether those peers are inside could not be checked, so no peer-out-of-zone is claimed for them (raise the recorder's flow budget)",
				serviceList(cov.UncheckedServices, 3)),
			Evidence: Evidence{Packets: packets, Services: capServices(cov.UncheckedServices)},
		})
	}
	if in := a.snap.Interrupted; in != nil {
		sev := Medium
		if in.PlannedEnd.IsZero() && in.Signal != "error" {
			sev = Low // no planned end: stopping was the way to end it
		}
		a.add(&Finding{ID: "audit-incomplete/interrupted", Kind: AuditIncomplete, Severity: sev,
			Summary:  "the recording was " + cov.Stopped + ": traffic after that is missing, and required traffic may not have happened yet",
			Evidence: Evidence{Interrupted: in, Window: a.snap.Window().Round(time.Second).String()},
		})
	}
	if a.snap.Checkpoint {
		a.add(&Finding{ID: "audit-incomplete/checkpoint", Kind: AuditIncomplete, Severity: Medium,
			Summary: fmt.Sprintf("this snapshot is a checkpoint written at %s while the recording was still running, and the recorder never replaced it with its final snapshot (killed, crashed or still running): traffic after that is missing",
				a.snap.End.UTC().Format("2006-01-02 15:04:05Z")),
			Evidence: Evidence{Window: a.snap.Window().Round(time.Second).String()},
		})
	}
	if w := a.snap.Window(); w < a.o.MinWindow {
		a.add(&Finding{ID: "audit-incomplete/short-window", Kind: AuditIncomplete, Severity: Medium,
			Summary:  fmt.Sprintf("the observation window is %s, shorter than %s: rare but required traffic may not have happened yet", w.Round(time.Second), a.o.MinWindow),
			Evidence: Evidence{Window: w.Round(time.Second).String()},
		})
	}
	if st.ConnInsertFailed > 0 {
		a.add(&Finding{ID: "audit-incomplete/conn-full", Kind: AuditIncomplete, Severity: Low,
			Summary: fmt.Sprintf("%d connection orientations could not be remembered; those packets' direction came from the port heuristic", st.ConnInsertFailed),
		})
	}
}

// interruptionText: "interrupted by SIGTERM at 2026-11-26 07:04:10Z, after
// 4m10s of a planned 10m0s (reason)".
func interruptionText(s *snapshot.Snapshot) string {
	in := s.Interrupted
	var b strings.Builder
	if in.Signal == "error" {
		b.WriteString("stopped by an error")
	} else {
		b.WriteString("interrupted by " + in.Signal)
	}
	at := in.At
	if at.IsZero() {
		at = s.End
	}
	fmt.Fprintf(&b, " at %s, after %s", at.UTC().Format("2006-01-02 15:04:05Z"), at.Sub(s.Start).Round(time.Second))
	if !in.PlannedEnd.IsZero() {
		fmt.Fprintf(&b, " of a planned %s", in.PlannedEnd.Sub(s.Start).Round(time.Second))
	}
	if in.Reason != "" {
		fmt.Fprintf(&b, " (%s)", in.Reason)
	}
	return b.String()
}

// services turns per-service losses into ServiceCounts, most packets
// first.
func services(m map[service]*svcLoss) []ServiceCount {
	keys := make([]service, 0, len(m))
	for s := range m {
		keys = append(keys, s)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if m[a].packets != m[b].packets {
			return m[a].packets > m[b].packets
		}
		if a.dir != b.dir {
			return a.dir < b.dir
		}
		if a.proto != b.proto {
			return a.proto < b.proto
		}
		return a.port < b.port
	})
	out := make([]ServiceCount, 0, len(keys))
	for _, s := range keys {
		l := m[s]
		c := s.count()
		c.Packets = l.packets
		c.Peers = l.sketch.Estimate() + l.peers
		levels := make([]int, 0, len(l.levels))
		for bits := range l.levels {
			levels = append(levels, bits)
		}
		// Finest first: /48, /24, then /0 ("other peers").
		sort.Sort(sort.Reverse(sort.IntSlice(levels)))
		for _, bits := range levels {
			c.Folded = append(c.Folded, "/"+strconv.Itoa(bits))
		}
		c.Unchecked = sortedSet(l.zones)
		if len(l.prefixes) > 0 {
			// Straddling prefixes: the levels say nothing more.
			c.Folded = nil
			c.Prefixes = sortedSet(l.prefixes)
			if len(c.Prefixes) > 5 {
				c.Prefixes = append(c.Prefixes[:5], fmt.Sprintf("%d more", len(l.prefixes)-5))
			}
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func capServices(ss []ServiceCount) []ServiceCount {
	if len(ss) > maxServices {
		return ss[:maxServices]
	}
	return ss
}

func sortedSet(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
