package catalog

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersionCompare(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"5.4", "5.4.0", 0},
		{"5.4", "5.4.3", -1},
		{"5.6.5", "5.6.10", -1},
		{"11", "10.9", 1},
		{"v11", "11", 0},
		{"9.2", "9.2.0.1", -1},
	} {
		if got := MustVersion(tc.a).Compare(MustVersion(tc.b)); got != tc.want {
			t.Errorf("%s vs %s: %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
	for _, bad := range []string{"", "5..1", "x", "5.1-beta", "1.2.3.4.5", "99999999999"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) accepted", bad)
		}
	}
}

func TestRange(t *testing.T) {
	for _, tc := range []struct {
		r    string
		in   []string
		out  []string
		norm string
	}{
		{"", []string{"1", "5.6.5"}, nil, ""},
		{"<5.6.5", []string{"5.4", "5.6.4", "4"}, []string{"5.6.5", "5.7"}, "<5.6.5"},
		{">=5.6.5", []string{"5.6.5", "5.8"}, []string{"5.6.4"}, ">=5.6.5"},
		{"5.1+", []string{"5.1", "5.1.0", "5.2"}, []string{"5.0.9"}, ">=5.1"},
		{">=11 <12", []string{"11", "11.9.9"}, []string{"12", "10"}, ">=11 <12"},
		{">=11, <12", []string{"11.1"}, []string{"12.0"}, ">=11 <12"},
		{"9.2", []string{"9.2", "9.2.0"}, []string{"9.2.1"}, "=9.2"},
		{">5 <=6", []string{"5.0.1", "6"}, []string{"5", "6.0.1"}, ">5 <=6"},
	} {
		r, err := ParseRange(tc.r)
		if err != nil {
			t.Fatalf("%q: %v", tc.r, err)
		}
		for _, v := range tc.in {
			if !r.Contains(MustVersion(v)) {
				t.Errorf("%q should contain %s", tc.r, v)
			}
		}
		for _, v := range tc.out {
			if r.Contains(MustVersion(v)) {
				t.Errorf("%q should not contain %s", tc.r, v)
			}
		}
		if r.String() != tc.norm {
			t.Errorf("%q normalises to %q, want %q", tc.r, r.String(), tc.norm)
		}
	}
	for _, bad := range []string{">=", "<<5", ">=x", ">=1 >=2", "<1 <=2", ">=6 <5", "=5 <5"} {
		if _, err := ParseRange(bad); err == nil {
			t.Errorf("ParseRange(%q) accepted", bad)
		}
	}
	if MustRange("<5.6.5").Intersects(MustRange(">=5.6.5")) {
		t.Error("<5.6.5 and >=5.6.5 intersect")
	}
	if !MustRange(">=5.1").Intersects(MustRange("<6")) || !MustRange("").Intersects(MustRange("=9.2")) {
		t.Error("intersection missed")
	}
	if MustRange("<=5").Intersects(MustRange(">5")) || !MustRange("<=5").Intersects(MustRange(">=5")) {
		t.Error("boundary intersection")
	}
}

