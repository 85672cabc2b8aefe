package bpf

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// dnsAnswer builds a DNS response for q: a CNAME chain (names[0] →
// names[1] → …) whose last name holds addrs.
func dnsAnswer(t testing.TB, names []string, addrs ...netip.Addr) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, Response: true, RecursionAvailable: true})
	b.EnableCompression()
	qt := dnsmessage.TypeA
	if len(addrs) > 0 && addrs[0].Is6() {
		qt = dnsmessage.TypeAAAA
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.StartQuestions())
	must(b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(names[0] + "."), Type: qt, Class: dnsmessage.ClassINET}))
	must(b.StartAnswers())
	for i := 0; i+1 < len(names); i++ {
		must(b.CNAMEResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(names[i] + "."), Class: dnsmessage.ClassINET, TTL: 300},
			dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(names[i+1] + ".")}))
	}
	last := dnsmessage.MustNewName(names[len(names)-1] + ".")
	for _, a := range addrs {
		h := dnsmessage.ResourceHeader{Name: last, Class: dnsmessage.ClassINET, TTL: 60}
		if a.Is4() {
			must(b.AResource(h, dnsmessage.AResource{A: a.As4()}))
		} else {
			must(b.AAAAResource(h, dnsmessage.AAAAResource{AAAA: a.As16()}))
		}
	}
	msg, err := b.Finish()
	must(err)
	return msg
}

// TestDNSAnswersHandedOver: answers from port 53 over UDP and TCP, IPv4
// and IPv6, reach the table through XDP and through TC ingress; the
// same packets sent (egress), and answers from another port, do not; an
// answer longer than DNS_CAP is counted as cut and still parsed.
func TestDNSAnswersHandedOver(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a1, a2 := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.8")
	a6 := netip.MustParseAddr("2001:db8:5::7")
	udpMsg := dnsAnswer(t, []string{"data.alienvault.com", "d1.cdn.example.net"}, a1, a2)
	udp6Msg := dnsAnswer(t, []string{"otx.alienvault.com"}, a6)
	tcpBody := dnsAnswer(t, []string{"reputation.alienvault.com"}, a2)
	tcpMsg := binary.BigEndian.AppendUint16(nil, uint16(len(tcpBody)))
	tcpMsg = append(tcpMsg, tcpBody...)

	udpFrame := func(w wire, sport uint16, msg []byte, v6 bool) []byte {
		if v6 {
			return serialize(t, eth(w, layers.EthernetTypeIPv6), ip6(w, layers.IPProtocolUDP), withUDP(t, udp(sport, 41000), ip6(w, layers.IPProtocolUDP)), gopacket.Payload(msg))
		}
		return serialize(t, eth(w, layers.EthernetTypeIPv4), ip4(w, layers.IPProtocolUDP), withUDP(t, udp(sport, 41000), ip4(w, layers.IPProtocolUDP)), gopacket.Payload(msg))
	}
	tcpFrame := func(msg []byte) []byte {
		ip := ip4(in, layers.IPProtocolTCP)
		tc := tcp(53, 41001, fPSHACK)
		if err := tc.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		return serialize(t, eth(in, layers.EthernetTypeIPv4), ip, tc, gopacket.Payload(msg))
	}
	// A long answer: 60 addresses (16 bytes each after the first) exceed 1280 bytes.
	var many []netip.Addr
	for i := range 100 {
		many = append(many, netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}))
	}
	longMsg := dnsAnswer(t, []string{"cdn.walkme.com"}, many...)
	if len(longMsg) <= dnsCap {
		t.Fatalf("long answer only %d bytes", len(longMsg))
	}

	for _, h := range []Hook{HookXDP, HookTCIngress} {
		t.Run(h.String(), func(t *testing.T) {
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
			for _, f := range [][]byte{udpFrame(in, 53, udpMsg, false), udpFrame(in, 53, udp6Msg, true), tcpFrame(tcpMsg),
				udpFrame(in, 5353, udpMsg, false), udpFrame(in, 53, longMsg, false)} {
				if _, err := c.Run(h, f); err != nil {
					t.Fatal(err)
				}
			}
			// Sent answers (this host as a DNS server) are not learned.
			if _, err := c.Run(HookTCEgress, udpFrame(out, 53, dnsAnswer(t, []string{"egress.example.com"}, a1), false)); err != nil {
				t.Fatal(err)
			}
			d, err := c.DNS()
			if err != nil {
				t.Fatal(err)
			}
			if d.Answers != 4 || d.Dropped != 0 || d.Cut != 1 || d.Unparsed != 0 {
				t.Errorf("answers %d dropped %d cut %d unparsed %d, want 4, 0, 1, 0", d.Answers, d.Dropped, d.Cut, d.Unparsed)
			}
			got := map[string]bool{}
			for _, n := range d.Names {
				got[n.Addr.String()+" "+n.Name+" "+strings.Join(n.Chain, ">")] = true
				if n.Server != peer4 && n.Server != peer6 {
					t.Errorf("%s %s: server %s", n.Addr, n.Name, n.Server)
				}
			}
			for _, want := range []string{
				"203.0.113.7 d1.cdn.example.net ", "203.0.113.7 data.alienvault.com d1.cdn.example.net",
				"203.0.113.8 d1.cdn.example.net ", "203.0.113.8 data.alienvault.com d1.cdn.example.net",
				"2001:db8:5::7 otx.alienvault.com ", "203.0.113.8 reputation.alienvault.com ",
				"198.51.100.1 cdn.walkme.com ",
			} {
				if !got[want] {
					t.Errorf("missing %q", want)
				}
			}
			for k := range got {
				if strings.Contains(k, "egress.example.com") {
					t.Errorf("learned from a sent answer: %s", k)
				}
			}
			// The cut answer: records up to the cut, none after it.
			walk := 0
			for _, n := range d.Names {
				if n.Name == "cdn.walkme.com" {
					walk++
				}
			}
			if walk == 0 || walk >= 100 {
				t.Errorf("cut answer gave %d of 100 addresses, want some but not all", walk)
			}
			var ds snapshot.DNS = *d
			if ds.Lossy() {
				t.Error("lossy without drops")
			}
		})
	}
}

