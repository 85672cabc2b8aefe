package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

// Part 2: line-rate ratio on veth with an XDP live-frames generator.

// otherHostMAC is the generator's destination MAC: not the receiver's, so
// the receiving stack classifies every frame as PACKET_OTHERHOST and
// drops it in ip_rcv, right after XDP and skb allocation, in both
// configurations.
var otherHostMAC = net.HardwareAddr{0x02, 0xfb, 0, 0, 0, 0x99}

// generator sends frames out of the lab's gen veth at the maximum rate
// BPF_F_TEST_XDP_LIVE_FRAMES allows: a two-instruction program returning
// XDP_TX, which live mode turns into a transmit on the ingress interface.
type generator struct {
	l     *lab
	prog  *ebpf.Program
	w     *pinnedWorker
	frame []byte
	batch uint32
	// overhead is the fixed cost of one live-mode run (page pool set-up
	// and tear-down, tens of ms), not per-frame work: measureOverhead sets
	// it and max-rate runs subtract it from their wall time.
	overhead time.Duration
}

// measureOverhead times 64-frame runs into the no-op receiver (median of 7).
func (g *generator) measureOverhead(nop *noopXDP) error {
	if err := nop.attach(); err != nil {
		return err
	}
	defer nop.detach() //nolint:errcheck
	var small []time.Duration
	for i := 0; i < 7; i++ {
		w, err := g.send(64, 10*time.Second)
		if err != nil {
			return err
		}
		small = append(small, w)
	}
	g.overhead = median(small)
	return nil
}

func newGenerator(l *lab, cpu int) (*generator, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_gen_tx", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 3 /* XDP_TX */), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load generator program: %w", err)
	}
	w, err := newPinnedWorker(cpu)
	if err != nil {
		prog.Close()
		return nil, err
	}
	// The worker thread moves into the generator namespace for good: live
	// mode resolves ingress_ifindex in the caller's namespace.
	if err := w.do(func() error { return netns.Set(l.gen) }); err != nil {
		w.stop()
		prog.Close()
		return nil, fmt.Errorf("enter %s: %w", l.genNS, err)
	}
	frame := generatorFrame(l.genMAC, otherHostMAC, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 40000, 9000)
	return &generator{l: l, prog: prog, w: w, frame: frame, batch: 64}, nil
}

func (g *generator) Close() {
	g.w.stop()
	g.prog.Close()
}

// send transmits n frames as fast as possible and returns the wall time.
// A run cut short (time bound or stray signal) is an error: how many
// frames left is then unknown.
func (g *generator) send(n uint32, bound time.Duration) (time.Duration, error) {
	var r runResult
	err := g.w.do(func() error {
		var err error
		r, err = testRun(g.prog, g.frame, n, true, uint32(g.l.genIdx), g.batch, bound, nil)
		return err
	})
	return r.wall, err
}

// receiver is what runs on the receiving veth during a run.
type receiver interface {
	name() string
	attach() error
	detach() error
	// counted is the number of packets the receiver's own accounting has
	// seen so far (-1: it keeps none).
	counted() (int64, error)
}

// noopXDP is an XDP program that returns XDP_PASS and does nothing else.
type noopXDP struct {
	l    *lab
	prog *ebpf.Program
	lk   link.Link
	// second marks the calibration's other no-op program: same
	// instructions, its own program and name.
	second bool
}

func newNoopXDP(l *lab) (*noopXDP, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_noop", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return nil, err
	}
	return &noopXDP{l: l, prog: p}, nil
}

func (n *noopXDP) name() string {
	if n.second {
		return "no-op XDP, 2nd program"
	}
	return "no-op XDP (XDP_PASS)"
}

func (n *noopXDP) attach() error {
	return n.l.inRecv(func() error {
		var err error
		n.lk, err = link.AttachXDP(link.XDPOptions{Program: n.prog, Interface: n.l.recvIdx, Flags: link.XDPDriverMode})
		return err
	})
}

func (n *noopXDP) detach() error {
	if n.lk == nil {
		return nil
	}
	err := n.lk.Close()
	n.lk = nil
	return err
}

func (n *noopXDP) counted() (int64, error) { return -1, nil }

func (n *noopXDP) Close() {
	n.detach() //nolint:errcheck
	n.prog.Close()
}

