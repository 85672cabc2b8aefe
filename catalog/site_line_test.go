package catalog

import (
	"net/netip"
	"testing"
)

func TestSiteLine(t *testing.T) {
	s, err := ParseSite("site.yaml", []byte(`product: x
zones:
  ADMIN_IP: 192.0.2.10/32
  AGENT_NETWORK: [10.0.0.0/8]
roles:
  server: 10.9.0.1
hosts:
  Data.Example.com: 203.0.113.7
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		peer Peer
		want int
	}{
		{Peer{Kind: PeerZone, Zone: "ADMIN_IP"}, 3},
		{Peer{Kind: PeerZone, Zone: "AGENT_NETWORK"}, 4},
		{Peer{Kind: PeerRole, Role: "server"}, 6},
		{Peer{Kind: PeerRole, Role: "agent", Zone: "AGENT_NETWORK"}, 4}, // the role's fallback zone
		{Peer{Kind: PeerRole, Role: "agent"}, 0},
		{Peer{Kind: PeerDNS, Host: "data.example.COM"}, 8},
		{Peer{Kind: PeerZone, Zone: "NOPE"}, 0},
		{Peer{Kind: PeerAny}, 0},
		{Peer{Kind: PeerCIDR, Prefix: netip.MustParsePrefix("10.0.0.0/8")}, 0},
	} {
		if got := s.Line(tc.peer); got != tc.want {
			t.Errorf("Line(%s) = %d, want %d", tc.peer, got, tc.want)
		}
	}
}
