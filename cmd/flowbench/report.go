package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/bpf"
)

// Targets from issue 8.
const (
	targetCostRatio = 3.0  // flowaudit XDP ≤ 3× the empty program, IPv4 TCP, 10 k keys
	targetLineRate  = 0.90 // flowaudit ≥ 90 % of the no-op program's packet rate
	targetKeys      = 10_000
)

// helpBytesPerEntry is what --flow-budget's help says an entry of budget
// costs at the peak of an evaluation (issue 11): part 6 checks every
// watch against idle + budget × this.
const helpBytesPerEntry = 3 << 10

type report struct {
	cfg     *config
	start   time.Time
	elapsed time.Duration

	cpuModel, kernel, goVersion, commit string
	cpus                                int
	memGiB                              float64
	load                                *loadSampler

	tmp string // scratch directory, hidden in the printed command lines

	cost         []costCell
	costOverhead map[ebpf.ProgramType]time.Duration
	line         *lineRate // frames to a bound UDP port (the target is judged here)
	lineNoSock   *lineRate // frames to a port without socket
	lineCal      *lineRate // calibration: the no-op program against a second no-op program
	lineNoMap    *lineRate // ablation: bound port, the programs stop before the flow-map update
	lineCount    *lineRate // ablation: bound port, the programs only count the packet
	lineNoCache  *lineRate // bound port, the per-CPU flow cache off (and with it the fast path)
	lineNoFast   *lineRate // bound port, the header fast path off (every frame parsed)
	// Two peers in turn (the sprayer, mask 1): a flow-cache miss on every
	// frame; with and without the cache.
	lineAlt, lineAltNoCache *lineRate
	peers                   []peerResult
	scale                   []scaleResult
	scaleSkipped            map[int]string // part 4 sizes skipped, and why
	deploy                  *deployResult
	replay                  *replayResult
	live                    *liveResult
}

func (r *report) machine() {
	r.cpus = runtime.NumCPU()
	r.goVersion = runtime.Version()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		r.kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				r.cpuModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		r.memGiB = float64(si.Totalram) * float64(si.Unit) / (1 << 30)
	}
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		r.commit = strings.TrimSpace(string(out))
	}
}

func mpps(pps float64) string { return fmt.Sprintf("%.2f Mpps", pps/1e6) }

func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**not met**"
}

