package audit

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// refObs is the straightforward reference for an obs's exact peers: one
// map, each peer's packets and bytes summed.
type refObs map[netip.Addr]tally

func (r refObs) add(a netip.Addr, t tally) {
	q := r[a]
	q.packets += t.packets
	q.bytes += t.bytes
	r[a] = q
}

// randomPeers draws from a small pool so that addresses repeat: IPv4,
// IPv6, IPv4-mapped IPv6 (distinct from its IPv4) and zoned IPv6
// (distinct from the unzoned one).
func randomPeers(rng *rand.Rand) []netip.Addr {
	var pool []netip.Addr
	for i := range 40 {
		v4 := netip.AddrFrom4([4]byte{10, 0, byte(i / 8), byte(i)})
		pool = append(pool, v4, netip.AddrFrom16(v4.As16()))
		v6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)})
		pool = append(pool, v6)
		if i%5 == 0 {
			pool = append(pool, v6.WithZone("eth0"), v6.WithZone("eth1"))
		}
	}
	rng.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	return pool[:1+rng.IntN(len(pool))]
}

// flowsOf makes n exact flows toward peers of pool, in one of the orders
// the engine sees: sorted runs (one per service) with repeats, or random.
func flowsOf(rng *rand.Rand, pool []netip.Addr, n int) []snapshot.Flow {
	fs := make([]snapshot.Flow, n)
	for i := range fs {
		fs[i] = snapshot.Flow{
			Direction: snapshot.Inbound, Proto: snapshot.TCP, Port: 443,
			Peer:      pool[rng.IntN(len(pool))],
			PacketsIn: uint64(rng.IntN(5)), PacketsOut: uint64(rng.IntN(5)),
			BytesIn: uint64(rng.IntN(1000)), BytesOut: uint64(rng.IntN(1000)),
		}
	}
	if rng.IntN(3) > 0 {
		// Sorted runs: cut in up to four pieces, each sorted by peer.
		cut := []int{0}
		for range rng.IntN(4) {
			cut = append(cut, rng.IntN(n+1))
		}
		cut = append(cut, n)
		slices.Sort(cut)
		for i := 1; i < len(cut); i++ {
			slices.SortStableFunc(fs[cut[i-1]:cut[i]], func(x, y snapshot.Flow) int { return x.Peer.Compare(y.Peer) })
		}
	}
	return fs
}

// TestPeerListMatchesMap: the peer lists of obs, merged obs (several
// parts, a peer in more than one) and mergeObs targets agree with a
// map-based reference on distinct peers, per-peer sums, the peer count
// (with and without folded prefixes) and the top peers.
func TestPeerListMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 2026))
	for iter := range 500 {
		pool := randomPeers(rng)
		nparts := 1 + rng.IntN(4)
		parts := make([]*obs, nparts)
		refs := make([]refObs, nparts)
		for p := range parts {
			parts[p], refs[p] = newObs(), refObs{}
			fs := flowsOf(rng, pool, rng.IntN(60))
			if rng.IntN(2) == 0 {
				parts[p].peers.reserve(len(fs))
			}
			for i := range fs {
				parts[p].add(&fs[i])
				refs[p].add(fs[i].Peer, tally{fs[i].Packets(), fs[i].Bytes()})
			}
		}
		// Each part on its own, and normalised twice (idempotent).
		for p := range parts {
			checkPeers(t, iter, "part", parts[p], refs[p])
			checkPeers(t, iter, "part again", parts[p], refs[p])
		}
		// The parts together, as merged shares them.
		all := refObs{}
		for _, r := range refs {
			for a, q := range r {
				all.add(a, q)
			}
		}
		m := merged(parts...)
		checkPeers(t, iter, "merged", m, all)
		checkPeers(t, iter, "merged of merged", merged(m, newObs()), all)
		// Copied into an obs with peers of its own, out of order.
		dst, dref := newObs(), refObs{}
		fs := flowsOf(rng, pool, rng.IntN(20))
		for i := range fs {
			dst.add(&fs[i])
			dref.add(fs[i].Peer, tally{fs[i].Packets(), fs[i].Bytes()})
		}
		mergeObs(dst, m)
		for a, q := range all {
			dref.add(a, q)
		}
		checkPeers(t, iter, "mergeObs", dst, dref)
		// A folded prefix makes the count an estimate over a sketch of
		// every exact peer and the prefix's.
		pfx := snapshot.Flow{Direction: snapshot.Inbound, Proto: snapshot.TCP, Port: 443,
			PeerPrefix: netip.MustParsePrefix("192.0.2.0/24"), Peers: 3, PacketsIn: 1}
		pfx.PeerSketch = &snapshot.PeerSketch{}
		for i := range 3 {
			pfx.PeerSketch.Add(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
		}
		dst.add(&pfx)
		var sk snapshot.PeerSketch
		sk.Merge(pfx.PeerSketch)
		for a := range dref {
			sk.Add(a)
		}
		n, est := dst.peerCount()
		if want := max(len(dref), int(sk.Estimate())); n != want || !est {
			t.Fatalf("iter %d: peerCount with a prefix = %d, %v; want %d, true", iter, n, est, want)
		}
	}
}

// checkPeers compares o's exact peers with ref.
func checkPeers(t *testing.T, iter int, what string, o *obs, ref refObs) {
	t.Helper()
	if n := o.exactPeers(); n != len(ref) {
		t.Fatalf("iter %d %s: exactPeers %d, want %d", iter, what, n, len(ref))
	}
	if n, est := o.peerCount(); n != len(ref) || est {
		t.Fatalf("iter %d %s: peerCount %d, %v; want %d, false", iter, what, n, est, len(ref))
	}
	seen := map[netip.Addr]bool{}
	o.forEachPeer(func(a netip.Addr, q tally) {
		if seen[a] {
			t.Fatalf("iter %d %s: peer %s walked twice", iter, what, a)
		}
		seen[a] = true
		if want, ok := ref[a]; !ok || q != want {
			t.Fatalf("iter %d %s: peer %s tally %+v, want %+v (known %v)", iter, what, a, q, want, ok)
		}
	})
	if len(seen) != len(ref) {
		t.Fatalf("iter %d %s: walked %d peers, want %d", iter, what, len(seen), len(ref))
	}
	var all []PeerCount
	for a, q := range ref {
		all = append(all, PeerCount{Addr: a, Packets: q.packets, Bytes: q.bytes})
	}
	sortPeerCounts(all)
	for _, n := range []int{1, 5, len(ref) + 1} {
		got := o.evidence(n).TopPeers
		want := all[:min(n, len(all))]
		if len(got) != len(want) || (len(got) > 0 && !reflect.DeepEqual(got, want)) {
			t.Fatalf("iter %d %s: top %d peers %v, want %v", iter, what, n, got, want)
		}
	}
}
