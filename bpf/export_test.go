package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestMoveProceedsDuringExport: while ReadMaps converts a large
// accumulation (300 000 entries, more than the default budget), a Move
// and Counters run to completion: the export holds the collector's lock
// only to move and lend, never while converting. The export is stopped in
// the middle of its conversion by a hook, so nothing depends on timing:
// a Move that waited for the export would never return while it is held
// there. What the Move brought in during the export is not in that
// export and is in the next.
func TestMoveProceedsDuringExport(t *testing.T) {
	testenv.RequireBPF(t)
	c, err := Open(Options{EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const large = 300_000
	c.moveMu.Lock()
	one := &accValue{packetsIn: 1, first: 1, last: 1}
	for i := 0; i < large; i++ {
		c.cur().acc.addFlow(accKey(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 443), one)
	}
	c.moveMu.Unlock()
	before, during := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	if _, err := c.Run(HookXDP, synFrom(t, before, 40000, 22)); err != nil {
		t.Fatal(err)
	}

	inExport, release := make(chan struct{}), make(chan struct{})
	c.exportHook = func() {
		close(inExport)
		<-release
	}
	type result struct {
		r   *Read
		err error
	}
	exported := make(chan result, 1)
	go func() {
		r, err := c.ReadMaps()
		exported <- result{r, err}
	}()
	released := false
	defer func() {
		if !released {
			close(release)
			<-exported
		}
	}()
	select {
	case <-inExport:
	case res := <-exported:
		t.Fatalf("export finished without reaching its conversion: %v", res.err)
	case <-time.After(time.Minute): // a bound, not a measurement
		t.Fatal("export never reached its conversion")
	}

	// The export is now held in the middle of its conversion.
	if _, err := c.Run(HookXDP, synFrom(t, during, 40000, 22)); err != nil {
		t.Fatal(err)
	}
	moved := make(chan error, 1)
	var res MoveResult
	var n Counters
	go func() {
		var err error
		if res, err = c.Move(); err == nil {
			n, err = c.Counters()
		}
		moved <- err
	}()
	select {
	case err := <-moved:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute): // it can only return if the export does not hold the lock
		t.Fatal("Move waited for the export's conversion")
	}
	if res.Flows != 1 {
		t.Errorf("the move during the export moved %d flows, want 1", res.Flows)
	}
	if n.Accumulated != large+2 {
		t.Errorf("%d entries accumulated during the export, want %d", n.Accumulated, large+2)
	}

	close(release)
	released = true
	got := <-exported
	if got.err != nil {
		t.Fatal(got.err)
	}
	has := func(r *Read, peer netip.Addr) bool {
		for _, f := range r.Flows {
			if f.Peer == peer && f.Port == 22 {
				return true
			}
		}
		return false
	}
	if len(got.r.Flows) != large+1 || !has(got.r, before) || has(got.r, during) {
		t.Errorf("export: %d flows (want %d), with the flow moved before it: %v, with the one moved during it: %v",
			len(got.r.Flows), large+1, has(got.r, before), has(got.r, during))
	}
	c.exportHook = nil
	next, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	if len(next.Flows) != large+2 || !has(next, before) || !has(next, during) {
		t.Errorf("next export: %d flows (want %d), with the flow moved during the previous export: %v", len(next.Flows), large+2, has(next, during))
	}
	var packets uint64
	for _, f := range next.Flows {
		packets += f.PacketsIn
	}
	if packets != large+2 {
		t.Errorf("next export: %d packets, want %d", packets, large+2)
	}
}