func commas(n uint64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func keysLabel(k int) string {
	switch {
	case k == 1:
		return "1 key"
	case k >= 1_000_000 && k%1_000_000 == 0:
		return fmt.Sprintf("%d M keys", k/1_000_000)
	case k >= 1000 && k%1000 == 0:
		return fmt.Sprintf("%d k keys", k/1000)
	}
	return fmt.Sprintf("%d keys", k)
}

// costTarget reports whether a cell is one the ≤ 3× target is judged on.
func costTarget(c costCell) bool {
	// The live datapath is judged; the replay-mode row (no socket set) is
	// shown beside it without a target.
	return c.hook == bpf.HookXDP && c.keys == targetKeys && strings.HasPrefix(c.packet, "IPv4 TCP") &&
		!strings.Contains(c.packet, "(replay)")
}

// rows builds the one table: part, measurement, result, ratio, target.
func (r *report) rows() [][]string {
	rows := [][]string{{"part", "measurement", "result (context)", "ratio", "target"}}
	for _, c := range r.cost {
		prog := "XDP"
		if c.hook == bpf.HookTCEgress {
			prog = "TC egress"
		}
		target := ""
		if costTarget(c) {
			target = fmt.Sprintf("≤ %.0f×: %s", targetCostRatio, verdict(c.ratio <= targetCostRatio))
		}
		rows = append(rows, []string{"1 test_run",
			fmt.Sprintf("%s, %s, %s", prog, c.packet, keysLabel(c.keys)),
			fmt.Sprintf("%.1f ns/pkt vs empty %.1f ns/pkt", nsPer(c.fa, c.repeat), nsPer(c.empty, c.repeat)),
			fmt.Sprintf("%.2f×", c.ratio), target})
	}
	if c := r.lineCal; c != nil {
		rows = append(rows, []string{"2 veth line rate",
			"calibration: no-op XDP vs a second no-op XDP program (the measurement's noise)",
			fmt.Sprintf("%s vs %s", mpps(c.faPPS), mpps(c.noopPPS)),
			fmt.Sprintf("%.1f %% (min %.1f %%)", 100*c.ratio, 100*c.minRatio), "(not judged)"})
	}
	if l := r.line; l != nil {
		rows = append(rows, []string{"2 veth line rate",
			"flowaudit XDP vs no-op XDP, 60-byte UDP to a bound port, PACKET_OTHERHOST",
			fmt.Sprintf("%s vs %s", mpps(l.faPPS), mpps(l.noopPPS)),
			fmt.Sprintf("%.1f %% (min %.1f %%)", 100*l.ratio, 100*l.minRatio),
			fmt.Sprintf("≥ %.0f %%: %s", 100*targetLineRate, verdict(l.ratio >= targetLineRate))})
		if n := r.lineNoSock; n != nil {
			rows = append(rows, []string{"2 veth line rate",
				"the same, to a port without socket (connection-table lookup per frame)",
				fmt.Sprintf("%s vs %s", mpps(n.faPPS), mpps(n.noopPPS)),
				fmt.Sprintf("%.1f %% (min %.1f %%)", 100*n.ratio, 100*n.minRatio), "(not judged)"})
		}
		for _, a := range []struct {
			l    *lineRate
			what string
		}{
			{r.lineNoMap, "ablation, bound port: flowaudit stopped before the flow-map update (every frame parsed, classified, keyed)"},
			{r.lineCount, "ablation, bound port: flowaudit stopped after its packet counter"},
			{r.lineNoFast, "bound port, flowaudit with its header fast path off (every frame parsed; flow-cache hits)"},
			{r.lineNoCache, "bound port, flowaudit with its flow cache off (every frame parsed; a hash lookup and atomic adds)"},
			{r.lineAlt, "bound port, frames from two peers in turn (a flow-cache miss every frame; sprayer)"},
			{r.lineAltNoCache, "the same two peers in turn, flow cache off"},
		} {
			if a.l != nil {
				rows = append(rows, []string{"2 veth line rate", a.what,
					fmt.Sprintf("%s vs %s", mpps(a.l.faPPS), mpps(a.l.noopPPS)),
					fmt.Sprintf("%.1f %% (min %.1f %%)", 100*a.l.ratio, 100*a.l.minRatio), "(not judged)"})
			}
		}
		var sent, counted uint64
		for _, f := range l.fa {
			sent += f.sent
			counted += uint64(f.counted)
		}
		rows = append(rows, []string{"2 veth line rate", "flowaudit's counted packets vs packets sent",
			fmt.Sprintf("%s of %s in %d runs", commas(counted), commas(sent), len(l.fa)),
			fmt.Sprintf("%.4f", float64(counted)/float64(sent)), "= sent: " + verdict(l.countedOK && counted == sent)})
	}
	for _, p := range r.peers {
		if p.missing {
			rows = append(rows, []string{"3 peers", p.name, "not installed: not measured", "", ""})
			continue
		}
		if p.err != nil {
			rows = append(rows, []string{"3 peers", p.name + ", paced", "failed: " + p.err.Error(), "", ""})
			continue
		}
		res := fmt.Sprintf("CPU %.3f s user+sys", p.cpu.Seconds())
		if p.name == "flowaudit" {
			res = fmt.Sprintf("CPU %.3f s userspace + %.3f s in kernel (%.0f ns/pkt, bpf_stats)",
				p.cpu.Seconds(), p.bpfRun.Seconds(), float64(p.bpfRun.Nanoseconds())/float64(max(p.bpfCnt, 1)))
		}
		rows = append(rows, []string{"3 peers",
			fmt.Sprintf("%s, %s frames paced at %s", p.name, commas(p.sent), mpps(p.offered)),
			res,
			fmt.Sprintf("%.2f %% of sent", 100*p.share()), ""})
		if m := p.max; m != nil && m.err != nil {
			rows = append(rows, []string{"3 peers", p.name + ", maximum rate", "failed: " + m.err.Error(), "", ""})
		} else if m != nil {
			rows = append(rows, []string{"3 peers",
				fmt.Sprintf("%s, %s frames at maximum rate", p.name, commas(m.sent)),
				fmt.Sprintf("%s vs no-op alone %s; accounts for %.2f %%", mpps(m.offered), mpps(p.maxBase), 100*m.share()),
				fmt.Sprintf("%.1f %% of no-op rate", 100*m.offered/p.maxBase), ""})
		}
	}
	for _, s := range r.scale {
		n := strings.TrimSuffix(strings.TrimSuffix(keysLabel(s.n), " keys"), " key")
		rows = append(rows, []string{"4 scale", fmt.Sprintf("map read (batch lookup → flows), %s flows", n),
			fmt.Sprintf("%s (CPU %s), peak RSS %d MiB", ms(s.read.ReadNs), ms(s.read.ReadCPUNs), s.read.ReadRSSKB>>10),
			fmt.Sprintf("%.2f µs/flow", float64(s.read.ReadNs)/1e3/float64(s.n)), ""})
		rows = append(rows, []string{"4 scale", fmt.Sprintf("snapshot file, %s flows", n),
			fmt.Sprintf("%.1f MiB compact, written in %s (CPU %s)", float64(s.read.FileBytes)/(1<<20), ms(s.read.WriteNs), ms(s.read.WriteCPUNs)),
			fmt.Sprintf("%d B/flow", s.read.FileBytes/int64(s.n)), ""})
		rows = append(rows, []string{"4 scale", fmt.Sprintf("audit utmstack@11 manager, %s flows", n),
			fmt.Sprintf("load %s + audit %s (CPU %s + %s), peak RSS %d MiB, %d findings",
				ms(s.audit.LoadNs), ms(s.audit.AuditNs), ms(s.audit.LoadCPUNs), ms(s.audit.AuditCPUNs),
				s.audit.RSSKB>>10, s.audit.Findings),
			fmt.Sprintf("%.2f µs/flow", float64(s.audit.LoadNs+s.audit.AuditNs)/1e3/float64(s.n)), ""})
	}
	rows = append(rows, r.liveRows()...)
	rows = append(rows, r.deployRows()...)
	if rp := r.replay; rp != nil {
		ratio, ctx := "", ""
		if c := r.findCost(bpf.HookXDP, targetKeys, "IPv4 TCP to a listening port"); c != nil {
			bare := 1e9 / nsPer(c.fa, c.repeat)
			ratio = fmt.Sprintf("%.0f %% of bare test_run", 100*rp.pps()/bare)
			ctx = fmt.Sprintf(" (bare test_run of XDP, part 1: %s)", mpps(bare))
		}
		rows = append(rows, []string{"5 replay",
			fmt.Sprintf("replay of a %s-packet pcap (%.0f MiB), %s flows, batch path", commas(uint64(rp.replayed)), float64(rp.fileBytes)/(1<<20), commas(uint64(rp.flows))),
			fmt.Sprintf("%s in the replay pass, %s for the whole run incl. scan%s; %.3f test_run calls/pkt; collector load %s",
				mpps(rp.pps()), mpps(rp.totalPPS()), ctx, float64(rp.calls)/float64(rp.replayed), rp.open.Round(time.Millisecond)),
			ratio, ""})
		if old := rp.perPacket; old != nil {
			rows = append(rows, []string{"5 replay", "the same capture, per-packet path (`--per-packet`)",
				fmt.Sprintf("%s in the replay pass, %s for the whole run incl. scan; %.3f test_run calls/pkt; collector load %s",
					mpps(old.pps()), mpps(old.totalPPS()), float64(old.calls)/float64(old.replayed), old.open.Round(time.Millisecond)),
				fmt.Sprintf("batch %.1f× its whole-run rate", rp.totalPPS()/old.totalPPS()), ""})
		}
	}
	return rows
}

func (r *report) findCost(h bpf.Hook, keys int, packet string) *costCell {
	for i := range r.cost {
		if c := &r.cost[i]; c.hook == h && c.keys == keys && c.packet == packet {
			return c
		}
	}
	return nil
}

// table renders rows as an aligned Markdown table.
func (r *report) table() string {
	rows := r.rows()
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	line := func(row []string) {
		b.WriteString("|")
		for i, c := range row {
			fmt.Fprintf(&b, " %s%s |", c, strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)))
		}
		b.WriteString("\n")
	}
	line(rows[0])
	sep := make([]string, len(width))
	for i, w := range width {
		sep[i] = strings.Repeat("-", w)
	}
	line(sep)
	for _, row := range rows[1:] {
		line(row)
	}
	return b.String()
}

