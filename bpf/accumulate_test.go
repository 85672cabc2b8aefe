package bpf

import (
	"net/netip"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func accKey(peer netip.Addr, port uint16) flowauditFlowKey {
	return flowauditFlowKey{Peer: peer.As16(), Ifindex: 2, Port: port, Proto: uint8(snapshot.TCP), DirFlags: uint8(snapshot.Inbound)}
}

// withinSketchError: a 128-register sketch has a relative standard error
// of 1.04/√128 ≈ 9.2 %; accept three of them.
func withinSketchError(est uint64, n int) bool {
	d := (float64(est) - float64(n)) / float64(n)
	return d >= -0.276 && d <= 0.276
}

func accTotals(a *accumulator) (entries int, packets uint64) {
	for _, v := range a.flows.all() {
		packets += v.packetsIn
	}
	for _, e := range a.overflow {
		packets += e.packetsIn
	}
	return a.size(), packets
}

// TestAccumulatorFoldsBusiestServiceFirst: beyond the budget, the service
// with most peers folds to /24 and /48 prefixes; a small service keeps its
// exact peers; no packet is lost; later peers of the folded service go
// straight to their prefix.
func TestAccumulatorFoldsBusiestServiceFirst(t *testing.T) {
	a := newAccumulator()
	one := &accValue{packetsIn: 1, first: 5, last: 9, ev: snapshot.Evidence{SynIn: 1}}
	// 20 admin peers on tcp/22, 5000 flood peers on tcp/443 in 20 /24s
	// plus 100 IPv6 peers in two /48s.
	for i := 0; i < 20; i++ {
		a.addFlow(accKey(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 22), one)
	}
	for i := 0; i < 5000; i++ {
		a.addFlow(accKey(netip.AddrFrom4([4]byte{198, 18, byte(i % 20), byte(i / 20)}), 443), one)
	}
	for i := 0; i < 100; i++ {
		a.addFlow(accKey(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(i % 2), 15: byte(i)}), 443), one)
	}
	ev := a.enforce(1000)
	if len(ev) != 1 || ev[0].Port != 443 || ev[0].Level != "prefix" || ev[0].Entries != 5100 {
		t.Fatalf("fold events %+v, want tcp/443 folded to prefixes", ev)
	}
	entries, packets := accTotals(a)
	if entries != 20+20+2 || packets != 5120 {
		t.Errorf("%d entries, %d packets; want 42 entries, every packet kept", entries, packets)
	}
	if a.folded != 5100 {
		t.Errorf("folded %d entries, want 5100", a.folded)
	}
	for k, v := range a.flows.all() {
		if k.Port == 22 {
			if k.fold() != foldNone {
				t.Errorf("tcp/22 peer folded: %v", prefixOf(&k))
			}
			continue
		}
		p := prefixOf(&k)
		want := 24
		if p.Addr().Is6() {
			want = 48
		}
		if k.fold() != foldPrefix || p.Bits() != want || p != p.Masked() {
			t.Errorf("tcp/443 entry %v", p)
		}
		if sk := a.sketches[k]; p.Addr().Is4() && !withinSketchError(sk.Estimate(), 250) {
			t.Errorf("%v: %d peers estimated, want 250 within the sketch's 3 sigma", p, sk.Estimate())
		}
		if v.first != 5 || v.last != 9 || v.ev.SynIn != v.packetsIn {
			t.Errorf("%v: merged value %+v", p, v)
		}
	}
	// A new flood peer joins its prefix directly.
	a.addFlow(accKey(netip.MustParseAddr("198.18.3.250"), 443), one)
	fk := foldKey(accKey(netip.MustParseAddr("198.18.3.0"), 443), foldPrefix)
	if v, _ := a.flows.get(fk); v.packetsIn != 251 || a.size() != 42 {
		t.Errorf("late peer: prefix has %d packets, %d entries", v.packetsIn, a.size())
	}
}

// TestAccumulatorFoldsToOther: a service whose peers are spread too thinly
// for prefixes to halve its entries (a spoofed-source flood) folds
// straight to one "other peers" entry per family.
func TestAccumulatorFoldsToOther(t *testing.T) {
	a := newAccumulator()
	one := &accValue{packetsIn: 1}
	for i := 0; i < 4000; i++ { // 4000 peers, each in its own /24
		a.addFlow(accKey(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 80), one)
	}
	a.addFlow(accKey(netip.MustParseAddr("2001:db8::1"), 80), one)
	a.addFlow(accKey(netip.MustParseAddr("2001:db8:ffff::1"), 80), one)
	ev := a.enforce(100)
	if len(ev) != 1 || ev[0].Level != "other" || ev[0].Entries != 4002 {
		t.Fatalf("fold events %+v, want tcp/80 folded to other peers at once", ev)
	}
	if entries, packets := accTotals(a); entries != 2 || packets != 4002 {
		t.Fatalf("%d entries, %d packets, want 2 (0.0.0.0/0 and ::/0) and 4002", entries, packets)
	}
	for k := range a.flows.all() {
		p := prefixOf(&k)
		if p.Bits() != 0 || (p.Addr() != netip.IPv4Unspecified() && p.Addr() != netip.IPv6Unspecified()) {
			t.Errorf("entry %v, want /0", p)
		}
		if sk := a.sketches[k]; p.Addr().Is4() && !withinSketchError(sk.Estimate(), 4000) {
			t.Errorf("%v: %d peers estimated, want 4000 within the sketch's 3 sigma", p, sk.Estimate())
		}
	}
}

