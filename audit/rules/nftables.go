package rules

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// nftCommentMax is the longest rule comment nft accepts (bytes).
const nftCommentMax = 127

// icmpv6Infra are the ICMPv6 types IPv6 cannot work without: router and
// neighbour discovery, multicast listener queries and reports (RFC 4890).
var icmpv6Infra = []string{"nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert",
	"mld-listener-query", "mld-listener-report", "mld2-listener-report"}

// icmpv6InfraTypes are the same as numbers, for ip6tables.
var icmpv6InfraTypes = []int{133, 134, 135, 136, 130, 131, 143}

func renderNFT(w *bytes.Buffer, rs *Ruleset) error {
	howto := []string{
		"Check, then apply as root (replaces table inet flowaudit and touches nothing else):",
		"  nft -c -f FILE    # check only",
		"  nft -f FILE       # apply",
		"Roll back: nft delete table inet flowaudit",
		"Counters: nft list table inet flowaudit (per rule, and per peer in the sets).",
		"",
	}
	howto = append(howto, rs.hostCaveat(hostFirewallCaveat)...)
	w.WriteString("#!/usr/sbin/nft -f\n")
	w.WriteString(prefixed("# ", rs.header(NFTables, howto)))
	w.WriteString("\n")
	// Create-then-delete makes the file idempotent: applying it again
	// replaces the table in one transaction.
	w.WriteString("table inet flowaudit\ndelete table inet flowaudit\n\n")
	w.WriteString("table inet flowaudit {\n")

	sets := &nftSets{names: map[string]string{}, rs: rs}
	var in, out []string
	for _, a := range rs.allows(snapshot.Inbound, 0) {
		in = append(in, nftRule(a, sets))
	}
	for _, a := range rs.allows(snapshot.Outbound, 0) {
		out = append(out, nftRule(a, sets))
	}
	for _, s := range sets.defs {
		w.WriteString(s)
	}

	w.WriteString("\tchain input {\n")
	w.WriteString("\t\ttype filter hook input priority filter; policy drop;\n")
	w.WriteString("\t\tiif \"lo\" accept\n")
	w.WriteString("\t\tct state established,related accept\n")
	w.WriteString("\t\tct state invalid drop\n")
	fmt.Fprintf(w, "\t\ticmpv6 type { %s } accept\n", strings.Join(icmpv6Infra, ", "))
	for _, r := range in {
		w.WriteString("\t\t" + r + "\n")
	}
	w.WriteString("\t\tcounter comment \"not allowed: dropped by the policy\"\n")
	w.WriteString("\t}\n\n")

	w.WriteString("\tchain output {\n")
	fmt.Fprintf(w, "\t\ttype filter hook output priority filter; policy %s;\n", rs.EgressPolicy)
	if rs.EgressPolicy == Drop {
		w.WriteString("\t\toif \"lo\" accept\n")
		w.WriteString("\t\tct state established,related accept\n")
		fmt.Fprintf(w, "\t\ticmpv6 type { %s } accept\n", strings.Join(icmpv6Infra, ", "))
	}
	for _, r := range out {
		w.WriteString("\t\t" + r + "\n")
	}
	if rs.EgressPolicy == Drop {
		w.WriteString("\t\tcounter comment \"not allowed: dropped by the policy\"\n")
	}
	w.WriteString("\t}\n")
	w.WriteString("}\n")
	return nil
}

// nftSets names the peer sets: one interval set per distinct peer list,
// per direction and family, numbered in rule order.
type nftSets struct {
	names map[string]string
	count map[string]int
	defs  []string
	rs    *Ruleset
}

func (s *nftSets) name(a Allow) string {
	if a.Host != "" {
		if h := s.rs.host(a.Host); h != nil {
			return s.hostSet(a, h)
		}
	}
	dir := "in"
	if a.Direction == snapshot.Outbound {
		dir = "out"
	}
	base := fmt.Sprintf("%s_v%d", dir, a.Family)
	key := base + "|" + prefixList(a.Peers)
	if n, ok := s.names[key]; ok {
		return n
	}
	if s.count == nil {
		s.count = map[string]int{}
	}
	s.count[base]++
	n := fmt.Sprintf("%s_%d", base, s.count[base])
	s.names[key] = n
	typ := "ipv4_addr"
	if a.Family == IPv6 {
		typ = "ipv6_addr"
	}
	el := make([]string, len(a.Peers))
	for i, p := range a.Peers {
		el[i] = peerText(p)
	}
	s.defs = append(s.defs, fmt.Sprintf("\tset %s {\n\t\ttype %s\n\t\tflags interval\n\t\tauto-merge\n\t\tcounter\n\t\telements = { %s }\n\t}\n\n",
		n, typ, strings.Join(el, ", ")))
	return n
}

