package audit

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"go4.org/netipx"

	"github.com/flowaudit/flowaudit/catalog"
)

// TestColumnIndexMatchesSets: Report.column (one flattened range index,
// the last range tried first) names the same column as column (each
// column's set in turn) for addresses in, between and around overlapping
// zones and roles, IPv4, IPv4-mapped, IPv6 and zoned, in sorted and
// random order, before and after a DNS column is inserted.
func TestColumnIndexMatchesSets(t *testing.T) {
	set := func(prefixes ...string) *netipx.IPSet {
		var b netipx.IPSetBuilder
		for _, p := range prefixes {
			b.AddPrefix(netip.MustParsePrefix(p))
		}
		s, err := b.IPSet()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	site := &catalog.Site{
		Zones: map[string]*netipx.IPSet{
			"ADMIN":  set("10.0.0.0/24", "10.0.2.0/23", "2001:db8::/64"),
			"AGENTS": set("10.0.0.128/25", "10.0.1.0/24", "192.0.2.0/28"),
			"WIDE":   set("10.0.0.0/16", "::ffff:10.0.9.0/120"),
		},
		Roles: map[string]*netipx.IPSet{
			"manager": set("10.0.1.7/32", "192.0.2.8/29", "2001:db8::5/128"),
		},
	}
	rng := rand.New(rand.NewPCG(16, 7))
	var addrs []netip.Addr
	for range 4000 {
		var a netip.Addr
		switch rng.IntN(4) {
		case 0, 1:
			a = netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(12)), byte(rng.IntN(256))})
		case 2:
			a = netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(32))})
			if rng.IntN(3) == 0 {
				a = netip.AddrFrom16(a.As16()) // IPv4-mapped: not the IPv4 sets' address
			}
		default:
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 7: byte(rng.IntN(2)), 15: byte(rng.IntN(8))})
			if rng.IntN(4) == 0 {
				a = a.WithZone("eth0")
			}
		}
		addrs = append(addrs, a)
	}
	sorted := slices.Clone(addrs)
	slices.SortFunc(sorted, netip.Addr.Compare)
	rep := &Report{Columns: siteColumns(site)}
	check := func(what string) {
		for _, list := range [][]netip.Addr{sorted, addrs} {
			for _, a := range list {
				if got, want := rep.column(site, a), column(site, rep.Columns, a); got != want {
					t.Fatalf("%s: column(%s) = %q, want %q", what, a, got, want)
				}
			}
		}
	}
	check("site columns")
	rep.dnsColumn("example.com")
	check("after a DNS column")
	if got := rep.column(nil, sorted[0]); got != otherColumn {
		t.Errorf("no site: column %q, want %q", got, otherColumn)
	}
}
