package rules

import (
	"net/netip"
	"sort"
	"strings"

	"go4.org/netipx"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

var (
	all4 = netip.MustParsePrefix("0.0.0.0/0")
	all6 = netip.MustParsePrefix("::/0")
)

// fullSet is every IPv4 and IPv6 address.
func fullSet() *netipx.IPSet {
	var b netipx.IPSetBuilder
	b.AddPrefix(all4)
	b.AddPrefix(all6)
	s, _ := b.IPSet()
	return s
}

func familySet(f Family) *netipx.IPSet {
	var b netipx.IPSetBuilder
	if f == IPv4 {
		b.AddPrefix(all4)
	} else {
		b.AddPrefix(all6)
	}
	s, _ := b.IPSet()
	return s
}

// setKey is a canonical text form of a set, for comparing sets.
func setKey(s *netipx.IPSet) string {
	ps := s.Prefixes()
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return strings.Join(out, ",")
}

// maxPort is the top of a grant's range space: 65535 for ports, 255 for
// ICMP types, 0 for portless protocols.
func maxPort(p snapshot.Proto) uint16 {
	switch {
	case p.HasPorts():
		return 65535
	case p.IsICMP():
		return 255
	}
	return 0
}

// merge turns grants into allowances:
//
//  1. grants are split by family (IPv4 and IPv6 never share a rule);
//  2. per (management, direction, family, protocol), the port axis is cut
//     at every grant boundary; each piece gets the union of the peers of
//     the grants covering it — the exact peers merge losslessly into the
//     fewest prefixes (netipx);
//  3. adjacent pieces with the same peers become one range;
//  4. ranges with the same peers become one allowance.
//
// The result is sorted: management first, then direction, family,
// protocol, first port and first peer.
func merge(grants []grant) []Allow {
	type gkey struct {
		mgmt  bool
		dir   snapshot.Direction
		fam   Family
		proto snapshot.Proto
		host  string
	}
	groups := map[gkey][]grant{}
	for _, g := range grants {
		for _, fam := range []Family{IPv4, IPv6} {
			if (g.proto == snapshot.ICMP && fam == IPv6) || (g.proto == snapshot.ICMPv6 && fam == IPv4) {
				continue
			}
			var b netipx.IPSetBuilder
			b.AddSet(g.peers)
			b.Intersect(familySet(fam))
			s, _ := b.IPSet()
			if len(s.Prefixes()) == 0 {
				continue
			}
			fg := g
			fg.peers = s
			k := gkey{g.mgmt, g.dir, fam, g.proto, g.host}
			groups[k] = append(groups[k], fg)
		}
	}
	var out []Allow
	for k, gs := range groups {
		for _, a := range mergeGroup(gs) {
			a.Management, a.Direction, a.Family, a.Proto, a.Host = k.mgmt, k.dir, k.fam, k.proto, k.host
			if a.Peers[0] == all4 || a.Peers[0] == all6 {
				a.AnyPeer = true
			}
			if len(a.Ports) == 1 && a.Ports[0].Lo == 0 && a.Ports[0].Hi == maxPort(k.proto) {
				a.Ports = nil
			}
			out = append(out, a)
		}
	}
	sortAllows(out)
	return out
}

type piece struct {
	lo, hi uint16
	peers  *netipx.IPSet
	key    string
	rules  []string
}

func mergeGroup(in []grant) []Allow {
	// Grants of the same range first become one (observed traffic gives
	// one grant per flow, on few distinct ports).
	type rk struct{ lo, hi uint16 }
	same := map[rk]*netipx.IPSetBuilder{}
	rules := map[rk][]string{}
	var keys []rk
	for _, g := range in {
		k := rk{g.lo, g.hi}
		if same[k] == nil {
			same[k] = &netipx.IPSetBuilder{}
			keys = append(keys, k)
		}
		same[k].AddSet(g.peers)
		rules[k] = append(rules[k], g.rules...)
	}
	gs := make([]grant, 0, len(keys))
	for _, k := range keys {
		s, _ := same[k].IPSet()
		gs = append(gs, grant{lo: k.lo, hi: k.hi, peers: s, rules: uniq(rules[k])})
	}
	var bounds []int
	for _, g := range gs {
		bounds = append(bounds, int(g.lo), int(g.hi)+1)
	}
	sort.Ints(bounds)
	var pieces []piece
	for i := 0; i+1 < len(bounds); i++ {
		lo, hi := bounds[i], bounds[i+1]-1
		if hi < lo {
			continue
		}
		var b netipx.IPSetBuilder
		var rules []string
		n := 0
		for _, g := range gs {
			if int(g.lo) <= lo && int(g.hi) >= hi {
				b.AddSet(g.peers)
				rules = append(rules, g.rules...)
				n++
			}
		}
		if n == 0 {
			continue
		}
		s, _ := b.IPSet()
		p := piece{lo: uint16(lo), hi: uint16(hi), peers: s, key: setKey(s), rules: rules}
		if l := len(pieces); l > 0 && pieces[l-1].key == p.key && int(pieces[l-1].hi)+1 == lo {
			pieces[l-1].hi = p.hi
			pieces[l-1].rules = append(pieces[l-1].rules, rules...)
			continue
		}
		pieces = append(pieces, p)
	}
	byPeers := map[string]*Allow{}
	var order []string
	for _, p := range pieces {
		a := byPeers[p.key]
		if a == nil {
			a = &Allow{Peers: p.peers.Prefixes()}
			byPeers[p.key] = a
			order = append(order, p.key)
		}
		a.Ports = append(a.Ports, catalog.PortRange{Lo: p.lo, Hi: p.hi})
		a.Rules = append(a.Rules, p.rules...)
	}
	out := make([]Allow, 0, len(order))
	for _, k := range order {
		a := byPeers[k]
		a.Rules = uniq(a.Rules)
		out = append(out, *a)
	}
	return out
}

func sortAllows(as []Allow) {
	sort.Slice(as, func(i, j int) bool {
		a, b := as[i], as[j]
		if a.Management != b.Management {
			return a.Management
		}
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.Family != b.Family {
			return a.Family < b.Family
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		pa, pb := firstLo(a), firstLo(b)
		if pa != pb {
			return pa < pb
		}
		if c := comparePrefix(a.Peers[0], b.Peers[0]); c != 0 {
			return c < 0
		}
		return a.Host < b.Host
	})
}

func firstLo(a Allow) int {
	if len(a.Ports) == 0 {
		return -1
	}
	return int(a.Ports[0].Lo)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// portCost is what a range costs in an iptables multiport match or a ufw
// port list: one for a port, two for a range.
func portCost(r catalog.PortRange) int {
	if r.Lo == r.Hi {
		return 1
	}
	return 2
}

// MaxMultiport is the most ports one iptables multiport match (and one ufw
// rule) takes, a range counting as two.
const MaxMultiport = 15

// chunkPorts splits ranges into lists of at most max ports, a range
// counting two, in order.
func chunkPorts(rs []catalog.PortRange, max int) [][]catalog.PortRange {
	var out [][]catalog.PortRange
	var cur []catalog.PortRange
	cost := 0
	for _, r := range rs {
		c := portCost(r)
		if cost+c > max && len(cur) > 0 {
			out = append(out, cur)
			cur, cost = nil, 0
		}
		cur = append(cur, r)
		cost += c
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}
