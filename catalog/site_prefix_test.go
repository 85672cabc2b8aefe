package catalog

import (
	"net/netip"
	"testing"
)

func TestSiteContainsPrefix(t *testing.T) {
	s, err := ParseSite("site.yaml", []byte(`zones:
  ADMIN_IP: 192.0.2.10/32
  AGENT_NETWORK: [10.1.0.0/16, "fd00:1::/64"]
roles:
  agent: 10.1.2.0/24
`))
	if err != nil {
		t.Fatal(err)
	}
	zone := func(z string) Peer { return Peer{Kind: PeerZone, Zone: z} }
	for _, tc := range []struct {
		peer                    Peer
		prefix                  string
		inside, overlaps, bound bool
	}{
		{zone("AGENT_NETWORK"), "10.1.7.0/24", true, true, true},
		{zone("AGENT_NETWORK"), "10.0.0.0/8", false, true, true},
		{zone("AGENT_NETWORK"), "10.2.0.0/24", false, false, true},
		{zone("AGENT_NETWORK"), "0.0.0.0/0", false, true, true},
		{zone("AGENT_NETWORK"), "::ffff:10.1.7.0/120", true, true, true}, // IPv4 in IPv6 form
		{zone("AGENT_NETWORK"), "fd00:1::/48", false, true, true},
		{zone("AGENT_NETWORK"), "fd00:2::/48", false, false, true},
		{zone("ADMIN_IP"), "192.0.2.0/24", false, true, true},
		{zone("ADMIN_IP"), "192.0.2.10/32", true, true, true},
		{zone("SOC_NETWORK"), "192.0.2.0/24", false, false, false},
		{Peer{Kind: PeerRole, Role: "agent", Zone: "AGENT_NETWORK"}, "10.1.3.0/24", false, false, true},
		{Peer{Kind: PeerRole, Role: "worker", Zone: "AGENT_NETWORK"}, "10.1.3.0/24", true, true, true}, // role unbound: its zone
		{Peer{Kind: PeerAny}, "0.0.0.0/0", true, true, true},
		{Peer{Kind: PeerCIDR, Prefix: netip.MustParsePrefix("198.51.100.0/24")}, "198.51.100.0/25", true, true, true},
		{Peer{Kind: PeerCIDR, Prefix: netip.MustParsePrefix("198.51.100.0/24")}, "198.51.0.0/16", false, true, true},
		{Peer{Kind: PeerCIDR, Prefix: netip.MustParsePrefix("198.51.100.0/24")}, "203.0.113.0/24", false, false, true},
		{Peer{Kind: PeerDNS, Host: "updates.example.com"}, "203.0.113.0/24", false, false, false},
	} {
		in, ov, b := s.ContainsPrefix(tc.peer, netip.MustParsePrefix(tc.prefix))
		if in != tc.inside || ov != tc.overlaps || b != tc.bound {
			t.Errorf("ContainsPrefix(%s, %s) = inside %v overlaps %v bound %v, want %v %v %v",
				tc.peer, tc.prefix, in, ov, b, tc.inside, tc.overlaps, tc.bound)
		}
	}
	// Contains still agrees with the refactored lookup.
	if ok, bound := s.Contains(Peer{Kind: PeerRole, Role: "worker", Zone: "AGENT_NETWORK"}, netip.MustParseAddr("10.1.9.9")); !ok || !bound {
		t.Errorf("Contains via the role's fallback zone: ok %v bound %v", ok, bound)
	}
}
