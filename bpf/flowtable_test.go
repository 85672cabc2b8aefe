package bpf

import (
	"maps"
	"math/rand/v2"
	"testing"
)

// TestFlowTableMatchesMap: random additions (looked up, or appended
// unindexed when new) and re-keyings (as folding
// does them: removed entries merged into keys the predicate skips) leave a
// flowTable with the same contents as a plain Go map given the same
// operations, and its index consistent.
func TestFlowTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 16))
	for round := 0; round < 200; round++ {
		tab := newFlowTable()
		if round%2 == 1 {
			tab = reserveTable(rng.IntN(300))
		}
		ref := map[flowauditFlowKey]accValue{}
		key := func() flowauditFlowKey {
			return flowauditFlowKey{Port: uint16(rng.IntN(4)), Peer: [16]byte{15: byte(rng.IntN(64))}}
		}
		for op := 0; op < 400; op++ {
			switch rng.IntN(10) {
			case 9: // re-key one port's exact entries to peer 0, level 1
				port := uint16(rng.IntN(4))
				move := func(k flowauditFlowKey) bool { return k.fold() == 0 && k.Port == port }
				folded := func(k flowauditFlowKey) flowauditFlowKey {
					k.Peer = [16]byte{}
					k.setFold(foldPrefix)
					return k
				}
				tab.rekey(move, func(k flowauditFlowKey, v *accValue) { tab.at(folded(k)).add(v) })
				for k, v := range ref {
					if move(k) {
						delete(ref, k)
						cur := ref[folded(k)]
						cur.add(&v)
						ref[folded(k)] = cur
					}
				}
			default:
				k := key()
				v := accValue{packetsIn: uint64(rng.IntN(100) + 1), first: uint64(rng.IntN(50) + 1), last: uint64(rng.IntN(50) + 50)}
				if _, known := ref[k]; !known && rng.IntN(2) == 0 {
					tab.appendNew(k, &v) // indexed by the next lookup
				} else {
					tab.at(k).add(&v)
				}
				cur := ref[k]
				cur.add(&v)
				ref[k] = cur
			}
		}
		if got := maps.Collect(tab.all()); !maps.Equal(got, ref) {
			t.Fatalf("round %d: table has %d entries, map %d; contents differ", round, len(got), len(ref))
		}
		tab.index()
		if tab.len() != len(ref) || len(tab.idx) != len(ref) || tab.indexed != len(ref) {
			t.Fatalf("round %d: %d entries, %d indexed, want %d", round, tab.len(), len(tab.idx), len(ref))
		}
		for i, e := range tab.ents {
			if tab.idx[e.k] != int32(i) {
				t.Fatalf("round %d: entry %d indexed at %d", round, i, tab.idx[e.k])
			}
		}
	}
}
