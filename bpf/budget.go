package bpf

// The collector's memory budget (Options.FlowBudget) covers every entry it
// holds: the accumulators of all the buckets of a sliding window and the
// delta an export's lending added, together. It is checked after every
// entry a move adds, so the entries never exceed the budget by more than
// the one just added; folding brings them back to 90 % of it.
//
// The budget can only be exceeded for longer when folding cannot help:
// while an export reads most of the entries (they cannot change until it
// is done; returnLent folds them afterwards), or when the per-service
// entries alone (overflow, "other peers") outnumber it. Enforcement then
// waits for another 10 % of the budget instead of running on every entry.

// entries is the number of entries the budget covers. The caller holds
// moveMu.
func (c *Collector) entries() int {
	n := 0
	for _, b := range c.buckets {
		n += b.acc.size()
		if b.delta != nil {
			n += b.delta.size()
		}
	}
	return n
}

// addFlow accumulates one per-peer entry read from the kernel into the
// current bucket. The caller holds moveMu.
func (c *Collector) addFlow(k flowauditFlowKey, v *accValue) {
	c.cur().target().addFlow(k, v)
	c.checkBudget()
}

// addNewFlow is addFlow for a key the current bucket does not hold
// (accumulator.addNewFlow).
func (c *Collector) addNewFlow(k flowauditFlowKey, v *accValue) {
	c.cur().target().addNewFlow(k, v)
	c.checkBudget()
}

// addOverflow accumulates one per-service entry read from the kernel.
func (c *Collector) addOverflow(k flowauditFlowKey, v *flowauditOverflowValue) {
	c.cur().target().addOverflow(k, v)
	c.checkBudget()
}

// checkBudget folds as soon as the entries exceed the budget.
func (c *Collector) checkBudget() {
	if c.budget <= 0 {
		return
	}
	if n := c.entries(); n > c.budget && n >= c.enforceAt {
		c.enforceBudget()
	}
}

// enforceBudget folds the services with the most entries, over every
// bucket not lent to an export, until the entries are within the budget.
// The folds are logged (FoldLog) and reported by the next Move.
func (c *Collector) enforceBudget() {
	if c.budget <= 0 {
		return
	}
	var accs []*accumulator
	fixed := 0
	for _, b := range c.buckets {
		if b.lent {
			fixed += b.acc.size()
			if b.delta != nil {
				accs = append(accs, b.delta)
			}
			continue
		}
		accs = append(accs, b.acc)
	}
	ev, left := enforce(accs, fixed, c.budget)
	c.foldLog = append(c.foldLog, ev...)
	c.unreported = append(c.unreported, ev...)
	c.enforceAt = 0
	if left > c.budget {
		c.enforceAt = left + max(c.budget/10, 1)
	}
}
