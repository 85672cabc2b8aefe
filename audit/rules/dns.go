package rules

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"go4.org/netipx"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Passive DNS (docs/DNS.md, docs/RULES.md): a rule whose peer is a DNS
// name that the site's hosts: does not bind, and that the recording's DNS
// answers resolved, is allowed toward every address those answers gave
// for the name, in an allowance of its own (Allow.Host), with the name and
// TTL beside the addresses; nftables puts them in a named set per name.

// byDNS: p is a DNS name bound by the recording's answers, not by hosts:.
func (b *builder) byDNS(p catalog.Peer) bool {
	return p.Kind == catalog.PeerDNS && !b.o.Site.BindsHost(p.Host) && b.snap != nil && b.snap.DNS.Resolved(p.Host)
}

// dnsAnswers are the answers that gave an address for host (a name or a
// wildcard), sorted by address and name.
func (b *builder) dnsAnswers(host string) []snapshot.DNSName {
	var out []snapshot.DNSName
	for _, n := range b.snap.DNS.Names {
		if snapshot.MatchName(host, n.Name) {
			out = append(out, n)
		}
	}
	return out
}

// dnsSet is every address the answers gave for host.
func (b *builder) dnsSet(host string) *netipx.IPSet {
	var sb netipx.IPSetBuilder
	for _, n := range b.dnsAnswers(host) {
		sb.Add(n.Addr)
	}
	s, _ := sb.IPSet()
	return s
}

// dnsHosts fills Ruleset.Hosts from the allowances built from DNS answers
// and adds the refresh warning.
func (b *builder) dnsHosts() {
	seen := map[string]bool{}
	for _, a := range b.rs.Allows {
		if a.Host == "" || seen[a.Host] {
			continue
		}
		seen[a.Host] = true
		b.rs.Hosts = append(b.rs.Hosts, HostAddrs{Host: a.Host, Answers: b.dnsAnswers(a.Host)})
	}
	if len(b.rs.Hosts) == 0 {
		return
	}
	for i := range b.rs.Allows {
		a := &b.rs.Allows[i]
		h := b.rs.host(a.Host)
		if h == nil {
			continue
		}
		a.HostNote = b.rs.hostNote(*a)
		a.PeerNotes = map[netip.Prefix]string{}
		for _, p := range a.Peers {
			a.PeerNotes[p] = h.prefixNote(p)
		}
	}
	sort.Slice(b.rs.Hosts, func(i, j int) bool { return b.rs.Hosts[i].Host < b.rs.Hosts[j].Host })
	names := make([]string, len(b.rs.Hosts))
	minTTL := uint32(0)
	for i, h := range b.rs.Hosts {
		names[i] = h.Host
		for _, n := range h.Answers {
			if minTTL == 0 || n.TTL < minTTL {
				minTTL = n.TTL
			}
		}
	}
	b.rs.Warnings = append(b.rs.Warnings, fmt.Sprintf("FQDN allowances need refreshing: the addresses of %s were learned from the DNS answers of the recording (shortest TTL %s) and will change; "+
		"refresh them before they expire (nftables: one nft command per name, shown above its set; other targets: re-run flowaudit rules on a new recording), or bind the names under hosts: in the site file",
		strings.Join(names, ", "), time.Duration(minTTL)*time.Second))
}

// host is the HostAddrs of a name, nil if none.
func (rs *Ruleset) host(name string) *HostAddrs {
	for i := range rs.Hosts {
		if rs.Hosts[i].Host == name {
			return &rs.Hosts[i]
		}
	}
	return nil
}

// addrNote is "data.example.com ttl 60s" for the answers that gave addr
// (names joined), for a comment beside the address.
func (h *HostAddrs) addrNote(addr netip.Addr) string {
	var names []string
	var ttl uint32
	for _, n := range h.Answers {
		if n.Addr == addr {
			names = append(names, n.Name)
			ttl = max(ttl, n.TTL)
		}
	}
	if len(names) == 0 {
		return "dns " + h.Host
	}
	return fmt.Sprintf("dns %s ttl %ds", strings.Join(uniq(names), ","), ttl)
}

// hostNote is the comment part of an allowance built from DNS answers:
// "dns data.example.com ttl 60s, refresh".
func (rs *Ruleset) hostNote(a Allow) string {
	h := rs.host(a.Host)
	if h == nil {
		return ""
	}
	var ttl uint32
	for _, n := range h.Answers {
		if ttl == 0 || n.TTL < ttl {
			ttl = n.TTL
		}
	}
	return fmt.Sprintf("dns %s ttl %ds, refresh", a.Host, ttl)
}

// prefixNote is addrNote for a merged prefix: the note of its address
// when it is one address, else the host's note.
func (h *HostAddrs) prefixNote(p netip.Prefix) string {
	if p.IsSingleIP() {
		return h.addrNote(p.Addr())
	}
	return "dns " + h.Host
}
