package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// awsRule is one entry of SecurityGroupIngress or SecurityGroupEgress
// (AWS::EC2::SecurityGroup Ingress / Egress property types).
type awsRule struct {
	CidrIP      string `json:"CidrIp,omitempty"`
	CidrIPv6    string `json:"CidrIpv6,omitempty"`
	Description string `json:"Description"`
	FromPort    *int   `json:"FromPort,omitempty"`
	IPProtocol  string `json:"IpProtocol"`
	ToPort      *int   `json:"ToPort,omitempty"`

	fam Family
}

type awsTag struct {
	Key   string `json:"Key"`
	Value string `json:"Value"`
}

type awsSGProps struct {
	GroupDescription     string     `json:"GroupDescription"`
	SecurityGroupEgress  []awsRule  `json:"SecurityGroupEgress,omitempty"`
	SecurityGroupIngress []awsRule  `json:"SecurityGroupIngress,omitempty"`
	Tags                 []awsTag   `json:"Tags,omitempty"`
	VpcID                awsRefType `json:"VpcId"`
}

type awsRefType struct {
	Ref string `json:"Ref"`
}

type awsResource struct {
	Type       string     `json:"Type"`
	Properties awsSGProps `json:"Properties"`
}

type awsParam struct {
	Type        string `json:"Type"`
	Description string `json:"Description"`
}

type awsOutput struct {
	Description string     `json:"Description"`
	Value       awsRefType `json:"Value"`
}

type awsMeta struct {
	Generator    string         `json:"generator"`
	Mode         Mode           `json:"mode"`
	Snapshot     string         `json:"snapshot,omitempty"`
	Matrix       string         `json:"matrix,omitempty"`
	Site         string         `json:"site,omitempty"`
	Aggregate    string         `json:"aggregate,omitempty"`
	EgressPolicy Policy         `json:"egress_policy"`
	Review       []string       `json:"review"`
	Management   []string       `json:"management,omitempty"`
	Warnings     []string       `json:"warnings,omitempty"`
	Opened       []string       `json:"opened,omitempty"`
	NotAllowed   []string       `json:"not_allowed,omitempty"`
	NotObserved  []string       `json:"not_observed,omitempty"`
	Widened      []string       `json:"widened,omitempty"`
	Notes        []string       `json:"notes,omitempty"`
	RuleCounts   map[string]int `json:"rule_counts"`
}

type awsTemplate struct {
	AWSTemplateFormatVersion string                 `json:"AWSTemplateFormatVersion"`
	Description              string                 `json:"Description"`
	Metadata                 map[string]awsMeta     `json:"Metadata"`
	Parameters               map[string]awsParam    `json:"Parameters"`
	Resources                map[string]awsResource `json:"Resources"`
	Outputs                  map[string]awsOutput   `json:"Outputs"`
}

// awsDescription keeps the characters AWS allows in security group and
// rule descriptions (a-z A-Z 0-9 space ._-:/()#,@[]+=&;{}!$*), at most
// 255 of them.
func awsDescription(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune(" ._-:/()#,@[]+=&;{}!$*", r):
			b.WriteRune(r)
		default:
			b.WriteByte(' ')
		}
	}
	out := strings.Join(strings.Fields(b.String()), " ")
	if len(out) > 255 {
		out = out[:252] + "..."
	}
	return out
}

func intp(v int) *int { return &v }