// TestAccumulatorFoldsAsFarAsNeeded: a service whose prefixes would still
// be the largest part of the excess folds on to "other peers" in the same
// step, before a small service is touched; when prefixes suffice, it stops
// there.
func TestAccumulatorFoldsAsFarAsNeeded(t *testing.T) {
	a := newAccumulator()
	one := &accValue{packetsIn: 1}
	for i := 0; i < 20; i++ {
		a.addFlow(accKey(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 22), one)
	}
	for i := 0; i < 4000; i++ { // 4000 peers in 400 /24s: prefixes help
		a.addFlow(accKey(netip.AddrFrom4([4]byte{10, byte(i / 10 >> 8), byte(i / 10), byte(i % 10)}), 80), one)
	}
	b := newAccumulator()
	b.merge(a)
	ev := a.enforce(300) // 400 prefixes are still too many
	if len(ev) != 1 || ev[0].Level != "other" || ev[0].Port != 80 || ev[0].Entries != 4000 {
		t.Fatalf("fold events %+v, want tcp/80 folded to other peers", ev)
	}
	if entries, packets := accTotals(a); entries != 21 || packets != 4020 {
		t.Errorf("%d entries, %d packets; want 20 exact tcp/22 peers + 1 and 4020", entries, packets)
	}
	if a.folded != 4000 {
		t.Errorf("folded %d, want 4000", a.folded)
	}
	ev = b.enforce(1000) // 400 prefixes are enough
	if len(ev) != 1 || ev[0].Level != "prefix" || ev[0].Port != 80 || b.size() != 420 {
		t.Fatalf("fold events %+v, %d entries; want tcp/80 folded to 400 prefixes", ev, b.size())
	}
}

// TestAccumulatorUnbounded: without a budget nothing folds.
func TestAccumulatorUnbounded(t *testing.T) {
	a := newAccumulator()
	for i := 0; i < 3000; i++ {
		a.addFlow(accKey(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 80), &accValue{packetsIn: 1})
	}
	if ev := a.enforce(0); ev != nil || a.size() != 3000 {
		t.Errorf("unbounded accumulator folded: %+v, size %d", ev, a.size())
	}
}

// TestAccumulatorMerge: merging buckets folds a service to the coarser of
// their levels and keeps every packet and every sketched peer.
func TestAccumulatorMerge(t *testing.T) {
	one := &accValue{packetsIn: 1}
	folded := newAccumulator()
	for i := 0; i < 2000; i++ {
		folded.addFlow(accKey(netip.AddrFrom4([4]byte{198, 18, byte(i / 200), byte(i)}), 443), one)
	}
	if ev := folded.enforce(1000); len(ev) != 1 {
		t.Fatalf("fold: %+v", ev)
	}
	exact := newAccumulator()
	exact.addFlow(accKey(netip.MustParseAddr("198.18.0.77"), 443), one) // joins 198.18.0.0/24
	exact.addFlow(accKey(netip.MustParseAddr("203.0.113.9"), 443), one) // a new /24
	exact.addFlow(accKey(netip.MustParseAddr("192.0.2.20"), 22), one)   // another service: stays exact
	exact.addOverflow(accKey(netip.Addr{}, 1514), &flowauditOverflowValue{V: flowauditFlowValue{PacketsIn: 3}})
	m := newAccumulator()
	m.merge(exact)
	m.merge(folded)
	entries, packets := accTotals(m)
	if packets != 2000+3+3 || entries != 10+1+1+1 {
		t.Errorf("merged: %d entries, %d packets", entries, packets)
	}
	if v, _ := m.flows.get(foldKey(accKey(netip.MustParseAddr("198.18.0.0"), 443), foldPrefix)); v.packetsIn != 201 {
		t.Errorf("198.18.0.0/24: %d packets, want 201", v.packetsIn)
	}
	if _, ok := m.flows.get(accKey(netip.MustParseAddr("192.0.2.20"), 22)); !ok {
		t.Error("tcp/22 peer folded although its service never was")
	}
	if m.folded != 2000+2 {
		t.Errorf("folded %d, want 2002", m.folded)
	}
}
