package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

// Part 6: live sensors under fire (issue 11) — the overflow path's cost
// per packet, counted vs sent while counts move out of the kernel, and the
// memory of a watch that has seen a million distinct peers.

// overflowCell is one packet kind on the normal and on the overflow path,
// each beside the empty program.
type overflowCell struct {
	packet          string
	repeat          uint32
	normal, over    time.Duration // medians of the whole runs
	empty           time.Duration
	ratioEmpty      float64 // overflow / empty, median of the per-round ratios
	ratioNormal     float64 // overflow / normal, median of the per-round ratios
	normalEmptyRate float64 // normal / empty
}

// measureOverflowCost: a flow map that is full (the measured packet's peer
// cannot be inserted, so every repeat takes the overflow path) against the
// same map, just as full, that holds the packet's flow (the normal path),
// and the empty program, in rotating order.
func measureOverflowCost(repeat uint32, rounds, cpu int, logf func(string, ...any)) ([]overflowCell, error) {
	w, err := newPinnedWorker(cpu)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	empty, err := emptyProgram(ebpf.XDP)
	if err != nil {
		return nil, err
	}
	defer empty.Close()
	cases := map[string]packetCase{}
	for _, pc := range packetCases() {
		cases[pc.name] = pc
	}
	bound := time.Duration(repeat) * 10 * time.Microsecond
	run := func(p *ebpf.Program, frame []byte, n uint32) (time.Duration, error) {
		var r runResult
		err := w.do(func() error {
			var err error
			for try := 0; try < 3; try++ {
				if r, err = testRun(p, frame, n, false, 0, 0, bound, nil); err == nil {
					return nil
				}
			}
			return err
		})
		return r.wall, err
	}
	var walls []time.Duration
	for i := 0; i < 7; i++ {
		d, err := run(empty, cases["IPv4 UDP"].in, 1)
		if err != nil {
			return nil, err
		}
		walls = append(walls, d)
	}
	fixed := median(walls)

	const entries = bpf.DefaultFlowEntries
	var out []overflowCell
	for _, name := range []string{"IPv4 TCP to a listening port", "IPv4 UDP"} {
		pc := cases[name]
		var full, holds *bpf.Collector
		closeAll := func() {
			for _, c := range []*bpf.Collector{full, holds} {
				if c != nil {
					c.Close()
				}
			}
		}
		for i := 0; i < 2; i++ {
			c, err := bpf.Open(bpf.Options{FlowEntries: entries, EphemeralPorts: [2]uint16{32768, 60999}, SocketsKnown: true})
			if err != nil {
				closeAll()
				return nil, err
			}
			var socks []snapshot.Socket
			if pc.listen != 0 {
				socks = []snapshot.Socket{{Proto: snapshot.TCP, Addr: local4, Port: pc.listen}}
			}
			if err := c.SetLocalPorts(socks); err != nil {
				c.Close()
				closeAll()
				return nil, err
			}
			if i == 0 {
				full = c
				err = fillFlows(c, entries) // no room for the packet's flow
			} else {
				holds = c
				if err = fillFlows(c, entries-1); err == nil {
					_, err = c.Run(bpf.HookXDP, pc.in) // its flow takes the last slot
				}
			}
			if err != nil {
				closeAll()
				return nil, err
			}
		}
		n0, err := full.Counters()
		if err != nil {
			closeAll()
			return nil, err
		}
		var normals, overs, empties []time.Duration
		var rEmpty, rNormal []float64
		for round := 0; round < rounds; round++ {
			var d [3]time.Duration
			for j := 0; j < 3; j++ {
				k := (j + round) % 3 // rotate the order
				p := []*ebpf.Program{empty, holds.Program(bpf.HookXDP), full.Program(bpf.HookXDP)}[k]
				wall, err := run(p, pc.in, repeat)
				if err != nil {
					closeAll()
					return nil, fmt.Errorf("overflow cost, %s: %w", name, err)
				}
				d[k] = wall - fixed
			}
			empties, normals, overs = append(empties, d[0]), append(normals, d[1]), append(overs, d[2])
			rEmpty = append(rEmpty, float64(d[2])/float64(d[0]))
			rNormal = append(rNormal, float64(d[2])/float64(d[1]))
			logf("  round %d %-30s overflow path %6.1f ns  normal %6.1f ns  empty %5.1f ns", round+1, name,
				nsPer(d[2], repeat), nsPer(d[1], repeat), nsPer(d[0], repeat))
		}
		// Every measured packet of the full map lost its peer and was
		// counted in the overflow map; none of the other map's did.
		n1, err1 := full.Counters()
		h, err2 := holds.Counters()
		closeAll()
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("overflow cost: counters: %v %v", err1, err2)
		}
		if got, want := n1.FlowInsertFailed-n0.FlowInsertFailed, uint64(repeat)*uint64(rounds); got != want || n1.OverflowInsertFailed != 0 {
			return nil, fmt.Errorf("overflow cost, %s: %d packets took the overflow path, want %d (%d not counted at all)", name, got, want, n1.OverflowInsertFailed)
		}
		if h.FlowInsertFailed != 0 {
			return nil, fmt.Errorf("overflow cost, %s: the map holding the flow failed %d inserts", name, h.FlowInsertFailed)
		}
		out = append(out, overflowCell{packet: name, repeat: repeat, normal: median(normals), over: median(overs), empty: median(empties),
			ratioEmpty: medianF(rEmpty), ratioNormal: medianF(rNormal)})
	}
	return out, nil
}

