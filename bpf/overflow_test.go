package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// synFrom is a SYN from src to local4:port, as a spoofed flood sends them.
func synFrom(tb testing.TB, src netip.Addr, sport, port uint16) []byte {
	ip := ip4(in, layers.IPProtocolTCP)
	ip.SrcIP = src.AsSlice()
	return serialize(tb, eth(in, layers.EthernetTypeIPv4), ip, tcp(sport, port, fSYN))
}

// TestOverflowCountsWithoutPeer: once the flow map is full, packets are
// still counted per service with their evidence, and the kernel's peer
// sketch is bit for bit the one snapshot.PeerSketch computes.
func TestOverflowCountsWithoutPeer(t *testing.T) {
	testenv.RequireBPF(t)
	const capacity = 8
	c, err := Open(Options{FlowEntries: capacity, EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var want snapshot.PeerSketch
	const peers = 300
	for i := 0; i < peers; i++ {
		src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		for _, h := range []Hook{HookXDP, HookTCIngress} {
			if _, err := c.Run(h, synFrom(t, src, uint16(40000+i), 22)); err != nil {
				t.Fatal(err)
			}
		}
		if i >= capacity {
			want.Add(src)
		}
	}
	// An IPv6 peer and another service overflow too.
	if _, err := c.Run(HookXDP, udp6(t, in, 40000, 1514)); err != nil {
		t.Fatal(err)
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Flows) != capacity {
		t.Errorf("%d per-peer flows, want the map's %d", len(r.Flows), capacity)
	}
	st := r.Stats
	if st.FlowInsertFailed != 2*(peers-capacity)+1 || st.OverflowInsertFailed != 0 || st.Lossy() || !st.PeersLost() {
		t.Errorf("stats %+v: want %d failed inserts, none lost", st, 2*(peers-capacity)+1)
	}
	if len(r.Overflow) != 2 {
		t.Fatalf("overflow entries: %+v", r.Overflow)
	}
	var tcp22, udp1514 *snapshot.Flow
	for i := range r.Overflow {
		switch o := &r.Overflow[i]; {
		case o.Proto == snapshot.TCP && o.Port == 22:
			tcp22 = o
		case o.Proto == snapshot.UDP && o.Port == 1514:
			udp1514 = o
		}
	}
	if tcp22 == nil || udp1514 == nil {
		t.Fatalf("overflow entries: %+v", r.Overflow)
	}
	if tcp22.Peer.IsValid() || tcp22.Direction != snapshot.Inbound || tcp22.PacketsIn != 2*(peers-capacity) ||
		tcp22.Evidence.SynIn != 2*(peers-capacity) || tcp22.FirstSeen.IsZero() || tcp22.LastSeen.Before(tcp22.FirstSeen) {
		t.Errorf("tcp/22 overflow entry: %+v", *tcp22)
	}
	if *tcp22.PeerSketch != want {
		t.Errorf("kernel sketch differs from snapshot.PeerSketch:\nkernel %v\ngo     %v", *tcp22.PeerSketch, want)
	}
	if est := tcp22.Peers; !withinSketchError(est, peers-capacity) {
		t.Errorf("estimated %d distinct peers, want %d within the sketch's 3 sigma", est, peers-capacity)
	}
	var one snapshot.PeerSketch
	one.Add(peer6)
	if udp1514.PacketsIn != 1 || *udp1514.PeerSketch != one || udp1514.Peers != 1 {
		t.Errorf("udp/1514 overflow entry: %+v", *udp1514)
	}
}

// TestOverflowMapFull: when the overflow map is full as well, the packet is
// lost and counted as such.
func TestOverflowMapFull(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{FlowEntries: 1, OverflowEntries: 1, EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for port := uint16(1); port <= 3; port++ {
		if _, err := c.Run(HookXDP, synFrom(t, peer4, 40000, port)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Flows) != 1 || len(r.Overflow) != 1 || r.Stats.FlowInsertFailed != 2 || r.Stats.OverflowInsertFailed != 1 || !r.Stats.Lossy() {
		t.Errorf("flows %d overflow %d stats %+v", len(r.Flows), len(r.Overflow), r.Stats)
	}
}

// TestMoveEmptiesTheKernel: a move leaves the kernel generations empty
// and the counts in the collector; later packets of the same flows add up.
func TestMoveEmptiesTheKernel(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{FlowEntries: 4, EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := func(n int) {
		for i := 0; i < n; i++ {
			src := netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
			if _, err := c.Run(HookXDP, synFrom(t, src, 40000, 443)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Ten rounds of four peers: never more than the map holds between
	// two moves, so nothing overflows however long it runs.
	for round := 0; round < 10; round++ {
		send(4)
		res, err := c.Move()
		if err != nil {
			t.Fatal(err)
		}
		if res.Flows != 4 || res.Overflow != 0 {
			t.Fatalf("round %d: moved %+v", round, res)
		}
		for g, m := range c.flowMaps {
			if n, err := countEntries(m); err != nil || n != 0 {
				t.Fatalf("round %d: generation %d holds %d entries after the move (%v)", round, g, n, err)
			}
		}
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Flows) != 4 || r.Stats.FlowInsertFailed != 0 || r.Stats.Moves != 11 || r.Stats.FlowEntries != 4 {
		t.Fatalf("flows %d stats %+v", len(r.Flows), r.Stats)
	}
	for _, f := range r.Flows {
		if f.PacketsIn != 10 || f.Evidence.SynIn != 10 {
			t.Errorf("%s: %d packets, %d SYNs over ten moves, want 10", f.Peer, f.PacketsIn, f.Evidence.SynIn)
		}
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if r, err := c.ReadMaps(); err != nil || len(r.Flows) != 0 || r.Stats.Moves != 1 {
		t.Errorf("after Reset: %d flows, stats %+v, %v", len(r.Flows), r.Stats, err)
	}
}

// TestWindowForgetsOldTraffic: with a sliding window, what was counted
// before the window no longer shows, nor do its statistics.
func TestWindowForgetsOldTraffic(t *testing.T) {
	testenv.RequireBPF(t)
	const window = 1200 * time.Millisecond // buckets of 200 ms
	c, err := Open(Options{Window: window, EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	old, recent := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	for i := 0; i < 3; i++ {
		if _, err := c.Run(HookXDP, synFrom(t, old, 40000, 22)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	// Moves every 50 ms for longer than window + one bucket.
	for time.Since(start) < window+400*time.Millisecond {
		if _, err := c.Move(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := c.Run(HookXDP, synFrom(t, recent, 40000, 22)); err != nil {
		t.Fatal(err)
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Flows) != 1 || r.Flows[0].Peer != recent || r.Flows[0].PacketsIn != 1 {
		t.Errorf("window holds %+v, want only the recent peer", r.Flows)
	}
	if r.Stats.PacketsIngress != 1 {
		t.Errorf("window statistics: %d packets in, want 1", r.Stats.PacketsIngress)
	}
	if span := time.Since(r.Since); r.Since.IsZero() || span < window || span > window+window/windowBuckets+300*time.Millisecond {
		t.Errorf("window covers %s, want about %s", span, window)
	}
}
