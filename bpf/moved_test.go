package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestOnMoveSeesEveryPacketOnce: Options.OnMove gets every entry a move
// drains — per-peer flows with their peer, overflow entries without — and
// every packet exactly once across moves, ReadMaps' own move included.
func TestOnMoveSeesEveryPacketOnce(t *testing.T) {
	testenv.RequireBPF(t)
	const capacity = 16
	var moved []MovedFlow
	c, err := Open(Options{FlowEntries: capacity, EphemeralPorts: [2]uint16{32768, 60999},
		OnMove: func(m *MovedFlow) { moved = append(moved, *m) }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := func(peers, from int) {
		for i := from; i < from+peers; i++ {
			src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
			if _, err := c.Run(HookXDP, synFrom(t, src, uint16(40000+i%20000), 22)); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(100, 0) // 16 with their peer, 84 in the overflow map
	if _, err := c.Move(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Move(); err != nil { // nothing new: nothing reported
		t.Fatal(err)
	}
	send(10, 1000) // the map was emptied: all 10 with their peer
	if _, err := c.ReadMaps(); err != nil {
		t.Fatal(err)
	}
	var withPeer, without, packets, syns uint64
	peers := map[netip.Addr]bool{}
	for _, m := range moved {
		if m.Direction != snapshot.Inbound || m.Proto != snapshot.TCP || m.Port != 22 || m.Fragment || m.PacketsOut != 0 {
			t.Errorf("moved entry %+v", m)
		}
		if m.Peer.IsValid() {
			withPeer += m.PacketsIn
			if peers[m.Peer] {
				t.Errorf("peer %s reported twice", m.Peer)
			}
			peers[m.Peer] = true
		} else {
			without += m.PacketsIn
		}
		packets += m.PacketsIn
		syns += m.Evidence.SynIn
		if m.BytesIn != m.PacketsIn*uint64(len(synFrom(t, netip.MustParseAddr("198.18.0.1"), 40000, 22))) {
			t.Errorf("%+v: bytes do not match the frames", m)
		}
	}
	if packets != 110 || syns != 110 || withPeer != capacity+10 || without != 100-capacity {
		t.Errorf("moved %d packets (%d SYNs): %d with their peer, %d without; want 110: %d and %d",
			packets, syns, withPeer, without, capacity+10, 100-capacity)
	}
}

// TestSocketRefreshFailuresCounted: a periodic refresh that fails is
// counted (watch exports it as flowaudit_socket_refresh_errors_total).
func TestSocketRefreshFailuresCounted(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.StartSocketRefresh(20 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	time.Sleep(100 * time.Millisecond)
	if n := r.Failures(); n != 0 {
		t.Fatalf("%d failures while refreshes work", n)
	}
	// The socket set can no longer be loaded into the kernel.
	if err := c.objs.LocalPorts.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.Failures() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := r.Failures(); n < 2 {
		t.Errorf("%d failures counted after the map was closed, want refreshes to keep failing", n)
	}
}