// sprayer is a generator program that rewrites each frame's IPv4 source
// address before sending it: the n-th frame comes from
// ((n & mask) + 1) · 2654435761 mod 2³², so consecutive frames come from
// distinct peers spread over the whole address space (mask+1 of them, a
// multiplication by an odd number being a bijection), as a spoofed-source
// flood's do. Like the pacer it sends only when the next frame is due
// (interval 0: always) and counts what it sent. Checksums are not updated:
// the frames are dropped as PACKET_OTHERHOST before the IP layer would
// check them, and flowaudit never reads them.
type sprayer struct {
	state *ebpf.Map // due, interval, sent, limit, mask
	prog  *ebpf.Program
}

type sprayState struct {
	Due, Interval, Sent, Limit, Mask uint64
}

func newSprayer() (*sprayer, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_spray", Type: ebpf.Array, KeySize: 4, ValueSize: 40, MaxEntries: 1})
	if err != nil {
		return nil, err
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R1, asm.R7, 16, asm.DWord), // sent
		asm.LoadMem(asm.R2, asm.R7, 24, asm.DWord), // limit
		asm.JGE.Reg(asm.R1, asm.R2, "drop"),
		asm.FnKtimeGetNs.Call(),
		asm.LoadMem(asm.R1, asm.R7, 0, asm.DWord), // due
		asm.JLT.Reg(asm.R0, asm.R1, "drop"),
		asm.LoadMem(asm.R2, asm.R7, 8, asm.DWord), // interval
		asm.Add.Reg(asm.R1, asm.R2),
		asm.StoreMem(asm.R7, 0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // ctx->data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // ctx->data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 30), // Ethernet 14 + IPv4 source at 12..16
		asm.JGT.Reg(asm.R4, asm.R3, "drop"),
		asm.LoadMem(asm.R1, asm.R7, 16, asm.DWord),
		asm.LoadMem(asm.R5, asm.R7, 32, asm.DWord), // mask
		asm.And.Reg(asm.R1, asm.R5),
		asm.Add.Imm(asm.R1, 1),
		asm.LoadImm(asm.R4, 2654435761, asm.DWord),
		asm.Mul.Reg(asm.R1, asm.R4),
		asm.StoreMem(asm.R2, 26, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 16, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R7, 16, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 3), // XDP_TX
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"), // XDP_DROP
		asm.Return(),
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "bench_spray_tx", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("load spraying program: %w", err)
	}
	return &sprayer{state: m, prog: p}, nil
}

func (s *sprayer) Close() {
	s.prog.Close()
	s.state.Close()
}

