package bpf

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
)

// BenchmarkAccumulatorBytes reports the heap one accumulated entry costs
// (B/entry), per-peer and folded, at the sizes of the default budget and
// the former one; the figures docs/ARCHITECTURE.md and --flow-budget's
// help quote. No kernel needed.
//
//	go test ./bpf -run '^$' -bench AccumulatorBytes -benchtime 1x
func BenchmarkAccumulatorBytes(b *testing.B) {
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	one := &accValue{packetsIn: 1, first: 1, last: 1}
	for _, n := range []int{65536, 100000, 262144} {
		for _, folded := range []bool{false, true} {
			name := "exact"
			if folded {
				name = "folded"
			}
			b.Run(fmt.Sprintf("%s/%d", name, n), func(b *testing.B) {
				var per float64
				for b.Loop() {
					h0 := heap()
					a := newAccumulator()
					for i := 0; i < n; i++ {
						// Each peer in its own /24: a folded entry per peer.
						k := accKey(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 443)
						if folded {
							k = accKey(netip.AddrFrom4([4]byte{byte(i >> 16), byte(i >> 8), byte(i), 1}), 443)
							a.mergeFolded(k, foldPrefix, one, nil)
						} else {
							a.addFlow(k, one)
						}
					}
					per = float64(heap()-h0) / float64(a.size())
					runtime.KeepAlive(a)
				}
				b.ReportMetric(per, "B/entry")
			})
		}
	}
}
