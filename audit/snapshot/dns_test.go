package snapshot

import (
	"bytes"
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDNSRoundTrip(t *testing.T) {
	in := sample()
	at := in.Start.Add(time.Minute)
	in.DNS = &DNS{Answers: 3, Dropped: 1, Cut: 1, Names: []DNSName{
		{Addr: netip.MustParseAddr("203.0.113.7"), Name: "data.alienvault.com", Chain: []string{"d1.cdn.example"},
			Server: netip.MustParseAddr("192.0.2.53"), FirstSeen: at, LastSeen: at.Add(time.Second), TTL: 60, Answers: 2},
		{Addr: netip.MustParseAddr("2001:db8::7"), Name: "otx.alienvault.com", FirstSeen: at, LastSeen: at, TTL: 300, Answers: 1},
	}}
	p := filepath.Join(t.TempDir(), "s.json")
	if err := WriteFile(p, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in.DNS, out.DNS) {
		t.Errorf("dns section changed:\n%+v\n%+v", in.DNS, out.DNS)
	}
	if ns := out.DNS.NamesOf(netip.MustParseAddr("::ffff:203.0.113.7")); len(ns) != 1 || ns[0].Name != "data.alienvault.com" {
		t.Errorf("NamesOf: %v", ns)
	}
	if !out.DNS.Resolved("*.alienvault.com") || out.DNS.Resolved("*.example.com") || !out.DNS.Lossy() {
		t.Error("Resolved/Lossy")
	}
	// A snapshot without the section (every older file) reads as before.
	var b bytes.Buffer
	if err := Write(&b, sample()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), `"dns"`) {
		t.Error("dns written without a section")
	}
	s, err := Read(&b, "old.json")
	if err != nil || s.DNS != nil {
		t.Fatalf("older snapshot: %v, dns %v", err, s.DNS)
	}
	// Invariants.
	bad := sample()
	bad.DNS = &DNS{Names: []DNSName{{Addr: netip.MustParseAddr("203.0.113.7"), FirstSeen: at, LastSeen: at}}}
	b.Reset()
	if err := Write(&b, bad); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(&b, "bad.json"); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "dns.names[0]: missing name") {
		t.Errorf("bad dns entry: %v", err)
	}
}

func TestMatchNameAndValidFor(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"data.alienvault.com", "Data.AlienVault.com.", true},
		{"*.alienvault.com", "otx.alienvault.com", true},
		{"*.alienvault.com", "a.b.alienvault.com", true},
		{"*.alienvault.com", "alienvault.com", false},
		{"*.alienvault.com", "evilalienvault.com", false},
		{"data.alienvault.com", "otx.alienvault.com", false},
	} {
		if got := MatchName(c.pattern, c.name); got != c.want {
			t.Errorf("MatchName(%q, %q) = %v", c.pattern, c.name, got)
		}
	}
	at := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	n := DNSName{FirstSeen: at, TTL: 30}
	for d, want := range map[time.Duration]bool{time.Minute: true, 0: true, -30 * time.Second: true, -31 * time.Second: false} {
		if got := n.ValidFor(at.Add(d)); got != want {
			t.Errorf("answer at %s, TTL 30 s, flow at %+v: %v", at, d, got)
		}
	}
}
