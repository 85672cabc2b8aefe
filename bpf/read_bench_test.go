package bpf

import (
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/benchflows"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// ReadMaps on a flow map holding n synthetic flows (internal/benchflows,
// loaded with BenchLoadFlows): batch lookup, conversion, sort. Root only.
//
//	go test ./bpf -run '^$' -bench ReadMaps -count 10 > new.txt
func benchmarkReadMaps(b *testing.B, n int) {
	testenv.RequireBPF(b)
	m, site, err := benchflows.Load()
	if err != nil {
		b.Fatal(err)
	}
	g, err := benchflows.New(m, site, "if2")
	if err != nil {
		b.Fatal(err)
	}
	c, err := Open(Options{FlowEntries: uint32(max(n+n/20, DefaultFlowEntries)), EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for from := 0; from < n; from += 65536 {
		if err := c.BenchLoadFlows(g.Flows(from, min(from+65536, n))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r, err := c.ReadMaps()
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Flows) != n {
			b.Fatalf("read %d flows, loaded %d", len(r.Flows), n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/flow")
}

func BenchmarkReadMaps10k(b *testing.B)  { benchmarkReadMaps(b, 10_000) }
func BenchmarkReadMaps100k(b *testing.B) { benchmarkReadMaps(b, 100_000) }
func BenchmarkReadMaps1M(b *testing.B)   { benchmarkReadMaps(b, 1_000_000) }

// BenchLoadFlows and ReadMaps are inverses: every field survives the trip
// through the kernel map.
func TestBenchLoadFlowsRoundTrip(t *testing.T) {
	testenv.RequireBPF(t)
	m, site, err := benchflows.Load()
	if err != nil {
		t.Fatal(err)
	}
	g, err := benchflows.New(m, site, "if2")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(Options{EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := g.Snapshot(g.Flows(0, 5000), DefaultFlowEntries).Flows
	if err := c.BenchLoadFlows(want); err != nil {
		t.Fatal(err)
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Flows) != len(want) {
		t.Fatalf("read %d flows, loaded %d", len(r.Flows), len(want))
	}
	for i := range want {
		w, got := want[i], r.Flows[i]
		// Timestamps are kept in jiffies: equal to within one tick.
		tick := c.Tick()
		near := func(a, b time.Time) bool { d := a.Sub(b); return d > -tick && d < tick }
		if !near(got.FirstSeen, w.FirstSeen) || !near(got.LastSeen, w.LastSeen) {
			t.Fatalf("flow %d: times %v–%v, want %v–%v (±%s)", i, got.FirstSeen, got.LastSeen, w.FirstSeen, w.LastSeen, tick)
		}
		got.FirstSeen, got.LastSeen = w.FirstSeen, w.LastSeen
		if got != w {
			t.Fatalf("flow %d:\n got %+v\nwant %+v", i, got, w)
		}
	}
}