// hostSet names and defines the named set of a DNS name's addresses
// (docs/DNS.md): one per name and family, each address with the names and
// TTL its answers gave, so a refresh is one nft command.
func (s *nftSets) hostSet(a Allow, h *HostAddrs) string {
	n := fmt.Sprintf("dns_%s_v%d", nftIdent(h.Host), a.Family)
	key := "host|" + n
	if _, ok := s.names[key]; ok {
		return n
	}
	s.names[key] = n
	typ := "ipv4_addr"
	if a.Family == IPv6 {
		typ = "ipv6_addr"
	}
	var el, addrs []string
	seen := map[netip.Addr]bool{}
	var ttl uint32
	for _, ans := range h.Answers {
		if seen[ans.Addr] || ans.Addr.Is4() != (a.Family == IPv4) {
			continue
		}
		seen[ans.Addr] = true
		if ttl == 0 || ans.TTL < ttl {
			ttl = ans.TTL
		}
		addrs = append(addrs, ans.Addr.String())
		el = append(el, fmt.Sprintf("%s comment %q", ans.Addr, comment(h.addrNote(ans.Addr), nftCommentMax)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\t# %s: %d %s from the recording's DNS answers (shortest TTL %ds); they change. Refresh in one command:\n",
		h.Host, len(addrs), map[bool]string{true: "address", false: "addresses"}[len(addrs) == 1], ttl)
	fmt.Fprintf(&b, "\t#   nft 'flush set inet flowaudit %s; add element inet flowaudit %s { NEW-ADDRESSES }'\n", n, n)
	fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n\t\tcounter\n\t\tcomment %q\n\t\telements = { %s }\n\t}\n\n",
		n, typ, comment("dns "+h.Host+": from DNS answers, refresh", nftCommentMax), strings.Join(el, ",\n\t\t\t     "))
	s.defs = append(s.defs, b.String())
	return n
}

// nftIdent turns a DNS name into the part of a set name: letters, digits
// and '_' ("*.example.com" → "any_example_com").
func nftIdent(host string) string {
	host = strings.Replace(host, "*.", "any.", 1)
	var b strings.Builder
	for _, r := range strings.ToLower(host) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

func nftRule(a Allow, sets *nftSets) string {
	var parts []string
	switch {
	case a.AnyPeer && a.Family == IPv4:
		parts = append(parts, "meta nfproto ipv4")
	case a.AnyPeer:
		parts = append(parts, "meta nfproto ipv6")
	default:
		fam := "ip"
		if a.Family == IPv6 {
			fam = "ip6"
		}
		addr := "saddr"
		if a.Direction == snapshot.Outbound {
			addr = "daddr"
		}
		parts = append(parts, fmt.Sprintf("%s %s @%s", fam, addr, sets.name(a)))
	}
	parts = append(parts, nftMatch(a))
	c := nftComment(a)
	if note := sets.rs.hostNote(a); note != "" {
		c += " (" + note + ")"
	}
	parts = append(parts, "counter accept", fmt.Sprintf("comment %q", comment(c, nftCommentMax)))
	return strings.Join(parts, " ")
}

func nftComment(a Allow) string {
	if a.Management {
		return "management session kept: " + strings.Join(a.Rules, ", ")
	}
	return strings.Join(a.Rules, ", ")
}

// nftMatch is the protocol/port part of a rule.
func nftMatch(a Allow) string {
	p := a.Proto
	switch {
	case p.HasPorts() && len(a.Ports) == 0:
		return "meta l4proto " + p.String()
	case p.HasPorts():
		return fmt.Sprintf("%s dport %s", p, nftValues(a.Ports, nil))
	case p == snapshot.ICMP && len(a.Ports) == 0:
		return "meta l4proto icmp"
	case p == snapshot.ICMPv6 && len(a.Ports) == 0:
		return "meta l4proto ipv6-icmp"
	case p == snapshot.ICMP:
		return "icmp type " + nftValues(a.Ports, map[uint16]string{8: "echo-request"})
	case p == snapshot.ICMPv6:
		return "icmpv6 type " + nftValues(a.Ports, map[uint16]string{128: "echo-request"})
	case p == snapshot.GRE || p == snapshot.ESP || p == snapshot.AH:
		return "meta l4proto " + p.String()
	}
	return "meta l4proto " + strconv.Itoa(int(p))
}

// nftValues is "22" or "{ 22, 9000-9001 }"; names replace single values.
func nftValues(rs []catalog.PortRange, names map[uint16]string) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		switch {
		case r.Lo == r.Hi && names[r.Lo] != "":
			s[i] = names[r.Lo]
		case r.Lo == r.Hi:
			s[i] = strconv.Itoa(int(r.Lo))
		default:
			s[i] = fmt.Sprintf("%d-%d", r.Lo, r.Hi)
		}
	}
	if len(s) == 1 {
		return s[0]
	}
	return "{ " + strings.Join(s, ", ") + " }"
}
