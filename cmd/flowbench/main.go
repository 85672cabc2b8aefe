// Command flowbench measures flowaudit's cost and prints one table, and
// writes it with the machine, the method and how to reproduce it to
// BENCHMARKS.md. Every claim is a ratio of two things measured side by
// side in the same run; absolute numbers are context. Run it as root
// with `make bench` (see BENCHMARKS.md for what each part does).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

type config struct {
	out            string
	flowaudit      string
	cpu            int
	repeat         uint
	rounds         int
	keys           string
	linePkts       uint
	lineRounds     int
	peerPkts       uint
	peerPPS        float64
	peers          string
	scale          string
	replayPkts     uint
	movePkts       uint
	watchPeers     uint
	watchPPS       float64
	deploy         string
	skip           string
	lineInterleave int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		if err := runChild(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var cfg config
	flag.StringVar(&cfg.out, "out", "BENCHMARKS.md", "write the report here (atomically); empty: print only")
	flag.StringVar(&cfg.flowaudit, "flowaudit", "bin/flowaudit", "the flowaudit binary for the peer comparison (make build)")
	flag.IntVar(&cfg.cpu, "cpu", 1, "CPU the measuring thread (and the generator) is pinned to")
	flag.UintVar(&cfg.repeat, "repeat", 10_000_000, "part 1: BPF_PROG_TEST_RUN repeat count per measurement")
	flag.IntVar(&cfg.rounds, "rounds", 3, "part 1: rounds (medians are taken)")
	flag.StringVar(&cfg.keys, "keys", "1,10000,1000000", "part 1: distinct keys in the flow map")
	flag.UintVar(&cfg.linePkts, "line-packets", 8_000_000, "part 2: frames per receiver and round")
	flag.IntVar(&cfg.lineRounds, "line-rounds", 5, "part 2: rounds of (no-op, flowaudit); issue 16 judges the minimum of 5")
	flag.IntVar(&cfg.lineInterleave, "line-interleave", 16, "part 2: interleaved runs of each receiver per round (the round's frames split between them)")
	flag.UintVar(&cfg.peerPkts, "peer-packets", 2_000_000, "part 3: frames per tool")
	flag.Float64Var(&cfg.peerPPS, "peer-pps", 1_000_000, "part 3: offered load, frames per second")
	flag.StringVar(&cfg.peers, "peers", "flowaudit,tcpdump,softflowd,pmacctd-buffered,pmacctd-defaults", "part 3: tools to compare")
	flag.StringVar(&cfg.scale, "scale", "10000,100000,1000000,10000000", "part 4: flow counts (a count the available memory cannot hold is skipped; 10 M is then extrapolated)")
	flag.UintVar(&cfg.replayPkts, "replay-packets", 1_000_000, "part 5: packets in the replayed capture")
	flag.UintVar(&cfg.movePkts, "move-packets", 8_000_000, "part 6: frames sent while counts move out of the kernel")
	flag.UintVar(&cfg.watchPeers, "watch-peers", 1_000_000, "part 6: distinct peers a watch sees")
	flag.Float64Var(&cfg.watchPPS, "watch-pps", 50_000, "part 6: rate of new peers, frames per second")
	flag.StringVar(&cfg.deploy, "deployment", "500,200,50", "part 7: sensors, syslog sources per sensor, HIDS agents per sensor")
	flag.StringVar(&cfg.skip, "skip", "", "parts to skip, e.g. 3,4 (the report then says so)")
	flag.Parse()
	if err := run(&cfg); err != nil {
		fmt.Fprintln(os.Stderr, "flowbench:", err)
		os.Exit(1)
	}
}

func logf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func run(cfg *config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (BPF programs, network namespaces)")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	skip := map[string]bool{}
	for _, s := range strings.Split(cfg.skip, ",") {
		skip[strings.TrimSpace(s)] = true
	}
	keys, err := parseInts(cfg.keys)
	if err != nil {
		return fmt.Errorf("-keys: %w", err)
	}
	sizes, err := parseInts(cfg.scale)
	if err != nil {
		return fmt.Errorf("-scale: %w", err)
	}
	if cfg.repeat < 1 || cfg.repeat > 1<<32-1 {
		return errors.New("-repeat: 1 to 4294967295")
	}
	start := time.Now()
	rep := &report{cfg: cfg, start: start.UTC()}
	rep.machine()
	rep.load = startLoadSampler()

	// Namespaces are deleted on SIGINT/SIGTERM too.
	var cleanups []func()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigc
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		os.Exit(130)
	}()
	tmp, err := os.MkdirTemp("/dev/shm", "flowbench-")
	if err != nil {
		if tmp, err = os.MkdirTemp("", "flowbench-"); err != nil {
			return err
		}
	}
	defer os.RemoveAll(tmp)
	cleanups = append(cleanups, func() { os.RemoveAll(tmp) })
	rep.tmp = tmp

	if !skip["1"] {
		logf("part 1: per-packet cost, BPF_PROG_TEST_RUN, repeat %d, %d rounds", cfg.repeat, cfg.rounds)
		rep.cost, rep.costOverhead, err = measureCost(costConfig{repeat: uint32(cfg.repeat), rounds: cfg.rounds, keys: keys, cpu: cfg.cpu}, logf)
		if err != nil {
			return fmt.Errorf("part 1: %w", err)
		}
	}
	if !skip["2"] || !skip["3"] || !skip["6"] {
		l, err := newLab()
		if err != nil {
			return fmt.Errorf("namespaces: %w", err)
		}
		cleanups = append(cleanups, l.Close)
		defer l.Close()
		g, err := newGenerator(l, cfg.cpu)
		if err != nil {
			return err
		}
		defer g.Close()
		nop, err := newNoopXDP(l)
		if err != nil {
			return err
		}
		defer nop.Close()
		if err := g.measureOverhead(nop); err != nil {
			return fmt.Errorf("generator: %w", err)
		}
		if !skip["2"] {
			logf("part 2: line rate on veth, %d frames per receiver and round in %d interleaved runs, %d rounds", cfg.linePkts, cfg.lineInterleave, cfg.lineRounds)
			restore, err := clearCPU(cfg.cpu, g.w.tid)
			if err != nil {
				return fmt.Errorf("part 2: %w", err)
			}
			nop2, err := newNoopXDP(l)
			if err != nil {
				return err
			}
			nop2.second = true
			cal, err := measureLineRate(g, plainSend(g), nop, nop2, uint32(cfg.linePkts), cfg.lineRounds, cfg.lineInterleave, logf)
			nop2.Close()
			if err != nil {
				return fmt.Errorf("part 2 calibration: %w", err)
			}
			rep.lineCal = cal
			sp, err := newSprayer()
			if err != nil {
				return err
			}
			defer sp.Close()
			for _, m := range []struct {
				bound   bool
				cut     bpf.BenchCut
				noCache bool
				noFast  bool
				send    sendFunc
				dst     **lineRate
			}{
				{true, bpf.BenchCutNone, false, false, plainSend(g), &rep.line},
				{false, bpf.BenchCutNone, false, false, plainSend(g), &rep.lineNoSock},
				{true, bpf.BenchCutAccount, false, false, plainSend(g), &rep.lineNoMap},
				{true, bpf.BenchCutCount, false, false, plainSend(g), &rep.lineCount},
				{true, bpf.BenchCutNone, false, true, plainSend(g), &rep.lineNoFast},
				// The cache off takes the fast path with it.
				{true, bpf.BenchCutNone, true, false, plainSend(g), &rep.lineNoCache},
				// Two peers in turn: every frame misses the cache.
				{true, bpf.BenchCutNone, false, false, spraySend(g, sp, 1), &rep.lineAlt},
				{true, bpf.BenchCutNone, true, false, spraySend(g, sp, 1), &rep.lineAltNoCache},
			} {
				fa, err := newFlowauditRecv(l, m.bound, m.cut, m.noCache, m.noFast)
				if err != nil {
					return err
				}
				lr, err := measureLineRate(g, m.send, nop, fa, uint32(cfg.linePkts), cfg.lineRounds, cfg.lineInterleave, logf)
				fa.Close()
				if err != nil {
					return fmt.Errorf("part 2: %w", err)
				}
				*m.dst = lr
			}
			restore()
		}
		if !skip["3"] {
			logf("part 3: peers at %.0f frames/s offered, %d frames each", cfg.peerPPS, cfg.peerPkts)
			if rep.peers, err = measurePeers(l, g, nop, cfg, tmp); err != nil {
				return fmt.Errorf("part 3: %w", err)
			}
		}
		if !skip["6"] {
			logf("part 6: live sensors (overflow path, moves, watch memory)")
			budget, err := defaultWatchBudget(cfg.flowaudit)
			if err != nil {
				return fmt.Errorf("part 6: %w", err)
			}
			lc := liveConfig{repeat: uint32(cfg.repeat), rounds: cfg.rounds, cpu: cfg.cpu, movePkts: uint64(cfg.movePkts),
				watchPeers: uint64(cfg.watchPeers), watchPPS: cfg.watchPPS, budget: budget, flowaudit: cfg.flowaudit}
			if rep.live, err = measureLive(l, g, lc, tmp, logf); err != nil {
				return fmt.Errorf("part 6: %w", err)
			}
		}
	}
	if err := unpinThreads(); err != nil {
		return fmt.Errorf("unpin threads: %w", err)
	}
	if !skip["4"] {
		logf("part 4: userspace scale %v", sizes)
		if rep.scale, rep.scaleSkipped, err = measureScale(sizes, tmp, logf); err != nil {
			return fmt.Errorf("part 4: %w", err)
		}
	}
	if !skip["5"] {
		logf("part 5: replay of a %d-packet capture", cfg.replayPkts)
		if rep.replay, err = measureReplay(tmp, int(cfg.replayPkts), 10_000, logf); err != nil {
			return fmt.Errorf("part 5: %w", err)
		}
	}
	if !skip["7"] {
		dc, err := parseDeployConfig(cfg.deploy)
		if err != nil {
			return fmt.Errorf("-deployment: %w", err)
		}
		logf("part 7: a deployment of %d sensors", dc.sensors)
		if rep.deploy, err = measureDeployment(dc, tmp, logf); err != nil {
			return fmt.Errorf("part 7: %w", err)
		}
	}
	rep.elapsed = time.Since(start)
	rep.load.finish()
	table := rep.table()
	fmt.Print(table)
	if cfg.out == "" {
		return nil
	}
	if err := snapshot.AtomicWrite(cfg.out, rep.write); err != nil {
		return err
	}
	logf("wrote %s (%s)", cfg.out, rep.elapsed.Round(time.Second))
	return nil
}

