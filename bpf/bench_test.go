package bpf

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// Per-packet cost of the flow map variants, with BPF_PROG_TEST_RUN.
// Run: go test ./bpf -run '^$' -bench MapVariants -benchtime 1x
// The numbers and the choice are in docs/ARCHITECTURE.md.

// fillKeys makes n distinct flows (n peers) by running one UDP packet per
// peer through XDP, so the map holds n entries before measuring.
func fillKeys(tb testing.TB, c *Collector, n int) {
	tb.Helper()
	frame := udp4(tb, in, 41000, 514)
	for i := 0; i < n; i++ {
		binary.BigEndian.PutUint32(frame[14+12:], 0x0a000000+uint32(i)) // source 10.x.y.z
		if _, err := c.Run(HookXDP, frame); err != nil {
			tb.Fatal(err)
		}
	}
}

// runParallel runs repeat test_runs of frame on each of cpus threads, each
// pinned to its own CPU, and returns the wall time per packet.
func runParallel(tb testing.TB, p *ebpf.Program, frame []byte, repeat, cpus int) time.Duration {
	tb.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, cpus)
	for cpu := 0; cpu < cpus; cpu++ {
		wg.Add(1)
		go func(cpu int) {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				errs <- err
				return
			}
			<-start
			if _, err := p.Run(&ebpf.RunOptions{Data: frame, Repeat: uint32(repeat)}); err != nil {
				errs <- err
			}
		}(cpu)
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	el := time.Since(t0)
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
	return el / time.Duration(repeat)
}

func BenchmarkMapVariants(b *testing.B) {
	testenv.RequireBPF(b)
	const repeat = 2_000_000
	frame := tcp4(b, in, 40000, 9000, fACK)
	ncpu := runtime.NumCPU()
	for _, typ := range []ebpf.MapType{ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash} {
		for _, keys := range []int{1, 10_000} {
			for _, cpus := range []int{1, ncpu} {
				b.Run(fmt.Sprintf("%s/keys=%d/cpus=%d", typ, keys, cpus), func(b *testing.B) {
					c, err := Open(Options{FlowMapType: typ, FlowEntries: 65536})
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					fillKeys(b, c, keys)
					var per time.Duration
					for i := 0; i < b.N; i++ {
						per = runParallel(b, c.Program(HookXDP), frame, repeat, cpus)
					}
					b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt-wall")
				})
			}
		}
	}
}

func BenchmarkEmptyXDP(b *testing.B) {
	testenv.RequireBPF(b)
	p, err := newPassProgram("empty")
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	frame := tcp4(b, in, 40000, 9000, fACK)
	var per time.Duration
	for i := 0; i < b.N; i++ {
		per = runParallel(b, p, frame, 2_000_000, 1)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt-wall")
}

// TestBenchCut: each cut stops where flowaudit.c says, and BenchCutNone is
// the whole path. A whole UDP frame and one cut inside its IPv4 header go
// through XDP: the packet counter sees both in every case; only a run that
// parses counts the truncated one; only the whole path makes a flow.
func TestBenchCut(t *testing.T) {
	testenv.RequireBPF(t)
	whole := udp4(t, in, 41000, 514)
	cutShort := whole[:14+10]
	for _, tc := range []struct {
		cut              BenchCut
		flows, truncated uint64
	}{
		{BenchCutNone, 1, 1},
		{BenchCutCount, 0, 0},
		{BenchCutAccount, 0, 1},
	} {
		t.Run(fmt.Sprint(tc.cut), func(t *testing.T) {
			c, err := Open(Options{BenchCut: tc.cut})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, f := range [][]byte{whole, cutShort} {
				if _, err := c.Run(HookXDP, f); err != nil {
					t.Fatal(err)
				}
			}
			r, err := c.ReadMaps()
			if err != nil {
				t.Fatal(err)
			}
			if r.Stats.PacketsIngress != 2 {
				t.Errorf("packets counted %d, want 2", r.Stats.PacketsIngress)
			}
			if uint64(len(r.Flows)) != tc.flows || r.Stats.Truncated != tc.truncated {
				t.Errorf("flows %d, truncated %d; want %d, %d", len(r.Flows), r.Stats.Truncated, tc.flows, tc.truncated)
			}
		})
	}
	if _, err := Open(Options{BenchCut: BenchCutAccount + 1}); err == nil {
		t.Error("Open accepted an unknown bench cut")
	}
}
