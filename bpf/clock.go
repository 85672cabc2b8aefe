package bpf

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// clock converts the programs' timestamps — bpf_jiffies64(), chosen because
// it costs a few ns where bpf_ktime_get_coarse_ns costs ~15 ns per packet
// (docs/ARCHITECTURE.md) — to wall time. It is calibrated once, at Open,
// on a tick edge: jiffy j0 began at wall0, and a jiffy lasts tick (the
// resolution of CLOCK_MONOTONIC_COARSE, which the same timer tick drives).
type clock struct {
	tick  time.Duration
	j0    uint64
	wall0 time.Time
}

// jiffiesReader reads the kernel's jiffies counter.
type jiffiesReader func() (uint64, error)

func newClock(read jiffiesReader) (clock, error) {
	tick := time.Duration(0)
	var res unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &res); err == nil {
		tick = time.Duration(res.Nano())
	}
	if tick <= 0 || tick > time.Second {
		return clock{}, fmt.Errorf("clock: unusable CLOCK_MONOTONIC_COARSE resolution %s", tick)
	}
	first, err := read()
	if err != nil {
		return clock{}, fmt.Errorf("clock: read jiffies: %w", err)
	}
	// Wait (at most three ticks) for the counter to move, so wall0 is
	// taken at the start of jiffy j0 rather than somewhere inside it.
	deadline := time.Now().Add(3 * tick)
	for {
		j, err := read()
		if err != nil {
			return clock{}, fmt.Errorf("clock: read jiffies: %w", err)
		}
		if j != first || time.Now().After(deadline) {
			return clock{tick: tick, j0: j, wall0: time.Now()}, nil
		}
	}
}

// wall converts a jiffies stamp; 0 stays the zero time.
func (c clock) wall(j uint64) time.Time {
	if j == 0 {
		return time.Time{}
	}
	return c.wall0.Add(time.Duration(int64(j)-int64(c.j0)) * c.tick).UTC()
}

// jiffies is the inverse of wall (rounded down to a tick); 0 for the zero time.
func (c clock) jiffies(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	j := int64(c.j0) + int64(t.Sub(c.wall0)/c.tick)
	if j <= 0 {
		return 0
	}
	return uint64(j)
}

// readJiffies runs flowaudit_clock once with BPF_PROG_TEST_RUN and reads
// the counter it stored.
func (c *Collector) readJiffies() (uint64, error) {
	if _, err := c.objs.FlowauditClock.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
		return 0, err
	}
	var j uint64
	if err := c.objs.ClockJiffies.Get(&j); err != nil {
		return 0, err
	}
	return j, nil
}

// KernelNow reads the clock the programs stamp first/last seen with and
// converts it the way ReadMaps converts those stamps, so the two compare
// exactly. Replay uses it to tell which slice of a capture a flow's stamps
// fall in.
func (c *Collector) KernelNow() (time.Time, error) {
	j, err := c.readJiffies()
	if err != nil {
		return time.Time{}, err
	}
	return c.boot.wall(j), nil
}

// Tick is the resolution of the programs' timestamps (one jiffy).
func (c *Collector) Tick() time.Duration { return c.boot.tick }

// JiffiesAt is the stamp of the programs' clock that ReadMaps (and the
// passive DNS table) convert to t, rounded down to a tick: the inverse of
// that conversion, exact for every time it produces. Replay stamps its
// frames with JiffiesAt(anchor)+i and maps the stamps it reads back to
// capture time with it.
func (c *Collector) JiffiesAt(t time.Time) uint64 { return c.boot.jiffies(t) }