// write renders BENCHMARKS.md.
func (r *report) write(w io.Writer) error {
	cfg := r.cfg
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	p("# flowaudit benchmarks\n\n")
	p("Generated by `make bench` (`cmd/flowbench`): every number below comes from the run that wrote this file.\n")
	p("Every claim is a **ratio of two things measured side by side in that run** on a small, noisy VM;\n")
	p("absolute numbers are context only and will differ on other machines.\n\n")
	p("| | |\n|---|---|\n")
	p("| date | %s |\n", r.start.Format("2006-01-02 15:04 UTC"))
	p("| machine | %s, %d vCPU, %.1f GiB RAM |\n", orUnknown(r.cpuModel), r.cpus, r.memGiB)
	p("| kernel | %s |\n", orUnknown(r.kernel))
	p("| Go | %s |\n", r.goVersion)
	p("| flowaudit | %s |\n", orUnknown(r.commit))
	p("| run time | %s |\n", r.elapsed.Round(time.Second))
	if r.load != nil {
		p("| other load | %s |\n", r.load.summary(r.cpus))
	}
	p("\n")

	p("## Results\n\n")
	p("%s\n", r.table())
	p("%s\n", r.verdicts())
	if len(r.peers) > 0 {
		p("What each tool's output said (part 3):\n\n")
		for _, pr := range r.peers {
			if pr.detail != "" {
				p("- %s: %s\n", pr.name, pr.detail)
			}
		}
		p("\n")
	}

	p("## How each part is measured\n\n")
	p("**1. Per-packet cost (BPF_PROG_TEST_RUN).** Each measurement is one `BPF_PROG_TEST_RUN` call with repeat %s,\n", commas(uint64(cfg.repeat)))
	p("issued directly (a run cut short by a signal is discarded, never silently restarted) from a thread pinned to CPU %d;\n", cfg.cpu)
	p("ns/pkt is the wall clock of the whole call divided by the repeat count, not the kernel's per-run figure, which\n")
	p("is rounded down to whole nanoseconds. The fixed cost of one call (set-up and tear-down, measured with repeat 1: %s)\n", r.overheadText())
	p("is subtracted from every run on both sides. Every flowaudit run is paired with a run of an empty program of the same\n")
	p("type (XDP: `return XDP_PASS`; TC: `return TCX_NEXT`) on the same frame, in alternating order (empty first in even\n")
	p("rounds), and the ratio is the median of the %d per-round ratios; ns/pkt are medians too. XDP runs get the\n", cfg.rounds)
	p("arriving frame, TC egress the frame this host sends. The flow map holds the given number of keys: synthetic\n")
	p("entries loaded with `BPF_MAP_UPDATE_BATCH` plus the measured flow (1 key: the map is emptied before each\n")
	p("packet kind). Up to 10 k keys the map has the default size (65 536); for 1 M it is sized 1.05 M (95 %% full).\n")
	p("The same frame repeats, so its bucket stays in cache: the key count shows the cost of a fuller table, not of\n")
	p("cache misses across a million flows. Every case but one runs the collector as a live recording does, with the\n")
	p("listening-socket set complete (`Options.SocketsKnown`): \"IPv4 TCP to a listening port\" (and the IPv6 and VLAN\n")
	p("TCP cases) have their port in the set, as `sock_diag` fills it; \"own outbound connection\" is a mid-stream segment of\n")
	p("a connection this host opened, which needs no lookup. \"no socket set (replay)\" runs the collector as replay does,\n")
	p("without a socket set, so it also looks up the connection table and falls back to the port heuristic.\n")
	p("The ICMP case is a port unreachable quoting a UDP datagram (the evidence is added to the quoted flow). The\n")
	p("egress UDP frame leaves port 514 with no socket there, so it is counted as this host's client flow (and its\n")
	p("orientation remembered). `TestFramesTakeTheirPaths` checks that every frame yields exactly these flows.\n\n")
	p("**2. Line rate on veth.** Two throwaway network namespaces joined by a veth pair (IPv6 off, so nothing but the\n")
	p("generator's frames is on the wire). The generator is `BPF_F_TEST_XDP_LIVE_FRAMES`: a two-instruction program\n")
	p("returning `XDP_TX` on one end, 60-byte IPv4 UDP frames in batches of 64, from a thread pinned to\n")
	p("CPU %d. The receiving end runs either (a) a no-op XDP program returning `XDP_PASS` or (b) flowaudit attached\n", cfg.cpu)
	p("as `flowaudit record` attaches it (XDP native ingress, tcx egress). A round sends %s frames to each, in %d\n", commas(uint64(cfg.linePkts)), cfg.lineInterleave)
	p("runs apiece interleaved a, b, b, a, …: this virtual machine's speed drifts by ±10 %% over seconds, and\n")
	p("interleaved runs see the same drift (one run per program per round let it fall on one side of the ratio). A\n")
	p("round's ratio is that of the two programs' rates over their runs; the table gives the median of %d rounds and\n", cfg.lineRounds)
	p("their minimum (issue 16 judges the minimum). The calibration row measures the no-op program against a second,\n")
	p("identical no-op program the same way: what it shows apart from 100 %% is the measurement's own noise. The\n")
	p("ablation rows load flowaudit with its per-packet path stopped part-way (`bpf.Options.BenchCut`, a frozen\n")
	p("constant the verifier prunes: the shipped program runs all of it): after the packet counter, and after\n")
	p("parsing and classifying (flow key built, no flow-map update), to show what each part costs on this path.\n")
	p("The destination MAC is not the receiver's, so the stack marks every\n")
	p("frame `PACKET_OTHERHOST` and drops it in `ip_rcv`, right after XDP and skb allocation, in both cases. veth\n")
	p("runs the receiver's NAPI poll on the sending CPU (after each batch), so the rate is that of one core doing\n")
	p("generator + receive path: flowaudit's cost is diluted by the generator's, which is the same in (a) and (b).\n")
	p("While part 2 runs, every other thread of flowbench is moved off CPU %d (the Go runtime's garbage collection\n", cfg.cpu)
	p("and the collectors' counter reads between runs had run there, beside the receive path: on the side of whichever\n")
	p("receiver was being measured), and each run ends when the receiving veth has every frame.\n")
	p("pps = frames delivered (the receiving veth's `rx_packets`, asserted equal to frames sent) / wall time of the run,\n")
	if r.line != nil {
		p("less the fixed cost of a live-mode run (page pool setup and teardown, measured with 64-frame runs: %s).\n", r.line.overhead.Round(time.Millisecond/10))
	} else {
		p("less the fixed cost of a live-mode run (page pool setup and teardown, measured with 64-frame runs).\n")
	}
	p("flowaudit runs as a live recording does (socket set complete). The frames go to UDP port 9000, measured twice:\n")
	p("with a socket bound there (a syslog or NetFlow collector receiving a flood: the target is judged on this row), and\n")
	p("without (a flood to a port nothing listens on: every frame also looks up the connection table).\n")
	p("flowaudit's own packet counter must equal the frames sent in every run, or the benchmark fails.\n\n")
	p("**3. Peers at the same offered load.** Same namespaces and frames, but paced: the generator program sends a\n")
	p("frame only when the next one is due by `CLOCK_MONOTONIC` (and counts it), so every tool sees exactly %s frames\n", commas(uint64(cfg.peerPkts)))
	p("spread evenly at %s. Each tool is started in the receiving namespace as a user would run it (command\n", mpps(cfg.peerPPS))
	p("lines below; not pinned, the scheduler places them as it would for a user), traffic starts once it is\n")
	p("capturing, and its counts are read 1.5 s after the last frame (libpcap\n")
	p("hands blocks over after tcpdump's 1 s timeout). The libpcap tools run with the no-op XDP program attached\n")
	p("(veth only delivers `XDP_TX` frames to a peer with NAPI on); flowaudit attaches its own. pmacctd runs twice:\n")
	p("with its defaults, and with the core→plugin buffering its CONFIG-KEYS recommends for heavy loads. Share = packets the\n")
	p("tool's output accounts for / frames sent: tcpdump's \"captured\", softflowd's \"packets processed\"\n")
	p("(`softflowctl statistics`), the packet total of pmacctd's memory table (`pmacct -s`), the packets in\n")
	p("flowaudit's snapshot. CPU = user+system time of the tool's processes from traffic start to exit (so flowaudit's\n")
	p("includes reading the maps and writing the snapshot). For flowaudit the in-kernel cost is also given: run time\n")
	p("of its XDP program from `bpf_stats` (`BPF_ENABLE_STATS`, on only during that run, since it adds two clock\n")
	p("reads to every program run). The libpcap tools' in-kernel cost (cloning each skb to the packet socket, in\n")
	p("softirq on the sending CPU) is not attributed to them and is not in their CPU seconds.\n\n")
	for _, pr := range r.peers {
		if pr.command != "" {
			p("- %s: `%s`", pr.name, strings.ReplaceAll(pr.command, r.cfgTmpPrefix(), "$TMP/"))
			if pr.config != "" {
				p(" with `%s`", strings.ReplaceAll(pr.config, r.cfgTmpPrefix(), "$TMP/"))
			}
			p("\n")
		}
	}
	p("\nEach tool is also run at the generator's maximum rate (as in part 2), right after a run into the no-op\n")
	p("program alone: the ratio of the two rates shows the tool's cost on the receive path, kernel side included\n")
	p("(for the libpcap tools, the copy of every frame to the packet socket). bpf_stats is enabled only for\n")
	p("flowaudit's paced run, so the max-rate runs compare like with like.\n")
	p("\n**4. Userspace scale.** Synthetic recordings of a UTMStack v11 manager (`internal/benchflows`: agents in\n")
	p("10.0.0.0/8 on documented ports, out-of-zone peers, refused attempts on undocumented ports, ICMP errors; every\n")
	p("flow its own peer) audited against the built-in `utmstack@11` matrix, role `manager`, with a site binding its\n")
	p("zones. Each size runs in two child processes (this binary re-executed), so peak RSS (`VmHWM`) is their own:\n")
	p("the first loads the flows into a kernel flow map (batch update, then the peak RSS is reset), times\n")
	p("`Collector.ReadMaps` (batch lookup and delete of 8 192 entries per call, conversion, sort) and writes the snapshot file\n")
	p("in the compact encoding (docs/SNAPSHOT.md) to tmpfs; the second times `snapshot.ReadFile` (load) and\n")
	p("`audit.Run` (audit). Beside each wall-clock time is the step's CPU time (user + system, `getrusage`): on a\n")
	p("box shared with other work the wall clock mostly measures waiting for a CPU. The end-to-end total is the\n")
	p("sum of the four steps; the audit-step RSS is the second child's peak, catalog loading included. A size\n")
	p("runs only if `MemAvailable` holds 1 KiB per flow (the 10 M-flow children peaked at ~0.5 KiB per flow with\n")
	p("the kernel map beside them); otherwise it is skipped and 10 M is extrapolated, with the reason. Before\n")
	p("each size, that much memory is mapped, written once per 4 KiB page and unmapped (\"memory warmed\" below):\n")
	p("on a VM, the first write to guest memory the VM has never used also makes the host back it, an order of\n")
	p("magnitude slower than writing memory used before (docs/ARCHITECTURE.md, \"A million flows\"). A freshly\n")
	p("booted VM has gigabytes of such memory, a sensor that has run for a while none; warmed, the steps measure\n")
	p("flowaudit rather than the VM's history. The time each warm-up took shows how much of it was new.\n\n")
	if r.replay != nil {
		p("**5. Replay throughput.** A pcap of %s frames (%d–%d bytes) of one host (192.0.2.10) with 10 000 peers —\n",
			commas(uint64(r.replay.replayed)), r.replay.minLen, r.replay.maxLen)
		p("inbound and outbound TCP 443, inbound syslog, outbound DNS, one frame per millisecond — written to tmpfs and\n")
		p("fed through flowaudit's programs by `replay.Run` (what `flowaudit replay` runs: the batch path, default\n")
		p("worker count, the local address given), once. The replay pass is `Result.Elapsed`; the whole run adds the\n")
		p("scan pass, the map reset and the snapshot; the collector's load (`bpf.Open`, program verification) is\n")
		p("reported beside it, not in it. Every packet must be counted in the snapshot's flows, and no DNS answer (the\n")
		p("capture's incoming DNS frames, one in eight) may be dropped by a full ring. The ratio compares the\n")
		p("replay pass with the bare test_run rate of the XDP program from part 1 (one program run per packet).\n")
		p("Right after, `tshark -n -q -z conv,tcp -r FILE` (TCP conversation statistics) runs on the same file, timed\n")
		p("as a whole process; the issue 16 verdict compares it with flowaudit's whole run. Then the same file goes\n")
		p("through the per-packet path (`--per-packet`: one test_run per packet, time slices) for comparison.\n\n")
	} else {
		p("**Replay throughput** is not in this table: part 5 was skipped, or the replay feature (`bpf/replay`,\n")
		p("`flowaudit replay`) %s.\n\n", replayState())
	}

	p("%s", r.liveMethod())
	p("%s", r.deployMethod())
	p("## Reproduce\n\n")
	p("```sh\n# as root, on a kernel with BTF (≥ 6.6 for tcx)\napt-get install tcpdump softflowd pmacct\nmake bench            # builds bin/flowaudit, runs cmd/flowbench, rewrites BENCHMARKS.md\n")
	p("bin/flowbench -h      # flags: repeat counts, rounds, offered load, -skip 3,4, -out ''\n")
	p("make bench BENCH_FLAGS='-skip 3 -rounds 5'   # flags through make\n```\n\n")
	p("This run: `%s`.\n\n", r.commandLine())
	p("Go benchmarks of the userspace parts (benchstat-friendly):\n\n")
	p("```sh\ngo test ./audit ./audit/snapshot -run '^$' -bench . -count 10 | tee new.txt\n")
	p("go test ./bpf -run '^$' -bench 'ReadMaps|EmptyXDP|MapVariants' -benchtime 1x   # root\n")
	p("go test ./bpf/replay -run '^$' -bench Replay -benchtime 3x                      # root\n```\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *report) cfgTmpPrefix() string { return r.tmp + "/" }

func (r *report) overheadText() string {
	if r.costOverhead == nil {
		return "not measured"
	}
	return fmt.Sprintf("XDP %s, TC %s", r.costOverhead[ebpf.XDP].Round(time.Microsecond), r.costOverhead[ebpf.SchedCLS].Round(time.Microsecond))
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (r *report) commandLine() string {
	return "flowbench " + strings.Join(os.Args[1:], " ")
}

// loadSampler watches the 1-minute load average during the run: the box is
// shared, and other work on it is noise the ratios can only partly cancel.
type loadSampler struct {
	stop    chan struct{}
	done    chan struct{}
	samples []float64
}

func startLoadSampler() *loadSampler {
	ls := &loadSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ls.done)
		for {
			if b, err := os.ReadFile("/proc/loadavg"); err == nil {
				var v float64
				if _, err := fmt.Sscan(string(b), &v); err == nil {
					ls.samples = append(ls.samples, v)
				}
			}
			select {
			case <-ls.stop:
				return
			case <-time.After(5 * time.Second):
			}
		}
	}()
	return ls
}

func (ls *loadSampler) finish() {
	close(ls.stop)
	<-ls.done
}

// summary: load average at start, median and maximum, and a warning when
// other work kept the CPUs busy.
func (ls *loadSampler) summary(cpus int) string {
	if len(ls.samples) == 0 {
		return "unknown"
	}
	mx := 0.0
	for _, v := range ls.samples {
		mx = max(mx, v)
	}
	s := fmt.Sprintf("1-min load average %.2f at start, median %.2f, max %.2f (flowbench itself keeps about 1 CPU busy)",
		ls.samples[0], medianF(ls.samples), mx)
	if medianF(ls.samples) > 1.5 {
		s += fmt.Sprintf(" — **other processes competed for the %d CPUs during this run: expect more noise than usual**", cpus)
	}
	return s
}

// replayState says whether the replay feature has landed (is committed).
func replayState() string {
	out, err := exec.Command("git", "ls-files", "bpf/replay*", "bpf/replay/", "cmd/flowaudit/replay*").Output()
	if err == nil && strings.TrimSpace(string(out)) != "" {
		return "has landed, but flowbench does not measure it yet"
	}
	return "had not landed when this run was made"
}

// breakdown derives where the time goes from this run's own numbers.
func (r *report) breakdown() string {
	var b strings.Builder
	find := func(packet string) *costCell {
		for i := range r.cost {
			c := &r.cost[i]
			if c.hook == bpf.HookXDP && c.keys == targetKeys && c.packet == packet {
				return c
			}
		}
		return nil
	}
	listen, noSock := find("IPv4 TCP to a listening port"), find("IPv4 TCP, no socket set (replay)")
	noFast, noCache := find("the same, header fast path off"), find("the same, flow cache off")
	frag, icmp := find("IPv4 non-first fragment"), find("ICMP port unreachable (UDP)")
	if listen != nil && noSock != nil && frag != nil && icmp != nil && noFast != nil && noCache != nil {
		ns := func(c *costCell) float64 { return nsPer(c.fa, c.repeat) }
		own := func(c *costCell) float64 { return ns(c) - nsPer(c.empty, c.repeat) }
		b.WriteString("\nWhere the time goes (XDP, 10 k keys, differences of this run's medians; each run repeats one frame):\n\n")
		fmt.Fprintf(&b, "- flowaudit's own work on a TCP segment to a listening port: %.1f ns (%.1f − empty %.1f), the header fast path\n"+
			"  taking every repeat after the first; with the fast path off (parsed, classified, a flow-cache hit) %.1f ns; with\n"+
			"  the flow cache off too (a hash lookup and two atomic adds, as for a packet of another flow than the CPU's last)\n"+
			"  %.1f ns. A non-first fragment, which skips the port and direction logic: %.1f ns.\n",
			own(listen), ns(listen), nsPer(listen.empty, listen.repeat), own(noFast), own(noCache), own(frag))
		fmt.Fprintf(&b, "- the connection-table (`conns`, LRU hash) lookup and port heuristic that a TCP segment pays when no socket\n"+
			"  set is known (replay, no fast path): +%.1f ns (no socket set − listening port with the fast path off).\n", ns(noSock)-ns(noFast))
		fmt.Fprintf(&b, "- an ICMP error (quoted packet parsed, direction decided, a second flow updated): +%.1f ns over the\n"+
			"  listening-port TCP segment with the fast path off.\n", ns(icmp)-ns(noFast))
	}
	if l := r.line; l != nil && l.faPPS > 0 && l.noopPPS > 0 {
		noop := 1e9 / l.noopPPS
		fmt.Fprintf(&b, "- veth receive path (part 2): %.0f ns per frame with the no-op program (median rate), flowaudit +%.1f ns\n"+
			"  (from the median ratio); ≥ 90 %% would need flowaudit to add at most %.0f ns per frame here, ≥ 92 %% at most %.0f ns.\n",
			noop, noop*(1/l.ratio-1), noop/targetLineRate-noop, noop/targetLineRate16-noop)
		if c, a := r.lineCount, r.lineNoMap; c != nil && a != nil {
			// From each row's median ratio at this row's no-op time: the
			// rows ran minutes apart and the box's speed drifts, so their
			// absolute rates do not subtract.
			noop := 1e9 / l.noopPPS
			add := func(x *lineRate) float64 { return noop * (1/x.ratio - 1) }
			fmt.Fprintf(&b, "- of that, on this path (each row's median ratio at this row's no-op time): the header fast path takes every\n"+
				"  frame after the first, +%.0f ns in all (program entry and packet counter alone: +%.0f ns).", add(l), add(c))
			if nf := r.lineNoFast; nf != nil {
				fmt.Fprintf(&b, " Without it every frame\n  is parsed, classified and keyed (+%.0f ns over the counter) and counted in the flow cache (+%.0f ns more):\n"+
					"  +%.0f ns in all.", add(a)-add(c), add(nf)-add(a), add(nf))
			}
			if nc := r.lineNoCache; nc != nil {
				fmt.Fprintf(&b, " With the cache off too, counting costs +%.0f ns (hash lookup, atomic adds).", add(nc)-add(a))
			}
			b.WriteString("\n")
		}
	}
	if rp := r.replay; rp != nil && rp.calls > 0 {
		per := rp.elapsed.Seconds() * 1e6 / float64(rp.replayed)
		line := fmt.Sprintf("- replay (part 5): %.2f µs per packet in the replay pass, %.2f test_run calls per packet", per, float64(rp.calls)/float64(rp.replayed))
		if r.costOverhead != nil {
			line += fmt.Sprintf("; the fixed cost of one BPF_PROG_TEST_RUN call alone is %.2f µs (XDP, part 1)",
				r.costOverhead[ebpf.XDP].Seconds()*1e6)
		}
		b.WriteString(line + ".\n")
	}
	return b.String()
}

// verdicts sums the targets up in words.
// Issue 16's per-packet targets.
const (
	targetOwnNs      = 35.0 // flowaudit − empty program, XDP, IPv4 TCP to a listening port, 10 k keys
	targetLineRate16 = 0.92 // the minimum over the rounds (5 by default), not the median
)

// issue16Verdicts: per-packet work, line rate (minimum of the rounds) and
// replay against tshark.
func (r *report) issue16Verdicts() string {
	var b strings.Builder
	b.WriteString("\nPer packet and replay (issue 16):\n\n")
	if c := r.findCost(bpf.HookXDP, targetKeys, "IPv4 TCP to a listening port"); c != nil {
		own := nsPer(c.fa, c.repeat) - nsPer(c.empty, c.repeat)
		fmt.Fprintf(&b, "- flowaudit's own work, XDP, IPv4 TCP to a listening port, 10 k keys: %.1f ns/pkt (%.1f − empty %.1f; target ≤ %.0f ns): %s.\n",
			own, nsPer(c.fa, c.repeat), nsPer(c.empty, c.repeat), targetOwnNs, verdict(own <= targetOwnNs))
		for _, v := range []struct{ name, what string }{
			{"the same, header fast path off", "with the header fast path off (every packet parsed)"},
			{"the same, flow cache off", "with the flow cache off too (every packet also hashed into flows_N)"},
		} {
			if o := r.findCost(bpf.HookXDP, targetKeys, v.name); o != nil {
				fmt.Fprintf(&b, "  The same %s: %.1f ns/pkt.\n", v.what, nsPer(o.fa, o.repeat)-nsPer(o.empty, o.repeat))
			}
		}
	} else {
		b.WriteString("- flowaudit's own work per packet: not measured in this run.\n")
	}
	if l := r.line; l != nil {
		fmt.Fprintf(&b, "- veth line rate, minimum of %d rounds: %.1f %% of the no-op program's (median %.1f %%; target ≥ %.0f %% as the minimum of 5): %s.\n",
			l.rounds, 100*l.minRatio, 100*l.ratio, 100*targetLineRate16, verdict(l.minRatio >= targetLineRate16 && l.rounds >= 5))
		if c := r.lineCal; c != nil {
			fmt.Fprintf(&b, "  The calibration, no-op against no-op, reads %.1f %% (minimum %.1f %%): the measurement's own spread.\n",
				100*c.ratio, 100*c.minRatio)
		}
		if nf := r.lineNoFast; nf != nil {
			fmt.Fprintf(&b, "  With the header fast path off flowaudit reaches %.1f %% (minimum %.1f %%).\n", 100*nf.ratio, 100*nf.minRatio)
		}
	} else {
		b.WriteString("- veth line rate: not measured in this run.\n")
	}
	if rp := r.replay; rp != nil {
		fmt.Fprintf(&b, "- replay, whole run: %s (target ≥ %s): %s.\n", mpps(rp.totalPPS()), mpps(replayTargetPPS), verdict(rp.totalPPS() >= replayTargetPPS))
		if rp.tsharkErr != nil {
			fmt.Fprintf(&b, "- replay vs `tshark -q -z conv,tcp`: tshark did not run (%v): not measured.\n", rp.tsharkErr)
		} else {
			fmt.Fprintf(&b, "- replay vs `tshark -q -z conv,tcp` on the same %s-packet capture, one after the other: flowaudit %s, tshark %s: %.2f× tshark's rate (target ≥ %.0f×): %s.\n",
				commas(uint64(rp.replayed)), rp.total.Round(time.Millisecond), rp.tshark.Round(time.Millisecond), rp.vsTshark(), replayTargetVsTshark,
				verdict(rp.vsTshark() >= replayTargetVsTshark))
		}
	} else {
		b.WriteString("- replay: not measured in this run.\n")
	}
	return b.String()
}

func (r *report) verdicts() string {
	var b strings.Builder
	b.WriteString("Targets (issue 8):\n\n")
	found := false
	for _, c := range r.cost {
		if costTarget(c) {
			found = true
			fmt.Fprintf(&b, "- per-packet cost, XDP, %s, 10 k keys: %.2f× the empty program (target ≤ %.0f×): %s.\n",
				c.packet, c.ratio, targetCostRatio, verdict(c.ratio <= targetCostRatio))
		}
	}
	if !found {
		b.WriteString("- per-packet cost: not measured in this run.\n")
	}
	if l := r.line; l != nil {
		fmt.Fprintf(&b, "- veth line rate with flowaudit: %.1f %% of the no-op program's (target ≥ %.0f %%): %s; counted = sent in every run: %s.\n",
			100*l.ratio, 100*targetLineRate, verdict(l.ratio >= targetLineRate), verdict(l.countedOK))
	} else {
		b.WriteString("- veth line rate: not measured in this run.\n")
	}
	if lv := r.live; lv != nil {
		b.WriteString("\nLive sensors (issue 11):\n\n")
		b.WriteString(lv.verdicts())
	}
	b.WriteString(r.issue16Verdicts())
	b.WriteString(scaleVerdicts(r.scale, r.scaleSkipped))
	b.WriteString(r.breakdown())
	return b.String()
}
