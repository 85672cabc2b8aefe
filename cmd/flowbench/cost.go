package main

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

// Part 1: per-packet cost with BPF_PROG_TEST_RUN.

// costCell is one (program, packet, keys) measurement: the medians over
// the rounds and the median of the per-round ratios to the empty program
// measured right beside it.
type costCell struct {
	hook   bpf.Hook
	packet string
	keys   int
	repeat uint32
	fa     time.Duration // flowaudit: wall time of one whole run (median)
	empty  time.Duration // the empty program of the same type, beside it
	ratio  float64       // median of the per-round ratios
}

type costConfig struct {
	repeat uint32
	rounds int
	keys   []int
	cpu    int
}

// emptyProgram is an XDP (XDP_PASS) or TC (TCX_NEXT) program of two
// instructions: the cost of BPF_PROG_TEST_RUN's loop and the program call.
func emptyProgram(typ ebpf.ProgramType) (*ebpf.Program, error) {
	ret := int32(2) // XDP_PASS
	if typ == ebpf.SchedCLS {
		ret = -1 // TCX_NEXT
	}
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_empty", Type: typ, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()},
	})
}

// fillFlows loads n synthetic flows (distinct peers in 100.64.0.0/10) in
// batches.
func fillFlows(c *bpf.Collector, n int) error {
	const chunk = 65536
	now := time.Now()
	for from := 0; from < n; from += chunk {
		to := min(from+chunk, n)
		flows := make([]snapshot.Flow, 0, to-from)
		for i := from; i < to; i++ {
			flows = append(flows, snapshot.Flow{
				Direction: snapshot.Inbound, Proto: snapshot.TCP, Port: uint16(1 + i%1024),
				Peer:      netip.AddrFrom4([4]byte{100, 64 | byte(i>>16)&63, byte(i >> 8), byte(i)}),
				PacketsIn: 1, BytesIn: 60, FirstSeen: now, LastSeen: now,
			})
		}
		if err := c.BenchLoadFlows(flows); err != nil {
			return err
		}
	}
	return nil
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func medianF(f []float64) float64 {
	s := append([]float64(nil), f...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// measureCost runs part 1. Every flowaudit run is paired with a run of the
// empty program of the same type on the same frame, in alternating order
// (empty first in even rounds, flowaudit first in odd ones), so a noisy
// stretch hits both sides of a ratio.
func measureCost(cfg costConfig, logf func(string, ...any)) ([]costCell, map[ebpf.ProgramType]time.Duration, error) {
	w, err := newPinnedWorker(cfg.cpu)
	if err != nil {
		return nil, nil, err
	}
	defer w.stop()
	emptyXDP, err := emptyProgram(ebpf.XDP)
	if err != nil {
		return nil, nil, fmt.Errorf("load empty XDP program: %w", err)
	}
	defer emptyXDP.Close()
	emptyTC, err := emptyProgram(ebpf.SchedCLS)
	if err != nil {
		return nil, nil, fmt.Errorf("load empty TC program: %w", err)
	}
	defer emptyTC.Close()

	cases := packetCases()
	// One run is bounded by time as well as by count: 200 ns per packet
	// would already be slow; 50× that means something is wrong.
	bound := time.Duration(cfg.repeat) * 10 * time.Microsecond
	runRaw := func(p *ebpf.Program, frame []byte) (runResult, error) {
		var r runResult
		err := w.do(func() error {
			var err error
			for try := 0; try < 3; try++ {
				if r, err = testRun(p, frame, cfg.repeat, false, 0, 0, bound, nil); err == nil {
					return nil
				}
			}
			return err
		})
		return r, err
	}

	// BPF_PROG_TEST_RUN has a fixed cost per call besides the per-repeat
	// loop (for XDP it registers and unregisters an rxq, milliseconds):
	// measure it with repeat 1 and take it off every run's wall time, so
	// the ratio compares per-packet work only.
	overhead := map[ebpf.ProgramType]time.Duration{}
	for _, p := range []*ebpf.Program{emptyXDP, emptyTC} {
		var walls []time.Duration
		for i := 0; i < 7; i++ {
			var r runResult
			err := w.do(func() error {
				var err error
				r, err = testRun(p, cases[0].in, 1, false, 0, 0, time.Minute, nil)
				return err
			})
			if err != nil {
				return nil, nil, fmt.Errorf("fixed cost of a test run: %w", err)
			}
			walls = append(walls, r.wall)
		}
		overhead[p.Type()] = median(walls)
	}
	logf("  fixed cost per BPF_PROG_TEST_RUN call (subtracted): XDP %s, TC %s", overhead[ebpf.XDP], overhead[ebpf.SchedCLS])
	run := func(p *ebpf.Program, frame []byte) (runResult, error) {
		r, err := runRaw(p, frame)
		if err == nil {
			r.wall -= overhead[p.Type()]
		}
		return r, err
	}

	var cells []costCell
	for _, keys := range cfg.keys {
		entries := uint32(bpf.DefaultFlowEntries)
		if keys > int(entries)*3/4 {
			entries = uint32(keys + keys/20) // nearly full: 95 %
		}
		// One collector as a live recording runs it (the socket set is
		// complete), one as replay runs it (no socket set), and live ones
		// with the fast path or the flow cache off (costCollector).
		var colls [numCollectors]*bpf.Collector
		closeBoth := func() {
			for _, c := range colls {
				if c != nil {
					c.Close()
				}
			}
		}
		t0 := time.Now()
		for cc := range colls {
			c, err := bpf.Open(costCollector(cc).options(entries))
			if err != nil {
				closeBoth()
				return nil, nil, fmt.Errorf("open collector (%d entries): %w", entries, err)
			}
			colls[cc] = c
			if keys > 1 {
				if err := fillFlows(c, keys-1); err != nil {
					closeBoth()
					return nil, nil, err
				}
			}
		}
		logf("  flow map: %d entries, %d synthetic keys loaded in %s", entries, max(keys-1, 0), time.Since(t0).Round(time.Millisecond))
		type acc struct {
			fa, empty []time.Duration
			ratio     []float64
		}
		res := map[[2]int]*acc{}
		for round := 0; round < cfg.rounds; round++ {
			for ci, pc := range cases {
				for _, h := range []bpf.Hook{bpf.HookXDP, bpf.HookTCEgress} {
					c := colls[pc.coll]
					frame, empty := pc.in, emptyXDP
					if h == bpf.HookTCEgress {
						frame, empty = pc.out, emptyTC
					}
					if keys == 1 {
						// Exactly this packet's flow in the map.
						if err := c.Reset(); err != nil {
							closeBoth()
							return nil, nil, err
						}
					}
					var socks []snapshot.Socket
					if pc.listen != 0 {
						socks = []snapshot.Socket{{Proto: snapshot.TCP, Addr: local4, Port: pc.listen}}
					}
					if err := c.SetLocalPorts(socks); err != nil {
						closeBoth()
						return nil, nil, err
					}
					var rf, re runResult
					order := []bool{false, true} // empty first
					if round%2 == 1 {
						order = []bool{true, false}
					}
					for _, isFA := range order {
						var err error
						if isFA {
							rf, err = run(c.Program(h), frame)
						} else {
							re, err = run(empty, frame)
						}
						if err != nil {
							closeBoth()
							return nil, nil, fmt.Errorf("%s %s: %w", h, pc.name, err)
						}
					}
					k := [2]int{ci, int(h)}
					a := res[k]
					if a == nil {
						a = &acc{}
						res[k] = a
					}
					a.fa = append(a.fa, rf.wall)
					a.empty = append(a.empty, re.wall)
					a.ratio = append(a.ratio, float64(rf.wall)/float64(re.wall))
					logf("  round %d keys %d %-10s %-28s flowaudit %6.1f ns  empty %5.1f ns  ×%.2f",
						round+1, keys, h, pc.name, nsPer(rf.wall, cfg.repeat), nsPer(re.wall, cfg.repeat), float64(rf.wall)/float64(re.wall))
				}
			}
		}
		closeBoth()
		for ci, pc := range cases {
			for _, h := range []bpf.Hook{bpf.HookXDP, bpf.HookTCEgress} {
				a := res[[2]int{ci, int(h)}]
				cells = append(cells, costCell{hook: h, packet: pc.name, keys: keys, repeat: cfg.repeat,
					fa: median(a.fa), empty: median(a.empty), ratio: medianF(a.ratio)})
			}
		}
	}
	return cells, overhead, nil
}

// nsPer is the wall time of a run divided by its repeat count, in ns.
func nsPer(wall time.Duration, repeat uint32) float64 {
	return float64(wall.Nanoseconds()) / float64(repeat)
}
