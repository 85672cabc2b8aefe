package audit

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

func dnsMatrix(t *testing.T, site string) (*catalog.Matrix, *catalog.Site) {
	t.Helper()
	c, err := catalog.LoadFiles("testdata/engine/dnsapp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return matrixAndSite(t, c, "dnsapp", "sensor", nil, site)
}

func dnsName(addr, name string, first time.Duration, ttl uint32, chain ...string) snapshot.DNSName {
	return snapshot.DNSName{Addr: netip.MustParseAddr(addr), Name: name, Chain: chain, Server: netip.MustParseAddr("192.0.2.53"),
		FirstSeen: t0.Add(first), LastSeen: t0.Add(first), TTL: ttl, Answers: 1}
}

func outFlow(port uint16, peer string, first time.Duration) snapshot.Flow {
	f := flow("out", "tcp", port, peer, 10, 12, snapshot.Evidence{SynOut: 1, SynAckIn: 1})
	f.FirstSeen = t0.Add(first)
	f.LastSeen = t0.Add(first + time.Second)
	return f
}

// dnsSnapshot: the appliance resolved its vendor's names during the
// recording and connected (docs/DNS.md); see TestDNSRules for each flow.
func dnsSnapshot() *snapshot.Snapshot {
	s := snap(10*time.Minute,
		outFlow(80, "203.0.113.7", time.Minute),                  // feed, resolved through a CNAME at 0:30
		outFlow(80, "203.0.113.8", 5*time.Minute+30*time.Second), // feed, after the address changed at 5:00
		outFlow(80, "198.51.100.99", 2*time.Minute),              // never given for any name
		outFlow(443, "203.0.113.20", 2*time.Minute),              // otx, under the wildcard
		outFlow(443, "203.0.113.50", time.Minute),                // answered only 8 min later, TTL 30 s
		outFlow(22, "203.0.113.30", time.Minute),                 // DNS says tunnel, the site binds another address
		outFlow(22, "198.51.100.30", time.Minute),                // the site's static binding
		outFlow(8443, "203.0.113.60", time.Minute),               // a name no answer mentioned
	)
	s.DNS = &snapshot.DNS{Answers: 5, Names: []snapshot.DNSName{
		dnsName("203.0.113.7", "data.example-vendor.com", 30*time.Second, 60, "cdn.example.net"),
		dnsName("203.0.113.7", "cdn.example.net", 30*time.Second, 60),
		dnsName("203.0.113.8", "data.example-vendor.com", 5*time.Minute, 60, "cdn.example.net"),
		dnsName("203.0.113.8", "cdn.example.net", 5*time.Minute, 60),
		dnsName("203.0.113.20", "otx.example-vendor.com", 10*time.Second, 300),
		dnsName("203.0.113.50", "late.example-vendor.com", 9*time.Minute, 30),
		dnsName("203.0.113.30", "tunnel.example-vendor.com", 10*time.Second, 300),
	}}
	s.Sort()
	return s
}

const dnsSite = "hosts:\n  tunnel.example-vendor.com: [198.51.100.30]\n"

func TestDNSRules(t *testing.T) {
	m, site := dnsMatrix(t, dnsSite)
	r, err := Run(dnsSnapshot(), Options{Matrix: m, Site: site, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[Kind][]*Finding{}
	for i := range r.Findings {
		f := &r.Findings[i]
		byKind[f.Kind] = append(byKind[f.Kind], f)
	}
	ooz := map[string]*Finding{}
	for _, f := range byKind[PeerOutOfZone] {
		ooz[f.Port] = f
	}
	// tcp/80: 198.51.100.99 was never given for data.example-vendor.com.
	if f := ooz["80"]; f == nil {
		t.Error("no peer-out-of-zone on tcp/80")
	} else {
		if len(f.Evidence.TopPeers) != 1 || f.Evidence.TopPeers[0].Addr != netip.MustParseAddr("198.51.100.99") {
			t.Errorf("tcp/80 out of zone: %+v", f.Evidence.TopPeers)
		}
		for _, w := range []string{"reached 198.51.100.99 (no DNS name seen for it)", "allowed: data.example-vendor.com (2 addresses seen in DNS answers)"} {
			if !strings.Contains(f.Summary, w) {
				t.Errorf("tcp/80 summary %q lacks %q", f.Summary, w)
			}
		}
	}
	// tcp/443: 203.0.113.50's only answer came 8 minutes after the flow,
	// beyond its TTL; 203.0.113.20 is inside the wildcard.
	if f := ooz["443"]; f == nil {
		t.Error("no peer-out-of-zone on tcp/443")
	} else {
		if len(f.Evidence.TopPeers) != 1 || f.Evidence.TopPeers[0].Addr != netip.MustParseAddr("203.0.113.50") {
			t.Errorf("tcp/443 out of zone: %+v", f.Evidence.TopPeers)
		}
		for _, w := range []string{"reached 203.0.113.50 (late.example-vendor.com: answered only after this traffic began, beyond the TTL)",
			"allowed: data.example-vendor.com, late.example-vendor.com, otx.example-vendor.com, tunnel.example-vendor.com (5 addresses seen in DNS answers)"} {
			if !strings.Contains(f.Summary, w) {
				t.Errorf("tcp/443 summary %q lacks %q", f.Summary, w)
			}
		}
	}
	// tcp/22: hosts: binds the tunnel statically and wins over DNS.
	if f := ooz["22"]; f == nil {
		t.Error("no peer-out-of-zone on tcp/22")
	} else {
		if len(f.Evidence.TopPeers) != 1 || f.Evidence.TopPeers[0].Addr != netip.MustParseAddr("203.0.113.30") {
			t.Errorf("tcp/22 out of zone: %+v", f.Evidence.TopPeers)
		}
		if !strings.Contains(f.Summary, "reached 203.0.113.30 (tunnel.example-vendor.com); the addresses hosts: binds") {
			t.Errorf("tcp/22 summary %q does not name the static binding", f.Summary)
		}
	}
	if len(ooz) != 3 {
		t.Errorf("%d peer-out-of-zone findings, want 3: %v", len(ooz), findingIDs(r))
	}
	status := ruleStatusByID(r)
	for id, want := range map[string]string{"feed": StatusSeen, "otx": StatusSeen, "support": StatusSeen, "maps": StatusUnverified, "updates": StatusNotSeen} {
		var got string
		for rid, st := range status {
			if strings.HasSuffix(rid, "."+id) {
				got = st
			}
		}
		if got != want {
			t.Errorf("rule %s: status %q, want %q (%v)", id, got, want, status)
		}
	}
	// The feed's allowed peers carry their names (CNAME chain included).
	for _, rs := range r.Rules {
		if !strings.HasSuffix(rs.Rule.ID, ".feed") {
			continue
		}
		got := map[string]string{}
		for _, p := range rs.Allowed.TopPeers {
			got[p.Addr.String()] = strings.Join(p.Names, ",")
		}
		if got["203.0.113.7"] != "cdn.example.net,data.example-vendor.com" || got["203.0.113.8"] != "cdn.example.net,data.example-vendor.com" {
			t.Errorf("feed allowed peers: %v", got)
		}
	}
	// A name no answer mentioned: unverified, with the hint.
	var hinted bool
	for _, f := range byKind[OptionalInUse] {
		if strings.HasSuffix(f.Rule.ID, ".maps") && strings.Contains(f.Summary, "no DNS answer for maps.example-other.com") &&
			strings.Contains(f.Summary, "bind it under hosts:") {
			hinted = true
		}
	}
	if !hinted {
		t.Errorf("no hint for the unresolved name: %v", byKind[OptionalInUse])
	}
	var missing bool
	for _, f := range byKind[MissingRequired] {
		missing = missing || strings.HasSuffix(f.Rule.ID, ".updates")
	}
	if !missing {
		t.Error("no missing-required for the name rule without traffic")
	}
	// Heat-map: the DNS-matched peers of tcp/80 are in the name's column,
	// the stray one under other (out of zone).
	for _, row := range r.Observed {
		if row.Port != "80" {
			continue
		}
		if row.Cells["dns:data.example-vendor.com"] != 44 || row.Cells["other"] != 22 || row.OutOfZone["other"] != 22 {
			t.Errorf("tcp/80 row: cells %v out of zone %v", row.Cells, row.OutOfZone)
		}
	}
	if !strings.Contains(strings.Join(r.Columns, " "), "dns:*.example-vendor.com dns:data.example-vendor.com dns:tunnel.example-vendor.com other") {
		t.Errorf("columns %v", r.Columns)
	}
	// Every format shows the names beside the addresses.
	for _, format := range []string{"table", "json", "html", "sarif", "junit"} {
		out := string(render(t, r, format))
		if !strings.Contains(out, "late.example-vendor.com") || !strings.Contains(out, "data.example-vendor.com") {
			t.Errorf("%s output lacks the host names", format)
		}
	}
	html := string(render(t, r, "html"))
	if !strings.Contains(html, "dns data.example-vendor.com") {
		t.Error("html heat-map has no column for the DNS name")
	}
}

// Without a DNS section (an older snapshot, or nothing resolved) a DNS
// rule the site does not bind stays unverified, as before.
func TestDNSRulesWithoutAnswers(t *testing.T) {
	m, _ := dnsMatrix(t, "")
	s := dnsSnapshot()
	s.DNS = nil
	r, err := Run(s, Options{Matrix: m, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Findings {
		if f.Kind == PeerOutOfZone {
			t.Errorf("out of zone without any binding: %s", f.ID)
		}
	}
	for id, st := range ruleStatusByID(r) {
		if !strings.HasSuffix(id, ".updates") && st != StatusUnverified {
			t.Errorf("%s: %s, want unverified", id, st)
		}
	}
}

func TestSiteWildcardHosts(t *testing.T) {
	m, site := dnsMatrix(t, "hosts:\n  \"*.example-vendor.com\": [198.51.100.0/24]\n")
	s := dnsSnapshot()
	r, err := Run(s, Options{Matrix: m, Site: site, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	// The site's wildcard binds every vendor name statically: only
	// 198.51.100.0/24 is allowed, whatever DNS said.
	ooz := map[string]int{}
	for _, f := range r.Findings {
		if f.Kind == PeerOutOfZone {
			ooz[f.Port] = f.Evidence.Peers
		}
	}
	if ooz["80"] != 2 || ooz["443"] != 2 || ooz["22"] != 1 {
		t.Errorf("out of zone peers per port: %v, want 80:2 443:2 22:1", ooz)
	}
}

// Answers the ring buffer dropped make the audit incomplete, in every format.
func TestDNSLostReported(t *testing.T) {
	m, site := dnsMatrix(t, dnsSite)
	s := dnsSnapshot()
	r, err := Run(s, Options{Matrix: m, Site: site, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(render(t, r, "table")), "dns: 5 answers, 5 names for 5 addresses, 0 dropped by a full ring buffer") {
		t.Errorf("table lacks the dns line:\n%s", render(t, r, "table"))
	}
	for _, f := range r.Findings {
		if f.ID == "audit-incomplete/dns-lost" {
			t.Error("dns-lost without a loss")
		}
	}
	s.DNS.Dropped = 3
	r, err = Run(s, Options{Matrix: m, Site: site, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	var lost bool
	for _, f := range r.Findings {
		lost = lost || f.ID == "audit-incomplete/dns-lost"
	}
	if !lost || r.Coverage.Complete {
		t.Errorf("3 dropped answers: dns-lost %v, coverage complete %v", lost, r.Coverage.Complete)
	}
	for _, format := range []string{"table", "json", "html", "sarif", "junit"} {
		if out := string(render(t, r, format)); !strings.Contains(out, "3 dropped") && !strings.Contains(out, "3 DNS answers were dropped") {
			t.Errorf("%s does not report the dropped answers", format)
		}
	}
}
