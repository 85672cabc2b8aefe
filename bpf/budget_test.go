package bpf

import (
	"maps"
	"net/netip"
	"testing"
	"time"
)

// bucketCollector is a collector with only its userspace memory: enough to
// drive the buckets, the budget and lending without a kernel.
func bucketCollector(budget int, window time.Duration, now time.Time) *Collector {
	c := &Collector{budget: budget, window: window}
	c.resetBuckets(now)
	return c
}

// simMove adds one move's worth of entries: n new flood peers on tcp/443,
// each in its own /24 (spoofed sources), 40 new peers on tcp/22 and the
// same 30 peers on udp/53 every time.
func simMove(c *Collector, move, n int, check func()) {
	one := &accValue{packetsIn: 1}
	for i := 0; i < n; i++ {
		x := uint32(move*n+i) * 2654435761 // distinct, spread over the address space
		c.addFlow(accKey(netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), 1}), 443), one)
		check()
	}
	for i := 0; i < 40; i++ {
		c.addFlow(accKey(netip.AddrFrom4([4]byte{192, 0, byte(move), byte(i)}), 22), one)
		check()
	}
	for i := 0; i < 30; i++ {
		c.addFlow(accKey(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 53), one)
		check()
	}
}

// TestBudgetCoversAllBuckets: the budget bounds the entries of all the
// buckets of a sliding window together, after every entry a move adds —
// and a single bucket may use all of it (each bucket does not get a fixed
// share) — and without a window the same bound holds.
func TestBudgetCoversAllBuckets(t *testing.T) {
	const budget = 7000
	for _, window := range []time.Duration{time.Hour, 0} {
		t.Run("window="+window.String(), func(t *testing.T) {
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			c := bucketCollector(budget, window, now)
			most, mostFirst, buckets := 0, 0, 0
			check := func() {
				n := c.entries()
				if n > budget {
					t.Fatalf("%d entries in %d buckets, budget %d", n, len(c.buckets), budget)
				}
				most = max(most, n)
				if len(c.buckets) == 1 && c.buckets[0].start.Equal(now) || window == 0 {
					mostFirst = max(mostFirst, n)
				}
			}
			// Two simulated hours, one move a minute, 600 new flood peers
			// each: 72 000 distinct peers.
			for m := 0; m < 120; m++ {
				simMove(c, m, 600, check)
				c.rotateAt(now.Add(time.Duration(m+1)*time.Minute), statsRead{})
				check()
				buckets = max(buckets, len(c.buckets))
			}
			if window > 0 && buckets != windowBuckets+1 {
				t.Errorf("at most %d buckets, want %d: the window never filled", buckets, windowBuckets+1)
			}
			if window == 0 && buckets != 1 {
				t.Errorf("%d buckets without a window", buckets)
			}
			// The first bucket alone filled the budget before folding.
			if mostFirst < budget*9/10 {
				t.Errorf("the first bucket held at most %d entries before folding, want ≥ 90 %% of the budget %d", mostFirst, budget)
			}
			if len(c.foldLog) == 0 {
				t.Fatal("nothing folded")
			}
			// The flood folded, not the services with few peers: tcp/22
			// and udp/53 keep their exact peers.
			for _, ev := range c.foldLog {
				if ev.Port != 443 {
					t.Errorf("fold %+v: only the flooded tcp/443 should fold", ev)
				}
			}
			// An export of the window sees at most the budget too.
			accs := c.lend()
			if n := mergeLent(accs).size(); n > budget {
				t.Errorf("export: %d entries, budget %d", n, budget)
			}
			c.returnLent()
			t.Logf("most entries %d (first bucket %d), %d folds, %d buckets at most", most, mostFirst, len(c.foldLog), buckets)
		})
	}
}

// TestBudgetWhileLent: while an export reads the buckets, moves go to a
// delta and folding leaves the lent accumulators untouched; once they are
// returned, the delta is merged in, nothing is lost, and the whole is held
// to the budget again.
func TestBudgetWhileLent(t *testing.T) {
	const budget = 5000
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := bucketCollector(budget, 0, now)
	simMove(c, 0, 4000, func() {})
	accs := c.lend()
	if len(accs) != 1 {
		t.Fatalf("%d accumulators lent, want 1", len(accs))
	}
	before := maps.Collect(accs[0].flows.all())
	// A flood during the export: far beyond the budget.
	for m := 1; m <= 6; m++ {
		simMove(c, m, 2000, func() {})
	}
	if !maps.Equal(before, maps.Collect(accs[0].flows.all())) {
		t.Fatal("a lent accumulator changed during the export")
	}
	if c.cur().delta == nil || c.cur().delta.size() == 0 {
		t.Fatal("moves during the export did not go to the delta")
	}
	if len(c.foldLog) == 0 {
		t.Error("the delta was not held to the budget during the export")
	}
	c.returnLent()
	if c.cur().lent || c.cur().delta != nil {
		t.Fatal("bucket still lent after returnLent")
	}
	if n := c.entries(); n > budget {
		t.Errorf("%d entries after the export, budget %d", n, budget)
	}
	var packets uint64
	for _, v := range c.cur().acc.flows.all() {
		packets += v.packetsIn
	}
	if want := uint64(4000 + 70 + 6*(2000+70)); packets != want {
		t.Errorf("%d packets after the export, want %d", packets, want)
	}
}

// TestBudgetUnreachable: when folding cannot reach the budget (more
// services than the budget has entries), enforcement does not run on
// every entry, and the entries still stay within 10 % of the budget of
// what cannot fold.
func TestBudgetUnreachable(t *testing.T) {
	const budget = 1000
	c := bucketCollector(budget, 0, time.Now())
	one := &accValue{packetsIn: 1}
	folds := 0
	for port := 1; port <= 3000; port++ {
		c.addFlow(accKey(netip.MustParseAddr("198.51.100.1"), uint16(port)), one)
		if len(c.foldLog) != folds {
			folds = len(c.foldLog)
		}
	}
	// 3000 services with one peer each: "other peers" saves nothing.
	if n := c.entries(); n != 3000 {
		t.Errorf("%d entries, want 3000 (nothing can fold)", n)
	}
	if c.enforceAt <= c.entries() {
		t.Errorf("enforceAt %d: enforcement would run on every entry", c.enforceAt)
	}
}