// send transmits total frames from distinct peers (mask+1 of them, cycled)
// at pps (0: as fast as the generator goes) and returns the frames sent.
func (s *sprayer) send(g *generator, total uint64, pps float64, mask uint64) (uint64, time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, 0, err
	}
	st := sprayState{Due: uint64(ts.Nano()), Limit: total, Mask: mask}
	repeat, bound := uint32(total), 60*time.Second+time.Duration(total)*time.Microsecond
	if pps > 0 {
		st.Interval = uint64(float64(time.Second) / pps)
		repeat = 1<<32 - 1
		bound = 3*time.Duration(float64(total)/pps*float64(time.Second)) + 10*time.Second
	}
	if err := s.state.Put(uint32(0), st); err != nil {
		return 0, 0, err
	}
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(stop)
		for {
			select {
			case <-finished:
				return
			case <-time.After(2 * time.Millisecond):
			}
			var cur sprayState
			if s.state.Lookup(uint32(0), &cur) == nil && cur.Sent >= total {
				return
			}
		}
	}()
	t0 := time.Now()
	var r runResult
	err := g.w.do(func() error {
		var err error
		r, err = testRun(s.prog, g.frame, repeat, true, uint32(g.l.genIdx), g.batch, bound, stop)
		return err
	})
	close(finished)
	wall := time.Since(t0)
	var cur sprayState
	if lerr := s.state.Lookup(uint32(0), &cur); lerr != nil {
		return 0, wall, lerr
	}
	if err != nil && !(pps > 0 && cur.Sent == total) {
		return cur.Sent, wall, err
	}
	if cur.Sent != total {
		return cur.Sent, wall, fmt.Errorf("sprayer sent %d of %d frames before its bound (%s, run %s)", cur.Sent, total, bound, r.wall)
	}
	return cur.Sent, wall, nil
}

// moveRun is the move test: frames from many peers at the generator's
// maximum rate into flowaudit, while a mover empties the kernel maps as
// fast as it can.
type moveRun struct {
	sent, counted, delivered uint64
	peers                    uint64 // distinct peers cycled
	moves                    uint64
	peerless                 uint64 // packets counted in the overflow map (peer lost)
	wall                     time.Duration
}