// awsRules expands an allowance into security group rules: one per peer
// prefix and per port range (or ICMP type).
func awsRules(a Allow, notes *[]string) []awsRule {
	proto := ""
	type pr struct{ from, to *int }
	var ports []pr
	p := a.Proto
	switch {
	case p == snapshot.TCP || p == snapshot.UDP:
		proto = p.String()
		if len(a.Ports) == 0 {
			ports = []pr{{intp(0), intp(65535)}}
		}
		for _, r := range a.Ports {
			ports = append(ports, pr{intp(int(r.Lo)), intp(int(r.Hi))})
		}
	case p.IsICMP():
		proto = p.String()
		if len(a.Ports) == 0 {
			ports = []pr{{intp(-1), intp(-1)}}
		}
		for _, t := range expandTypes(a.Ports) {
			ports = append(ports, pr{intp(t), intp(-1)})
		}
	default:
		// Security groups match ports only for tcp, udp and ICMP: any
		// other protocol is allowed on every port.
		proto = strconv.Itoa(int(p))
		ports = []pr{{}}
		if p.HasPorts() && len(a.Ports) > 0 {
			*notes = append(*notes, fmt.Sprintf("security groups cannot match %s ports: %s allows every %s port", p, a.Summary(), p))
		}
	}
	desc := awsDescription("flowaudit: " + a.Why())
	var out []awsRule
	peers := a.Peers
	for _, pf := range peers {
		for _, po := range ports {
			r := awsRule{Description: desc, IPProtocol: proto, FromPort: po.from, ToPort: po.to, fam: a.Family}
			if a.Family == IPv4 {
				r.CidrIP = pf.String()
			} else {
				r.CidrIPv6 = pf.String()
			}
			out = append(out, r)
		}
	}
	return out
}

