package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// The checks below are independent of the renderers: they read the
// generated text back and validate it against the target's rules. Render
// runs them on its own output, the tests on every golden file and on
// what the command writes.

// CheckCloudFormation validates a template against the shapes of the
// CloudFormation properties flowaudit writes (AWS::EC2::SecurityGroup and
// its Ingress/Egress property types, as the CloudFormation reference
// defines them) and the security group quotas: unknown keys, missing
// required keys, types, protocol/port combinations, CIDR syntax,
// description length and character set, references, rules per group per
// direction per family.
func CheckCloudFormation(data []byte, maxRules int) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var t map[string]any
	if err := dec.Decode(&t); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	onlyKeys := func(where string, m map[string]any, allowed ...string) {
		for k := range m {
			ok := false
			for _, a := range allowed {
				ok = ok || k == a
			}
			if !ok {
				bad("%s: unknown key %q", where, k)
			}
		}
	}
	onlyKeys("template", t, "AWSTemplateFormatVersion", "Description", "Metadata", "Parameters", "Resources", "Outputs")
	if t["AWSTemplateFormatVersion"] != "2010-09-09" {
		bad("AWSTemplateFormatVersion %v", t["AWSTemplateFormatVersion"])
	}
	if d, ok := t["Description"].(string); !ok || len(d) > 1024 {
		bad("Description missing or longer than 1024 bytes")
	}
	params, _ := t["Parameters"].(map[string]any)
	res, ok := t["Resources"].(map[string]any)
	if !ok || len(res) == 0 {
		return fmt.Errorf("no Resources")
	}
	refOK := func(where string, v any) {
		m, ok := v.(map[string]any)
		if !ok || len(m) != 1 {
			bad("%s: want {\"Ref\": …}, got %v", where, v)
			return
		}
		name, _ := m["Ref"].(string)
		if _, isParam := params[name]; !isParam {
			if _, isRes := res[name]; !isRes {
				bad("%s: Ref %q names no parameter or resource", where, name)
			}
		}
	}
	descRe := regexp.MustCompile(`^[a-zA-Z0-9. _\-:/()#,@\[\]+=&;{}!$*]*$`)
	desc := func(where string, v any, required bool) {
		s, ok := v.(string)
		switch {
		case v == nil && !required:
		case !ok:
			bad("%s: description is not a string", where)
		case len(s) > 255:
			bad("%s: description longer than 255", where)
		case !descRe.MatchString(s):
			bad("%s: description %q has characters AWS rejects", where, s)
		}
	}
	integer := func(where string, v any) (int, bool) {
		n, ok := v.(json.Number)
		if !ok {
			bad("%s: not an integer: %v", where, v)
			return 0, false
		}
		i, err := strconv.Atoi(n.String())
		if err != nil {
			bad("%s: not an integer: %v", where, v)
			return 0, false
		}
		return i, true
	}
	for name, rv := range res {
		r, _ := rv.(map[string]any)
		where := "Resources." + name
		onlyKeys(where, r, "Type", "Properties")
		if r["Type"] != "AWS::EC2::SecurityGroup" {
			bad("%s: Type %v", where, r["Type"])
			continue
		}
		p, _ := r["Properties"].(map[string]any)
		onlyKeys(where+".Properties", p, "GroupDescription", "GroupName", "SecurityGroupEgress", "SecurityGroupIngress", "Tags", "VpcId")
		desc(where+".GroupDescription", p["GroupDescription"], true)
		if v, ok := p["VpcId"]; ok {
			refOK(where+".VpcId", v)
		}
		if tags, ok := p["Tags"]; ok {
			list, _ := tags.([]any)
			for i, tv := range list {
				tag, _ := tv.(map[string]any)
				onlyKeys(fmt.Sprintf("%s.Tags[%d]", where, i), tag, "Key", "Value")
				if _, ok := tag["Key"].(string); !ok {
					bad("%s.Tags[%d]: Key missing", where, i)
				}
				if _, ok := tag["Value"].(string); !ok {
					bad("%s.Tags[%d]: Value missing", where, i)
				}
			}
		}
		for _, dir := range []string{"SecurityGroupIngress", "SecurityGroupEgress"} {
			v, ok := p[dir]
			if !ok {
				continue
			}
			list, ok := v.([]any)
			if !ok {
				bad("%s.%s: not a list", where, dir)
				continue
			}
			allowed := []string{"CidrIp", "CidrIpv6", "Description", "FromPort", "IpProtocol", "SourcePrefixListId",
				"SourceSecurityGroupId", "SourceSecurityGroupName", "SourceSecurityGroupOwnerId", "ToPort"}
			peerKeys := []string{"CidrIp", "CidrIpv6", "SourcePrefixListId", "SourceSecurityGroupId", "SourceSecurityGroupName"}
			if dir == "SecurityGroupEgress" {
				allowed = []string{"CidrIp", "CidrIpv6", "Description", "DestinationPrefixListId", "DestinationSecurityGroupId",
					"FromPort", "IpProtocol", "ToPort"}
				peerKeys = []string{"CidrIp", "CidrIpv6", "DestinationPrefixListId", "DestinationSecurityGroupId"}
			}
			count := map[string]int{}
			for i, ev := range list {
				w := fmt.Sprintf("%s.%s[%d]", where, dir, i)
				e, ok := ev.(map[string]any)
				if !ok {
					bad("%s: not an object", w)
					continue
				}
				onlyKeys(w, e, allowed...)
				n := 0
				for _, k := range peerKeys {
					if _, ok := e[k]; ok {
						n++
					}
				}
				if n != 1 {
					bad("%s: want exactly one of %v", w, peerKeys)
				}
				if c, ok := e["CidrIp"]; ok {
					s, _ := c.(string)
					pf, err := netip.ParsePrefix(s)
					if err != nil || !pf.Addr().Is4() || pf.Masked() != pf {
						bad("%s: CidrIp %v is not a canonical IPv4 CIDR", w, c)
					}
					count["ipv4"]++
				}
				if c, ok := e["CidrIpv6"]; ok {
					s, _ := c.(string)
					pf, err := netip.ParsePrefix(s)
					if err != nil || !pf.Addr().Is6() || pf.Addr().Is4In6() || pf.Masked() != pf {
						bad("%s: CidrIpv6 %v is not a canonical IPv6 CIDR", w, c)
					}
					count["ipv6"]++
				}
				desc(w, e["Description"], false)
				proto, ok := e["IpProtocol"].(string)
				if !ok {
					bad("%s: IpProtocol missing or not a string", w)
					continue
				}
				from, hasFrom := e["FromPort"]
				to, hasTo := e["ToPort"]
				switch proto {
				case "tcp", "udp", "6", "17":
					if !hasFrom || !hasTo {
						bad("%s: %s needs FromPort and ToPort", w, proto)
						continue
					}
					f, ok1 := integer(w+".FromPort", from)
					tt, ok2 := integer(w+".ToPort", to)
					if ok1 && ok2 && (f < 0 || tt > 65535 || f > tt) {
						bad("%s: port range %d-%d", w, f, tt)
					}
				case "icmp", "icmpv6", "1", "58":
					if !hasFrom || !hasTo {
						bad("%s: %s needs FromPort (type) and ToPort (code)", w, proto)
						continue
					}
					f, ok1 := integer(w+".FromPort", from)
					tt, ok2 := integer(w+".ToPort", to)
					if ok1 && ok2 && (f < -1 || f > 255 || tt < -1 || tt > 255 || (f == -1 && tt != -1)) {
						bad("%s: ICMP type %d code %d", w, f, tt)
					}
					if (proto == "icmp" || proto == "1") && e["CidrIpv6"] != nil {
						bad("%s: icmp with an IPv6 CIDR", w)
					}
					if (proto == "icmpv6" || proto == "58") && e["CidrIp"] != nil {
						bad("%s: icmpv6 with an IPv4 CIDR", w)
					}
				case "-1":
					if hasFrom || hasTo {
						bad("%s: all protocols (-1) take no ports", w)
					}
				default:
					n, err := strconv.Atoi(proto)
					if err != nil || n < 0 || n > 255 {
						bad("%s: IpProtocol %q", w, proto)
					}
					if hasFrom || hasTo {
						bad("%s: protocol %s takes no ports (security groups match ports only for tcp, udp and ICMP)", w, proto)
					}
				}
			}
			for fam, n := range count {
				if n > maxRules {
					bad("%s.%s: %d %s rules, quota %d", where, dir, n, fam, maxRules)
				}
			}
		}
	}
	if outs, ok := t["Outputs"].(map[string]any); ok {
		for name, ov := range outs {
			o, _ := ov.(map[string]any)
			onlyKeys("Outputs."+name, o, "Description", "Value", "Export", "Condition")
			refOK("Outputs."+name+".Value", o["Value"])
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return nil
}

var azLine = regexp.MustCompile(`^az network nsg rule create --resource-group "\$RG" --nsg-name "\$NSG" --name (\S+) --priority (\d+) --direction (Inbound|Outbound) --access (Allow|Deny) --protocol (Tcp|Udp|Icmp|Esp|Ah|'\*') --source-address-prefixes (.+?) --source-port-ranges '\*' --destination-address-prefixes (.+?) --destination-port-ranges (.+?) --description '([^']*)'$`)

var azName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,78}[A-Za-z0-9_])?$`)

// CheckAzureScript validates every az line of an azure-nsg script: syntax, names, unique priorities in
// 100–4096 per direction, in file order, allows spaced and a final deny.
func CheckAzureScript(script string) error {
	var errs []string
	prios := map[string][]int{}
	names := map[string]bool{}
	lastAccess := map[string]string{}
	for i, l := range strings.Split(script, "\n") {
		if !strings.HasPrefix(l, "az ") {
			continue
		}
		m := azLine.FindStringSubmatch(l)
		if m == nil {
			errs = append(errs, fmt.Sprintf("line %d: not a well-formed rule: %s", i+1, l))
			continue
		}
		name, prio, dir, access, desc := m[1], m[2], m[3], m[4], m[9]
		p, _ := strconv.Atoi(prio)
		if p < 100 || p > 4096 {
			errs = append(errs, fmt.Sprintf("line %d: priority %d", i+1, p))
		}
		if !azName.MatchString(name) || names[name] {
			errs = append(errs, fmt.Sprintf("line %d: name %q invalid or repeated", i+1, name))
		}
		names[name] = true
		if len(desc) > 140 {
			errs = append(errs, fmt.Sprintf("line %d: description longer than 140", i+1))
		}
		for _, pf := range strings.Fields(m[6] + " " + m[7]) {
			if pf == "'*'" {
				continue
			}
			if _, err := netip.ParsePrefix(pf); err != nil {
				errs = append(errs, fmt.Sprintf("line %d: prefix %q", i+1, pf))
			}
		}
		if l := prios[dir]; len(l) > 0 && p <= l[len(l)-1] {
			errs = append(errs, fmt.Sprintf("line %d: priority %d not above the previous %d", i+1, p, l[len(l)-1]))
		}
		prios[dir] = append(prios[dir], p)
		lastAccess[dir] = access
	}
	for dir, l := range prios {
		if lastAccess[dir] != "Deny" || l[len(l)-1] != 4096 {
			errs = append(errs, fmt.Sprintf("%s: no final deny at 4096", dir))
		}
	}
	if len(prios["Inbound"]) == 0 {
		errs = append(errs, "no inbound rules")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return nil
}
