package catalog

import (
	"slices"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/vocab"
)

// effectiveT returns the matrix of role for ref with conds switched on.
func effectiveT(t *testing.T, ref, role string, conds ...string) *Matrix {
	t.Helper()
	c := builtinT(t)
	p, v, err := c.Resolve(ref)
	if err != nil {
		t.Fatal(err)
	}
	cm := map[string]bool{}
	for _, n := range conds {
		cm[n] = true
	}
	m, err := p.Effective(v, role, cm)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ruleByID(m *Matrix, id string) (Rule, bool) {
	for _, r := range m.Rules {
		if r.ID == id {
			return r, true
		}
	}
	return Rule{}, false
}

// Issue 12 item 13: a UTMStack v10 agentless device talks to the master or
// to a probe, not to both, so its mirrored NetFlow rules are optional while
// netflow holds, like its mirrored syslog rules ("mirrored rules are
// optional"), not conditional (required while netflow holds).
func TestMirrorOfMultiRoleConditionalRuleIsOptional(t *testing.T) {
	m := effectiveT(t, "utmstack@10", "agentless-device", "netflow")
	for _, id := range []string{"utmstack10.agentless-device.netflow.to-master", "utmstack10.agentless-device.netflow.to-probe"} {
		r, ok := ruleByID(m, id)
		if !ok {
			t.Fatalf("%s not in the matrix", id)
		}
		if r.Requirement != Optional || r.Condition != "netflow" || r.RequirementString() != "optional if netflow" {
			t.Errorf("%s: requirement %s, condition %q (%s); want optional if netflow", id, r.Requirement, r.Condition, r.RequirementString())
		}
	}
	// The written rules on the master and the probe stay conditional.
	r, ok := ruleByID(effectiveT(t, "utmstack@10", "master", "netflow"), "utmstack10.master.netflow")
	if !ok || r.Requirement != Conditional {
		t.Errorf("master netflow: %v %s", ok, r.Requirement)
	}
	// A single-role conditional rule keeps a conditional mirror: USM's
	// VPN rule is written for the Server only, so the Sensor needs it.
	r, ok = ruleByID(effectiveT(t, "usm", "sensor", "vpn"), "usm.sensor.vpn.to-server")
	if !ok || r.Requirement != Conditional {
		t.Errorf("usm sensor vpn mirror: %v %s", ok, r.Requirement)
	}
}

// Issue 12 item 14: 6514/tcp (syslog over TLS) is accepted from
// NETWORK_DEVICES as well as SOURCE_NETWORK, as 514 is: the single-node
// script opens it under "# Syslog (from network devices)".
func TestUTMStack11SyslogTLSFromNetworkDevices(t *testing.T) {
	for _, role := range []string{"manager", "worker"} {
		m := effectiveT(t, "utmstack@11", role)
		zones := map[string][]string{}
		for _, r := range m.Find(vocab.Inbound, vocab.TCP, 6514) {
			zones[r.Peer.Zone] = append(zones[r.Peer.Zone], r.Requirement.String())
			if r.Peer.Zone == "NETWORK_DEVICES" && (r.Citation.Doc != "004_c793c473800cb152.txt" || !strings.Contains(r.Citation.Quote, "6514")) {
				t.Errorf("%s: 6514 from NETWORK_DEVICES cites %s § %s %q", role, r.Citation.Doc, r.Citation.Section, r.Citation.Quote)
			}
		}
		for _, z := range []string{"SOURCE_NETWORK", "NETWORK_DEVICES"} {
			if !slices.Equal(zones[z], []string{"optional"}) {
				t.Errorf("%s: 6514/tcp from %s: %v, want one optional rule", role, z, zones[z])
			}
		}
	}
}

// Issue 12 item 14: a worker has the basic rules because the multi-node
// script says "Include basic rules above", but the document requires them
// for "basic UTMStack operation" and agents "to communicate with the
// manager server": on a worker they are allowed, not expected, so an idle
// worker raises no missing-required. What a worker must see is the
// cluster traffic of the multi-node condition.
func TestUTMStack11WorkerRequirements(t *testing.T) {
	w := effectiveT(t, "utmstack@11", "worker", "multi-node")
	var needed []string
	for _, r := range w.Rules {
		if r.Requirement == Required || r.Requirement == Conditional {
			needed = append(needed, r.ID)
			if r.Condition != "multi-node" || r.Peer.Zone != "CLUSTER_NODE_IP" {
				t.Errorf("worker needs %s (%s from %s)", r.ID, r.RequirementString(), r.Peer)
			}
		}
	}
	if len(needed) != 10 {
		t.Errorf("worker needs %d rules, want the 10 cluster rules: %v", len(needed), needed)
	}
	// The basic ports are still allowed on a worker.
	for _, port := range []uint16{22, 443, 9090, 9000, 9001, 50051} {
		rs := w.Find(vocab.Inbound, vocab.TCP, port)
		if len(rs) == 0 {
			t.Errorf("worker: tcp/%d not allowed", port)
		}
		for _, r := range rs {
			if r.Requirement != Optional {
				t.Errorf("worker: %s is %s", r.ID, r.RequirementString())
			}
		}
	}
	// The manager still requires them.
	mg := effectiveT(t, "utmstack@11", "manager")
	for _, id := range []string{"ssh", "https", "cockpit", "agent-9000", "agent-9001", "agent-50051"} {
		r, ok := ruleByID(mg, "utmstack11.manager."+id)
		if !ok || r.Requirement != Required {
			t.Errorf("manager %s: %v %s", id, ok, r.Requirement)
		}
	}
	// Agents must reach the manager ("Required for UTMStack agents to
	// communicate with the manager server"); a worker only may.
	ag := effectiveT(t, "utmstack@11", "agent")
	for _, id := range []string{"agent-9000", "agent-9001", "agent-50051"} {
		if r, ok := ruleByID(ag, "utmstack11.agent."+id+".to-manager"); !ok || r.Requirement != Required {
			t.Errorf("agent %s to manager: %v %s", id, ok, r.Requirement)
		}
		if r, ok := ruleByID(ag, "utmstack11.agent."+id+".to-worker"); !ok || r.Requirement != Optional {
			t.Errorf("agent %s to worker: %v %s", id, ok, r.Requirement)
		}
	}
}
