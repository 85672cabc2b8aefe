package audit

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Passive DNS (docs/DNS.md): a rule whose peer is a DNS name ("dns:
// data.alienvault.com", or a wildcard "*.alienvault.com") that the site's
// hosts: does not bind is bound by the answers the recording saw
// (snapshot.DNS). The name is bound when some answer gave an address for
// it (directly or through a CNAME chain); a peer is then inside when an
// answer gave that peer's address for the name before the traffic's first
// packet, or at most the answer's TTL after it. A name no answer
// mentioned stays unbound: its traffic is unverified, with a hint.

// dnsContains is contains for a DNS name that the site does not bind.
func (a *auditor) dnsContains(host string, addr netip.Addr, first time.Time) (ok, bound bool) {
	d := a.snap.DNS
	if !a.dnsResolved(host) {
		return false, false
	}
	for _, n := range d.NamesOf(addr) {
		if snapshot.MatchName(host, n.Name) && n.ValidFor(first) {
			return true, true
		}
	}
	return false, true
}

// dnsContainsPrefix is containsPrefix for a DNS name the site does not
// bind: a folded prefix is never wholly one host's, so it is at best
// partly inside (some address given for the name lies in it).
func (a *auditor) dnsContainsPrefix(host string, p netip.Prefix) (inside, overlaps, bound bool) {
	if !a.dnsResolved(host) {
		return false, false, false
	}
	p = unmapPrefix(p)
	for _, n := range a.snap.DNS.Names {
		if snapshot.MatchName(host, n.Name) && p.Contains(n.Addr) {
			return p.IsSingleIP(), true, true
		}
	}
	return false, false, true
}

// dnsResolved: some answer of the recording gave an address for host.
func (a *auditor) dnsResolved(host string) bool {
	if a.dnsSeen == nil {
		a.dnsSeen = map[string]bool{}
	}
	r, ok := a.dnsSeen[host]
	if !ok {
		r = a.snap.DNS.Resolved(host)
		a.dnsSeen[host] = r
	}
	return r
}

// hostNames are the names a report shows beside addr: those the
// recording's DNS answers gave for it, and the site's hosts: entries that
// contain it (sorted, at most maxNames).
func hostNames(snap *snapshot.Snapshot, site *catalog.Site, addr netip.Addr) []string {
	set := map[string]bool{}
	for _, n := range snap.DNS.NamesOf(addr) {
		set[n.Name] = true
	}
	if site != nil {
		for h, s := range site.Hosts {
			if s.Contains(addr.Unmap()) {
				set[h] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	if len(out) > maxNames {
		out = append(out[:maxNames], "…")
	}
	return out
}

const maxNames = 4

// nameTopPeers sets PeerCount.Names on every listed peer of the report.
func (r *Report) nameTopPeers(snap *snapshot.Snapshot, site *catalog.Site) {
	if snap.DNS == nil && (site == nil || len(site.Hosts) == 0) {
		return
	}
	name := func(ps []PeerCount) {
		for i := range ps {
			if ps[i].Addr.IsValid() {
				ps[i].Names = hostNames(snap, site, ps[i].Addr)
			}
		}
	}
	for _, f := range r.Findings {
		name(f.Evidence.TopPeers)
	}
	for i := range r.Rules {
		rs := &r.Rules[i]
		name(rs.Evidence.TopPeers)
		name(rs.Allowed.TopPeers)
		if rs.OutOfZone != nil {
			name(rs.OutOfZone.TopPeers)
		}
	}
}

// allowedNames describes what a DNS rule allows, for a finding: the
// addresses the recording's answers gave for the name, or the site's
// static binding.
func (a *auditor) allowedNames(p catalog.Peer) string {
	if p.Kind != catalog.PeerDNS {
		return ""
	}
	if a.o.Site.BindsHost(p.Host) {
		return "the addresses hosts: binds to " + p.Host + " in the site file"
	}
	var names []string
	seen := map[string]bool{}
	for _, n := range a.snap.DNS.Names {
		if snapshot.MatchName(p.Host, n.Name) && !seen[n.Name] {
			seen[n.Name] = true
			names = append(names, n.Name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	addrs := map[netip.Addr]bool{}
	for _, n := range a.snap.DNS.Names {
		if snapshot.MatchName(p.Host, n.Name) {
			addrs[n.Addr] = true
		}
	}
	return "allowed: " + strings.Join(names, ", ") + " (" + plural(len(addrs), "address", "addresses") + " seen in DNS answers)"
}

// dnsOutOfZone completes a peer-out-of-zone summary for a DNS rule: the
// hosts reached, by name when an answer gave one, and what the rule allows.
func (a *auditor) dnsOutOfZone(p catalog.Peer, ev Evidence) string {
	var reached []string
	for i, pc := range ev.TopPeers {
		if i == 3 {
			break
		}
		if !pc.Addr.IsValid() {
			reached = append(reached, pc.String())
			continue
		}
		names := hostNames(a.snap, a.o.Site, pc.Addr)
		late := false
		for _, n := range names {
			if a.o.Site.BindsHost(p.Host) {
				break // the static binding decided, not the answers' times
			}
			late = late || snapshot.MatchName(p.Host, n)
		}
		switch {
		case len(names) == 0:
			reached = append(reached, pc.Addr.String()+" (no DNS name seen for it)")
		case late:
			// Given for the name, but only after the traffic began.
			reached = append(reached, pc.Addr.String()+" ("+strings.Join(names, ", ")+": answered only after this traffic began, beyond the TTL)")
		default:
			reached = append(reached, pc.Addr.String()+" ("+strings.Join(names, ", ")+")")
		}
	}
	out := ""
	if len(reached) > 0 {
		out = "; reached " + strings.Join(reached, ", ")
	}
	if allowed := a.allowedNames(p); allowed != "" {
		out += "; " + allowed
	}
	return out
}

// dnsUnboundHint explains why a DNS rule's traffic could not be checked.
func (a *auditor) dnsUnboundHint(p catalog.Peer) string {
	return fmt.Sprintf("; unverified: no DNS answer for %s was seen in the recording (resolved before it started, "+
		"or over DNS over TLS/HTTPS): record longer or bind it under hosts: in the site file", p.Host)
}

// dnsHostOf is the DNS name of the first rule a peer matched by name (not
// through a zone, and not unverified), for its heat-map column; "" if none.
func dnsHostOf(rules []*ruleObs, unbound bool) string {
	if unbound {
		return ""
	}
	for _, ro := range rules {
		if ro.rule.Peer.Kind == catalog.PeerDNS {
			return ro.rule.Peer.Host
		}
	}
	return ""
}

// DNSInfo summarises a snapshot's passive DNS section for reports.
type DNSInfo struct {
	Answers  uint64 `json:"answers"`
	Dropped  uint64 `json:"dropped"`
	Cut      uint64 `json:"cut,omitempty"`
	Unparsed uint64 `json:"unparsed,omitempty"`
	Evicted  uint64 `json:"evicted,omitempty"`
	// Names counts (address, name) pairs; Hosts distinct names; Addresses
	// distinct addresses.
	Names     int `json:"names"`
	Hosts     int `json:"hosts"`
	Addresses int `json:"addresses"`
}

func dnsInfo(d *snapshot.DNS) *DNSInfo {
	if d == nil {
		return nil
	}
	hosts, addrs := map[string]bool{}, map[netip.Addr]bool{}
	for _, n := range d.Names {
		hosts[n.Name], addrs[n.Addr] = true, true
	}
	return &DNSInfo{Answers: d.Answers, Dropped: d.Dropped, Cut: d.Cut, Unparsed: d.Unparsed, Evicted: d.Evicted,
		Names: len(d.Names), Hosts: len(hosts), Addresses: len(addrs)}
}

// Line is the table's DNS line: "dns: 12 answers, 5 names for 3
// addresses, 0 dropped".
func (d *DNSInfo) Line() string {
	line := fmt.Sprintf("dns: %d answers, %d names for %d addresses, %d dropped by a full ring buffer", d.Answers, d.Hosts, d.Addresses, d.Dropped)
	if d.Cut > 0 {
		line += fmt.Sprintf(", %d cut", d.Cut)
	}
	if d.Unparsed > 0 {
		line += fmt.Sprintf(", %d unparsed", d.Unparsed)
	}
	if d.Evicted > 0 {
		line += fmt.Sprintf(", %d names evicted", d.Evicted)
	}
	return line
}