// flowauditRecv is flowaudit's collector attached to the receiving veth
// (XDP native ingress, tcx egress), as `flowaudit record` attaches it.
type flowauditRecv struct {
	l       *lab
	c       *bpf.Collector
	cut     bpf.BenchCut
	noCache bool
	noFast  bool
}

// newFlowauditRecv opens flowaudit as a live recording runs it (the socket
// set complete). With bound, the receiver has a UDP collector bound on the
// generator's port 9000 — a syslog / NetFlow sink is what floods an
// appliance; without, the port has no socket and every frame also looks up
// the connection table (a flood to a port nothing listens on).
//
// cut, other than bpf.BenchCutNone, stops the programs part-way (the
// ablation rows: what the work up to there costs on this path).
//
// noCache turns the per-CPU last-flow cache off, noFast the header fast
// path (the comparison rows).
func newFlowauditRecv(l *lab, bound bool, cut bpf.BenchCut, noCache, noFast bool) (*flowauditRecv, error) {
	f := &flowauditRecv{l: l, cut: cut, noCache: noCache, noFast: noFast}
	err := l.inRecv(func() error {
		var err error
		if f.c, err = bpf.Open(bpf.Options{SocketsKnown: true, BenchCut: cut, NoFlowCache: noCache, NoFastPath: noFast}); err != nil {
			return err
		}
		if !bound {
			return nil
		}
		return f.c.SetLocalPorts([]snapshot.Socket{{Proto: snapshot.UDP, Addr: netip.IPv4Unspecified(), Port: 9000}})
	})
	return f, err
}

func (f *flowauditRecv) name() string {
	switch f.cut {
	case bpf.BenchCutCount:
		return "flowaudit, count only"
	case bpf.BenchCutAccount:
		return "flowaudit, no flow map"
	}
	if f.noCache {
		return "flowaudit, no flow cache"
	}
	if f.noFast {
		return "flowaudit, no fast path"
	}
	return "flowaudit (XDP native)"
}

func (f *flowauditRecv) attach() error {
	_, err := f.c.Attach(f.l.recvIf, bpf.AttachOptions{Ingress: bpf.IngressXDPNative, TC: bpf.TCX})
	return err
}

func (f *flowauditRecv) detach() error { return f.c.Detach(f.l.recvIf) }

func (f *flowauditRecv) counted() (int64, error) {
	in, _, err := f.c.BenchCounted()
	return int64(in), err
}

func (f *flowauditRecv) Close() { f.c.Close() }

// rateRun is one generator run into one receiver.
type rateRun struct {
	recv      string
	sent      uint64 // frames the generator transmitted (its repeat count)
	delivered uint64 // rx_packets of the receiving veth
	rxDropped uint64
	counted   int64 // the receiver's own count, -1 if it keeps none
	wall      time.Duration
}

func (r rateRun) pps() float64 { return float64(r.delivered) / r.wall.Seconds() }

// measureRun attaches rc, sends n frames, waits for the receive queue to
// drain and detaches.
func measureRun(g *generator, send sendFunc, rc receiver, n uint32) (rateRun, error) {
	run := rateRun{recv: rc.name(), sent: uint64(n)}
	if err := rc.attach(); err != nil {
		return run, fmt.Errorf("attach %s: %w", rc.name(), err)
	}
	defer rc.detach()                 //nolint:errcheck
	time.Sleep(50 * time.Millisecond) // attaching settles (veth NAPI, the dispatcher)
	before, err := g.l.recvCounters()
	if err != nil {
		return run, err
	}
	c0, err := rc.counted()
	if err != nil {
		return run, err
	}
	wall, err := send(n)
	if err != nil {
		return run, err
	}
	run.wall = wall - g.overhead
	// NAPI drains the last batch: wait until the veth has every frame (or
	// 200 ms have passed: then the check below reports the shortfall).
	var after *netlink.LinkStatistics
	for deadline := time.Now().Add(200 * time.Millisecond); ; time.Sleep(2 * time.Millisecond) {
		if after, err = g.l.recvCounters(); err != nil {
			return run, err
		}
		if after.RxPackets-before.RxPackets >= uint64(n) || time.Now().After(deadline) {
			break
		}
	}
	c1, err := rc.counted()
	if err != nil {
		return run, err
	}
	run.delivered = after.RxPackets - before.RxPackets
	run.rxDropped = after.RxDropped - before.RxDropped
	run.counted = -1
	if c0 >= 0 {
		run.counted = c1 - c0
	}
	return run, nil
}

