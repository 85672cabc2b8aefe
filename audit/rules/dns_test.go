package rules

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

func dnsMatrix(t *testing.T) *catalog.Matrix {
	t.Helper()
	c, err := catalog.LoadFiles("../testdata/engine/dnsapp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, v, err := c.Resolve("dnsapp")
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.Effective(v, "sensor", nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// dnsSnap: the feed name resolved to two addresses (one through a
// CNAME), the appliance fetched from one of them; a third address was
// never given for the name.
func dnsSnap() *snapshot.Snapshot {
	s := mksnap(fl("out", "tcp", 80, "203.0.113.7"), fl("out", "tcp", 80, "198.51.100.99"), fl("out", "tcp", 443, "2001:db8:5::7"))
	at := t0.Add(-time.Second)
	n := func(addr, name string, ttl uint32) snapshot.DNSName {
		return snapshot.DNSName{Addr: netip.MustParseAddr(addr), Name: name, FirstSeen: at, LastSeen: at, TTL: ttl, Answers: 1}
	}
	s.DNS = &snapshot.DNS{Answers: 2, Names: []snapshot.DNSName{
		n("203.0.113.7", "cdn.example.net", 60), n("203.0.113.7", "data.example-vendor.com", 60),
		n("203.0.113.8", "data.example-vendor.com", 60),
		n("2001:db8:5::7", "otx.example-vendor.com", 300),
	}}
	s.Sort()
	return s
}

func TestDNSRulesAllowances(t *testing.T) {
	m := dnsMatrix(t)
	for _, mode := range []Mode{Both, Documented} {
		t.Run(string(mode), func(t *testing.T) {
			rs := build(t, dnsSnap(), Options{Matrix: m, Mode: mode, EgressPolicy: Drop, NoManagementGuard: true, AllowQuiet: true})
			got := allowText(rs)
			for _, want := range []string{
				"out v4 tcp 80 203.0.113.7/32, 203.0.113.8/32 [d1.sensor.feed]",
				// The wildcard covers data.example-vendor.com too.
				"out v4 tcp 443 203.0.113.7/32, 203.0.113.8/32 [d1.sensor.otx]",
				"out v6 tcp 443 2001:db8:5::7/128 [d1.sensor.otx]",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("allowances lack %q:\n%s", want, got)
				}
			}
			if strings.Contains(got, "198.51.100.99") {
				t.Errorf("an address never given for the name is allowed:\n%s", got)
			}
			var hosts []string
			for _, h := range rs.Hosts {
				hosts = append(hosts, h.Host)
			}
			if strings.Join(hosts, " ") != "*.example-vendor.com data.example-vendor.com" {
				t.Errorf("hosts %v", hosts)
			}
			var warned bool
			for _, w := range rs.Warnings {
				warned = warned || strings.HasPrefix(w, "FQDN allowances need refreshing: the addresses of *.example-vendor.com, data.example-vendor.com")
			}
			if !warned {
				t.Errorf("no refresh warning: %v", rs.Warnings)
			}

			var nft bytes.Buffer
			if err := Render(&nft, rs, NFTables, RenderOptions{}); err != nil {
				t.Fatal(err)
			}
			out := nft.String()
			for _, want := range []string{
				"#   nft 'flush set inet flowaudit dns_data_example_vendor_com_v4; add element inet flowaudit dns_data_example_vendor_com_v4 { NEW-ADDRESSES }'",
				"set dns_data_example_vendor_com_v4 {",
				`203.0.113.7 comment "dns data.example-vendor.com ttl 60s"`,
				`203.0.113.8 comment "dns data.example-vendor.com ttl 60s"`,
				"set dns_any_example_vendor_com_v6 {",
				`2001:db8:5::7 comment "dns otx.example-vendor.com ttl 300s"`,
				`ip daddr @dns_data_example_vendor_com_v4 tcp dport 80 counter accept comment "d1.sensor.feed (dns data.example-vendor.com ttl 60s, refresh)"`,
				"FQDN allowances need refreshing",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("nftables output lacks %q:\n%s", want, out)
				}
			}
			for _, target := range []Target{IPTables, UFW, AWSSG, AzureNSG} {
				var b bytes.Buffer
				if err := Render(&b, rs, target, RenderOptions{}); err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(b.String(), "data.example-vendor.com") || !strings.Contains(b.String(), "ttl 60s") {
					t.Errorf("%s output does not name the DNS name and TTL:\n%s", target, b.String())
				}
			}
			var ipt bytes.Buffer
			if err := Render(&ipt, rs, IPTables, RenderOptions{}); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(ipt.String(), `-d 203.0.113.8/32 -p tcp -m tcp --dport 80 -m comment --comment "d1.sensor.feed dns data.example-vendor.com ttl 60s" -j ACCEPT`) {
				t.Errorf("iptables lacks the per-address comment:\n%s", ipt.String())
			}
		})
	}
}

// A site's hosts: binds the name statically: no DNS sets, no refresh.
func TestDNSRulesStaticWins(t *testing.T) {
	m := dnsMatrix(t)
	site, err := catalog.ParseSite("site.yaml", []byte("hosts:\n  data.example-vendor.com: [198.51.100.99]\n"))
	if err != nil {
		t.Fatal(err)
	}
	rs := build(t, dnsSnap(), Options{Matrix: m, Site: site, Mode: Both, EgressPolicy: Drop, NoManagementGuard: true, AllowQuiet: true})
	got := allowText(rs)
	if !strings.Contains(got, "out v4 tcp 80 198.51.100.99/32 [d1.sensor.feed]") || strings.Contains(got, "tcp 80 203.0.113.7/32") {
		t.Errorf("static binding not used:\n%s", got)
	}
	for _, a := range rs.Allows {
		if a.Host == "data.example-vendor.com" {
			t.Errorf("allowance from DNS despite hosts: %+v", a)
		}
	}
}
