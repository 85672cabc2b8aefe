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
