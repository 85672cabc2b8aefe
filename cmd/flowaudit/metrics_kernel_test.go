package main

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
	"github.com/flowaudit/flowaudit/internal/metrics"
)

// tcpFrame is an Ethernet/IPv4/TCP frame without payload.
func tcpFrame(src, dst netip.Addr, sport, dport uint16, flags byte) []byte {
	f := make([]byte, 14+20+20)
	copy(f[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(f[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	tcp[12], tcp[13] = 0x50, flags
	binary.BigEndian.PutUint16(tcp[14:], 0xffff)
	return f
}

const (
	tcpSYN    = 0x02
	tcpSYNACK = 0x12
)

// TestMetricsBoundedKernel100kPeers: 100 000 distinct peers go through the
// real BPF programs (BPF_PROG_TEST_RUN) and moves into watch's metrics —
// a flow map small enough to overflow, half of the connections answered
// on 2 000 ports. The traffic metrics stay within their limit, carry no
// address, and count every packet the programs counted.
func TestMetricsBoundedKernel100kPeers(t *testing.T) {
	testenv.RequireBPF(t)
	mf := matrixFlags{matrix: "labapp", role: "server", site: "testdata/lab-site.yaml", catalogs: []string{"testdata/lab-catalog.yaml"}}
	res, err := mf.resolve()
	if err != nil {
		t.Fatal(err)
	}
	out := &watchOutputs{metrics: metrics.New(metrics.Options{Matrix: res.matrix, Site: res.site, MaxExtraPorts: metrics.DefaultExtraPorts})}
	c, err := bpf.Open(bpf.Options{FlowEntries: 16384, EphemeralPorts: [2]uint16{32768, 60999}, OnMove: out.moved})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := netip.MustParseAddr("192.0.2.1")
	const peers = 100_000
	var syns, synacks uint64
	start := time.Now()
	for i := 0; i < peers; i++ {
		peer := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if i%50 == 0 {
			peer = netip.MustParseAddr("192.0.2.2") // the CLIENTS zone, over and over
		}
		sport := uint16(32768 + i%28000)
		// 2 000 ports (22, documented, among them): the answered ones (even
		// i) are odd, the others even.
		dport := uint16(1 + (i*7919)%2000)
		if _, err := c.Run(bpf.HookXDP, tcpFrame(peer, local, sport, dport, tcpSYN)); err != nil {
			t.Fatal(err)
		}
		syns++
		if i%2 == 0 {
			if _, err := c.Run(bpf.HookTCEgress, tcpFrame(local, peer, dport, sport, tcpSYNACK)); err != nil {
				t.Fatal(err)
			}
			synacks++
		}
		if i%20_000 == 19_999 {
			if _, err := c.Move(); err != nil {
				t.Fatal(err)
			}
		}
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d peers, %d frames in %s; %d flows, %d overflow entries, %d packets without peer, %d not counted",
		peers, syns+synacks, time.Since(start).Round(time.Millisecond), len(r.Flows), len(r.Overflow), r.Stats.FlowInsertFailed, r.Stats.OverflowInsertFailed)
	if r.Stats.FlowInsertFailed == 0 || r.Stats.OverflowInsertFailed != 0 {
		t.Errorf("stats %+v: want the flow map to overflow into the overflow map, nothing lost", r.Stats)
	}
	m := out.metrics
	limit := m.SeriesLimit()
	sums := map[string]float64{}
	zones, ports := map[string]bool{}, map[string]bool{}
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, fam := range mfs {
		if !strings.HasPrefix(fam.GetName(), "flowaudit_received_") && !strings.HasPrefix(fam.GetName(), "flowaudit_sent_") {
			continue
		}
		if n := len(fam.GetMetric()); n > limit {
			t.Errorf("%s: %d series, over the limit %d", fam.GetName(), n, limit)
		} else if fam.GetName() == "flowaudit_received_packets_total" {
			series = n
		}
		for _, s := range fam.GetMetric() {
			sums[fam.GetName()] += s.GetCounter().GetValue()
			for _, l := range s.GetLabel() {
				if _, err := netip.ParseAddr(l.GetValue()); err == nil {
					t.Fatalf("%s: label %s=%s is an address", fam.GetName(), l.GetName(), l.GetValue())
				}
				switch l.GetName() {
				case "zone":
					zones[l.GetValue()] = true
				case "port":
					ports[l.GetValue()] = true
				}
			}
		}
	}
	t.Logf("flowaudit_received_packets_total: %d series (limit %d), zones %v, %d port labels", series, limit, keys(zones), len(ports))
	if sums["flowaudit_received_packets_total"] != float64(syns) || sums["flowaudit_sent_packets_total"] != float64(synacks) {
		t.Errorf("metrics count %.0f packets received, %.0f sent; the programs saw %d SYNs and %d SYN-ACKs",
			sums["flowaudit_received_packets_total"], sums["flowaudit_sent_packets_total"], syns, synacks)
	}
	if sums["flowaudit_received_bytes_total"] != float64(syns*54) {
		t.Errorf("received bytes %.0f, want %d", sums["flowaudit_received_bytes_total"], syns*54)
	}
	for _, z := range []string{"CLIENTS", "unbound", "unknown"} {
		if !zones[z] {
			t.Errorf("no series for zone %s", z)
		}
	}
	// Documented 22, 16 answered ports admitted, "other"; never a port
	// that only got SYNs.
	if !ports["22"] || !ports["other"] || len(ports) != 1+metrics.DefaultExtraPorts+1 {
		t.Errorf("port labels %v", keys(ports))
	}
	for p := range ports {
		if n, err := strconv.Atoi(p); err == nil && p != "22" && n%2 == 0 {
			t.Errorf("port %s has a label but was never answered", p)
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
