package bpf

import "time"

// Sliding windows: a continuous audit (flowaudit watch) judges the last
// Options.Window of traffic, not everything since it started, so a finding
// can go away. The collector keeps what it moves in buckets of
// Window/windowBuckets, drops the buckets that fell out of the window, and
// ReadMaps merges the rest. Without a window there is one bucket, from
// Open (or Reset) on.
//
// FlowBudget covers the entries of all buckets together, whatever the
// window: checked after every entry a move adds (budget.go), so a single
// busy bucket may use the whole budget and seven together never exceed it.
//
// An export (ReadMaps) lends the buckets' accumulators out instead of
// copying them: under moveMu it marks every bucket lent and gives the
// current one a delta accumulator, then converts outside the lock while
// moves go on into the delta. Nothing writes to a lent accumulator: moves
// add to the delta, and folding only touches accumulators that are not
// lent. When the export is done, each delta is merged back (returnLent).

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
	// lent: an export is reading acc, which must not change; moves go to
	// delta (the current bucket only) until returnLent merges it in.
	lent  bool
	delta *accumulator
}

// target is the accumulator moves add to.
func (b *bucket) target() *accumulator {
	if b.lent {
		return b.delta
	}
	return b.acc
}

// cur is the bucket moves go into. The caller holds moveMu.
func (c *Collector) cur() *bucket { return c.buckets[len(c.buckets)-1] }

// resetBuckets starts over with one empty bucket. The caller holds moveMu.
func (c *Collector) resetBuckets(now time.Time) {
	c.buckets = []*bucket{{start: now, acc: newAccumulator()}}
	c.enforceAt = 0
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
	c.rotateAt(now, st)
	return nil
}

// rotateAt is rotate with the statistics at now already read. A new
// bucket starts unfolded: a fold expires once the buckets it was made in
// have left the window.
func (c *Collector) rotateAt(now time.Time, st statsRead) {
	if c.window <= 0 || now.Sub(c.cur().start) < c.window/windowBuckets {
		return
	}
	c.buckets = append(c.buckets, &bucket{start: now, acc: newAccumulator(), stats: st})
	for len(c.buckets) > 1 && !c.buckets[1].start.After(now.Add(-c.window)) {
		c.buckets = c.buckets[1:]
	}
}

// lend marks every bucket lent to an export and returns their
// accumulators, oldest first. The caller holds moveMu; the export must
// call returnLent when it no longer reads them.
func (c *Collector) lend() []*accumulator {
	accs := make([]*accumulator, 0, len(c.buckets))
	for _, b := range c.buckets {
		b.lent = true
		accs = append(accs, b.acc)
	}
	// Later peers of a service folded in the current bucket still go
	// straight to their fold.
	cur := c.cur()
	cur.delta = newAccumulator()
	for svc, lvl := range cur.acc.levels {
		cur.delta.levels[svc] = lvl
	}
	return accs
}

// returnLent merges what moves added during an export back into the
// buckets it read, then holds them to the budget again. The caller holds
// moveMu. Buckets that left the window meanwhile are gone with their
// delta; a Reset meanwhile left no bucket lent.
func (c *Collector) returnLent() {
	for _, b := range c.buckets {
		if !b.lent {
			continue
		}
		if b.delta != nil {
			b.acc.merge(b.delta)
		}
		b.lent, b.delta = false, nil
	}
	c.enforceAt = 0
	c.enforceBudget()
}

// mergeLent returns lent accumulators as one (the accumulator itself when
// there is one). It only reads them: the caller need not hold moveMu.
func mergeLent(accs []*accumulator) *accumulator {
	if len(accs) == 1 {
		return accs[0]
	}
	m := newAccumulator()
	for _, a := range accs {
		m.merge(a)
	}
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
