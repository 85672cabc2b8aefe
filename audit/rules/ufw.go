package rules

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// ufwProtos are the protocols ufw's command line can match.
var ufwProtos = map[snapshot.Proto]bool{snapshot.TCP: true, snapshot.UDP: true, snapshot.GRE: true, snapshot.ESP: true, snapshot.AH: true}

// ufwDockerCaveat is ufw's form of hostFirewallCaveat.
var ufwDockerCaveat = []string{
	"DOCKER: ports published by Docker containers BYPASS ufw. Docker DNATs them in PREROUTING and",
	"forwards them, so ufw's INPUT rules never see that traffic: these rules do not restrict them.",
	"Restrict published ports in the DOCKER-USER chain (/etc/ufw/after.rules) or in a network/cloud",
	"firewall.",
}

func renderUFW(w *bytes.Buffer, rs *Ruleset) error {
	howto := []string{
		"An ordered ufw script: ufw takes the first rule that matches and appends new rules, so the",
		"management sessions come first and the default policies last. Preview, then run as root:",
		"  sed 's/^ufw /ufw --dry-run /' FILE | sh    # preview only",
		"  sh FILE                                    # add the rules",
		"It does not reset ufw (existing rules stay: review 'ufw status numbered') and does not enable it:",
		"check 'ufw show added', then 'ufw enable'. IPv6 rules need IPV6=yes in /etc/default/ufw.",
		"",
	}
	howto = append(howto, rs.hostCaveat(ufwDockerCaveat)...)
	howto = append(howto, "ICMP: ufw's before.rules accept ICMP echo from any peer; ufw cannot restrict it by peer here.")
	w.WriteString("#!/bin/sh\n")
	w.WriteString(prefixed("# ", rs.header(UFW, howto)))
	w.WriteString("\nset -e\n\n")
	for _, a := range rs.allows(snapshot.Inbound, 0) {
		writeUFW(w, a, "in")
	}
	outs := rs.allows(snapshot.Outbound, 0)
	if rs.EgressPolicy == Drop {
		for _, a := range outs {
			writeUFW(w, a, "out")
		}
	} else if len(outs) > 0 {
		w.WriteString("# Outbound allowances, not added while outgoing traffic is allowed by default:\n")
		for _, a := range outs {
			fmt.Fprintf(w, "#   %s: %s\n", a.Summary(), a.Why())
		}
		w.WriteString("\n")
	}
	w.WriteString("ufw default deny incoming\n")
	if rs.EgressPolicy == Drop {
		w.WriteString("ufw default deny outgoing\n")
	} else {
		w.WriteString("ufw default allow outgoing\n")
	}
	return nil
}

func writeUFW(w *bytes.Buffer, a Allow, dir string) {
	fmt.Fprintf(w, "# %s: %s\n", a.Summary(), a.Why())
	if !ufwProtos[a.Proto] {
		fmt.Fprintf(w, "# NOT ADDED: ufw's command line cannot match %s; add it to /etc/ufw/before.rules if needed.\n\n", a.Proto)
		return
	}
	peers := []string{"any"}
	if a.AnyPeer {
		peers = []string{"0.0.0.0/0"}
		if a.Family == IPv6 {
			peers = []string{"::/0"}
		}
	} else {
		peers = peers[:0]
		for _, p := range a.Peers {
			peers = append(peers, peerText(p))
		}
	}
	for i, peer := range peers {
		c := comment(ufwComment(a), 200)
		if !a.AnyPeer && a.PeerNotes[a.Peers[i]] != "" {
			c = comment(ufwComment(a)+" "+a.PeerNotes[a.Peers[i]], 200)
		}
		var ends []string // "from X to any [port P]" or "to X [port P]"
		if a.Proto.HasPorts() && len(a.Ports) > 0 {
			for _, chunk := range chunkPorts(a.Ports, MaxMultiport) {
				ends = append(ends, fmt.Sprintf("%s port %s", ufwEnd(dir, peer), portsText(chunk, ",", ":")))
			}
		} else {
			ends = []string{ufwEnd(dir, peer)}
		}
		for _, e := range ends {
			fmt.Fprintf(w, "ufw allow %s proto %s %s comment '%s'\n", dir, a.Proto, e, c)
		}
	}
	w.WriteString("\n")
}

func ufwEnd(dir, peer string) string {
	if dir == "out" {
		return "to " + peer
	}
	return "from " + peer + " to any"
}

func ufwComment(a Allow) string {
	if a.Management {
		return "flowaudit: management session kept"
	}
	return "flowaudit: " + strings.Join(a.Rules, ", ")
}