func measureMoves(l *lab, g *generator, sp *sprayer, total uint64, logf func(string, ...any)) (*moveRun, error) {
	const mask = 1<<16 - 1
	fa, err := newFlowauditRecv(l, true, bpf.BenchCutNone, false, false)
	if err != nil {
		return nil, err
	}
	defer fa.Close()
	if err := fa.attach(); err != nil {
		return nil, err
	}
	defer fa.detach() //nolint:errcheck
	time.Sleep(50 * time.Millisecond)
	before, err := l.recvCounters()
	if err != nil {
		return nil, err
	}
	var stop atomic.Bool
	moved := make(chan error, 1)
	go func() {
		for !stop.Load() {
			if _, err := fa.c.Move(); err != nil {
				moved <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
		moved <- nil
	}()
	sent, wall, err := sp.send(g, total, 0, mask)
	time.Sleep(100 * time.Millisecond) // NAPI drains the last batch
	stop.Store(true)
	if merr := <-moved; err == nil {
		err = merr
	}
	if err != nil {
		return nil, err
	}
	after, err := l.recvCounters()
	if err != nil {
		return nil, err
	}
	r, err := fa.c.ReadMaps()
	if err != nil {
		return nil, err
	}
	mr := &moveRun{sent: sent, delivered: after.RxPackets - before.RxPackets, peers: mask + 1, moves: r.Stats.Moves, wall: wall}
	for _, f := range r.Flows {
		mr.counted += f.PacketsIn
	}
	for _, f := range r.Overflow {
		mr.counted += f.PacketsIn
		mr.peerless += f.PacketsIn
	}
	logf("  moves: sent %d, delivered %d, counted %d (%d without peer) across %d moves in %s",
		mr.sent, mr.delivered, mr.counted, mr.peerless, mr.moves, wall.Round(time.Millisecond))
	if mr.delivered != mr.sent {
		return nil, fmt.Errorf("move test: the receiving veth got %d frames, the generator sent %d", mr.delivered, mr.sent)
	}
	return mr, nil
}

// accumBytes is what the "accum-bytes" child reports: the Go heap of a
// collector holding n accumulated per-peer entries, and the peak while it
// exports them.
type accumBytes struct {
	Entries     int   `json:"entries"`
	HeapBytes   int64 `json:"heap_bytes"`   // heap in use by the entries (after GC)
	RSSBytes    int64 `json:"rss_bytes"`    // RSS growth with the entries
	ExportBytes int64 `json:"export_bytes"` // peak RSS growth during ReadMaps over that
	ExportNs    int64 `json:"export_ns"`
	MaxMoveNs   int64 `json:"max_move_ns"` // the slowest Move during the export
	Moves       int   `json:"moves"`       // moves completed during the export
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

func currentRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return -1
}

// childAccumBytes moves n synthetic per-peer flows (distinct peers on one
// service, no folding) through the kernel map into a collector's memory,
// as a recorder's moves do, and measures what they cost there; then times
// an export while a mover keeps moving.
func childAccumBytes(n int) (*accumBytes, error) {
	c, err := bpf.Open(bpf.Options{EphemeralPorts: [2]uint16{32768, 60999}, FlowBudget: n})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	h0, r0 := heapInUse(), currentRSS()
	now := time.Now()
	const chunk = bpf.DefaultFlowEntries / 2
	for from := 0; from < n; from += chunk {
		flows := make([]snapshot.Flow, 0, chunk)
		for i := from; i < min(from+chunk, n); i++ {
			flows = append(flows, snapshot.Flow{Direction: snapshot.Inbound, Proto: snapshot.UDP, Port: 514,
				Peer: netip.AddrFrom4([4]byte{100, 64 | byte(i>>16)&63, byte(i >> 8), byte(i)}), PacketsIn: 1, BytesIn: 60,
				FirstSeen: now, LastSeen: now})
		}
		if err := c.BenchLoadFlows(flows); err != nil {
			return nil, err
		}
		if _, err := c.Move(); err != nil {
			return nil, err
		}
	}
	cn, err := c.Counters()
	if err != nil {
		return nil, err
	}
	res := &accumBytes{Entries: cn.Accumulated}
	res.HeapBytes, res.RSSBytes = heapInUse()-h0, currentRSS()-r0
	debug.FreeOSMemory()
	r1 := currentRSS()
	if err := resetPeakRSS(); err != nil {
		return nil, err
	}
	var stop atomic.Bool
	done := make(chan error, 1)
	go func() {
		for !stop.Load() {
			t := time.Now()
			if _, err := c.Move(); err != nil {
				done <- err
				return
			}
			res.MaxMoveNs = max(res.MaxMoveNs, int64(time.Since(t)))
			res.Moves++
			time.Sleep(5 * time.Millisecond)
		}
		done <- nil
	}()
	t := time.Now()
	r, err := c.ReadMaps()
	res.ExportNs = int64(time.Since(t))
	stop.Store(true)
	if merr := <-done; err == nil {
		err = merr
	}
	if err != nil {
		return nil, err
	}
	if len(r.Flows) != n {
		return nil, fmt.Errorf("exported %d flows, accumulated %d", len(r.Flows), n)
	}
	res.ExportBytes = peakRSS()<<10 - r1
	runtime.KeepAlive(r)
	return res, nil
}

// watchRun is one `flowaudit watch` that saw the sprayed peers.
type watchRun struct {
	label    string
	args     []string // the watch's flags beyond -i, -m, -r
	peers    uint64   // distinct peers sent
	sent     uint64
	wall     time.Duration
	rssKB    int64 // peak RSS of the watch process (ru_maxrss)
	idle     bool  // no traffic: the baseline
	budget   int   // its --flow-budget
	snap     snapshotSummary
	foldLogs int // "memory budget reached" log lines
	err      error
}

// snapshotSummary is what the watch's last evaluated snapshot holds.
type snapshotSummary struct {
	flows, folded, overflow int
	packets                 uint64  // packets in flows and overflow entries
	peers                   float64 // exact peers + the folded entries' estimates
	peerless, datapath      uint64
	window                  time.Duration
}

func summarize(s *snapshot.Snapshot) snapshotSummary {
	var out snapshotSummary
	out.flows = len(s.Flows)
	out.overflow = len(s.Overflow)
	for _, f := range s.Flows {
		out.packets += f.PacketsIn
		if f.Folded() {
			out.folded++
			out.peers += float64(f.Peers)
		} else {
			out.peers++
		}
	}
	for _, f := range s.Overflow {
		out.packets += f.PacketsIn
		out.peers += float64(f.Peers)
	}
	out.peerless = s.Stats.FlowInsertFailed
	out.datapath = s.Stats.PacketsIngress
	out.window = s.Window()
	return out
}

// runWatch starts bin/flowaudit watch on the receiving veth, sprays the
// peers at pps (none for the baseline, which waits as long), stops it with
// SIGINT (a last evaluation) and reads its peak RSS and last snapshot.
func runWatch(l *lab, g *generator, sp *sprayer, fa, tmp string, w watchRun, pps float64, logf func(string, ...any)) watchRun {
	dir := filepath.Join(tmp, "watch-"+strings.NewReplacer(" ", "", "=", "", "/", "").Replace(w.label))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		w.err = err
		return w
	}
	defer os.RemoveAll(dir)
	args := append([]string{fa, "--log-format", "json", "watch", "-i", l.recvIf, "-m", "usm", "-r", "sensor",
		"--snapshot-dir", dir, "--keep", "2"}, w.args...)
	t := &tool{name: "flowaudit watch", args: args}
	if err := t.start(l); err != nil {
		w.err = err
		return w
	}
	defer t.kill()
	if err := t.waitReady(func() bool {
		lk, err := l.recvNL.LinkByName(l.recvIf)
		return err == nil && lk.Attrs().Xdp != nil && lk.Attrs().Xdp.Attached
	}); err != nil {
		w.err = err
		return w
	}
	time.Sleep(500 * time.Millisecond)
	if w.idle {
		w.wall = time.Duration(float64(w.peers) / pps * float64(time.Second))
		time.Sleep(w.wall)
	} else {
		var err error
		w.sent, w.wall, err = sp.send(g, w.peers, pps, 1<<32-1)
		if err != nil {
			w.err = err
			return w
		}
	}
	time.Sleep(2500 * time.Millisecond) // a move, and an evaluation of everything
	if err := t.stop(syscall.SIGINT); err != nil {
		w.err = err
		return w
	}
	if ru, ok := t.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		w.rssKB = ru.Maxrss
	}
	if code := t.cmd.ProcessState.ExitCode(); code != 0 && code != 2 {
		w.err = fmt.Errorf("watch exited %d: %s", code, lastLines(t.stderr.String(), 3))
		return w
	}
	w.foldLogs = strings.Count(t.stderr.String(), "memory budget reached")
	names, _ := filepath.Glob(filepath.Join(dir, "flowaudit-*.json"))
	sort.Strings(names)
	if len(names) == 0 {
		w.err = fmt.Errorf("watch wrote no snapshot: %s", lastLines(t.stderr.String(), 3))
		return w
	}
	s, err := snapshot.ReadFile(names[len(names)-1])
	if err != nil {
		w.err = err
		return w
	}
	w.snap = summarize(s)
	logf("  watch %-28s peak RSS %4d MiB; last snapshot: %d flows (%d folded), %d overflow, %d packets (datapath %d, %d without peer), ~%.0f peers; %d fold logs",
		w.label, w.rssKB>>10, w.snap.flows, w.snap.folded, w.snap.overflow, w.snap.packets, w.snap.datapath, w.snap.peerless, w.snap.peers, w.foldLogs)
	return w
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// liveResult is the outcome of part 6.
type liveResult struct {
	overflow []overflowCell
	moves    *moveRun
	accum    *accumBytes
	watches  []watchRun
	pps      float64
	budget   int
}

// liveConfig: part 6's sizes.
type liveConfig struct {
	repeat     uint32
	rounds     int
	cpu        int
	movePkts   uint64
	watchPeers uint64
	watchPPS   float64
	budget     int // the watch's default --flow-budget
	flowaudit  string
}

// defaultWatchBudget is `flowaudit watch`'s default --flow-budget, read
// from its help so the benchmark measures what a user gets.
func defaultWatchBudget(fa string) (int, error) {
	out, _ := runQuiet(fa, "watch", "-h")
	for _, ln := range strings.Split(out, "\n") {
		if strings.Contains(ln, "--flow-budget") {
			if i := strings.LastIndex(ln, "(default "); i >= 0 {
				return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(ln[i+len("(default "):]), ")"))
			}
		}
	}
	return 0, fmt.Errorf("%s watch -h: no --flow-budget default", fa)
}

