package main

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// The sprayer sends frame n from ((n & mask) + 1) · 2654435761 mod 2³²,
// touches nothing else, counts what it sent, and stops at its limit: the
// peers part 6 claims are the peers the frames carry.
func TestSprayerSourceAddresses(t *testing.T) {
	testenv.RequireBPF(t)
	sp, err := newSprayer()
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	frame := generatorFrame(macPeer, macLocal, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 40000, 9000)
	const mask, limit = 3, 6
	if err := sp.state.Put(uint32(0), sprayState{Limit: limit, Mask: mask}); err != nil {
		t.Fatal(err)
	}
	seen := map[[4]byte]bool{}
	for n := uint64(0); n < limit+2; n++ {
		out := make([]byte, len(frame))
		ret, err := sp.prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
		if err != nil {
			t.Fatal(err)
		}
		if n >= limit {
			if ret != 1 {
				t.Errorf("frame %d beyond the limit: verdict %d, want XDP_DROP", n, ret)
			}
			continue
		}
		if ret != 3 {
			t.Fatalf("frame %d: verdict %d, want XDP_TX", n, ret)
		}
		var want [4]byte
		binary.LittleEndian.PutUint32(want[:], uint32(((n&mask)+1)*2654435761))
		if got := [4]byte(out[26:30]); got != want {
			t.Errorf("frame %d from %v, want %v", n, netip.AddrFrom4(got), netip.AddrFrom4(want))
		}
		seen[want] = true
		copy(out[26:30], frame[26:30])
		if string(out) != string(frame) {
			t.Errorf("frame %d: bytes other than the source address changed", n)
		}
	}
	if len(seen) != mask+1 {
		t.Errorf("%d distinct sources, want %d", len(seen), mask+1)
	}
	var st sprayState
	if err := sp.state.Lookup(uint32(0), &st); err != nil || st.Sent != limit {
		t.Errorf("sent %d, want %d (%v)", st.Sent, limit, err)
	}
}

// summarize counts exact peers one each and folded or peerless entries by
// their estimate, and packets of both kinds.
func TestSummarizeSnapshot(t *testing.T) {
	var sk snapshot.PeerSketch
	for i := 0; i < 1000; i++ {
		sk.Add(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	now := time.Now()
	s := &snapshot.Snapshot{Start: now.Add(-time.Minute), End: now,
		Flows: []snapshot.Flow{
			{Proto: snapshot.UDP, Port: 9000, Peer: netip.MustParseAddr("192.0.2.7"), PacketsIn: 5},
			{Proto: snapshot.UDP, Port: 9000, PeerPrefix: netip.MustParsePrefix("0.0.0.0/0"), PeerSketch: &sk, Peers: sk.Estimate(), PacketsIn: 1000},
		},
		Overflow: []snapshot.Flow{{Proto: snapshot.UDP, Port: 9000, PeerSketch: &sk, Peers: 7, PacketsIn: 9}},
	}
	s.Stats.PacketsIngress, s.Stats.FlowInsertFailed = 1014, 9
	got := summarize(s)
	if got.flows != 2 || got.folded != 1 || got.overflow != 1 || got.packets != 1014 || got.datapath != 1014 || got.peerless != 9 ||
		got.peers != float64(1+sk.Estimate()+7) || got.window != time.Minute {
		t.Errorf("summary %+v", got)
	}
}
