package replay

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
)

// BenchmarkReplay: packets per second through BPF_PROG_TEST_RUN for a
// synthetic 5-minute capture of an appliance (mixed TCP/UDP/ICMP/ARP,
// IPv4 and IPv6, ~5 000 conversations, ~20 000 flows).
//
//	go test ./bpf/replay -run '^$' -bench Replay -benchtime 3x
//
// Metrics: pkts/s is the replay pass (read, convert, test_run, flow-time
// observation), pkts/s-total the whole Run (scan pass and map reset too),
// calls/pkt the test_run calls per packet (identical consecutive frames
// share one call). Variants: one worker and one per CPU; "slices=1"
// observes the flow map once instead of once per second of capture time.
func BenchmarkReplay(b *testing.B) {
	c := openCollector(b)
	pkts := synthTraffic(b, 4, 5000, 5*time.Minute)
	path := filepath.Join(b.TempDir(), "bench.pcap")
	writePcap(b, path, layers.LinkTypeEthernet, pkts)
	// Syslog storms: one sender repeating the same datagram, the case
	// test_run's repeat count can batch: the appliance forwarding (TC
	// egress) and receiving (XDP).
	storm := func(name string, src, dst netip.Addr) string {
		var pk []pkt
		frame := ipFrame(b, src, dst, udpDgram(41000, 514, 200)...)
		for i := 0; i < 50000; i++ {
			pk = append(pk, pkt{ts: epoch.Add(time.Duration(i) * time.Millisecond), frame: frame})
		}
		p := filepath.Join(b.TempDir(), name)
		writePcap(b, p, layers.LinkTypeEthernet, pk)
		return p
	}
	stormOut, stormIn := storm("out.pcap", hostA, peerB), storm("in.pcap", peerB, hostA)

	for _, v := range []struct {
		name string
		path string
		o    Options
	}{
		{"mixed/batch/workers=1", path, Options{Workers: 1}},
		{fmt.Sprintf("mixed/batch/workers=%d", runtime.NumCPU()), path, Options{Workers: runtime.NumCPU()}},
		{"mixed/per-packet/workers=1", path, Options{Workers: 1, PerPacket: true}},
		{"mixed/per-packet/workers=1/slices=1", path, Options{Workers: 1, Resolution: time.Hour, PerPacket: true}},
		{fmt.Sprintf("mixed/per-packet/workers=%d/slices=1", runtime.NumCPU()), path, Options{Workers: runtime.NumCPU(), Resolution: time.Hour, PerPacket: true}},
		{"storm-egress/batch/workers=1", stormOut, Options{Workers: 1}},
		{"storm-ingress/batch/workers=1", stormIn, Options{Workers: 1}},
		{"storm-egress/per-packet/workers=1", stormOut, Options{Workers: 1, PerPacket: true}},
		{"storm-ingress/per-packet/workers=1", stormIn, Options{Workers: 1, PerPacket: true}},
	} {
		b.Run(v.name, func(b *testing.B) {
			v.o.Local = localPrefixes
			var res *Result
			var replayed int
			var elapsed time.Duration
			for i := 0; i < b.N; i++ {
				r, err := Run(context.Background(), c, v.path, v.o)
				if err != nil {
					b.Fatal(err)
				}
				res = r
				replayed += r.Replayed
				elapsed += r.Elapsed
			}
			b.ReportMetric(float64(replayed)/elapsed.Seconds(), "pkts/s")
			b.ReportMetric(float64(replayed)/b.Elapsed().Seconds(), "pkts/s-total")
			b.ReportMetric(float64(res.Calls)/float64(res.Replayed), "calls/pkt")
			b.ReportMetric(float64(len(res.Snapshot.Flows)), "flows")
		})
	}
}