func measureLive(l *lab, g *generator, cfg liveConfig, tmp string, logf func(string, ...any)) (*liveResult, error) {
	res := &liveResult{pps: cfg.watchPPS, budget: cfg.budget}
	var err error
	logf("  overflow path: BPF_PROG_TEST_RUN, repeat %d, %d rounds", cfg.repeat, cfg.rounds)
	if res.overflow, err = measureOverflowCost(cfg.repeat, cfg.rounds, cfg.cpu, logf); err != nil {
		return nil, err
	}
	sp, err := newSprayer()
	if err != nil {
		return nil, err
	}
	defer sp.Close()
	if res.moves, err = measureMoves(l, g, sp, cfg.movePkts, logf); err != nil {
		return nil, err
	}
	res.accum = &accumBytes{}
	if err := inChild(res.accum, "accum-bytes", strconv.Itoa(cfg.budget)); err != nil {
		return nil, err
	}
	logf("  %d accumulated entries: heap %.0f B/entry, RSS %.0f B/entry; export %s, +%.0f B/entry peak RSS; %d moves during it, slowest %s",
		res.accum.Entries, float64(res.accum.HeapBytes)/float64(res.accum.Entries), float64(res.accum.RSSBytes)/float64(res.accum.Entries),
		time.Duration(res.accum.ExportNs).Round(time.Millisecond), float64(res.accum.ExportBytes)/float64(res.accum.Entries),
		res.accum.Moves, time.Duration(res.accum.MaxMoveNs).Round(time.Microsecond))
	for _, w := range []watchRun{
		{label: "idle (no traffic)", args: []string{"--interval", "1s"}, idle: true},
		{label: "default --window (1h)", args: []string{"--interval", "1s"}},
		{label: "--window 0", args: []string{"--interval", "1s", "--window", "0"}},
		{label: "--window 6s (7 buckets of 1 s)", args: []string{"--interval", "1s", "--window", "6s"}},
		{label: "--window 6s, --flow-budget 262144 (the former default)", args: []string{"--interval", "1s", "--window", "6s",
			"--flow-budget", "262144"}, budget: 262144},
	} {
		if w.budget == 0 {
			w.budget = cfg.budget
		}
		w.peers = cfg.watchPeers
		r := runWatch(l, g, sp, cfg.flowaudit, tmp, w, cfg.watchPPS, logf)
		if r.err != nil {
			return nil, fmt.Errorf("watch %s: %w", w.label, r.err)
		}
		// Nothing may be lost, whatever happened to the peers' identity:
		// a window longer than the run covers every packet sent.
		if !r.idle && !strings.Contains(w.label, "6s") && (r.snap.packets != r.sent || r.snap.datapath != r.sent) {
			return nil, fmt.Errorf("watch %s: the last snapshot holds %d packets (datapath %d), %d were sent", w.label, r.snap.packets, r.snap.datapath, r.sent)
		}
		res.watches = append(res.watches, r)
	}
	return res, nil
}