func renderAWS(w *bytes.Buffer, rs *Ruleset, ro RenderOptions) error {
	var notes []string
	lists := map[string][]awsRule{} // "ingress-4" …
	for _, a := range rs.Allows {
		if a.Direction == snapshot.Outbound && rs.EgressPolicy != Drop {
			continue
		}
		dir := "ingress"
		if a.Direction == snapshot.Outbound {
			dir = "egress"
		}
		k := fmt.Sprintf("%s-ipv%d", dir, a.Family)
		lists[k] = append(lists[k], awsRules(a, &notes)...)
	}
	groups := 1
	var over []string
	for _, k := range []string{"ingress-ipv4", "ingress-ipv6", "egress-ipv4", "egress-ipv6"} {
		n := len(lists[k])
		if n > ro.AWSMaxRules {
			over = append(over, fmt.Sprintf("%d %s rules", n, k))
			if g := (n + ro.AWSMaxRules - 1) / ro.AWSMaxRules; g > groups {
				groups = g
			}
		}
	}
	if len(over) > 0 && ro.AWSSpill != "groups" {
		return fmt.Errorf("aws-sg: %s exceed the quota of %d rules per security group, direction and address family. "+
			"A prefix list would not help: AWS counts a referenced prefix list as its maximum entries. "+
			"Widen the peers with --aggregate (reported), ask AWS for a higher quota and pass --aws-max-rules, "+
			"or split the rules over several security groups with --aws-spill groups (at most %d per network interface)",
			strings.Join(over, ", "), ro.AWSMaxRules, AWSMaxGroups)
	}
	if groups > AWSMaxGroups {
		return fmt.Errorf("aws-sg: %s need %d security groups of %d rules, more than the %d an interface takes by default; widen the peers with --aggregate or raise --aws-max-rules",
			strings.Join(over, ", "), groups, ro.AWSMaxRules, AWSMaxGroups)
	}
	if groups > 1 {
		notes = append(notes, fmt.Sprintf("the rules exceed %d per direction and family, so they are split over %d security groups: attach all of them to the instance", ro.AWSMaxRules, groups))
	}

	role := "appliance"
	if rs.Matrix != "" {
		role = rs.Matrix
	}
	t := awsTemplate{
		AWSTemplateFormatVersion: "2010-09-09",
		Description:              comment("flowaudit least-privilege security group for "+role+" (mode "+string(rs.Mode)+"). Review before deploying.", 1000),
		Parameters: map[string]awsParam{"VpcId": {Type: "AWS::EC2::VPC::Id",
			Description: "VPC of the appliance"}},
		Resources: map[string]awsResource{},
		Outputs:   map[string]awsOutput{},
	}
	// counts are the rules each group holds, per direction and family
	// ("ingress-ipv4" in group 1, "ingress-ipv4-2" in group 2 …).
	counts := map[string]int{}
	for g := 0; g < groups; g++ {
		awsCountKey := func(dir string, r awsRule) string {
			k := dir + "-ipv4"
			if r.CidrIPv6 != "" {
				k = dir + "-ipv6"
			}
			if g > 0 {
				k += "-" + strconv.Itoa(g+1)
			}
			return k
		}
		name := "FlowauditSecurityGroup"
		if g > 0 {
			name += strconv.Itoa(g + 1)
		}
		props := awsSGProps{
			GroupDescription: awsDescription(fmt.Sprintf("flowaudit %s (mode %s)%s", role, rs.Mode, map[bool]string{true: fmt.Sprintf(" part %d of %d", g+1, groups), false: ""}[groups > 1])),
			VpcID:            awsRefType{Ref: "VpcId"},
			Tags:             []awsTag{{Key: "Name", Value: awsDescription(fmt.Sprintf("flowaudit-%s-%d", rs.Mode, g+1))}},
		}
		part := func(k string) []awsRule {
			l := lists[k]
			lo, hi := g*ro.AWSMaxRules, (g+1)*ro.AWSMaxRules
			if lo >= len(l) {
				return nil
			}
			if hi > len(l) {
				hi = len(l)
			}
			return l[lo:hi]
		}
		props.SecurityGroupIngress = append(part("ingress-ipv4"), part("ingress-ipv6")...)
		if rs.EgressPolicy == Drop {
			props.SecurityGroupEgress = append(part("egress-ipv4"), part("egress-ipv6")...)
			if len(props.SecurityGroupEgress) == 0 {
				// An empty egress list would leave AWS's default
				// allow-all rule in place; this rule matches nothing.
				props.SecurityGroupEgress = []awsRule{{IPProtocol: "-1", CidrIP: "127.0.0.1/32",
					Description: "flowaudit: no outbound traffic allowed (replaces the default allow-all rule)"}}
			}
		} else if g == 0 {
			props.SecurityGroupEgress = []awsRule{
				{IPProtocol: "-1", CidrIP: "0.0.0.0/0", Description: "flowaudit: all outbound (egress policy accept)"},
				{IPProtocol: "-1", CidrIPv6: "::/0", Description: "flowaudit: all outbound (egress policy accept)"},
			}
		}
		for _, r := range props.SecurityGroupIngress {
			counts[awsCountKey("ingress", r)]++
		}
		for _, r := range props.SecurityGroupEgress {
			counts[awsCountKey("egress", r)]++
		}
		t.Resources[name] = awsResource{Type: "AWS::EC2::SecurityGroup", Properties: props}
		t.Outputs[name+"Id"] = awsOutput{Description: "ID of " + name, Value: awsRefType{Ref: name}}
	}

	meta := awsMeta{
		Generator: strings.TrimSpace("flowaudit " + rs.Tool), Mode: rs.Mode, Snapshot: rs.Source, Matrix: rs.Matrix, Site: rs.Site,
		Aggregate: rs.Aggregate, EgressPolicy: rs.EgressPolicy,
		Review: []string{
			"flowaudit never applies rules: review this template, then deploy it yourself, e.g.",
			"aws cloudformation deploy --template-file FILE --stack-name flowaudit --parameter-overrides VpcId=vpc-...",
			"Security groups are stateful: replies need no rule. Attach the group(s) to the appliance's network interface.",
		},
		Management: rs.Management, Warnings: append(append([]string(nil), rs.Warnings...), notes...), Opened: rs.Opened,
		NotObserved: rs.NotObserved, Notes: rs.Notes, RuleCounts: counts,
	}
	if rs.EgressPolicy != Drop {
		for _, a := range rs.allows(snapshot.Outbound, 0) {
			meta.Notes = append(meta.Notes, "outbound allowance (not enforced, egress policy accept): "+a.Summary()+": "+a.Why())
		}
	}
	for _, l := range rs.NotAllowed {
		meta.NotAllowed = append(meta.NotAllowed, l.String())
	}
	for _, x := range rs.Widened {
		meta.Widened = append(meta.Widened, x.String())
	}
	t.Metadata = map[string]awsMeta{"flowaudit": meta}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(t)
}
