package replay

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
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

// TestReplayDNSBurstNotDropped: a capture that is a burst of DNS answers,
// many times what the ring holds, loses none of them on either path, with
// the live ring size or replay's own, and with one or two workers: a batch
// carries at most half a ring of answers, and the ring is drained before a
// batch that would not fit. Some answers are the same frame over and over
// (the per-packet path runs those as one job with a repeat count).
func TestReplayDNSBurstNotDropped(t *testing.T) {
	testenv.RequireBPF(t)
	resolver := netip.MustParseAddr("198.51.100.53")
	var pkts []pkt
	const distinct, repeated = 3000, 1500
	for i := range distinct {
		addr := netip.AddrFrom4([4]byte{203, 0, byte(113 + i/250), byte(i % 250)})
		pkts = append(pkts, pkt{ts: epoch.Add(time.Duration(i) * time.Millisecond),
			frame: ipFrame(t, resolver, hostA, &layers.UDP{SrcPort: 53, DstPort: 41000},
				gopacket.Payload(answerMsg(t, fmt.Sprintf("n%d.example.com", i), addr)))})
	}
	same := ipFrame(t, resolver, hostA, &layers.UDP{SrcPort: 53, DstPort: 41001},
		gopacket.Payload(answerMsg(t, "storm.example.com", netip.MustParseAddr("192.0.2.99"))))
	for i := range repeated {
		pkts = append(pkts, pkt{ts: epoch.Add(time.Duration(distinct+i) * time.Millisecond), frame: same})
	}
	path := filepath.Join(t.TempDir(), "burst.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, pkts)
	for _, ring := range []int{0, DNSRing} {
		for _, o := range []Options{{Workers: 1}, {Workers: 2}, {Workers: 1, PerPacket: true}} {
			name := fmt.Sprintf("ring=%d/workers=%d/per-packet=%v", ring, o.Workers, o.PerPacket)
			t.Run(name, func(t *testing.T) {
				c, err := bpf.Open(bpf.Options{EphemeralPorts: DefaultEphemeralPorts, Programs: Programs(o), DNSRing: ring})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				o.Local = localPrefixes
				r, err := Run(context.Background(), c, path, o)
				if err != nil {
					t.Fatal(err)
				}
				d := r.Snapshot.DNS
				if d == nil || d.Answers != distinct+repeated || d.Dropped != 0 || len(d.Names) != distinct+1 {
					t.Fatalf("dns: %d answers, %d dropped, %d names; want %d, 0, %d", d.Answers, d.Dropped, len(d.Names), distinct+repeated, distinct+1)
				}
			})
		}
	}
}
