package snapshot

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestRadixSortMatchesComparison: the radix sort gives compareKeys' order,
// equal keys in their given order, on keys that vary in few digits (many
// ties), in many, and in a mix of families, directions and prefix lengths;
// it declines prefix lengths beyond a byte and then leaves the keys untouched.
func TestRadixSortMatchesComparison(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 16))
	gens := map[string]func(i int) flowKey{
		"ties": func(i int) flowKey {
			return flowKey{w: uint64(r.IntN(3)) << 40, lo: 0xffff_0000_0000 | uint64(r.IntN(5))}
		},
		"ipv4": func(i int) flowKey {
			return flowKey{w: uint64(r.IntN(2))<<40 | 6<<32 | uint64(r.IntN(1<<16))<<16 | 1, lo: 0xffff_0000_0000 | uint64(r.Uint32())}
		},
		"mixed": func(i int) flowKey {
			k := flowKey{w: uint64(r.IntN(4))<<48 | uint64(r.IntN(2))<<40 | uint64(r.IntN(256))<<32 | uint64(r.IntN(3))<<16 | uint64(r.IntN(16))}
			if r.IntN(2) == 0 {
				k.hi, k.lo = 0x2000_0000_0000_0000|uint64(r.IntN(4)), uint64(r.IntN(1000))
			} else {
				k.lo = 0xffff_0000_0000 | uint64(r.IntN(1<<16))
			}
			k.bits = int32(r.IntN(2) * (24 + 8*r.IntN(4)))
			return k
		},
	}
	for name, gen := range gens {
		for _, n := range []int{0, 1, 2, 100, 70_000} {
			keys := make([]flowKey, n)
			for i := range keys {
				keys[i] = gen(i)
				keys[i].idx = int32(i)
			}
			want := slices.Clone(keys)
			slices.SortStableFunc(want, compareKeys)
			got := slices.Clone(keys)
			if !radixSort(got) {
				t.Fatalf("%s, %d keys: radix sort declined", name, n)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s, %d keys: radix order differs from the stable comparison sort", name, n)
			}
		}
	}

	// All 25 digits vary: 25 passes, still the comparison sort's order.
	wide := make([]flowKey, 5000)
	for i := range wide {
		wide[i] = flowKey{w: r.Uint64(), hi: r.Uint64(), lo: r.Uint64(), bits: int32(r.IntN(129)), idx: int32(i)}
	}
	want := slices.Clone(wide)
	slices.SortStableFunc(want, compareKeys)
	if !radixSort(wide) || !slices.Equal(wide, want) {
		t.Fatal("keys varying in every digit: radix order differs from the stable comparison sort")
	}
	bad := []flowKey{{bits: 300}, {bits: 1}}
	if radixSort(bad) || bad[0].bits != 300 {
		t.Fatal("prefix length 300: want declined and untouched")
	}
}

// TestSortKeysTiesByPosition: SortKeys breaks ties by position whether
// the keys come in position order (radix) or not (comparison).
func TestSortKeysTiesByPosition(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 16))
	for _, shuffle := range []bool{false, true} {
		keys := make([]OrderKey, 100_000)
		for i := range keys {
			keys[i] = OrderKey{flowKey{w: uint64(r.IntN(4)), lo: uint64(r.IntN(50)), idx: int32(i)}}
		}
		if shuffle {
			r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		}
		SortKeys(keys)
		ok := slices.IsSortedFunc(keys, func(x, y OrderKey) int {
			if c := compareKeys(x.k, y.k); c != 0 {
				return c
			}
			return cmp.Compare(x.k.idx, y.k.idx)
		})
		if !ok {
			t.Fatalf("shuffled=%v: not in (key, position) order", shuffle)
		}
	}
}