// lineRate is the outcome of part 2.
type lineRate struct {
	noop, fa  []rateRun     // one per round: the round's slices summed
	overhead  time.Duration // fixed cost of one live-mode test run (setup, teardown), subtracted
	ratio     float64       // median of the per-round subject/reference pps ratios
	minRatio  float64       // the smallest per-round ratio (issue 16 judges the minimum)
	rounds    int
	slices    int     // interleaved runs of each receiver per round
	noopPPS   float64 // medians
	faPPS     float64
	countedOK bool // the subject (flowaudit) counted exactly the packets sent, every run
}

// measureLineRate measures subject against ref (the no-op program) in
// rounds. A round is slices runs of each receiver, n/slices frames per
// run, interleaved ABBA (ref, subject, subject, ref, ...): this 2-vCPU
// virtual machine's speed drifts by ±10 % over seconds (steal time), and
// one long run per receiver let the drift land on one side of a round's
// ratio. Interleaved, both receivers see the same drift; a round's ratio is
// that of their summed rates. The calibration round (no-op against a
// second no-op program, part 2's first row) shows what is left of the
// noise.
// sendFunc sends n frames into the receiving veth as fast as it can and
// returns the wall time.
type sendFunc func(n uint32) (time.Duration, error)

// plainSend is the generator's: n copies of one frame.
func plainSend(g *generator) sendFunc {
	return func(n uint32) (time.Duration, error) {
		// Bound: 20 s whatever n is (1 Mpps would already be a slow box).
		return g.send(n, 20*time.Second+time.Duration(n)*time.Microsecond)
	}
}

// spraySend is the sprayer's: frame i from peer i mod (mask+1), at the
// sprayer's full speed.
func spraySend(g *generator, sp *sprayer, mask uint64) sendFunc {
	return func(n uint32) (time.Duration, error) {
		_, wall, err := sp.send(g, uint64(n), 0, mask)
		return wall, err
	}
}

func measureLineRate(g *generator, send sendFunc, ref, subject receiver, n uint32, rounds, interleave int, logf func(string, ...any)) (*lineRate, error) {
	if interleave < 1 {
		interleave = 1
	}
	per := n / uint32(interleave)
	lr := &lineRate{countedOK: true, overhead: g.overhead, slices: interleave}
	var ratios, pn, pf []float64
	for round := 0; round < rounds; round++ {
		rn := rateRun{recv: ref.name(), counted: -1}
		rs := rateRun{recv: subject.name()}
		for sl := 0; sl < interleave; sl++ {
			order := []receiver{ref, subject}
			if (round*interleave+sl)%2 == 1 {
				order = []receiver{subject, ref}
			}
			for _, rc := range order {
				r, err := measureRun(g, send, rc, per)
				if err != nil {
					return nil, err
				}
				if r.delivered != r.sent {
					return nil, fmt.Errorf("%s: the receiving veth got %d frames, the generator sent %d", r.recv, r.delivered, r.sent)
				}
				sum := &rn
				if rc == subject {
					sum = &rs
					if r.counted >= 0 && r.counted != int64(r.sent) {
						lr.countedOK = false
						return nil, fmt.Errorf("%w: sent %d, flowaudit counted %d", errCountMismatch, r.sent, r.counted)
					}
					if r.counted >= 0 {
						rs.counted += r.counted
					} else {
						rs.counted = -1
					}
				}
				sum.sent += r.sent
				sum.delivered += r.delivered
				sum.rxDropped += r.rxDropped
				sum.wall += r.wall
			}
		}
		for _, r := range []rateRun{rn, rs} {
			logf("  round %d %-24s sent %d delivered %d counted %d  %.3f Mpps", round+1, r.recv, r.sent, r.delivered, r.counted, r.pps()/1e6)
		}
		lr.noop, lr.fa = append(lr.noop, rn), append(lr.fa, rs)
		ratios = append(ratios, rs.pps()/rn.pps())
		pn, pf = append(pn, rn.pps()), append(pf, rs.pps())
	}
	lr.ratio, lr.noopPPS, lr.faPPS = medianF(ratios), medianF(pn), medianF(pf)
	lr.minRatio, lr.rounds = slices.Min(ratios), len(ratios)
	return lr, nil
}

var errCountMismatch = errors.New("flowaudit's count differs from the packets sent")
