package bpf

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// TestSortedFlowsMatchSimplePath: ReadMaps' conversion (keys ordered
// first, each flow written once at its place, on two goroutines) gives
// exactly the flows of the simple path — convert every entry, then
// snapshot.SortFlows — on random accumulators: several interfaces, one
// with no attachment name, IPv4 and IPv6 peers, both directions and
// flags, folded prefix and "other peers" entries with their sketches;
// sizes on both sides of the two-goroutine threshold.
func TestSortedFlowsMatchSimplePath(t *testing.T) {
	c := &Collector{boot: clock{tick: 4 * time.Millisecond, j0: 1000, wall0: time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)}}
	names := map[uint32]string{2: "eth0", 3: "eth1", 7: "wan"}
	rng := rand.New(rand.NewPCG(16, 1))
	for _, n := range []int{0, 1, 50, 3000, 70_000} {
		a := newAccumulator()
		for i := 0; i < n; i++ {
			k := flowauditFlowKey{
				Ifindex: []uint32{2, 3, 7, 9}[rng.IntN(4)],
				// A direction and any FLOW_F_* flags.
				DirFlags: uint8(rng.IntN(3)) | uint8(rng.IntN(4))<<2,
				Proto:    []uint8{6, 17, 1, 58}[rng.IntN(4)],
				Port:     uint16(rng.IntN(6)),
			}
			var peer netip.Addr
			if rng.IntN(3) == 0 {
				peer = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(256)), 14: byte(rng.IntN(256)), 6: byte(rng.IntN(4))})
			} else {
				peer = netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(256)), byte(rng.IntN(256))})
			}
			k.Peer = peer.As16() // IPv4 mapped, as the kernel stores it
			v := &accValue{packetsIn: uint64(rng.IntN(9) + 1), bytesIn: uint64(rng.IntN(9999)),
				packetsOut: uint64(rng.IntN(3)), first: uint64(1000 + rng.IntN(500)), last: uint64(1500 + rng.IntN(500)),
				ev: snapshot.Evidence{SynIn: uint64(rng.IntN(2)), RstOut: uint64(rng.IntN(2))}}
			switch rng.IntN(20) {
			case 0:
				a.mergeFolded(k, foldPrefix, v, nil)
			case 1:
				a.mergeFolded(k, foldOther, v, nil)
			default:
				a.addFlow(k, v)
			}
		}
		got := c.sortedFlows(a, names)
		want := make([]snapshot.Flow, 0, a.flows.len())
		ifn := map[uint32]string{}
		for ix := range map[uint32]bool{2: true, 3: true, 7: true, 9: true} {
			ifn[ix] = ifaceName(ix, names)
		}
		for i := range a.flows.ents {
			var f snapshot.Flow
			c.putFlow(&f, a, &a.flows.ents[i], ifn)
			want = append(want, f)
		}
		snapshot.SortFlows(want)
		if len(got) != len(want) {
			t.Fatalf("%d entries: %d flows, simple path %d", n, len(got), len(want))
		}
		for i := range want {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Fatalf("%d entries: flow %d differs:\n got %+v\nwant %+v", n, i, got[i], want[i])
			}
		}
		if n == 70_000 && (got[0].Interface != "eth0" || got[len(got)-1].Interface != "wan") {
			t.Errorf("first flow on %s, last on %s", got[0].Interface, got[len(got)-1].Interface)
		}
	}
}
