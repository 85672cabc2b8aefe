// Package benchflows makes synthetic recordings for flowaudit's benchmarks
// (cmd/flowbench and the Go benchmarks): n distinct flows shaped like a
// busy UTMStack v11 manager, against the built-in utmstack@11 matrix and a
// site that binds its zones. Deterministic: the same n gives the same flows.
package benchflows

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Matrix reference and role the synthetic traffic is audited against.
const (
	MatrixRef = "utmstack@11"
	Role      = "manager"
)

// siteYAML binds the matrix's zones (documentation and private ranges):
// agents anywhere in 10.0.0.0/8, the rest small.
const siteYAML = `format: flowaudit-site/v1
product: utmstack@11
self: [198.51.100.7, "2001:db8:100::7"]
zones:
  ADMIN_IP: 192.0.2.10/32
  SOC_NETWORK: 192.0.2.0/24
  ANALYST_NETWORK: [192.0.2.0/25]
  AGENT_NETWORK: [10.0.0.0/8, fd00::/8]
  SOURCE_NETWORK: 10.20.0.0/16
  NETWORK_DEVICES: ["10.30.0.1-10.30.0.9"]
  CLUSTER_NODE_IP: [10.10.10.11, 10.10.10.12, 10.10.10.13]
roles:
  worker: [10.10.10.12, 10.10.10.13]
hosts:
  updates.example.com: [203.0.113.7]
`

// Start is the start of every synthetic recording window (one hour).
var Start = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)

// Load returns the effective matrix of the manager role and the site.
func Load() (*catalog.Matrix, *catalog.Site, error) {
	cat, err := catalog.Builtin()
	if err != nil {
		return nil, nil, err
	}
	p, v, err := cat.Resolve(MatrixRef)
	if err != nil {
		return nil, nil, err
	}
	m, err := p.Effective(v, Role, nil)
	if err != nil {
		return nil, nil, err
	}
	site, err := catalog.ParseSite("benchflows-site.yaml", []byte(siteYAML))
	if err != nil {
		return nil, nil, err
	}
	if err := site.Check(p, v); err != nil {
		return nil, nil, err
	}
	return m, site, nil
}

// Generator makes flows for one matrix and site.
type Generator struct {
	// Iface names the interface of every flow.
	Iface string
	// documented services whose peer zone holds every 10.0.0.0/8 address
	// (agents): any unique peer there is documented.
	agentIn, agentOut []service
	// services with a peer the site binds elsewhere: traffic from outside
	// that zone is out of zone.
	otherIn []service
	// ports no rule documents, inbound TCP.
	undocumented []uint16
}

type service struct {
	dir   snapshot.Direction
	proto snapshot.Proto
	port  uint16
}

// New derives the services from the matrix rules.
func New(m *catalog.Matrix, site *catalog.Site, iface string) (*Generator, error) {
	g := &Generator{Iface: iface}
	agent := netip.MustParseAddr("10.123.45.67")
	for _, r := range m.Rules {
		if len(r.Ports) == 0 || r.Deprecated {
			continue
		}
		for _, p := range r.Protos {
			if !p.HasPorts() {
				continue
			}
			pr := r.Ports[0]
			s := service{dir: r.Direction, proto: p, port: pr.Lo}
			inZone, bound := site.Contains(r.Peer, agent)
			switch {
			case inZone && r.Direction == snapshot.Inbound:
				g.agentIn = append(g.agentIn, s)
			case inZone && r.Direction == snapshot.Outbound:
				g.agentOut = append(g.agentOut, s)
			case bound && r.Direction == snapshot.Inbound:
				g.otherIn = append(g.otherIn, s)
			}
		}
	}
	for port := uint16(1000); len(g.undocumented) < 64 && port < 10000; port += 37 {
		doc := false
		for _, r := range m.Rules {
			if r.Matches(snapshot.TCP, port) {
				doc = true
				break
			}
		}
		if !doc {
			g.undocumented = append(g.undocumented, port)
		}
	}
	if len(g.agentIn) == 0 || len(g.otherIn) == 0 || len(g.undocumented) == 0 {
		return nil, fmt.Errorf("benchflows: matrix %s/%s gives too few services (agent %d, other %d, undocumented %d)",
			m.Product, m.Role, len(g.agentIn), len(g.otherIn), len(g.undocumented))
	}
	if len(g.agentOut) == 0 {
		g.agentOut = g.agentIn
	}
	return g, nil
}