func TestSite(t *testing.T) {
	s, err := LoadSite(filepath.Join("..", "testdata", "sites", "utmstack11.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	for _, tc := range []struct {
		peer      Peer
		addr      string
		ok, bound bool
	}{
		{Peer{Kind: PeerZone, Zone: "ADMIN_IP"}, "192.0.2.10", true, true},
		{Peer{Kind: PeerZone, Zone: "ADMIN_IP"}, "192.0.2.11", false, true},
		{Peer{Kind: PeerZone, Zone: "AGENT_NETWORK"}, "fd00::1", true, true},
		{Peer{Kind: PeerZone, Zone: "AGENT_NETWORK"}, "::ffff:10.1.2.3", true, true}, // v4-mapped
		{Peer{Kind: PeerZone, Zone: "NETWORK_DEVICES"}, "10.30.0.9", true, true},
		{Peer{Kind: PeerZone, Zone: "NETWORK_DEVICES"}, "10.30.0.10", false, true},
		{Peer{Kind: PeerZone, Zone: "CENTRAL_SERVER_IP"}, "10.0.0.1", false, false},
		{Peer{Kind: PeerRole, Role: "worker"}, "10.10.10.12", true, true},
		{Peer{Kind: PeerRole, Role: "agent", Zone: "AGENT_NETWORK"}, "10.9.9.9", true, true}, // zone fallback
		{Peer{Kind: PeerRole, Role: "manager"}, "10.9.9.9", false, false},
		{Peer{Kind: PeerDNS, Host: "UPDATES.example.com"}, "203.0.113.7", true, true},
		{Peer{Kind: PeerDNS, Host: "data.alienvault.com"}, "203.0.113.7", false, false},
		{Peer{Kind: PeerCIDR, Prefix: netip.MustParsePrefix("10.0.0.0/8")}, "10.1.1.1", true, true},
		{Peer{Kind: PeerAny}, "8.8.8.8", true, true},
	} {
		ok, bound := s.Contains(tc.peer, a(tc.addr))
		if ok != tc.ok || bound != tc.bound {
			t.Errorf("%s contains %s: (%v, %v), want (%v, %v)", tc.peer, tc.addr, ok, bound, tc.ok, tc.bound)
		}
	}
	if !s.IsSelf(a("2001:db8:100::7")) || s.IsSelf(a("198.51.100.8")) {
		t.Error("IsSelf")
	}
	c := builtinT(t)
	p, v, err := c.Resolve(s.Product)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(p, v); err != nil {
		t.Errorf("check against %s: %v", s.Product, err)
	}
	// Against UTMStack v10 the zones and the worker role are unknown.
	err = s.Check(p, MustVersion("10"))
	if err == nil || !strings.Contains(err.Error(), `utmstack11.yaml:6: zone "ADMIN_IP" is not a zone of utmstack@10`) ||
		!strings.Contains(err.Error(), `utmstack11.yaml:14: role "worker" is not a role of utmstack@10`) {
		t.Errorf("check against v10: %v", err)
	}
}

func TestSiteErrors(t *testing.T) {
	const base = "zones:\n  ADMIN_IP: 192.0.2.10/32\nroles:\n  server: [198.51.100.5]\nhosts:\n  data.alienvault.com: [203.0.113.7]\n"
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"bad CIDR", "192.0.2.10/32", "192.0.2.10/40 # <-", `bad CIDR "192.0.2.10/40"`},
		{"host bits", "192.0.2.10/32", "192.0.2.10/24 # <-", `CIDR "192.0.2.10/24" has host bits set (did you mean 192.0.2.0/24?)`},
		{"bad address", "[198.51.100.5]", "[198.51.100.5, 300.1.1.1] # <-", `bad address "300.1.1.1"`},
		{"bad list item line", "  server: [198.51.100.5]\n", "  server:\n    - 198.51.100.5\n    - nope # <-\n", `bad address "nope"`},
		{"bad range", "[203.0.113.7]", "[203.0.113.9-203.0.113.1] # <-", `bad address range "203.0.113.9-203.0.113.1"`},
		{"number instead of address", "[198.51.100.5]", "[42] # <-", "bad address 42"},
		{"empty list", "[198.51.100.5]", "[] # <-", "roles.server: no addresses"},
		{"bad zone name", "  ADMIN_IP:", "  admin_ip: # <-", `zone "admin_ip"`},
		{"bad role name", "  server:", "  Server: # <-", `role "Server"`},
		{"bad host", "  data.alienvault.com:", "  data_alienvault: # <-", `host "data_alienvault": not a DNS name`},
		{"unknown key", "hosts:\n", "hostz: {} # <-\nhosts:\n", `unknown key "hostz"`},
		{"duplicate zone", "  ADMIN_IP: 192.0.2.10/32\n", "  ADMIN_IP: 192.0.2.10/32\n  ADMIN_IP: 192.0.2.11/32 # <-\n", `duplicate key "ADMIN_IP"`},
		{"wrong format", "zones:\n", "format: flowaudit-site/v0 # <-\nzones:\n", `format "flowaudit-site/v0" not supported`},
		{"bad product version", "zones:\n", "product: usm@five # <-\nzones:\n", `product "usm@five"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(base, tc.old, tc.new, 1)
			if src == base {
				t.Fatal("test bug: no replacement")
			}
			_, err := ParseSite("site.yaml", []byte(src))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("want ErrorList, got %v", err)
			}
			line := markerLine(src)
			for _, e := range list {
				if strings.Contains(e.Msg, tc.want) {
					if e.File != "site.yaml" || (line > 0 && e.Line != line) {
						t.Errorf("at %s:%d, want line %d: %v", e.File, e.Line, line, e)
					}
					return
				}
			}
			t.Errorf("no error containing %q in:\n%v", tc.want, err)
		})
	}
	if _, err := ParseSite("empty.yaml", []byte("format: flowaudit-site/v1\n")); err == nil || !strings.Contains(err.Error(), "binds nothing") {
		t.Errorf("empty site: %v", err)
	}
}