func withUDP(t testing.TB, u *layers.UDP, ip gopacket.NetworkLayer) *layers.UDP {
	if err := u.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return u
}

// TestDNSRingWakesAtMarks: an answer wakes the DNS reader only when it
// takes the bytes waiting in dns_ring across a quarter of the ring
// (dns_wake_bytes); answers below the mark wait for the reader's
// deadline. Without that, every answer cost an irq_work (a self-IPI).
func TestDNSRingWakesAtMarks(t *testing.T) {
	testenv.RequireBPF(t)
	const ring = 64 << 10
	rec := DNSRecordBytes
	below := (ring/4 - 1) / rec // answers that stay below the first mark
	frame := serialize(t, eth(in, layers.EthernetTypeIPv4), ip4(in, layers.IPProtocolUDP),
		withUDP(t, udp(53, 41000), ip4(in, layers.IPProtocolUDP)),
		gopacket.Payload(dnsAnswer(t, []string{"data.alienvault.com"}, netip.MustParseAddr("203.0.113.7"))))
	send := func(c *Collector, n int) {
		t.Helper()
		for range n {
			if _, err := c.Run(HookXDP, frame); err != nil {
				t.Fatal(err)
			}
		}
	}
	// waiting polls the bytes left unread in the ring until cond holds
	// (true) or limit passes (false).
	waiting := func(c *Collector, cond func(int) bool, limit time.Duration) bool {
		for end := time.Now().Add(limit); ; time.Sleep(5 * time.Millisecond) {
			if cond(c.dns.rd.AvailableBytes()) {
				return true
			}
			if time.Now().After(end) {
				return false
			}
		}
	}
	zero := func(n int) bool { return n == 0 }

	t.Run("mark", func(t *testing.T) {
		c, err := Open(Options{EphemeralPorts: [2]uint16{32768, 60999}, DNSRing: ring, dnsDrain: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		send(c, below)
		// Nothing woke the reader: the answers stay in the ring.
		if waiting(c, func(n int) bool { return n != below*rec }, 300*time.Millisecond) {
			t.Fatalf("%d bytes waiting after %d answers below the mark, want %d: the reader was woken", c.dns.rd.AvailableBytes(), below, below*rec)
		}
		send(c, 1) // across the mark: the reader wakes and reads all
		if !waiting(c, zero, 5*time.Second) {
			t.Fatalf("%d bytes still waiting 5 s after the answer that crossed the mark", c.dns.rd.AvailableBytes())
		}
		d, err := c.DNS()
		if err != nil {
			t.Fatal(err)
		}
		if d.Answers != uint64(below+1) || d.Dropped != 0 {
			t.Errorf("answers %d dropped %d, want %d, 0", d.Answers, d.Dropped, below+1)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		c, err := Open(Options{EphemeralPorts: [2]uint16{32768, 60999}, DNSRing: ring, dnsDrain: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range 3 { // the deadline is set again after each drain
			send(c, 1)
			if !waiting(c, zero, 5*time.Second) {
				t.Fatalf("an answer below the mark still unread 5 s later (deadline 50 ms)")
			}
		}
	})
}
