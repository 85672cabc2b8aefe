package rules

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// Azure NSG priorities: allow rules from AzureFirstPriority, AzureStep
// apart (so a rule can be inserted by hand between two), the explicit
// deny at AzureDenyPriority, the lowest priority a user rule can have.
const (
	AzureFirstPriority = 100
	AzureStep          = 10
	AzureDenyPriority  = 4096
	azureMaxRules      = 1000 // rules per NSG
	azureDescMax       = 140
)

var azureProtos = map[snapshot.Proto]string{snapshot.TCP: "Tcp", snapshot.UDP: "Udp", snapshot.ICMP: "Icmp",
	snapshot.ICMPv6: "Icmp", snapshot.ESP: "Esp", snapshot.AH: "Ah"}

// AzurePriorities returns the priorities of n allow rules: first
// AzureFirstPriority, AzureStep apart; closer together (but still in
// order, below the deny) when n rules would not fit otherwise.
func AzurePriorities(n int) ([]int, error) {
	last := AzureDenyPriority - 1
	if n > last-AzureFirstPriority+1 {
		return nil, fmt.Errorf("azure-nsg: %d rules in one direction do not fit between priorities %d and %d", n, AzureFirstPriority, last)
	}
	step := AzureStep
	if n > 1 && AzureFirstPriority+(n-1)*step > last {
		step = (last - AzureFirstPriority) / (n - 1)
	}
	out := make([]int, n)
	for i := range out {
		out[i] = AzureFirstPriority + i*step
	}
	return out, nil
}

func renderAzure(w *bytes.Buffer, rs *Ruleset) error {
	howto := []string{
		"A script of Azure CLI commands for one network security group. Review, then run:",
		"  RG=my-resource-group NSG=my-nsg sh FILE",
		"Priorities start at 100, 10 apart, in the order below (management first); rule names carry them.",
		"Run it on an NSG without other rules at these priorities, or delete the old flowaudit-* rules first.",
		"The final explicit deny (priority 4096) overrides Azure's default rules, which allow all VNet",
		"traffic inbound (AllowVnetInBound) and the load balancer (AllowAzureLoadBalancerInBound): if a load",
		"balancer probes the appliance, add an allow for the AzureLoadBalancer service tag.",
		"NSGs are stateful: replies need no rule.",
	}
	var body bytes.Buffer
	var skipped []string
	total := 0
	dirs := []snapshot.Direction{snapshot.Inbound}
	if rs.EgressPolicy == Drop {
		dirs = append(dirs, snapshot.Outbound)
	}
	for _, d := range dirs {
		var list []Allow
		for _, a := range rs.allows(d, 0) {
			if azureProtos[a.Proto] == "" {
				skipped = append(skipped, fmt.Sprintf("NOT ADDED: NSG rules cannot match %s: %s (%s)", a.Proto, a.Summary(), a.Why()))
				continue
			}
			list = append(list, a)
		}
		prios, err := AzurePriorities(len(list))
		if err != nil {
			return err
		}
		dn, short := "Inbound", "in"
		if d == snapshot.Outbound {
			dn, short = "Outbound", "out"
		}
		for i, a := range list {
			peers := make([]string, len(a.Peers))
			for j, p := range a.Peers {
				peers[j] = p.String()
			}
			ports := "'*'"
			if a.Proto.HasPorts() && len(a.Ports) > 0 {
				ports = portsText(a.Ports, " ", "-")
			}
			src, dst := strings.Join(peers, " "), "'*'"
			if d == snapshot.Outbound {
				src, dst = "'*'", strings.Join(peers, " ")
			}
			desc := "flowaudit: " + a.Why()
			if a.Proto.IsICMP() && len(a.Ports) > 0 {
				desc += " (NSG matches all ICMP, not only type " + portsText(a.Ports, ",", "-") + ")"
			}
			fmt.Fprintf(&body, "# %s\n", a.Summary())
			fmt.Fprintf(&body, "az network nsg rule create --resource-group \"$RG\" --nsg-name \"$NSG\" --name flowaudit-%s-%04d --priority %d --direction %s --access Allow --protocol %s --source-address-prefixes %s --source-port-ranges '*' --destination-address-prefixes %s --destination-port-ranges %s --description '%s'\n",
				short, prios[i], prios[i], dn, azureProtos[a.Proto], src, dst, ports, comment(desc, azureDescMax))
			total++
		}
		fmt.Fprintf(&body, "# Everything else %s is denied explicitly.\n", strings.ToLower(dn))
		fmt.Fprintf(&body, "az network nsg rule create --resource-group \"$RG\" --nsg-name \"$NSG\" --name flowaudit-%s-deny-all --priority %d --direction %s --access Deny --protocol '*' --source-address-prefixes '*' --source-port-ranges '*' --destination-address-prefixes '*' --destination-port-ranges '*' --description '%s'\n\n",
			short, AzureDenyPriority, dn, comment("flowaudit: deny all other "+strings.ToLower(dn)+" traffic (overrides the default allow rules)", azureDescMax))
		total++
	}
	if total > azureMaxRules {
		return fmt.Errorf("azure-nsg: %d rules exceed the %d rules an NSG takes; widen the peers with --aggregate", total, azureMaxRules)
	}
	if rs.EgressPolicy != Drop {
		if outs := rs.allows(snapshot.Outbound, 0); len(outs) > 0 {
			body.WriteString("# Outbound allowances, not added while Azure's default outbound rules allow outbound traffic:\n")
			for _, a := range outs {
				fmt.Fprintf(&body, "#   %s: %s\n", a.Summary(), a.Why())
			}
		}
	}
	if len(skipped) > 0 {
		howto = append(howto, skipped...)
	}
	w.WriteString("#!/bin/sh\n")
	w.WriteString(prefixed("# ", rs.header(AzureNSG, howto)))
	w.WriteString("\nset -eu\n")
	w.WriteString(": \"${RG:?set RG to the resource group of the NSG}\"\n")
	w.WriteString(": \"${NSG:?set NSG to the name of the network security group}\"\n\n")
	w.Write(body.Bytes())
	return nil
}
