package main

import (
	"testing"

	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// A part-2 round is the sum of its interleaved runs: every frame sent is
// delivered and, for flowaudit, counted; the ratio is the subject's summed
// rate over the reference's; the minimum is no larger than the median. And
// an ablation receiver counts every frame too.
func TestLineRateRounds(t *testing.T) {
	testenv.RequireBPF(t)
	l, err := newLab()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	g, err := newGenerator(l, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	nop, err := newNoopXDP(l)
	if err != nil {
		t.Fatal(err)
	}
	defer nop.Close()
	const n, rounds, interleave = 20000, 2, 4
	for _, cut := range []bpf.BenchCut{bpf.BenchCutNone, bpf.BenchCutAccount} {
		fa, err := newFlowauditRecv(l, true, cut, false, false)
		if err != nil {
			t.Fatal(err)
		}
		lr, err := measureLineRate(g, plainSend(g), nop, fa, n, rounds, interleave, t.Logf)
		fa.Close()
		if err != nil {
			t.Fatalf("%v: %v", cut, err)
		}
		if lr.rounds != rounds || len(lr.fa) != rounds || len(lr.noop) != rounds || lr.slices != interleave {
			t.Fatalf("%v: %d rounds (%d, %d runs summed), %d slices; want %d, %d", cut, lr.rounds, len(lr.fa), len(lr.noop), lr.slices, rounds, interleave)
		}
		var ratios []float64
		for i := range lr.fa {
			f, o := lr.fa[i], lr.noop[i]
			if f.sent != n || f.delivered != n || f.counted != n || o.sent != n || o.delivered != n || o.counted != -1 {
				t.Errorf("%v round %d: flowaudit sent %d delivered %d counted %d, no-op sent %d delivered %d counted %d; want %d each (no-op: -1 counted)",
					cut, i+1, f.sent, f.delivered, f.counted, o.sent, o.delivered, o.counted, n)
			}
			if f.wall <= 0 || o.wall <= 0 {
				t.Errorf("%v round %d: wall times %v, %v", cut, i+1, f.wall, o.wall)
			}
			ratios = append(ratios, f.pps()/o.pps())
		}
		if lr.minRatio != min(ratios[0], ratios[1]) || lr.minRatio > lr.ratio || !lr.countedOK {
			t.Errorf("%v: min %.3f, median %.3f, rounds %v, counted ok %v", cut, lr.minRatio, lr.ratio, ratios, lr.countedOK)
		}
	}
}