// peer returns a distinct address for flow i: agents in 10.0.0.0/8, the
// rest of the world in 2001:db8:ff00::/40 (outside every zone).
func agentPeer(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func outsidePeer(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 0, 0, 0, 0, 0, 0, 0, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
}

// Flow returns flow i (0 ≤ i < 16 M). Flows of different i never share a
// key: each has its own peer. Mix per 20 flows: 13 documented agent flows
// in, 2 out; 2 out-of-zone attempts on documented ports; 2 refused
// attempts on undocumented ports (a scan); 1 ICMP error.
func (g *Generator) Flow(i int) snapshot.Flow {
	f := snapshot.Flow{Interface: g.Iface}
	first := Start.Add(time.Duration(i%3600) * time.Second)
	f.FirstSeen, f.LastSeen = first, first.Add(time.Duration(i%600)*time.Second)
	pk := uint64(1 + i%50)
	var s service
	switch c := i % 20; {
	case c < 13:
		s = g.agentIn[(i/20)%len(g.agentIn)]
		f.Peer = agentPeer(i)
		f.PacketsIn, f.PacketsOut = pk, pk
		if s.proto == snapshot.TCP {
			f.Evidence = snapshot.Evidence{SynIn: 1, SynAckOut: 1}
		}
	case c < 15:
		s = g.agentOut[(i/20)%len(g.agentOut)]
		f.Peer = agentPeer(i)
		f.PacketsIn, f.PacketsOut = pk, pk
		if s.proto == snapshot.TCP {
			f.Evidence = snapshot.Evidence{SynOut: 1, SynAckIn: 1}
		}
	case c < 17:
		s = g.otherIn[(i/20)%len(g.otherIn)]
		f.Peer = outsidePeer(i)
		f.PacketsIn = 1
		if s.proto == snapshot.TCP {
			f.Evidence = snapshot.Evidence{SynIn: 1}
		}
	case c < 19:
		s = service{snapshot.Inbound, snapshot.TCP, g.undocumented[(i/20)%len(g.undocumented)]}
		f.Peer = outsidePeer(i)
		f.PacketsIn, f.PacketsOut = 1, 1
		f.Evidence = snapshot.Evidence{SynIn: 1, RstOut: 1}
	default:
		s = service{snapshot.Unknown, snapshot.ICMP, 3<<8 | 3}
		f.Peer = agentPeer(i)
		f.PacketsOut = 1
	}
	f.Direction, f.Proto, f.Port = s.dir, s.proto, s.port
	f.BytesIn, f.BytesOut = f.PacketsIn*120, f.PacketsOut*90
	return f
}

// Flows returns flows from..to-1.
func (g *Generator) Flows(from, to int) []snapshot.Flow {
	out := make([]snapshot.Flow, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, g.Flow(i))
	}
	return out
}

// Snapshot wraps flows in a complete, sorted snapshot of a one-hour
// recording on the generator's interface.
func (g *Generator) Snapshot(flows []snapshot.Flow, capacity uint32) *snapshot.Snapshot {
	s := &snapshot.Snapshot{
		Version: snapshot.FormatVersion, Source: "live", Start: Start, End: Start.Add(time.Hour),
		EphemeralPorts: [2]uint16{32768, 60999},
		Interfaces: []snapshot.Interface{{Name: g.Iface, Index: 2, Ingress: "xdp-native", Egress: "tcx",
			Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8:100::7")}}},
		Stats: snapshot.Stats{FlowCapacity: capacity, FlowEntries: uint32(len(flows))},
		Flows: flows,
	}
	s.Tool.Name = "flowaudit"
	s.Tool.Version = "bench"
	for i := range flows {
		s.Stats.PacketsIngress += flows[i].PacketsIn
		s.Stats.PacketsEgress += flows[i].PacketsOut
	}
	s.Sort()
	return s
}
