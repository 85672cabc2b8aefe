package rules

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// Target is a firewall the rules are written for.
type Target string

const (
	NFTables  Target = "nftables"  // an nft -f script: table inet flowaudit
	IPTables  Target = "iptables"  // an iptables-restore file (IPv4)
	IP6Tables Target = "ip6tables" // an ip6tables-restore file (IPv6)
	UFW       Target = "ufw"       // a shell script of ufw commands
	AWSSG     Target = "aws-sg"    // a CloudFormation template with a security group
	AzureNSG  Target = "azure-nsg" // a shell script of az network nsg rule create
)

// Targets lists every target.
var Targets = []Target{NFTables, IPTables, IP6Tables, UFW, AWSSG, AzureNSG}

// ParseTarget parses a target name.
func ParseTarget(s string) (Target, error) {
	for _, t := range Targets {
		if string(t) == s {
			return t, nil
		}
	}
	names := make([]string, len(Targets))
	for i, t := range Targets {
		names[i] = string(t)
	}
	return "", fmt.Errorf("unknown target %q (want %s)", s, strings.Join(names, ", "))
}

// RenderOptions tune targets with limits.
type RenderOptions struct {
	// AWSMaxRules is the rules quota per security group, per direction
	// and address family (default 60, AWS's default quota).
	AWSMaxRules int
	// AWSSpill says what to do above the quota: "fail" (default) or
	// "groups" (split into several security groups, at most
	// AWSMaxGroups, all to be attached to the instance).
	AWSSpill string
}

// Defaults for RenderOptions.
const (
	DefaultAWSMaxRules = 60
	AWSMaxGroups       = 5 // security groups per network interface (AWS default quota)
)

// Render writes rs for target t. Nothing is written if it fails.
func Render(w io.Writer, rs *Ruleset, t Target, ro RenderOptions) error {
	if ro.AWSMaxRules == 0 {
		ro.AWSMaxRules = DefaultAWSMaxRules
	}
	if ro.AWSSpill == "" {
		ro.AWSSpill = "fail"
	}
	var buf bytes.Buffer
	var err error
	switch t {
	case NFTables:
		err = renderNFT(&buf, rs)
	case IPTables:
		err = renderIPT(&buf, rs, IPv4)
	case IP6Tables:
		err = renderIPT(&buf, rs, IPv6)
	case UFW:
		err = renderUFW(&buf, rs)
	case AWSSG:
		err = renderAWS(&buf, rs, ro)
	case AzureNSG:
		err = renderAzure(&buf, rs)
	default:
		_, err = ParseTarget(string(t))
	}
	if err != nil {
		return err
	}
	// Self-check: the output must pass the same shape checks the tests
	// apply, or nothing is written.
	switch t {
	case AWSSG:
		err = CheckCloudFormation(buf.Bytes(), ro.AWSMaxRules)
	case AzureNSG:
		err = CheckAzureScript(buf.String())
	}
	if err != nil {
		return fmt.Errorf("%s: generated output fails its own check (a flowaudit bug, please report): %w", t, err)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// allows returns the allowances of one direction (and family, 0: both).
func (rs *Ruleset) allows(dir snapshot.Direction, fam Family) []Allow {
	var out []Allow
	for _, a := range rs.Allows {
		if a.Direction == dir && (fam == 0 || a.Family == fam) {
			out = append(out, a)
		}
	}
	return out
}