// measurePeers runs every tool through the same paced traffic.
func measurePeers(l *lab, g *generator, nop *noopXDP, cfg *config, tmp string) ([]peerResult, error) {
	pc, err := newPacer()
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	fa := cfg.flowaudit // ip netns exec keeps the working directory
	var out []peerResult
	for _, name := range strings.Split(cfg.peers, ",") {
		name = strings.TrimSpace(name)
		bin := map[string]string{"flowaudit": fa, "tcpdump": "tcpdump", "softflowd": "softflowd", "pmacctd-buffered": "pmacctd",
			"pmacctd-defaults": "pmacctd"}[name]
		if bin == "" {
			return nil, fmt.Errorf("unknown peer %q", name)
		}
		if _, err := exec.LookPath(bin); err != nil {
			if name == "flowaudit" {
				return nil, fmt.Errorf("flowaudit binary %s: %w (make build)", bin, err)
			}
			logf("  %s: not installed, skipped (%v)", name, err)
			out = append(out, peerResult{name: name, err: fmt.Errorf("not installed: %w", err), missing: true})
			continue
		}
		pcfg := peerConfig{total: uint64(cfg.peerPkts), pps: cfg.peerPPS, tmp: tmp, flowaudit: fa}
		r := runPeer(l, g, pc, nop, pcfg, name)
		if r.err != nil {
			// flowaudit must work; another tool failing is a result.
			if name == "flowaudit" {
				return nil, fmt.Errorf("%s: %w", name, r.err)
			}
			logf("  %-16s failed: %v", name, r.err)
			out = append(out, r)
			continue
		}
		logf("  %-16s paced: accounts for %d of %d (%.2f %%), CPU %s; %s", name, r.accounted, r.sent, 100*r.share(), r.cpu, r.detail)
		// The same tool at the generator's maximum rate, right after a run
		// into the no-op program alone: how much its kernel-side work slows
		// the receive path (the CPU seconds above do not show that part).
		base, err := measureRun(g, plainSend(g), nop, uint32(cfg.peerPkts))
		if err != nil {
			return nil, fmt.Errorf("%s: no-op baseline: %w", name, err)
		}
		pcfg.maxRate = true
		m := runPeer(l, g, pc, nop, pcfg, name)
		r.max, r.maxBase = &m, base.pps()
		if m.err != nil {
			if name == "flowaudit" {
				return nil, fmt.Errorf("%s at maximum rate: %w", name, m.err)
			}
			logf("  %-16s max rate failed: %v", name, m.err)
			out = append(out, r)
			continue
		}
		logf("  %-16s max rate: %.3f Mpps vs no-op %.3f Mpps (%.1f %%), accounts for %.2f %%", name, m.offered/1e6, base.pps()/1e6,
			100*m.offered/base.pps(), 100*m.share())
		out = append(out, r)
	}
	return out, nil
}