// runQuiet runs a command and returns its combined output.
func runQuiet(name string, args ...string) (string, error) {
	var b bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// liveRows are part 6's rows of the table.
func (r *report) liveRows() [][]string {
	lv := r.live
	if lv == nil {
		return nil
	}
	var rows [][]string
	for _, c := range lv.overflow {
		rows = append(rows, []string{"6 live", fmt.Sprintf("XDP, %s, flow map full (65 536 keys): overflow path vs normal path", c.packet),
			fmt.Sprintf("%.1f ns/pkt vs %.1f ns/pkt (same fullness, flow present); empty program %.1f ns/pkt",
				nsPer(c.over, c.repeat), nsPer(c.normal, c.repeat), nsPer(c.empty, c.repeat)),
			fmt.Sprintf("%.2f× normal path", c.ratioNormal), ""})
	}
	if m := lv.moves; m != nil {
		rows = append(rows, []string{"6 live",
			fmt.Sprintf("counted vs sent, %s frames from %s peers at maximum rate, moves back to back", commas(m.sent), commas(m.peers)),
			fmt.Sprintf("%s of %s across %s moves (%s without peer)", commas(m.counted), commas(m.sent), commas(m.moves), commas(m.peerless)),
			fmt.Sprintf("%.4f", float64(m.counted)/float64(m.sent)),
			"= sent, ≥ 50 moves: " + verdict(m.counted == m.sent && m.moves >= 50)})
	}
	if a := lv.accum; a != nil && a.Entries > 0 {
		n := float64(a.Entries)
		rows = append(rows, []string{"6 live", fmt.Sprintf("%s per-peer entries accumulated (the default budget), moved through the kernel map", commas(uint64(a.Entries))),
			fmt.Sprintf("heap %.0f B/entry, RSS %.0f B/entry", float64(a.HeapBytes)/n, float64(a.RSSBytes)/n),
			fmt.Sprintf("%.0f B/entry", float64(a.HeapBytes)/n), ""})
		rows = append(rows, []string{"6 live", "export of them (ReadMaps) while a mover moves every 5 ms",
			fmt.Sprintf("%s, +%.0f B/entry peak RSS; %d moves during it, the slowest %s",
				time.Duration(a.ExportNs).Round(time.Millisecond), float64(a.ExportBytes)/n, a.Moves, time.Duration(a.MaxMoveNs).Round(10*time.Microsecond)),
			fmt.Sprintf("slowest move %.1f %% of the export", 100*float64(a.MaxMoveNs)/float64(a.ExportNs)), ""})
	}
	var idle int64
	for _, w := range lv.watches {
		if w.idle {
			idle = w.rssKB
		}
	}
	for _, w := range lv.watches {
		if w.idle {
			rows = append(rows, []string{"6 live", "`watch` peak RSS, " + w.label + fmt.Sprintf(", %s", w.wall.Round(time.Second)),
				fmt.Sprintf("%d MiB", w.rssKB>>10), "1.00× idle", ""})
			continue
		}
		bound := idle + int64(w.budget)*helpBytesPerEntry>>10
		snap := fmt.Sprintf("%d flows (%d folded)", w.snap.flows, w.snap.folded)
		rows = append(rows, []string{"6 live",
			fmt.Sprintf("`watch` peak RSS, %s peers at %s/s, %s", commas(w.sent), commas(uint64(lv.pps)), w.label),
			fmt.Sprintf("%d MiB; last evaluation: %s, %s packets, ~%s peers, %s without peer; %d fold warnings", w.rssKB>>10, snap,
				commas(w.snap.packets), commas(uint64(w.snap.peers)), commas(w.snap.peerless), w.foldLogs),
			fmt.Sprintf("%.2f× idle", float64(w.rssKB)/float64(idle)),
			fmt.Sprintf("≤ idle + %s × 3 KiB = %d MiB: %s", commas(uint64(w.budget)), bound>>10, verdict(w.rssKB <= bound))})
	}
	return rows
}

// liveMethod explains part 6 in BENCHMARKS.md.
func (r *report) liveMethod() string {
	lv := r.live
	if lv == nil {
		return ""
	}
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	p("**6. Live sensors (issue 11).** *Overflow path:* `BPF_PROG_TEST_RUN` as in part 1 (same repeat count, fixed cost\n")
	p("subtracted), XDP, on two collectors whose flow maps (65 536 entries) are both full of synthetic keys: one holds the\n")
	p("measured packet's flow (every repeat updates it: the normal path, at the same table fullness), the other has no\n")
	p("room for it (every repeat fails to insert and is counted per service in the overflow map, with its peer sketch).\n")
	p("The two and the empty program run in rotating order over the rounds; the ratio is the median of the per-round\n")
	p("ratios. The statistics must show exactly one failed insert per repeat on the full map and none on the other.\n")
	p("*Counted vs sent:* the lab of part 2, flowaudit attached in this process as a recording attaches it, a goroutine\n")
	p("calling `Collector.Move` back to back (1 ms apart) while the generator sends at its maximum rate from a program\n")
	p("that rewrites each frame's IPv4 source: the n-th frame comes from ((n mod 65 536) + 1) × 2654435761 mod 2³², so\n")
	p("every move has tens of thousands of distinct keys to empty while the programs keep adding to them. Counted = the\n")
	p("packets of every flow and overflow entry that `ReadMaps` returns afterwards; it must equal the frames sent (the\n")
	p("receiving veth's `rx_packets` is checked too). *Accumulated entries:* a child process moves %s distinct peers\n", commas(uint64(lv.budget)))
	p("through a kernel flow map into a collector (budget %s, no fold) and compares the Go heap in use after GC, and\n", commas(uint64(lv.budget)))
	p("its RSS, before and after; then times `ReadMaps` while another goroutine moves every 5 ms (each move's duration\n")
	p("is recorded: a move never waits for the conversion) and takes the peak RSS growth of the export (`VmHWM`, reset\n")
	p("before). *watch:* `bin/flowaudit --log-format json watch -i veth-r -m usm -r sensor --snapshot-dir $TMP --keep 2\n")
	p("--interval 1s` plus the flags shown, in the receiving namespace, with its default budget (%s) unless shown;\n", commas(uint64(lv.budget)))
	p("the sprayer sends %s frames paced at %s/s, each from a new peer spread over the whole IPv4 space (as\n", commas(uint64(r.cfg.watchPeers)), commas(uint64(lv.pps)))
	p("`hping3 --rand-source` does, all to UDP 9000); 2.5 s later SIGINT makes it evaluate a last time and exit. Peak\n")
	p("RSS is the process's `ru_maxrss` (the evaluations, the snapshot files and the audit included); the idle row is\n")
	p("the same watch without traffic, for as long (what loading the programs and the catalogs costs).\n")
	p("With a window longer than the run the flood is folded to \"other peers\" once the budget is reached,\n")
	p("and stays folded; with `--window 6s` every bucket (1 s) starts unfolded, so the budget is full again at every\n")
	p("evaluation — the worst case for memory. The judged figure is the help text's: idle + budget × 3 KiB. The\n")
	p("last evaluated snapshot of a window longer than the run must hold every packet sent.\n\n")
	return b.String()
}

// verdicts: issue 11's measurable claims, in words.
func (lv *liveResult) verdicts() string {
	var b strings.Builder
	for _, c := range lv.overflow {
		fmt.Fprintf(&b, "- the overflow path (flow map full), XDP, %s: %.2f× the normal path's cost per packet, %.1f ns more.\n",
			c.packet, c.ratioNormal, nsPer(c.over, c.repeat)-nsPer(c.normal, c.repeat))
	}
	if m := lv.moves; m != nil {
		fmt.Fprintf(&b, "- no packet lost across moves: %s counted of %s sent across %s moves: %s.\n",
			commas(m.counted), commas(m.sent), commas(m.moves), verdict(m.counted == m.sent && m.moves >= 50))
	}
	var idle int64
	for _, w := range lv.watches {
		if w.idle {
			idle = w.rssKB
		}
	}
	for _, w := range lv.watches {
		if w.idle {
			continue
		}
		bound := idle + int64(w.budget)*helpBytesPerEntry>>10
		fmt.Fprintf(&b, "- `watch` that saw %s distinct peers, %s: peak RSS %d MiB (idle %d MiB), within idle + budget × 3 KiB (%d MiB): %s.\n",
			commas(w.sent), w.label, w.rssKB>>10, idle>>10, bound>>10, verdict(w.rssKB <= bound))
	}
	return b.String()
}
