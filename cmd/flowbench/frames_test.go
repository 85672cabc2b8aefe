package main

import (
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// Every measured frame takes the datapath branch its name promises (a
// malformed frame would take a short cut and make the benchmark lie): fed
// through the XDP and TC egress programs, it yields exactly the expected
// flows.
func TestFramesTakeTheirPaths(t *testing.T) {
	testenv.RequireBPF(t)
	type want struct {
		proto    snapshot.Proto
		port     uint16
		dir      snapshot.Direction
		fragment bool
		closed   bool // ICMP port unreachable evidence on the quoted flow
		inferred bool // direction from the port heuristic
	}
	tcp9000 := want{proto: snapshot.TCP, port: 9000, dir: snapshot.Inbound}
	cases := map[string][]want{
		"IPv4 TCP to a listening port":             {tcp9000},
		"the same, header fast path off":           {tcp9000},
		"the same, flow cache off":                 {tcp9000},
		"IPv4 TCP, own outbound connection":        {{proto: snapshot.TCP, port: 443, dir: snapshot.Outbound}},
		"IPv4 TCP, no socket set (replay)":         {{proto: snapshot.TCP, port: 9000, dir: snapshot.Inbound, inferred: true}},
		"IPv4 UDP":                                 {{proto: snapshot.UDP, port: 514, dir: snapshot.Inbound}},
		"IPv4 UDP DNS answer (ring full: dropped)": {{proto: snapshot.UDP, port: 53, dir: snapshot.Outbound}},
		"IPv6 TCP + 2 ext hdrs":                    {tcp9000},
		"VLAN IPv4 TCP":                            {tcp9000},
		"IPv4 non-first fragment":                  {{proto: snapshot.UDP, fragment: true}},
		"ICMP port unreachable (UDP)":              {{proto: snapshot.ICMP, port: 3<<8 | 3}, {proto: snapshot.UDP, closed: true}},
	}
	// As cost.go measures them.
	var collectors [numCollectors]*bpf.Collector
	for cc := range collectors {
		c, err := bpf.Open(costCollector(cc).options(0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		collectors[cc] = c
	}
	pcs := packetCases()
	if len(pcs) != len(cases) {
		t.Fatalf("%d packet cases, %d expectations", len(pcs), len(cases))
	}
	for _, pc := range pcs {
		c := collectors[pc.coll]
		for _, h := range []bpf.Hook{bpf.HookXDP, bpf.HookTCEgress} {
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
			if pc.listen != 0 {
				if err := c.SetLocalPorts([]snapshot.Socket{{Proto: snapshot.TCP, Addr: local4, Port: pc.listen}}); err != nil {
					t.Fatal(err)
				}
			}
			frame := pc.in
			if h == bpf.HookTCEgress {
				frame = pc.out
			}
			if _, err := c.Run(h, frame); err != nil {
				t.Fatal(err)
			}
			r, err := c.ReadMaps()
			if err != nil {
				t.Fatal(err)
			}
			d, err := c.DNS()
			if err != nil {
				t.Fatal(err)
			}
			// Only an answer arriving is handed to userspace.
			if wantDNS := uint64(0); h == bpf.HookXDP && strings.Contains(pc.name, "DNS answer") {
				wantDNS = 1
				if d.Answers != wantDNS || len(d.Names) != 1 {
					t.Errorf("%s %s: %d answers, names %v; want 1 answer, data.example-vendor.com", h, pc.name, d.Answers, d.Names)
				}
			} else if d.Answers != 0 {
				t.Errorf("%s %s: %d DNS answers handed over, want none", h, pc.name, d.Answers)
			}
			ws := cases[pc.name]
			if h == bpf.HookTCEgress && pc.name == "IPv4 UDP" {
				// Sent from 514 with no socket there: this host is the
				// client (rule 4 of decide()), of the peer's port 41000.
				ws = []want{{proto: snapshot.UDP, port: 41000, dir: snapshot.Outbound}}
			}
			if len(r.Flows) != len(ws) || r.Stats.Truncated != 0 {
				t.Fatalf("%s %s: %d flows (truncated %d), want %d: %+v", h, pc.name, len(r.Flows), r.Stats.Truncated, len(ws), r.Flows)
			}
			for _, w := range ws {
				found := false
				for _, f := range r.Flows {
					if f.Proto != w.proto || f.Fragment != w.fragment {
						continue
					}
					if w.closed {
						found = f.Evidence.ICMPClosedIn+f.Evidence.ICMPClosedOut == 1 && f.Port == map[bpf.Hook]uint16{bpf.HookXDP: 514, bpf.HookTCEgress: 9999}[h]
					} else if w.proto.HasPorts() && !w.fragment {
						found = f.Port == w.port && f.Direction == w.dir
					} else {
						found = f.Port == w.port
					}
					if w.proto == snapshot.TCP && f.DirectionInferred != w.inferred {
						t.Errorf("%s %s: direction inferred %v, want %v", h, pc.name, f.DirectionInferred, w.inferred)
					}
					if f.Peer != peer4 && f.Peer != peer6 {
						t.Errorf("%s %s: peer %s, want %s or %s", h, pc.name, f.Peer, peer4, peer6)
					}
				}
				if !found {
					t.Errorf("%s %s: no flow like %+v in %+v", h, pc.name, w, r.Flows)
				}
			}
		}
	}
}
