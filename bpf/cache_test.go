package bpf

import (
	"errors"
	"net/netip"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// onOneCPU runs the test's programs on CPU 0 only, so that every
// BPF_PROG_TEST_RUN uses the same flow_cache slots.
func onOneCPU(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	var one unix.CPUSet
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.SchedSetaffinity(0, &all) //nolint:errcheck
		runtime.UnlockOSThread()
	})
}

// openSocketsKnown opens a collector as a live recording runs it (the
// socket set complete), with no local service yet; closed at the test's end.
func openSocketsKnown(t *testing.T) *Collector {
	t.Helper()
	c, err := Open(Options{SocketsKnown: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetLocalPorts(nil); err != nil {
		t.Fatal(err)
	}
	return c
}

// runN runs s through its hook n times.
func runN(t *testing.T, c *Collector, s sent, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := c.Run(s.hook, s.frame); err != nil {
			t.Fatal(err)
		}
	}
}

// taggedSlots returns the slots of the cache that belong to a generation.
func taggedSlots(c *Collector) map[int]flowauditFlowCacheSlot {
	got := map[int]flowauditFlowCacheSlot{}
	for i := 0; i < c.cache.slots; i++ {
		if s := *c.cache.slot(i); s.Tag != 0 {
			got[i] = s
		}
	}
	return got
}

func udpFrom(tb testing.TB, src netip.Addr, w wire) []byte {
	f := udp4(tb, w, 41000, 514)
	off := 14 + 12 // source address
	if w == out {
		off = 14 + 16 // destination address: the peer
	}
	copy(f[off:], src.AsSlice())
	return f
}

// TestFlowCacheExact: trains of one flow are counted in the CPU's slot,
// a different flow flushes the slot to flows_N, a move collects what is
// pending, and evidence-carrying packets never go through a slot: every
// count comes out exact, and the slots are free after each read.
func TestFlowCacheExact(t *testing.T) {
	testenv.RequireBPF(t)
	onOneCPU(t)
	c := openSocketsKnown(t)
	peerA, peerB := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	a, b := udpFrom(t, peerA, in), udpFrom(t, peerB, in)
	aOut := udpFrom(t, peerA, out)
	run := func(h Hook, f []byte, n int) { t.Helper(); runN(t, c, sent{h, f}, n) }
	// a×5: the first takes the slot, four wait in it.
	run(HookXDP, a, 5)
	slots := taggedSlots(c)
	if s, ok := slots[0]; len(slots) != 1 || !ok || s.Packets != 4 || s.Bytes != 4*uint64(len(a)) || netip.AddrFrom16(s.Key.Peer).Unmap() != peerA {
		t.Fatalf("after five packets of one flow on CPU 0: slots %+v, want slot 0 holding 4 of %v", slots, peerA)
	}
	// b×3 flushes a's four; a×2 flushes b's two; one of a's waits.
	run(HookXDP, b, 3)
	run(HookXDP, a, 2)
	// Egress: slot 1, its own counts.
	run(HookTCEgress, aOut, 3)
	slots = taggedSlots(c)
	if len(slots) != 2 || slots[0].Packets != 1 || slots[1].Packets != 2 {
		t.Fatalf("slots %+v, want slot 0 holding 1 packet, slot 1 holding 2", slots)
	}
	// Three SYNs carry evidence: counted in flows_N directly.
	syn := synFrom(t, peerB, 40000, 443)
	run(HookXDP, syn, 3)
	if s := taggedSlots(c)[0]; netip.AddrFrom16(s.Key.Peer).Unmap() != peerA || s.Packets != 1 {
		t.Fatalf("a SYN took or changed the slot: %+v", s)
	}
	check := func(stage string, want map[netip.Addr][2]uint64) {
		t.Helper()
		r, err := c.ReadMaps()
		if err != nil {
			t.Fatal(err)
		}
		if n := taggedSlots(c); len(n) != 0 {
			t.Errorf("%s: slots still tagged after the read: %+v", stage, n)
		}
		got := map[netip.Addr][2]uint64{}
		for _, f := range r.Flows {
			p := got[f.Peer]
			got[f.Peer] = [2]uint64{p[0] + f.PacketsIn, p[1] + f.PacketsOut}
			if f.Proto == 6 && f.Evidence.SynIn != f.PacketsIn {
				t.Errorf("%s: %v: %d SYNs counted as evidence, %d packets", stage, f.Peer, f.Evidence.SynIn, f.PacketsIn)
			}
			if f.Proto == 17 && f.BytesIn+f.BytesOut != (f.PacketsIn+f.PacketsOut)*uint64(len(a)) {
				t.Errorf("%s: %v: %d bytes for %d packets of %d bytes", stage, f.Peer, f.BytesIn+f.BytesOut, f.Packets(), len(a))
			}
		}
		for p, w := range want {
			if got[p] != w {
				t.Errorf("%s: %v: packets in/out %v, want %v", stage, p, got[p], w)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: peers %v, want %v", stage, got, want)
		}
	}
	check("first read", map[netip.Addr][2]uint64{peerA: {7, 3}, peerB: {6, 0}})

	// A move in the middle of a train: what waits in the slot goes with
	// the old generation, the rest with the new one; the read adds up.
	run(HookXDP, a, 4)
	res, err := c.Move()
	if err != nil || res.Flows != 1 {
		t.Fatalf("move: %+v, %v", res, err)
	}
	run(HookXDP, a, 2)
	check("second read", map[netip.Addr][2]uint64{peerA: {13, 3}, peerB: {6, 0}})

	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	check("after Reset", map[netip.Addr][2]uint64{})
}

// TestFlowCacheLostIsAnError: a slot whose flow has no flows_N entry (the
// invariant broken) stops the move with errCacheLost instead of dropping
// its packets silently.
func TestFlowCacheLostIsAnError(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := c.cache.slot(0)
	s.Key.Proto = uint8(layers.IPProtocolUDP)
	s.Key.Port = 514
	s.Packets, s.Bytes = 5, 300
	s.Tag = c.gen + 1
	if _, err := c.Move(); !errors.Is(err, errCacheLost) {
		t.Fatalf("move: %v, want %v", err, errCacheLost)
	}
}

// TestFlowCacheOff: with NoFlowCache (and for the benchmark-only map
// types) no slot is ever taken, and the counts are the same.
func TestFlowCacheOff(t *testing.T) {
	testenv.RequireBPF(t)
	for _, opts := range []Options{{NoFlowCache: true}, {FlowMapType: ebpf.LRUHash}} {
		c, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		a := udpFrom(t, netip.MustParseAddr("198.51.100.1"), in)
		for i := 0; i < 5; i++ {
			if _, err := c.Run(HookXDP, a); err != nil {
				t.Fatal(err)
			}
		}
		if c.cache != nil {
			t.Errorf("%+v: the cache is mapped", opts)
		}
		var s flowauditFlowCacheSlot
		for i := uint32(0); i < c.objs.FlowCache.MaxEntries(); i++ {
			if err := c.objs.FlowCache.Lookup(i, &s); err != nil || s.Tag != 0 || s.Packets != 0 {
				t.Errorf("%+v: slot %d %+v (%v)", opts, i, s, err)
			}
		}
		r, err := c.ReadMaps()
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Flows) != 1 || r.Flows[0].PacketsIn != 5 {
			t.Errorf("%+v: flows %+v, want one with 5 packets", opts, r.Flows)
		}
		c.Close()
	}
}
