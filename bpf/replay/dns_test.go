package replay

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/dns/dnsmessage"
)

// answerMsg is a DNS response giving addr for name.
func answerMsg(tb testing.TB, name string, addr netip.Addr) []byte {
	tb.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 9, Response: true})
	n := dnsmessage.MustNewName(name + ".")
	if err := b.StartQuestions(); err != nil {
		tb.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		tb.Fatal(err)
	}
	if err := b.StartAnswers(); err != nil {
		tb.Fatal(err)
	}
	if err := b.AResource(dnsmessage.ResourceHeader{Name: n, Class: dnsmessage.ClassINET, TTL: 120}, dnsmessage.AResource{A: addr.As4()}); err != nil {
		tb.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		tb.Fatal(err)
	}
	return msg
}

// TestReplayDNS: the capture's DNS answers fill the snapshot's dns
// section, with times in capture time; a capture without answers has none.
func TestReplayDNS(t *testing.T) {
	c := openCollector(t)
	feed := netip.MustParseAddr("203.0.113.7")
	resolver := netip.MustParseAddr("198.51.100.53")
	answerAt := epoch.Add(10 * time.Second)
	pkts := []pkt{
		{ts: epoch, frame: ipFrame(t, hostA, resolver, udpDgram(41000, 53, 30)...)},
		{ts: answerAt, frame: ipFrame(t, resolver, hostA, &layers.UDP{SrcPort: 53, DstPort: 41000},
			gopacket.Payload(answerMsg(t, "data.alienvault.com", feed)))},
		{ts: epoch.Add(11 * time.Second), frame: ipFrame(t, hostA, feed, tcpSeg(42000, 80, "S", 0)...)},
		{ts: epoch.Add(11*time.Second + time.Millisecond), frame: ipFrame(t, feed, hostA, tcpSeg(80, 42000, "SA", 0)...)},
	}
	path := filepath.Join(t.TempDir(), "dns.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, pkts)
	r, err := Run(context.Background(), c, path, Options{Local: localPrefixes, Resolution: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d := r.Snapshot.DNS
	if d == nil || d.Answers != 1 || len(d.Names) != 1 {
		t.Fatalf("dns section: %+v", d)
	}
	n := d.Names[0]
	if n.Addr != feed || n.Name != "data.alienvault.com" || n.TTL != 120 || n.Server != resolver {
		t.Errorf("name %+v", n)
	}
	// Capture time, within the resolution.
	if n.FirstSeen.After(answerAt) || n.FirstSeen.Before(answerAt.Add(-time.Second)) || n.LastSeen.Before(answerAt) || n.LastSeen.After(answerAt.Add(time.Second)) {
		t.Errorf("answer seen %s..%s, true %s", n.FirstSeen, n.LastSeen, answerAt)
	}
	// The answer came before the connection's first packet.
	for _, f := range r.Snapshot.Flows {
		if f.Port == 80 && !n.ValidFor(f.FirstSeen) {
			t.Errorf("answer at %s not valid for the flow at %s", n.FirstSeen, f.FirstSeen)
		}
	}

	// No answers: no section.
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	writePcap(t, path, layers.LinkTypeEthernet, pkts[2:])
	r, err = Run(context.Background(), c, path, Options{Local: localPrefixes, Resolution: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Snapshot.DNS != nil {
		t.Errorf("dns section without answers: %+v", r.Snapshot.DNS)
	}
}
