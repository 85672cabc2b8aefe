package snapshot

import "github.com/flowaudit/flowaudit/internal/hugemem"

// MakeFlows returns an empty flow slice with room for n flows. A large
// one is backed by transparent huge pages where the kernel allows it
// (internal/hugemem): filling a million flows (~260 MiB) then costs ~130
// page faults instead of ~65 000.
func MakeFlows(n int) []Flow { return hugemem.Make[Flow](n) }

// growPiece is how many flows growFlows copies per call to copy (4 MiB).
const growPiece = 1 << 14

// growFlows returns a slice (MakeFlows) with room for n flows holding s's.
// It copies a piece at a time: copying gigabytes of flows in one call is a
// single runtime operation that cannot be preempted, and a garbage
// collection starting meanwhile keeps every other CPU spinning until it can
// scan this goroutine's stack — 7 of the 18 CPU seconds of loading a
// 10 M-flow snapshot went to that spinning (BENCHMARKS.md, part 4).
func growFlows(s []Flow, n int) []Flow {
	out := MakeFlows(n)[:len(s)]
	for i := 0; i < len(s); i += growPiece {
		copy(out[i:min(i+growPiece, len(s))], s[i:])
	}
	return out
}
