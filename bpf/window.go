package bpf

import "time"

// Sliding windows: a continuous audit (flowaudit watch) judges the last
// Options.Window of traffic, not everything since it started, so a finding
// can go away. The collector keeps what it moves in buckets of
// Window/windowBuckets, drops the buckets that fell out of the window, and
// ReadMaps merges the rest. Memory stays within FlowBudget: each bucket
// gets an equal share of it, and the merge is itself held to the budget.
// Without a window there is one bucket, from Open (or Reset) on.

// windowBuckets is the number of buckets a window spans: what ReadMaps
// returns covers between Window and Window·(1+1/windowBuckets).
const windowBuckets = 6

// bucket is the counts moved out during one slice of time, and the
// kernel's cumulative statistics when the slice began (subtracted from a
// window's statistics).
type bucket struct {
	start time.Time
	acc   *accumulator
	stats statsRead
}

// cur is the bucket moves go into. The caller holds moveMu.
func (c *Collector) cur() *bucket { return c.buckets[len(c.buckets)-1] }

// resetBuckets starts over with one empty bucket. The caller holds moveMu.
func (c *Collector) resetBuckets(now time.Time) {
	c.buckets = []*bucket{{start: now, acc: newAccumulator(c.bucketBudget())}}
}

// rotate starts a new bucket when the current one is a slice old and drops
// the buckets that ended before the window began. The caller holds moveMu.
func (c *Collector) rotate(now time.Time) error {
	if c.window <= 0 || now.Sub(c.cur().start) < c.window/windowBuckets {
		return nil
	}
	st, err := c.readStats()
	if err != nil {
		return err
	}
	c.buckets = append(c.buckets, &bucket{start: now, acc: newAccumulator(c.bucketBudget()), stats: st})
	for len(c.buckets) > 1 && !c.buckets[1].start.After(now.Add(-c.window)) {
		c.buckets = c.buckets[1:]
	}
	return nil
}

// bucketBudget is each bucket's share of the memory budget.
func (c *Collector) bucketBudget() int {
	if c.window <= 0 || c.budget <= 0 {
		return c.budget
	}
	return max(c.budget/(windowBuckets+1), 1)
}

// merged returns the buckets' counts as one accumulator (the bucket itself
// when there is one). The caller holds moveMu.
func (c *Collector) merged() *accumulator {
	if len(c.buckets) == 1 {
		return c.buckets[0].acc
	}
	m := newAccumulator(c.budget)
	for _, b := range c.buckets {
		m.merge(b.acc)
	}
	m.enforce()
	return m
}

// since turns cumulative statistics into those of the span that began when
// base was read.
func (st *statsRead) since(base *statsRead) {
	sub := func(v *uint64, b uint64) { *v -= min(*v, b) }
	sub(&st.PacketsIngress, base.PacketsIngress)
	sub(&st.PacketsEgress, base.PacketsEgress)
	sub(&st.FlowInsertFailed, base.FlowInsertFailed)
	sub(&st.OverflowInsertFailed, base.OverflowInsertFailed)
	sub(&st.ConnInsertFailed, base.ConnInsertFailed)
	sub(&st.Truncated, base.Truncated)
	sub(&st.flowNew, base.flowNew)
	for k, v := range st.NonIP {
		b := base.NonIP[k]
		sub(&v.Packets, b.Packets)
		sub(&v.Bytes, b.Bytes)
		if v.Packets == 0 && v.Bytes == 0 {
			delete(st.NonIP, k)
			continue
		}
		st.NonIP[k] = v
	}
	if len(st.NonIP) == 0 {
		st.NonIP = nil
	}
}
