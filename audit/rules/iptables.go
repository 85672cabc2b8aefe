package rules

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// iptCommentMax is the longest comment the xt_comment match takes.
const iptCommentMax = 255

func renderIPT(w *bytes.Buffer, rs *Ruleset, fam Family) error {
	tool, target, other, otherTarget := "iptables", IPTables, IPv6, IP6Tables
	if fam == IPv6 {
		tool, target, other, otherTarget = "ip6tables", IP6Tables, IPv4, IPTables
	}
	howto := []string{
		fmt.Sprintf("This file holds the %s rules only. Check, then apply as root:", fam),
		fmt.Sprintf("  %s-restore --test --noflush FILE    # check only", tool),
		fmt.Sprintf("  %s-restore --noflush FILE           # apply", tool),
		"--noflush replaces the INPUT chain" + map[bool]string{true: " and the OUTPUT chain", false: ""}[rs.EgressPolicy == Drop] + " and keeps everything else (FORWARD,",
		"Docker's chains, other tables). Without --noflush the whole filter table is replaced.",
		"Do not combine with ufw, which keeps its own chains in INPUT.",
	}
	var n int
	for _, a := range rs.Allows {
		if a.Family == other {
			n++
		}
	}
	if n > 0 {
		howto = append(howto, fmt.Sprintf("%s: %d allowances are not in this file; generate them with --target %s.", other, n, otherTarget))
	}
	howto = append(howto, "")
	howto = append(howto, rs.hostCaveat(hostFirewallCaveat)...)
	w.WriteString(prefixed("# ", rs.header(target, howto)))
	w.WriteString("\n*filter\n")
	w.WriteString(":INPUT DROP [0:0]\n")
	if rs.EgressPolicy == Drop {
		w.WriteString(":OUTPUT DROP [0:0]\n")
	}
	w.WriteString("-F INPUT\n")
	w.WriteString("-A INPUT -i lo -j ACCEPT\n")
	w.WriteString("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	w.WriteString("-A INPUT -m conntrack --ctstate INVALID -j DROP\n")
	if fam == IPv6 {
		for _, t := range icmpv6InfraTypes {
			fmt.Fprintf(w, "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type %d -j ACCEPT\n", t)
		}
	}
	for _, a := range rs.allows(snapshot.Inbound, fam) {
		for _, r := range iptRules(a) {
			w.WriteString("-A INPUT " + r + "\n")
		}
	}
	outs := rs.allows(snapshot.Outbound, fam)
	if rs.EgressPolicy == Drop {
		w.WriteString("-F OUTPUT\n")
		w.WriteString("-A OUTPUT -o lo -j ACCEPT\n")
		w.WriteString("-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
		if fam == IPv6 {
			for _, t := range icmpv6InfraTypes {
				fmt.Fprintf(w, "-A OUTPUT -p ipv6-icmp -m icmp6 --icmpv6-type %d -j ACCEPT\n", t)
			}
		}
		for _, a := range outs {
			for _, r := range iptRules(a) {
				w.WriteString("-A OUTPUT " + r + "\n")
			}
		}
	} else if len(outs) > 0 {
		w.WriteString("# Outbound allowances, not enforced while the output policy is accept (OUTPUT is left alone):\n")
		for _, a := range outs {
			fmt.Fprintf(w, "#   %s: %s\n", a.Summary(), a.Why())
		}
	}
	w.WriteString("COMMIT\n")
	return nil
}

// iptRules expands an allowance into rule specifications: one per peer
// prefix and per multiport chunk (at most 15 ports, a range counting two)
// or ICMP type.
func iptRules(a Allow) []string {
	var addrs []string
	flag := "-s"
	if a.Direction == snapshot.Outbound {
		flag = "-d"
	}
	var notes []string // per address: the names and TTL DNS gave (Allow.PeerNotes)
	if a.AnyPeer {
		addrs = []string{""}
	} else {
		for _, p := range a.Peers {
			addrs = append(addrs, fmt.Sprintf("%s %s ", flag, p))
			notes = append(notes, a.PeerNotes[p])
		}
	}
	var matches []string
	p := a.Proto
	switch {
	case p.HasPorts() && len(a.Ports) == 0:
		matches = []string{"-p " + p.String()}
	case p.HasPorts():
		for _, chunk := range chunkPorts(a.Ports, MaxMultiport) {
			if len(chunk) == 1 {
				matches = append(matches, fmt.Sprintf("-p %s -m %s --dport %s", p, p, portsText(chunk, ",", ":")))
			} else {
				matches = append(matches, fmt.Sprintf("-p %s -m multiport --dports %s", p, portsText(chunk, ",", ":")))
			}
		}
	case p == snapshot.ICMP && len(a.Ports) == 0:
		matches = []string{"-p icmp"}
	case p == snapshot.ICMPv6 && len(a.Ports) == 0:
		matches = []string{"-p ipv6-icmp"}
	case p.IsICMP():
		for _, t := range expandTypes(a.Ports) {
			if p == snapshot.ICMP {
				matches = append(matches, fmt.Sprintf("-p icmp -m icmp --icmp-type %d", t))
			} else {
				matches = append(matches, fmt.Sprintf("-p ipv6-icmp -m icmp6 --icmpv6-type %d", t))
			}
		}
	case p == snapshot.GRE || p == snapshot.ESP || p == snapshot.AH:
		matches = []string{"-p " + p.String()}
	default:
		matches = []string{"-p " + strconv.Itoa(int(p))}
	}
	c := comment(iptComment(a), iptCommentMax)
	var out []string
	for i, ad := range addrs {
		ci := c
		if i < len(notes) && notes[i] != "" {
			ci = comment(strings.Join(a.Rules, ", ")+" "+notes[i], iptCommentMax)
		}
		for _, m := range matches {
			out = append(out, fmt.Sprintf("%s%s -m comment --comment \"%s\" -j ACCEPT", ad, m, ci))
		}
	}
	return out
}

func iptComment(a Allow) string {
	if a.Management {
		return "flowaudit: management session kept"
	}
	return "flowaudit: " + strings.Join(a.Rules, ", ")
}

func expandTypes(rs []catalog.PortRange) []int {
	var out []int
	for _, r := range rs {
		for t := int(r.Lo); t <= int(r.Hi); t++ {
			out = append(out, t)
		}
	}
	return out
}
