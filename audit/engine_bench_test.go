package audit_test

import (
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/benchflows"
)

// Audit of a synthetic UTMStack v11 manager recording against the built-in
// utmstack@11 matrix (internal/benchflows), n distinct flows. Compare runs
// with benchstat:
//
//	go test ./audit -run '^$' -bench Audit -count 10 > new.txt
func benchmarkAudit(b *testing.B, n int) {
	m, site, err := benchflows.Load()
	if err != nil {
		b.Fatal(err)
	}
	g, err := benchflows.New(m, site, "eth0")
	if err != nil {
		b.Fatal(err)
	}
	snap := g.Snapshot(g.Flows(0, n), uint32(n+n/20))
	now := func() time.Time { return benchflows.Start.Add(2 * time.Hour) }
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := audit.Run(snap, audit.Options{Matrix: m, Site: site, Now: now}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/flow")
}

func BenchmarkAudit10k(b *testing.B)  { benchmarkAudit(b, 10_000) }
func BenchmarkAudit100k(b *testing.B) { benchmarkAudit(b, 100_000) }
func BenchmarkAudit1M(b *testing.B)   { benchmarkAudit(b, 1_000_000) }
