package bpf

import (
	"time"

	"golang.org/x/sys/unix"
)

// clock converts the programs' CLOCK_MONOTONIC timestamps to wall time.
type clock struct {
	wallAtZero time.Time // wall time when CLOCK_MONOTONIC read 0
}

func newClock() clock {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return clock{wallAtZero: now}
	}
	return clock{wallAtZero: now.Add(-time.Duration(ts.Nano()))}
}

// wall converts a monotonic nanosecond timestamp; 0 stays the zero time.
func (c clock) wall(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return c.wallAtZero.Add(time.Duration(ns)).UTC()
}

// KernelNow reads the clock the programs stamp first/last seen with
// (bpf_ktime_get_coarse_ns, which is CLOCK_MONOTONIC_COARSE) and converts
// it the way ReadMaps converts those stamps, so the two compare exactly.
// Replay uses it to tell which slice of a capture a flow's stamps fall in.
func (c *Collector) KernelNow() (time.Time, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return time.Time{}, err
	}
	return c.boot.wall(uint64(ts.Nano())), nil
}
